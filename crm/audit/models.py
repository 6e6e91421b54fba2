"""Audit log of staff/admin changes (no personal data in ``detail``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from crm._base import JSONType, UTCDateTime

__all__ = ["AuditLog", "AuditLogPublic"]


class AuditLog(SQLModel, table=True):
    __tablename__ = "crm_audit_log"
    __table_args__ = (sa.Index(None, "merchant_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: int | None = Field(default=None, foreign_key="crm_merchant.id")
    actor: str = Field(max_length=128)
    action: str = Field(max_length=64)
    object_type: str = Field(max_length=32)
    object_id: str = Field(max_length=64)
    at: datetime = Field(sa_type=UTCDateTime())
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)


class AuditLogPublic(SQLModel):
    id: int
    merchant_id: int | None
    actor: str
    action: str
    object_type: str
    object_id: str
    at: datetime
    detail: dict[str, Any]
