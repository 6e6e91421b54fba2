"""Engines, transactions and migrations.

Services never commit: :func:`session_scope` (or the API's request dependency) owns the transaction.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Session

from crm.sqlite_gate import sqlite_connect_args

if TYPE_CHECKING:  # alembic loads only for migrations (~0.15 s of every CLI start)
    from alembic.config import Config

    from crm.consent.service import HeadsSealed
    from crm.crypto import KeyRing

__all__ = [
    "MIGRATION_LOCK",
    "VERSION_TABLE",
    "MigrationCheckError",
    "alembic_config",
    "current_revision",
    "execute_many",
    "make_engine",
    "run_migrations_online",
    "session_scope",
    "truncate_wal",
    "upgrade",
]

log = logging.getLogger(__name__)

VERSION_TABLE = "crm_alembic_version"
#: Revision 0005 makes every consent head's MAC required; :func:`upgrade` seals before it.
_LAST_WITHOUT_REQUIRED_MAC = "0004"


def make_engine(url: str | sa.URL, **kwargs: Any) -> sa.Engine:
    """Create an engine; SQLite gets WAL, foreign keys, secure_delete, a busy timeout and writers
    queued in-process (:mod:`crm.sqlite_gate`)."""
    u = sa.make_url(url)
    if u.get_backend_name() == "sqlite":
        connect_args = sqlite_connect_args(kwargs.pop("connect_args", None))
        engine = sa.create_engine(u, connect_args=connect_args, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            if u.database and u.database != ":memory:":
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()
            # Let SQLAlchemy (not pysqlite) drive transactions so SAVEPOINTs work.
            dbapi_conn.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def _begin(conn: sa.Connection) -> None:
            # IMMEDIATE: take the write lock up front; no deadlocking read->write upgrades.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(u, **kwargs)


@functools.lru_cache(maxsize=64)
def _compiled(
    stmt: sa.Executable, keys: tuple[str, ...], dialect: sa.Dialect
) -> tuple[str, tuple[str, ...], tuple[Callable[[Any], Any] | None, ...], bool]:
    compiled = stmt.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
    names = tuple(compiled.positiontup) if compiled.positional else tuple(compiled.binds)
    processors = tuple(
        compiled.binds[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names
    )
    return compiled.string, names, processors, bool(compiled.positional)


def execute_many(
    session: Session, stmt: sa.Insert | sa.Update, rows: Sequence[Mapping[str, Any]]
) -> None:
    """``executemany`` of ``stmt`` over ``rows`` (all with the keys of the first row: column keys
    for an INSERT, bind names for an UPDATE with ``bindparam``s).

    The same statement and the same type conversions as ``session.execute(stmt, rows)``, but
    each column's bind processor is looked up once and applied in a plain loop: SQLAlchemy's
    per-row parameter machinery costs ~25 us a row, which is most of a 10,000-row catch-up step.
    """
    if not rows:
        return
    conn = session.connection()
    sql, names, processors, positional = _compiled(stmt, tuple(rows[0]), conn.dialect)
    pairs = list(zip(names, processors, strict=True))
    if positional:  # (a list inside tuple(): a generator costs a third more per row)
        params: list[Any] = [
            tuple([p(row[n]) if p is not None else row[n] for n, p in pairs]) for row in rows
        ]
    else:
        params = [{n: p(row[n]) if p is not None else row[n] for n, p in pairs} for row in rows]
    conn.exec_driver_sql(sql, params)


@contextmanager
def session_scope(engine: sa.Engine) -> Iterator[Session]:
    """Yield a session; commit on success, roll back on any exception."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def truncate_wal(bind: sa.Engine | sa.Connection) -> None:
    """SQLite: copy the write-ahead log into the database and empty it. ``secure_delete``
    zeroes freed pages in the database file only; the WAL keeps old page images (an erased
    contact's wrapped data key and ciphertexts) until a checkpoint overwrites them, and the
    automatic ones do not truncate it. Run after an erasure commits. PostgreSQL: nothing (its
    dead tuples go with VACUUM; see docs/security.md)."""
    engine = bind if isinstance(bind, sa.Engine) else bind.engine
    if engine.dialect.name != "sqlite":
        return
    raw = engine.raw_connection()  # outside a transaction, which a checkpoint cannot run in
    try:
        busy, _, _ = raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    except sqlite3.OperationalError as exc:  # the erasure stands; the log waits for the next
        log.warning("WAL not truncated after an erasure: %s", exc)
    else:
        if busy:  # a reader still held an old snapshot
            log.warning("WAL not truncated after an erasure: the database was busy")
    finally:
        raw.close()


def alembic_config(url: str | sa.URL | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent / "migrations"))
    if url is not None:
        u = sa.make_url(url)
        cfg.attributes["url"] = u
        cfg.set_main_option("sqlalchemy.url", u.render_as_string().replace("%", "%%"))
    return cfg


def upgrade(
    url: str | sa.URL | None = None,
    *,
    connection: sa.Connection | None = None,
    keyring: KeyRing | None = None,
) -> HeadsSealed:
    """Run ``alembic upgrade head`` for the CRM tables (by URL or on a given connection).

    With ``keyring``, consent heads written without a MAC (migration 0003's backfill, older
    releases) are sealed as they stand, once, before revision 0005 makes the MAC required.
    Without it, an upgrade over such heads stops at 0005 and applies nothing (the run is one
    transaction). A database already past 0005 is
    never sealed again: a head without a MAC there was stripped (the constraint dropped by
    hand), and sealing it on the next start would make a deleted withdrawal undetectable;
    :func:`crm.consent.verify_chain` reports it and the next append flags it."""
    from alembic import command

    from crm.consent.service import HeadsSealed, seal_unsealed_heads

    cfg = alembic_config(url)
    if connection is not None:
        cfg.attributes["connection"] = connection
    outcome = HeadsSealed(sealed=0)
    if keyring is not None and _before_required_mac(cfg, url, connection):
        command.upgrade(cfg, _LAST_WITHOUT_REQUIRED_MAC)  # a no-op on a database past it
        if connection is not None:
            with Session(bind=connection) as session:  # the caller's transaction
                outcome = seal_unsealed_heads(session, keyring)
                session.commit()  # not propagated to the connection's own transaction
        else:
            engine = make_engine(url or cfg.get_main_option("sqlalchemy.url") or "")
            try:
                with session_scope(engine) as session:
                    outcome = seal_unsealed_heads(session, keyring)
            finally:
                engine.dispose()
    command.upgrade(cfg, "head")
    return outcome


def _before_required_mac(
    cfg: Config, url: str | sa.URL | None, connection: sa.Connection | None
) -> bool:
    """Whether the database is below revision 0005 (a new one included: nothing to seal)."""
    from alembic.runtime.migration import MigrationContext

    if connection is not None:
        ctx = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        revision = ctx.get_current_revision()
    else:
        revision = current_revision(url or cfg.get_main_option("sqlalchemy.url") or "")
    return revision is None or revision <= _LAST_WITHOUT_REQUIRED_MAC


#: ``pg_advisory_xact_lock`` key every migration run takes ("FollowPay" in ASCII, 63 bits).
MIGRATION_LOCK = 0x466F6C6C6F77506179 & (2**63 - 1)


class MigrationCheckError(Exception):
    """A migration run left rows whose foreign keys point nowhere (SQLite checks them itself
    only while the run has them switched off); nothing was committed."""


def run_migrations_online(context: Any, configure: Callable[[sa.Connection], None]) -> None:
    """The ``run_migrations_online`` of both Alembic environments.

    A caller's connection (``config.attributes["connection"]``) is used as it is, in its own
    transaction. Otherwise the run opens one connection from :func:`make_engine` and makes two
    processes migrate one after the other, each reading the version only once it may write:
    SQLite takes its write lock (``BEGIN IMMEDIATE``) and PostgreSQL an advisory lock held
    until commit. SQLite's foreign keys are off for the run (batch mode rebuilds a table by
    dropping it, which fails while other rows refer to it) and checked before the commit."""
    config = context.config
    given = config.attributes.get("connection")
    if given is not None:
        configure(given)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(
        config.attributes.get("url") or config.get_main_option("sqlalchemy.url") or "",
        hide_parameters=True,
    )
    try:
        with engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            if sqlite:  # outside a transaction, where SQLite honours it
                raw = conn.connection.driver_connection
                assert raw is not None
                raw.execute("PRAGMA foreign_keys=OFF")
            configure(conn)
            with context.begin_transaction():
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
                context.run_migrations()
                if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first():
                    raise MigrationCheckError("the migration left rows with broken foreign keys")
    finally:
        engine.dispose()


def current_revision(url: str | sa.URL) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return ctx.get_current_revision()
    finally:
        engine.dispose()
