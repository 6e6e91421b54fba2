"""Reward ledger: points for answering, never conditional on the answer or on marketing consent."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from crm._base import UTCDateTime

__all__ = ["RewardEntry", "RewardEntryPublic"]


class RewardEntry(SQLModel, table=True):
    __tablename__ = "crm_reward_entry"

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: int = Field(foreign_key="crm_merchant.id")
    contact_id: int = Field(foreign_key="crm_contact.id", index=True)
    followup_id: int = Field(foreign_key="crm_followup.id", unique=True)
    points: int
    reason: str = Field(default="survey_response", max_length=32)
    created_at: datetime = Field(sa_type=UTCDateTime())


class RewardEntryPublic(SQLModel):
    id: int
    contact_id: int
    followup_id: int
    points: int
    reason: str
    created_at: datetime
