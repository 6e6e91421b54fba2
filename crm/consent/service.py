"""Consent rules: append to the hash chain, keep the projection in step, answer may-I-contact."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from crm.audit import service as audit
from crm.clock import Clock
from crm.consent import repository as repo
from crm.consent.chain import GENESIS, LedgerEntry, apply, entry_hash
from crm.consent.models import ConsentEvent
from crm.contacts import repository as contacts_repo
from crm.enums import (
    Channel,
    ConsentAction,
    ConsentStatus,
    LegalBasis,
    Purpose,
    SuppressionReason,
    parse_choice,
)
from crm.errors import ContactErased, ContactNotFound, InvalidRequest
from crm.followups import repository as followups_repo

__all__ = [
    "ChainReport",
    "grant",
    "granted_channels",
    "history",
    "may_contact",
    "object_to",
    "record",
    "verify_chain",
    "withdraw",
]


@dataclass(frozen=True, slots=True)
class ChainReport:
    ok: bool
    length: int
    broken_at_seq: int | None = None


def record(
    session: Session,
    merchant_id: int,
    contact_id: int,
    *,
    purpose: Purpose | str,
    channel: Channel | str | None,
    action: ConsentAction | str,
    actor: str,
    clock: Clock,
    legal_basis: LegalBasis | str = LegalBasis.CONSENT,
    policy_version: str = "1",
    source: str = "api",
) -> ConsentEvent:
    """Append one consent event (and update the projection in the same transaction)."""
    p = parse_choice(Purpose, purpose, "purpose")
    a = parse_choice(ConsentAction, action, "action")
    c = None if channel is None else parse_choice(Channel, channel, "channel")
    basis = parse_choice(LegalBasis, legal_basis, "legal_basis")
    if c is None and a == ConsentAction.GRANT:
        raise InvalidRequest("a grant names one channel", code="invalid_channel", param="channel")
    for name, value, limit in (
        ("actor", actor, 128),
        ("source", source, 64),
        ("policy_version", policy_version, 32),
    ):
        if not value or len(value) > limit:
            raise InvalidRequest(f"{name} is required", code=f"invalid_{name}", param=name)
    contact = contacts_repo.get_for_update(session, contact_id)
    if contact is None or contact.merchant_id != merchant_id:
        raise ContactNotFound("no such contact", param="contact_id")
    if contact.erased_at is not None:
        raise ContactErased("contact has been erased")
    now = clock.now()
    last = repo.last_event(session, contact_id)
    entry = LedgerEntry(
        contact_id=contact_id,
        seq=1 if last is None else last.seq + 1,
        purpose=p.value,
        channel=None if c is None else c.value,
        action=a.value,
        legal_basis=basis.value,
        policy_version=policy_version,
        source=source,
        actor=actor,
        occurred_at=now,
    )
    prev = GENESIS if last is None else last.hash
    event = repo.add_event(
        session,
        ConsentEvent(
            merchant_id=merchant_id,
            contact_id=contact_id,
            seq=entry.seq,
            purpose=entry.purpose,
            channel=entry.channel,
            action=entry.action,
            legal_basis=entry.legal_basis,
            policy_version=policy_version,
            source=source,
            actor=actor,
            occurred_at=now,
            prev_hash=prev,
            hash=entry_hash(entry, prev),
        ),
    )
    assert event.id is not None
    for purpose_key, channel_key in apply({}, entry.purpose, entry.channel, entry.action):
        repo.upsert_state(
            session,
            merchant_id=merchant_id,
            contact_id=contact_id,
            purpose=purpose_key,
            channel=channel_key,
            state=ConsentStatus.GRANTED if a == ConsentAction.GRANT else _status(a),
            event_id=event.id,
            at=now,
        )
    if a == ConsentAction.OBJECT or (a == ConsentAction.WITHDRAW and c is None):
        # Art. 21: an objection (or withdraw-all) stops pending follow-ups of that purpose now.
        followups_repo.suppress_pending_for_contact(
            session, contact_id, purposes=[p.value], reason=SuppressionReason.NO_CONSENT, at=now
        )
    session.flush()
    audit.record(
        session,
        actor=actor,
        action=f"consent.{a.value}",
        object_type="contact",
        object_id=contact_id,
        at=now,
        merchant_id=merchant_id,
        detail={"purpose": p.value, "channel": entry.channel, "seq": entry.seq},
    )
    return event


def _status(action: ConsentAction) -> str:
    return (
        ConsentStatus.WITHDRAWN.value
        if action == ConsentAction.WITHDRAW
        else ConsentStatus.OBJECTED.value
    )


def grant(
    session: Session,
    merchant_id: int,
    contact_id: int,
    purpose: Purpose | str,
    channel: Channel | str,
    *,
    actor: str,
    clock: Clock,
    **kwargs: Any,
) -> ConsentEvent:
    return record(
        session,
        merchant_id,
        contact_id,
        purpose=purpose,
        channel=channel,
        action=ConsentAction.GRANT,
        actor=actor,
        clock=clock,
        **kwargs,
    )


def withdraw(
    session: Session,
    merchant_id: int,
    contact_id: int,
    purpose: Purpose | str,
    channel: Channel | str | None = None,
    *,
    actor: str,
    clock: Clock,
    **kwargs: Any,
) -> ConsentEvent:
    """One call withdraws a purpose on one channel, or on every channel when ``channel`` is None."""
    return record(
        session,
        merchant_id,
        contact_id,
        purpose=purpose,
        channel=channel,
        action=ConsentAction.WITHDRAW,
        actor=actor,
        clock=clock,
        **kwargs,
    )


def object_to(
    session: Session,
    merchant_id: int,
    contact_id: int,
    purpose: Purpose | str = Purpose.MARKETING,
    *,
    actor: str,
    clock: Clock,
    **kwargs: Any,
) -> ConsentEvent:
    """Art. 21 objection: blocks the purpose on every channel and suppresses pending follow-ups."""
    kwargs.setdefault("legal_basis", LegalBasis.LEGITIMATE_INTEREST)
    return record(
        session,
        merchant_id,
        contact_id,
        purpose=purpose,
        channel=None,
        action=ConsentAction.OBJECT,
        actor=actor,
        clock=clock,
        **kwargs,
    )


def granted_channels(
    session: Session, contact_ids: Iterable[int], purpose: Purpose | str, channels: Iterable[str]
) -> dict[int, set[str]]:
    """:func:`may_contact` for many contacts at once: per contact, the granted ``channels``."""
    p = parse_choice(Purpose, purpose, "purpose")
    wanted = [parse_choice(Channel, c, "channel").value for c in channels]
    return repo.granted_channels(session, contact_ids, p.value, wanted)


def may_contact(
    session: Session, contact_id: int, purpose: Purpose | str, channel: Channel | str
) -> bool:
    p = parse_choice(Purpose, purpose, "purpose")
    c = parse_choice(Channel, channel, "channel")
    return repo.get_state(session, contact_id, p.value, c.value) == ConsentStatus.GRANTED.value


def history(session: Session, contact_id: int) -> list[ConsentEvent]:
    return list(repo.list_events(session, contact_id))


def verify_chain(session: Session, contact_id: int) -> ChainReport:
    """Recompute every hash; report the first entry whose hash or link does not match."""
    prev = GENESIS
    events = repo.list_events(session, contact_id)
    for expected_seq, e in enumerate(events, start=1):
        entry = LedgerEntry(
            contact_id=e.contact_id,
            seq=e.seq,
            purpose=e.purpose,
            channel=e.channel,
            action=e.action,
            legal_basis=e.legal_basis,
            policy_version=e.policy_version,
            source=e.source,
            actor=e.actor,
            occurred_at=e.occurred_at,
        )
        if e.seq != expected_seq or e.prev_hash != prev or e.hash != entry_hash(entry, prev):
            return ChainReport(ok=False, length=len(events), broken_at_seq=e.seq)
        prev = e.hash
    return ChainReport(ok=True, length=len(events))
