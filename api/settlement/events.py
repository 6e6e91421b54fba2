"""Invoice webhooks (outbox rows written in the settlement step's own transaction).

Payment events carry their chain evidence, so a merchant can verify a settlement against its
own node without trusting us.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from api.settlement.models import Invoice
from api.settlement.repository import InvoiceRow
from api.webhooks import enqueue
from api.webhooks import repository as webhook_repo

__all__ = ["InvoiceEvents", "emit_invoice_event"]


def _invoice(invoice: Invoice | InvoiceRow) -> dict[str, Any]:
    return {
        "id": invoice.id,
        "object": "invoice",
        "merchant_id": str(invoice.merchant_id),
        "order_id": invoice.order_id,
        "state": str(invoice.state),
        "status": str(invoice.status),
        "chain_id": invoice.chain_id,
        "token": invoice.token,
        "amount": str(invoice.amount),
        "paid_amount": str(invoice.paid_amount),
        "refunded_amount": str(invoice.refunded_amount),
        "invoice_number": str(invoice.number),
        "settled_at": invoice.settled_at.isoformat() if invoice.settled_at else None,
    }


def emit_invoice_event(
    session: Session,
    invoice: Invoice | InvoiceRow,
    event_type: str,
    evidence: dict[str, Any] | None = None,
) -> None:
    """Queue ``invoice.<event>`` for the merchant's endpoints; ``evidence`` = the log's facts."""
    payload: dict[str, Any] = {"invoice": _invoice(invoice)}
    if evidence is not None:
        payload["chain_evidence"] = evidence
    enqueue(session, str(invoice.merchant_id), event_type, payload)


class InvoiceEvents:
    """Queues invoice webhooks for one indexer step, asking once per merchant whether any
    endpoint listens (a catch-up emits two events per payment; most merchants have few hooks)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._listening: dict[int, bool] = {}

    def emit(
        self, invoice: Invoice | InvoiceRow, event_type: str, evidence: dict[str, Any] | None = None
    ) -> None:
        if self._listens(invoice.merchant_id):
            emit_invoice_event(self.session, invoice, event_type, evidence)

    def emit_payment(self, merchant_id: int, event_type: str, payment: dict[str, Any]) -> None:
        """A payment's own event (``payment.unmatched``: no invoice to carry it)."""
        if self._listens(merchant_id):
            enqueue(self.session, str(merchant_id), event_type, {"payment": payment})

    def _listens(self, merchant: int) -> bool:
        if merchant not in self._listening:
            subscriptions = webhook_repo.subscriptions(self.session, str(merchant))
            self._listening[merchant] = bool(subscriptions)
        return self._listening[merchant]
