"""Stored idempotent requests (``api_idempotency_keys``), one row per (API key, Idempotency-Key)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from api.db import UTCDateTime

__all__ = ["IdempotencyRecord", "IdempotencyStatus"]


class IdempotencyStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


class IdempotencyRecord(SQLModel, table=True):
    """The row is the lock: committed before the handler runs, completed with its effects."""

    __tablename__ = "api_idempotency_keys"
    __table_args__ = (
        sa.UniqueConstraint("api_key_id", "idempotency_key"),
        sa.Index("ix_api_idempotency_keys_expires_at", "expires_at"),
        sa.Index("ix_api_idempotency_keys_contact_id", "contact_id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    api_key_id: str = Field(max_length=40)
    idempotency_key: str = Field(max_length=255)
    fingerprint: str = Field(max_length=64)
    method: str = Field(max_length=10)
    path: str = Field(max_length=2048)
    status: str = Field(default=IdempotencyStatus.IN_PROGRESS.value, max_length=16)
    locked_at: datetime = Field(sa_type=UTCDateTime())
    created_at: datetime = Field(sa_type=UTCDateTime())
    expires_at: datetime = Field(sa_type=UTCDateTime())
    response_status: int | None = Field(default=None)
    response_headers: list[Any] | None = Field(default=None, sa_type=sa.JSON())
    response_body: bytes | None = Field(default=None, sa_type=sa.LargeBinary(), repr=False)
    #: the CRM contact whose data the response holds: erasing it destroys the response
    contact_id: int | None = Field(default=None)
