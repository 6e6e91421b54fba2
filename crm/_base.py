"""Shared column types and the constraint naming convention (imported by every models module)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import SQLModel

__all__ = ["NAMING_CONVENTION", "JSONType", "UTCDateTime", "Uint256", "is_crm_table"]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLModel.metadata.naming_convention = NAMING_CONVENTION


def is_crm_table(name: str | None) -> bool:
    return bool(name) and str(name).startswith("crm_")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def bind_processor(self, dialect: sa.Dialect) -> Any:
        """SQLite: one step to SQLAlchemy's stored text (``YYYY-MM-DD HH:MM:SS.ffffff``, naive
        UTC) instead of this decorator's conversion followed by the dialect's ``%``-format,
        which cost a settlement step ~5 us a value (eight values a payment)."""
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        # A step writes one ``now`` into thousands of rows: the last conversion is kept (a
        # tuple, replaced whole, so threads sharing the processor read a consistent pair).
        last: tuple[datetime | None, str | None] = (None, None)

        def process(value: datetime | None) -> str | None:
            nonlocal last
            if value is None:
                return None
            seen, text = last
            if value is seen:  # datetimes are immutable: the same object, the same text
                return text
            utc = value.astimezone(UTC) if value.tzinfo is not None and value.utcoffset() else value
            text = utc.replace(tzinfo=None).isoformat(" ", "microseconds")
            last = (value, text)
            return text

        return process

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Uint256(sa.types.TypeDecorator[int]):
    """A uint256 amount in base units, exactly: NUMERIC(78,0) on PostgreSQL, a decimal string
    on SQLite (whose NUMERIC would round through a float). 10 tokens of an 18-decimal ERC-20
    already exceed a BIGINT."""

    impl = sa.String(78)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(sa.Numeric(78, 0))
        return dialect.type_descriptor(sa.String(78))

    def process_bind_param(self, value: int | None, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if not 0 <= int(value) < 2**256:
            raise ValueError("amount out of uint256 range")
        return int(value) if dialect.name == "postgresql" else str(int(value))

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> int | None:
        return None if value is None else int(value)


JSONType = sa.JSON()
