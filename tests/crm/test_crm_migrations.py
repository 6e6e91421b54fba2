"""Migrations produce exactly the models' schema, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlmodel import SQLModel

import crm.models
from crm._base import is_crm_table
from crm.db import VERSION_TABLE, alembic_config, current_revision


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
