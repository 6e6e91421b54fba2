"""invoice intent hash (router v2: PaymentSettled carries the EIP-712 struct hash)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from eth_hash.auto import keccak

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here on purpose: a migration must not change when application code does.
_TYPEHASH = keccak(
    b"PaymentIntent(address merchant,address token,uint256 amount,uint256 fee,"
    b"uint256 invoiceId,address payer,uint256 deadline)"
)


def _address(value: str) -> bytes:
    return bytes(12) + bytes.fromhex(value[2:])


def _uint(value: object) -> bytes:  # amounts are decimal strings on SQLite, NUMERIC on PostgreSQL
    return int(str(value)).to_bytes(32, "big")


def upgrade() -> None:
    with op.batch_alter_table("api_invoice") as batch:
        batch.add_column(sa.Column("intent_hash", sa.String(length=66), nullable=True))
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT i.id, a.address, i.token, i.amount, i.fee, i.number, i.payer, i.deadline "
            "FROM api_invoice i JOIN api_merchant_account a ON a.id = i.account_id"
        )
    ).all()
    for row in rows:
        words = (
            _address(row.address),
            _address(row.token),
            _uint(row.amount),
            _uint(row.fee),
            _uint(row.number),
            _address(row.payer),
            _uint(row.deadline),
        )
        digest = keccak(_TYPEHASH + b"".join(words))
        conn.execute(
            sa.text("UPDATE api_invoice SET intent_hash = :h WHERE id = :id"),
            {"h": "0x" + digest.hex(), "id": row.id},
        )


def downgrade() -> None:
    with op.batch_alter_table("api_invoice") as batch:
        batch.drop_column("intent_hash")
