"""Engines, sessions, shared column types and the migrations of the ``api_*`` tables.

The API tables live in ``SQLModel.metadata`` next to the CRM's, but have their own Alembic chain
(``api/migrations``, version table :data:`VERSION_TABLE`) that only looks at tables whose names
start with ``api_``. Services never commit: the request dependency (:mod:`api.deps`) or
:func:`session_scope` owns the transaction.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Session

from crm._base import NAMING_CONVENTION, UTCDateTime
from crm.consent.service import HeadsSealed
from crm.crypto import KeyRing
from crm.sqlite_gate import sqlite_connect_args

if TYPE_CHECKING:  # alembic loads only for migrations (~0.15 s of every CLI start)
    from alembic.config import Config

__all__ = [
    "NAMING_CONVENTION",
    "VERSION_TABLE",
    "SchemaRevisionError",
    "SessionFactory",
    "UTCDateTime",
    "alembic_config",
    "check_schema",
    "holds_encrypted_data",
    "is_api_table",
    "make_engine",
    "new_id",
    "session_factory",
    "session_scope",
    "upgrade",
    "utcnow",
]

VERSION_TABLE = "alembic_version_api"

# The CRM's convention and UTC type are the project's: one definition, shared metadata.
SessionFactory = Callable[[], Session]


def is_api_table(name: str | None) -> bool:
    return bool(name) and str(name).startswith("api_")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A Stripe-style object id, e.g. ``we_3kT9…`` (prefix + 128 random bits, URL-safe)."""
    return f"{prefix}_{secrets.token_urlsafe(16).replace('-', 'x').replace('_', 'z')}"


def make_engine(url: str | sa.URL, **kwargs: Any) -> sa.Engine:
    """Create an engine that never prints bound parameters in errors or logs.

    SQLite gets WAL, foreign keys, a busy timeout and writers queued in-process
    (:mod:`crm.sqlite_gate`) so that several threads (and the short side transactions of
    idempotency and webhook claiming) can share one file.
    """
    u = sa.make_url(url)
    kwargs.setdefault("hide_parameters", True)
    # A request holds one connection; a few take a second, short one (last_used_at, a block of
    # invoice numbers): with anyio's 40 threads, 80 connections can never run dry.
    if u.database not in (None, "", ":memory:"):
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 70)
        kwargs.setdefault("pool_timeout", 10)
    if u.get_backend_name() == "sqlite":
        connect_args = sqlite_connect_args(kwargs.pop("connect_args", None), lazy_immediate=True)
        engine = sa.create_engine(u, connect_args=connect_args, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            if u.database and u.database != ":memory:":
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA secure_delete=ON")  # an erased contact's key leaves no page
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(u, **kwargs)


def session_factory(engine: sa.Engine) -> SessionFactory:
    """A zero-argument callable returning a new :class:`Session` (``expire_on_commit=False``)."""

    def factory() -> Session:
        return Session(engine, expire_on_commit=False)

    return factory


@contextmanager
def session_scope(factory: SessionFactory | sa.Engine) -> Iterator[Session]:
    """Yield a session; commit on success, roll back on any exception."""
    session = (
        Session(factory, expire_on_commit=False) if isinstance(factory, sa.Engine) else factory()
    )
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str | sa.URL | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent / "migrations"))
    if url is not None:
        rendered = sa.make_url(url).render_as_string(hide_password=False)
        cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


#: Rows whose contents the master key encrypts: contacts' wrapped data keys, webhook signing
#: secrets, sealed consent heads.
_ENCRYPTED_UNDER_MASTER_KEY = ("crm_contact_key", "api_webhook_endpoints", "crm_consent_head")


def holds_encrypted_data(url: str | sa.URL) -> bool:
    """Whether the database has any row the master key encrypted or sealed (an unmigrated or
    empty one has none)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            present = set(sa.inspect(conn).get_table_names())
            for table in _ENCRYPTED_UNDER_MASTER_KEY:
                if table in present:
                    query = sa.select(sa.literal(1)).select_from(sa.table(table)).limit(1)
                    if conn.execute(query).first() is not None:
                        return True
        return False
    finally:
        engine.dispose()


class SchemaRevisionError(Exception):
    """The database's schema is not the one this release's code was written for."""

    status_code = 409
    code = "schema_revision"


def check_schema(engine: sa.Engine, *, behind_ok: bool = False) -> None:
    """Both migration chains at this release's heads, else :class:`SchemaRevisionError` naming
    the chain and what to do: a command on a database an upgrade has not reached failed later
    on a missing column, and one a newer release migrated failed as "Can't locate revision".
    ``behind_ok``: only a revision this release does not know is refused (before upgrading)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from crm.db import VERSION_TABLE as CRM_VERSION_TABLE
    from crm.db import alembic_config as crm_config

    chains = (("crm", CRM_VERSION_TABLE, crm_config()), ("api", VERSION_TABLE, alembic_config()))
    with engine.connect() as conn:
        present = set(sa.inspect(conn).get_table_names())
        for chain, table, cfg in chains:
            script = ScriptDirectory.from_config(cfg)
            head = script.get_current_head()
            current = (
                conn.execute(sa.text(f"SELECT version_num FROM {table}")).scalar()  # noqa: S608
                if table in present
                else None
            )
            if current == head:
                continue
            if current is not None:
                try:
                    script.get_revision(current)
                except CommandError:
                    raise SchemaRevisionError(
                        f"the database's {chain} schema is at revision {current}, which this "
                        f"release does not know (it goes up to {head}): a newer release "
                        "migrated it; run that release"
                    ) from None
            if behind_ok:
                continue
            at = "not migrated" if current is None else f"at revision {current}"
            raise SchemaRevisionError(
                f"the database's {chain} schema is {at}, this release needs {head}: "
                "run `followpay db upgrade`"
            )


def upgrade(
    url: str | sa.URL | None = None,
    *,
    connection: sa.Connection | None = None,
    revision: str = "head",
    keyring: KeyRing | None = None,
) -> HeadsSealed:
    """Upgrade the CRM chain, then the ``api_*`` chain (whose tables reference CRM tables).
    ``keyring`` seals consent heads older releases left without a MAC (:func:`crm.db.upgrade`);
    what it sealed is returned for the operator."""
    from alembic import command

    from crm.db import upgrade as crm_upgrade

    sealed = crm_upgrade(url, connection=connection, keyring=keyring)
    cfg = alembic_config(url)
    if connection is not None:
        cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)
    return sealed
