"""Phone call tasks are closed by support agents: outcome, when and by whom

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import crm._base

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_phone_task") as batch:
        batch.add_column(sa.Column("outcome", sa.String(length=16), nullable=True))
        batch.add_column(
            sa.Column("completed_at", crm._base.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("completed_by", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_phone_task") as batch:
        batch.drop_column("completed_by")
        batch.drop_column("completed_at")
        batch.drop_column("outcome")
