"""Follow-up rules: the send decision, scheduling, cancellation, responses and expiry.

States: ``scheduled → queued → sent → responded``; or ``suppressed`` (reason ``no_consent`` |
``quiet_hours`` | ``frequency_cap`` | ``erased``), ``expired``, ``failed``, ``cancelled``.
Every change is written to ``crm_followup_event``; quiet-hour deferrals are recorded too.

The frequency cap counts a follow-up from the moment its delivery may begin: ``prepare_send``
stamps ``attempted_at``, a retried failure (nothing delivered) clears it, and an uncertain or
interrupted delivery keeps it. Whoever decides whether a contact may be surveyed (scheduling,
``prepare_send``) first locks the contact's row on PostgreSQL, so two processes never both
decide "not contacted yet"; SQLite serialises writers already.

Policies are in :mod:`crm.followups.policies`. The worker's side (claims, ``prepare_send``,
sent/failed, retries, leases) is :mod:`crm.followups.dispatch`; its send-time re-check is the
rule here (``_decide``) and it records state changes through ``_move``/``_event``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from crm.clock import Clock, as_utc
from crm.consent import service as consent
from crm.contacts import service as contacts
from crm.contacts.models import Contact, ContactTraits
from crm.enums import Channel, FollowUpState, SuppressionReason, Trigger
from crm.errors import ContactNotFound, FollowUpNotFound, InvalidRequest, InvalidTimeZone
from crm.feedback import repository as feedback_repo
from crm.followups import repository as repo
from crm.followups.models import FollowUp, FollowUpEvent, FollowUpPolicy, Purchase
from crm.followups.policies import choose_channels
from crm.followups.windows import next_window_start

__all__ = [
    "ScheduleOutcome",
    "SettledPayment",
    "cancel_for_payment",
    "expire_due",
    "expire_one",
    "get_followup",
    "history",
    "mark_responded",
    "schedule_for_payment",
    "schedule_for_payments",
    "schedule_periodic",
    "schedule_periodic_all",
]


# ----------------------------------------------------------------------------- decisions


def _reachable(contact: ContactTraits, channel: str) -> bool:
    if channel == Channel.EMAIL:
        return contact.has_email
    if channel in (Channel.SMS, Channel.PHONE):
        return contact.has_phone
    return True


@dataclass(slots=True)
class _Decision:
    state: FollowUpState
    reason: str | None
    channel: str | None
    due_at: datetime
    deferred: bool = False
    #: why a deferred follow-up waits: the send window, or (a periodic one) the frequency cap
    deferred_by: str = SuppressionReason.QUIET_HOURS
    #: a periodic follow-up waiting for the cap keeps its whole expiry window after it
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class _Facts:
    """What the rule asks about a contact besides the contact row itself, as lookups, so the
    one-at-a-time path can query lazily and the bulk path can answer from prefetched sets."""

    may_contact: Callable[[str], bool]  # consent for the follow-up's purpose on a channel
    last_contacted: Callable[[], datetime | None]
    pending: Callable[[], bool]  # another scheduled/queued follow-up for the contact


def _rule(
    contact: ContactTraits,
    policy: FollowUpPolicy,
    channels: list[str],
    expires_at: datetime,
    at: datetime,
    facts: _Facts,
    *,
    scheduling: bool,
    periodic: bool = False,
) -> _Decision:
    """The one rule set used at scheduling and again at send time. A periodic follow-up, made
    once per contact, is never suppressed by the frequency cap: it waits for the cap's end
    (and, at scheduling, for whatever survey is pending to go out or not)."""
    suppressed = FollowUpState.SUPPRESSED
    if contact.erased_at is not None:
        return _Decision(suppressed, SuppressionReason.ERASED, None, at)
    channel = next(
        (c for c in channels if _reachable(contact, c) and facts.may_contact(c)),
        None,
    )
    if channel is None:
        return _Decision(suppressed, SuppressionReason.NO_CONSENT, None, at)
    cap = timedelta(days=policy.frequency_cap_days)
    # cap 0 means "no cap": a message another process sent a moment after ``at`` (clocks and
    # long transactions overlap) must not count as "contacted within the last 0 days"
    last = facts.last_contacted() if cap else None
    capped_until = last + cap if last is not None and at - last < cap else None
    if not periodic and (capped_until or (scheduling and cap and facts.pending())):
        return _Decision(suppressed, SuppressionReason.FREQUENCY_CAP, channel, at)
    when = capped_until or at
    if capped_until is not None:  # periodic: its expiry window starts when it may go
        expires_at = max(expires_at, capped_until + timedelta(days=policy.expiry_days))
    try:
        start = next_window_start(
            when, contact.time_zone, policy.window_start_minute, policy.window_end_minute
        )
    except InvalidTimeZone:  # fail closed, for this contact only
        return _Decision(suppressed, SuppressionReason.UNKNOWN_TIME_ZONE, channel, at)
    waits_for = SuppressionReason.FREQUENCY_CAP if capped_until else SuppressionReason.QUIET_HOURS
    if start >= expires_at:
        return _Decision(suppressed, waits_for, channel, at)
    state = FollowUpState.SCHEDULED if scheduling or start != at else FollowUpState.QUEUED
    moved = expires_at if capped_until is not None else None
    return _Decision(
        state, None, channel, start, deferred=start != at, deferred_by=waits_for, expires_at=moved
    )


def _decide(
    session: Session,
    contact: ContactTraits,
    policy: FollowUpPolicy,
    fu: FollowUp,
    at: datetime,
    *,
    scheduling: bool,
) -> _Decision:
    """:func:`_rule` for one stored follow-up, asking the database as it goes. The channel
    order is chosen from the contact's traits now: at send time a contact who has opted out
    of personalisation since scheduling gets the non-personalised order."""
    contact_id = contact.id
    facts = _Facts(
        may_contact=lambda c: consent.may_contact(session, contact_id, fu.purpose, c),
        last_contacted=lambda: repo.last_contacted_at(session, contact_id, exclude_id=fu.id),
        pending=lambda: repo.has_pending(session, contact_id, exclude_id=fu.id),
    )
    channels = choose_channels(policy, contact)
    periodic = fu.kind == Trigger.PERIODIC.value
    return _rule(
        contact,
        policy,
        channels,
        fu.expires_at,
        at,
        facts,
        scheduling=scheduling,
        periodic=periodic,
    )


def _event(
    session: Session,
    fu: FollowUp,
    from_state: str | None,
    to_state: str,
    at: datetime,
    reason: str | None = None,
    detail: str | None = None,
) -> None:
    assert fu.id is not None
    repo.add_event(
        session,
        FollowUpEvent(
            followup_id=fu.id,
            merchant_id=fu.merchant_id,
            from_state=from_state,
            to_state=to_state,
            reason=reason,
            at=at,
            detail=detail,
        ),
    )


def _move(
    session: Session,
    fu: FollowUp,
    to_state: str,
    at: datetime,
    reason: str | None = None,
    detail: str | None = None,
) -> None:
    _event(session, fu, fu.state, to_state, at, reason, detail)
    fu.state, fu.updated_at = to_state, at
    if to_state in (FollowUpState.SUPPRESSED, FollowUpState.CANCELLED, FollowUpState.FAILED):
        fu.reason = reason
    repo.save(session, fu)


def _create(
    session: Session,
    contact: Contact,
    policy: FollowUpPolicy,
    *,
    kind: Trigger,
    payment_ref: str,
    invoice_ref: str,
    due_at: datetime,
    now: datetime,
) -> FollowUp:
    traits = ContactTraits.of(contact)
    fu = repo.save(
        session,
        FollowUp(
            merchant_id=contact.merchant_id,
            contact_id=contact.id or 0,
            policy_id=policy.id,
            kind=kind.value,
            purpose=policy.purpose,
            payment_ref=payment_ref,
            invoice_ref=invoice_ref,
            channels=choose_channels(policy, traits),
            state=FollowUpState.SCHEDULED,
            due_at=due_at,
            expires_at=due_at + timedelta(days=policy.expiry_days),
            created_at=now,
            updated_at=now,
        ),
    )
    decision = _decide(session, traits, policy, fu, due_at, scheduling=True)
    fu.channel, fu.state = decision.channel, decision.state
    if decision.state == FollowUpState.SUPPRESSED:
        fu.reason = decision.reason
        _event(session, fu, None, fu.state, now, decision.reason)
    else:
        _event(session, fu, None, fu.state, now)
        if decision.deferred:
            fu.due_at = decision.due_at
            fu.expires_at = decision.expires_at or fu.expires_at
            _event(session, fu, fu.state, fu.state, now, decision.deferred_by, "deferred")
    return repo.save(session, fu)


# ----------------------------------------------------------------------------- scheduling


@dataclass(frozen=True, slots=True)
class SettledPayment:
    """A settled payment to record and follow up (see :func:`schedule_for_payments`)."""

    contact_id: int
    payment_ref: str
    invoice_ref: str
    amount_minor: int
    currency: str
    settled_at: datetime


@dataclass
class ScheduleOutcome:
    """What :func:`schedule_for_payments` did, per ``payment_ref``."""

    #: recorded now, with the ids of the follow-ups created (none without an active policy)
    created: dict[str, list[int]] = field(default_factory=dict)
    #: already recorded before: nothing done (idempotent)
    existing: list[str] = field(default_factory=list)
    #: the contact is not this merchant's: nothing recorded
    missing_contact: list[str] = field(default_factory=list)


def _check_payment(p: SettledPayment) -> None:
    amount = p.amount_minor
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount < 2**256:
        raise InvalidRequest("amount_minor must be a uint256 integer", param="amount_minor")
    for name, value in (("payment_ref", p.payment_ref), ("invoice_ref", p.invoice_ref)):
        if not value or len(value) > 128:
            raise InvalidRequest(f"{name} is required", code=f"invalid_{name}", param=name)
    if not p.currency or len(p.currency) > 16:
        raise InvalidRequest("currency is required", code="invalid_currency", param="currency")


def _not_surveyed_yet(
    session: Session,
    merchant_id: int,
    payments: list[SettledPayment],
    cancelled: dict[str, list[str]],
) -> list[SettledPayment]:
    """Drop the payments whose invoice was already surveyed: a reorg removed its earlier
    payment after the follow-up went out, and the chain took the payment again. The purchase
    is recorded anew (so the old link rates again, see ``crm.feedback``); a second survey of
    the same sale is not sent. Without such an invoice (the usual case) no query is made."""
    earlier = {ref: invoice for invoice, refs in cancelled.items() for ref in refs}
    if not earlier:
        return payments
    reached = repo.kinds_reached(session, merchant_id, earlier)
    surveyed = {earlier[ref] for ref, kind in reached if kind == Trigger.PAYMENT_SETTLED.value}
    return [p for p in payments if p.invoice_ref not in surveyed]


def schedule_for_payments(
    session: Session, merchant_id: int, payments: Sequence[SettledPayment], clock: Clock
) -> ScheduleOutcome:
    """Record purchases and schedule their follow-ups per policy, for many payments at once.

    The same decisions as one payment at a time, in the given order (a contact who pays twice
    in the batch has the second follow-up capped exactly as it would be sequentially), with a
    handful of queries per call instead of about ten per payment: the settlement indexer
    schedules a whole block range in one go. Idempotent per ``payment_ref``; a ref repeated
    in the batch counts once.
    """
    for p in payments:
        _check_payment(p)
    unique: dict[str, SettledPayment] = {}
    for p in payments:
        unique.setdefault(p.payment_ref, p)
    outcome = ScheduleOutcome()
    if not unique:
        return outcome
    known = contacts.get_traits(session, merchant_id, {p.contact_id for p in unique.values()})
    purchases = repo.known_purchases(
        session, merchant_id, {ref: p.invoice_ref for ref, p in unique.items()}
    )
    todo: list[SettledPayment] = []
    for ref, p in unique.items():
        if p.contact_id not in known:
            outcome.missing_contact.append(ref)
        elif ref in purchases.recorded:
            outcome.existing.append(ref)
        else:
            todo.append(p)
    if not todo:
        return outcome
    try:
        with session.begin_nested():
            repo.insert_purchases(
                session,
                [
                    {
                        "merchant_id": merchant_id,
                        "contact_id": p.contact_id,
                        "payment_ref": p.payment_ref,
                        "invoice_ref": p.invoice_ref,
                        "amount_minor": p.amount_minor,
                        "currency": p.currency.upper(),
                        "settled_at": as_utc(p.settled_at),
                    }
                    for p in todo
                ],
            )
    except IntegrityError:  # a concurrent caller recorded some of them first
        if len(todo) == 1:
            outcome.existing.append(todo[0].payment_ref)
            return outcome
        for p in todo:  # one at a time: each finds out for itself
            one = schedule_for_payments(session, merchant_id, [p], clock)
            outcome.created.update(one.created)
            outcome.existing += one.existing
        return outcome
    for p in todo:
        outcome.created[p.payment_ref] = []
    policy = repo.get_policy(session, merchant_id, Trigger.PAYMENT_SETTLED)
    if policy is None or not policy.active:
        return outcome
    todo = _not_surveyed_yet(session, merchant_id, todo, purchases.cancelled)
    now = clock.now()
    ids = {p.contact_id for p in todo}
    # Decide under the contacts' locks (one statement; the cap's facts too), from their traits
    # read again: an erasure that committed since the first read (it locks the contact first)
    # would otherwise leave a scheduled follow-up behind for an erased contact.
    repo.lock_contacts(session, ids)
    known |= contacts.get_traits(session, merchant_id, ids)
    channels = {cid: choose_channels(policy, known[cid]) for cid in ids}
    granted = consent.granted_channels(
        session, ids, policy.purpose, {c for order in channels.values() for c in order}
    )
    capped = policy.frequency_cap_days > 0
    last = repo.last_contacted_many(session, ids) if capped else {}
    pending = repo.contacts_with_pending(session, ids) if capped else set()
    rows: list[dict[str, Any]] = []
    decisions: list[_Decision] = []
    for p in todo:
        cid = p.contact_id
        due = as_utc(p.settled_at) + timedelta(minutes=policy.delay_minutes)
        expires = due + timedelta(days=policy.expiry_days)
        facts = _Facts(
            may_contact=lambda c, cid=cid: c in granted.get(cid, ()),  # type: ignore[misc]
            last_contacted=lambda cid=cid: last.get(cid),  # type: ignore[misc]
            pending=lambda cid=cid: cid in pending,  # type: ignore[misc]
        )
        decision = _rule(known[cid], policy, channels[cid], expires, due, facts, scheduling=True)
        if decision.state != FollowUpState.SUPPRESSED:
            pending.add(cid)  # what the next payment of this contact in the batch will see
        decisions.append(decision)
        rows.append(
            {
                "merchant_id": merchant_id,
                "contact_id": cid,
                "policy_id": policy.id,
                "kind": Trigger.PAYMENT_SETTLED.value,
                "purpose": policy.purpose,
                "payment_ref": p.payment_ref,
                "invoice_ref": p.invoice_ref,
                "channel": decision.channel,
                "channels": channels[cid],
                "state": decision.state.value,
                "reason": decision.reason if decision.state == FollowUpState.SUPPRESSED else None,
                "due_at": decision.due_at if decision.deferred else due,
                "expires_at": expires,
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
        )
    new_ids = repo.insert_followups(session, rows)
    events: list[dict[str, Any]] = []
    for p, followup_id, decision in zip(todo, new_ids, decisions, strict=True):
        outcome.created[p.payment_ref] = [followup_id]
        event = {"followup_id": followup_id, "merchant_id": merchant_id, "at": now}
        state = decision.state.value
        if decision.state == FollowUpState.SUPPRESSED:
            events.append(
                event | {"from_state": None, "to_state": state, "reason": decision.reason}
            )
            continue
        events.append(event | {"from_state": None, "to_state": state, "reason": None})
        if decision.deferred:
            events.append(
                event
                | {
                    "from_state": state,
                    "to_state": state,
                    "reason": SuppressionReason.QUIET_HOURS.value,
                    "detail": "deferred",
                }
            )
    repo.insert_events(session, [{"detail": None} | e for e in events])
    return outcome


def schedule_for_payment(
    session: Session,
    merchant_id: int,
    contact_id: int,
    payment_ref: str,
    invoice_ref: str,
    amount_minor: int,
    currency: str,
    settled_at: datetime,
    clock: Clock,
) -> list[FollowUp]:
    """Record the purchase and schedule follow-ups per policy. Idempotent per payment_ref.

    :func:`schedule_for_payments` for one payment, returning its follow-ups."""
    payment = SettledPayment(
        contact_id, payment_ref, invoice_ref, amount_minor, currency, settled_at
    )
    outcome = schedule_for_payments(session, merchant_id, [payment], clock)
    if outcome.missing_contact:
        raise ContactNotFound("no such contact", param="contact_id")
    return list(repo.list_for_payment(session, merchant_id, payment_ref))


def cancel_for_payment(
    session: Session, merchant_id: int, payment_ref: str, reason: str, clock: Clock
) -> int:
    """Chain reorg: cancel the payment's follow-ups not yet on their way and revoke their
    links (rows locked, so a concurrent ``sent`` is never overwritten). Returns how many. One
    a worker prepared is left to it, as withdrawal, erasure and expiry leave it: its message
    may be leaving now, and its token is also that message's unsubscribe link. Its rating
    waits for the payment to be on chain again (``crm.feedback`` refuses a reversed sale)."""
    if not reason or len(reason) > 32:
        raise InvalidRequest("reason is required (<= 32 chars)", param="reason")
    now = clock.now()
    purchase = repo.get_purchase(session, merchant_id, payment_ref)
    if purchase is not None and purchase.cancelled_at is None:
        purchase.cancelled_at, purchase.cancel_reason = now, reason
        session.add(purchase)
    count = 0
    for fu in repo.list_for_payment(session, merchant_id, payment_ref, for_update=True):
        in_flight = fu.state == FollowUpState.QUEUED and fu.attempted_at is not None
        if fu.state in repo.PENDING and not in_flight:
            assert fu.id is not None
            _move(session, fu, FollowUpState.CANCELLED, now, reason)
            feedback_repo.revoke_token(session, fu.id, now)
            count += 1
    return count


def schedule_periodic(session: Session, merchant_id: int, clock: Clock) -> list[FollowUp]:
    """Periodic follow-ups, e.g. 30 days after each contact's first purchase (once per contact)."""
    policy = repo.get_policy(session, merchant_id, Trigger.PERIODIC)
    if policy is None or not policy.active:
        return []
    now = clock.now()
    after = timedelta(days=policy.periodic_after_days)
    created: list[FollowUp] = []

    def candidates() -> Sequence[Purchase]:
        return repo.first_purchases_without_periodic(
            session, merchant_id, now - after, Trigger.PERIODIC.value
        )

    due = candidates()
    if not due:
        return created
    # Lock, then look again: another worker may have scheduled some of them meanwhile, and a
    # payment follow-up scheduled concurrently must be seen by the frequency cap.
    repo.lock_contacts(session, {p.contact_id for p in due})
    cap = timedelta(days=policy.frequency_cap_days)
    for purchase in candidates():
        contact = contacts.get_contact(session, merchant_id, purchase.contact_id)
        due_at = max(purchase.settled_at + after, now)
        # Once per contact: a cap still running (the payment's own survey, sent a day after
        # it) defers the periodic one to its end instead of suppressing it for good.
        last = repo.last_contacted_at(session, purchase.contact_id) if cap else None
        if last is not None:
            due_at = max(due_at, last + cap)
        created.append(
            _create(
                session,
                contact,
                policy,
                kind=Trigger.PERIODIC,
                payment_ref=purchase.payment_ref,
                invoice_ref=purchase.invoice_ref,
                due_at=due_at,
                now=now,
            )
        )
    return created


def schedule_periodic_all(session: Session, clock: Clock) -> int:
    """:func:`schedule_periodic` for every merchant with an active periodic policy."""
    created = 0
    for merchant_id in repo.merchants_with_policy(session, Trigger.PERIODIC.value):
        created += len(schedule_periodic(session, merchant_id, clock))
    return created


# ---------------------------------------------------------------- lookups, responses and expiry


def get_followup(session: Session, merchant_id: int, followup_id: int) -> FollowUp:
    fu = repo.get(session, merchant_id, followup_id)
    if fu is None:
        raise FollowUpNotFound("no such follow-up", param="followup_id")
    return fu


def history(session: Session, merchant_id: int, followup_id: int) -> list[FollowUpEvent]:
    """The follow-up's log, oldest first: every state change and every deferral (quiet hours
    keep the state, so only the log says why a scheduled follow-up waits)."""
    get_followup(session, merchant_id, followup_id)
    return list(repo.list_events(session, followup_id))


def mark_responded(session: Session, fu: FollowUp, now: datetime) -> None:
    """Called by the feedback service when the customer answers. An answer also proves a
    message recorded as maybe delivered (``delivery_uncertain``, ``interrupted``) arrived:
    left ``failed``, it counted as unanswered in the response rate."""
    arrived = fu.state == FollowUpState.FAILED and fu.reason in (repo.UNCERTAIN, repo.INTERRUPTED)
    if fu.state in (FollowUpState.SENT, FollowUpState.QUEUED) or arrived:
        fu.responded_at = now
        if fu.sent_at is None:
            fu.sent_at = fu.attempted_at or now
        _move(session, fu, FollowUpState.RESPONDED, now, detail="delivered" if arrived else None)


def expire_one(session: Session, fu: FollowUp, now: datetime) -> None:
    if fu.state in repo.PENDING:
        _move(session, fu, FollowUpState.EXPIRED, now)


def expire_due(session: Session, now: datetime) -> int:
    rows = repo.due_to_expire(session, now)
    for fu in rows:
        _move(session, fu, FollowUpState.EXPIRED, now)
    return len(rows)
