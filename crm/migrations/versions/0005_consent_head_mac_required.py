"""Every consent ledger head carries its MAC: a head stripped of it can no longer be re-sealed

Until now a head without a MAC was legitimate (migration 0003's backfill; appends by callers that
passed no key ring), so an append or a seal pass sealed such a head as it stood. Someone who
can write the database could NULL a head's MAC, truncate the ledger (say, drop a withdrawal)
and let the next append seal the result. Every writer now seals, and this revision makes the
column NOT NULL, so that downgrade needs a schema change.

The backfilled heads are sealed first, with the master key: ``crm.db.upgrade(keyring=...)``
(``followpay db upgrade`` and ``followpay serve``) stops at 0004, seals them, then applies this
revision. Run without a key ring over unsealed heads, this revision stops and says so.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 21:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MAC = sqlmodel.sql.sqltypes.AutoString(length=64)


def upgrade() -> None:
    unsealed = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM crm_consent_head WHERE mac IS NULL"))
        .scalar_one()
    )
    if unsealed:
        raise RuntimeError(
            f"{unsealed} consent ledger heads have no MAC: run `followpay db upgrade` (it seals "
            "them with the master key before this revision) instead of a bare alembic upgrade"
        )
    with op.batch_alter_table("crm_consent_head") as batch:
        batch.alter_column("mac", existing_type=_MAC, nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("crm_consent_head") as batch:
        batch.alter_column("mac", existing_type=_MAC, nullable=True)
