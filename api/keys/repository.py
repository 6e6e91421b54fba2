"""All SQL for API keys. No commits here: the caller owns the transaction."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from api.keys.models import ApiKeyRecord

__all__ = ["add", "get", "get_by_hash", "scoped_select", "set_last_used", "set_revoked"]


def add(session: Session, record: ApiKeyRecord) -> ApiKeyRecord:
    session.add(record)
    session.flush()
    return record


# Hot-path statements are built once (construction costs more than SQLite runs them).
_BY_HASH = select(ApiKeyRecord).where(col(ApiKeyRecord.key_hash) == sa.bindparam("key_hash"))


def get_by_hash(session: Session, key_hash: str) -> ApiKeyRecord | None:
    return session.exec(_BY_HASH, params={"key_hash": key_hash}).first()


def scoped_select(merchant_id: str | None, livemode: bool) -> SelectOfScalar[ApiKeyRecord]:
    """Keys visible in a merchant scope (``None``: every key, for admins) and one mode: a key
    sees and revokes keys of its own mode only, as it creates them."""
    stmt = select(ApiKeyRecord).where(ApiKeyRecord.livemode == livemode)
    if merchant_id is not None:
        stmt = stmt.where(ApiKeyRecord.merchant_id == merchant_id)
    return stmt


def get(
    session: Session, key_id: str, *, merchant_id: str | None, livemode: bool
) -> ApiKeyRecord | None:
    stmt = scoped_select(merchant_id, livemode).where(ApiKeyRecord.id == key_id)
    return session.exec(stmt).first()


def set_revoked(session: Session, record: ApiKeyRecord, now: datetime) -> ApiKeyRecord:
    if record.revoked_at is None:
        record.revoked_at = now
        session.add(record)
        session.flush()
    return record


def set_last_used(conn: sa.Connection | Session, key_id: str, now: datetime) -> None:
    conn.execute(
        sa.update(ApiKeyRecord).where(col(ApiKeyRecord.id) == key_id).values(last_used_at=now)
    )
