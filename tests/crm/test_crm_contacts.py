from __future__ import annotations

import pytest
from sqlmodel import Session, select

from crm import KeyRing
from crm.audit.models import AuditLog
from crm.clock import FrozenClock
from crm.contacts import service as contacts
from crm.contacts.models import Contact, ContactCreate, ContactUpdate, ContactWallet
from crm.errors import (
    ContactNotFound,
    DuplicateContact,
    DuplicateWallet,
    InvalidEmail,
    InvalidPhone,
    InvalidRequest,
    InvalidTimeZone,
    InvalidWalletAddress,
    MerchantNotFound,
    NotFound,
)

from .conftest import MakeContact, count

WALLET = "0x52908400098527886E0F7030069857D2E4169EE7"


class TestCreateContact:
    def test_personal_fields_encrypted_and_readable_back(
        self, session: Session, make_contact: MakeContact, keyring: KeyRing
    ) -> None:
        c = make_contact(name="Ada Lovelace", email="Ada@Example.COM", wallet_addresses=[WALLET])
        assert c.name_enc is not None
        assert b"Ada" not in c.name_enc
        assert "Ada" not in repr(c)
        public = contacts.to_public(session, c, keyring)
        assert public.name == "Ada Lovelace"
        assert public.email == "ada@example.com"
        assert public.phone == "+447911123456"
        assert public.wallet_addresses == [WALLET.lower()]
        assert "Ada" not in repr(public)

    def test_phone_normalised_to_e164(
        self, make_contact: MakeContact, session: Session, keyring: KeyRing
    ) -> None:
        c = make_contact(phone="+44 7911 123 457")
        assert contacts.to_public(session, c, keyring).phone == "+447911123457"

    def test_email_unique_per_merchant_case_insensitive(
        self, session: Session, make_contact: MakeContact, merchant_id: int
    ) -> None:
        make_contact(email="dup@example.com")
        before = count(session, Contact)
        with pytest.raises(DuplicateContact) as exc:
            make_contact(email="DUP@example.com")
        assert exc.value.status_code == 409
        assert exc.value.code == "contact_email_taken"
        assert count(session, Contact) == before

    def test_same_email_other_merchant_ok(
        self, session: Session, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        from crm import MerchantCreate, merchants

        other = merchants.create_merchant(session, MerchantCreate(name="Other"), clock)
        make_contact(email="shared@example.com")
        c = make_contact(merchant=other.id, email="shared@example.com")
        assert c.merchant_id == other.id

    def test_wallet_unique_per_merchant_checksum_agnostic(
        self, session: Session, make_contact: MakeContact, keyring: KeyRing, merchant_id: int
    ) -> None:
        c = make_contact(wallet_addresses=[WALLET])
        before = count(session, ContactWallet)
        with pytest.raises(DuplicateWallet):
            make_contact(wallet_addresses=[WALLET.lower()])
        assert count(session, ContactWallet) == before
        found = contacts.find_by_wallet(
            session, merchant_id, WALLET.upper().replace("0X", "0x"), keyring
        )
        assert found is not None
        assert found.id == c.id

    @pytest.mark.parametrize(
        ("field", "value", "exc", "code"),
        [
            ("email", "not-an-email", InvalidEmail, "invalid_email"),
            ("email", "a@b", InvalidEmail, "invalid_email"),
            ("phone", "07700 900123", InvalidPhone, "invalid_phone"),
            ("phone", "+1 555", InvalidPhone, "invalid_phone"),
            ("phone", "+44 20 7946 0958 ext. 123", InvalidPhone, "invalid_phone"),  # dropped
            ("phone", "+1 (650) 253-0000 x99", InvalidPhone, "invalid_phone"),
            ("time_zone", "Mars/Olympus", InvalidTimeZone, "invalid_time_zone"),
            ("time_zone", "../etc/passwd", InvalidTimeZone, "invalid_time_zone"),
            ("time_zone", "localtime", InvalidTimeZone, "invalid_time_zone"),  # the host's zone
            ("time_zone", "right/UTC", InvalidTimeZone, "invalid_time_zone"),  # leap seconds
            ("time_zone", "posix/Europe/London", InvalidTimeZone, "invalid_time_zone"),
            ("wallet_addresses", ["0x123"], InvalidWalletAddress, "invalid_wallet_address"),
            ("name", "x" * 500, InvalidRequest, "invalid_name"),
        ],
    )
    def test_bad_input_rejected_nothing_written(
        self,
        session: Session,
        make_contact: MakeContact,
        field: str,
        value: object,
        exc: type[Exception],
        code: str,
    ) -> None:
        before = (count(session, Contact), count(session, ContactWallet))
        with pytest.raises(exc) as info:
            make_contact(**{field: value})
        assert info.value.code == code
        assert info.value.status_code == 400
        assert isinstance(info.value, ValueError)
        assert (count(session, Contact), count(session, ContactWallet)) == before

    def test_unknown_merchant(self, session: Session, keyring: KeyRing, clock: FrozenClock) -> None:
        with pytest.raises(MerchantNotFound) as info:
            contacts.create_contact(session, 999_999, ContactCreate(name="x"), keyring, clock)
        assert isinstance(info.value, LookupError)
        assert info.value.status_code == 404


class TestGetContact:
    def test_other_merchant_is_not_found(
        self, session: Session, make_contact: MakeContact, merchant_id: int
    ) -> None:
        c = make_contact()
        assert c.id is not None
        with pytest.raises(ContactNotFound) as info:
            contacts.get_contact(session, merchant_id + 1, c.id)
        assert isinstance(info.value, NotFound)
        assert info.value.to_dict()["error"]["type"] == "not_found_error"


class TestUpdateContact:
    def test_update_reencrypts_and_audits(
        self,
        session: Session,
        make_contact: MakeContact,
        merchant_id: int,
        keyring: KeyRing,
        clock: FrozenClock,
    ) -> None:
        c = make_contact(email="old@example.com")
        assert c.id is not None
        contacts.update_contact(
            session,
            merchant_id,
            c.id,
            ContactUpdate(email="new@example.com", time_zone="Asia/Shanghai", tier="vip"),
            keyring,
            clock,
            actor="support:alice",
        )
        assert contacts.find_by_email(session, merchant_id, "old@example.com", keyring) is None
        found = contacts.find_by_email(session, merchant_id, "NEW@example.com", keyring)
        assert found is not None
        assert found.id == c.id
        assert found.time_zone == "Asia/Shanghai"
        assert found.tier == "vip"
        entries = session.exec(select(AuditLog).where(AuditLog.action == "contact.updated")).all()
        assert [e.actor for e in entries] == ["support:alice"]
        assert "new@example.com" not in str(entries[0].detail)

    def test_update_bad_time_zone_changes_nothing(
        self,
        session: Session,
        make_contact: MakeContact,
        merchant_id: int,
        keyring: KeyRing,
        clock: FrozenClock,
    ) -> None:
        c = make_contact()
        assert c.id is not None
        with pytest.raises(InvalidTimeZone):
            contacts.update_contact(
                session,
                merchant_id,
                c.id,
                ContactUpdate(time_zone="Nowhere/X"),
                keyring,
                clock,
                actor="support:a",
            )
        session.refresh(c)
        assert c.time_zone == "Europe/London"
        assert count(session, AuditLog) == 0
