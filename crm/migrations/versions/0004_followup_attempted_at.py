"""Follow-ups record when a delivery that may have reached the contact began

The frequency cap counted only ``sent_at``: a survey in flight, or one that ended
``failed``/``delivery_uncertain`` or ``interrupted`` (possibly delivered, never marked sent),
let the next survey through. Existing such rows are stamped from their last claim.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# prepared (a live feedback token) and not known to have failed for sure
_BACKFILL = """
UPDATE crm_followup SET attempted_at = COALESCE(queued_at, updated_at)
WHERE sent_at IS NULL AND (
    (state = 'failed' AND reason IN ('delivery_uncertain', 'interrupted'))
    OR (state = 'queued' AND EXISTS (
        SELECT 1 FROM crm_feedback
        WHERE crm_feedback.followup_id = crm_followup.id AND crm_feedback.token_hash IS NOT NULL
    ))
)
"""


def upgrade() -> None:
    with op.batch_alter_table("crm_followup") as batch:
        batch.add_column(sa.Column("attempted_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(_BACKFILL)


def downgrade() -> None:
    with op.batch_alter_table("crm_followup") as batch:
        batch.drop_column("attempted_at")
