"""API key table (``api_keys``). The key itself is never stored, only its SHA-256."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from api.db import UTCDateTime

__all__ = ["ApiKeyRecord"]


class ApiKeyRecord(SQLModel, table=True):
    """One API key: ``key_hash`` is ``sha256(key)``, ``prefix`` (``fp_test_Ab3x``) is shown."""

    __tablename__ = "api_keys"
    __table_args__ = (
        sa.Index("ix_api_keys_merchant_id_created_at", "merchant_id", "created_at", "id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    merchant_id: str | None = Field(default=None, max_length=64)
    role: str = Field(max_length=16)
    livemode: bool = Field(default=False)
    prefix: str = Field(max_length=16)
    key_hash: str = Field(max_length=64, unique=True, repr=False)
    name: str | None = Field(default=None, max_length=100)
    created_at: datetime = Field(sa_type=UTCDateTime())
    last_used_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    revoked_at: datetime | None = Field(default=None, sa_type=UTCDateTime())

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None
