"""One router account per merchant and chain

The invoice route reads "the" account of a merchant on a chain, and a reclaim moves a record
only to a merchant without one; two concurrent registrations could leave two. An install that
already has such duplicates stops here, naming them: an operator keeps one (the one its
invoices use) and deletes the other by hand.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    duplicates = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT merchant_id, chain_id, count(*) FROM api_merchant_account "
                "GROUP BY merchant_id, chain_id HAVING count(*) > 1"
            )
        )
        .all()
    )
    if duplicates:
        named = ", ".join(f"merchant {m} on chain {c} ({n} rows)" for m, c, n in duplicates)
        raise RuntimeError(f"api_merchant_account has duplicate accounts: {named}")
    # A unique index, not a constraint: SQLite would rebuild the table, which api_invoice's
    # foreign key forbids dropping.
    op.create_index(
        "uq_api_merchant_account_merchant_chain",
        "api_merchant_account",
        ["merchant_id", "chain_id"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_api_merchant_account_merchant_chain", table_name="api_merchant_account")
