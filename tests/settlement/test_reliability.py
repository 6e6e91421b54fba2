"""Crash-safety of the settlement pipeline under SIGKILL (issue 5 §5).

1,000 invoices are paid on anvil while ``followpay indexer`` and two ``followpay worker``
processes (competing for the same follow-ups) run as real subprocesses against PostgreSQL and
are killed with SIGKILL at random (seeded) moments, each on its own schedule, and restarted.
Afterwards every payment is settled exactly once, every follow-up reached a terminal state,
both workers sent some, and no follow-up e-mail reached the SMTP sink twice:

    PaymentSettled logs == payment rows == settled invoices == follow-ups == sent + interrupted

and no more are interrupted than the workers were killed. Claims the killed workers still held
when the processes were stopped are recovered afterwards by an in-process worker with a zero
lease (the one recovery path, run now instead of after a real lease of two minutes).

Set ``FOLLOWPAY_RELIABILITY_SEED`` to replay another kill schedule.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from sqlmodel import Session, col, func, select

import api.dispatch.models
import api.settlement.models  # noqa: F401
import crm.models  # noqa: F401 - registers the crm_ tables
from api.db import upgrade
from api.dispatch.channels import EmailChannel, Links
from api.dispatch.worker import Worker
from api.settlement import invoices
from api.settlement.models import IndexerCursor, Invoice, InvoiceState, Payment, PaymentState
from api.settlement.router_logs import SETTLED_TOPIC
from contracts import load_artifact
from crm import (
    ContactCreate,
    FollowUpPolicyCreate,
    KeyRing,
    SystemClock,
    consent,
    contacts,
    make_engine,
    merchants,
)
from crm.followups import dispatch as followups_dispatch
from crm.followups import policies as followups_policies
from crm.followups.models import FollowUp, FollowUpEvent, Purchase
from crm.merchants.models import MerchantCreate
from tests.support import missing
from wallet.chain import Chain, ChainConfig, connect, free_port
from wallet.deployment import deploy_contracts
from wallet.errors import AnvilNotFoundError
from wallet.secrets import PrivateKey
from wallet.signing import Signer

pytestmark = [pytest.mark.slow, pytest.mark.anvil, pytest.mark.postgres]

PG_URL = os.environ.get(
    "FOLLOWPAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SEED = int(os.environ.get("FOLLOWPAY_RELIABILITY_SEED", "5005"))
PAYMENTS = 1_000
CONTACTS = 50
AMOUNT = 1_000_000  # 1 tUSD
PAY_GAS = 300_000
PAYERS = 6  # dev accounts 4..9, one transaction each per JSON-RPC batch: anvil handles a
BATCH = PAYERS  # batch's calls concurrently, and a nonce that overtakes its predecessor stays
BATCH_EVERY = 0.12  # queued for good; ~20 s of payments
MAX_KILLS = 4  # per process
CHAOS_SECONDS = 45.0  # no kill after this
KILL_AFTER = (0.1, 2.5)  # seconds after a (re)started process is seen working
FINISH_TIMEOUT = 90.0
ROOT = Path(__file__).resolve().parents[2]
_MESSAGE_ID = re.compile(r"followup-(\d+)@")
_CANDIDATE_ZONES = (
    "Europe/London",
    "Asia/Shanghai",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "America/New_York",
    "Pacific/Auckland",
    "Asia/Kolkata",
    "America/Sao_Paulo",
    "Pacific/Honolulu",
    "Europe/Berlin",
    *(f"Etc/GMT{offset:+d}" for offset in range(-12, 13)),
)


def _daytime_zone() -> str:
    """A zone whose local time is between 09:00 and 19:00 now: hours left in the send window."""
    for name in _CANDIDATE_ZONES:
        if 9 <= datetime.now(ZoneInfo(name)).hour < 19:
            return name
    raise AssertionError("no zone in daytime")  # pragma: no cover - 25 offsets span the day


class Sink:
    """aiosmtpd handler counting delivered messages per follow-up (by Message-ID)."""

    def __init__(self) -> None:
        self.delivered: Counter[int] = Counter()
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        text = envelope.content.decode("utf-8", "replace")
        header = next(
            (line for line in text.splitlines() if line.lower().startswith("message-id:")), ""
        )
        match = _MESSAGE_ID.search(header)
        with self.lock:
            self.delivered[int(match.group(1)) if match else -1] += 1
        return "250 OK"


class Supervised:
    """A ``followpay`` subprocess that the test kills with SIGKILL and restarts."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.args, self.env, self.logs = name, args, env, logs
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.kills = 0
        self.started_at = 0.0  # wall clock (compared with database timestamps)
        self.kill_at: float | None = None  # monotonic

    def _command(self) -> list[str]:
        script = Path(sys.executable).with_name("followpay")
        base = [str(script)] if script.exists() else [sys.executable, "-m", "api.cli"]
        extra = ["--worker-id", self.worker_id] if self.name.startswith("worker") else []
        return [*base, *self.args, *extra]

    @property
    def worker_id(self) -> str:
        """The name this generation is started with; the worker adds its pid and a random
        suffix (two workers sharing an id would each pass the other's claim check)."""
        return f"{self.name}-{self.generation}"

    def start(self) -> None:
        self.generation += 1
        log = (self.logs / f"{self.name}-{self.generation}.log").open("wb")
        self.proc = subprocess.Popen(
            self._command(),
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.started_at = time.time()
        self.kill_at = None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.kills += 1

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # the CLI loops finish their step and exit
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def tail(self) -> str:
        path = self.logs / f"{self.name}-{self.generation}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture
def pg_url() -> Iterator[sa.URL]:
    schema = f"rel_{os.getpid()}"
    admin = make_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        missing(f"PostgreSQL unreachable: {type(exc).__name__}")
    try:
        yield sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def chain() -> Iterator[Chain]:
    try:
        chain = connect(ChainConfig(backend="anvil"))
    except AnvilNotFoundError as exc:
        missing(str(exc))
    with chain:
        yield chain


@pytest.fixture
def smtp() -> Iterator[tuple[Controller, Sink]]:
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, sink
    controller.stop()


def _rpc_batch(client: httpx.Client, url: str, calls: list[tuple[str, list[Any]]]) -> list[Any]:
    payload = [
        {"jsonrpc": "2.0", "id": i, "method": method, "params": params}
        for i, (method, params) in enumerate(calls)
    ]
    answers = sorted(client.post(url, json=payload).json(), key=lambda a: a["id"])
    errors = [a["error"] for a in answers if "error" in a]
    assert not errors, errors[:3]
    return [a["result"] for a in answers]


def _setup(chain: Chain, engine: sa.Engine, keyring: KeyRing) -> tuple[Any, list[Any]]:
    """Deploy, register, fund + pre-approve payers, create the shop and 1,000 invoices."""
    accounts = chain.dev_accounts()
    owner, merchant_acct, operator, payout = accounts[:4]
    payers = accounts[4 : 4 + PAYERS]
    deployment = deploy_contracts(chain, owner)
    w3 = chain.w3
    token = w3.eth.contract(address=deployment.token, abi=load_artifact("TestToken").abi)
    router = w3.eth.contract(address=deployment.router, abi=load_artifact("PaymentRouter").abi)

    def transact(fn: Any, sender: Any) -> None:
        receipt = w3.eth.wait_for_transaction_receipt(fn.transact({"from": sender.address}))
        assert receipt["status"] == 1

    transact(router.functions.registerMerchant(payout.address, operator.address), merchant_acct)
    for payer in payers:
        transact(token.functions.mint(payer.address, AMOUNT * PAYMENTS), owner)
        transact(token.functions.approve(deployment.router, 2**256 - 1), payer)

    clock = SystemClock()
    zone = _daytime_zone()
    signer = Signer(PrivateKey(bytes(operator.key)))
    with Session(engine, expire_on_commit=False) as session, session.begin():
        shop = merchants.create_merchant(session, MerchantCreate(name="Tea House"), clock)
        assert shop.id is not None
        followups_policies.create_policy(
            session,
            shop.id,
            FollowUpPolicyCreate(delay_minutes=0, frequency_cap_days=0, channel_order=["email"]),
            actor="owner",
            clock=clock,
        )
        contact_ids = []
        for n in range(CONTACTS):
            contact = contacts.create_contact(
                session,
                shop.id,
                ContactCreate(name=f"Customer {n}", email=f"c{n}@example.com", time_zone=zone),
                keyring,
                clock,
            )
            assert contact.id is not None
            consent.grant(
                session,
                shop.id,
                contact.id,
                "service_followup",
                "email",
                actor="c",
                clock=clock,
                keyring=keyring,
            )
            contact_ids.append(contact.id)
        account = invoices.register_account(
            session,
            shop.id,
            chain_id=chain.chain_id,
            address=merchant_acct.address,
            payout=payout.address,
            operator=operator.address,
            clock=clock,
        )
        issued = [
            invoices.create_invoice(
                session,
                invoices.InvoiceRequest(
                    merchant_id=shop.id,
                    token=deployment.token,
                    amount=AMOUNT,
                    order_id=f"order-{n}",
                    contact_id=contact_ids[n % CONTACTS],
                    confirmations=1,
                ),
                chain_id=chain.chain_id,
                router=deployment.router,
                signer=signer,
                clock=clock,
            )
            for n in range(PAYMENTS)
        ]
    nonces = {p.address: w3.eth.get_transaction_count(p.address) for p in payers}
    txs = []
    for n, invoice in enumerate(issued):
        intent = invoices.intent_of(invoice, account)
        r, vs = bytes.fromhex(invoice.signature_r[2:]), bytes.fromhex(invoice.signature_vs[2:])
        data = router.encode_abi("pay", args=[intent.as_tuple(), r, vs])
        payer = payers[n % len(payers)].address
        nonce, nonces[payer] = nonces[payer], nonces[payer] + 1
        txs.append(
            {
                "from": payer,
                "to": deployment.router,
                "data": data,
                "gas": hex(PAY_GAS),
                "nonce": hex(nonce),
            }
        )
    return deployment, txs


def _working(engine: sa.Engine, proc: Supervised) -> bool:
    """Has this generation done work yet? (Python start-up alone takes seconds here.)"""
    since = datetime.fromtimestamp(proc.started_at, UTC)
    with Session(engine) as session:
        if proc.name == "indexer":
            stmt = select(IndexerCursor.id).where(col(IndexerCursor.updated_at) > since)
        else:
            stmt = select(FollowUp.id).where(
                col(FollowUp.worker_id).startswith(f"{proc.worker_id}-", autoescape=True)
            )
        return session.exec(stmt.limit(1)).first() is not None


def _counts(engine: sa.Engine) -> tuple[int, int]:
    """(settled invoices, follow-ups still ``scheduled``)."""
    with Session(engine) as session:
        settled = session.exec(
            select(func.count()).select_from(Invoice).where(Invoice.state == InvoiceState.SETTLED)
        ).one()
        scheduled = session.exec(
            select(func.count()).select_from(FollowUp).where(FollowUp.state == "scheduled")
        ).one()
    return int(settled), int(scheduled)


def test_sigkilled_indexer_and_worker_settle_once_and_send_at_most_once(
    tmp_path: Path, pg_url: sa.URL, chain: Chain, smtp: tuple[Controller, Sink]
) -> None:
    controller, sink = smtp
    started = time.monotonic()
    rng = random.Random(SEED)
    upgrade(pg_url)  # the processes refuse a schema the migrations did not make
    engine = make_engine(pg_url)
    master = bytes(rng.randrange(256) for _ in range(32))
    keyring = KeyRing(master)
    deployment, txs = _setup(chain, engine, keyring)
    manifest = tmp_path / "deployment.json"
    manifest.write_text(json.dumps(deployment.to_json()))
    assert chain.rpc_url is not None
    env = {
        **os.environ,
        "FOLLOWPAY_CHAIN": "rpc",
        "FOLLOWPAY_RPC_URL": chain.rpc_url,
        "FOLLOWPAY_MANIFEST": str(manifest),
        "FOLLOWPAY_HOME": str(tmp_path / "home"),
        "FOLLOWPAY_DATABASE_URL": pg_url.render_as_string(hide_password=False),
        "FOLLOWPAY_MASTER_KEY": master.hex(),
        "FOLLOWPAY_INDEXER_POLL_INTERVAL": "0.2",
        "FOLLOWPAY_SMTP_HOST": controller.hostname,
        "FOLLOWPAY_SMTP_PORT": str(controller.port),
        "PYTHONUNBUFFERED": "1",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [
        Supervised("indexer", ["indexer"], env, logs),
        Supervised("worker-a", ["worker"], env, logs),
        Supervised("worker-b", ["worker"], env, logs),
    ]
    for proc in procs:
        proc.start()
    setup_seconds = time.monotonic() - started

    # -- chaos: pay in batches while the processes are killed and restarted -----------------
    chaos_start = time.monotonic()
    sent, next_batch, next_probe = 0, chaos_start, chaos_start
    try:
        with httpx.Client(timeout=30) as client:
            while True:
                now = time.monotonic()
                if sent < len(txs) and now >= next_batch:
                    batch = txs[sent : sent + BATCH]
                    _rpc_batch(client, chain.rpc_url, [("eth_sendTransaction", [t]) for t in batch])
                    sent += len(batch)
                    next_batch = now + BATCH_EVERY
                chaos_open = now - chaos_start < CHAOS_SECONDS
                for proc in procs:
                    code = proc.exited()
                    assert code is None, f"{proc.name} exited by itself ({code}):\n{proc.tail()}"
                    if not chaos_open or proc.kills >= MAX_KILLS:
                        continue
                    if proc.kill_at is None:
                        if now >= next_probe and _working(engine, proc):
                            proc.kill_at = now + rng.uniform(*KILL_AFTER)
                    elif now >= proc.kill_at:
                        proc.kill()
                        proc.start()
                if now >= next_probe:
                    next_probe = now + 0.2
                done_killing = all(p.kills >= MAX_KILLS for p in procs) or not chaos_open
                if sent == len(txs) and done_killing:
                    break
                time.sleep(0.02)
            chaos_seconds = time.monotonic() - chaos_start

            # -- let the survivors finish (bounded) --------------------------------------------
            deadline = time.monotonic() + FINISH_TIMEOUT
            while time.monotonic() < deadline:
                settled, scheduled = _counts(engine)
                if settled == PAYMENTS and scheduled == 0:
                    break
                for proc in procs:
                    assert proc.exited() is None, f"{proc.name} died:\n{proc.tail()}"
                time.sleep(0.5)
            finish_seconds = time.monotonic() - chaos_start - chaos_seconds
    finally:
        for proc in procs:
            proc.stop()

    # -- every worker is gone: claims still held by the killed ones are recovered now ---------
    drain = Worker(
        engine,
        keyring,
        {
            "email": EmailChannel(
                controller.hostname, controller.port, "f@x.test", Links("http://x")
            )
        },
        SystemClock(),
        worker_id="drain",
        lease=timedelta(0),
    )
    recovered: Counter[str] = Counter()
    for _ in range(100):
        result = drain.run_once()
        for outcome, ids in result.recovered.items():
            recovered[outcome] += len(ids)
        if result.claimed == 0 and not any(result.recovered.values()):
            break

    # -- the ledger: chain == payments == settled invoices == follow-ups ----------------------
    logs_on_chain = chain.w3.eth.get_logs(
        {
            "address": deployment.router,
            "fromBlock": deployment.deploy_block,
            "toBlock": "latest",
            "topics": [SETTLED_TOPIC],
        }
    )
    with Session(engine) as session:
        payments = session.exec(select(Payment)).all()
        invoice_states = Counter(session.exec(select(Invoice.state)).all())
        followup_rows = session.exec(select(FollowUp)).all()
        purchases = session.exec(select(func.count()).select_from(Purchase)).one()
        paid_per_invoice = Counter(
            session.exec(
                select(Payment.invoice_id).where(col(Payment.state) != PaymentState.REORGED)
            ).all()
        )
    states = Counter(f.state for f in followup_rows)
    with Session(engine) as session:  # how any non-terminal follow-up got where it is
        stuck = {
            f.id: [
                (e.from_state, e.to_state, e.reason, e.detail)
                for e in session.exec(
                    select(FollowUpEvent)
                    .where(FollowUpEvent.followup_id == f.id)
                    .order_by(col(FollowUpEvent.id))
                )
            ]
            for f in followup_rows
            if f.state not in ("sent", "failed")
        }
    reasons = Counter(f.reason for f in followup_rows if f.state == "failed")
    sent_by = Counter(  # worker-a-<generation>-<pid>-<suffix>: by supervised process
        "-".join((f.worker_id or "?").split("-")[:2]) for f in followup_rows if f.state == "sent"
    )
    delivered = dict(sink.delivered)
    summary = {
        "seed": SEED,
        "kills": {p.name: p.kills for p in procs},
        "setup_s": round(setup_seconds, 1),
        "chaos_s": round(chaos_seconds, 1),
        "finish_s": round(finish_seconds, 1),
        "followup_states": dict(states),
        "recovered_by_drain": dict(recovered),
        "emails": sum(delivered.values()),
        "sent_by": dict(sent_by),
        "stuck": stuck,
    }
    print("reliability:", json.dumps(summary))

    assert all(p.kills >= 1 for p in procs), summary  # the chaos really happened
    assert {"worker-a", "worker-b"} <= set(sent_by), summary  # and the workers competed
    assert len(logs_on_chain) == PAYMENTS
    assert len({int(entry["topics"][2].hex(), 16) for entry in logs_on_chain}) == PAYMENTS
    # settled exactly once: one confirmed, non-reorged payment per invoice
    assert len(payments) == PAYMENTS
    assert {p.state for p in payments} == {PaymentState.CONFIRMED}
    assert None not in paid_per_invoice
    assert len(paid_per_invoice) == PAYMENTS
    assert max(paid_per_invoice.values()) == 1
    assert invoice_states == {InvoiceState.SETTLED: PAYMENTS}
    # nothing lost: one follow-up per payment, each in a terminal, accounted state
    assert purchases == PAYMENTS
    assert len(followup_rows) == PAYMENTS
    assert len({f.payment_ref for f in followup_rows}) == PAYMENTS
    assert set(states) <= {"sent", "failed"}, summary
    assert set(reasons) <= {followups_dispatch.INTERRUPTED}, reasons
    # at most once: no follow-up reached the SMTP sink twice; every `sent` one reached it
    assert -1 not in delivered
    assert max(delivered.values()) == 1
    by_id = {f.id: f for f in followup_rows}
    assert set(delivered) <= set(by_id)
    for followup in followup_rows:
        if followup.state == "sent":
            assert delivered.get(followup.id or 0) == 1, followup.id
    assert states["sent"] + states["failed"] == PAYMENTS
    # a worker sends one e-mail at a time: a kill (or a stop that had to kill) interrupts at
    # most the one it had prepared; a batch written off per kill would pass the lines above
    worker_kills = sum(p.kills for p in procs if p.name.startswith("worker"))
    assert states["failed"] <= worker_kills + 2, summary
    engine.dispose()
