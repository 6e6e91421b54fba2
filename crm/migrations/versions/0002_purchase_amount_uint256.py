"""Purchases hold uint256 amounts: BIGINT overflowed at ~9.2 tokens of an 18-decimal ERC-20

A settled payment above 2**63 - 1 base units failed the indexer's whole step, on every retry.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 04:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import crm._base

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("crm_purchase") as batch:
        batch.alter_column(
            "amount_minor",
            existing_type=sa.BigInteger(),
            type_=crm._base.Uint256(),
            existing_nullable=False,
            postgresql_using="amount_minor::numeric(78,0)",
        )


def downgrade() -> None:
    with op.batch_alter_table("crm_purchase") as batch:
        batch.alter_column(
            "amount_minor",
            existing_type=crm._base.Uint256(),
            type_=sa.BigInteger(),
            existing_nullable=False,
            postgresql_using="amount_minor::bigint",
        )
