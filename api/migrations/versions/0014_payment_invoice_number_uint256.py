"""A payment's invoice number is a uint256, as the router's ``invoiceId``

The router settles any ``invoiceId`` a merchant's operator signed; ours are small, but a
payment to a merchant's account with a number beyond a BIGINT (its own numbering, or a key it
holds signing 2**64) failed the insert (PostgreSQL) or the lookup (SQLite) of the indexer's
whole step, every time: no invoice of any merchant settled again. The column now holds the
whole number (NUMERIC(78,0) on PostgreSQL, a decimal string on SQLite, like the amounts).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import api.settlement.models

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite rebuilds the table: its partial indexes are made again as they were
_PARTIAL = {
    "uq_api_payment_live_log": (
        ["tx_hash", "log_index", "block_hash", "chain_id"],
        True,
        "state <> 'reorged'",
    ),
    "ix_api_payment_pending": (["chain_id", "block_number"], False, "state = 'pending'"),
}


def _retype(old: sa.types.TypeEngine, new: sa.types.TypeEngine, using: str) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        for name in _PARTIAL:
            op.drop_index(name, table_name="api_payment")
    with op.batch_alter_table("api_payment") as batch:
        batch.alter_column(
            "invoice_number",
            existing_type=old,
            type_=new,
            existing_nullable=False,
            postgresql_using=using,
        )
    if sqlite:
        for name, (columns, unique, where) in _PARTIAL.items():
            op.create_index(
                name, "api_payment", columns, unique=unique, sqlite_where=sa.text(where)
            )


def upgrade() -> None:
    _retype(
        sa.BigInteger(),
        api.settlement.models.Uint256(length=78),
        "invoice_number::numeric(78, 0)",
    )


def downgrade() -> None:
    """Stops, changing nothing, if a payment's number is beyond a BIGINT: that evidence does
    not fit the old column (SQLite's cast would clamp it silently)."""
    stored = op.get_bind().execute(sa.text("SELECT id, invoice_number FROM api_payment"))
    beyond = [str(row[0]) for row in stored if int(row[1]) > 2**63 - 1]
    if beyond:
        raise RuntimeError(
            "payments with an invoice number beyond a BIGINT (ids "
            + ", ".join(beyond[:10])
            + "): they would be lost; delete them first if that is meant"
        )
    _retype(
        api.settlement.models.Uint256(length=78),
        sa.BigInteger(),
        "invoice_number::bigint",
    )
