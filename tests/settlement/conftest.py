"""Settlement fixtures: every ``engine`` test runs on SQLite AND PostgreSQL.

Both databases are built by the repository's migrations (:func:`api.db.upgrade`, the CRM chain
then the ``api_*`` chain), not ``create_all``: the partial unique index on open orders and the
``NUMERIC(78,0)`` amounts under test are the migrated ones. SQLite: migrated once per session
into a template file, copied per test. PostgreSQL: schema ``settlement_test_<pid>`` (one per
xdist worker), migrated once per session, every table emptied before each test (the indexer
commits for real), dropped at the end. PostgreSQL unreachable: skipped locally, a failure under
``CI=true``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session

import api.settlement.models  # noqa: F401 - registers the api_ tables
import crm.models  # noqa: F401 - registers the crm_ tables
from api.db import upgrade
from crm import FrozenClock, KeyRing, make_engine  # the engine the runtime gives the indexer
from tests.support import migrated_pg_schema, open_market


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("settlement") / "template.sqlite3"
    upgrade(f"sqlite:///{path}")  # its engine is disposed: the WAL is checkpointed
    return path


@pytest.fixture(scope="session")
def pg_engine() -> Iterator[sa.Engine]:
    with migrated_pg_schema(f"settlement_test_{os.getpid()}", make_engine) as engine:
        yield engine


@pytest.fixture(scope="session")
def pg_truncate(pg_engine: sa.Engine) -> str:
    """One statement emptying every migrated table (ids restart: tests name row 1)."""
    with pg_engine.connect() as conn:
        tables = conn.execute(
            sa.text(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                " AND tablename NOT LIKE 'alembic_version%' ORDER BY tablename"
            )
        ).scalars()
        names = ", ".join(f'"{name}"' for name in tables)
    assert '"api_payment"' in names
    assert '"crm_followup"' in names
    return f"TRUNCATE {names} RESTART IDENTITY CASCADE"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        path = tmp_path / "settlement.sqlite3"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        engine = make_engine(f"sqlite:///{path}")
        yield engine
        engine.dispose()
        return
    engine = request.getfixturevalue("pg_engine")
    truncate = request.getfixturevalue("pg_truncate")
    with engine.begin() as conn:
        # a connection a failed test left in a transaction would block TRUNCATE: fail instead
        conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
        conn.execute(sa.text(truncate))
    yield engine


@pytest.fixture
def clock() -> FrozenClock:
    # chain time follows the wall clock on both backends; invoices' deadlines must too
    return FrozenClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def keyring() -> KeyRing:
    return KeyRing(b"k" * 32)


@pytest.fixture(scope="session")
def tester_market(tester_chain):
    return open_market(tester_chain)


@pytest.fixture(scope="session")
def anvil_market(anvil_chain):
    return open_market(anvil_chain)


class MarketSuite:
    backend = "tester"

    @pytest.fixture
    def market(self, request) -> Iterator:
        market = request.getfixturevalue(f"{self.backend}_market")
        snapshot = market.chain.snapshot()
        try:
            yield market
        finally:
            market.chain.revert(snapshot)


def session_of(engine) -> Session:
    return Session(engine, expire_on_commit=False)
