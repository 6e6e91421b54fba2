"""Alembic environment for the CRM tables only (version table ``crm_alembic_version``)."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlmodel import SQLModel

import crm.models  # noqa: F401  (registers every table)
from crm._base import is_crm_table
from crm.db import VERSION_TABLE, run_migrations_online

config = context.config
target_metadata = SQLModel.metadata


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    if type_ == "table":
        return is_crm_table(name)
    table = getattr(obj, "table", None)
    if table is not None:
        return is_crm_table(table.name)
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
