"""API fixtures: the real app on SQLite AND PostgreSQL (schema ``api_test_<pid>``).

PostgreSQL unreachable: skipped locally, a failure under ``CI=true``. Tests commit for real (the
idempotency lock and webhook claims use their own transactions), so every test starts from empty
``api_*`` tables instead of a rolled-back transaction.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from api.db import make_engine, session_factory, session_scope, upgrade
from api.deps import ApiConfig
from api.keys.service import create_key
from api.settings import get_settings
from tests.support import migrated_pg_schema

API_TABLES = (
    "api_webhook_attempts",
    "api_webhook_deliveries",
    "api_webhook_endpoints",
    "api_idempotency_keys",
    "api_keys",
)
TEST_CONFIG = ApiConfig(rate_limit_per_second=10_000, rate_limit_burst=100_000)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('apidb') / 'api.sqlite3'}"
        upgrade(url)
        engine = make_engine(url)
        yield engine
        engine.dispose()
        return
    with migrated_pg_schema(f"api_test_{os.getpid()}") as engine:
        yield engine


@pytest.fixture
def db(engine: sa.Engine) -> sa.Engine:
    with engine.begin() as conn:
        for table in API_TABLES:
            conn.execute(sa.text(f"DELETE FROM {table}"))  # noqa: S608
    return engine


@pytest.fixture
def settings(tmp_path):
    # webhook receivers in the tests are on 127.0.0.1 (tests/api/test_webhook_targets.py turns
    # this off to test the production default)
    return get_settings(home=tmp_path, webhook_allow_private_targets=True)


@pytest.fixture
def make_app(db, settings) -> Callable[..., FastAPI]:
    def build(config: ApiConfig = TEST_CONFIG, **kwargs: Any) -> FastAPI:
        return create_app(kwargs.pop("settings", settings), engine=db, config=config, **kwargs)

    return build


@pytest.fixture(scope="session")
def _shared_apps() -> dict[int, FastAPI]:
    return {}


@pytest.fixture
def app(db, _shared_apps, tmp_path_factory) -> FastAPI:
    """The default app, built once per database (building routes costs ~0.1 s)."""
    if id(db) not in _shared_apps:
        settings = get_settings(
            home=tmp_path_factory.mktemp("home"), webhook_allow_private_targets=True
        )
        _shared_apps[id(db)] = create_app(settings, engine=db, config=TEST_CONFIG)
    return _shared_apps[id(db)]


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def new_key(db) -> Callable[..., str]:
    """``new_key("merchant", "m_1")`` -> plaintext key (created directly, like the CLI would)."""

    def make(role: str = "merchant", merchant_id: str | None = "m_1", live: bool = False) -> str:
        with session_scope(session_factory(db)) as session:
            _, plaintext = create_key(session, merchant_id, role, live)
        return plaintext

    return make


def auth(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live_server(app: FastAPI) -> Iterator[str]:
    """The app served by uvicorn on a free 127.0.0.1 port; yields the base URL."""
    with serve_app(app) as base:
        yield base


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread on a free 127.0.0.1 port; yields the base URL."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", limit_concurrency=200)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP webhook receiver. ``statuses`` scripts the reply codes (then ``default``)."""

    url: str
    received: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    default: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_status(self) -> int:
        with self.lock:
            return self.statuses.pop(0) if self.statuses else self.default


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            r = state["r"]
            with r.lock:
                r.received.append(Received(self.path, dict(self.headers.items()), body))
            status = r.next_status()
            payload = b'{"ok":true}' if status < 300 else b'{"ok":false}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["r"] = Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/hooks")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["r"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
