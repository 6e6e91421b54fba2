"""In-app messages keep their rating-link token encrypted, not inside the stored body

The body used to hold the links with the raw single-use token: anyone reading the database
could rate on the customer's behalf. The body now holds a placeholder and the token is
encrypted under the contact's data key (gone with the contact on erasure); links are rendered
when the message is read.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 12:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_inapp_message") as batch:
        batch.add_column(sa.Column("link_token_enc", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_inapp_message") as batch:
        batch.drop_column("link_token_enc")
