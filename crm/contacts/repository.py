"""Contact SQL."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crm.contacts.models import Contact, ContactKey, ContactTraits, ContactWallet

__all__ = [
    "add",
    "add_key",
    "add_wallet",
    "delete_key",
    "email_index_taken",
    "get",
    "get_by_email_index",
    "get_by_wallet_index",
    "get_for_update",
    "get_key",
    "get_many",
    "list_wallets",
    "traits_many",
    "wallet_index_taken",
]


def add(session: Session, contact: Contact) -> Contact:
    session.add(contact)
    session.flush()
    return contact


def get(session: Session, merchant_id: int, contact_id: int) -> Contact | None:
    stmt = select(Contact).where(Contact.id == contact_id, Contact.merchant_id == merchant_id)
    return session.exec(stmt).first()


_MANY = select(Contact).where(
    col(Contact.id).in_(sa.bindparam("ids", expanding=True)),
    col(Contact.merchant_id) == sa.bindparam("merchant_id"),
)


def get_many(session: Session, merchant_id: int, contact_ids: Iterable[int]) -> dict[int, Contact]:
    ids = sorted(set(contact_ids))
    found: dict[int, Contact] = {}
    for start in range(0, len(ids), 500):
        params = {"ids": ids[start : start + 500], "merchant_id": merchant_id}
        found.update({c.id: c for c in session.exec(_MANY, params=params) if c.id is not None})
    return found


_CONTACTS = Contact.__table__  # type: ignore[attr-defined]
_TRAITS = sa.select(
    _CONTACTS.c.id,
    _CONTACTS.c.merchant_id,
    _CONTACTS.c.time_zone,
    _CONTACTS.c.segment,
    _CONTACTS.c.tier,
    _CONTACTS.c.personalised,
    _CONTACTS.c.erased_at,
    _CONTACTS.c.email_enc.is_not(None).label("has_email"),
    _CONTACTS.c.phone_enc.is_not(None).label("has_phone"),
).where(
    _CONTACTS.c.id.in_(sa.bindparam("ids", expanding=True)),
    _CONTACTS.c.merchant_id == sa.bindparam("merchant_id"),
)


def traits_many(
    session: Session, merchant_id: int, contact_ids: Iterable[int]
) -> dict[int, ContactTraits]:
    ids = sorted(set(contact_ids))
    found: dict[int, ContactTraits] = {}
    conn = session.connection()
    for start in range(0, len(ids), 500):
        params = {"ids": ids[start : start + 500], "merchant_id": merchant_id}
        for row in conn.execute(_TRAITS, params):  # columns named as the fields
            found[row.id] = ContactTraits(**row._mapping)
    return found


def get_for_update(
    session: Session, contact_id: int, merchant_id: int | None = None
) -> Contact | None:
    """The contact row locked until commit, re-read (not the identity map's older copy); with
    ``merchant_id``, only that merchant's (another merchant's row is neither read nor locked).

    The no-op UPDATE is the lock on both databases: a row lock on PostgreSQL, and on SQLite
    it opens the writer's transaction before the read. An engine that begins lazily (the
    API's: reads in autocommit until the first write) ignores ``FOR UPDATE``, so without it
    an erasure could commit between this read and the caller's write."""
    scope = [col(Contact.id) == contact_id]
    if merchant_id is not None:
        scope.append(col(Contact.merchant_id) == merchant_id)
    session.connection().execute(sa.update(Contact).where(*scope).values(id=Contact.id))
    stmt = select(Contact).where(*scope).with_for_update().execution_options(populate_existing=True)
    return session.exec(stmt).first()


def get_by_email_index(session: Session, merchant_id: int, index: str) -> Contact | None:
    stmt = select(Contact).where(Contact.merchant_id == merchant_id, Contact.email_index == index)
    return session.exec(stmt).first()


def email_index_taken(
    session: Session, merchant_id: int, index: str, exclude_id: int | None = None
) -> bool:
    stmt = select(Contact.id).where(
        Contact.merchant_id == merchant_id, Contact.email_index == index
    )
    if exclude_id is not None:
        stmt = stmt.where(Contact.id != exclude_id)
    return session.exec(stmt).first() is not None


def add_key(session: Session, key: ContactKey) -> None:
    session.add(key)
    session.flush()


def get_key(session: Session, contact_id: int) -> ContactKey | None:
    return session.get(ContactKey, contact_id)


def delete_key(session: Session, contact_id: int) -> int:
    result = session.execute(sa.delete(ContactKey).where(col(ContactKey.contact_id) == contact_id))
    return int(getattr(result, "rowcount", 0) or 0)


def add_wallet(session: Session, wallet: ContactWallet) -> None:
    session.add(wallet)
    session.flush()


def wallet_index_taken(session: Session, merchant_id: int, index: str) -> bool:
    stmt = select(ContactWallet.id).where(
        ContactWallet.merchant_id == merchant_id, ContactWallet.address_index == index
    )
    return session.exec(stmt).first() is not None


def get_by_wallet_index(session: Session, merchant_id: int, index: str) -> Contact | None:
    stmt = (
        select(Contact)
        .join(ContactWallet, col(ContactWallet.contact_id) == col(Contact.id))
        .where(ContactWallet.merchant_id == merchant_id, ContactWallet.address_index == index)
    )
    return session.exec(stmt).first()


def list_wallets(session: Session, contact_id: int) -> Sequence[ContactWallet]:
    stmt = (
        select(ContactWallet)
        .where(ContactWallet.contact_id == contact_id)
        .order_by(col(ContactWallet.id))
    )
    return session.exec(stmt).all()
