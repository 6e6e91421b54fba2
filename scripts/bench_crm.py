"""CRM query benchmark on PostgreSQL (not a test: it reports figures).

Bulk-loads (COPY) 100k contacts, 1M follow-ups and 200k feedback rows (x scale; tickets are the
negative share of feedback) into a throw-away schema, ANALYZEs, then times the repository
functions behind the two hot paths:

* ``support_queue``: open tickets of one (large) merchant by SLA due time, first page of 50,
  through ``crm.tickets.repository.queue_page`` (ORM objects included);
* ``support_queue_pages``: the same, walking every page of that queue in turn (``starting_after``
  keyset cursors), so one cached page does not stand for all of them; floor: a middle page;
* ``consent_lookup``: "may I contact X about P on C?" through
  ``crm.consent.repository.get_state`` (one primary-key lookup);
* ``consent_append_3k``: ``crm.consent.service.record`` (one committed append) on a contact whose
  ledger already holds 3,000 entries; its floor is the median append to a new contact's ledger
  in the same run, so the ratio shows whether an append's cost grows with the ledger.

Each reports p50/p99 over >= 500 runs and the server-side ``EXPLAIN ANALYZE`` execution time of
the same SQL as the floor; ``ratio`` = p99 / floor. A ``SELECT 1`` round trip in the same process
is reported as the machine's baseline. The schema is dropped at the end.

    python scripts/bench_crm.py --scale 0.1
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crm import ContactCreate, KeyRing, SystemClock, contacts
from crm.consent import repository as consent_repo
from crm.consent import service as consent_service
from crm.db import make_engine, session_scope, upgrade
from crm.tickets import repository as tickets_repo

__all__ = ["run"]

DEFAULT_URL = os.environ.get(
    "FOLLOWPAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MERCHANTS = 100
BIG_MERCHANT = 1  # gets ~10 % of all rows: the adversarial one we query
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CHUNK = 50_000
LONG_LEDGER = 3_000


def _merchant(i: int) -> int:
    return BIG_MERCHANT if i % 10 == 0 else 2 + i % (MERCHANTS - 1)


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S+00")


def _copy(raw: Any, table: str, columns: str, rows: Iterator[str]) -> None:
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        buf = io.StringIO()
        for n, line in enumerate(rows, start=1):
            buf.write(line)
            if n % CHUNK == 0:
                copy.write(buf.getvalue())
                buf = io.StringIO()
        copy.write(buf.getvalue())


def _load(engine: sa.Engine, scale: float) -> dict[str, int]:
    n_contacts = max(100, int(100_000 * scale))
    n_followups = max(1_000, int(1_000_000 * scale))
    n_feedback = min(n_followups, max(200, int(200_000 * scale)))
    rnd = random.Random(42)
    now = _ts(T0)
    pooled = engine.raw_connection()
    try:
        raw = pooled.driver_connection
        assert raw is not None
        _copy(
            raw,
            "crm_merchant",
            "id, name, created_at",
            (f"{m}\tmerchant {m}\t{now}\n" for m in range(1, MERCHANTS + 1)),
        )
        _copy(
            raw,
            "crm_contact",
            "id, merchant_id, time_zone, personalised, email_index, created_at, updated_at",
            (
                f"{i}\t{_merchant(i)}\tEurope/London\tt\t{i:064x}\t{now}\t{now}\n"
                for i in range(1, n_contacts + 1)
            ),
        )
        # two consent purposes per contact: ledger entry + projection row
        _copy(
            raw,
            "crm_consent_event",
            "id, merchant_id, contact_id, seq, purpose, channel, action, legal_basis, "
            "policy_version, source, actor, occurred_at, prev_hash, hash",
            (
                f"{2 * i - 1 + k}\t{_merchant(i)}\t{i}\t{k + 1}\t{p}\temail\tgrant\tconsent\t1\t"
                f"bench\tbench\t{now}\t{'0' * 64}\t{'f' * 64}\n"
                for i in range(1, n_contacts + 1)
                for k, p in enumerate(("service_followup", "marketing"))
            ),
        )
        _copy(
            raw,
            "crm_consent_state",
            "contact_id, purpose, channel, merchant_id, state, event_id, updated_at",
            (
                f"{i}\t{p}\temail\t{_merchant(i)}\t{'granted' if (i + k) % 3 else 'withdrawn'}"
                f"\t{2 * i - 1 + k}\t{now}\n"
                for i in range(1, n_contacts + 1)
                for k, p in enumerate(("service_followup", "marketing"))
            ),
        )
        states = ["sent"] * 6 + ["responded"] * 2 + ["suppressed", "expired"]

        def followups() -> Iterator[str]:
            for i in range(1, n_followups + 1):
                c = 1 + (i * 7919) % n_contacts
                due = T0 + timedelta(minutes=i % 500_000)
                state = "responded" if i <= n_feedback else states[i % len(states)]
                yield (
                    f"{i}\t{_merchant(c)}\t{c}\tpayment_settled\tservice_followup\tpay-{i}\t"
                    f'inv-{i}\temail\t["email"]\t{state}\t{_ts(due)}\t'
                    f"{_ts(due + timedelta(days=28))}\t1\t{now}\t{now}\n"
                )

        _copy(
            raw,
            "crm_followup",
            "id, merchant_id, contact_id, kind, purpose, payment_ref, invoice_ref, channel, "
            "channels, state, due_at, expires_at, attempts, created_at, updated_at",
            followups(),
        )
        negative: list[tuple[int, int, int]] = []

        def feedback() -> Iterator[str]:
            for i in range(1, n_feedback + 1):
                c = 1 + (i * 7919) % n_contacts
                rating = rnd.choice((1, 2, 3, 4, 4, 5, 5, 5, 5, 5))
                if rating <= 2:
                    negative.append((i, c, _merchant(c)))
                yield (
                    f"{i}\t{_merchant(c)}\t{i}\t{c}\t{rating}\t{rnd.randint(0, 10)}\t[]\t"
                    f"{now}\t{now}\t{now}\n"
                )

        _copy(
            raw,
            "crm_feedback",
            "id, merchant_id, followup_id, contact_id, rating, nps, tags, submitted_at, "
            "created_at, updated_at",
            feedback(),
        )
        ticket_states = ["open", "assigned", "responded", "resolved", "resolved", "resolved"]

        def tickets() -> Iterator[str]:
            for n, (fid, c, m) in enumerate(negative, start=1):
                opened = T0 + timedelta(seconds=rnd.randint(0, 90 * 86_400))
                due = opened + timedelta(hours=24)
                yield (
                    f"{n}\t{m}\t{fid}\t{fid}\t{c}\t{ticket_states[n % len(ticket_states)]}\t"
                    f"[]\t{_ts(opened)}\t{_ts(due)}\n"
                )

        _copy(
            raw,
            "crm_ticket",
            "id, merchant_id, feedback_id, followup_id, contact_id, state, root_cause_tags, "
            "opened_at, due_at",
            tickets(),
        )
        with raw.cursor() as cur:  # COPY set the ids: move the sequences past them
            for table in ("crm_merchant", "crm_contact", "crm_consent_event", "crm_followup"):
                move = "SELECT setval(pg_get_serial_sequence('{0}', 'id'), max(id)) FROM {0}"
                cur.execute(move.format(table))  # table names: the constants above
        raw.commit()
        with raw.cursor() as cur:
            raw.autocommit = True
            cur.execute("ANALYZE")
            raw.autocommit = False
    finally:
        pooled.close()
    return {
        "contacts": n_contacts,
        "followups": n_followups,
        "feedback": n_feedback,
        "tickets": len(negative),
    }


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _time(session: Session, runs: int, fn: Callable[[int], object]) -> list[float]:
    for i in range(20):  # warm-up: plans cached, pages in memory
        fn(i)
        session.expunge_all()
    out = []
    for i in range(runs):
        start = time.perf_counter_ns()
        fn(i)
        out.append((time.perf_counter_ns() - start) / 1e6)
        session.expunge_all()
    return out


def _floor(session: Session, stmt: Any, repeat: int = 25) -> float:
    sql = str(stmt.compile(session.get_bind(), compile_kwargs={"literal_binds": True}))
    times = []
    for _ in range(repeat):
        plan = session.execute(sa.text(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}")).scalar_one()
        plan = json.loads(plan) if isinstance(plan, str) else plan
        times.append(float(plan[0]["Execution Time"]))
    return statistics.median(times)


def _row(name: str, samples: list[float], floor: float | None) -> dict[str, Any]:
    p99 = _percentile(samples, 0.99)
    return {
        "name": name,
        "runs": len(samples),
        "p50_ms": round(_percentile(samples, 0.50), 3),
        "p99_ms": round(p99, 3),
        "floor_ms": None if floor is None else round(floor, 3),
        "ratio": None if not floor else round(p99 / floor, 1),
    }


def _page_cursors(
    session: Session, merchant_id: int, limit: int
) -> list[tuple[datetime, int] | None]:
    """The ``starting_after`` of every page of the merchant's open queue, first page first."""
    cursors: list[tuple[datetime, int] | None] = [None]
    while page := tickets_repo.queue_page(session, merchant_id, limit, cursors[-1]):
        if len(page) < limit:
            break
        last = page[-1]
        assert last.id is not None
        cursors.append((last.due_at, last.id))
    session.expunge_all()
    return cursors


def _appends(engine: sa.Engine, runs: int) -> tuple[list[float], list[float]]:
    """Committed consent appends (ms): to a ledger of :data:`LONG_LEDGER` entries and up, and
    to a new contact's (its first few entries), ``runs`` each, alternating."""
    keyring, clock = KeyRing.generate(), SystemClock()

    def contact() -> int:
        with session_scope(engine) as s:
            made = contacts.create_contact(
                s, BIG_MERCHANT, ContactCreate(time_zone="UTC"), keyring, clock
            )
            assert made.id is not None
            return made.id

    def append(contact_id: int, i: int) -> float:
        start = time.perf_counter_ns()
        with session_scope(engine) as s:
            consent_service.record(
                s,
                BIG_MERCHANT,
                contact_id,
                purpose="marketing",
                channel="email",
                action="withdraw" if i % 2 else "grant",
                actor="bench",
                clock=clock,
                keyring=keyring,
            )
        return (time.perf_counter_ns() - start) / 1e6

    long_id = contact()
    for i in range(LONG_LEDGER):
        append(long_id, i)
    long_times, fresh_times = [], []
    fresh_id = contact()
    for i in range(runs):
        if i % 4 == 0:  # a new contact every 4 appends: its ledger stays at 1-4 entries
            fresh_id = contact()
        long_times.append(append(long_id, i))
        fresh_times.append(append(fresh_id, i))
    return long_times, fresh_times


def run(pg_url: str, scale: float = 1.0, runs: int = 500) -> list[dict[str, Any]]:
    """Load, measure and clean up; returns one dict per measured query."""
    runs = max(500, runs)
    schema = f"crm_bench_{os.getpid()}"
    admin = make_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = sa.make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
    engine = make_engine(url)
    try:
        upgrade(url)
        t = time.perf_counter()
        counts = _load(engine, scale)
        load_s = time.perf_counter() - t
        rnd = random.Random(7)
        contact_ids = [rnd.randint(1, counts["contacts"]) for _ in range(runs + 20)]
        with Session(engine) as session:
            baseline = _time(session, runs, lambda _i: session.execute(sa.text("SELECT 1")))
            queue = _time(
                session, runs, lambda _i: tickets_repo.queue_page(session, BIG_MERCHANT, 50)
            )
            consent = _time(
                session,
                runs,
                lambda i: consent_repo.get_state(
                    session, contact_ids[i], "service_followup", "email"
                ),
            )
            cursors = _page_cursors(session, BIG_MERCHANT, 50)
            pages = _time(
                session,
                runs,
                lambda i: tickets_repo.queue_page(
                    session, BIG_MERCHANT, 50, cursors[i % len(cursors)]
                ),
            )
            queue_floor = _floor(session, tickets_repo.queue_sql(BIG_MERCHANT, 50))
            middle = cursors[len(cursors) // 2]
            pages_floor = _floor(session, tickets_repo.queue_sql(BIG_MERCHANT, 50, middle))
            consent_stmt = (
                sa.select(sa.column("state"))
                .select_from(sa.table("crm_consent_state"))
                .where(
                    sa.column("contact_id") == contact_ids[0],
                    sa.column("purpose") == "service_followup",
                    sa.column("channel") == "email",
                )
            )
            consent_floor = _floor(session, consent_stmt)
            open_tickets = session.execute(
                sa.text(
                    "SELECT count(*) FROM crm_ticket WHERE merchant_id = :m"
                    " AND state IN ('open', 'assigned')"
                ),
                {"m": BIG_MERCHANT},
            ).scalar_one()
        long_appends, fresh_appends = _appends(engine, runs)
        rows = [
            _row("baseline_select_1", baseline, None),
            _row("support_queue", queue, queue_floor),
            _row("support_queue_pages", pages, pages_floor),
            _row("consent_lookup", consent, consent_floor),
            _row("consent_append_3k", long_appends, statistics.median(fresh_appends)),
        ]
        meta = {
            **counts,
            "big_merchant_open_tickets": int(open_tickets),
            "load_s": round(load_s, 1),
        }
        for r in rows:
            r["dataset"] = meta
        return rows
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default=DEFAULT_URL, help="PostgreSQL SQLAlchemy URL")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args(argv)
    rows = run(args.url, args.scale, args.runs)
    meta = rows[0]["dataset"]
    print(f"dataset: {meta}")
    print(f"{'name':<20}{'runs':>6}{'p50 ms':>10}{'p99 ms':>10}{'floor ms':>10}{'p99/floor':>11}")
    for r in rows:
        floor = "-" if r["floor_ms"] is None else f"{r['floor_ms']:.3f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.1f}"
        print(
            f"{r['name']:<20}{r['runs']:>6}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}"
            f"{floor:>10}{ratio:>11}"
        )
    worst = max(r["p99_ms"] for r in rows if not r["name"].startswith("consent_append"))
    print(f"target p99 <= 20 ms: {'met' if worst <= 20 else 'MISSED'} (worst p99 {worst:.3f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
