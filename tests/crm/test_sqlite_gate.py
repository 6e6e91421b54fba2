"""SQLite writers queue on the in-process gate; the API engine's lazy BEGIN IMMEDIATE."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from api.db import make_engine as api_engine
from crm.db import make_engine as crm_engine
from crm.sqlite_gate import GatedConnection, LazyImmediateConnection


@pytest.fixture
def path(tmp_path):
    file = tmp_path / "gate.sqlite3"
    conn = sqlite3.connect(file)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    conn.close()
    return file


def _rows(path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [v for (v,) in conn.execute("SELECT v FROM t ORDER BY id")]
    finally:
        conn.close()


class TestLazyImmediate:
    def test_reads_before_the_first_write_hold_no_transaction(self, path):
        conn = sqlite3.connect(path, factory=LazyImmediateConnection, isolation_level=None)
        conn.execute("SELECT count(*) FROM t").fetchone()
        assert not conn.in_transaction
        assert not conn._holding
        conn.execute("INSERT INTO t (v) VALUES ('a')")
        assert conn.in_transaction
        assert conn._holding
        conn.commit()
        assert not conn._holding
        assert _rows(path) == ["a"]

    def test_releasing_a_savepoint_does_not_commit_the_request(self, path):
        # pysqlite's legacy mode commits when the outermost SAVEPOINT is released: half a request
        # would be durable. Here the savepoint opens BEGIN IMMEDIATE and stays nested.
        engine = api_engine(f"sqlite:///{path}")
        try:
            with Session(engine) as session:
                with session.begin_nested():
                    session.execute(sa.text("INSERT INTO t (v) VALUES ('inside')"))
                session.execute(sa.text("INSERT INTO t (v) VALUES ('after')"))
                assert _rows(path) == []  # nothing visible to another connection yet
                session.rollback()
            assert _rows(path) == []
        finally:
            engine.dispose()

    def test_commit_makes_both_statements_durable_together(self, path):
        engine = api_engine(f"sqlite:///{path}")
        try:
            with Session(engine) as session:
                with session.begin_nested():
                    session.execute(sa.text("INSERT INTO t (v) VALUES ('a')"))
                session.execute(sa.text("INSERT INTO t (v) VALUES ('b')"))
                session.commit()
            assert _rows(path) == ["a", "b"]
        finally:
            engine.dispose()

    def test_schema_changes_are_part_of_the_transaction(self, path):
        """DDL opened no transaction: a migration whose first statement was an ``ALTER`` ran it
        in autocommit, and a later refusal in the same run rolled back everything else."""
        engine = api_engine(f"sqlite:///{path}")
        try:

            def migrate_then_refuse() -> None:
                with engine.begin() as conn:
                    conn.execute(sa.text("ALTER TABLE t ADD COLUMN w TEXT"))
                    conn.execute(sa.text("CREATE TABLE u (id INTEGER PRIMARY KEY)"))
                    raise RuntimeError("a migration refuses")

            with pytest.raises(RuntimeError):
                migrate_then_refuse()
            with engine.connect() as conn:
                assert [c["name"] for c in sa.inspect(conn).get_columns("t")] == ["id", "v"]
                assert not sa.inspect(conn).has_table("u")
        finally:
            engine.dispose()


class TestWritersQueue:
    @pytest.mark.parametrize("make", [api_engine, crm_engine], ids=["api", "crm"])
    def test_one_writer_at_a_time_and_nobody_fails(self, path, make):
        # SQLite's own busy handler is switched off (busy_timeout=0): a writer that reaches
        # SQLite's write lock while another holds it fails at once with SQLITE_BUSY. Only the
        # in-process gate (whose timeout stays the engine's 30 s) can make them queue.
        engine = make(f"sqlite:///{path}")

        @sa.event.listens_for(engine, "connect")
        def _no_busy_handler(dbapi_conn, _record) -> None:  # after the engine's own pragmas
            dbapi_conn.execute("PRAGMA busy_timeout=0")

        inside = 0
        most = 0
        errors: list[BaseException] = []
        guard = threading.Lock()

        def write(n: int) -> None:
            nonlocal inside, most
            try:
                with Session(engine) as session:
                    session.execute(sa.text("INSERT INTO t (v) VALUES (:v)"), {"v": f"w{n}"})
                    with guard:
                        inside += 1
                        most = max(most, inside)
                    time.sleep(0.005)  # hold the write lock a little while others queue
                    with guard:
                        inside -= 1
                    session.commit()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(n,)) for n in range(24)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not any(t.is_alive() for t in threads), "a writer never finished"
        finally:
            engine.dispose()
        assert errors == []
        assert most == 1
        assert sorted(_rows(path)) == sorted(f"w{n}" for n in range(24))

    def test_a_waiter_gives_up_after_its_timeout(self, path):
        # The holder keeps the gate until the waiter has finished: a waiter that ignored its own
        # 0.2 s timeout (waited forever, or for the holder's/engine's long one) would still be
        # waiting when the join below gives up, and the test fails.
        holder = sqlite3.connect(path, factory=GatedConnection, timeout=600)
        holder.execute("INSERT INTO t (v) VALUES ('held')")
        assert holder._holding
        waiter = sqlite3.connect(
            path, factory=GatedConnection, timeout=0.2, check_same_thread=False
        )
        outcome: list[BaseException | None] = []

        def wait() -> None:
            try:
                waiter.execute("INSERT INTO t (v) VALUES ('late')")
            except BaseException as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        thread.join(10)  # a hang guard, well under the engine default's 30 s
        try:
            assert not thread.is_alive(), "the waiter ignored its timeout: still waiting"
        finally:
            holder.rollback()  # frees a stuck waiter so the thread ends either way
            thread.join(30)
        assert len(outcome) == 1
        assert isinstance(outcome[0], sqlite3.OperationalError)
        assert "database is locked" in str(outcome[0])
        assert not waiter._holding
        waiter.execute("INSERT INTO t (v) VALUES ('now')")
        waiter.commit()
        assert _rows(path) == ["now"]
        holder.close()
        waiter.close()

    def test_closing_mid_transaction_frees_the_gate(self, path):
        first = sqlite3.connect(path, factory=GatedConnection, timeout=1)
        first.execute("INSERT INTO t (v) VALUES ('lost')")
        first.close()  # rolled back by SQLite; the gate must not stay taken
        second = sqlite3.connect(path, factory=GatedConnection, timeout=1)
        second.execute("INSERT INTO t (v) VALUES ('kept')")
        second.commit()
        second.close()
        assert _rows(path) == ["kept"]
