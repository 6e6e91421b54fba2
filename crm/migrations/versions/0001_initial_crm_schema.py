"""initial crm schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 07:14:50.475797
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "crm_merchant",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_merchant")),
    )
    op.create_table(
        "crm_audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=True),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("object_type", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("object_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["crm_merchant.id"],
            name=op.f("fk_crm_audit_log_merchant_id_crm_merchant"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_audit_log")),
    )
    op.create_index(
        op.f("ix_crm_audit_log_merchant_id_at"),
        "crm_audit_log",
        ["merchant_id", "at"],
        unique=False,
    )

    op.create_table(
        "crm_contact",
        sa.Column("locale", sqlmodel.sql.sqltypes.AutoString(length=35), nullable=True),
        sa.Column("time_zone", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("segment", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("tier", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("personalised", sa.Boolean(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("name_enc", sa.LargeBinary(), nullable=True),
        sa.Column("email_enc", sa.LargeBinary(), nullable=True),
        sa.Column("phone_enc", sa.LargeBinary(), nullable=True),
        sa.Column("email_index", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["crm_merchant.id"],
            name=op.f("fk_crm_contact_merchant_id_crm_merchant"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_contact")),
        sa.UniqueConstraint(
            "merchant_id", "email_index", name=op.f("uq_crm_contact_merchant_id_email_index")
        ),
    )
    op.create_index(
        op.f("ix_crm_contact_merchant_id"), "crm_contact", ["merchant_id"], unique=False
    )

    op.create_table(
        "crm_followup_policy",
        sa.Column("trigger", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("purpose", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("delay_minutes", sa.Integer(), nullable=False),
        sa.Column("periodic_after_days", sa.Integer(), nullable=False),
        sa.Column("channel_order", sa.JSON(), nullable=False),
        sa.Column("segment_rules", sa.JSON(), nullable=False),
        sa.Column("frequency_cap_days", sa.Integer(), nullable=False),
        sa.Column("window_start_minute", sa.Integer(), nullable=False),
        sa.Column("window_end_minute", sa.Integer(), nullable=False),
        sa.Column("expiry_days", sa.Integer(), nullable=False),
        sa.Column("reward_points", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["crm_merchant.id"],
            name=op.f("fk_crm_followup_policy_merchant_id_crm_merchant"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_followup_policy")),
        sa.UniqueConstraint(
            "merchant_id", "trigger", name=op.f("uq_crm_followup_policy_merchant_id_trigger")
        ),
    )
    op.create_table(
        "crm_consent_event",
        sa.Column("purpose", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("channel", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("legal_basis", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("policy_version", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prev_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.CheckConstraint(
            "action IN ('grant', 'withdraw', 'object')", name=op.f("ck_crm_consent_event_action")
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["crm_contact.id"],
            name=op.f("fk_crm_consent_event_contact_id_crm_contact"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["crm_merchant.id"],
            name=op.f("fk_crm_consent_event_merchant_id_crm_merchant"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_consent_event")),
        sa.UniqueConstraint("contact_id", "seq", name=op.f("uq_crm_consent_event_contact_id_seq")),
    )
    op.create_table(
        "crm_contact_key",
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["crm_contact.id"],
            name=op.f("fk_crm_contact_key_contact_id_crm_contact"),
        ),
        sa.PrimaryKeyConstraint("contact_id", name=op.f("pk_crm_contact_key")),
    )
    op.create_table(
        "crm_contact_wallet",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("address_enc", sa.LargeBinary(), nullable=True),
        sa.Column("address_index", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["crm_contact.id"],
            name=op.f("fk_crm_contact_wallet_contact_id_crm_contact"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["crm_merchant.id"],
            name=op.f("fk_crm_contact_wallet_merchant_id_crm_merchant"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_contact_wallet")),
        sa.UniqueConstraint(
            "merchant_id",
            "address_index",
            name=op.f("uq_crm_contact_wallet_merchant_id_address_index"),
        ),
    )
    op.create_index(
        op.f("ix_crm_contact_wallet_contact_id"), "crm_contact_wallet", ["contact_id"], unique=False
    )

    op.create_table(
        "crm_erasure_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("request_ref", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["crm_contact.id"],
            name=op.f("fk_crm_erasure_log_contact_id_crm_contact"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["crm_merchant.id"],
            name=op.f("fk_crm_erasure_log_merchant_id_crm_merchant"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_erasure_log")),
        sa.UniqueConstraint("contact_id", name=op.f("uq_crm_erasure_log_contact_id")),
    )
    op.create_table(
        "crm_followup",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("policy_id", sa.Integer(), nullable=True),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("purpose", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("payment_ref", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("invoice_ref", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("channel", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("channels", sa.JSON(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("responded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('scheduled', 'queued', 'sent', 'responded', 'suppressed', 'expired',"
            " 'failed', 'cancelled')",
            name=op.f("ck_crm_followup_state"),
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["crm_contact.id"], name=op.f("fk_crm_followup_contact_id_crm_contact")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["crm_merchant.id"],
            name=op.f("fk_crm_followup_merchant_id_crm_merchant"),
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"],
            ["crm_followup_policy.id"],
            name=op.f("fk_crm_followup_policy_id_crm_followup_policy"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_followup")),
        sa.UniqueConstraint(
            "merchant_id",
            "payment_ref",
            "kind",
            name=op.f("uq_crm_followup_merchant_id_payment_ref_kind"),
        ),
    )
    op.create_index(
        op.f("ix_crm_followup_contact_id_sent_at"),
        "crm_followup",
        ["contact_id", "sent_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_crm_followup_merchant_id_state_sent_at"),
        "crm_followup",
        ["merchant_id", "state", "sent_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_crm_followup_state_due_at"), "crm_followup", ["state", "due_at"], unique=False
    )

    op.create_table(
        "crm_purchase",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("payment_ref", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("invoice_ref", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_reason", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.CheckConstraint("amount_minor >= 0", name=op.f("ck_crm_purchase_amount_minor")),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["crm_contact.id"], name=op.f("fk_crm_purchase_contact_id_crm_contact")
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["crm_merchant.id"],
            name=op.f("fk_crm_purchase_merchant_id_crm_merchant"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_purchase")),
        sa.UniqueConstraint(
            "merchant_id", "payment_ref", name=op.f("uq_crm_purchase_merchant_id_payment_ref")
        ),
    )
    op.create_index(
        op.f("ix_crm_purchase_contact_id_settled_at"),
        "crm_purchase",
        ["contact_id", "settled_at"],
        unique=False,
    )

    op.create_table(
        "crm_consent_state",
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("purpose", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("channel", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "state IN ('granted', 'withdrawn', 'objected')", name=op.f("ck_crm_consent_state_state")
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["crm_contact.id"],
            name=op.f("fk_crm_consent_state_contact_id_crm_contact"),
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["crm_consent_event.id"],
            name=op.f("fk_crm_consent_state_event_id_crm_consent_event"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["crm_merchant.id"],
            name=op.f("fk_crm_consent_state_merchant_id_crm_merchant"),
        ),
        sa.PrimaryKeyConstraint(
            "contact_id", "purpose", "channel", name=op.f("pk_crm_consent_state")
        ),
    )
    op.create_table(
        "crm_feedback",
        sa.Column("rating", sa.Integer(), nullable=True),
        sa.Column("nps", sa.Integer(), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("followup_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("token_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("comment_enc", sa.LargeBinary(), nullable=True),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("edit_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "nps IS NULL OR (nps BETWEEN 0 AND 10)", name=op.f("ck_crm_feedback_nps")
        ),
        sa.CheckConstraint(
            "rating IS NULL OR (rating BETWEEN 1 AND 5)", name=op.f("ck_crm_feedback_rating")
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["crm_contact.id"], name=op.f("fk_crm_feedback_contact_id_crm_contact")
        ),
        sa.ForeignKeyConstraint(
            ["followup_id"],
            ["crm_followup.id"],
            name=op.f("fk_crm_feedback_followup_id_crm_followup"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["crm_merchant.id"],
            name=op.f("fk_crm_feedback_merchant_id_crm_merchant"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_feedback")),
        sa.UniqueConstraint("followup_id", name=op.f("uq_crm_feedback_followup_id")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_crm_feedback_token_hash")),
    )
    op.create_index(
        op.f("ix_crm_feedback_contact_id"), "crm_feedback", ["contact_id"], unique=False
    )
    op.create_index(
        op.f("ix_crm_feedback_merchant_id_submitted_at"),
        "crm_feedback",
        ["merchant_id", "submitted_at"],
        unique=False,
    )

    op.create_table(
        "crm_followup_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("followup_id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("from_state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("to_state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["followup_id"],
            ["crm_followup.id"],
            name=op.f("fk_crm_followup_event_followup_id_crm_followup"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["crm_merchant.id"],
            name=op.f("fk_crm_followup_event_merchant_id_crm_merchant"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_followup_event")),
    )
    op.create_index(
        op.f("ix_crm_followup_event_followup_id"),
        "crm_followup_event",
        ["followup_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_crm_followup_event_merchant_id_to_state_at"),
        "crm_followup_event",
        ["merchant_id", "to_state", "at"],
        unique=False,
    )

    op.create_table(
        "crm_reward_entry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("followup_id", sa.Integer(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["crm_contact.id"],
            name=op.f("fk_crm_reward_entry_contact_id_crm_contact"),
        ),
        sa.ForeignKeyConstraint(
            ["followup_id"],
            ["crm_followup.id"],
            name=op.f("fk_crm_reward_entry_followup_id_crm_followup"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["crm_merchant.id"],
            name=op.f("fk_crm_reward_entry_merchant_id_crm_merchant"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_reward_entry")),
        sa.UniqueConstraint("followup_id", name=op.f("uq_crm_reward_entry_followup_id")),
    )
    op.create_index(
        op.f("ix_crm_reward_entry_contact_id"), "crm_reward_entry", ["contact_id"], unique=False
    )

    op.create_table(
        "crm_ticket",
        sa.Column("assignee", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
        sa.Column("root_cause_tags", sa.JSON(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("feedback_id", sa.Integer(), nullable=False),
        sa.Column("followup_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_response_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("breached_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('open', 'assigned', 'responded', 'resolved')",
            name=op.f("ck_crm_ticket_state"),
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["crm_contact.id"], name=op.f("fk_crm_ticket_contact_id_crm_contact")
        ),
        sa.ForeignKeyConstraint(
            ["feedback_id"],
            ["crm_feedback.id"],
            name=op.f("fk_crm_ticket_feedback_id_crm_feedback"),
        ),
        sa.ForeignKeyConstraint(
            ["followup_id"],
            ["crm_followup.id"],
            name=op.f("fk_crm_ticket_followup_id_crm_followup"),
        ),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["crm_merchant.id"],
            name=op.f("fk_crm_ticket_merchant_id_crm_merchant"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_ticket")),
        sa.UniqueConstraint("feedback_id", name=op.f("uq_crm_ticket_feedback_id")),
    )
    op.create_index(op.f("ix_crm_ticket_contact_id"), "crm_ticket", ["contact_id"], unique=False)
    op.create_index(
        "ix_crm_ticket_queue", "crm_ticket", ["merchant_id", "state", "due_at"], unique=False
    )

    op.create_table(
        "crm_ticket_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ticket_id", sa.Integer(), nullable=False),
        sa.Column("merchant_id", sa.Integer(), nullable=False),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["merchant_id"],
            ["crm_merchant.id"],
            name=op.f("fk_crm_ticket_event_merchant_id_crm_merchant"),
        ),
        sa.ForeignKeyConstraint(
            ["ticket_id"], ["crm_ticket.id"], name=op.f("fk_crm_ticket_event_ticket_id_crm_ticket")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crm_ticket_event")),
    )
    op.create_index(
        op.f("ix_crm_ticket_event_ticket_id"), "crm_ticket_event", ["ticket_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_crm_ticket_event_ticket_id"), table_name="crm_ticket_event")

    op.drop_table("crm_ticket_event")
    op.drop_index("ix_crm_ticket_queue", table_name="crm_ticket")
    op.drop_index(op.f("ix_crm_ticket_contact_id"), table_name="crm_ticket")

    op.drop_table("crm_ticket")
    op.drop_index(op.f("ix_crm_reward_entry_contact_id"), table_name="crm_reward_entry")

    op.drop_table("crm_reward_entry")
    op.drop_index(
        op.f("ix_crm_followup_event_merchant_id_to_state_at"), table_name="crm_followup_event"
    )
    op.drop_index(op.f("ix_crm_followup_event_followup_id"), table_name="crm_followup_event")

    op.drop_table("crm_followup_event")
    op.drop_index(op.f("ix_crm_feedback_merchant_id_submitted_at"), table_name="crm_feedback")
    op.drop_index(op.f("ix_crm_feedback_contact_id"), table_name="crm_feedback")

    op.drop_table("crm_feedback")
    op.drop_table("crm_consent_state")
    op.drop_index(op.f("ix_crm_purchase_contact_id_settled_at"), table_name="crm_purchase")

    op.drop_table("crm_purchase")
    op.drop_index(op.f("ix_crm_followup_state_due_at"), table_name="crm_followup")
    op.drop_index(op.f("ix_crm_followup_merchant_id_state_sent_at"), table_name="crm_followup")
    op.drop_index(op.f("ix_crm_followup_contact_id_sent_at"), table_name="crm_followup")

    op.drop_table("crm_followup")
    op.drop_table("crm_erasure_log")
    op.drop_index(op.f("ix_crm_contact_wallet_contact_id"), table_name="crm_contact_wallet")

    op.drop_table("crm_contact_wallet")
    op.drop_table("crm_contact_key")
    op.drop_table("crm_consent_event")
    op.drop_table("crm_followup_policy")
    op.drop_index(op.f("ix_crm_contact_merchant_id"), table_name="crm_contact")

    op.drop_table("crm_contact")
    op.drop_index(op.f("ix_crm_audit_log_merchant_id_at"), table_name="crm_audit_log")

    op.drop_table("crm_audit_log")
    op.drop_table("crm_merchant")
