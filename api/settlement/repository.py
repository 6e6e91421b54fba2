"""All SQL for invoices, payments, refunds and the indexer checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TypeVar

import sqlalchemy as sa
from sqlmodel import Session, col, select

from api.settlement.models import (
    IndexedBlock,
    IndexerCursor,
    Invoice,
    InvoiceState,
    MerchantAccount,
    Payment,
    PaymentState,
    Refund,
)

_Row = TypeVar("_Row")

__all__ = [
    "account_by_address",
    "account_for_merchant",
    "add",
    "allocate_invoice_number",
    "blocks_after",
    "cursor",
    "delete_blocks_after",
    "expirable",
    "get_invoice",
    "invoice_by_number",
    "invoices_for_order",
    "list_invoices",
    "payment_exists",
    "payments_after",
    "payments_for_invoice",
    "pending_payments",
    "prune_blocks",
    "recent_blocks",
    "refund_exists",
    "refunds_after",
    "save_block",
]


def add(session: Session, row: _Row) -> _Row:
    session.add(row)
    session.flush()
    return row


def account_for_merchant(
    session: Session, merchant_id: int, chain_id: int
) -> MerchantAccount | None:
    stmt = select(MerchantAccount).where(
        MerchantAccount.merchant_id == merchant_id, MerchantAccount.chain_id == chain_id
    )
    return session.exec(stmt).first()


def account_by_address(session: Session, chain_id: int, address: str) -> MerchantAccount | None:
    stmt = select(MerchantAccount).where(
        MerchantAccount.chain_id == chain_id,
        sa.func.lower(MerchantAccount.address) == address.lower(),
    )
    return session.exec(stmt).first()


def allocate_invoice_number(session: Session, account_id: int) -> int:
    """Atomically take the next on-chain invoice number (one UPDATE ... RETURNING)."""
    table = MerchantAccount.__table__  # type: ignore[attr-defined]
    stmt = (
        sa.update(table)
        .where(table.c.id == account_id)
        .values(next_invoice_number=table.c.next_invoice_number + 1)
        .returning(table.c.next_invoice_number)
    )
    return int(session.execute(stmt).scalar_one()) - 1


def get_invoice(session: Session, merchant_id: int, invoice_id: str) -> Invoice | None:
    stmt = select(Invoice).where(Invoice.id == invoice_id, Invoice.merchant_id == merchant_id)
    return session.exec(stmt).first()


def invoice_by_number(session: Session, account_id: int, number: int) -> Invoice | None:
    stmt = select(Invoice).where(Invoice.account_id == account_id, Invoice.number == number)
    return session.exec(stmt).first()


def invoices_for_order(session: Session, merchant_id: int, order_id: str) -> Sequence[Invoice]:
    stmt = select(Invoice).where(Invoice.merchant_id == merchant_id, Invoice.order_id == order_id)
    return session.exec(stmt).all()


def list_invoices(
    session: Session,
    merchant_id: int,
    *,
    state: InvoiceState | None = None,
    limit: int = 100,
) -> Sequence[Invoice]:
    stmt = select(Invoice).where(Invoice.merchant_id == merchant_id)
    if state is not None:
        stmt = stmt.where(Invoice.state == state)
    stmt = stmt.order_by(col(Invoice.created_at).desc(), col(Invoice.id).desc()).limit(limit)
    return session.exec(stmt).all()


def expirable(session: Session, now: datetime, limit: int) -> Sequence[Invoice]:
    stmt = (
        select(Invoice)
        .where(Invoice.state == InvoiceState.NEW, col(Invoice.expires_at) <= now)
        .limit(limit)
    )
    return session.exec(stmt).all()


def payment_exists(
    session: Session, chain_id: int, tx_hash: str, log_index: int, block_hash: str
) -> bool:
    stmt = select(Payment.id).where(
        Payment.chain_id == chain_id,
        Payment.tx_hash == tx_hash,
        Payment.log_index == log_index,
        Payment.block_hash == block_hash,
    )
    return session.exec(stmt).first() is not None


def refund_exists(
    session: Session, chain_id: int, tx_hash: str, log_index: int, block_hash: str
) -> bool:
    stmt = select(Refund.id).where(
        Refund.chain_id == chain_id,
        Refund.tx_hash == tx_hash,
        Refund.log_index == log_index,
        Refund.block_hash == block_hash,
    )
    return session.exec(stmt).first() is not None


def pending_payments(session: Session, chain_id: int) -> Sequence[Payment]:
    stmt = select(Payment).where(
        Payment.chain_id == chain_id, Payment.state == PaymentState.PENDING
    )
    return session.exec(stmt.order_by(col(Payment.block_number))).all()


def payments_for_invoice(session: Session, invoice_id: str) -> Sequence[Payment]:
    stmt = select(Payment).where(Payment.invoice_id == invoice_id).order_by(col(Payment.id))
    return session.exec(stmt).all()


def payments_after(session: Session, chain_id: int, block: int) -> Sequence[Payment]:
    stmt = select(Payment).where(
        Payment.chain_id == chain_id,
        Payment.block_number > block,
        Payment.state != PaymentState.REORGED,
    )
    return session.exec(stmt).all()


def refunds_after(session: Session, chain_id: int, block: int) -> Sequence[Refund]:
    stmt = select(Refund).where(
        Refund.chain_id == chain_id, Refund.block_number > block, col(Refund.reorged).is_(False)
    )
    return session.exec(stmt).all()


def cursor(
    session: Session, chain_id: int, router: str, start_block: int, now: datetime
) -> IndexerCursor:
    """The checkpoint row, created at ``start_block - 1`` on first use; locked for update."""
    stmt = select(IndexerCursor).where(
        IndexerCursor.chain_id == chain_id, IndexerCursor.router == router
    )
    row = session.exec(stmt.with_for_update()).first()
    if row is None:
        row = add(
            session,
            IndexerCursor(
                chain_id=chain_id, router=router, last_block=start_block - 1, updated_at=now
            ),
        )
    return row


def save_block(session: Session, cursor_id: int, number: int, block_hash: str) -> None:
    exists = session.exec(
        select(IndexedBlock).where(
            IndexedBlock.cursor_id == cursor_id, IndexedBlock.number == number
        )
    ).first()
    if exists is None:
        session.add(IndexedBlock(cursor_id=cursor_id, number=number, hash=block_hash))


def recent_blocks(session: Session, cursor_id: int, limit: int) -> Sequence[IndexedBlock]:
    stmt = (
        select(IndexedBlock)
        .where(IndexedBlock.cursor_id == cursor_id)
        .order_by(col(IndexedBlock.number).desc())
        .limit(limit)
    )
    return session.exec(stmt).all()


def blocks_after(session: Session, cursor_id: int, number: int) -> Sequence[IndexedBlock]:
    stmt = select(IndexedBlock).where(
        IndexedBlock.cursor_id == cursor_id, IndexedBlock.number > number
    )
    return session.exec(stmt).all()


def delete_blocks_after(session: Session, cursor_id: int, number: int) -> None:
    table = IndexedBlock.__table__  # type: ignore[attr-defined]
    session.execute(sa.delete(table).where(table.c.cursor_id == cursor_id, table.c.number > number))


def prune_blocks(session: Session, cursor_id: int, keep_from: int) -> None:
    table = IndexedBlock.__table__  # type: ignore[attr-defined]
    session.execute(
        sa.delete(table).where(table.c.cursor_id == cursor_id, table.c.number < keep_from)
    )
