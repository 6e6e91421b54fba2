from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session, SQLModel, select

from crm import KeyRing, MerchantCreate, merchants
from crm.audit import service as audit
from crm.clock import FrozenClock
from crm.consent import service as consent
from crm.contacts import service as contacts
from crm.contacts.models import Contact, ContactCreate, ContactKey, ContactWallet
from crm.db import make_engine, session_scope, truncate_wal, upgrade
from crm.errors import ContactErased
from crm.feedback import service as feedback
from crm.feedback.models import FeedbackCreate
from crm.followups import service as followups
from crm.followups.models import FollowUp, FollowUpPolicyCreate, Purchase
from crm.models import TABLES
from crm.privacy import service as privacy
from crm.privacy.models import ErasureLog
from crm.tickets import service as tickets
from crm.tickets.models import Ticket

from .conftest import START, MakeContact, count, pg_schema_url
from .helpers import sent_followup

PII = {
    "name": "Zebulon Quattlebaum",
    "email": "zebulon.quattlebaum@example.org",
    "phone": "+14155552671",
    "wallet": "0xabcdefabcdefabcdefabcdefabcdefabcdef1234",
    "comment": "my neighbour Ophelia Wintergreen saw the parcel",
}


class TestExportContact:
    def test_export_is_complete_and_json_able(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        c = make_contact(name=PII["name"], email=PII["email"], wallet_addresses=[PII["wallet"]])
        _, token = sent_followup(session, merchant_id, c, clock, keyring)
        feedback.submit_feedback(
            session,
            merchant_id,
            token,
            FeedbackCreate(rating=2, comment=PII["comment"]),
            keyring=keyring,
            clock=clock,
        )
        data = privacy.export_contact(
            session, merchant_id, c.id or 0, keyring=keyring, actor="admin", clock=clock
        )
        text = json.dumps(data)
        assert data["contact"]["name"] == PII["name"]
        assert data["contact"]["wallet_addresses"] == [PII["wallet"]]
        assert data["feedback"][0]["comment"] == PII["comment"]
        assert data["purchases"][0]["amount_minor"] == 1000
        assert len(data["consent_events"]) == 1
        assert len(data["tickets"]) == 1
        assert data["rewards"][0]["points"] == 10
        assert "token_hash" not in text
        assert data["erasure"] is None

    def test_export_has_the_event_logs_and_the_audit_entries_about_the_contact(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        c = make_contact()
        cid = c.id or 0
        fu, token = sent_followup(session, merchant_id, c, clock, keyring)
        answer = FeedbackCreate(rating=1, comment="late")
        fb = feedback.submit_feedback(
            session, merchant_id, token, answer, keyring=keyring, clock=clock
        )
        (ticket_id,) = [t.id for t in session.exec(select(Ticket).where(Ticket.contact_id == cid))]
        tickets.respond(session, merchant_id, ticket_id or 0, actor="agent:7", clock=clock)
        other = merchants.create_merchant(session, MerchantCreate(name="Other"), clock).id
        for kind, object_id in (("contact", cid), ("ticket", ticket_id), ("feedback", fb.id)):
            audit.record(  # another merchant's entries that happen to name the same ids
                session,
                actor="x",
                action="other.merchant",
                object_type=kind,
                object_id=object_id or 0,
                at=clock.now(),
                merchant_id=other,
            )
        data = privacy.export_contact(
            session, merchant_id, cid, keyring=keyring, actor="admin", clock=clock
        )
        (followup,) = data["followups"]
        assert followup["id"] == fu.id
        assert [e["to_state"] for e in followup["events"]][-2:] == ["sent", "responded"]
        (ticket,) = data["tickets"]
        assert [e["kind"] for e in ticket["events"]] == ["opened", "responded"]
        entries = [(a["object_type"], a["action"]) for a in data["audit_log"]]
        assert ("contact", "consent.grant") in entries
        assert ("ticket", "ticket.responded") in entries
        assert {a["merchant_id"] for a in data["audit_log"]} == {merchant_id}
        assert "other.merchant" not in json.dumps(data)


class TestEraseContact:
    def test_erasure_shreds_keeps_payments_and_logs(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        c = make_contact(
            name=PII["name"],
            email=PII["email"],
            wallet_addresses=[PII["wallet"]],
            time_zone="Asia/Kathmandu",
            segment="expecting-parents",
            tier="vip",
        )
        cid = c.id or 0
        sent_followup(session, merchant_id, c, clock, keyring)
        [pending] = followups.schedule_for_payment(
            session, merchant_id, cid, "p2", "inv2", 500, "USDC", clock.now(), clock
        )
        log = privacy.erase_contact(
            session, merchant_id, cid, actor="admin:dpo", clock=clock, request_ref="dsr-17"
        )
        assert log.summary["data_key_destroyed"] is True
        assert PII["name"] not in json.dumps(log.model_dump(mode="json"))
        session.refresh(pending)
        assert (pending.state, pending.reason) == ("suppressed", "erased")
        assert session.get(ContactKey, cid) is None
        assert (c.time_zone, c.locale) == ("UTC", None)  # no trace of where they live
        assert (c.segment, c.tier) == (None, None)  # nor of how the merchant profiled them
        assert contacts.find_by_email(session, merchant_id, PII["email"], keyring) is None
        assert contacts.find_by_wallet(session, merchant_id, PII["wallet"], keyring) is None
        public = contacts.to_public(session, c, keyring)
        assert (public.name, public.email, public.wallet_addresses, public.erased) == (
            None,
            None,
            [],
            True,
        )
        purchases = session.exec(select(Purchase).where(Purchase.contact_id == cid)).all()
        assert sorted((p.payment_ref, p.amount_minor) for p in purchases) == [
            ("p1", 1000),
            ("p2", 500),
        ]
        # the freed e-mail can be registered again (blind index nulled)
        again = make_contact(email=PII["email"])
        assert again.id != cid
        # idempotent, and no new consent can be recorded for an erased contact
        assert privacy.erase_contact(session, merchant_id, cid, actor="x", clock=clock).id == log.id
        with pytest.raises(ContactErased):
            consent.grant(
                session,
                merchant_id,
                cid,
                "marketing",
                "email",
                actor="x",
                clock=clock,
                keyring=keyring,
            )
        assert count(session, ErasureLog) == 1


def _populate_and_erase(engine: sa.Engine, keyring: KeyRing) -> list[bytes]:
    """Returns the contact's wrapped data key and field ciphertexts as they were stored."""
    clock = FrozenClock(START)
    with session_scope(engine) as s:
        m = merchants.create_merchant(s, MerchantCreate(name="Shop"), clock)
        mid = m.id or 0
        c = contacts.create_contact(
            s,
            mid,
            ContactCreate(
                name=PII["name"],
                email=PII["email"],
                phone=PII["phone"],
                wallet_addresses=[PII["wallet"]],
                time_zone="Europe/London",
            ),
            keyring,
            clock,
        )
        _, token = sent_followup(s, mid, c, clock, keyring)
        feedback.submit_feedback(
            s,
            mid,
            token,
            FeedbackCreate(rating=1, comment=PII["comment"]),
            keyring=keyring,
            clock=clock,
        )
        cid = c.id or 0
        stored = s.exec(select(ContactKey).where(ContactKey.contact_id == cid)).one()
        secrets = [bytes(stored.wrapped_key), bytes(c.name_enc or b""), bytes(c.email_enc or b"")]
    with session_scope(engine) as s:
        privacy.erase_contact(s, mid, cid, actor="admin:dpo", clock=clock)
    return secrets


def _needles() -> list[bytes]:
    out = []
    for v in PII.values():
        out += [v.encode(), v.lower().encode(), v.encode("utf-16-le")]
    out += [b"Zebulon", b"Quattlebaum", b"Ophelia", b"4155552671", b"abcdefabcdef"]
    return out


class TestRawStorageAfterErasure:
    def test_sqlite_file_has_no_plaintext(self, tmp_path: Path, keyring: KeyRing) -> None:
        url = f"sqlite:///{tmp_path / 'raw.db'}"
        upgrade(url)
        engine = make_engine(url)
        shredded = _populate_and_erase(engine, keyring)
        # the API runs this after an erasure commits: without it the WAL kept the wrapped key
        # and the ciphertexts (secure_delete zeroes the database file's pages only)
        truncate_wal(engine)
        blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
        engine.dispose()
        assert b"inv-p1" in blob  # positive control: row data is readable in the raw file
        for needle in [*_needles(), *shredded]:
            assert needle not in blob, needle

    def test_postgres_rows_have_no_plaintext(self, pg_admin: sa.Engine, keyring: KeyRing) -> None:
        schema = f"crm_raw_{os.getpid()}"
        with pg_admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        try:
            url = pg_schema_url(schema)
            upgrade(url)
            engine = make_engine(url)
            _populate_and_erase(engine, keyring)
            with engine.connect() as conn:
                dump = []
                for table in TABLES:
                    sql = f'SELECT row_to_json(t)::text FROM "{table.name}" t'  # noqa: S608
                    dump += conn.execute(sa.text(sql)).scalars().all()
                # bytea columns render as hex in JSON: decode them too
                hexes = b"".join(
                    bytes.fromhex(h) for row in dump for h in re.findall(r'"\\\\x([0-9a-f]+)"', row)
                )
            engine.dispose()
            text = "\n".join(dump).encode() + hexes
            assert len(dump) > 10
            assert b"inv-p1" in text  # positive control
            for needle in _needles():
                assert needle not in text, needle
        finally:
            with pg_admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def test_metadata_registers_only_prefixed_crm_tables() -> None:
    crm_tables = [t for t in SQLModel.metadata.sorted_tables if t.name.startswith("crm_")]
    assert {t.name for t in crm_tables} == {t.name for t in TABLES}
    assert Contact.__tablename__ == "crm_contact"
    assert ContactWallet.__tablename__ == "crm_contact_wallet"
    assert FollowUp.__tablename__ == "crm_followup"
    assert FollowUpPolicyCreate().channel_order == ["email"]
