"""Refunds record their token, the router's running total, and whether they count

A ``PaymentRefunded`` log names its token (the merchant re-signs the intent it refunds under,
so it need not be the invoice's) and the invoice number's running total. The indexer counted
every refund's amount toward the invoice, in whatever token. Refunds indexed before this
revision keep NULL token and total (unknown) and stay counted, as they were.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 22:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import crm._base

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_refund") as batch:
        batch.add_column(sa.Column("token", sa.String(length=42), nullable=True))
        batch.add_column(sa.Column("total_refunded", crm._base.Uint256(), nullable=True))
        batch.add_column(
            sa.Column("credited", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("api_refund") as batch:
        batch.drop_column("credited")
        batch.drop_column("total_refunded")
        batch.drop_column("token")
