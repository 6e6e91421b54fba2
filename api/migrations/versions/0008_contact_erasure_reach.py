"""Erasure and consent reach the API's own tables

A stored idempotent response names the contact whose data it holds (``contact_id``), so
erasing the contact destroys it instead of replaying the contact's name and e-mail for 24 h.
Phone tasks are found by contact (``ix_api_phone_task_contact``): a withdrawal or an erasure
cancels the contact's open calls, and an export lists them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_idempotency_keys") as batch:
        batch.add_column(sa.Column("contact_id", sa.Integer(), nullable=True))
        batch.create_index("ix_api_idempotency_keys_contact_id", ["contact_id"])
    op.create_index("ix_api_phone_task_contact", "api_phone_task", ["contact_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_api_phone_task_contact", table_name="api_phone_task")
    with op.batch_alter_table("api_idempotency_keys") as batch:
        batch.drop_index("ix_api_idempotency_keys_contact_id")
        batch.drop_column("contact_id")
