"""(chain_id, block_number) indexes on payments and refunds, replacing block_number alone

Every indexer step reads the payments of its block range (stored keys, then the new ids). With
only ``block_number`` indexed, SQLite's planner preferred the unique index led by ``chain_id``
and read every payment of the chain: a step of 30 payments went from 25 ms to 38 ms over the
first 3,000 payments and kept growing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 22:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("api_payment", "api_refund"):
        op.create_index(f"ix_{table}_chain_block", table, ["chain_id", "block_number"])
        op.drop_index(f"ix_{table}_block_number", table_name=table)


def downgrade() -> None:
    for table in ("api_payment", "api_refund"):
        op.create_index(f"ix_{table}_block_number", table, ["block_number"])
        op.drop_index(f"ix_{table}_chain_block", table_name=table)
