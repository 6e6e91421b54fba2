"""Invoices, on-chain payments and the indexer's checkpoint (tables prefixed ``api_``).

Amounts are uint256 base units: :class:`crm._base.Uint256` stores them exactly (NUMERIC(78,0)
on PostgreSQL, a decimal string on SQLite, whose NUMERIC would round through a float).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from crm._base import JSONType, Uint256, UTCDateTime

__all__ = [
    "REOPENABLE_STATES",
    "IndexedBlock",
    "IndexerCursor",
    "Invoice",
    "InvoiceState",
    "InvoiceStatus",
    "MerchantAccount",
    "Payment",
    "PaymentState",
    "Refund",
    "Uint256",
]


class InvoiceState(StrEnum):
    NEW = "new"
    PROCESSING = "processing"
    SETTLED = "settled"
    EXPIRED = "expired"
    INVALID = "invalid"


#: States that no longer hold their order: another invoice may be created for it.
REOPENABLE_STATES = (InvoiceState.EXPIRED, InvoiceState.INVALID)


class InvoiceStatus(StrEnum):
    NONE = "none"
    PAID_LATE = "paid_late"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"
    MARKED = "marked"


class PaymentState(StrEnum):
    PENDING = "pending"  # seen, waiting for the invoice's confirmation depth
    CONFIRMED = "confirmed"
    REORGED = "reorged"  # its block left the canonical chain


class MerchantAccount(SQLModel, table=True):
    """A CRM merchant's on-chain identity on one chain."""

    __tablename__ = "api_merchant_account"
    # One account per merchant and chain (the invoice route and a reclaim rely on it).
    __table_args__ = (
        sa.UniqueConstraint("chain_id", "address"),
        sa.Index("uq_api_merchant_account_merchant_chain", "merchant_id", "chain_id", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: int = Field(foreign_key="crm_merchant.id", index=True)
    chain_id: int = Field(sa_type=sa.BigInteger)
    address: str = Field(max_length=42)
    payout: str = Field(max_length=42)
    operator: str = Field(max_length=42)
    next_invoice_number: int = Field(default=1, sa_type=sa.BigInteger)
    created_at: datetime = Field(sa_type=UTCDateTime)


class Invoice(SQLModel, table=True):
    __tablename__ = "api_invoice"
    __table_args__ = (
        sa.UniqueConstraint("account_id", "number"),
        sa.Index("ix_api_invoice_merchant_created", "merchant_id", "created_at", "id"),
        sa.Index("ix_api_invoice_merchant_order", "merchant_id", "order_id"),
        sa.Index(
            "uq_api_invoice_open_order",
            "merchant_id",
            "order_id",
            unique=True,
            sqlite_where=sa.text("state IN ('new', 'processing', 'settled')"),
            postgresql_where=sa.text("state IN ('new', 'processing', 'settled')"),
        ),
        sa.Index("ix_api_invoice_state_expires", "state", "expires_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    merchant_id: int = Field(foreign_key="crm_merchant.id")
    account_id: int = Field(foreign_key="api_merchant_account.id")
    number: int = Field(sa_type=sa.BigInteger)  # on-chain invoiceId, sequential per account
    order_id: str = Field(max_length=200)
    contact_id: int | None = Field(default=None)
    chain_id: int = Field(sa_type=sa.BigInteger)
    token: str = Field(max_length=42)
    amount: int = Field(sa_type=Uint256)
    fee: int = Field(default=0, sa_type=Uint256)
    payer: str = Field(max_length=42)
    deadline: int = Field(sa_type=sa.BigInteger)
    signature_r: str = Field(max_length=66)
    signature_vs: str = Field(max_length=66)
    # EIP-712 hashStruct of the signed intent (0x hex): the router's PaymentSettled event carries
    # it, so one comparison checks token, amount, fee, payer and deadline of a payment at once.
    intent_hash: str | None = Field(default=None, max_length=66)
    confirmations_required: int = 1
    state: InvoiceState = Field(default=InvoiceState.NEW, sa_type=sa.String(20))
    status: InvoiceStatus = Field(default=InvoiceStatus.NONE, sa_type=sa.String(20))
    paid_amount: int = Field(default=0, sa_type=Uint256)
    refunded_amount: int = Field(default=0, sa_type=Uint256)
    metadata_: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column("metadata", JSONType)
    )
    created_at: datetime = Field(sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    settled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


def _live_log_index(table: str, live: str) -> sa.Index:
    """A log's key, unique among the rows still on chain (``live``): tx hash first, the
    selective column (the block-range index leads with the chain)."""
    return sa.Index(
        f"uq_{table}_live_log",
        "tx_hash",
        "log_index",
        "block_hash",
        "chain_id",
        unique=True,
        sqlite_where=sa.text(live),
        postgresql_where=sa.text(live),
    )


class Payment(SQLModel, table=True):
    """One ``PaymentSettled`` log. Unique on (chain, tx, log index, block hash) among the rows
    not ``reorged``: re-applying the same log is a no-op, while the same transaction re-mined
    in another block after a reorg is a new row (the old one stays, marked ``reorged``, as
    evidence). So is a log whose block comes back after its roll-back (a fork that flips
    back, a node that briefly reported a lower head): the reorged row does not hide it."""

    __tablename__ = "api_payment"
    __table_args__ = (
        _live_log_index("api_payment", "state <> 'reorged'"),
        # every indexer step asks for the payments still waiting for depth: a handful, found
        # without reading the (ever-growing) confirmed ones
        sa.Index(
            "ix_api_payment_pending",
            "chain_id",
            "block_number",
            sqlite_where=sa.text("state = 'pending'"),
            postgresql_where=sa.text("state = 'pending'"),
        ),
        # a step's block range (stored keys, new ids) and a reorg's "above the fork": without the
        # chain id in front, SQLite reads every payment of the chain to filter the range
        sa.Index("ix_api_payment_chain_block", "chain_id", "block_number"),
    )

    id: int | None = Field(default=None, primary_key=True)
    invoice_id: str | None = Field(default=None, foreign_key="api_invoice.id", index=True)
    merchant_address: str = Field(max_length=42)
    invoice_number: int = Field(sa_type=Uint256)  # the router's invoiceId: any uint256
    chain_id: int = Field(sa_type=sa.BigInteger)
    tx_hash: str = Field(max_length=66)
    log_index: int
    block_number: int = Field(sa_type=sa.BigInteger)
    block_hash: str = Field(max_length=66)
    payer: str = Field(max_length=42)
    token: str = Field(max_length=42)
    amount: int = Field(sa_type=Uint256)
    fee: int = Field(sa_type=Uint256)
    #: The indexer cursor (router) that read the log: only it confirms or undoes the row.
    #: None: stored before 0015 on a chain with several cursors (any of them may).
    cursor_id: int | None = Field(default=None)
    state: PaymentState = Field(default=PaymentState.PENDING, sa_type=sa.String(20))
    late: bool = False
    seen_at: datetime = Field(sa_type=UTCDateTime)


class Refund(SQLModel, table=True):
    """One ``PaymentRefunded`` log. The router takes the refund's token and bound from an intent
    the merchant re-signs, so a refund need not be in the invoice's token: only one that is
    (``credited``) counts toward the invoice's ``refunded_amount``; another is kept as evidence.
    ``total_refunded`` is the event's running total for the invoice number (every token).
    Unique like :class:`Payment`'s logs, among the rows not ``reorged``."""

    __tablename__ = "api_refund"
    __table_args__ = (
        _live_log_index("api_refund", "NOT reorged"),
        sa.Index("ix_api_refund_chain_block", "chain_id", "block_number"),
    )

    id: int | None = Field(default=None, primary_key=True)
    invoice_id: str | None = Field(default=None, foreign_key="api_invoice.id", index=True)
    chain_id: int = Field(sa_type=sa.BigInteger)
    tx_hash: str = Field(max_length=66)
    log_index: int
    block_number: int = Field(sa_type=sa.BigInteger)
    block_hash: str = Field(max_length=66)
    to: str = Field(max_length=42)
    amount: int = Field(sa_type=Uint256)
    # None: indexed before migration 0010, when neither was stored (and every refund counted)
    token: str | None = Field(default=None, max_length=42)
    total_refunded: int | None = Field(default=None, sa_type=Uint256)
    credited: bool = Field(default=True, sa_column_kwargs={"server_default": sa.true()})  # 0010
    cursor_id: int | None = Field(default=None)  # as Payment's (0015)
    reorged: bool = False
    seen_at: datetime = Field(sa_type=UTCDateTime)


class IndexerCursor(SQLModel, table=True):
    """The last block whose logs are fully applied, per (chain, router)."""

    __tablename__ = "api_indexer_cursor"
    __table_args__ = (sa.UniqueConstraint("chain_id", "router"),)

    id: int | None = Field(default=None, primary_key=True)
    chain_id: int = Field(sa_type=sa.BigInteger)
    router: str = Field(max_length=42)
    last_block: int = Field(sa_type=sa.BigInteger)
    updated_at: datetime = Field(sa_type=UTCDateTime)


class IndexedBlock(SQLModel, table=True):
    """Hashes of processed blocks (range ends and blocks with our logs) for reorg detection."""

    __tablename__ = "api_indexed_block"
    __table_args__ = (sa.UniqueConstraint("cursor_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    cursor_id: int = Field(foreign_key="api_indexer_cursor.id")
    number: int = Field(sa_type=sa.BigInteger)
    hash: str = Field(max_length=66)
