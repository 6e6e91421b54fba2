"""What one indexer step accumulates and reports: :class:`PollResult` (the step's outcome),
:class:`StepBatch` (a block range's prefetched rows and derived writes) and :class:`StepSettlements`
(the invoices the step settles)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from api.settlement.repository import InvoiceRow
from crm.followups import service as followups

__all__ = ["PollResult", "StepBatch", "StepSettlements"]


@dataclass
class StepBatch:
    """One block range's prefetched state: invoices by (merchant, number), stored log keys."""

    invoices: dict[tuple[str, int], InvoiceRow] = field(default_factory=dict)
    #: Router accounts (lower-case addresses) that are ours: logs to any other are skipped.
    accounts: set[str] = field(default_factory=set)
    payments: set[tuple[str, int, str]] = field(default_factory=set)
    refunds: set[tuple[str, int, str]] = field(default_factory=set)
    payment_rows: list[dict[str, Any]] = field(default_factory=list)
    refund_rows: list[dict[str, Any]] = field(default_factory=list)
    touched: dict[str, InvoiceRow] = field(default_factory=dict)
    events: list[tuple[InvoiceRow, str, dict[str, Any]]] = field(default_factory=list)
    to_settle: list[tuple[InvoiceRow, int]] = field(default_factory=list)
    #: (merchant id, order id) of orders with an open invoice (new, processing, settled): a
    #: closed invoice of such an order that gets paid is held, not re-opened.
    open_orders: set[tuple[int, str]] = field(default_factory=set)
    #: Per invoice, the range's logs for it in chain order, ``(is payment, row index)``: what is
    #: applied again to an invoice another transaction changed during the step.
    effects: dict[str, list[tuple[bool, int]]] = field(default_factory=dict)
    #: Per invoice, refunds on chain in another token: stored before the range, and running.
    stored_uncredited: dict[str, int] = field(default_factory=dict)
    uncredited: dict[str, int] = field(default_factory=dict)

    def forget(self, ids: set[str]) -> None:
        """Drop what was derived for ``ids`` (before they are applied again)."""
        self.events = [e for e in self.events if e[0].id not in ids]
        self.to_settle = [t for t in self.to_settle if t[0].id not in ids]
        for invoice_id in ids:
            self.touched.pop(invoice_id, None)
            self.uncredited[invoice_id] = self.stored_uncredited.get(invoice_id, 0)


@dataclass
class StepSettlements:
    """Invoices settled in one step: their rows to write back, webhooks, follow-ups to schedule."""

    rows: dict[str, InvoiceRow] = field(default_factory=dict)
    events: list[tuple[InvoiceRow, str, dict[str, Any]]] = field(default_factory=list)
    followups: dict[int, list[followups.SettledPayment]] = field(default_factory=dict)

    def forget(self, ids: set[str], result: PollResult) -> None:
        """Drop what was decided for ``ids`` (before they are settled again)."""
        self.rows = {k: v for k, v in self.rows.items() if k not in ids}
        self.events = [e for e in self.events if e[0].id not in ids]
        for merchant, payments in self.followups.items():
            self.followups[merchant] = [p for p in payments if p.invoice_ref not in ids]
        result.settled = [invoice_id for invoice_id in result.settled if invoice_id not in ids]


@dataclass
class PollResult:
    head: int
    from_block: int
    to_block: int
    payments: int = 0
    refunds: int = 0
    settled: list[str] = field(default_factory=list)
    reorged_to: int | None = None

    @property
    def caught_up(self) -> bool:
        return self.to_block >= self.head
