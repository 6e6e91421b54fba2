"""Consent ledger (append-only, hash-chained per contact) and its current-state projection."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from crm._base import UTCDateTime

__all__ = [
    "ConsentEvent",
    "ConsentEventCreate",
    "ConsentEventPublic",
    "ConsentHead",
    "ConsentState",
]


class ConsentEventBase(SQLModel):
    purpose: str = Field(max_length=32)
    channel: str | None = Field(default=None, max_length=16)
    action: str = Field(max_length=16)
    legal_basis: str = Field(default="consent", max_length=32)
    policy_version: str = Field(default="1", max_length=32)
    source: str = Field(default="api", max_length=64)


class ConsentEventCreate(ConsentEventBase):
    pass


class ConsentEvent(ConsentEventBase, table=True):
    """One ledger entry. ``channel`` is NULL when the action covers every channel."""

    __tablename__ = "crm_consent_event"
    __table_args__ = (
        sa.UniqueConstraint("contact_id", "seq"),
        sa.CheckConstraint("action IN ('grant', 'withdraw', 'object')", name="action"),
    )

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: int = Field(foreign_key="crm_merchant.id")
    contact_id: int = Field(foreign_key="crm_contact.id")
    seq: int
    actor: str = Field(max_length=128)
    occurred_at: datetime = Field(sa_type=UTCDateTime())
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class ConsentEventPublic(ConsentEventBase):
    id: int
    contact_id: int
    seq: int
    actor: str
    occurred_at: datetime
    prev_hash: str
    hash: str


class ConsentState(SQLModel, table=True):
    """Projection: may contact X be reached about purpose P on channel C right now?"""

    __tablename__ = "crm_consent_state"
    __table_args__ = (
        sa.CheckConstraint("state IN ('granted', 'withdrawn', 'objected')", name="state"),
    )

    contact_id: int = Field(foreign_key="crm_contact.id", primary_key=True)
    purpose: str = Field(max_length=32, primary_key=True)
    channel: str = Field(max_length=16, primary_key=True)
    merchant_id: int = Field(foreign_key="crm_merchant.id")
    state: str = Field(max_length=16)
    event_id: int = Field(foreign_key="crm_consent_event.id")
    updated_at: datetime = Field(sa_type=UTCDateTime())


class ConsentHead(SQLModel, table=True):
    """Per contact, the ledger's head as of the last append, sealed with a MAC.

    ``mac`` is ``KeyRing.consent_head_mac(chain.head_message(...))`` over contact, ``seq``,
    ``head_hash`` and ``flagged_seq``; every append writes it, and since migration 0005 the
    schema refuses a head without one (migration 0003's backfill had none: ``crm.db.upgrade``
    seals those with the key ring before 0005 runs). ``flagged_seq`` is
    the first ``seq`` appended over a head that no longer matched the ledger: once sealed, that
    evidence of tampering cannot be cleared without the key. Holds no personal data.
    """

    __tablename__ = "crm_consent_head"

    contact_id: int = Field(foreign_key="crm_contact.id", primary_key=True)
    merchant_id: int = Field(foreign_key="crm_merchant.id")
    seq: int
    head_hash: str = Field(max_length=64)
    flagged_seq: int | None = None
    mac: str = Field(max_length=64)
