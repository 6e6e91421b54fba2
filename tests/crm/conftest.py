"""CRM fixtures: every DB test runs on SQLite and PostgreSQL with per-test rollback.

PostgreSQL gets a dedicated schema ``crm_test_<pid>`` (search_path via connect options), built by
the Alembic migration once per session and dropped at the end. Unreachable PostgreSQL skips those
params locally and fails under ``CI=true``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from crm import FrozenClock, KeyRing, MerchantCreate, merchants
from crm.contacts import service as contacts
from crm.contacts.models import Contact, ContactCreate
from crm.db import make_engine, upgrade
from tests.support import missing

from .helpers import KEYRING

PG_URL = os.environ.get(
    "FOLLOWPAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, 10:00 UTC


def pg_schema_url(schema: str) -> sa.URL:
    return sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("crm") / "crm.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def sqlite_engine(sqlite_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(sqlite_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[sa.Engine]:
    engine = make_engine(PG_URL, pool_pre_ping=False)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:  # pragma: no cover - depends on the machine
        engine.dispose()
        missing(f"PostgreSQL unreachable: {type(exc).__name__}")
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_url(pg_admin: sa.Engine) -> Iterator[sa.URL]:
    schema = f"crm_test_{os.getpid()}"
    with pg_admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = pg_schema_url(schema)
    try:
        upgrade(url)
        yield url
    finally:
        with pg_admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@pytest.fixture(scope="session")
def pg_engine(pg_url: sa.URL) -> Iterator[sa.Engine]:
    engine = make_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> sa.Engine:
    name = {"sqlite": "sqlite_engine", "postgresql": "pg_engine"}[request.param]
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture
def session(engine: sa.Engine) -> Iterator[Session]:
    conn = engine.connect()
    outer = conn.begin()
    s = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield s
    finally:
        s.close()
        outer.rollback()
        conn.close()


@contextmanager
def committed_pg_engine(admin: sa.Engine, pool_size: int = 5) -> Iterator[sa.Engine]:
    """A migrated schema of this process's own that transactions really commit to (no per-test
    rollback), dropped afterwards: for tests of concurrent transactions."""
    schema = f"crm_committed_{os.getpid()}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = pg_schema_url(schema)
    upgrade(url)
    engine = make_engine(url, pool_size=pool_size)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def committed_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """:func:`committed_pg_engine`, or a migrated SQLite file, per parameter."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'committed.db'}"
        upgrade(url)
        engine = make_engine(url)
        yield engine
        engine.dispose()
        return
    with committed_pg_engine(request.getfixturevalue("pg_admin")) as engine:
        yield engine


@pytest.fixture
def pg_committed(pg_admin: sa.Engine) -> Iterator[sa.Engine]:
    with committed_pg_engine(pg_admin) as engine:
        yield engine


@pytest.fixture(scope="session")
def keyring() -> KeyRing:
    return KEYRING


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
def merchant_id(session: Session, clock: FrozenClock) -> int:
    m = merchants.create_merchant(session, MerchantCreate(name="Acme Tea"), clock)
    assert m.id is not None
    return m.id


MakeContact = Callable[..., Contact]


@pytest.fixture
def make_contact(
    session: Session, merchant_id: int, keyring: KeyRing, clock: FrozenClock
) -> MakeContact:
    counter = iter(range(1, 10_000))

    def _make(merchant: int | None = None, **kwargs: Any) -> Contact:
        n = next(counter)
        data: dict[str, Any] = {
            "name": f"Customer {n}",
            "email": f"customer{n}@example.com",
            "phone": "+447911123456",
            "time_zone": "Europe/London",
        }
        data.update(kwargs)
        return contacts.create_contact(
            session, merchant or merchant_id, ContactCreate(**data), keyring, clock
        )

    return _make


def count(session: Session, model: Any) -> int:
    session.flush()
    return int(session.execute(sa.select(sa.func.count()).select_from(model)).scalar_one())
