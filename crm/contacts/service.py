"""Contact rules: validation, encryption of personal fields, blind-index lookups."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from crm.audit import service as audit
from crm.clock import Clock
from crm.contacts import repository as repo
from crm.contacts.models import (
    Contact,
    ContactCreate,
    ContactKey,
    ContactPublic,
    ContactTraits,
    ContactUpdate,
)
from crm.contacts.models import ContactWallet as _Wallet
from crm.contacts.validation import (
    normalise_email,
    normalise_phone,
    normalise_text,
    normalise_wallet,
    validate_time_zone,
)
from crm.crypto import DataKey, KeyRing
from crm.enums import Channel
from crm.errors import ContactErased, ContactNotFound, DuplicateContact, DuplicateWallet
from crm.merchants import service as merchants

__all__ = [
    "add_wallet",
    "address_for_channel",
    "create_contact",
    "data_key",
    "find_by_email",
    "find_by_wallet",
    "get_contact",
    "get_contact_for_update",
    "get_contacts",
    "get_traits",
    "to_public",
    "update_contact",
]

NAME = "crm_contact.name"
EMAIL = "crm_contact.email"
PHONE = "crm_contact.phone"
WALLET = "crm_contact_wallet.address"


def _ctx(field: str, contact_id: int) -> str:
    return f"{field}:{contact_id}"


def get_contact(session: Session, merchant_id: int, contact_id: int) -> Contact:
    contact = repo.get(session, merchant_id, contact_id)
    if contact is None:
        raise ContactNotFound("no such contact", param="contact_id")
    return contact


def get_contact_for_update(session: Session, merchant_id: int, contact_id: int) -> Contact:
    """:func:`get_contact`, locked until commit: changes to a contact queue behind an erasure
    (and see it), instead of writing after it."""
    contact = repo.get_for_update(session, contact_id, merchant_id)
    if contact is None:
        raise ContactNotFound("no such contact", param="contact_id")
    return contact


def get_contacts(
    session: Session, merchant_id: int, contact_ids: Iterable[int]
) -> dict[int, Contact]:
    """The merchant's contacts among ``contact_ids`` by id (others, and unknown ids, absent)."""
    return repo.get_many(session, merchant_id, contact_ids)


def get_traits(
    session: Session, merchant_id: int, contact_ids: Iterable[int]
) -> dict[int, ContactTraits]:
    """:class:`ContactTraits` of the merchant's contacts among ``contact_ids`` by id."""
    return repo.traits_many(session, merchant_id, contact_ids)


def data_key(session: Session, keyring: KeyRing, contact: Contact) -> DataKey | None:
    """The contact's unwrapped data key, or ``None`` once erased (shredded)."""
    assert contact.id is not None
    stored = repo.get_key(session, contact.id)
    return None if stored is None else keyring.unwrap(contact.id, stored.wrapped_key)


@contextmanager
def _one_owner() -> Iterator[None]:
    """The unique blind indexes are what decides between two requests that both passed the
    ``*_taken`` checks (the API's SQLite engine reads before it locks): the loser gets the
    same 409 as a sequential duplicate, not a 500. The transaction is then for rolling back."""
    try:
        yield
    except IntegrityError as exc:
        text = str(exc.orig)
        if "email_index" in text:
            raise DuplicateContact("a contact with this e-mail already exists") from None
        if "address_index" in text:
            raise DuplicateWallet("wallet address already belongs to a contact") from None
        raise


def create_contact(
    session: Session, merchant_id: int, data: ContactCreate, keyring: KeyRing, clock: Clock
) -> Contact:
    merchants.get_merchant(session, merchant_id)
    name = normalise_text(data.name, "name")
    email = normalise_email(data.email) if data.email else None
    phone = normalise_phone(data.phone) if data.phone else None
    tz = validate_time_zone(data.time_zone)
    wallets = sorted({normalise_wallet(w) for w in data.wallet_addresses})
    locale = normalise_text(data.locale, "locale", 35)
    email_index = keyring.blind_index("email", email, merchant_id=merchant_id) if email else None
    if email_index and repo.email_index_taken(session, merchant_id, email_index):
        raise DuplicateContact("a contact with this e-mail already exists")
    wallet_indexes = [
        (w, keyring.blind_index("wallet", w, merchant_id=merchant_id)) for w in wallets
    ]
    for _, index in wallet_indexes:
        if repo.wallet_index_taken(session, merchant_id, index):
            raise DuplicateWallet("wallet address already belongs to a contact")
    now = clock.now()
    with _one_owner():  # a create racing this one past the checks above
        contact = repo.add(
            session,
            Contact(
                merchant_id=merchant_id,
                locale=locale,
                time_zone=tz,
                segment=normalise_text(data.segment, "segment", 64),
                tier=normalise_text(data.tier, "tier", 32),
                personalised=data.personalised,
                email_index=email_index,
                created_at=now,
                updated_at=now,
            ),
        )
        assert contact.id is not None
        key, wrapped = keyring.new_data_key(contact.id)
        repo.add_key(
            session, ContactKey(contact_id=contact.id, wrapped_key=wrapped, created_at=now)
        )
        contact.name_enc = key.encrypt(name, _ctx(NAME, contact.id))
        contact.email_enc = key.encrypt(email, _ctx(EMAIL, contact.id))
        contact.phone_enc = key.encrypt(phone, _ctx(PHONE, contact.id))
        session.add(contact)
        for address, index in wallet_indexes:
            repo.add_wallet(
                session,
                _Wallet(
                    merchant_id=merchant_id,
                    contact_id=contact.id,
                    address_enc=key.encrypt(address, _ctx(WALLET, contact.id)),
                    address_index=index,
                    created_at=now,
                ),
            )
        session.flush()
    return contact


def add_wallet(
    session: Session,
    merchant_id: int,
    contact_id: int,
    address: str,
    keyring: KeyRing,
    clock: Clock,
) -> None:
    contact = get_contact_for_update(session, merchant_id, contact_id)
    key = _live_key(session, keyring, contact)
    wallet = normalise_wallet(address)
    index = keyring.blind_index("wallet", wallet, merchant_id=merchant_id)
    if repo.wallet_index_taken(session, merchant_id, index):
        raise DuplicateWallet("wallet address already belongs to a contact")
    with _one_owner():
        repo.add_wallet(
            session,
            _Wallet(
                merchant_id=merchant_id,
                contact_id=contact_id,
                address_enc=key.encrypt(wallet, _ctx(WALLET, contact_id)),
                address_index=index,
                created_at=clock.now(),
            ),
        )


def _live_key(session: Session, keyring: KeyRing, contact: Contact) -> DataKey:
    key = None if contact.erased_at is not None else data_key(session, keyring, contact)
    if key is None:
        raise ContactErased("contact has been erased")
    return key


def update_contact(
    session: Session,
    merchant_id: int,
    contact_id: int,
    data: ContactUpdate,
    keyring: KeyRing,
    clock: Clock,
    actor: str,
) -> Contact:
    contact = get_contact_for_update(session, merchant_id, contact_id)
    key = _live_key(session, keyring, contact)
    assert contact.id is not None
    changes = data.model_dump(exclude_unset=True)
    if "time_zone" in changes and changes["time_zone"] is not None:
        contact.time_zone = validate_time_zone(changes["time_zone"])
    if "email" in changes:
        email = normalise_email(changes["email"]) if changes["email"] else None
        index = keyring.blind_index("email", email, merchant_id=merchant_id) if email else None
        if index and repo.email_index_taken(session, merchant_id, index, exclude_id=contact.id):
            raise DuplicateContact("a contact with this e-mail already exists")
        contact.email_index = index
        contact.email_enc = key.encrypt(email, _ctx(EMAIL, contact.id))
    if "phone" in changes:
        phone = normalise_phone(changes["phone"]) if changes["phone"] else None
        contact.phone_enc = key.encrypt(phone, _ctx(PHONE, contact.id))
    if "name" in changes:
        name = normalise_text(changes["name"], "name")
        contact.name_enc = key.encrypt(name, _ctx(NAME, contact.id))
    for field, limit in (("locale", 35), ("segment", 64), ("tier", 32)):
        if field in changes:
            setattr(contact, field, normalise_text(changes[field], field, limit))
    if changes.get("personalised") is not None:
        contact.personalised = bool(changes["personalised"])
    contact.updated_at = clock.now()
    session.add(contact)
    with _one_owner():
        session.flush()
    audit.record(
        session,
        actor=actor,
        action="contact.updated",
        object_type="contact",
        object_id=contact.id,
        at=contact.updated_at,
        merchant_id=merchant_id,
        detail={"fields": sorted(changes)},
    )
    return contact


def find_by_email(
    session: Session, merchant_id: int, email: str, keyring: KeyRing
) -> Contact | None:
    return repo.get_by_email_index(
        session,
        merchant_id,
        keyring.blind_index("email", normalise_email(email), merchant_id=merchant_id),
    )


def find_by_wallet(
    session: Session, merchant_id: int, address: str, keyring: KeyRing
) -> Contact | None:
    index = keyring.blind_index("wallet", normalise_wallet(address), merchant_id=merchant_id)
    return repo.get_by_wallet_index(session, merchant_id, index)


def to_public(session: Session, contact: Contact, keyring: KeyRing) -> ContactPublic:
    """Decrypted view of a contact (personal fields are ``None`` once erased)."""
    assert contact.id is not None
    key = data_key(session, keyring, contact)
    wallets: list[str] = []
    name = email = phone = None
    if key is not None:
        name = key.decrypt(contact.name_enc, _ctx(NAME, contact.id))
        email = key.decrypt(contact.email_enc, _ctx(EMAIL, contact.id))
        phone = key.decrypt(contact.phone_enc, _ctx(PHONE, contact.id))
        for w in repo.list_wallets(session, contact.id):
            address = key.decrypt(w.address_enc, _ctx(WALLET, contact.id))
            if address:
                wallets.append(address)
    return ContactPublic(
        id=contact.id,
        merchant_id=contact.merchant_id,
        locale=contact.locale,
        time_zone=contact.time_zone,
        segment=contact.segment,
        tier=contact.tier,
        personalised=contact.personalised,
        name=name,
        email=email,
        phone=phone,
        wallet_addresses=wallets,
        created_at=contact.created_at,
        erased=contact.erased_at is not None,
    )


def address_for_channel(
    session: Session, contact: Contact, channel: Channel, keyring: KeyRing
) -> str | None:
    """Decrypted destination for ``channel`` (``None`` for channels without an address)."""
    assert contact.id is not None
    if channel in (Channel.IN_APP, Channel.WEBHOOK):
        return None
    key = data_key(session, keyring, contact)
    if key is None:
        return None
    if channel == Channel.EMAIL:
        return key.decrypt(contact.email_enc, _ctx(EMAIL, contact.id))
    return key.decrypt(contact.phone_enc, _ctx(PHONE, contact.id))
