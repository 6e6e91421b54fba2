"""API benchmark: ``POST /v1/invoices`` over real HTTP against a minimal FastAPI + SQLModel insert
endpoint measured in the same run, on the same stack (uvicorn, database, client).

    .venv/bin/python scripts/bench_api.py [--quick] [--only sqlite,postgresql] [--profile DIR]

For each database (a SQLite file in a temp dir; PostgreSQL at ``FOLLOWPAY_BENCH_POSTGRES_URL``
in a throw-away schema ``bench_<pid>``) and each app (the real FollowPay app and the baseline):

* a uvicorn server (one worker, ``log_level=warning``, no access log) is started in a
  **subprocess** on a free 127.0.0.1 port;
* this process drives it with :mod:`loadgen` (50 HTTP/1.1 keep-alive connections, raw requests
  rendered from one template as they are sent; httpx's async client cost as much CPU per request
  as the server under test), every request with a unique ``order_id`` and ``Idempotency-Key``;
  any non-2xx answer, or none within 30 s, fails the run (latencies are the successes'):

  1. **saturation** (closed loop): each connection sends its next request as soon as the last
     answer arrived, up to ``N`` requests or ``T`` seconds -> throughput. Three rounds,
     alternating the two apps, each in a fresh server; each app's best round counts (on a shared
     two-core machine interference only ever slows a round down: the same code measured 3.1 and
     4.1 ms of server CPU per request in two back-to-back runs). Latency here is queueing
     (Little's law: mean = 50 / throughput), reported but not a target;
  2. **latency at a fixed load** (open loop, as wrk2 does): both apps are offered the same rate,
     half of the invoice endpoint's best saturation throughput, spread over the 50 connections;
     latency counts from each request's scheduled send time, so a stall is charged for every
     request it delays (no coordinated omission) -> p50/p99, median of five alternating rounds.
     A probe times ``fsync`` on the database's disk meanwhile: every durable commit waits for
     one, so its p99/max is the floor under both apps' p99.

``--profile DIR`` runs the invoice server under cProfile (every thread; merged) and writes
``DIR/<db>.pstats`` plus a top-30 text summary.

``run()`` returns rows ``{"name", "value", "baseline", "ratio", "unit", "target"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import itertools
import json
import os
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import loadgen  # noqa: E402

PG_URL = os.environ.get(
    "FOLLOWPAY_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
CHAIN_ID = 31337
ROUTER = "0x" + "11" * 20
TOKEN = "0x" + "22" * 20
CONCURRENCY = 50
P99_TARGET_MS = 25.0
RATIO_TARGET = 0.5
# Both servers get a fixed pool larger than the number of in-flight requests (each holds one
# connection for its transaction), so neither waits on the pool. 0 = SQLAlchemy's default pool.
POOL_SIZE = CONCURRENCY + 10
# anyio's default threadpool (40 tokens) is smaller than the number of in-flight requests; both
# servers get more tokens than that, so a request never queues for a thread (``--threads 0``
# keeps anyio's default).
THREADS = 2 * CONCURRENCY
THREADS_ARG = [THREADS]


# --- server side (runs in the subprocess) ------------------------------------------------------


def _engine(url: str, schema: str | None, pool_size: int | None = None) -> Any:
    """``api.db.make_engine`` (what the app's lifespan uses); ``pool_size`` overrides SQLAlchemy's
    default QueuePool (5 + 10 overflow) with a fixed pool of that size."""
    from api.db import make_engine

    kwargs: dict[str, Any] = {}
    if schema:
        kwargs["connect_args"] = {"options": f"-csearch_path={schema}"}
    if pool_size:
        kwargs.update(pool_size=pool_size, max_overflow=0)
    return make_engine(url, **kwargs)


def _baseline_app(engine: Any) -> Any:
    """The minimal reference: one FastAPI route, a pydantic body, one SQLModel insert + commit
    (defined in the generated module so FastAPI resolves its annotations at runtime)."""
    from scripts_bench_rows import baseline_app  # type: ignore[import-not-found]

    return baseline_app(engine)


def _invoice_app(engine: Any, home: str) -> Any:
    from api.app import create_app
    from api.deps import ApiConfig, ChainInfo
    from api.operators import OperatorKeys
    from api.settings import get_settings
    from crm import KeyRing
    from wallet.chain import dev_accounts
    from wallet.secrets import PrivateKey
    from wallet.signing import Signer

    operator = dev_accounts()[2]
    return create_app(
        get_settings(home=Path(home)),
        engine=engine,
        config=ApiConfig(rate_limit_per_second=1_000_000, rate_limit_burst=1_000_000, docs=False),
        keyring=KeyRing(b"\x01" * 32),
        signers=OperatorKeys({operator.address: Signer(PrivateKey(bytes(operator.key)))}),
        chain_info=ChainInfo(chain_id=CHAIN_ID, router=ROUTER, token=TOKEN, decimals=6),
    )


class _ThreadProfiles:
    """cProfile in every thread (the sync routes run in the threadpool), merged at the end."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def _hook(self, *_: Any) -> None:
        sys.setprofile(None)
        profile = cProfile.Profile()
        with self._lock:
            self.profiles.append(profile)
        profile.enable()

    def start(self) -> None:
        threading.setprofile(self._hook)
        self._hook()

    def dump(self, path: Path) -> None:
        threading.setprofile(None)  # type: ignore[arg-type]
        stats: pstats.Stats | None = None
        for profile in self.profiles:
            with contextlib.suppress(Exception):
                profile.disable()
            profile.create_stats()
            if not getattr(profile, "stats", None):
                continue
            if stats is None:
                stats = pstats.Stats(profile)
            else:
                stats.add(profile)
        if stats is None:
            return
        stats.dump_stats(str(path))
        with path.with_suffix(".txt").open("w") as fh:
            stats.stream = fh  # type: ignore[attr-defined]
            stats.sort_stats("cumulative").print_stats(40)
            stats.sort_stats("tottime").print_stats(30)


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    engine = _engine(args.url, args.schema, args.pool_size)
    app = _baseline_app(engine) if args.serve == "baseline" else _invoice_app(engine, args.home)
    profiler = _ThreadProfiles() if args.profile_out else None
    inner = app

    async def app_with_threads(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan" and args.threads:
            import anyio.to_thread

            anyio.to_thread.current_default_thread_limiter().total_tokens = args.threads
        await inner(scope, receive, send)

    config = uvicorn.Config(
        app_with_threads,
        host="127.0.0.1",
        port=args.port,
        workers=1,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    from api.runtime import freeze_startup_heap

    freeze_startup_heap()  # as `followpay serve` does, for both apps
    if profiler is not None:
        profiler.start()
    try:
        server.run()  # uvicorn re-raises the SIGINT it was stopped with as KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    finally:
        if profiler is not None:
            profiler.dump(Path(args.profile_out))
        engine.dispose()


# --- the baseline table (importable by the server subprocess under a stable module name) -------

_ROWS_MODULE = """
from sqlmodel import Field, SQLModel


class BenchRowIn(SQLModel):
    order_id: str = Field(min_length=1, max_length=200)
    amount: str = Field(min_length=1, max_length=78)


class BenchRow(SQLModel, table=True):
    __tablename__ = "bench_baseline_rows"
    id: int | None = Field(default=None, primary_key=True)
    order_id: str = Field(max_length=200)
    amount: str = Field(max_length=78)


def baseline_app(engine):
    from fastapi import FastAPI
    from sqlmodel import Session

    app = FastAPI()

    @app.get("/v1/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/rows")
    def create_row(body: BenchRowIn) -> BenchRow:
        with Session(engine, expire_on_commit=False) as session:
            row = BenchRow(order_id=body.order_id, amount=body.amount)
            session.add(row)
            session.commit()
            return row

    return app
"""


def _rows_module_dir(tmp: Path) -> Path:
    d = tmp / "pymod"
    d.mkdir(exist_ok=True)
    (d / "scripts_bench_rows.py").write_text(_ROWS_MODULE)
    return d


# --- databases ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _database(kind: str, tmp: Path) -> Iterator[tuple[str, str | None]]:
    """Yield ``(url, schema)`` with the migrated schema; PostgreSQL schema dropped afterwards."""
    import sqlalchemy as sa

    from api.db import make_engine, upgrade

    if kind == "sqlite":
        url = f"sqlite:///{tmp / 'api.sqlite3'}"
        upgrade(url)
        yield url, None
        return
    schema = f"bench_{os.getpid()}"
    admin = make_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        engine = _engine(PG_URL, schema)
        with engine.begin() as conn:
            upgrade(connection=conn)
        engine.dispose()
        yield PG_URL, schema
    finally:
        with contextlib.suppress(Exception), admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def _prepare(url: str, schema: str | None, home: Path, rows_dir: Path) -> str:
    """A merchant, its merchant key and its router account; the baseline table. -> the key."""
    from fastapi.testclient import TestClient
    from sqlmodel import SQLModel

    from api.db import session_factory, session_scope
    from api.keys.service import create_key
    from wallet.chain import dev_accounts

    sys.path.insert(0, str(rows_dir))
    from scripts_bench_rows import BenchRow

    engine = _engine(url, schema)
    try:
        SQLModel.metadata.create_all(engine, tables=[BenchRow.__table__])  # type: ignore[attr-defined]
        app = _invoice_app(engine, str(home))
        with session_scope(session_factory(engine)) as session:
            _, admin = create_key(session, None, "admin", False)
        with TestClient(app) as client:
            r = client.post(
                "/v1/merchants",
                json={"name": "Bench"},
                headers={"Authorization": f"Bearer {admin}"},
            )
            r.raise_for_status()
            mid = r.json()["id"]
            with session_scope(session_factory(engine)) as session:
                _, key = create_key(session, mid, "merchant", False)
            accounts = dev_accounts()
            r = client.post(
                f"/v1/merchants/{mid}/account",
                json={
                    "address": "0x" + os.urandom(20).hex(),
                    "payout": accounts[1].address,
                    "operator": accounts[2].address,
                },
                headers={"Authorization": f"Bearer {key}"},
            )
            r.raise_for_status()
            assert r.json()["signer_available"], r.text
            # One invoice through the in-process app: fails loudly before any load is applied.
            r = client.post(
                "/v1/invoices",
                json={"amount": "2500000", "order_id": "o_setup"},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert r.status_code == 200, r.text
        return key
    finally:
        engine.dispose()


# --- the server subprocess ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _server(
    app: str,
    url: str,
    schema: str | None,
    home: Path,
    rows_dir: Path,
    profile_out: Path | None = None,
    pool_size: int = POOL_SIZE,
) -> Iterator[str]:
    import httpx

    port = _free_port()
    cmd = [sys.executable, __file__, "--serve", app, "--url", url, "--home", str(home)]
    cmd += ["--port", str(port), "--pool-size", str(pool_size), "--threads", str(THREADS_ARG[0])]
    if schema:
        cmd += ["--schema", schema]
    if profile_out is not None:
        cmd += ["--profile-out", str(profile_out)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(rows_dir), str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{app} server exited with {proc.returncode}")
            try:
                if httpx.get(base + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{app} server did not start")
            time.sleep(0.05)
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- the load generator ------------------------------------------------------------------------


def _requests(path: str, key: str) -> loadgen.RequestFactory:
    """Request bytes with a unique order id and Idempotency-Key each (same body for both apps)."""
    run_id = uuid.uuid4().hex[:8]
    counter = itertools.count()

    def make(_: int) -> bytes:
        n = next(counter)
        body = json.dumps({"amount": "2500000", "order_id": f"o_{run_id}_{n}"}).encode()
        headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Idempotency-Key": uuid.uuid4().hex,
        }
        return loadgen.render("POST", path, "127.0.0.1", headers, body)

    return make


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def _summary(result: loadgen.LoadResult) -> dict[str, Any]:
    return {
        "requests": len(result.statuses),
        "errors": result.errors,
        "status": sorted(set(result.statuses)),
        "seconds": result.seconds,
        "rps": result.rps,
        "p50": result.percentile_ms(0.50),
        "p99": result.percentile_ms(0.99),
    }


def _saturate(base: str, path: str, key: str, warmup: int, total: int, seconds: float) -> Any:
    make = _requests(path, key)
    port = _port(base)
    warm = asyncio.run(
        loadgen.closed_loop(
            "127.0.0.1", port, make, connections=CONCURRENCY, total=warmup, seconds=60
        )
    )
    result = asyncio.run(
        loadgen.closed_loop(
            "127.0.0.1", port, make, connections=CONCURRENCY, total=total, seconds=seconds
        )
    )
    out = _summary(result)
    out["errors"] += warm.errors
    return out


def _offer(base: str, path: str, key: str, rate: float, seconds: float) -> dict[str, Any]:
    result = asyncio.run(
        loadgen.open_loop(
            "127.0.0.1",
            _port(base),
            _requests(path, key),
            connections=CONCURRENCY,
            rate=rate,
            seconds=seconds,
        )
    )
    return _summary(result)


def _row(
    name: str, value: float, baseline: float, unit: str, target: str, note: str = ""
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": name,
        "value": round(value, 2 if unit == "ms" else 1),
        "baseline": round(baseline, 2 if unit == "ms" else 1),
        "ratio": round(value / baseline, 3) if baseline else 0.0,
        "unit": unit,
        "target": target,
    }
    if note:
        row["note"] = note
    return row


class _FsyncProbe:
    """Times ``write`` + ``fsync`` of a small file on the database's disk every 50 ms while the
    latency runs go: the floor that any durable commit sits on (reported, not a target)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "fsync-probe.dat"
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while not self._stop.wait(0.05):
                os.write(fd, b"x" * 512)
                started = time.perf_counter()
                os.fsync(fd)
                self.samples.append(time.perf_counter() - started)
        finally:
            os.close(fd)

    def __enter__(self) -> _FsyncProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def percentile_ms(self, p: float) -> float:
        ordered = sorted(self.samples)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))] * 1000


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def bench_database(
    kind: str,
    quick: bool,
    profile_dir: Path | None = None,
    verbose: bool = True,
    pool_size: int = POOL_SIZE,
    rounds: int = 3,
    fixed_rounds: int = 5,
) -> list[dict[str, Any]]:
    """Alternating rounds per measurement (baseline, invoices, baseline, …), each in a fresh
    server: throughput is the best of ``rounds`` rounds of each app (interference on a shared
    machine only ever slows a round down), p99 at the fixed load the median of
    ``fixed_rounds`` rounds (a host stall of ~0.1 s lifts one round's p99 past 25 ms; five
    rounds keep one or two such rounds from deciding the figure)."""
    total, seconds, warmup, offered = (600, 10.0, 100, 5.0) if quick else (3_000, 30.0, 300, 15.0)
    apps = (("baseline", "/v1/rows"), ("invoices", "/v1/invoices"))
    with tempfile.TemporaryDirectory(prefix="bench_api_") as tmpname:
        tmp = Path(tmpname)
        home = tmp / "home"
        home.mkdir()
        rows_dir = _rows_module_dir(tmp)
        with _database(kind, tmp) as (url, schema):
            key = _prepare(url, schema, home, rows_dir)
            saturated: dict[str, list[dict[str, Any]]] = {app: [] for app, _ in apps}
            for _ in range(rounds):
                for app, path in apps:
                    with _server(app, url, schema, home, rows_dir, None, pool_size) as base:
                        run = _saturate(base, path, key, warmup, total, seconds)
                    saturated[app].append(run)
                    if verbose:
                        print(f"  {kind} {app} saturated: {json.dumps(run)}", flush=True)
            best = {app: max(runs, key=lambda r: r["rps"]) for app, runs in saturated.items()}
            rate = round(0.5 * best["invoices"]["rps"], 1)
            fixed: dict[str, list[dict[str, Any]]] = {app: [] for app, _ in apps}
            with _FsyncProbe(tmp) as probe:
                for _ in range(fixed_rounds):
                    for app, path in apps:
                        with _server(app, url, schema, home, rows_dir, None, pool_size) as base:
                            _saturate(base, path, key, warmup, 0, 0.0)  # warm-up only
                            run = _offer(base, path, key, rate, offered)
                        fixed[app].append(run)
                        if verbose:
                            print(f"  {kind} {app} at {rate} req/s: {json.dumps(run)}", flush=True)
            if profile_dir is not None:
                profile_dir.mkdir(parents=True, exist_ok=True)
                out = profile_dir / f"{kind}.pstats"
                with _server("invoices", url, schema, home, rows_dir, out, pool_size) as base:
                    _saturate(base, "/v1/invoices", key, warmup, total, seconds)
                if verbose:
                    print(f"  profile: {out} (+ {out.with_suffix('.txt')})", flush=True)

    def runs(app: str, field: str, data: dict[str, list[dict[str, Any]]]) -> str:
        return ", ".join(f"{r[field]:.0f}" for r in data[app])

    errors = sum(r["errors"] for data in (saturated, fixed) for rs in data.values() for r in rs)
    if errors:  # the latencies are the successes': failures would flatter the p99
        raise RuntimeError(f"{errors} requests got no 2xx answer; no figure is kept")
    p99 = {app: _median([r["p99"] for r in fixed[app]]) for app, _ in apps}
    p50 = {app: _median([r["p50"] for r in fixed[app]]) for app, _ in apps}
    note = (
        f"best of {rounds} alternating rounds of {total} req; req/s: ours "
        f"{runs('invoices', 'rps', saturated)}, baseline {runs('baseline', 'rps', saturated)}; "
        f"errors {errors}"
    )
    at = (
        f"median of {fixed_rounds} rounds; {CONCURRENCY} connections offered {rate} req/s "
        f"(half the invoice saturation) for {offered:g} s each; p99 ms: ours "
        f"{runs('invoices', 'p99', fixed)}, baseline {runs('baseline', 'p99', fixed)}"
    )
    return [
        _row(
            f"{kind}: POST /v1/invoices throughput (saturation)",
            best["invoices"]["rps"],
            best["baseline"]["rps"],
            "req/s",
            f"ratio >= {RATIO_TARGET}",
            note,
        ),
        _row(
            f"{kind}: POST /v1/invoices p99 at saturation",
            best["invoices"]["p99"],
            best["baseline"]["p99"],
            "ms",
            "report",
        ),
        _row(
            f"{kind}: POST /v1/invoices p50 at fixed load",
            p50["invoices"],
            p50["baseline"],
            "ms",
            "report",
        ),
        _row(
            f"{kind}: POST /v1/invoices p99 at fixed load",
            p99["invoices"],
            p99["baseline"],
            "ms",
            f"value <= {P99_TARGET_MS:g} ms",
            at,
        ),
        {
            "name": f"{kind}: disk fsync during the fixed-load rounds (p99 / max)",
            "value": round(probe.percentile_ms(0.99), 1),
            "baseline": round(probe.percentile_ms(1.0), 1),
            "ratio": "",
            "unit": "ms",
            "target": "report",
            "note": f"{len(probe.samples)} samples, one every 50 ms, on the database's disk; "
            "every commit waits for one",
        },
    ]


def _pg_available() -> bool:
    import sqlalchemy as sa

    from api.db import make_engine

    engine = make_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def run(
    quick: bool = False,
    only: tuple[str, ...] = ("sqlite", "postgresql"),
    profile_dir: Path | None = None,
    pool_size: int = POOL_SIZE,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for kind in only:
        if kind == "postgresql" and not _pg_available():
            print(f"PostgreSQL unreachable at {PG_URL}: skipped", flush=True)
            continue
        rows += bench_database(kind, quick, profile_dir, pool_size=pool_size)
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


def _table(rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def _verdict(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in rows:
        if row["target"].startswith("ratio"):
            ok = row["ratio"] >= RATIO_TARGET
        elif row["target"].startswith("value"):
            ok = row["value"] <= P99_TARGET_MS
        else:
            continue
        out.append(f"{row['name']}: {row['target']} -> {'met' if ok else 'MISSED'}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="600 requests / 10 s per run")
    parser.add_argument("--only", default="sqlite,postgresql", help="comma-separated databases")
    parser.add_argument("--profile", default=None, help="also profile the invoice server here")
    # internal: the server subprocess
    parser.add_argument("--serve", choices=("baseline", "invoices"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--schema", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--threads", type=int, default=THREADS, help="server threadpool (0: anyio default 40)"
    )
    parser.add_argument(
        "--pool-size", type=int, default=POOL_SIZE, help="server pool (0: SQLAlchemy default)"
    )
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    THREADS_ARG[0] = args.threads
    only = tuple(k.strip() for k in args.only.split(",") if k.strip())
    print(
        f"machine: {os.cpu_count()} cores shared by the uvicorn server (1 worker, subprocess) "
        f"and the loadgen client ({CONCURRENCY} keep-alive connections, one asyncio task each); "
        f"server pool: {args.pool_size or 'SQLAlchemy default 5+10'}, "
        f"threadpool: {args.threads or 'anyio default 40'}",
        flush=True,
    )
    profile = Path(args.profile) if args.profile else None
    rows = run(args.quick, only, profile, args.pool_size)
    print(_table(rows))
    for line in _verdict(rows):
        print(line)


if __name__ == "__main__":
    main()
