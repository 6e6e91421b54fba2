from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from crm import FrozenClock, MerchantCreate, merchants
from crm.db import make_engine, session_scope, upgrade
from crm.merchants.models import Merchant


class TestMakeEngine:
    def test_sqlite_pragmas(self, tmp_path: Path) -> None:
        engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
        with engine.connect() as conn:
            pragmas = {
                p: conn.exec_driver_sql(f"PRAGMA {p}").scalar()
                for p in ("journal_mode", "foreign_keys", "busy_timeout", "secure_delete")
            }
        engine.dispose()
        assert pragmas == {
            "journal_mode": "wal",
            "foreign_keys": 1,
            "busy_timeout": 30000,
            "secure_delete": 1,
        }


class TestSessionScope:
    def test_commits_on_success_and_rolls_back_on_error(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 's.db'}"
        upgrade(url)
        engine = make_engine(url)
        clock = FrozenClock()
        with session_scope(engine) as s:
            merchants.create_merchant(s, MerchantCreate(name="kept"), clock)

        def failing() -> None:
            with session_scope(engine) as s:
                merchants.create_merchant(s, MerchantCreate(name="discarded"), clock)
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            failing()
        with session_scope(engine) as s:
            names = [m.name for m in s.exec(select(Merchant))]
        engine.dispose()
        assert names == ["kept"]
