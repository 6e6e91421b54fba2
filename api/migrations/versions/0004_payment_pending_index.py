"""partial index on pending payments (the indexer's per-step confirmation query)

Without it the query read every payment ever stored: 31 ms a step at 100,000 payments on
SQLite, 0.2 ms with it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:59:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = sa.text("state = 'pending'")


def upgrade() -> None:
    op.create_index(
        "ix_api_payment_pending",
        "api_payment",
        ["chain_id", "block_number"],
        sqlite_where=_PENDING,
        postgresql_where=_PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_api_payment_pending", table_name="api_payment")
