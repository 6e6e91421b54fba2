"""Phone tasks keep their daily calling window, so a missed one moves to the next day's

A task was written with one window (``call_after``/``call_before``); once it passed, the task
stayed open and never callable again. The window's local minutes are kept now, and the worker
moves an open task whose window passed to the contact's next one. Rows from before this
revision have none: their window is read from the local times of their stored bounds.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 13:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_phone_task") as batch:
        batch.add_column(sa.Column("window_start_minute", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("window_end_minute", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_phone_task") as batch:
        batch.drop_column("window_end_minute")
        batch.drop_column("window_start_minute")
