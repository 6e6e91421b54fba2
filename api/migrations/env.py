"""Alembic environment for the ``api_*`` tables only (version table ``alembic_version_api``)."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlmodel import SQLModel

import api.dispatch.models
import api.idempotency.models
import api.keys.models
import api.settlement.models
import api.webhooks.models  # noqa: F401  (register the tables)
from api.db import VERSION_TABLE, is_api_table
from crm.db import run_migrations_online

config = context.config
target_metadata = SQLModel.metadata


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    if type_ == "table":
        return is_api_table(name)
    table = getattr(obj, "table", None)
    if table is not None:
        return is_api_table(table.name)
    return True


def _configure(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_object=include_object,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        transactional_ddl=True,  # SQLite's DDL is transactional too: one run, one transaction
    )


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        include_object=include_object,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online(context, _configure)
