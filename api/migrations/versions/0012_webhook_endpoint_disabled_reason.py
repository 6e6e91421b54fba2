"""Why a webhook endpoint is disabled: by the merchant, or by the server after days of failures

An endpoint that failed every attempt for the whole retry schedule (~3.3 days) is disabled
(Stripe does the same), and the merchant sees why: ``disabled_reason`` = ``failing``. A
merchant's own disable says ``merchant``; enabling it again clears it. Rows disabled before
this revision have no recorded reason (NULL).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_webhook_endpoints") as batch:
        batch.add_column(
            sa.Column("disabled_reason", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("api_webhook_endpoints") as batch:
        batch.drop_column("disabled_reason")
