"""Migration 0010: refunds gain their token, the router's running total and ``credited``."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from api.db import alembic_config, make_engine, upgrade


def test_refunds_indexed_before_stay_counted_and_it_downgrades(tmp_path):
    """A refund stored before 0010 had every amount counted: it keeps ``credited`` with an
    unknown (NULL) token and total; SQLite's batch mode rebuilds the table both ways."""
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    upgrade(url, revision="0009")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO api_refund (chain_id, tx_hash, log_index, block_number,"
                    " block_hash, \"to\", amount, reorged, seen_at) VALUES (31337, '0xaa', 0, 5,"
                    " '0xbb', '0x" + "11" * 20 + "', '2500000', 0, '2026-01-01')"
                )
            )
        command.upgrade(alembic_config(url), "0010")
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT token, total_refunded, credited, amount FROM api_refund")
            ).one()
        assert (row.token, row.total_refunded, bool(row.credited), row.amount) == (
            None,
            None,
            True,
            "2500000",
        )
        command.downgrade(alembic_config(url), "0009")
        with engine.connect() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("api_refund")}
            kept = conn.execute(sa.text("SELECT count(*) FROM api_refund")).scalar()
        assert not {"token", "total_refunded", "credited"} & columns
        assert kept == 1
    finally:
        engine.dispose()
