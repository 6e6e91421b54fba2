"""The api Alembic chain builds exactly the tables the models describe (both databases)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import api.dispatch.models
import api.settlement.models  # noqa: F401 - the models compared
from api.db import VERSION_TABLE, is_api_table


def _only_api(obj, name, type_, reflected, compare_to):
    if type_ == "table":
        return is_api_table(name)
    table = getattr(obj, "table", None)
    return table is None or is_api_table(table.name)


def test_migrations_match_models(engine):
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "version_table": VERSION_TABLE,
                "include_object": _only_api,
                "compare_type": True,
            },
        )
        diffs = compare_metadata(context, SQLModel.metadata)
    assert diffs == []
