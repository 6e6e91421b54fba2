"""Pure helpers: canonical hashing of ledger entries and the fold that defines the projection."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from crm.clock import as_utc
from crm.enums import Channel, ConsentAction, ConsentStatus

__all__ = ["GENESIS", "LedgerEntry", "entry_hash", "fold", "head_message"]

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    contact_id: int
    seq: int
    purpose: str
    channel: str | None
    action: str
    legal_basis: str
    policy_version: str
    source: str
    actor: str
    occurred_at: datetime


def entry_hash(entry: LedgerEntry, prev_hash: str) -> str:
    payload = {
        "contact_id": entry.contact_id,
        "seq": entry.seq,
        "purpose": entry.purpose,
        "channel": entry.channel,
        "action": entry.action,
        "legal_basis": entry.legal_basis,
        "policy_version": entry.policy_version,
        "source": entry.source,
        "actor": entry.actor,
        "occurred_at": as_utc(entry.occurred_at).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "prev_hash": prev_hash,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def head_message(contact_id: int, seq: int, head_hash: str, flagged_seq: int | None) -> bytes:
    """The bytes a contact's head seal (``crm_consent_head.mac``) authenticates.

    ``head_hash`` commits to every entry before it, so a MAC over (contact, seq, head hash) covers
    the whole chain; the contact id stops a seal being copied to another contact.
    """
    payload = {
        "v": 1,
        "contact_id": contact_id,
        "seq": seq,
        "head_hash": head_hash,
        "flagged_seq": flagged_seq,
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


_STATUS = {
    ConsentAction.GRANT: ConsentStatus.GRANTED,
    ConsentAction.WITHDRAW: ConsentStatus.WITHDRAWN,
    ConsentAction.OBJECT: ConsentStatus.OBJECTED,
}


def apply(
    state: dict[tuple[str, str], str], purpose: str, channel: str | None, action: str
) -> list[tuple[str, str]]:
    """Apply one action; returns the (purpose, channel) keys it set.

    A NULL channel (withdraw-all or an Art. 21 objection) covers every channel of the purpose.
    """
    status = _STATUS[ConsentAction(action)].value
    channels = [c.value for c in Channel] if channel is None else [channel]
    keys = [(purpose, c) for c in channels]
    for key in keys:
        state[key] = status
    return keys


def fold(events: Iterable[Mapping[str, object] | object]) -> dict[tuple[str, str], str]:
    """The projection as a pure fold of the ledger (oldest first)."""
    state: dict[tuple[str, str], str] = {}
    for e in events:
        get = e.get if isinstance(e, Mapping) else lambda k, e=e: getattr(e, k)
        apply(state, str(get("purpose")), get("channel"), str(get("action")))  # type: ignore[arg-type]
    return state
