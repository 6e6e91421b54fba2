"""Export and erasure as the API runs them: the CRM's (:mod:`crm.privacy`) plus what only the
API side holds, in the caller's transaction.

Export adds the contact's in-app messages (link tokens masked), phone tasks with their call
outcomes, invoices with their payments and refunds on chain, and the audit entries about those
tasks and invoices. Erasure also cancels the contact's open phone tasks and destroys the stored
idempotent responses that held the contact's data. Every query is scoped to the contact's
merchant.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from api import idempotency
from api.dispatch import phone_tasks as calls
from api.dispatch import repository as dispatch_repo
from api.dispatch.models import InAppMessage, PhoneTask
from api.errors import redact
from api.privacy import repository as repo
from api.settlement.models import Invoice, Payment, Refund
from crm import KeyRing, privacy
from crm.clock import Clock
from crm.privacy.models import ErasureLog

__all__ = ["erase_contact", "export_contact"]


def export_contact(
    session: Session,
    merchant_id: int,
    contact_id: int,
    *,
    keyring: KeyRing,
    actor: str,
    clock: Clock,
) -> dict[str, Any]:
    """:func:`crm.privacy.export_contact` (audited; 404 for another merchant's contact) plus
    the API side's rows about the contact."""
    data = privacy.export_contact(
        session, merchant_id, contact_id, keyring=keyring, actor=actor, clock=clock
    )
    tasks = repo.phone_tasks(session, merchant_id, contact_id)
    invoices = repo.invoices(session, merchant_id, contact_id)
    data["in_app_messages"] = [_message(m) for m in repo.messages(session, merchant_id, contact_id)]
    data["phone_tasks"] = [_task(t) for t in tasks]
    data["invoices"] = [_invoice(i) for i in invoices]
    # the address the contact paid from and was refunded to: an intent's payer is often "any"
    ids = [i.id for i in invoices]
    data["payments"] = [_payment(p) for p in repo.payments(session, ids)]
    data["refunds"] = [_refund(r) for r in repo.refunds(session, ids)]
    about = [
        *repo.audit_entries(session, merchant_id, "phone_task", [t.id or 0 for t in tasks]),
        *repo.audit_entries(session, merchant_id, "invoice", [i.id for i in invoices]),
    ]
    entries = data["audit_log"] + [a.model_dump(mode="json") for a in about]
    data["audit_log"] = sorted(entries, key=lambda entry: int(entry["id"]))
    return data


def erase_contact(
    session: Session,
    merchant_id: int,
    contact_id: int,
    *,
    actor: str,
    clock: Clock,
    request_ref: str | None = None,
) -> ErasureLog:
    """:func:`crm.privacy.erase_contact`, then cancel the contact's open calls and destroy the
    stored idempotent responses about it. Idempotent like the CRM's: a repeat also catches a
    task or response a racing request wrote."""
    log = privacy.erase_contact(
        session, merchant_id, contact_id, actor=actor, clock=clock, request_ref=request_ref
    )
    calls.cancel_without_consent(session, merchant_id, contact_id, actor=actor, clock=clock)
    dispatch_repo.forget_time_zones(session, merchant_id, contact_id)
    idempotency.forget_contact(session, contact_id, merchant_id)
    return log


def _message(m: InAppMessage) -> dict[str, Any]:
    """The message as the customer reads it, its links' token masked (the stored body holds a
    placeholder; bodies from before migration 0006 hold the token itself)."""
    return {
        "id": m.id,
        "followup_id": m.followup_id,
        "subject": m.subject,
        "body": redact(m.body),
        "created_at": m.created_at.isoformat(),
        "read_at": None if m.read_at is None else m.read_at.isoformat(),
    }


def _task(t: PhoneTask) -> dict[str, Any]:
    return {
        "id": t.id,
        "followup_id": t.followup_id,
        "time_zone": t.time_zone,
        "call_after": t.call_after.isoformat(),
        "call_before": t.call_before.isoformat(),
        "state": t.state,
        "outcome": t.outcome,
        "completed_at": None if t.completed_at is None else t.completed_at.isoformat(),
        "completed_by": t.completed_by,
        "created_at": t.created_at.isoformat(),
    }


def _invoice(i: Invoice) -> dict[str, Any]:
    """What the payment record holds about the payer (no signature: it authorises nothing
    of theirs)."""
    return {
        "id": i.id,
        "order_id": i.order_id,
        "chain_id": i.chain_id,
        "token": i.token,
        "amount": str(i.amount),
        "payer": i.payer,
        "state": str(i.state),
        "status": str(i.status),
        "paid_amount": str(i.paid_amount),
        "refunded_amount": str(i.refunded_amount),
        "metadata": dict(i.metadata_),
        "created_at": i.created_at.isoformat(),
        "settled_at": None if i.settled_at is None else i.settled_at.isoformat(),
    }


def _payment(p: Payment) -> dict[str, Any]:
    return {
        "invoice_id": p.invoice_id,
        "chain_id": p.chain_id,
        "tx_hash": p.tx_hash,
        "block_number": p.block_number,
        "payer": p.payer,
        "token": p.token,
        "amount": str(p.amount),
        "fee": str(p.fee),
        "state": str(p.state),
        "late": p.late,
        "seen_at": p.seen_at.isoformat(),
    }


def _refund(r: Refund) -> dict[str, Any]:
    return {
        "invoice_id": r.invoice_id,
        "chain_id": r.chain_id,
        "tx_hash": r.tx_hash,
        "block_number": r.block_number,
        "to": r.to,
        "token": r.token,
        "amount": str(r.amount),
        "reorged": r.reorged,
        "seen_at": r.seen_at.isoformat(),
    }
