"""The worker's side of follow-ups: claim, send-time re-check, sent or failed, retries, leases.

Claims are leases: ``claim_due`` stamps ``worker_id`` and ``queued_at``, ``prepare_send`` (given
the worker id) checks the claim is still this worker's and renews the lease right before the
message leaves. :func:`recover_stale` settles claims whose worker died: never prepared → back
to ``scheduled`` (nothing can have been sent); prepared → ``failed``/``interrupted`` (it may
have been delivered, so it is never sent again: at most once).

``prepare_send`` re-applies the scheduling rule of :mod:`crm.followups.service`; states and
the frequency cap are described there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel import Session

from crm.contacts import service as contacts
from crm.contacts.models import ContactTraits
from crm.crypto import KeyRing
from crm.enums import Channel, FollowUpState
from crm.errors import FollowUpNotFound, InvalidRequest, InvalidTransition
from crm.feedback import repository as feedback_repo
from crm.feedback.tokens import hash_token
from crm.followups import repository as repo
from crm.followups.models import FollowUp
from crm.followups.service import _decide, _event, _move

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_RETRY",
    "INTERRUPTED",
    "MAX_ATTEMPTS",
    "POLICY_INACTIVE",
    "RETRY_POLICIES",
    "TOKEN_TTL",
    "RetryPolicy",
    "SendInstruction",
    "claim_due",
    "mark_failed",
    "mark_sent",
    "prepare_send",
    "recover_stale",
    "release_claims",
    "renew_claims",
]

MAX_ATTEMPTS = 5  # the default retry policy's attempts (see RETRY_POLICIES)
#: How long a claim stays a worker's without renewal. The worker's attempt must fit in it: the
#: wait for the prepare's locks, the delivery, the wait to record it (see
#: :mod:`api.dispatch.worker`, which bounds each to 30 s; 30 s spare).
DEFAULT_LEASE = timedelta(minutes=2)
INTERRUPTED = repo.INTERRUPTED
RELEASED = "released"  # handed back unsent by a stopping worker
UNCERTAIN = repo.UNCERTAIN
UNDELIVERABLE = "undeliverable"  # nothing sent, and no retry could send it
POLICY_INACTIVE = "policy_inactive"  # cancelled at send time: the merchant switched it off
RETRY_BASE = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff after a failed attempt that delivered nothing: ``base * 2**(n-1)`` after the
    n-th, ``attempts`` in all, never past the follow-up's expiry."""

    base: timedelta
    attempts: int

    def delay(self, failed_attempts: int) -> timedelta:
        return self.base * 2 ** (failed_attempts - 1)


#: Per channel. SMTP refusals are often greylisting, which lifts after minutes: 5 min, 10, 20,
#: 40 (5 attempts). An SMS gateway or a merchant's endpoint that is down usually comes back
#: sooner, and a text a day late is worth less: 1 min doubling to 32 (7 attempts, ~1 h).
#: In-app and phone tasks are written in the worker's transaction and fail only for good
#: reasons (an erased contact): the default.
RETRY_POLICIES: dict[str, RetryPolicy] = {
    Channel.EMAIL.value: RetryPolicy(RETRY_BASE, MAX_ATTEMPTS),
    Channel.WEBHOOK.value: RetryPolicy(timedelta(minutes=1), 7),
    Channel.SMS.value: RetryPolicy(timedelta(minutes=1), 7),
}
DEFAULT_RETRY = RetryPolicy(RETRY_BASE, MAX_ATTEMPTS)
TOKEN_TTL = timedelta(days=14)


@dataclass(frozen=True, slots=True)
class SendInstruction:
    """What the dispatcher sends. ``address`` and ``token`` never appear in the repr.

    ``window_start_minute``/``window_end_minute`` are the policy's local send window (minutes
    after local midnight, ``prepare_send`` fills them), e.g. a phone task's calling hours."""

    followup_id: int
    merchant_id: int
    contact_id: int
    channel: str
    purpose: str
    kind: str
    payment_ref: str
    invoice_ref: str
    locale: str | None
    token_expires_at: datetime
    address: str | None = field(repr=False)
    token: str = field(repr=False)
    window_start_minute: int = 8 * 60
    window_end_minute: int = 21 * 60


def _locked(session: Session, followup_id: int) -> FollowUp:
    fu = repo.get_for_update(session, followup_id)
    if fu is None:
        raise FollowUpNotFound("no such follow-up", param="followup_id")
    return fu


def claim_due(session: Session, now: datetime, limit: int, worker_id: str) -> list[int]:
    """Atomically move due ``scheduled`` follow-ups to ``queued``; returns the claimed ids."""
    if limit < 1 or not worker_id or len(worker_id) > 64:
        raise InvalidRequest("limit >= 1 and a worker_id are required", param="limit")
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        ids = repo.claim_skip_locked(session, now, limit, worker_id)
    else:
        ids = repo.claim_conditional(session, now, limit, worker_id)
    for followup_id in ids:
        fu = repo.get_for_update(session, followup_id)
        assert fu is not None
        _event(session, fu, FollowUpState.SCHEDULED, FollowUpState.QUEUED, now, detail=worker_id)
    session.flush()
    return ids


def _check_claim(fu: FollowUp, worker_id: str | None) -> None:
    if fu.state != FollowUpState.QUEUED:
        raise InvalidTransition(f"follow-up is {fu.state}, not queued", param="followup_id")
    if worker_id is not None and fu.worker_id != worker_id:
        raise InvalidTransition(
            "follow-up is no longer claimed by this worker",
            code="claim_lost",
            param="followup_id",
        )


def prepare_send(
    session: Session,
    followup_id: int,
    now: datetime,
    keyring: KeyRing,
    *,
    token_ttl: timedelta = TOKEN_TTL,
    worker_id: str | None = None,
) -> SendInstruction | None:
    """Re-check consent, erasure, channel choice, frequency cap and quiet hours at send time.

    Returns what to send (with its single-use feedback token, issued again: the same value on
    every attempt, live again after a retry revoked it) or ``None`` after
    recording the suppression, deferral or expiry. With ``worker_id`` the claim must still be
    that worker's (``claim_lost`` otherwise) and its lease is renewed to ``now``. The
    contact's row is locked first (PostgreSQL): of two follow-ups of one contact prepared at
    once, the second sees the first in flight and is capped.
    """
    repo.lock_contact_of(session, followup_id)  # contact before follow-up, as consent does
    fu = _locked(session, followup_id)
    _check_claim(fu, worker_id)
    if worker_id is not None:
        fu.queued_at = now
    if now >= fu.expires_at:
        _move(session, fu, FollowUpState.EXPIRED, now)
        return None
    purchase = repo.get_purchase(session, fu.merchant_id, fu.payment_ref)
    if purchase is not None and purchase.cancelled_at is not None:
        # its payment left the chain (a reorg, an invalidation) after a reorg let an attempt
        # in flight finish: a retry of that attempt must not survey a sale that is gone
        _move(session, fu, FollowUpState.CANCELLED, now, purchase.cancel_reason)
        return None
    contact = contacts.get_contact(session, fu.merchant_id, fu.contact_id)
    policy = repo.get_policy_by_id(session, fu.merchant_id, fu.policy_id or 0)
    if policy is None:
        raise InvalidTransition("follow-up policy is gone", code="policy_not_found")
    if not policy.active:  # the merchant switched it off: nothing it scheduled goes out
        _move(session, fu, FollowUpState.CANCELLED, now, POLICY_INACTIVE)
        return None
    decision = _decide(session, ContactTraits.of(contact), policy, fu, now, scheduling=False)
    if decision.state == FollowUpState.SUPPRESSED:
        _move(session, fu, FollowUpState.SUPPRESSED, now, decision.reason)
        return None
    if decision.deferred:
        fu.due_at, fu.worker_id = decision.due_at, None
        fu.expires_at = decision.expires_at or fu.expires_at
        _move(session, fu, FollowUpState.SCHEDULED, now, decision.deferred_by, "deferred")
        return None
    assert decision.channel is not None
    assert fu.id is not None
    fu.channel, fu.attempted_at = decision.channel, now  # counts for the cap from now on
    repo.save(session, fu)
    token = keyring.followup_token(fu.id, fu.created_at)
    token_hash = hash_token(token)
    expires = now + token_ttl
    feedback_repo.upsert_token(
        session,
        merchant_id=fu.merchant_id,
        followup_id=fu.id,
        contact_id=fu.contact_id,
        token_hash=token_hash,
        expires_at=expires,
        now=now,
    )
    return SendInstruction(
        followup_id=fu.id,
        merchant_id=fu.merchant_id,
        contact_id=fu.contact_id,
        channel=decision.channel,
        purpose=fu.purpose,
        kind=fu.kind,
        payment_ref=fu.payment_ref,
        invoice_ref=fu.invoice_ref,
        locale=contact.locale,
        token_expires_at=expires,
        address=contacts.address_for_channel(session, contact, Channel(decision.channel), keyring),
        token=token,
        window_start_minute=policy.window_start_minute,
        window_end_minute=policy.window_end_minute,
    )


def mark_sent(
    session: Session, followup_id: int, now: datetime, *, worker_id: str | None = None
) -> FollowUp:
    fu = _locked(session, followup_id)
    _check_claim(fu, worker_id)
    fu.sent_at = now
    fu.attempts += 1
    _move(session, fu, FollowUpState.SENT, now)
    return fu


def mark_failed(
    session: Session,
    followup_id: int,
    now: datetime,
    retry_at: datetime | None = None,
    *,
    error: str = "delivery_failed",
    worker_id: str | None = None,
    retry: bool = True,
    permanent: bool = False,
) -> FollowUp:
    """Delivery failed: retry with the channel's backoff (:data:`RETRY_POLICIES`) or give up.
    ``permanent=True``: nothing was delivered and no retry could deliver it: ``failed`` now.

    ``retry=False``: the message may have been delivered (the channel lost the connection
    after handing it over): ``failed``/``delivery_uncertain``, its token still valid, never
    resent, and its attempt still counts for the frequency cap. A retried attempt delivered
    nothing, so its token is revoked (and the cap forgets it): the next claim is unprepared
    again until it issues a new one (see :func:`recover_stale`)."""
    fu = _locked(session, followup_id)
    _check_claim(fu, worker_id)
    fu.attempts += 1
    if not retry:
        _move(session, fu, FollowUpState.FAILED, now, UNCERTAIN, error[:200])
        return fu
    assert fu.id is not None
    feedback_repo.revoke_token(session, fu.id, now)
    fu.attempted_at = None  # delivered nothing: no longer counts for the frequency cap
    if permanent:
        _move(session, fu, FollowUpState.FAILED, now, UNDELIVERABLE, error[:200])
        return fu
    backoff = RETRY_POLICIES.get(fu.channel or "", DEFAULT_RETRY)
    if fu.attempts >= backoff.attempts:
        _move(session, fu, FollowUpState.FAILED, now, error[:32])
        return fu
    next_try = retry_at or now + backoff.delay(fu.attempts)
    if next_try >= fu.expires_at:
        _move(session, fu, FollowUpState.EXPIRED, now, error[:32])
        return fu
    fu.due_at, fu.worker_id = next_try, None
    _move(session, fu, FollowUpState.SCHEDULED, now, "retry", error[:200])
    return fu


def recover_stale(
    session: Session, now: datetime, lease: timedelta = DEFAULT_LEASE, *, limit: int = 500
) -> dict[str, list[int]]:
    """Settle ``queued`` follow-ups whose claim is older than ``lease`` (their worker died).

    A claim that never reached :func:`prepare_send` (no feedback token issued) cannot have been
    delivered: it goes back to ``scheduled``. A prepared one may have left the process before
    the crash; it becomes ``failed`` with reason ``interrupted`` and is never sent again.
    Returns the ids per outcome: ``{"rescheduled": [...], "interrupted": [...]}``.
    """
    if lease < timedelta(0) or limit < 1:
        raise InvalidRequest("lease must be >= 0 and limit >= 1", param="lease")
    outcome: dict[str, list[int]] = {"rescheduled": [], "interrupted": []}
    for fu in repo.stale_claims(session, now - lease, limit):
        assert fu.id is not None
        detail = f"lease of {fu.worker_id or '?'} expired"[:200]
        if not _prepared(session, fu.id):
            fu.worker_id, fu.queued_at = None, None
            _move(session, fu, FollowUpState.SCHEDULED, now, INTERRUPTED, detail)
            outcome["rescheduled"].append(fu.id)
        else:
            _move(session, fu, FollowUpState.FAILED, now, INTERRUPTED, detail)
            outcome["interrupted"].append(fu.id)
    return outcome


def _prepared(session: Session, followup_id: int) -> bool:
    """Whether the current claim issued a live token (:func:`prepare_send`): its message may
    have left. Tokens of attempts that failed for sure are revoked by :func:`mark_failed`."""
    row = feedback_repo.get_by_followup(session, followup_id)
    return row is not None and row.token_hash is not None


def renew_claims(
    session: Session, followup_ids: list[int], now: datetime, *, worker_id: str
) -> int:
    """A worker still busy with its batch keeps the claims it has not reached yet. Without
    this, a batch slower than the lease would have its tail recovered by another worker:
    safe (this one then skips them as ``claim_lost``), but logged as a dead worker's. Returns
    how many claims it still held; a claim another worker took is left alone."""
    if not followup_ids:
        return 0
    return repo.renew_claims(session, followup_ids, worker_id[:64], now)


def release_claims(
    session: Session, followup_ids: list[int], now: datetime, *, worker_id: str
) -> list[int]:
    """A stopping worker hands back claims it has not started (still ``queued`` by it).

    Without this they would wait out the lease before another worker could send them.
    Returns the ids released; any other state or owner is left alone.
    """
    released: list[int] = []
    for followup_id in followup_ids:
        fu = repo.get_for_update(session, followup_id)
        if fu is None or fu.state != FollowUpState.QUEUED or fu.worker_id != worker_id:
            continue
        if _prepared(session, followup_id):
            continue  # prepared: it may be on its way out, recover_stale decides
        fu.worker_id, fu.queued_at = None, None
        _move(session, fu, FollowUpState.SCHEDULED, now, RELEASED, worker_id[:200])
        released.append(followup_id)
    return released
