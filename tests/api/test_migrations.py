"""The api Alembic chain builds exactly the tables the models describe (both databases)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import api.dispatch.models
import api.settlement.models  # noqa: F401 - the models compared
from api.db import VERSION_TABLE, is_api_table


def _only_api(obj, name, type_, reflected, compare_to):
    if type_ == "table":
        return is_api_table(name)
    table = getattr(obj, "table", None)
    return table is None or is_api_table(table.name)


def test_migrations_match_models(engine):
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "version_table": VERSION_TABLE,
                "include_object": _only_api,
                "compare_type": True,
                "compare_server_default": True,
            },
        )
        diffs = compare_metadata(context, SQLModel.metadata)
    assert diffs == []


def test_intent_hash_backfill(tmp_path):
    """0003 fills ``intent_hash`` for invoices created before it, as the router computes it."""
    import sqlalchemy as sa
    from alembic import command

    from api.db import alembic_config, make_engine, upgrade
    from wallet.signing import PaymentIntent, payment_intent_struct_hash

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    upgrade(url, revision="0002")
    merchant = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    token = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    payer = "0x" + "0" * 40
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO crm_merchant (id, name, created_at) VALUES (1, 'M', '2026-01-01')"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO api_merchant_account (id, merchant_id, chain_id, address, payout,"
                    " operator, next_invoice_number, created_at) VALUES (1, 1, 31337, :m, :m, :m,"
                    " 8, '2026-01-01')"
                ),
                {"m": merchant},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO api_invoice (id, merchant_id, account_id, number, order_id,"
                    " chain_id, token, amount, fee, payer, deadline, signature_r, signature_vs,"
                    " confirmations_required, state, status, paid_amount, refunded_amount,"
                    " metadata, created_at, expires_at) VALUES ('inv_1', 1, 1, 7, 'o1', 31337,"
                    " :t, '2500000', '25000', :p, 1900000000, '0x', '0x', 1, 'new', 'none', '0',"
                    " '0', '{}', '2026-01-01', '2026-01-01')"
                ),
                {"t": token, "p": payer},
            )
        command.upgrade(alembic_config(url), "head")
        with engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT intent_hash FROM api_invoice")).scalar_one()
    finally:
        engine.dispose()
    intent = PaymentIntent(
        merchant=merchant,
        token=token,
        amount=2_500_000,
        fee=25_000,
        invoice_id=7,
        payer=payer,
        deadline=1_900_000_000,
    )
    assert stored == "0x" + payment_intent_struct_hash(intent).hex()


def test_the_indexers_pending_query_reads_only_pending_payments(engine):
    """Each indexer step asks for the payments still waiting for depth; the partial index keeps
    that from reading every confirmed payment ever stored."""
    from sqlmodel import Session

    from api.settlement import repository

    seen: list[tuple[str, object]] = []
    with engine.connect() as conn:

        def capture(_conn, _cursor, statement, parameters, _context, _many):
            seen.append((statement, parameters))

        sa.event.listen(conn, "before_cursor_execute", capture)
        with Session(bind=conn) as session:
            assert repository.pending_payments(session, 31337, 1) == []
        sa.event.remove(conn, "before_cursor_execute", capture)
        ((statement, parameters),) = seen
        if conn.dialect.name == "sqlite":
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
        else:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # tiny test tables
            plan = conn.exec_driver_sql("EXPLAIN " + statement, parameters).fetchall()
        conn.rollback()
    assert "ix_api_payment_pending" in " ".join(str(step) for step in plan), plan


@pytest.mark.parametrize(
    ("query", "index"),
    [
        (lambda s, r: r.payment_keys(s, 31337, 100, 120), "ix_api_payment_chain_block"),
        (lambda s, r: r.payments_after(s, 31337, 1, 100), "ix_api_payment_chain_block"),
        (lambda s, r: r.refund_keys(s, 31337, 100, 120), "ix_api_refund_chain_block"),
    ],
    ids=["payment_keys", "payments_after", "refund_keys"],
)
def test_block_range_queries_read_only_their_range(engine, query, index):
    """A step's block range (and a reorg's "above the fork") is found by (chain, block): with
    ``block_number`` alone indexed SQLite read every payment of the chain to filter it."""
    from sqlmodel import Session

    from api.settlement import repository

    seen: list[tuple[str, object]] = []
    with engine.connect() as conn:

        def capture(_conn, _cursor, statement, parameters, _context, _many):
            seen.append((statement, parameters))

        sa.event.listen(conn, "before_cursor_execute", capture)
        with Session(bind=conn) as session:
            assert not query(session, repository)
        sa.event.remove(conn, "before_cursor_execute", capture)
        ((statement, parameters),) = seen
        if conn.dialect.name == "sqlite":
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
        else:
            _payments_on_other_blocks(conn)  # on empty tables any index looks as good
            plan = conn.exec_driver_sql("EXPLAIN " + statement, parameters).fetchall()
        conn.rollback()
    assert index in " ".join(str(step) for step in plan), plan


def _payments_on_other_blocks(conn) -> None:
    """5,000 payments and refunds of the chain below block 100 (the queries' blocks), with
    statistics (PG), so the planner weighs the indexes as it would on a live install."""
    address = "'0x" + "1" * 40 + "'"
    key = "'0x' || lpad(to_hex(g), 64, '0')"
    rows = "FROM generate_series(0, 4999) g"
    conn.exec_driver_sql(
        "INSERT INTO api_payment (merchant_address, invoice_number, chain_id, tx_hash,"
        " log_index, block_number, block_hash, payer, token, amount, fee, state, late, seen_at)"
        f" SELECT {address}, g, 31337, {key}, g, mod(g, 100), {key}, {address}, {address}, 1, 0,"
        f" 'confirmed', false, now() {rows}"
    )
    conn.exec_driver_sql(
        'INSERT INTO api_refund (chain_id, tx_hash, log_index, block_number, block_hash, "to",'
        " amount, credited, reorged, seen_at)"
        f" SELECT 31337, {key}, g, mod(g, 100), {key}, {address}, 1, true, false, now() {rows}"
    )
    conn.exec_driver_sql("ANALYZE api_payment")
    conn.exec_driver_sql("ANALYZE api_refund")


def test_0008_keeps_stored_responses_and_tasks_and_downgrades(tmp_path):
    """0008 adds ``api_idempotency_keys.contact_id`` (NULL on rows stored before it: they name
    no contact) and the phone tasks' contact index, and reverts cleanly (SQLite's batch mode
    rebuilds the table: the rows must survive both ways)."""
    from alembic import command

    from api.db import alembic_config, make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    upgrade(url, revision="0007")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO api_idempotency_keys (id, api_key_id, idempotency_key,"
                    " fingerprint, method, path, status, locked_at, created_at, expires_at,"
                    " response_status, response_body) VALUES ('idem_1', 'key_1', 'k', 'f',"
                    " 'POST', '/v1/contacts', 'completed', '2026-01-01', '2026-01-01',"
                    " '2026-01-02', 200, :body)"
                ),
                {"body": b'{"id": 1}'},
            )
        command.upgrade(alembic_config(url), "head")
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT contact_id, response_body FROM api_idempotency_keys")
            ).one()
            indexes = {
                name
                for (name,) in conn.execute(
                    sa.text("SELECT name FROM sqlite_master WHERE type = 'index'")
                )
            }
        assert (row.contact_id, bytes(row.response_body)) == (None, b'{"id": 1}')
        assert {"ix_api_idempotency_keys_contact_id", "ix_api_phone_task_contact"} <= indexes
        command.downgrade(alembic_config(url), "0007")
        with engine.connect() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("api_idempotency_keys")}
            kept = conn.execute(sa.text("SELECT count(*) FROM api_idempotency_keys")).scalar()
        assert "contact_id" not in columns
        assert kept == 1
    finally:
        engine.dispose()


def test_0009_stops_on_duplicate_accounts_and_changes_nothing(tmp_path):
    """0009's unique (merchant, chain) key: an install with two accounts for one merchant on
    one chain stops with both named, still at 0008; without them the key refuses a second."""
    from alembic import command

    from api.db import alembic_config, make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    upgrade(url, revision="0008")
    engine = make_engine(url)
    insert = sa.text(
        "INSERT INTO api_merchant_account (merchant_id, chain_id, address, payout, operator,"
        " next_invoice_number, created_at) VALUES (1, 31337, :a, :a, :a, 1, '2026-01-01')"
    )
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO crm_merchant (id, name, created_at) VALUES (1, 'M', '2026-01-01')"
                )
            )
            conn.execute(insert, {"a": "0x" + "11" * 20})
            conn.execute(insert, {"a": "0x" + "22" * 20})
        with pytest.raises(RuntimeError, match=r"merchant 1 on chain 31337 \(2 rows\)"):
            command.upgrade(alembic_config(url), "head")
        query = f"SELECT version_num FROM {VERSION_TABLE}"  # noqa: S608 - a constant
        with engine.connect() as conn:
            version = conn.execute(sa.text(query)).scalar()
        assert version == "0008"
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM api_merchant_account WHERE address LIKE '0x22%'"))
        command.upgrade(alembic_config(url), "head")
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(insert, {"a": "0x" + "33" * 20})
    finally:
        engine.dispose()


@pytest.mark.parametrize("table", ["api_payment", "api_refund"])
def test_0011_lets_a_rolled_back_log_come_back_once(tmp_path, table):
    """After 0011 a log whose row was rolled back can be stored again (one live row per key),
    and a second live row is still refused; rows stored before it survive the rebuild."""
    from api.db import make_engine, upgrade

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    upgrade(url, revision="0010")
    address = "0x" + "1" * 40
    if table == "api_payment":
        insert = sa.text(
            "INSERT INTO api_payment (merchant_address, invoice_number, chain_id, tx_hash,"
            " log_index, block_number, block_hash, payer, token, amount, fee, state, late,"
            " seen_at) VALUES (:a, 1, 31337, :h, 0, 5, :h, :a, :a, '1', '0', :state, 0,"
            " '2026-01-01')"
        )
        reorged, live = {"state": "reorged"}, {"state": "confirmed"}
    else:
        insert = sa.text(
            'INSERT INTO api_refund (chain_id, tx_hash, log_index, block_number, block_hash, "to",'
            " amount, credited, reorged, seen_at) VALUES (31337, :h, 0, 5, :h, :a, '1', 1,"
            " :reorged, '2026-01-01')"
        )
        reorged, live = {"reorged": 1}, {"reorged": 0}
    params = {"a": address, "h": "0x" + "ab" * 32}
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(insert, params | reorged)
        upgrade(url)
        with engine.begin() as conn:
            conn.execute(insert, params | live)
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(insert, params | live)
        with engine.connect() as conn:
            count = sa.select(sa.func.count()).select_from(sa.table(table))
            assert conn.execute(count).scalar_one() == 2
    finally:
        engine.dispose()


def test_a_rebuilt_table_that_rows_refer_to_downgrades_on_sqlite(tmp_path):
    """0012's downgrade rebuilds the endpoints table (batch mode: copy, drop, rename): with a
    delivery pointing at an endpoint, the drop failed on the foreign key and left
    ``_alembic_tmp_api_webhook_endpoints`` behind, so every retry failed too. The run turns
    foreign keys off and checks them before it commits."""
    from alembic import command

    from api.db import alembic_config, make_engine, session_factory, session_scope, upgrade
    from api.webhooks import service as webhooks

    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with session_scope(session_factory(engine)) as s:
            webhooks.create_endpoint(s, "m_1", "https://hooks.example/h", ["*"])
            webhooks.enqueue(s, "m_1", "invoice.settled", {"id": "inv_1"})
        command.downgrade(alembic_config(url), "0011")
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            columns = {c["name"] for c in sa.inspect(conn).get_columns("api_webhook_endpoints")}
            kept = conn.execute(sa.text("SELECT count(*) FROM api_webhook_deliveries")).scalar()
            broken = conn.execute(sa.text("PRAGMA foreign_key_check")).all()
        assert not {t for t in tables if t.startswith("_alembic_tmp")}
        assert "disabled_reason" not in columns
        assert (kept, broken) == (1, [])
        command.upgrade(alembic_config(url), "head")
    finally:
        engine.dispose()


def test_a_run_that_would_break_a_foreign_key_commits_nothing(tmp_path):
    """With foreign keys off for the run, SQLite would not stop a migration that orphans rows:
    the run checks them before its commit."""
    from alembic import command

    from api.db import alembic_config, make_engine, upgrade
    from crm.db import MigrationCheckError

    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    upgrade(url, revision="0011")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.exec_driver_sql(
                "INSERT INTO api_webhook_deliveries (id, endpoint_id, merchant_id, event_id,"
                " event_type, payload, status, attempt_count, next_attempt_at, created_at)"
                " VALUES ('whd_1', 'we_gone', 'm_1', 'evt_1', 'invoice.settled', '{}',"
                " 'pending', 0, '2026-01-01', '2026-01-01')"
            )
            conn.commit()
        with pytest.raises(MigrationCheckError):
            command.upgrade(alembic_config(url), "head")
        with engine.connect() as conn:
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version_api")).scalar()
        assert version == "0011"
    finally:
        engine.dispose()


@contextlib.contextmanager
def _api_database_at(kind: str, revision: str, tmp_path) -> Iterator[sa.Engine]:
    """A new SQLite or PostgreSQL database migrated to ``revision`` of the API chain."""
    import os

    from api.db import make_engine, upgrade
    from tests.support import migrated_pg_schema

    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
        upgrade(url, revision=revision)
        engine = make_engine(url)
        try:
            yield engine
        finally:
            engine.dispose()
        return
    with migrated_pg_schema(f"api_{revision}_{os.getpid()}", revision=revision) as engine:
        yield engine


_BOTH = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(params=_BOTH)
def at_0013(request: pytest.FixtureRequest, tmp_path):
    with _api_database_at(request.param, "0013", tmp_path) as engine:
        yield engine


@pytest.fixture(params=_BOTH)
def at_0014(request: pytest.FixtureRequest, tmp_path):
    with _api_database_at(request.param, "0014", tmp_path) as engine:
        yield engine


def test_0015_gives_each_stored_log_its_chains_only_cursor(at_0014):
    """Payments and refunds name the cursor that read them from 0015 on; stored ones get their
    chain's cursor when it has one, and stay unscoped (NULL) on a chain with two."""
    from alembic import command

    from api.db import alembic_config, upgrade

    engine = at_0014
    address, now = "0x" + "1" * 40, "2026-01-01T00:00:00+00:00"
    with engine.begin() as conn:
        for cursor_id, chain_id in ((1, 31337), (2, 5), (3, 5)):
            conn.execute(
                sa.text(
                    "INSERT INTO api_indexer_cursor (id, chain_id, router, last_block, updated_at)"
                    " VALUES (:i, :c, :r, 0, :t)"
                ),
                {"i": cursor_id, "c": chain_id, "r": f"0x{cursor_id:040x}", "t": now},
            )
        for chain_id in (31337, 5):
            log = {"c": chain_id, "h": f"0x{chain_id:064x}", "a": address, "t": now}
            conn.execute(
                sa.text(
                    "INSERT INTO api_payment (merchant_address, invoice_number, chain_id,"
                    " tx_hash, log_index, block_number, block_hash, payer, token, amount, fee,"
                    " state, late, seen_at) VALUES (:a, '1', :c, :h, 0, 5, :h, :a, :a, '1',"
                    " '0', 'pending', false, :t)"
                ),
                log,
            )
            conn.execute(
                sa.text(
                    "INSERT INTO api_refund (chain_id, tx_hash, log_index, block_number,"
                    ' block_hash, "to", amount, credited, reorged, seen_at) VALUES'
                    " (:c, :h, 1, 5, :h, :a, '1', true, false, :t)"
                ),
                log,
            )
    with engine.begin() as conn:
        upgrade(connection=conn)
    with engine.connect() as conn:
        for table in ("api_payment", "api_refund"):
            read = sa.select(sa.column("chain_id"), sa.column("cursor_id")).select_from(
                sa.table(table)
            )
            assert sorted(conn.execute(read).all()) == [(5, None), (31337, 1)]
    with engine.begin() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0014")
    with engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("api_payment")}
        assert "cursor_id" not in columns
        assert conn.execute(sa.text("SELECT count(*) FROM api_refund")).scalar() == 2


def test_0014_keeps_payments_and_takes_any_uint256_invoice_number(at_0013):
    """A payment's number beyond a BIGINT stopped the indexer; 0014 makes the column a uint256
    without losing a stored payment or the partial indexes of the rebuilt SQLite table, and
    its downgrade refuses to drop a number the old column cannot hold."""
    from alembic import command
    from sqlmodel import Session

    from api.db import alembic_config, upgrade
    from api.settlement.models import Payment

    engine = at_0013
    insert = sa.text(
        "INSERT INTO api_payment (merchant_address, invoice_number, chain_id, tx_hash,"
        " log_index, block_number, block_hash, payer, token, amount, fee, state, late,"
        " seen_at) VALUES (:a, :n, 31337, :h, 0, 5, :h, :a, :a, '1', '0', 'confirmed', false,"
        " '2026-01-01T00:00:00+00:00')"
    )
    address = "0x" + "1" * 40
    with engine.begin() as conn:
        conn.execute(insert, {"a": address, "n": 2**63 - 1, "h": "0x" + "ab" * 32})
    with engine.begin() as conn:
        upgrade(connection=conn)
    with engine.begin() as conn:
        conn.execute(insert, {"a": address, "n": str(2**255), "h": "0x" + "cd" * 32})
        with pytest.raises(sa.exc.IntegrityError), conn.begin_nested():  # still unique
            conn.execute(insert, {"a": address, "n": "1", "h": "0x" + "cd" * 32})
    with Session(engine) as session:
        numbers = sorted(p.invoice_number for p in session.exec(sa.select(Payment)).scalars())
    assert numbers == [2**63 - 1, 2**255]
    indexes = {i["name"] for i in sa.inspect(engine).get_indexes("api_payment")}
    assert {"uq_api_payment_live_log", "ix_api_payment_pending"} <= indexes

    def downgrade() -> None:
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "0013")

    with pytest.raises(RuntimeError, match="beyond a BIGINT"):
        downgrade()
    with engine.begin() as conn:
        conn.execute(
            sa.text("DELETE FROM api_payment WHERE block_hash = :h"), {"h": "0x" + "cd" * 32}
        )
    downgrade()
    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT invoice_number FROM api_payment")).scalar_one()
    assert int(kept) == 2**63 - 1
