"""Consent ledger heads, sealed: deleting the newest entries left a chain that still verified

The hash chain only proves each entry's predecessor, so removing a withdrawal (and rewriting its
projection row) left a shorter chain that recomputed. ``crm_consent_head`` keeps, per contact,
the last ``seq`` and hash under a MAC keyed from the CRM master key (written by every append).

Backfill: one row per contact that has ledger entries, naming its current last entry, with no
MAC (a migration has no key ring); ``crm.consent.service.seal_unsealed_heads`` seals them, and any
sealed append does so too. Whatever was removed before this revision runs cannot be detected.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "crm_consent_head",
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("head_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("flagged_seq", sa.Integer(), nullable=True),
        sa.Column("mac", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["crm_contact.id"],
            name=op.f("fk_crm_consent_head_contact_id_crm_contact"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["crm_merchant.id"],
            name=op.f("fk_crm_consent_head_merchant_id_crm_merchant"),
        ),
        sa.PrimaryKeyConstraint("contact_id", name=op.f("pk_crm_consent_head")),
    )
    op.execute(
        "INSERT INTO crm_consent_head (contact_id, merchant_id, seq, head_hash) "
        "SELECT e.contact_id, e.merchant_id, e.seq, e.hash FROM crm_consent_event e "
        "WHERE e.seq = (SELECT MAX(x.seq) FROM crm_consent_event x "
        "WHERE x.contact_id = e.contact_id)"
    )


def downgrade() -> None:
    op.drop_table("crm_consent_head")
