"""Everything in one process: chain, contracts, API, indexer, worker, webhook deliveries.

The embedded default for a laptop (``followpay serve`` on the tester chain, and the demo): the
in-process chain starts empty, so the contracts are deployed at start and the local development
operator (dev account 2) signs every merchant's intents. In production each piece runs on its
own (``followpay serve``, ``followpay indexer``, ``followpay worker``) against PostgreSQL and a
real node, with the operator key in a wallet vault.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from sqlmodel import Session

from api.app import create_app
from api.db import make_engine as api_make_engine
from api.db import session_factory
from api.deps import ChainInfo
from api.dispatch.channels import EmailChannel, InAppChannel, Links, PhoneChannel, WebhookChannel
from api.dispatch.worker import Channel, Worker
from api.operators import OperatorKeys
from api.runtime import chain_info_for
from api.sandbox import Sandbox
from api.settings import get_settings
from api.settlement import repository as settlement_repo
from api.settlement.indexer import Indexer
from api.webhooks import TargetPolicy
from api.webhooks.secrets import SecretCipher
from crm import KeyRing, make_engine
from crm.clock import Clock
from wallet.chain import Chain, free_port
from wallet.deployment import Deployment, deploy_contracts
from wallet.secrets import PrivateKey
from wallet.signing import Signer

__all__ = ["EarlierChainError", "EmbeddedStack", "serve_in_thread"]

log = logging.getLogger(__name__)


class EarlierChainError(RuntimeError):
    """The database indexed another in-process chain than this one (the CLI prints the
    message alone, as for any error that carries a status and a code)."""

    status_code = 409
    code = "earlier_chain"


#: The embedded stack's webhook receivers (and the demo's) listen on 127.0.0.1.
_LOCAL_RECEIVERS = TargetPolicy(allow_private=True)


@dataclass
class EmbeddedStack:
    """The whole system on one database URL.

    On SQLite the background jobs use the CRM's engine (``BEGIN IMMEDIATE``: a job's
    read-then-write step never fails on a lock upgrade) and the HTTP app uses the API's engine
    (deferred transactions: a request's short idempotency side-transaction must not wait on the
    request's own write lock). PostgreSQL needs neither; it is what production uses.
    """

    chain: Chain
    database_url: str
    keyring: KeyRing
    clock: Clock
    public_base_url: str
    smtp: tuple[str, int] = ("127.0.0.1", 25)
    #: webhook signing secrets; the default is a fresh key, like the demo's fresh key ring
    cipher: SecretCipher = field(default_factory=lambda: SecretCipher(secrets.token_bytes(32)))
    deployment: Deployment = field(init=False)
    operator: Signer = field(init=False)
    sandbox: Sandbox = field(init=False)
    engine: sa.Engine = field(init=False)
    api_engine: sa.Engine = field(init=False)
    #: background jobs that ended with an error (name, error): see :meth:`start_background`
    failures: list[tuple[str, BaseException]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.engine = make_engine(self.database_url)
        self.api_engine = api_make_engine(self.database_url)
        accounts = self.chain.dev_accounts()
        self.deployment = deploy_contracts(self.chain, accounts[0])
        self.operator = Signer(PrivateKey(bytes(accounts[2].key)))
        self.sandbox = Sandbox(self.chain, self.deployment)
        self._refuse_an_earlier_chains_state()

    def _refuse_an_earlier_chains_state(self) -> None:
        """The in-process chain is new at every start, with the same chain id and contract
        addresses: a database that indexed an earlier one (a restarted ``serve`` on the same
        home, or a second one beside it) would see its stored blocks replaced and roll back
        every payment, and its merchant accounts are unknown to the new router."""
        with Session(self.api_engine) as session:
            stored = settlement_repo.indexed_top(
                session, self.chain.chain_id, self.deployment.router
            )
        for number, block_hash in stored:
            header = self.chain.block_header(number)
            if header is None or header[0] != block_hash:
                self.close()
                raise EarlierChainError(
                    "this database indexed an earlier in-process chain (which ended with its "
                    "process): use a new FOLLOWPAY_HOME for the embedded server, "
                    "or FOLLOWPAY_CHAIN=anvil for a chain that lasts"
                )

    def chain_info(self) -> ChainInfo:
        return chain_info_for(self.chain, self.deployment)

    def app(self) -> FastAPI:
        """The API with ``/v1/test_helpers`` (:mod:`api.sandbox`): nothing outside this process
        reaches the in-process chain, so the app registers accounts and pays invoices on it."""
        from api.routes import test_helpers

        app = create_app(
            get_settings(  # receivers on 127.0.0.1; links (checkout pages) name this server
                webhook_allow_private_targets=True, public_base_url=self.public_base_url
            ),
            engine=self.api_engine,
            keyring=self.keyring,
            signers=OperatorKeys({self.operator.address: self.operator}),
            chain_info=self.chain_info(),
            clock=self.clock,
            cipher=self.cipher,
            routers=[test_helpers.router],
        )
        app.state.sandbox = self.sandbox
        return app

    def indexer(self) -> Indexer:
        return Indexer(
            self.chain,
            self.engine,
            self.deployment.router,
            start_block=self.deployment.deploy_block,
            clock=self.clock,
        )

    def worker(self) -> Worker:
        links = Links(self.public_base_url)
        channels: dict[str, Channel] = {
            "email": EmailChannel(self.smtp[0], self.smtp[1], "followup@localhost", links),
            "in_app": InAppChannel(links, self.keyring),
            "phone": PhoneChannel(),
            "webhook": WebhookChannel(self.engine, self.cipher, links, targets=_LOCAL_RECEIVERS),
            "sms": WebhookChannel(
                self.engine, self.cipher, links, name="sms", targets=_LOCAL_RECEIVERS
            ),
        }
        return Worker(self.engine, self.keyring, channels, self.clock)

    def start_background(
        self, stop: threading.Event, interval: float = 1.0
    ) -> list[threading.Thread]:
        """Indexer, follow-up worker and webhook deliveries as daemon threads until ``stop``.

        A job that ends with an error (one its loop does not retry: a bug, a reorg deeper than
        the window) is logged and recorded in :attr:`failures`, and sets ``stop``: the other
        jobs finish their step, and ``serve`` shuts down and exits non-zero, as
        ``followpay indexer`` alone would. Before, the thread died and the server went on
        answering, ``/v1/health`` included, with nothing settling or sending any more."""
        from api.webhooks import run_delivery_worker

        jobs: list[tuple[str, Any]] = [
            ("indexer", lambda: self.indexer().run(stop, poll_interval=interval)),
            ("worker", lambda: self.worker().run(stop, poll_interval=interval)),
            (
                "webhooks",
                lambda: run_delivery_worker(
                    session_factory(self.engine),
                    stop,
                    interval=interval,
                    cipher=self.cipher,
                    targets=_LOCAL_RECEIVERS,
                ),
            ),
        ]

        def guarded(name: str, job: Callable[[], Any]) -> Callable[[], None]:
            def run() -> None:
                try:
                    job()
                except BaseException as exc:
                    log.exception("embedded %s stopped", name)
                    self.failures.append((name, exc))
                    stop.set()

            return run

        threads = [
            threading.Thread(target=guarded(name, job), name=name, daemon=True)
            for name, job in jobs
        ]
        for thread in threads:
            thread.start()
        return threads

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.sandbox.close()
        self.engine.dispose()
        self.api_engine.dispose()


@contextlib.contextmanager
def serve_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int | None = None, *, root_path: str = ""
) -> Iterator[str]:
    """Run ``app`` under uvicorn (on a free loopback port by default); yields its base URL.
    ``root_path``: as ``followpay serve`` passes ``FOLLOWPAY_API_ROOT_PATH``."""
    port = free_port() if port is None else port
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        proxy_headers=False,
        root_path=root_path,
    )
    server = uvicorn.Server(config)  # X-Forwarded-For: the app's own setting decides (api.app)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the API server failed to start")
        threading.Event().wait(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
