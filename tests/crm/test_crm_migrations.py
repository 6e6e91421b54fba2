"""Migrations produce exactly the models' schema, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import Session, SQLModel, select

import crm.models
from crm import KeyRing
from crm._base import is_crm_table
from crm.consent import chain
from crm.consent import service as consent
from crm.consent.models import ConsentEvent, ConsentHead, ConsentState
from crm.consent.service import SealStatus
from crm.db import VERSION_TABLE, alembic_config, current_revision, make_engine, upgrade
from crm.followups.models import Purchase

from .conftest import START, pg_schema_url


def _crm_head() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _include(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
    if type_ == "table":
        return is_crm_table(name) and name != VERSION_TABLE
    table = getattr(obj, "table", None)
    return table is None or is_crm_table(table.name)


def _diffs(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={"include_object": _include, "compare_type": True, "compare_server_default": True},
        )
        return list(compare_metadata(ctx, SQLModel.metadata))


class TestMigrations:
    def test_sqlite_matches_models(self, sqlite_engine: sa.Engine) -> None:
        assert _diffs(sqlite_engine) == []

    def test_postgres_matches_models(self, pg_engine: sa.Engine) -> None:
        assert _diffs(pg_engine) == []

    def test_single_linear_head(self) -> None:
        script = ScriptDirectory.from_config(alembic_config())
        assert len(script.get_heads()) == 1
        revs = list(script.walk_revisions())
        assert revs[-1].down_revision is None

    def test_current_revision_is_head(self, sqlite_url: str, pg_url: sa.URL) -> None:
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert current_revision(sqlite_url) == head
        assert current_revision(pg_url) == head

    def test_all_tables_prefixed_and_created(self, pg_engine: sa.Engine) -> None:
        names = set(sa.inspect(pg_engine).get_table_names())
        expected = {t.name for t in crm.models.TABLES}
        assert expected <= names
        assert all(n.startswith("crm_") for n in names)

    def test_indexes_for_queue_and_consent(self, pg_engine: sa.Engine) -> None:
        insp = sa.inspect(pg_engine)
        ticket_ix = {tuple(ix["column_names"]) for ix in insp.get_indexes("crm_ticket")}
        assert ("merchant_id", "state", "due_at") in ticket_ix
        pk = insp.get_pk_constraint("crm_consent_state")
        assert pk["constrained_columns"] == ["contact_id", "purpose", "channel"]
        assert pk["name"] == "pk_crm_consent_state"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str | sa.URL]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    admin: sa.Engine = request.getfixturevalue("pg_admin")
    schema = f"crm_mig_{os.getpid()}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield pg_schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def test_0002_keeps_purchase_amounts_and_takes_uint256(fresh_url: str | sa.URL) -> None:
    """A purchase recorded as BIGINT keeps its amount; afterwards amounts past 2**63 fit."""
    command.upgrade(alembic_config(fresh_url), "0001")
    engine = make_engine(fresh_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO crm_merchant (id, name, created_at) VALUES (1, 'M', :t)"),
                {"t": START},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO crm_contact (id, merchant_id, time_zone, personalised, created_at,"
                    " updated_at) VALUES (1, 1, 'UTC', false, :t, :t)"
                ),
                {"t": START},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO crm_purchase (merchant_id, contact_id, payment_ref, invoice_ref,"
                    " amount_minor, currency, settled_at) VALUES (1, 1, 'pay_old', 'inv_old',"
                    " 9223372036854775807, 'DAI', :t)"
                ),
                {"t": START},
            )
        command.upgrade(alembic_config(fresh_url), "head")
        with Session(engine) as session, session.begin():
            session.add(
                Purchase(
                    merchant_id=1,
                    contact_id=1,
                    payment_ref="pay_new",
                    invoice_ref="inv_new",
                    amount_minor=2**200 + 1,
                    currency="DAI",
                    settled_at=START,
                )
            )
        with Session(engine) as session:
            amounts = {p.payment_ref: p.amount_minor for p in session.exec(select(Purchase))}
        assert amounts == {"pay_old": 2**63 - 1, "pay_new": 2**200 + 1}
    finally:
        engine.dispose()


def _old_ledger(session: Session, contact_id: int, actions: list[str]) -> None:
    """Ledger entries (and projection rows) as the service wrote them before 0003."""
    prev = chain.GENESIS
    for seq, action in enumerate(actions, start=1):
        entry = chain.LedgerEntry(
            contact_id=contact_id,
            seq=seq,
            purpose="marketing",
            channel="email",
            action=action,
            legal_basis="consent",
            policy_version="1",
            source="api",
            actor="old",
            occurred_at=START,
        )
        event = ConsentEvent(
            merchant_id=1,
            contact_id=contact_id,
            seq=seq,
            purpose="marketing",
            channel="email",
            action=action,
            actor="old",
            occurred_at=START,
            prev_hash=prev,
            hash=chain.entry_hash(entry, prev),
        )
        session.add(event)
        session.flush()
        prev = event.hash
        state = session.get(ConsentState, (contact_id, "marketing", "email"))
        state = state or ConsentState(
            contact_id=contact_id, purpose="marketing", channel="email", merchant_id=1
        )
        state.state = {"grant": "granted", "withdraw": "withdrawn"}[action]
        state.event_id, state.updated_at = event.id, START  # type: ignore[assignment]
        session.add(state)


def test_0003_backfills_unsealed_heads_that_0005_requires_sealed(fresh_url: str | sa.URL) -> None:
    """Each contact with a ledger gets a head naming its last entry, without a MAC (migrations
    hold no key): verification accepts it unkeyed and reports it unsealed keyed. Revision 0005
    refuses to run over such heads; ``crm.db.upgrade`` with the key ring seals them first (a
    stale one as it stands, and lists it), then makes the MAC required."""
    command.upgrade(alembic_config(fresh_url), "0002")
    engine = make_engine(fresh_url)
    keyring = KeyRing(b"m" * 32)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO crm_merchant (id, name, created_at) VALUES (1, 'M', :t)"),
                {"t": START},
            )
            for cid in (1, 2, 3):
                conn.execute(
                    sa.text(
                        "INSERT INTO crm_contact (id, merchant_id, time_zone, personalised,"
                        " created_at, updated_at) VALUES (:c, 1, 'UTC', false, :t, :t)"
                    ),
                    {"c": cid, "t": START},
                )
        with Session(engine) as session, session.begin():
            _old_ledger(session, 1, ["grant", "withdraw"])
            _old_ledger(session, 3, ["grant"])
        command.upgrade(alembic_config(fresh_url), "0004")
        with Session(engine) as session, session.begin():
            heads = {h.contact_id: h for h in session.exec(select(ConsentHead))}
            assert set(heads) == {1, 3}  # contact 2 has no ledger
            last = consent.history(session, 1)[-1]
            assert (heads[1].seq, heads[1].head_hash, heads[1].mac) == (2, last.hash, None)
            assert consent.verify_chain(session, 1).ok
            keyed = consent.verify_chain(session, 1, keyring=keyring)
            assert (keyed.ok, keyed.seal) == (False, SealStatus.UNSEALED)
            heads[3].seq = 2  # contact 3's head names an entry the ledger no longer has
            session.add(heads[3])
        with pytest.raises(RuntimeError, match="2 consent ledger heads have no MAC"):
            command.upgrade(alembic_config(fresh_url), "head")
        assert current_revision(fresh_url) == "0004"  # nothing half-applied
        sealed = upgrade(fresh_url, keyring=keyring)
        assert (sealed.sealed, sealed.stale_contact_ids) == (2, (3,))
        assert current_revision(fresh_url) == _crm_head()
        with Session(engine) as session:
            report = consent.verify_chain(session, 1, keyring=keyring)
            assert (report.ok, report.seal, report.length) == (True, SealStatus.VALID, 2)
            assert consent.verify_chain(session, 3, keyring=keyring).seal is SealStatus.STALE
            assert consent.verify_chain(session, 2, keyring=keyring).seal is SealStatus.EMPTY
        assert upgrade(fresh_url, keyring=keyring).sealed == 0  # nothing left to seal
    finally:
        engine.dispose()


def test_0007_scopes_stored_blind_indexes_to_their_merchant(fresh_url: str | sa.URL) -> None:
    """Indexes written before 0007 (one HMAC, equal across merchants) are rescoped in place:
    afterwards the service finds every contact by e-mail and wallet, the same customer at
    two merchants no longer shares an index, and contacts without one stay without."""
    import hashlib
    import hmac

    from crm import ContactCreate, FrozenClock, MerchantCreate, merchants
    from crm.contacts import service as contacts
    from crm.contacts.models import Contact, ContactWallet
    from crm.crypto import scope_index

    keyring = KeyRing(b"k" * 32)

    def unscoped(kind: str, value: str) -> str:  # the index as releases before 0007 wrote it
        key = keyring._index_key  # recreating an old release's rows
        return hmac.new(key, kind.encode() + b"\x00" + value.encode(), hashlib.sha256).hexdigest()

    wallet = "0x" + "ab" * 20
    command.upgrade(alembic_config(fresh_url), "0006")
    engine = make_engine(fresh_url)
    try:
        with Session(engine) as session, session.begin():
            clock = FrozenClock(START)
            ids = []
            for name in ("A", "B"):
                mid = merchants.create_merchant(session, MerchantCreate(name=name), clock).id
                data = ContactCreate(email="Ann@Example.com", wallet_addresses=[wallet])
                ids.append((mid, contacts.create_contact(session, mid, data, keyring, clock).id))
            bare_id = contacts.create_contact(
                session, ids[0][0], ContactCreate(name="x"), keyring, clock
            ).id
            for contact in session.exec(select(Contact)):
                if contact.email_index is not None:
                    contact.email_index = unscoped("email", "ann@example.com")
            for row in session.exec(select(ContactWallet)):
                row.address_index = unscoped("wallet", wallet)
        with Session(engine) as session:
            before = {c.id: c.email_index for c in session.exec(select(Contact))}
        assert before[ids[0][1]] == before[ids[1][1]]  # the link 0007 removes

        command.upgrade(alembic_config(fresh_url), "head")

        with Session(engine) as session:
            after = {c.id: c.email_index for c in session.exec(select(Contact))}
            for mid, cid in ids:
                assert after[cid] == scope_index(mid, before[cid])  # migration == crm.crypto
                assert contacts.find_by_email(session, mid, "ann@example.com", keyring).id == cid
                assert contacts.find_by_wallet(session, mid, wallet, keyring).id == cid
            wallets = {w.contact_id: w.address_index for w in session.exec(select(ContactWallet))}
        assert after[ids[0][1]] != after[ids[1][1]]
        assert wallets[ids[0][1]] != wallets[ids[1][1]]
        assert after[bare_id] is None
        with pytest.raises(RuntimeError, match="cannot be undone"):
            command.downgrade(alembic_config(fresh_url), "0006")
        assert current_revision(fresh_url) == _crm_head()
    finally:
        engine.dispose()


def test_a_restart_never_seals_a_head_stripped_of_its_mac(fresh_url: str | sa.URL) -> None:
    """Past 0005 every head has a MAC. One without was stripped (the NOT NULL dropped by
    hand, with a withdrawal deleted and the head pointed at the entry before it): the next
    start's ``upgrade`` sealed it as it stood, and the deleted withdrawal became undetectable."""
    from crm import MerchantCreate, merchants
    from crm.clock import FrozenClock
    from crm.contacts import service as contacts
    from crm.contacts.models import ContactCreate

    keyring = KeyRing(b"m" * 32)
    clock = FrozenClock(START)
    upgrade(fresh_url, keyring=keyring)
    engine = make_engine(fresh_url)
    try:
        with Session(engine) as s, s.begin():
            m = merchants.create_merchant(s, MerchantCreate(name="M"), clock)
            c = contacts.create_contact(
                s, m.id or 0, ContactCreate(email="a@example.com"), keyring, clock
            )
            granted = consent.grant(
                s, m.id or 0, c.id or 0, "marketing", "email", actor="x", clock=clock,
                keyring=keyring,
            )  # fmt: skip
            consent.withdraw(
                s, m.id or 0, c.id or 0, "marketing", "email", actor="c", clock=clock,
                keyring=keyring,
            )  # fmt: skip
            contact_id, first_id, first_hash = c.id or 0, granted.id, granted.hash
        with engine.begin() as conn:  # someone with the database, not the master key
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("ALTER TABLE crm_consent_head ALTER COLUMN mac DROP NOT NULL"))
            else:
                conn.execute(sa.text("PRAGMA writable_schema=ON"))
                conn.execute(
                    sa.text(
                        "UPDATE sqlite_master SET sql = replace(sql, 'mac VARCHAR(64) NOT NULL',"
                        " 'mac VARCHAR(64)') WHERE name = 'crm_consent_head'"
                    )
                )
                conn.execute(sa.text("PRAGMA writable_schema=OFF"))
        engine.dispose()
        engine = make_engine(fresh_url)
        with engine.begin() as conn:
            params = {"c": contact_id, "e": first_id, "h": first_hash}
            conn.execute(
                sa.text(
                    "UPDATE crm_consent_state SET state='granted', event_id=:e WHERE contact_id=:c"
                ),
                params,
            )
            conn.execute(
                sa.text("DELETE FROM crm_consent_event WHERE contact_id=:c AND seq=2"), params
            )
            conn.execute(
                sa.text(
                    "UPDATE crm_consent_head SET seq=1, head_hash=:h, mac=NULL WHERE contact_id=:c"
                ),
                params,
            )
        assert upgrade(fresh_url, keyring=keyring).sealed == 0  # the restart
        with Session(engine) as s:
            report = consent.verify_chain(s, contact_id, keyring=keyring)
            assert (report.ok, report.seal) == (False, SealStatus.UNSEALED)
    finally:
        engine.dispose()
