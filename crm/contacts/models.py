"""Contact model family. Personal fields are stored only encrypted (see ``crm.crypto``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from crm._base import UTCDateTime

__all__ = [
    "Contact",
    "ContactBase",
    "ContactCreate",
    "ContactKey",
    "ContactPublic",
    "ContactTraits",
    "ContactUpdate",
    "ContactWallet",
]


class ContactBase(SQLModel):
    locale: str | None = Field(default=None, max_length=35)
    time_zone: str = Field(default="UTC", max_length=64)
    segment: str | None = Field(default=None, max_length=64)
    tier: str | None = Field(default=None, max_length=32)
    personalised: bool = Field(default=True)


class ContactCreate(ContactBase):
    name: str | None = Field(default=None, repr=False)
    email: str | None = Field(default=None, repr=False)
    phone: str | None = Field(default=None, repr=False)
    wallet_addresses: list[str] = Field(default_factory=list, repr=False)


class ContactUpdate(SQLModel):
    name: str | None = Field(default=None, repr=False)
    email: str | None = Field(default=None, repr=False)
    phone: str | None = Field(default=None, repr=False)
    locale: str | None = None
    time_zone: str | None = None
    segment: str | None = None
    tier: str | None = None
    personalised: bool | None = None


class Contact(ContactBase, table=True):
    __tablename__ = "crm_contact"
    __table_args__ = (sa.UniqueConstraint("merchant_id", "email_index"),)

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: int = Field(foreign_key="crm_merchant.id", index=True)
    name_enc: bytes | None = Field(default=None, sa_type=sa.LargeBinary(), repr=False)
    email_enc: bytes | None = Field(default=None, sa_type=sa.LargeBinary(), repr=False)
    phone_enc: bytes | None = Field(default=None, sa_type=sa.LargeBinary(), repr=False)
    email_index: str | None = Field(default=None, max_length=64, repr=False)
    created_at: datetime = Field(sa_type=UTCDateTime())
    updated_at: datetime = Field(sa_type=UTCDateTime())
    erased_at: datetime | None = Field(default=None, sa_type=UTCDateTime())


class ContactKey(SQLModel, table=True):
    """The contact's wrapped data key; deleting the row crypto-shreds the contact."""

    __tablename__ = "crm_contact_key"

    contact_id: int = Field(foreign_key="crm_contact.id", primary_key=True)
    wrapped_key: bytes = Field(sa_type=sa.LargeBinary(), repr=False)
    created_at: datetime = Field(sa_type=UTCDateTime())


class ContactWallet(SQLModel, table=True):
    __tablename__ = "crm_contact_wallet"
    __table_args__ = (sa.UniqueConstraint("merchant_id", "address_index"),)

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: int = Field(foreign_key="crm_merchant.id")
    contact_id: int = Field(foreign_key="crm_contact.id", index=True)
    address_enc: bytes | None = Field(default=None, sa_type=sa.LargeBinary(), repr=False)
    address_index: str | None = Field(default=None, max_length=64, repr=False)
    created_at: datetime = Field(sa_type=UTCDateTime())


class ContactPublic(ContactBase):
    id: int
    merchant_id: int
    name: str | None = Field(default=None, repr=False)
    email: str | None = Field(default=None, repr=False)
    phone: str | None = Field(default=None, repr=False)
    wallet_addresses: list[str] = Field(default_factory=list, repr=False)
    created_at: datetime
    erased: bool = False


@dataclass(frozen=True, slots=True)
class ContactTraits:
    """What the follow-up rules read about a contact: its settings and whether an address is on
    file, never the (encrypted) personal data itself. The settlement indexer reads these for a
    whole step in one Core query, without loading contact entities."""

    id: int
    merchant_id: int
    time_zone: str
    segment: str | None
    tier: str | None
    personalised: bool
    erased_at: datetime | None
    has_email: bool
    has_phone: bool

    @classmethod
    def of(cls, contact: Contact) -> ContactTraits:
        return cls(
            id=contact.id or 0,
            merchant_id=contact.merchant_id,
            time_zone=contact.time_zone,
            segment=contact.segment,
            tier=contact.tier,
            personalised=contact.personalised,
            erased_at=contact.erased_at,
            has_email=contact.email_enc is not None,
            has_phone=contact.phone_enc is not None,
        )
