from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlmodel import Session, SQLModel

import api.settlement.models  # noqa: F401 - registers the api_ tables
import crm.models  # noqa: F401 - registers the crm_ tables
from crm import FrozenClock, KeyRing, make_engine
from tests.support import open_market


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'settlement.sqlite3'}")
    SQLModel.metadata.create_all(engine)
    yield engine
    engine.dispose()


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
