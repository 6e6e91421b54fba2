"""A rolled-back log no longer hides the same log coming back

Payments and refunds were unique on (chain, tx, log index, block hash) whatever their state, and
the indexer skipped any log it had a row for. A block rolled back and then canonical again with
the same hash (a fork that flips back, a node that briefly reported a lower head) brought back
logs the indexer took for already applied: their rows said ``reorged``, so the payment was
lost. The key is now unique only among rows still on chain, so the log comes back as a new row.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KEY = ["chain_id", "tx_hash", "log_index", "block_hash"]  # the old constraint's order
_LIVE_KEY = ["tx_hash", "log_index", "block_hash", "chain_id"]
_LIVE = {"api_payment": "state <> 'reorged'", "api_refund": "NOT reorged"}


def upgrade() -> None:
    for table, live in _LIVE.items():
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"uq_{table}_chain_id_tx_hash_log_index_block_hash", "unique")
        op.create_index(
            f"uq_{table}_live_log",
            table,
            _LIVE_KEY,
            unique=True,
            sqlite_where=sa.text(live),
            postgresql_where=sa.text(live),
        )


def downgrade() -> None:
    """Fails if a log came back after its roll-back (two rows share a key): those rows are
    the evidence the old constraint cannot hold."""
    for table in _LIVE:
        op.drop_index(f"uq_{table}_live_log", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.create_unique_constraint(
                f"uq_{table}_chain_id_tx_hash_log_index_block_hash", _KEY
            )
