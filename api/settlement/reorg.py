"""Reorgs, for the indexer: find the fork point by block hash, undo what lay above it.

The indexer stores the hash of every block that carried one of its logs, and of each range's
end, for ``window`` blocks under the head (:func:`api.settlement.repository.save_blocks`). A
step first compares the two highest stored hashes with the node's (one round trip); on a
mismatch it walks the stored blocks down to the highest that still matches, and
:func:`roll_back` undoes every payment and refund above it before the step reads that range
again.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from sqlmodel import Session

from api.settlement import repository as repo
from api.settlement.account_proof import invalidate_reclaimed
from api.settlement.chain_evidence import payment_evidence, payment_ref, refund_evidence
from api.settlement.errors import ReorgTooDeepError
from api.settlement.events import InvoiceEvents
from api.settlement.invoices import EXPIRY_GRACE
from api.settlement.models import Invoice, InvoiceState, InvoiceStatus, Payment, PaymentState
from api.settlement.refund_status import refunded_figure, set_refund_status
from crm.clock import Clock
from crm.followups import service as followups
from wallet.chain import Chain
from wallet.errors import ChainError

__all__ = ["ForkCheck", "find_fork", "roll_back"]

log = logging.getLogger("api.settlement.indexer")  # the indexer's log: operators filter on it


class ForkCheck(NamedTuple):
    """What :func:`find_fork` found: the head's ``(number, hash)``, the fork point after a
    reorg, and ``base``: the highest stored block the step reads on from, with the hash just
    matched against the node's (``None`` when no stored block vouches for it)."""

    latest: tuple[int, str]
    fork: int | None
    base: tuple[int, str] | None


def find_fork(
    chain: Chain, session: Session, cursor_id: int, *, start_block: int, window: int
) -> ForkCheck:
    """The head and, after a reorg, the fork point: one round trip in the usual case (the
    head and the hashes of the two highest stored blocks, which still match)."""
    tops = repo.top_blocks(session, cursor_id)
    if not tops:
        return ForkCheck(chain.latest_block(), None, None)
    latest, hashes = chain.head_and_block_hashes([number for number, _ in tops])
    head = latest[0]
    for (number, _), block_hash in zip(tops, hashes, strict=True):
        if number <= head and block_hash is None:
            raise _missing_block(number, head)
    if all(n <= head and h == stored for (n, stored), h in zip(tops, hashes, strict=True)):
        return ForkCheck(latest, None, tops[0])
    fork, base = _fork_point(chain, session, cursor_id, head, start_block, window)
    return ForkCheck(latest, fork, base)


def _fork_point(
    chain: Chain, session: Session, cursor_id: int, head: int, start_block: int, window: int
) -> tuple[int | None, tuple[int, str] | None]:
    """The highest stored block still on the chain below the lowest replaced one (and its
    hash, or ``None`` for the window's floor, which no stored block vouches for).

    A matching block above a replaced one is possible: a node behind a load balancer can
    answer a step's calls from two states (why the fast path checks the two highest stored
    blocks, not only the top one). When every
    stored block was replaced, the fork is below all of them: the indexer rewinds to the
    window's floor (``window`` blocks under the head) and reads that range again. A replaced
    block at or below the floor, or the window's anchor (the one block kept from under the
    window) replaced, breaks the window's assumption and stops it: payments in the pruned
    blocks under the anchor cannot be checked, and would stay settled."""
    stored = repo.recent_blocks(session, cursor_id, window + 2)  # the window, its end, anchor
    replaced = False
    for block in stored:  # highest first
        if block.number <= head and _canonical_hash(chain, block.number, head) == block.hash:
            if replaced:
                return block.number, (block.number, block.hash)
        else:
            replaced = True
    if not replaced:
        return None, (stored[0].number, stored[0].hash)
    floor = max(start_block - 1, head - window)
    anchor_replaced = stored[-1].number < stored[0].number - window
    if stored[-1].number <= floor or anchor_replaced:
        raise ReorgTooDeepError(
            f"stored block #{stored[-1].number} is no longer on the chain: a reorg deeper "
            f"than the {window}-block window (or another chain); stopping rather "
            "than leave orphaned payments settled. Re-index from an earlier block into a "
            "fresh database."
        )
    return floor, None


def roll_back(
    session: Session,
    chain_id: int,
    cursor_id: int,
    fork: int,
    events: InvoiceEvents,
    clock: Clock,
) -> list[tuple[Invoice, Payment]]:
    """Undo the logs above ``fork``: their payments and refunds are marked reorged (kept as
    evidence), their invoices re-derived and locked (a staff mark waits, or is waited
    for), the follow-ups of confirmed payments cancelled, and ``invoice.reorged`` queued
    for each undone log of an invoice, so a merchant who acted on ``invoice.settled``
    learns that it no longer holds.

    Returns the sales a reorged refund brought back: settled invoices with a contact that
    were refunded in full and no longer are, each with its confirmed payment. A sale refunded
    in full before its depth got no purchase record and no follow-up; the caller schedules
    them now (idempotent per payment, so one scheduled before the refund is not doubled)."""
    now = clock.now()
    invoices: dict[str, Invoice] = {}
    was_expired: set[str] = set()
    undone: list[tuple[str, dict[str, Any]]] = []
    holders: dict[int, int | None] = {}
    reclaimed: list[Invoice] = []

    def moved(invoice: Invoice) -> bool:
        """Whether the invoice's account now belongs to another merchant (reclaimed)."""
        if invoice.account_id not in holders:
            account = repo.get_account(session, invoice.account_id)
            holders[invoice.account_id] = None if account is None else account.merchant_id
        return holders[invoice.account_id] not in (None, invoice.merchant_id)

    def locked(invoice_id: str | None) -> Invoice | None:
        if invoice_id is None:
            return None
        if invoice_id not in invoices:
            invoice = repo.lock_invoice_by_id(session, invoice_id)
            if invoice is None:
                return None
            invoices[invoice_id] = invoice
            if invoice.state == InvoiceState.EXPIRED:
                was_expired.add(invoice_id)
        return invoices[invoice_id]

    for payment in repo.payments_after(session, chain_id, cursor_id, fork):
        previous = payment.state
        payment.state = PaymentState.REORGED
        session.add(payment)
        invoice = locked(payment.invoice_id)
        if invoice is None:
            continue
        invoice.paid_amount -= payment.amount
        if invoice.status != InvoiceStatus.MARKED and moved(invoice):
            # a former holder's sale, spared by the reclaim only because it was paid: unpaid
            # now, it is invalidated as the reclaim would have (reopened, its intent would
            # take the new holder's money as the former holder's sale)
            invoice.state, invoice.status = InvoiceState.INVALID, InvoiceStatus.MARKED
            invoice.settled_at = None
            reclaimed.append(invoice)
        elif invoice.status != InvoiceStatus.MARKED:
            # as expire_due would: open until the grace is over, then announced as expired
            open_until = invoice.expires_at + EXPIRY_GRACE
            invoice.state = InvoiceState.NEW if now < open_until else InvoiceState.EXPIRED
            invoice.status = InvoiceStatus.NONE
            invoice.settled_at = None
        if previous == PaymentState.CONFIRMED:
            followups.cancel_for_payment(
                session, invoice.merchant_id, payment_ref(payment), "chain_reorg", clock
            )
        undone.append((invoice.id, payment_evidence(payment) | {"kind": "payment"}))
        log.warning("reorg: payment %s for invoice %s rolled back", payment.tx_hash, invoice.id)
    for refund in repo.refunds_after(session, chain_id, cursor_id, fork):
        refund.reorged = True
        session.add(refund)
        invoice = locked(refund.invoice_id)
        if invoice is not None:
            undone.append((invoice.id, refund_evidence(refund) | {"kind": "refund"}))
    session.flush()  # the reorged flags, before each invoice's remaining logs are read
    restored: list[tuple[Invoice, Payment]] = []
    for invoice in invoices.values():
        was_refunded = invoice.refunded_amount >= invoice.amount
        remaining = repo.refunds_for_invoice(session, invoice.id)
        invoice.refunded_amount = min(invoice.paid_amount, refunded_figure(remaining))
        payments = repo.payments_for_invoice(session, invoice.id)
        set_refund_status(invoice, late=any(_counts_late(p, invoice) for p in payments))
        session.add(invoice)
        confirmed = [p for p in payments if p.state == PaymentState.CONFIRMED]
        if (
            was_refunded
            and invoice.refunded_amount < invoice.amount
            and invoice.state == InvoiceState.SETTLED
            and invoice.status != InvoiceStatus.MARKED
            and invoice.contact_id is not None
            and confirmed
        ):
            restored.append((invoice, confirmed[0]))
    repo.delete_blocks_after(session, cursor_id, fork)
    session.flush()
    for invoice_id, evidence in undone:
        events.emit(invoices[invoice_id], "invoice.reorged", evidence)
    for invoice_id, invoice in invoices.items():  # expire_due never sees a closed invoice
        if invoice.state == InvoiceState.EXPIRED and invoice_id not in was_expired:
            events.emit(invoice, "invoice.expired")
    for invoice in {i.id: i for i in reclaimed}.values():
        invalidate_reclaimed(session, invoice, actor="indexer", at=now)
    return restored


def _counts_late(payment: Payment, invoice: Invoice) -> bool:
    """Whether a live payment makes its invoice ``paid_late``: a confirmed late one, or a
    pending late one the invoice holds (not settling it: the status was set on sight)."""
    if not payment.late:
        return False
    held = payment.state == PaymentState.PENDING and invoice.state != InvoiceState.PROCESSING
    return payment.state == PaymentState.CONFIRMED or held


def _canonical_hash(chain: Chain, number: int, head: int) -> str:
    """Block ``number``'s hash on the node's chain (``number`` at or below ``head``)."""
    header = chain.block_header(number)
    if header is None:
        raise _missing_block(number, head)
    return header[0]


def _missing_block(number: int, head: int) -> ChainError:
    """A node that reports head #head but has no block #number below it answered from two
    states (e.g. mid-reorg): a retry of the step reads it again, instead of taking the gap
    for a replaced block and rolling settled payments back."""
    return ChainError(f"node has no block #{number} below its head #{head}; retrying")
