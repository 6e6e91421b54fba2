"""Merchant (tenant) model family."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from crm._base import UTCDateTime

__all__ = ["Merchant", "MerchantBase", "MerchantCreate", "MerchantPublic"]


class MerchantBase(SQLModel):
    name: str = Field(min_length=1, max_length=200)


class MerchantCreate(MerchantBase):
    pass


class Merchant(MerchantBase, table=True):
    __tablename__ = "crm_merchant"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(sa_type=UTCDateTime())


class MerchantPublic(MerchantBase):
    id: int
    created_at: datetime
