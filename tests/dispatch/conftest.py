"""The dispatch tests' default database (a fresh SQLite file) and clock; a module that needs
both databases defines its own ``engine``."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlmodel import SQLModel

import api.dispatch.models  # noqa: F401 - the tables created
import crm.models  # noqa: F401
from crm import FrozenClock, make_engine


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'w.sqlite3'}")
    SQLModel.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def clock():
    # 12:00 in London: inside every default send window
    return FrozenClock(datetime(2026, 6, 1, 11, 0, tzinfo=UTC))
