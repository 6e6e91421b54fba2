"""The settlement indexer: router logs → payments → settled invoices → follow-ups.

Each :meth:`Indexer.poll_once` is ONE database transaction that (1) checks the stored block
hashes against the chain and rolls back everything above a fork, (2) applies the next block
range's ``PaymentSettled``/``PaymentRefunded`` logs, (3) settles payments that reached their
invoice's confirmation depth and schedules their follow-ups, (4) advances the checkpoint.
A crash anywhere loses the whole step or nothing; a replayed step changes nothing because
payments are unique on (chain, tx hash, log index). Reorg detection compares the hashes of
processed blocks (every block that carried one of our logs, plus each range end) with the
chain's: the highest block whose hash still matches is the fork point
(:mod:`api.settlement.reorg`).

The router's log format is in :mod:`api.settlement.router_logs`, a step's accumulators in
:mod:`api.settlement.step_state`, the evidence events carry in
:mod:`api.settlement.chain_evidence` and the refund figures in
:mod:`api.settlement.refund_status`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils import keccak, to_checksum_address
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import configure_mappers
from sqlmodel import Session

from api.collector import collector_paused
from api.retry import until_stopped
from api.settlement import repository as repo
from api.settlement.chain_evidence import (
    payment_evidence,
    payment_object,
    payment_ref,
    refund_evidence,
)
from api.settlement.events import InvoiceEvents
from api.settlement.invoices import expire_due
from api.settlement.models import (
    REOPENABLE_STATES,
    Invoice,
    InvoiceState,
    InvoiceStatus,
    Payment,
    PaymentState,
)
from api.settlement.refund_status import set_refund_status
from api.settlement.reorg import find_fork, roll_back
from api.settlement.repository import InvoiceRow
from api.settlement.router_logs import (
    PAY_SELECTORS,
    REFUNDED_TOPIC,
    SETTLED_TOPIC,
    RouterLog,
    checksum_address,
)
from api.settlement.step_state import PollResult, StepBatch, StepSettlements
from crm.clock import Clock
from crm.errors import CRMError
from crm.followups import service as followups
from wallet.addresses import ZERO_ADDRESS
from wallet.chain import Chain
from wallet.errors import ChainError, UnsupportedOperationError

__all__ = ["ChainMovedError", "Indexer"]

log = logging.getLogger(__name__)

#: How often a step applies its logs again to invoices changed under it. Once is enough: the
#: rows read again are locked until the step commits.
_REAPPLY_ATTEMPTS = 2

#: How often a step that fails on a unique index (a race with another writer) is run in all.
_STEP_ATTEMPTS = 3
#: Invoice numbers are BIGINTs, issued from 1; the router settles any uint256 a merchant's
#: operator signs, and a larger one looked up would fail the step for every merchant.
_ISSUED_NUMBERS_BELOW = 2**63

_SYMBOL_CALL = "0x" + keccak(text="symbol()").hex()[:8]


#: Ranges answered in a row before a narrowed eth_getLogs range is doubled again.
_WIDEN_AFTER = 16
#: What providers say when an eth_getLogs range covers too many blocks or results (Infura
#: -32005 "query returned more than 10000 results", Alchemy "Log response size exceeded",
#: public RPCs "block range is too wide" / "exceed maximum block range", timeouts).
_TOO_WIDE = ("range", "limit", "more than", "exceed", "too many", "too large", "size", "timeout")


class ChainMovedError(ChainError):
    """A reorg landed while a step read the chain: the step is run again (a transient error
    for :func:`api.retry.until_stopped` when it keeps happening)."""


def _too_wide(error: Exception) -> bool:
    text = str(error).lower()
    return any(word in text for word in _TOO_WIDE)


class Indexer:
    """Follows one router on one chain. Safe to run in several processes (the cursor row is
    locked for the step on PostgreSQL; SQLite serialises writers)."""

    def __init__(
        self,
        chain: Chain,
        engine: Engine,
        router: str,
        *,
        start_block: int,
        clock: Clock,
        batch_blocks: int = 2_000,
        reorg_window: int = 256,
    ) -> None:
        self.chain = chain
        self.engine = engine
        self.router = to_checksum_address(router)
        self.start_block = start_block
        self.clock = clock
        self.batch_blocks = batch_blocks
        self.reorg_window = reorg_window
        # Blocks asked per eth_getLogs: halved when the node refuses a range as too wide
        # (providers cap the blocks or results per call), doubled again after a run of
        # ranges it answered.
        self._span = batch_blocks
        self._answered = 0
        self._symbols: dict[str, str] = {}

    # -- chain reads (with :mod:`api.settlement.reorg`'s, all the indexer asks the node) --------

    def _block(self, number: int) -> tuple[str, int]:
        """``(hash, timestamp)``; a block the node no longer has (a reorg below our stored
        height) reads as an empty hash, which matches nothing stored."""
        return self.chain.block_header(number) or ("", 0)

    def _logs(
        self, start: int, end: int, head: tuple[int, str]
    ) -> tuple[list[RouterLog], int, str]:
        """The router logs of ``start`` up to ``end`` or less (the node may refuse a wide range:
        the range is halved until it answers, down to one block), the range's actual end and
        its hash, read BEFORE the logs (the head's, read at the step's start, when the range
        ends there): a reorg between the two calls then leaves an end hash the next step finds
        replaced. Read after the logs, the new chain's end hash would vouch for logs read from
        the old chain, and a payment the new chain put in the range would be skipped for good."""
        topics = [[SETTLED_TOPIC, REFUNDED_TOPIC]]
        end = min(end, start + self._span - 1)
        while True:
            end_hash = head[1] if end == head[0] else self._block(end)[0]
            try:
                entries = self.chain.raw_logs(self.router, start, end, topics)
            except UnsupportedOperationError as exc:  # an error answer, not a silent node
                if end == start or not _too_wide(exc):
                    raise
                self._span, self._answered = max(1, (end - start + 1) // 2), 0
                log.warning(
                    "eth_getLogs refused %d blocks (%s); asking for %d",
                    end - start + 1, str(exc)[:120], self._span,
                )  # fmt: skip
                end = start + self._span - 1
                continue
            break
        self._answered += 1
        if self._answered >= _WIDEN_AFTER and self._span < self.batch_blocks:
            self._span, self._answered = min(self.batch_blocks, self._span * 2), 0
        logs = [RouterLog.from_rpc(entry) for entry in entries if not entry.get("removed")]
        # chain order whatever the node's (a refund applied before its payment would be lost)
        logs.sort(key=lambda entry: (entry.block_number, entry.log_index))
        return logs, end, end_hash

    def _check_base(self, base: tuple[int, str] | None) -> None:
        """The block the step reads on from must still hold the hash :func:`find_fork` matched
        once the logs are in: a reorg below it between the two reads gave logs of a new chain
        on top of stored blocks of the old one, which no later step would see replaced (the
        range's blocks match) and whose orphaned payments would stay settled. The step is
        then run again, and finds the fork."""
        if base is not None and self._block(base[0])[0] != base[1]:
            raise ChainMovedError(f"block #{base[0]} was replaced while the step read its logs")

    def _symbol(self, token: str) -> str:
        """The token's ``symbol()`` for the CRM's purchase record, asked once per token. A
        token that reverts or answers garbage is ``TOKEN``; a node that is away fails the
        step (retried) instead of caching a wrong name."""
        if token not in self._symbols:
            try:
                answer = self.chain.call(token, _SYMBOL_CALL)
                if len(answer) == 32:  # a few old tokens answer a bytes32
                    symbol = answer.rstrip(b"\0").decode()
                else:
                    symbol = str(abi_decode(["string"], answer)[0])
            except (UnsupportedOperationError, DecodingError, UnicodeDecodeError):
                symbol = ""
            symbol = symbol.strip()[:16]
            self._symbols[token] = symbol if symbol.isprintable() and symbol else "TOKEN"
        return self._symbols[token]

    # -- one step ---------------------------------------------------------------------------

    def poll_once(self) -> PollResult:
        """One step; run again from scratch when it loses a race to another writer, or to a
        reorg below the block it read on from (:meth:`_check_base`).

        On PostgreSQL a step can reopen an expired invoice (its late payment) while an API
        request opens a new invoice for the same order: the step then fails on the open-order
        unique index. Run again, it reads the committed new invoice and holds the payment.
        The cyclic collector is paused meanwhile (:mod:`api.collector`): a step's thousands of
        rows and events are acyclic, and its few cycles (the session's) wait for the next run."""
        with collector_paused():
            for _ in range(_STEP_ATTEMPTS - 1):
                try:
                    return self._step()
                except IntegrityError as exc:
                    log.warning("indexer step lost a race to another writer; again: %s", exc.orig)
                except ChainMovedError as exc:
                    log.warning("indexer step raced a reorg; again: %s", exc)
            return self._step()

    def _step(self) -> PollResult:
        chain_id = self.chain.chain_id
        with Session(self.engine) as session, session.begin():
            now = self.clock.now()
            cursor_id, last = repo.cursor(session, chain_id, self.router, self.start_block, now)
            latest, fork, base = find_fork(
                self.chain,
                session,
                cursor_id,
                start_block=self.start_block,
                window=self.reorg_window,
            )
            head = latest[0]
            events = InvoiceEvents(session)
            result = PollResult(head=head, from_block=last + 1, to_block=last)
            if fork is not None:
                restored = roll_back(session, chain_id, cursor_id, fork, events, self.clock)
                self._schedule(session, self._sales_back(restored))
                last = fork
                result.reorged_to = fork
                result.from_block = fork + 1
            start, end = last + 1, min(head, last + self.batch_blocks)
            if start <= end:
                entries, end, end_hash = self._logs(start, end, latest)
                self._check_base(base)
                batch = self._prefetch(session, chain_id, entries, start, end)
                blocks: dict[int, str] = {}
                for entry in entries:
                    self._apply((chain_id, cursor_id), entry, result, batch, min(head, end))
                    blocks.setdefault(entry.block_number, entry.block_hash)
                ids = repo.insert_payments(session, chain_id, batch.payment_rows)
                repo.insert_refunds(session, batch.refund_rows)
                settled = StepSettlements()
                self._settle_range(batch, batch.to_settle, ids, result, settled)
                self._write_range(session, batch, ids, result, settled)
                for invoice, event_type, evidence in batch.events + settled.events:
                    events.emit(invoice, event_type, evidence)
                self._announce_unmatched(session, chain_id, batch, ids, events)
                self._schedule(session, settled)
                blocks.setdefault(end, end_hash)
                repo.save_blocks(session, cursor_id, blocks)
                last = end
                result.to_block = end
            repo.save_cursor(session, cursor_id, last, self.clock.now())
            if start <= end:
                repo.prune_blocks(session, cursor_id, end - self.reorg_window)
            self._confirm(session, (chain_id, cursor_id), min(head, last), result, events)
            if result.caught_up:  # behind, an invoice's payment may be in the blocks ahead
                expire_due(session, self.clock)  # late payments still settle, as paid_late
        return result

    def _prefetch(
        self, session: Session, chain_id: int, entries: list[RouterLog], start: int, end: int
    ) -> StepBatch:
        """Load what a block range's logs need with a handful of queries, not several per log."""
        batch = StepBatch()
        if not entries:
            return batch
        wanted: dict[str, set[int]] = {}
        for entry in entries:
            numbers = wanted.setdefault(entry.merchant.lower(), set())
            if entry.number < _ISSUED_NUMBERS_BELOW:  # a larger one is no invoice of ours
                numbers.add(entry.number)
        accounts = repo.account_ids_by_address(session, chain_id, set(wanted))
        batch.accounts = set(accounts)
        for address, numbers in wanted.items():
            account_id = accounts.get(address)
            if account_id is None:
                continue
            found = repo.invoice_rows_by_number(session, account_id, numbers)
            for number, invoice in found.items():
                batch.invoices[(address, number)] = invoice
        for invoice in batch.invoices.values():  # rare: a payment for a closed invoice
            if invoice.state == InvoiceState.EXPIRED:  # invalid ones are held anyway
                order = (invoice.merchant_id, invoice.order_id)
                closed = [state.value for state in REOPENABLE_STATES]
                if repo.open_invoice_for_order(session, *order, closed=closed):
                    batch.open_orders.add(order)
        topics = {entry.topic for entry in entries}
        if SETTLED_TOPIC in topics:
            batch.payments = repo.payment_keys(session, chain_id, start, end)
        if REFUNDED_TOPIC in topics:
            batch.refunds = repo.refund_keys(session, chain_id, start, end)
            refunded = {
                batch.invoices[key].id
                for entry in entries
                if entry.topic == REFUNDED_TOPIC
                and (key := (entry.merchant.lower(), entry.number)) in batch.invoices
            }
            batch.stored_uncredited = repo.uncredited_refund_totals(session, refunded)
            batch.uncredited = dict(batch.stored_uncredited)
        return batch

    def _apply(
        self,
        where: tuple[int, int],
        entry: RouterLog,
        result: PollResult,
        batch: StepBatch,
        tip: int,
    ) -> None:
        """One log of the range: its row (chain id and the cursor that read it, ``where``)
        and its effect on its invoice."""
        if entry.merchant.lower() not in batch.accounts:
            # Anyone can register on the router and emit logs for free (a zero-amount pay):
            # nobody of ours to tell, and no reason to ask the node about each one.
            return
        invoice = batch.invoices.get((entry.merchant.lower(), entry.number))
        key = (entry.tx_hash, entry.log_index, entry.block_hash)
        row = {
            "chain_id": where[0],
            "cursor_id": where[1],
            "tx_hash": entry.tx_hash,
            "log_index": entry.log_index,
            "block_number": entry.block_number,
            "block_hash": entry.block_hash,
            "amount": entry.amount,
            "seen_at": self.clock.now(),
        }
        if entry.topic == SETTLED_TOPIC:
            if key in batch.payments:
                return
            batch.payments.add(key)
            if invoice is not None and invoice.intent_hash != entry.intent_hash:
                # same number, another signed intent (e.g. a restored database reused it)
                log.error(
                    "payment %s does not match invoice %s: unmatched", entry.tx_hash, invoice.id
                )
                invoice = None
            if invoice is not None:  # the hash proves what was paid: the invoice's own terms
                token, amount, fee = invoice.token, invoice.amount, invoice.fee
            else:
                token, amount, fee = self._paid_terms(entry.tx_hash, entry.merchant, entry.number)
            late = invoice is not None and self._paid_after_expiry(invoice, entry.block_number)
            row |= {
                "invoice_id": invoice.id if invoice else None,
                "merchant_address": entry.merchant,
                "invoice_number": entry.number,
                "payer": entry.third,
                "token": token,
                "amount": amount,
                "fee": fee,
                "late": late,
            }
            # Deep enough already (the usual case in a catch-up)? Insert it confirmed and
            # settle in this step: no second pass re-reading and re-writing the payment.
            confirmed = tip - entry.block_number + 1 >= _depth(invoice)
            row["state"] = (PaymentState.CONFIRMED if confirmed else PaymentState.PENDING).value
            batch.payment_rows.append(row)
            result.payments += 1
            if invoice is not None:
                index = len(batch.payment_rows) - 1
                batch.effects.setdefault(invoice.id, []).append((True, index))
                self._take_payment(invoice, index, batch)
        elif entry.topic == REFUNDED_TOPIC:
            if key in batch.refunds:
                return
            batch.refunds.add(key)
            row |= {
                "invoice_id": invoice.id if invoice else None,
                "to": entry.third,
                "token": entry.token,
                "total_refunded": entry.total,
                # only a refund in the invoice's own token counts toward its refunded amount
                "credited": invoice is not None and entry.token.lower() == invoice.token.lower(),
                "reorged": False,
            }
            batch.refund_rows.append(row)
            result.refunds += 1
            if invoice is not None:
                index = len(batch.refund_rows) - 1
                batch.effects.setdefault(invoice.id, []).append((False, index))
                self._take_refund(invoice, index, batch)

    def _take_payment(self, invoice: InvoiceRow, index: int, batch: StepBatch) -> None:
        """Payment row ``index`` of the range, on its invoice (as read, or read again)."""
        row = batch.payment_rows[index]
        invoice.paid_amount += row["amount"]
        batch.touched[invoice.id] = invoice
        if self._held(invoice, batch):
            if row["late"] and invoice.status == InvoiceStatus.NONE:
                invoice.status = InvoiceStatus.PAID_LATE
            log.warning(
                "payment %s held: invoice %s is %s", row["tx_hash"], invoice.id, invoice.state
            )
        elif invoice.state in (InvoiceState.NEW, InvoiceState.EXPIRED):
            invoice.state = InvoiceState.PROCESSING
            batch.open_orders.add((invoice.merchant_id, invoice.order_id))
            batch.events.append((invoice.snapshot(), "invoice.processing", payment_evidence(row)))
        if row["state"] == PaymentState.CONFIRMED.value:  # settled, or announced as held
            batch.to_settle.append((invoice, index))

    @staticmethod
    def _take_refund(invoice: InvoiceRow, index: int, batch: StepBatch) -> None:
        """Refund row ``index`` of the range, on its invoice. One in another token (a re-signed
        intent) is recorded and announced, never counted. The invoice shows the router's
        running total less the refunds in other tokens, and never more than was paid."""
        row = batch.refund_rows[index]
        batch.touched[invoice.id] = invoice
        evidence = refund_evidence(row)
        if not row["credited"]:
            batch.uncredited[invoice.id] = batch.uncredited.get(invoice.id, 0) + row["amount"]
            log.warning("refund %s for invoice %s is in another token", row["tx_hash"], invoice.id)
            batch.events.append((invoice.snapshot(), "invoice.refund_unmatched", evidence))
            return
        figure = max(0, row["total_refunded"] - batch.uncredited.get(invoice.id, 0))
        invoice.refunded_amount = min(invoice.paid_amount, figure)
        set_refund_status(invoice, late=invoice.status == InvoiceStatus.PAID_LATE)
        batch.events.append((invoice.snapshot(), "invoice.refunded", evidence))

    @staticmethod
    def _held(invoice: InvoiceRow, batch: StepBatch) -> bool:
        """A payment the chain accepted for an invoice that must not settle by itself: staff
        invalidated it, staff marked it settled (paid outside the router: now it is paid
        twice), or it expired and its order has another open invoice (settling both would take
        the order's money twice). The money is the merchant's either way: the invoice keeps its
        state and records the money (``paid_amount``; status ``paid_late`` when late), and the
        merchant, told by ``invoice.payment_held`` once the payment is confirmed, refunds it or
        marks the invoice."""
        if invoice.state in (InvoiceState.INVALID, InvoiceState.SETTLED):
            return True
        return (
            invoice.state == InvoiceState.EXPIRED
            and (invoice.merchant_id, invoice.order_id) in batch.open_orders
        )

    def _paid_terms(self, tx_hash: str, merchant: str, number: int) -> tuple[str, int, int]:
        """``(token, amount, fee)`` of an unmatched payment, read from its transaction's
        calldata: only a ``pay``/``payWithPermit`` sent to the router itself, for this event's
        merchant and invoice number. Zeros otherwise: a contract in between can expose the same
        function with other terms than the ones it passes on."""
        tx = self.chain.request("eth_getTransactionByHash", [tx_hash]) or {}
        data = str(tx.get("input") or tx.get("data") or "")
        if (
            str(tx.get("to") or "").lower() != self.router.lower()
            or data[:10] not in PAY_SELECTORS
            or len(data) < 10 + 64 * 5
        ):
            return ZERO_ADDRESS, 0, 0
        words = [data[10 + 64 * i : 74 + 64 * i] for i in range(5)]
        if int(words[0], 16) != int(merchant, 16) or int(words[4], 16) != number:
            return ZERO_ADDRESS, 0, 0
        return checksum_address("0x" + words[1][24:].lower()), int(words[2], 16), int(words[3], 16)

    def _paid_after_expiry(self, invoice: InvoiceRow, block_number: int) -> bool:
        if self.clock.now() <= invoice.expires_at and invoice.state != InvoiceState.EXPIRED:
            return False  # cheap path: cannot be late yet
        timestamp = self._block(block_number)[1]
        return datetime.fromtimestamp(timestamp, UTC) > invoice.expires_at

    def _settle_range(
        self,
        batch: StepBatch,
        to_settle: list[tuple[InvoiceRow, int]],
        ids: list[int],
        result: PollResult,
        settled: StepSettlements,
    ) -> None:
        for invoice, index in to_settle:
            row = batch.payment_rows[index]
            self._settle(invoice, ids[index], payment_evidence(row), result, settled)

    def _write_range(
        self,
        session: Session,
        batch: StepBatch,
        ids: list[int],
        result: PollResult,
        settled: StepSettlements,
    ) -> None:
        """Write the range's invoices back. One that another transaction changed since the
        prefetch read it (staff marked it meanwhile) is not overwritten: it is read again,
        locked, and the range's logs are applied to it as it is now (a payment for an invoice
        invalidated meanwhile is held, its settlement and follow-up dropped)."""
        changed = repo.update_invoice_rows(session, {**batch.touched, **settled.rows}.values())
        for _ in range(_REAPPLY_ATTEMPTS):
            if not changed:
                return
            log.info("invoices changed during the step, applied again: %s", sorted(changed))
            batch.forget(set(changed))
            settled.forget(set(changed), result)
            first = len(batch.to_settle)
            for invoice_id, invoice in changed.items():
                for is_payment, index in batch.effects.get(invoice_id, ()):
                    if is_payment:
                        self._take_payment(invoice, index, batch)
                    else:
                        self._take_refund(invoice, index, batch)
                batch.touched[invoice_id] = invoice
            self._settle_range(batch, batch.to_settle[first:], ids, result, settled)
            changed = repo.update_invoice_rows(session, changed.values())
        if changed:
            raise RuntimeError(f"invoices {sorted(changed)} kept changing under a locked step")

    def _confirm(
        self,
        session: Session,
        where: tuple[int, int],
        tip: int,
        result: PollResult,
        events: InvoiceEvents,
    ) -> None:
        """Settle payments seen in earlier steps that have now reached their depth (or announce
        them held: their invoice was invalidated or marked settled meanwhile). An invoice that
        another transaction changed since it was read here is read again, locked, and decided
        as it is now."""
        pending = repo.pending_payments(session, *where)
        if not pending:
            return
        rows = repo.invoice_rows_by_id(session, {p.invoice_id for p in pending if p.invoice_id})
        settled = StepSettlements()
        confirmed: list[Payment] = []
        for payment in pending:
            invoice = rows.get(payment.invoice_id) if payment.invoice_id else None
            if tip - payment.block_number + 1 < _depth(invoice):
                continue
            payment.state = PaymentState.CONFIRMED
            session.add(payment)
            if invoice is not None:
                confirmed.append(payment)
                self._settle(invoice, payment.id or 0, payment_evidence(payment), result, settled)
        changed = repo.update_invoice_rows(session, settled.rows.values())
        for _ in range(_REAPPLY_ATTEMPTS):
            if not changed:
                break
            settled.forget(set(changed), result)
            for payment in confirmed:
                if payment.invoice_id in changed:
                    invoice = changed[payment.invoice_id]
                    self._settle(
                        invoice, payment.id or 0, payment_evidence(payment), result, settled
                    )
            changed = repo.update_invoice_rows(session, changed.values())
        if changed:
            raise RuntimeError(f"invoices {sorted(changed)} kept changing under a locked step")
        for invoice, event_type, evidence in settled.events:
            events.emit(invoice, event_type, evidence)
        self._schedule(session, settled)

    def _settle(
        self,
        invoice: InvoiceRow,
        payment_id: int,
        evidence: dict[str, Any],
        result: PollResult,
        settled: StepSettlements,
    ) -> None:
        """A payment reached its depth: the invoice settles, or, when it cannot settle by
        itself (see :meth:`_held`; or it was invalidated while the payment confirmed), the
        payment is announced as held (``invoice.payment_held``). One refunded in full while it
        confirmed settles (status ``refunded``) with no purchase and no follow-up."""
        settled.rows[invoice.id] = invoice  # written only if nobody changed it meanwhile
        if invoice.state != InvoiceState.PROCESSING:
            settled.events.append((invoice.snapshot(), "invoice.payment_held", evidence))
            return
        invoice.state = InvoiceState.SETTLED
        if evidence.get("late") and invoice.status == InvoiceStatus.NONE:
            invoice.status = InvoiceStatus.PAID_LATE  # a refund in the same range wins
        invoice.settled_at = self.clock.now()
        result.settled.append(invoice.id)
        settled.events.append((invoice.snapshot(), "invoice.settled", evidence))
        # refunded in full before its depth (an order cancelled at once): no sale to survey
        if invoice.contact_id is not None and invoice.refunded_amount < invoice.amount:
            settled.followups.setdefault(invoice.merchant_id, []).append(
                followups.SettledPayment(
                    contact_id=invoice.contact_id,
                    payment_ref=payment_ref(payment_id),
                    invoice_ref=invoice.id,
                    amount_minor=int(evidence["amount"]),
                    currency=self._symbol(evidence["token"]),
                    settled_at=invoice.settled_at,
                )
            )

    def _sales_back(self, restored: list[tuple[Invoice, Payment]]) -> StepSettlements:
        """The follow-ups of sales a reorged full refund brought back (:func:`roll_back`)."""
        settled = StepSettlements()
        for invoice, payment in restored:
            if invoice.contact_id is None:  # roll_back returns only invoices with a contact
                continue
            settled.followups.setdefault(invoice.merchant_id, []).append(
                followups.SettledPayment(
                    contact_id=invoice.contact_id,
                    payment_ref=payment_ref(payment),
                    invoice_ref=invoice.id,
                    amount_minor=payment.amount,
                    currency=self._symbol(payment.token),
                    settled_at=invoice.settled_at or self.clock.now(),
                )
            )
        return settled

    def _announce_unmatched(
        self,
        session: Session,
        chain_id: int,
        batch: StepBatch,
        ids: list[int],
        events: InvoiceEvents,
    ) -> None:
        """``payment.unmatched`` for the range's payments no invoice of ours matches, to the
        merchant whose router account received them (none: nobody to tell)."""
        unmatched = [i for i, row in enumerate(batch.payment_rows) if row["invoice_id"] is None]
        if not unmatched:
            return
        addresses = {batch.payment_rows[i]["merchant_address"] for i in unmatched}
        merchants = repo.merchants_by_address(session, chain_id, addresses)
        for i in unmatched:
            row = batch.payment_rows[i]
            merchant = merchants.get(row["merchant_address"].lower())
            if merchant is not None:
                log.warning("payment %s matches no invoice", row["tx_hash"])
                events.emit_payment(merchant, "payment.unmatched", payment_object(row, ids[i]))

    def _schedule(self, session: Session, settled: StepSettlements) -> None:
        """The CRM's follow-ups for a step's settlements, one bulk call per merchant. A CRM
        refusal, or data the CRM's tables refuse, never stops a settlement: the payment is on
        chain either way, and failing the step would fail it again on every retry, stopping
        every later settlement too (a BIGINT purchase amount once did). A database that is
        away (``OperationalError``) still fails the step, to be retried whole. Merchants go
        in id order, as the worker's periodic scheduling takes them: both lock contacts
        merchant by merchant, so the same order keeps them from deadlocking."""
        for merchant_id, payments in sorted(settled.followups.items()):
            try:
                with session.begin_nested():
                    outcome = followups.schedule_for_payments(
                        session, merchant_id, payments, self.clock
                    )
            except CRMError as exc:
                log.error("no follow-ups for merchant %s: %s", merchant_id, exc.code)
                continue
            except (DataError, IntegrityError, ValueError, OverflowError) as exc:
                log.error(
                    "no follow-ups for merchant %s (%d settlements): %s",
                    merchant_id,
                    len(payments),
                    type(exc).__name__,
                )
                continue
            for ref in outcome.missing_contact:
                log.info("no follow-up for %s: contact not found", ref)

    # -- loop -------------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        *,
        poll_interval: float = 1.0,
        progress: Callable[[PollResult], None] | None = None,
        idle_step: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Catch up as fast as the node answers, then follow the head.

        Caught up, the indexer asks the node for its head block (number and hash: one cheap
        call, no database work) every ``poll_interval`` seconds and takes a full step as soon
        as it changed (a new block, or a reorg at the same height), and at least every
        ``idle_step`` seconds anyway (invoice expiry is a matter of time, not blocks). A block
        that arrived while a step ran starts the next step one ``poll_interval`` after that
        step began, without a head check: under a stream of blocks (anvil mines one per
        transaction) the indexer steps once per interval and blocks arriving faster share a
        step, since a step costs ~5 ms of CPU before its first payment (measured: 20 ms
        coalescing cut the e2e bench's indexer CPU by ~15 % and its drag on the node by a
        third). Behind by more than one step's range, it steps back to back. An idle full step
        costs ~8 ms of CPU and a transaction; the head call ~0.2 ms. A step that fails because
        the database or the node is away is retried with backoff
        (:func:`api.retry.until_stopped`); a reorg deeper than the window, or a bug, ends the
        loop. ``monotonic`` is the clock the intervals are measured on (a parameter so tests
        can check the waits the loop asks for without measuring elapsed time)."""
        retrying = until_stopped(stop, base=poll_interval, what="indexer step", logger=log)
        configure_mappers()  # once, now: not inside the first step that settles a payment
        while not stop.is_set():
            began = monotonic()
            result = retrying(self.poll_once)
            if result is None:  # stopped while the database or the node was away
                break
            if progress is not None:
                progress(result)
            if not result.caught_up:
                continue
            seen = retrying(self.chain.latest_block)
            if seen is None or seen[0] != result.to_block:
                # a block arrived after the step read the head: the next step takes it, one
                # poll interval after this one began (blocks arriving faster share a step)
                stop.wait(max(0.0, began + poll_interval - monotonic()))
                continue
            due = monotonic() + idle_step
            while not stop.wait(poll_interval):
                if monotonic() >= due or retrying(self.chain.latest_block) != seen:
                    break


def _depth(invoice: InvoiceRow | None) -> int:
    """Blocks a payment needs (0 and 1 both mean: settle on first sight)."""
    return max(1, invoice.confirmations_required) if invoice is not None else 1
