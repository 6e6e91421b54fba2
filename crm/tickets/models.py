"""Support tickets for negative feedback, with a first-response SLA."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from crm._base import JSONType, UTCDateTime

__all__ = ["Ticket", "TicketBase", "TicketEvent", "TicketPublic", "TicketUpdate"]


class TicketBase(SQLModel):
    assignee: str | None = Field(default=None, max_length=128)
    root_cause_tags: list[str] = Field(default_factory=list, sa_type=JSONType)


class TicketUpdate(SQLModel):
    assignee: str | None = None
    root_cause_tags: list[str] | None = None


class Ticket(TicketBase, table=True):
    __tablename__ = "crm_ticket"
    __table_args__ = (
        sa.Index("ix_crm_ticket_queue", "merchant_id", "state", "due_at"),
        sa.CheckConstraint("state IN ('open', 'assigned', 'responded', 'resolved')", name="state"),
    )

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: int = Field(foreign_key="crm_merchant.id")
    feedback_id: int = Field(foreign_key="crm_feedback.id", unique=True)
    followup_id: int = Field(foreign_key="crm_followup.id")
    contact_id: int = Field(foreign_key="crm_contact.id", index=True)
    state: str = Field(default="open", max_length=16)
    opened_at: datetime = Field(sa_type=UTCDateTime())
    due_at: datetime = Field(sa_type=UTCDateTime())
    first_response_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    resolved_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    breached_at: datetime | None = Field(default=None, sa_type=UTCDateTime())


class TicketPublic(TicketBase):
    id: int
    merchant_id: int
    feedback_id: int
    contact_id: int
    state: str
    opened_at: datetime
    due_at: datetime
    first_response_at: datetime | None
    resolved_at: datetime | None
    breached_at: datetime | None


class TicketEvent(SQLModel, table=True):
    __tablename__ = "crm_ticket_event"

    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="crm_ticket.id", index=True)
    merchant_id: int = Field(foreign_key="crm_merchant.id")
    kind: str = Field(max_length=32)
    actor: str = Field(max_length=128)
    at: datetime = Field(sa_type=UTCDateTime())
