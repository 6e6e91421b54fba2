"""Feedback model family (comment stored encrypted under the contact's data key)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from crm._base import JSONType, UTCDateTime

__all__ = ["Feedback", "FeedbackBase", "FeedbackCreate", "FeedbackPublic", "FeedbackUpdate"]


class FeedbackBase(SQLModel):
    rating: int | None = Field(default=None)
    nps: int | None = Field(default=None)
    tags: list[str] = Field(default_factory=list, sa_type=JSONType)


class FeedbackCreate(FeedbackBase):
    comment: str | None = Field(default=None, repr=False)


class FeedbackUpdate(SQLModel):
    rating: int | None = None
    nps: int | None = None
    tags: list[str] | None = None
    comment: str | None = Field(default=None, repr=False)


class Feedback(FeedbackBase, table=True):
    __tablename__ = "crm_feedback"
    __table_args__ = (
        sa.CheckConstraint("rating IS NULL OR (rating BETWEEN 1 AND 5)", name="rating"),
        sa.CheckConstraint("nps IS NULL OR (nps BETWEEN 0 AND 10)", name="nps"),
        sa.Index(None, "merchant_id", "submitted_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: int = Field(foreign_key="crm_merchant.id")
    followup_id: int = Field(foreign_key="crm_followup.id", unique=True)
    contact_id: int = Field(foreign_key="crm_contact.id", index=True)
    token_hash: str | None = Field(default=None, max_length=64, unique=True, repr=False)
    token_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    comment_enc: bytes | None = Field(default=None, sa_type=sa.LargeBinary(), repr=False)
    submitted_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    edit_until: datetime | None = Field(default=None, sa_type=UTCDateTime())
    created_at: datetime = Field(sa_type=UTCDateTime())
    updated_at: datetime = Field(sa_type=UTCDateTime())


class FeedbackPublic(FeedbackBase):
    id: int
    merchant_id: int
    followup_id: int
    contact_id: int
    comment: str | None = Field(default=None, repr=False)
    submitted_at: datetime | None
    edit_until: datetime | None
    ticket_id: int | None = None
    reward_points: int | None = None
    #: This call opened ``ticket_id`` (decided under the feedback row's lock: a caller that
    #: looked for a ticket before would announce another request's ticket again).
    ticket_opened: bool = Field(default=False, exclude=True)
