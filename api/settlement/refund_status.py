"""How an invoice's refunds on chain become its refunded amount and its status (one field,
a fixed precedence). The indexer applies these when a refund arrives and after a reorg."""

from __future__ import annotations

from collections.abc import Sequence

from api.settlement.models import Invoice, InvoiceStatus, Refund
from api.settlement.repository import InvoiceRow

__all__ = ["refunded_figure", "set_refund_status"]


def refunded_figure(refunds: Sequence[Refund]) -> int:
    """What an invoice's refunds on chain (in chain order) amount to in its token: the last
    counted one's running total less the refunds in other tokens before it (a refund indexed
    before its total was kept adds its amount)."""
    figure = uncredited = 0
    for refund in refunds:
        if not refund.credited:
            uncredited += refund.amount
        elif refund.total_refunded is not None:
            figure = max(0, refund.total_refunded - uncredited)
        else:
            figure += refund.amount
    return figure


def set_refund_status(invoice: Invoice | InvoiceRow, *, late: bool = False) -> None:
    """One status field, a fixed precedence: ``marked`` (staff decided) > ``refunded`` >
    ``partially_refunded`` > ``paid_late`` (``late``: a confirmed payment came late) > none."""
    if invoice.status == InvoiceStatus.MARKED:
        return
    if invoice.refunded_amount >= invoice.amount > 0:
        invoice.status = InvoiceStatus.REFUNDED
    elif invoice.refunded_amount > 0:
        invoice.status = InvoiceStatus.PARTIALLY_REFUNDED
    else:
        invoice.status = InvoiceStatus.PAID_LATE if late else InvoiceStatus.NONE
