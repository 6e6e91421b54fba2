"""SIGINT/SIGTERM stop the long-running loops between steps, never in the middle of one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session, select

import api.dispatch.models  # noqa: F401
import crm.models  # noqa: F401
from api.db import upgrade
from api.runtime import stop_on_signals
from crm import SystemClock, make_engine
from crm.followups.models import FollowUp, FollowUpEvent
from tests.dispatch.test_worker import MASTER_KEY, three_due

ROOT = Path(__file__).resolve().parents[2]


def test_a_signal_sets_the_event_and_the_previous_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    stop = threading.Event()
    with stop_on_signals(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stop.is_set()
        # the first signal re-armed the old handlers: a second one stops a stuck process
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def _daytime_zone() -> str:
    """A fixed-offset zone where it is between 10:00 and 18:00 now (inside any send window)."""
    for offset in range(-12, 13):
        name = f"Etc/GMT{offset:+d}"
        if 10 <= datetime.now(ZoneInfo(name)).hour < 18:
            return name
    raise AssertionError("no zone in daytime")  # pragma: no cover - 25 offsets span the day


def test_followpay_worker_exits_cleanly_on_sigterm(tmp_path):
    url = f"sqlite:///{tmp_path / 'followpay.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    three_due(engine, SystemClock(), time_zone=_daytime_zone())  # the worker runs on real time
    env = {
        **os.environ,
        "FOLLOWPAY_HOME": str(tmp_path),
        "FOLLOWPAY_DATABASE_URL": url,
        "FOLLOWPAY_MASTER_KEY": MASTER_KEY.hex(),
        "FOLLOWPAY_INDEXER_POLL_INTERVAL": "0.1",
    }
    script = Path(sys.executable).with_name("followpay")
    proc = subprocess.Popen(
        [str(script), "worker", "--worker-id", "w-signal"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            with Session(engine) as session:
                states = [f.state for f in session.exec(select(FollowUp))]
            if states == ["sent"] * 3:
                break
            time.sleep(0.1)
        assert states == ["sent"] * 3, proc.stdout.read().decode() if proc.poll() else states
        with Session(engine) as session:
            claims = session.exec(
                select(FollowUpEvent.detail).where(FollowUpEvent.to_state == "queued")
            ).all()
        # the given name, made unique to the process (copies started alike never share one)
        assert {claim.rsplit("-", 1)[0] for claim in claims} == {f"w-signal-{proc.pid}"}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        engine.dispose()


def test_the_embedded_server_stops_its_workers_on_sigterm(tmp_path):
    """uvicorn raised the caught SIGTERM again after its own shutdown: the process died (143)
    before it stopped its worker threads, so a delivery in hand was cut and, its lease run
    out, written off as interrupted. Now the workers finish and the process exits 0."""
    import httpx

    from wallet.chain import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWPAY_")}
    env.update(FOLLOWPAY_HOME=str(tmp_path / "home"), FOLLOWPAY_INDEXER_POLL_INTERVAL="0.2")
    script = Path(sys.executable).with_name("followpay")
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [str(script), "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


# The indexer fails once the server answers on its port (the job dies while it serves), or
# at its first step with --at-once (while the server starts).
_DYING_INDEXER = """
import socket, sys
from api.settlement.indexer import Indexer

port = int(sys.argv[sys.argv.index("--port") + 1])
step = Indexer.poll_once

def fail_once_serving(self):
    if "--at-once" not in sys.argv:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return step(self)
    raise RuntimeError("an indexer bug")

Indexer.poll_once = fail_once_serving
from api.cli import main
main([arg for arg in sys.argv[1:] if arg not in ("--at-once", "--serving")])
"""


@pytest.mark.parametrize("when", ["serving", "at-once"])
def test_the_embedded_server_stops_when_a_background_job_dies(tmp_path, when):
    """A job that ends with an error its loop does not retry (a bug, a reorg deeper than the
    window) killed its thread only: the server went on answering, ``/v1/health`` 200, with
    nothing settling any more. Now it shuts down and exits non-zero, as ``followpay indexer``
    alone would, saying which job stopped."""
    from wallet.chain import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWPAY_")}
    env.update(FOLLOWPAY_HOME=str(tmp_path / "home"), FOLLOWPAY_INDEXER_POLL_INTERVAL="0.2")
    proc = subprocess.Popen(
        [sys.executable, "-c", _DYING_INDEXER, "serve", "--port", str(free_port()), f"--{when}"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, output
    last = output.rstrip().splitlines()[-1]
    assert last.startswith("error: "), output
    assert "the embedded indexer stopped: RuntimeError: an indexer bug" in last, output


def test_links_of_a_server_on_an_ipv6_or_wildcard_address_are_urls():
    """``serve --host ::1`` made every checkout and rating link ``http://::1:8000/…``: no URL a
    client can open. A wildcard address is no address a customer can reach."""
    from urllib.parse import urlsplit

    from api.commands.serve import _own_base_url

    for host, expected in (
        ("127.0.0.1", ("127.0.0.1", 8000)),
        ("::1", ("::1", 8000)),
        ("0.0.0.0", ("127.0.0.1", 8000)),  # noqa: S104
        ("::", ("::1", 8000)),
    ):
        parts = urlsplit(_own_base_url(host, 8000))
        assert (parts.hostname, parts.port) == expected, host
