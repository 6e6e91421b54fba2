"""Erasure log: proves an erasure happened, holds no personal data."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel

from crm._base import JSONType, UTCDateTime

__all__ = ["ErasureLog"]


class ErasureLog(SQLModel, table=True):
    __tablename__ = "crm_erasure_log"

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: int = Field(foreign_key="crm_merchant.id")
    contact_id: int = Field(foreign_key="crm_contact.id", unique=True)
    actor: str = Field(max_length=128)
    request_ref: str | None = Field(default=None, max_length=128)
    erased_at: datetime = Field(sa_type=UTCDateTime())
    summary: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
