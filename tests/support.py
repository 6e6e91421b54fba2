"""Test helpers importable from any test module (``from tests.support import ChainSuite``)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn

import pytest
import sqlalchemy as sa
from eth_account.signers.local import LocalAccount

from contracts import load_artifact
from wallet.chain import Chain
from wallet.deployment import Deployment, deploy_contracts
from wallet.secrets import PrivateKey
from wallet.signing import PaymentIntent, payment_intent_typed_data, sign_typed_data, to_compact

__all__ = [
    "IN_CI",
    "PG_URL",
    "ChainSuite",
    "Market",
    "StallingServer",
    "migrated_pg_schema",
    "missing",
    "open_market",
    "stalling_server",
]

IN_CI = os.environ.get("CI", "").lower() == "true"
PG_URL = os.environ.get(
    "FOLLOWPAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def missing(reason: str) -> NoReturn:
    """Skip locally, fail in CI: nothing that needs anvil or PostgreSQL may skip there."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: required)", pytrace=False)
    pytest.skip(reason)


@contextmanager
def migrated_pg_schema(
    schema: str, make_engine: Callable[..., sa.Engine] | None = None, revision: str = "head"
) -> Iterator[sa.Engine]:
    """An engine (``make_engine``, default :func:`api.db.make_engine`) on a fresh PostgreSQL
    schema with the CRM and API migrations applied (the API chain up to ``revision``); the
    schema is dropped afterwards. PostgreSQL unreachable: :func:`missing`."""
    from api.db import make_engine as api_engine
    from api.db import upgrade

    make = make_engine or api_engine
    admin = api_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        missing(f"PostgreSQL unreachable at {PG_URL}: {type(exc).__name__}")
    engine = make(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        with engine.begin() as conn:
            upgrade(connection=conn, revision=revision)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


class ChainSuite:
    """Base for chain-backed test classes; subclass once per backend (``backend = "anvil"``).

    ``chain`` is reverted to its pre-test snapshot after every test.
    """

    backend: str = "tester"

    @pytest.fixture
    def chain(self, request: pytest.FixtureRequest) -> Iterator[Chain]:
        chain: Chain = request.getfixturevalue(f"{self.backend}_chain")
        snapshot = chain.snapshot()
        try:
            yield chain
        finally:
            chain.revert(snapshot)


@dataclass
class Market:
    """Deployed token + router with a registered merchant and a funded payer (dev accounts)."""

    chain: Chain
    deployment: Deployment
    token: Any
    router: Any
    owner: LocalAccount
    merchant: LocalAccount
    operator: LocalAccount
    payout: LocalAccount
    payers: list[LocalAccount]

    def transact(self, fn: Any, sender: LocalAccount) -> Any:
        with self.chain.lock:
            tx_hash = fn.transact({"from": sender.address})
            receipt = self.chain.w3.eth.wait_for_transaction_receipt(tx_hash)
        assert receipt["status"] == 1
        return receipt

    def pay(self, intent: PaymentIntent, payer: LocalAccount) -> Any:
        """Approve and pay ``intent`` as ``payer`` with the operator's signature."""
        typed = payment_intent_typed_data(
            intent, chain_id=self.chain.chain_id, router=self.deployment.router
        )
        r, vs = to_compact(sign_typed_data(typed, PrivateKey(bytes(self.operator.key))))
        self.transact(self.token.functions.approve(self.deployment.router, intent.amount), payer)
        return self.transact(self.router.functions.pay(intent.as_tuple(), r, vs), payer)

    def pay_signed(self, intent: PaymentIntent, r: bytes, vs: bytes, payer: LocalAccount) -> Any:
        self.transact(self.token.functions.approve(self.deployment.router, intent.amount), payer)
        return self.transact(self.router.functions.pay(intent.as_tuple(), r, vs), payer)


def open_market(chain: Chain) -> Market:
    """Deploy and register on ``chain`` (call before taking the per-test snapshot)."""
    accounts = chain.dev_accounts()
    owner, merchant, operator, payout = accounts[0], accounts[1], accounts[2], accounts[3]
    payers = accounts[4:8]
    deployment = deploy_contracts(chain, owner)
    w3 = chain.w3
    token = w3.eth.contract(address=deployment.token, abi=load_artifact("TestToken").abi)
    router = w3.eth.contract(address=deployment.router, abi=load_artifact("PaymentRouter").abi)
    market = Market(chain, deployment, token, router, owner, merchant, operator, payout, payers)
    market.transact(router.functions.registerMerchant(payout.address, operator.address), merchant)
    for account in [payout, *payers]:
        market.transact(token.functions.mint(account.address, 10**12), owner)
    return market


@dataclass
class StallingServer:
    """A receiver on 127.0.0.1: POSTs to ``/slow…`` wait for ``release``; any other path sets
    ``fast_arrived`` and is answered at once."""

    base: str
    release: threading.Event
    fast_arrived: threading.Event


@contextmanager
def stalling_server() -> Iterator[StallingServer]:
    release, fast_arrived = threading.Event(), threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path.startswith("/slow"):
                release.wait(30)
            else:
                fast_arrived.set()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield StallingServer(f"http://127.0.0.1:{server.server_address[1]}", release, fast_arrived)
    finally:
        release.set()
        server.shutdown()
        server.server_close()
