"""Data-subject rights: export (Art. 15/20) and erasure by crypto-shredding (Art. 17).

Erasure deletes the contact's wrapped data key (every ciphertext of the contact becomes noise),
also overwrites the ciphertexts and blind indexes, keeps purchases (payment reference, amount:
Art. 17(3)(b) legal obligation), suppresses pending follow-ups with reason ``erased`` and writes an
:class:`ErasureLog` that holds no personal data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlmodel import Session

from crm.audit import service as audit
from crm.clock import Clock
from crm.consent import repository as consent_repo
from crm.contacts import repository as contacts_repo
from crm.contacts import service as contacts
from crm.crypto import KeyRing
from crm.enums import SuppressionReason
from crm.feedback import repository as feedback_repo
from crm.feedback import service as feedback
from crm.followups import repository as followups_repo
from crm.privacy import repository as repo
from crm.privacy.models import ErasureLog
from crm.rewards import repository as rewards_repo
from crm.tickets import repository as tickets_repo
from crm.tickets import service as tickets

__all__ = ["erase_contact", "export_contact"]


def _dump(obj: Any, exclude: set[str] | None = None) -> dict[str, Any]:
    return dict(obj.model_dump(mode="json", exclude=exclude or set()))


def export_contact(
    session: Session,
    merchant_id: int,
    contact_id: int,
    *,
    keyring: KeyRing,
    actor: str,
    clock: Clock,
) -> dict[str, Any]:
    """Everything the CRM holds about a contact, decrypted, as one JSON-able dict: follow-ups
    and tickets with their event logs, and the audit entries about the contact, its tickets and
    its feedback (link tokens, their hashes and ciphertexts left out)."""
    contact = contacts.get_contact(session, merchant_id, contact_id)
    secret = {"token_hash", "comment_enc"}
    answered = [f for f in feedback_repo.list_for_contact(session, contact_id) if f.submitted_at]
    tickets = tickets_repo.list_for_contact(session, contact_id)
    result: dict[str, Any] = {
        "contact": _dump(contacts.to_public(session, contact, keyring)),
        "consent_events": [_dump(e) for e in consent_repo.list_events(session, contact_id)],
        "consent_state": [_dump(s) for s in consent_repo.list_states(session, contact_id)],
        "purchases": [
            _dump(p) for p in followups_repo.list_purchases_for_contact(session, contact_id)
        ],
        "followups": _with_events(
            followups_repo.list_for_contact(session, contact_id),
            repo.followup_events(session, contact_id),
            "followup_id",
        ),
        "feedback": [_dump(feedback.to_public(session, f, keyring)) for f in answered],
        "tickets": _with_events(tickets, repo.ticket_events(session, contact_id), "ticket_id"),
        "rewards": [_dump(r) for r in rewards_repo.list_for_contact(session, contact_id)],
    }
    about = [
        ("contact", [contact_id]),
        ("ticket", [t.id or 0 for t in tickets]),
        ("feedback", [f.id or 0 for f in answered]),
    ]
    result["audit_log"] = [_dump(a) for a in repo.audit_entries(session, merchant_id, about)]
    log = repo.get_log(session, contact_id)
    result["erasure"] = None if log is None else _dump(log)
    for row in result["feedback"]:
        for k in secret:
            row.pop(k, None)
    audit.record(
        session,
        actor=actor,
        action="contact.exported",
        object_type="contact",
        object_id=contact_id,
        at=clock.now(),
        merchant_id=merchant_id,
    )
    return result


def _with_events(parents: Sequence[Any], events: Sequence[Any], key: str) -> list[dict[str, Any]]:
    """``parents`` dumped, each with ``events``: its rows of ``events`` (``key`` names it)."""
    by_parent: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        by_parent.setdefault(getattr(event, key), []).append(_dump(event, {key, "merchant_id"}))
    return [_dump(p) | {"events": by_parent.get(p.id, [])} for p in parents]


def erase_contact(
    session: Session,
    merchant_id: int,
    contact_id: int,
    *,
    actor: str,
    clock: Clock,
    request_ref: str | None = None,
) -> ErasureLog:
    """Crypto-shred the contact. Idempotent: a second call returns the first log entry.

    The contact row is locked first, as consent appends and ``prepare_send`` lock it before the
    follow-ups (one lock order: no deadlock with a survey being prepared), and so a concurrent
    erasure or update waits and then sees this one."""
    contact = contacts.get_contact_for_update(session, merchant_id, contact_id)
    existing = repo.get_log(session, contact_id)
    if existing is not None:
        return existing
    now = clock.now()
    suppressed = followups_repo.suppress_pending_for_contact(
        session, contact_id, purposes=None, reason=SuppressionReason.ERASED, at=now
    )
    key_destroyed = contacts_repo.delete_key(session, contact_id)
    contact.name_enc = contact.email_enc = contact.phone_enc = None
    contact.email_index = None
    contact.locale = None
    contact.time_zone = "UTC"  # where someone lives is theirs too; nothing is sent any more
    contact.segment = contact.tier = None  # the merchant's labels profile the person
    contact.erased_at = contact.updated_at = now
    contacts_repo.add(session, contact)
    wallets = repo.scrub_wallets(session, contact_id)
    comments = repo.scrub_feedback(session, contact_id)
    closed = tickets.close_for_erased_contact(session, contact_id, now, actor)
    log = repo.add_log(
        session,
        ErasureLog(
            merchant_id=merchant_id,
            contact_id=contact_id,
            actor=actor,
            request_ref=request_ref,
            erased_at=now,
            summary={
                "data_key_destroyed": bool(key_destroyed),
                "followups_suppressed": suppressed,
                "wallets_scrubbed": wallets,
                "feedback_rows_scrubbed": comments,
                "tickets_closed": closed,
                "retained": ["purchases.payment_ref", "purchases.amount_minor"],
            },
        ),
    )
    audit.record(
        session,
        actor=actor,
        action="contact.erased",
        object_type="contact",
        object_id=contact_id,
        at=now,
        merchant_id=merchant_id,
    )
    return log
