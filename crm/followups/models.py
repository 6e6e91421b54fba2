"""Follow-up policy, purchase record, follow-up and its transition log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from crm._base import JSONType, Uint256, UTCDateTime

__all__ = [
    "FollowUp",
    "FollowUpEvent",
    "FollowUpPolicy",
    "FollowUpPolicyBase",
    "FollowUpPolicyCreate",
    "FollowUpPolicyPublic",
    "FollowUpPolicyUpdate",
    "FollowUpPublic",
    "Purchase",
]


class FollowUpPolicyBase(SQLModel):
    trigger: str = Field(default="payment_settled", max_length=32)
    purpose: str = Field(default="service_followup", max_length=32)
    delay_minutes: int = Field(default=24 * 60)
    periodic_after_days: int = Field(default=30)
    channel_order: list[str] = Field(default_factory=lambda: ["email"], sa_type=JSONType)
    segment_rules: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSONType)
    frequency_cap_days: int = Field(default=30)
    window_start_minute: int = Field(default=8 * 60)
    window_end_minute: int = Field(default=21 * 60)
    expiry_days: int = Field(default=28)
    reward_points: int = Field(default=10)
    active: bool = Field(default=True)


class FollowUpPolicyCreate(FollowUpPolicyBase):
    pass


class FollowUpPolicyUpdate(SQLModel):
    delay_minutes: int | None = None
    periodic_after_days: int | None = None
    channel_order: list[str] | None = None
    segment_rules: list[dict[str, Any]] | None = None
    frequency_cap_days: int | None = None
    window_start_minute: int | None = None
    window_end_minute: int | None = None
    expiry_days: int | None = None
    reward_points: int | None = None
    active: bool | None = None


class FollowUpPolicy(FollowUpPolicyBase, table=True):
    __tablename__ = "crm_followup_policy"
    __table_args__ = (sa.UniqueConstraint("merchant_id", "trigger"),)

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: int = Field(foreign_key="crm_merchant.id")
    created_at: datetime = Field(sa_type=UTCDateTime())
    updated_at: datetime = Field(sa_type=UTCDateTime())


class FollowUpPolicyPublic(FollowUpPolicyBase):
    id: int
    merchant_id: int


class Purchase(SQLModel, table=True):
    """A settled payment as the CRM sees it: opaque reference and uint256 base units."""

    __tablename__ = "crm_purchase"
    __table_args__ = (
        sa.UniqueConstraint("merchant_id", "payment_ref"),
        sa.Index(None, "contact_id", "settled_at"),
        sa.Index(None, "merchant_id", "invoice_ref"),  # a sale's purchases, across reorgs
        sa.CheckConstraint("amount_minor >= 0", name="amount_minor"),
    )

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: int = Field(foreign_key="crm_merchant.id")
    contact_id: int = Field(foreign_key="crm_contact.id")
    payment_ref: str = Field(max_length=128)
    invoice_ref: str = Field(max_length=128)
    amount_minor: int = Field(sa_type=Uint256())
    currency: str = Field(max_length=16)
    settled_at: datetime = Field(sa_type=UTCDateTime())
    cancelled_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    cancel_reason: str | None = Field(default=None, max_length=64)


class FollowUp(SQLModel, table=True):
    __tablename__ = "crm_followup"
    __table_args__ = (
        sa.UniqueConstraint("merchant_id", "payment_ref", "kind"),
        sa.Index(None, "state", "due_at"),
        sa.Index(None, "contact_id", "sent_at"),
        sa.Index(None, "merchant_id", "state", "sent_at"),
        sa.CheckConstraint(
            "state IN ('scheduled', 'queued', 'sent', 'responded', 'suppressed', 'expired',"
            " 'failed', 'cancelled')",
            name="state",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: int = Field(foreign_key="crm_merchant.id")
    contact_id: int = Field(foreign_key="crm_contact.id")
    policy_id: int | None = Field(default=None, foreign_key="crm_followup_policy.id")
    kind: str = Field(max_length=32)
    purpose: str = Field(max_length=32)
    payment_ref: str = Field(max_length=128)
    invoice_ref: str = Field(max_length=128)
    channel: str | None = Field(default=None, max_length=16)
    channels: list[str] = Field(default_factory=list, sa_type=JSONType)
    state: str = Field(max_length=16)
    reason: str | None = Field(default=None, max_length=32)
    due_at: datetime = Field(sa_type=UTCDateTime())
    expires_at: datetime = Field(sa_type=UTCDateTime())
    attempts: int = Field(default=0)
    worker_id: str | None = Field(default=None, max_length=64)
    queued_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    #: when a delivery that may reach the contact began (``prepare_send``); cleared when the
    #: attempt failed for sure. The frequency cap counts it like ``sent_at``.
    attempted_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    responded_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    created_at: datetime = Field(sa_type=UTCDateTime())
    updated_at: datetime = Field(sa_type=UTCDateTime())


class FollowUpPublic(SQLModel):
    id: int
    merchant_id: int
    contact_id: int
    kind: str
    purpose: str
    payment_ref: str
    invoice_ref: str
    channel: str | None
    state: str
    reason: str | None
    due_at: datetime
    expires_at: datetime
    sent_at: datetime | None
    responded_at: datetime | None


class FollowUpEvent(SQLModel, table=True):
    """Every state change of a follow-up, with its reason (deferrals keep the state)."""

    __tablename__ = "crm_followup_event"
    __table_args__ = (sa.Index(None, "merchant_id", "to_state", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    followup_id: int = Field(foreign_key="crm_followup.id", index=True)
    merchant_id: int = Field(foreign_key="crm_merchant.id")
    from_state: str | None = Field(default=None, max_length=16)
    to_state: str = Field(max_length=16)
    reason: str | None = Field(default=None, max_length=32)
    at: datetime = Field(sa_type=UTCDateTime())
    detail: str | None = Field(default=None, max_length=200)
