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
from crm._base import is_crm_table
from crm.db import VERSION_TABLE, alembic_config, current_revision, make_engine
from crm.followups.models import Purchase

from .conftest import START, pg_schema_url


def _include(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
    if type_ == "table":
        return is_crm_table(name) and name != VERSION_TABLE
    table = getattr(obj, "table", None)
    return table is None or is_crm_table(table.name)


def _diffs(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"include_object": _include, "compare_type": True}
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
