"""Each payment and refund names the indexer cursor (router) that read its log

Two routers indexed into one database (an upgraded router beside the old one) share the
chain's blocks. A cursor confirmed every pending payment of the chain by block number, and
undid every payment in a block it had also stored, so one router's reorg or confirmation
acted on the other's payments. Rows stored before this revision get their chain's cursor
when the chain has exactly one; with several, they stay NULL and any cursor of the chain may
confirm or undo them, as before.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08 01:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("api_payment", "api_refund")


def upgrade() -> None:
    cursors = sa.table("api_indexer_cursor", sa.column("id"), sa.column("chain_id"))
    for name in _TABLES:
        # a plain ADD COLUMN (no foreign key): SQLite need not rebuild the table
        op.add_column(name, sa.Column("cursor_id", sa.Integer(), nullable=True))
        table = sa.table(name, sa.column("cursor_id"), sa.column("chain_id"))
        same_chain = cursors.c.chain_id == table.c.chain_id
        only = sa.select(cursors.c.id).where(same_chain).scalar_subquery()
        count = sa.select(sa.func.count()).select_from(cursors).where(same_chain)
        op.execute(table.update().values(cursor_id=only).where(count.scalar_subquery() == 1))


def downgrade() -> None:
    for table in _TABLES:  # SQLite >= 3.35 drops an unindexed column in place, like PostgreSQL
        op.execute(f"ALTER TABLE {table} DROP COLUMN cursor_id")
