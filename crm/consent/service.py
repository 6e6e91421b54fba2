"""Consent rules: append to the hash chain, keep the projection in step, answer may-I-contact.

Each append also rewrites the contact's sealed head (``crm_consent_head``): the last ``seq`` and
hash, MAC'd under a key derived from the key ring's master key. :func:`verify_chain` recomputes
the chain, replays it against the projection ``may_contact`` reads, and checks the seal, so
deleting the newest entries or rewriting the chain is caught by anyone who holds the key ring and
not by someone who can only write the database. The seal proves the service wrote a head, not
that it is the newest one: restoring a contact's earlier rows together with its earlier head
(a rollback) verifies; docs/security.md says what would catch that.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlmodel import Session

from crm.audit import service as audit
from crm.clock import Clock
from crm.consent import repository as repo
from crm.consent.chain import GENESIS, LedgerEntry, apply, entry_hash, head_message
from crm.consent.models import ConsentEvent, ConsentHead, ConsentState
from crm.contacts import repository as contacts_repo
from crm.crypto import KeyRing
from crm.enums import (
    Channel,
    ConsentAction,
    ConsentStatus,
    LegalBasis,
    Purpose,
    SuppressionReason,
    parse_choice,
)
from crm.errors import ConsentBusy, ContactErased, ContactNotFound, InvalidRequest
from crm.followups import repository as followups_repo

__all__ = [
    "ChainReport",
    "HeadsSealed",
    "SealStatus",
    "StateMismatch",
    "VerifiedLedger",
    "grant",
    "granted_channels",
    "history",
    "may_contact",
    "object_to",
    "read_verified",
    "record",
    "seal_unsealed_heads",
    "verify_chain",
    "withdraw",
    "withdrawn_already",
]


class SealStatus(StrEnum):
    """What the contact's ``crm_consent_head`` row says about the ledger's last entry."""

    EMPTY = "empty"  # no entries and no head row
    VALID = "valid"  # the MAC verifies and names the last entry
    UNCHECKED = "unchecked"  # no key ring given: the row names the last entry, MAC not checked
    UNSEALED = "unsealed"  # the row names the last entry but has no MAC (pre-0003, or keyless)
    MISSING = "missing"  # entries but no head row
    STALE = "stale"  # the row names another seq/hash: entries removed, replaced or added around it
    INVALID = "invalid"  # the MAC does not verify: row rewritten, or another contact's seal
    FLAGGED = "flagged"  # an append found the head altered; ``flagged_seq`` is that append


_SEAL_OK = frozenset({SealStatus.EMPTY, SealStatus.VALID, SealStatus.UNCHECKED})
# Found by an append: the stored head does not describe the ledger being extended.
_SEAL_ALTERED = frozenset({SealStatus.MISSING, SealStatus.STALE, SealStatus.INVALID})
#: What an append flags. Every writer seals (``keyring`` is required, and ``followpay db
#: upgrade``/``serve`` seal the heads migration 0003 backfilled), so a head without a MAC is one
#: someone stripped: a downgrade that would otherwise let the append re-seal a truncated ledger.
_APPEND_ALTERED = _SEAL_ALTERED | {SealStatus.UNSEALED}

_SEAL_PROBLEM = {
    SealStatus.UNSEALED: "the head has no MAC: it cannot show that no newer entries were removed",
    SealStatus.MISSING: "the ledger has entries but no sealed head (crm_consent_head row deleted)",
    SealStatus.STALE: "the sealed head names seq {sealed} but the ledger holds {length} entries "
    "ending elsewhere: entries were removed or replaced",
    SealStatus.INVALID: "the head's MAC does not verify: the head row was rewritten or copied",
    SealStatus.FLAGGED: "the append of seq {flagged} found the ledger head altered",
}


@dataclass(frozen=True, slots=True)
class StateMismatch:
    """A projection key where ``crm_consent_state`` disagrees with a replay of the ledger.

    ``None`` on either side means no row there / no entry sets that key.
    """

    contact_id: int
    purpose: str
    channel: str
    ledger_state: str | None
    stored_state: str | None
    ledger_event_id: int | None
    stored_event_id: int | None

    def __str__(self) -> str:
        return (
            f"contact {self.contact_id} {self.purpose}/{self.channel}: crm_consent_state has "
            f"{self.stored_state or 'no row'} (event {self.stored_event_id}), the ledger gives "
            f"{self.ledger_state or 'nothing'} (event {self.ledger_event_id})"
        )


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Result of :func:`verify_chain`; ``ok`` only if every check below passed.

    ``broken_at_seq``: first entry whose hash or link does not recompute. ``seal``: the head
    check (``UNCHECKED`` without a key ring). ``state_mismatches``: projection rows that differ
    from the ledger's replay.
    """

    ok: bool
    length: int
    broken_at_seq: int | None = None
    seal: SealStatus = SealStatus.EMPTY
    sealed_seq: int | None = None
    flagged_seq: int | None = None
    state_mismatches: tuple[StateMismatch, ...] = ()

    @property
    def problems(self) -> list[str]:
        """One line per finding, for logs and operators."""
        out = []
        if self.broken_at_seq is not None:
            out.append(
                f"entry seq {self.broken_at_seq} does not recompute (edited, removed or "
                "reordered entries)"
            )
        if self.seal in _SEAL_PROBLEM:
            out.append(
                _SEAL_PROBLEM[self.seal].format(
                    sealed=self.sealed_seq, length=self.length, flagged=self.flagged_seq
                )
            )
        out += [str(m) for m in self.state_mismatches]
        return out


@dataclass(frozen=True, slots=True)
class VerifiedLedger:
    """Result of :func:`read_verified`: entries (oldest first), projection rows, report."""

    events: tuple[ConsentEvent, ...]
    states: tuple[ConsentState, ...]
    report: ChainReport


@dataclass(frozen=True, slots=True)
class HeadsSealed:
    """Result of :func:`seal_unsealed_heads`."""

    sealed: int
    stale_contact_ids: tuple[int, ...] = ()


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
    keyring: KeyRing,
) -> ConsentEvent:
    """Append one consent event (and update the projection and sealed head in one transaction).

    The new head is MAC'd with ``keyring``. An append over a head that no longer matches the
    ledger, or whose MAC is missing or wrong, still succeeds (a withdrawal must never be
    refused) but sets ``flagged_seq`` for good and writes a ``consent.head_mismatch`` audit
    entry.
    """
    p = parse_choice(Purpose, purpose, "purpose")
    a = parse_choice(ConsentAction, action, "action")
    c = None if channel is None else parse_choice(Channel, channel, "channel")
    basis = parse_choice(LegalBasis, legal_basis, "legal_basis")
    if c is None and a == ConsentAction.GRANT:
        raise InvalidRequest("a grant names one channel", code="invalid_channel", param="channel")
    if c is not None and a == ConsentAction.OBJECT:  # Art. 21: the purpose, on every channel
        raise InvalidRequest(
            "an objection covers every channel of the purpose: give no channel",
            code="invalid_channel",
            param="channel",
        )
    for name, value, limit in (
        ("actor", actor, 128),
        ("source", source, 64),
        ("policy_version", policy_version, 32),
    ):
        if not value or len(value) > limit:
            raise InvalidRequest(f"{name} is required", code=f"invalid_{name}", param=name)
    contact = contacts_repo.get_for_update(session, contact_id, merchant_id)
    if contact is None:
        raise ContactNotFound("no such contact", param="contact_id")
    if contact.erased_at is not None:
        raise ContactErased("contact has been erased")
    now = clock.now()
    last = repo.last_event(session, contact_id)
    head = repo.get_head(session, contact_id)
    before = _seal_status(contact_id, head, last, keyring)
    channels = [ch.value for ch in Channel] if c is None else [c.value]
    # The rows this append overwrites must be what the ledger says: a row flipped by hand
    # (withdrawn back to granted) would otherwise vanish under the customer's next withdrawal.
    mismatches = _overwritten_mismatches(session, contact_id, p.value, channels)
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
    flagged = None if head is None else head.flagged_seq
    if (before in _APPEND_ALTERED or mismatches) and flagged is None:
        flagged = entry.seq
    _put_head(session, head, merchant_id, contact_id, entry.seq, event.hash, flagged, keyring)
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
    if before in _APPEND_ALTERED:
        audit.record(
            session,
            actor=actor,
            action="consent.head_mismatch",
            object_type="contact",
            object_id=contact_id,
            at=now,
            merchant_id=merchant_id,
            detail={"seq": entry.seq, "seal": before.value},
        )
    if mismatches:
        audit.record(
            session,
            actor=actor,
            action="consent.state_mismatch",
            object_type="contact",
            object_id=contact_id,
            at=now,
            merchant_id=merchant_id,
            detail={
                "seq": entry.seq,
                "rows": [
                    {
                        "purpose": m.purpose,
                        "channel": m.channel,
                        "ledger": m.ledger_state,
                        "stored": m.stored_state,
                    }
                    for m in mismatches
                ],
            },
        )
    return event


def _overwritten_mismatches(
    session: Session, contact_id: int, purpose: str, channels: list[str]
) -> tuple[StateMismatch, ...]:
    """:func:`_projection_mismatches` for the rows an append is about to overwrite only, from
    each row's newest setting entry: the append's cost stays flat as the ledger grows (a full
    replay took ~105 ms at 3,000 entries, under the contact's lock). :func:`verify_chain`
    still compares every row."""
    newest = repo.latest_setting(session, contact_id, purpose, channels)
    stored = {
        s.channel: (s.state, s.event_id)
        for s in repo.list_states(session, contact_id)
        if s.purpose == purpose and s.channel in channels
    }
    out = []
    for channel in sorted(channels):
        want: tuple[str | None, int | None] = (None, None)
        if (event := newest.get(channel)) is not None:
            replay: dict[tuple[str, str], str] = {}
            apply(replay, purpose, channel, event.action)
            want = (replay[(purpose, channel)], event.id)
        have = stored.get(channel, (None, None))
        if want != have:
            out.append(
                StateMismatch(contact_id, purpose, channel, want[0], have[0], want[1], have[1])
            )
    return tuple(out)


def _seal_status(
    contact_id: int, head: ConsentHead | None, last: ConsentEvent | None, keyring: KeyRing | None
) -> SealStatus:
    """Compare the stored head with the ledger's last entry (and its MAC, given the key ring)."""
    if head is None:
        return SealStatus.EMPTY if last is None else SealStatus.MISSING
    if keyring is not None and head.mac is not None:
        expected = keyring.consent_head_mac(
            head_message(contact_id, head.seq, head.head_hash, head.flagged_seq)
        )
        if not hmac.compare_digest(expected, head.mac):
            return SealStatus.INVALID
    if last is None or head.seq != last.seq or head.head_hash != last.hash:
        return SealStatus.STALE
    if keyring is not None and head.mac is None:
        return SealStatus.UNSEALED
    if head.flagged_seq is not None:
        return SealStatus.FLAGGED
    return SealStatus.VALID if keyring is not None else SealStatus.UNCHECKED


def _put_head(
    session: Session,
    head: ConsentHead | None,
    merchant_id: int,
    contact_id: int,
    seq: int,
    head_hash: str,
    flagged_seq: int | None,
    keyring: KeyRing,
) -> None:
    mac = keyring.consent_head_mac(head_message(contact_id, seq, head_hash, flagged_seq))
    if head is None:
        head = ConsentHead(
            contact_id=contact_id, merchant_id=merchant_id, seq=seq, head_hash="", mac=mac
        )
    head.seq, head.head_hash, head.flagged_seq, head.mac = seq, head_hash, flagged_seq, mac
    repo.put_head(session, head)


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
    keyring: KeyRing,
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
        keyring=keyring,
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
    keyring: KeyRing,
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
        keyring=keyring,
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
    keyring: KeyRing,
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
        keyring=keyring,
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


def withdrawn_already(
    session: Session, contact_id: int, purpose: Purpose | str, channel: Channel | str | None = None
) -> bool:
    """Whether withdrawing ``purpose`` on ``channel`` (None: every channel) would change
    nothing: a withdrawal or objection covering it is the state, and nothing it covers is
    granted. A customer's link asks first, so a repeated click or a mail client's retried
    one-click POST appends nothing (each append replays the ledger and locks the contact)."""
    p = parse_choice(Purpose, purpose, "purpose").value
    wanted = (
        [c.value for c in Channel]  # a withdraw-all sets every channel's row (chain.apply)
        if channel is None
        else [parse_choice(Channel, channel, "channel").value]
    )
    states = {s.channel: s.state for s in repo.list_states(session, contact_id) if s.purpose == p}
    return all(states.get(c) not in (None, ConsentStatus.GRANTED.value) for c in wanted)


def history(session: Session, contact_id: int) -> list[ConsentEvent]:
    return list(repo.list_events(session, contact_id))


def verify_chain(
    session: Session, contact_id: int, *, keyring: KeyRing | None = None
) -> ChainReport:
    """Check a contact's consent evidence; ``ok`` only if all three checks pass.

    1. Every entry's hash and link recompute, with ``seq`` 1..n (first failure: ``broken_at_seq``).
    2. The projection ``may_contact`` reads equals a replay of the ledger, row by row
       (``state_mismatches``).
    3. The sealed head names the ledger's last entry and, given ``keyring``, its MAC verifies
       (``seal``). Without the key ring a consistent head is ``UNCHECKED`` (accepted): that catches
       a careless truncation but not one that also rewrote the head row.
    """
    return read_verified(session, contact_id, keyring=keyring).report


def read_verified(
    session: Session, contact_id: int, *, keyring: KeyRing | None = None
) -> VerifiedLedger:
    """The ledger and projection rows with :func:`verify_chain`'s report on exactly them (one
    read: a page showing entries beside a report on other ones would contradict itself)."""
    head, events, states = _read_ledger(session, contact_id)
    seal = _seal_status(contact_id, head, events[-1] if events else None, keyring)
    broken = _first_broken(events)
    mismatches = _projection_mismatches(contact_id, events, states)
    report = ChainReport(
        ok=broken is None and not mismatches and seal in _SEAL_OK,
        length=len(events),
        broken_at_seq=broken,
        seal=seal,
        sealed_seq=None if head is None else head.seq,
        flagged_seq=None if head is None else head.flagged_seq,
        state_mismatches=mismatches,
    )
    return VerifiedLedger(tuple(events), tuple(states), report)


#: Reads of a ledger that kept changing underneath before :class:`ConsentBusy`.
_READ_ATTEMPTS = 5


def _read_ledger(
    session: Session, contact_id: int
) -> tuple[ConsentHead | None, Sequence[ConsentEvent], Sequence[ConsentState]]:
    """Head, entries and projection rows as of one moment, without locking the contact.

    Three statements, and under READ COMMITTED (or the API's autocommit reads) an append can
    commit between them: the entries then run past the head, a false tamper alarm. Every
    append rewrites the head in its own transaction, so a head read again unchanged after
    the other two proves no append landed between; otherwise read again."""
    for _ in range(_READ_ATTEMPTS):
        head = repo.get_head(session, contact_id)
        before = _head_values(head)
        events = repo.list_events(session, contact_id)
        states = repo.list_states(session, contact_id)
        if _head_values(repo.get_head(session, contact_id)) == before:  # refreshes ``head``
            return head, events, states
    raise ConsentBusy("the contact's consent ledger kept changing while it was read; try again")


def _head_values(head: ConsentHead | None) -> tuple[object, ...] | None:
    return None if head is None else (head.seq, head.head_hash, head.flagged_seq, head.mac)


def _first_broken(events: Sequence[ConsentEvent]) -> int | None:
    """The ``seq`` of the first entry whose hash or link does not recompute."""
    prev = GENESIS
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
            return e.seq
        prev = e.hash
    return None


def _projection_mismatches(
    contact_id: int, events: Sequence[ConsentEvent], states: Sequence[ConsentState]
) -> tuple[StateMismatch, ...]:
    """Replay the ledger (:func:`crm.consent.chain.apply`) and diff it with the stored rows."""
    replay: dict[tuple[str, str], str] = {}
    source: dict[tuple[str, str], int | None] = {}
    for e in events:
        for key in apply(replay, e.purpose, e.channel, e.action):
            source[key] = e.id
    stored = {(s.purpose, s.channel): (s.state, s.event_id) for s in states}
    out = []
    for key in sorted(replay.keys() | stored.keys()):
        want = (replay[key], source[key]) if key in replay else (None, None)
        have = stored.get(key, (None, None))
        if want != have:
            out.append(StateMismatch(contact_id, *key, want[0], have[0], want[1], have[1]))
    return tuple(out)


def seal_unsealed_heads(session: Session, keyring: KeyRing, *, page: int = 500) -> HeadsSealed:
    """MAC every head that has none (migration 0003's backfill, appends by older releases),
    trusting it as it stands: what was removed before cannot be detected. :func:`crm.db.upgrade`
    runs this once, before revision 0005 makes the MAC required. A head that no longer names
    its ledger's last entry is sealed as it is and listed: :func:`verify_chain` reports it as
    ``STALE``, and the next append flags it.

    Each contact is locked as :func:`record` locks it, so a concurrent append is not undone.
    """
    sealed, after, stale = 0, 0, list[int]()
    while batch := repo.list_unsealed_heads(session, after_contact_id=after, limit=page):
        for candidate in batch:
            cid = after = candidate.contact_id
            contacts_repo.get_for_update(session, cid)
            head = repo.get_head(session, cid)
            if head is None or head.mac is not None:
                continue
            if _seal_status(cid, head, repo.last_event(session, cid), None) in _SEAL_ALTERED:
                stale.append(cid)
            _put_head(
                session,
                head,
                head.merchant_id,
                cid,
                head.seq,
                head.head_hash,
                head.flagged_seq,
                keyring,
            )
            sealed += 1
    session.flush()
    return HeadsSealed(sealed=sealed, stale_contact_ids=tuple(stale))
