"""``followpay demo``: the whole story on one laptop, offline, driven through the HTTP API.

Deploy → merchant, API keys, policy, three customers and their consents (over HTTP) → invoices
created over HTTP, paid on-chain (one with permit) → the indexer settles → the worker follows up
(e-mail over real SMTP to a sink started here; one suppressed for missing consent; one VIP phone
task held for quiet hours) → the customer's low rating (a real HTTP GET of the link in the e-mail:
a confirmation page; then its button's POST) → a ticket with its 24-hour SLA clock in the
support queue → CSAT/NPS from the API.
"""

from __future__ import annotations

import re
import signal
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from aiosmtpd.controller import Controller
from eth_utils import to_checksum_address
from rich.console import Console
from rich.table import Table
from web3.logs import DISCARD

from api.db import session_factory, session_scope
from api.db import upgrade as upgrade_database
from api.embedded import EmbeddedStack, serve_in_thread
from api.keys.service import create_key
from contracts import load_artifact
from crm import KeyRing, SystemClock
from wallet.amounts import format_amount
from wallet.chain import ChainConfig, connect, free_port
from wallet.secrets import PrivateKey
from wallet.signing import PaymentIntent, permit_typed_data, sign_typed_data, split_signature

__all__ = ["run_demo"]

_ZONES = (
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
)


class _Sink:
    """aiosmtpd handler keeping every delivered message."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


def _zone(inside_window: bool) -> str:
    """A time zone whose local hour right now is inside (or outside) 08:00-21:00."""
    for name in _ZONES:
        hour = datetime.now(ZoneInfo(name)).hour
        if (8 <= hour < 21) == inside_window:
            return name
    raise RuntimeError("no suitable time zone")  # pragma: no cover - 10 zones span the day


def _abi(name: str) -> Any:
    return load_artifact(name).abi


class _Api:
    """A thin HTTP client that fails loudly (the demo is also a smoke test)."""

    def __init__(self, base_url: str, key: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.headers = {"Authorization": f"Bearer {key}"}

    def post(self, path: str, body: dict[str, Any], key: str | None = None) -> Any:
        headers = {**self.headers, "Idempotency-Key": uuid.uuid4().hex}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return self._ok(self.http.post(path, json=body, headers=headers))

    def get(self, path: str, key: str | None = None, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {key}"} if key else self.headers
        return self._ok(self.http.get(path, params=params, headers=headers))

    @staticmethod
    def _ok(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise RuntimeError(
                f"{response.request.method} {response.request.url.path}: {response.text}"
            )
        return response.json()


@contextmanager
def _terminate_unwinds() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the temporary database, the SMTP sink and anvil go
    with the demo (the default action left them behind). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(number: int, _frame: object) -> None:
        raise SystemExit(128 + number)

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(chain_backend: str = "tester", console: Console | None = None) -> dict[str, Any]:
    with _terminate_unwinds():
        return _run_demo(chain_backend, console or Console())


def _run_demo(chain_backend: str, out: Console) -> dict[str, Any]:
    clock = SystemClock()
    with tempfile.TemporaryDirectory(prefix="followpay-demo-") as workdir:
        url = f"sqlite:///{Path(workdir) / 'demo.sqlite3'}"
        upgrade_database(url)
        sink = _Sink()
        smtp = Controller(sink, hostname="127.0.0.1", port=free_port())
        smtp.start()
        try:
            with connect(ChainConfig(backend=chain_backend)) as chain:
                port = free_port()  # the e-mailed links name the port the API listens on
                stack = EmbeddedStack(
                    chain,
                    url,
                    KeyRing.generate(),
                    clock,
                    f"http://127.0.0.1:{port}",
                    smtp=(smtp.hostname, smtp.port),
                )
                try:
                    with serve_in_thread(stack.app(), port=port) as base_url:
                        return _story(out, stack, base_url, sink)
                finally:
                    stack.close()
        finally:
            smtp.stop()


def _story(out: Console, stack: EmbeddedStack, base_url: str, sink: _Sink) -> dict[str, Any]:
    chain, deployment, clock = stack.chain, stack.deployment, stack.clock
    w3 = chain.w3
    owner, merchant_acct, operator, payout, *customers = chain.dev_accounts()
    out.rule(f"[bold]FollowPay demo[/] on the {chain.backend.value} chain (id {chain.chain_id})")
    token = w3.eth.contract(address=to_checksum_address(deployment.token), abi=_abi("TestToken"))
    router = w3.eth.contract(
        address=to_checksum_address(deployment.router), abi=_abi("PaymentRouter")
    )

    def transact(fn: Any, sender: Any) -> Any:
        with chain.lock:
            receipt = w3.eth.wait_for_transaction_receipt(fn.transact({"from": sender.address}))
        if receipt["status"] != 1:
            raise RuntimeError("demo transaction reverted")
        return receipt

    out.print(f"deployed TestToken {deployment.token}\n         PaymentRouter {deployment.router}")
    out.print(f"API listening on {base_url} (OpenAPI at {base_url}/docs)")
    transact(router.functions.registerMerchant(payout.address, operator.address), merchant_acct)
    for customer in customers[:3]:
        transact(token.functions.mint(customer.address, 100_000_000), owner)

    with session_scope(session_factory(stack.api_engine)) as session:
        _, admin_key = create_key(session, None, "admin", False, name="demo bootstrap")
    api = _Api(base_url, admin_key)
    shop = api.post("/v1/merchants", {"name": "Tea House"})
    keys_path = "/v1/api_keys"
    merchant_key = api.post(keys_path, {"role": "merchant", "merchant_id": shop["id"]})["secret"]
    support_key = api.post(keys_path, {"role": "support", "merchant_id": shop["id"]})["secret"]
    api = _Api(base_url, merchant_key)
    api.post(
        f"/v1/merchants/{shop['id']}/account",
        {"address": merchant_acct.address, "payout": payout.address, "operator": operator.address},
    )
    policy = api.post(
        "/v1/followup_policies",
        {
            "delay_minutes": 0,
            "channel_order": ["email", "in_app"],
            "segment_rules": [{"field": "tier", "equals": "vip", "channels": ["phone"]}],
        },
    )
    start, end = (divmod(policy[f"window_{x}_minute"], 60) for x in ("start", "end"))
    out.print(
        f"follow-up policy: right after settlement by {' then '.join(policy['channel_order'])}, "
        f"VIPs by phone; sent {start[0]:02d}:{start[1]:02d} to {end[0]:02d}:{end[1]:02d} in each "
        f"customer's own time zone; one survey per {policy['frequency_cap_days']} days; "
        f"{policy['reward_points']} points for an answer"
    )
    ada_zone, vip_zone = _zone(True), _zone(False)
    people = {
        "Ada": ({"name": "Ada", "email": "ada@example.com", "time_zone": ada_zone}, "email"),
        "Bob": ({"name": "Bob", "email": "bob@example.com", "time_zone": ada_zone}, None),
        "Chen": (
            {"name": "Chen", "phone": "+8613800138000", "time_zone": vip_zone, "tier": "vip"},
            "phone",
        ),
    }
    ids: dict[str, int] = {}
    for name, (body, channel) in people.items():
        ids[name] = int(api.post("/v1/contacts", body)["id"])
        if channel:
            api.post(
                f"/v1/contacts/{ids[name]}/consents",
                {"action": "grant", "purpose": "service_followup", "channel": channel},
            )
    out.print(
        f"merchant [bold]Tea House[/] (id {shop['id']}); customers: Ada (e-mail consent, "
        f"{ada_zone}), Bob (no consent), Chen (VIP, phone consent, {vip_zone})"
    )

    issued: dict[str, Any] = {}
    for index, name in enumerate(("Ada", "Bob", "Chen")):
        issued[name] = api.post(
            "/v1/invoices",
            {
                "amount": str((index + 1) * 12_500_000),
                "fee": "250000",
                "order_id": f"order-{name.lower()}",
                "contact_id": ids[name],
            },
        )
    table = Table("customer", "invoice", "on-chain id", "amount", "EIP-681 (approve step)")
    for name, inv in issued.items():
        table.add_row(
            name,
            inv["id"],
            inv["intent"]["invoice_id"],
            f"{format_amount(int(inv['amount']), inv['decimals'], min_decimals=2)} tUSD",
            inv["payment_uri"][:60] + "…",
        )
    out.print(table)
    out.print(f"Ada's checkout page (pays from a browser wallet): {issued['Ada']['checkout_url']}")

    receipts = {}
    for name, customer in zip(("Ada", "Bob", "Chen"), customers[:3], strict=True):
        inv = issued[name]
        i = inv["intent"]
        intent = PaymentIntent(
            merchant=i["merchant"],
            token=i["token"],
            amount=int(i["amount"]),
            fee=int(i["fee"]),
            invoice_id=int(i["invoice_id"]),
            payer=i["payer"],
            deadline=int(i["deadline"]),
        )
        r = bytes.fromhex(inv["signature"]["r"][2:])
        vs = bytes.fromhex(inv["signature"]["vs"][2:])
        if name == "Ada":  # one transaction: EIP-2612 permit + pay
            nonce = token.functions.nonces(customer.address).call()
            deadline = w3.eth.get_block("latest")["timestamp"] + 3600
            typed = permit_typed_data(
                token_name=token.functions.name().call(),
                token=deployment.token,
                chain_id=chain.chain_id,
                owner=customer.address,
                spender=deployment.router,
                value=intent.amount,
                nonce=nonce,
                deadline=deadline,
            )
            v, pr, ps = split_signature(sign_typed_data(typed, PrivateKey(bytes(customer.key))))
            permit = (intent.amount, deadline, v, pr, ps)
            receipts[name] = transact(
                router.functions.payWithPermit(intent.as_tuple(), r, vs, permit), customer
            )
        else:
            transact(token.functions.approve(deployment.router, intent.amount), customer)
            receipts[name] = transact(router.functions.pay(intent.as_tuple(), r, vs), customer)
    paid = Table("customer", "method", "tx", "block", "gas used", "PaymentSettled")
    for name, receipt in receipts.items():
        event = router.events.PaymentSettled().process_receipt(receipt, errors=DISCARD)[0]["args"]
        paid.add_row(
            name,
            "payWithPermit" if name == "Ada" else "approve + pay",
            receipt["transactionHash"].hex()[:18] + "…",
            str(receipt["blockNumber"]),
            f"{receipt['gasUsed']:,}",
            f"#{event['invoiceId']} intent {event['intentHash'].hex()[:10]}…",
        )
    out.print(paid)

    settled = stack.indexer().poll_once().settled
    states = {name: api.get(f"/v1/invoices/{issued[name]['id']}")["state"] for name in issued}
    out.print(f"indexer: {len(settled)} invoices settled at block {w3.eth.block_number}: {states}")

    stack.worker().run_once()
    followups = api.get("/v1/followups", limit=10)["data"]
    by_contact = {fu["contact_id"]: fu for fu in followups}
    fu_table = Table("customer", "follow-up", "channel", "reason", "due (UTC)")
    states_count: dict[str, int] = {}
    outcome: dict[str, list[str]] = {}
    for name in ("Ada", "Bob", "Chen"):
        fu = by_contact[ids[name]]
        due = datetime.fromisoformat(fu["due_at"])
        reason = fu["suppression_reason"] or "-"
        if fu["state"] == "scheduled":  # a hold keeps the state: the log says why it waits
            last = api.get(f"/v1/followups/{fu['id']}")["events"][-1]
            reason = f"held: {last['reason'].replace('_', ' ')}" if last["reason"] else "-"
        fu_table.add_row(name, fu["state"], fu["channel"] or "-", reason, f"{due:%Y-%m-%d %H:%M}")
        outcome[name] = [fu["state"]]
        states_count[fu["state"]] = states_count.get(fu["state"], 0) + 1
    out.print(fu_table)

    mail = sink.messages[0]
    text = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
    out.print(f"SMTP sink got: [bold]{mail['Subject']}[/] from {mail['From']} to {mail['To']}")
    link = re.search(r"https?://\S+/v1/public/feedback/\S+/rate\?rating=2", text)
    assert link, "rating link missing from the e-mail"
    path = "/v1/" + link.group(0).split("/v1/", 1)[1]
    page = api.http.get(path)  # the customer's click (no API key): a page, nothing recorded
    assert page.status_code == 200, page.text
    assert 'value="2" required checked' in page.text, "the page must preselect the link's rating"
    # its button: the form's POST
    answer = api._ok(api.http.post(path.split("?", 1)[0], data={"rating": "2"}))
    ticket = api.get("/v1/tickets", key=support_key)["data"][0]
    due = datetime.fromisoformat(ticket["due_at"])
    remaining = (due - clock.now()) / timedelta(hours=1)
    out.print(
        f"Ada clicked rating 2 and confirmed it → ticket #{ticket['id']} ({ticket['state']}) "
        "in the support queue, "
        f"first response due {due:%Y-%m-%d %H:%M} UTC ({remaining:.1f} h left); "
        f"{answer['reward_points']} reward points credited"
    )
    start = (clock.now() - timedelta(days=1)).isoformat()
    end = (clock.now() + timedelta(days=1)).isoformat()
    report = api.get("/v1/metrics", start=start, end=end)
    summary = Table("metric", "value")
    waiting = ", ".join(f"{n} {state}" for state, n in sorted(states_count.items()))
    for label, value in (
        ("follow-ups", f"{sum(states_count.values())}: {waiting}"),
        ("CSAT %", report["csat"]),
        ("NPS", report["nps"]),
        ("response rate %", report["response_rate"]),
        ("sent", report["sent"]),
        ("responded", report["responded"]),
        ("suppressed", ", ".join(f"{k}: {v}" for k, v in report["suppressions"].items()) or "-"),
    ):
        summary.add_row(label, "n/a" if value is None else str(value))
    out.print(summary)
    return {
        "settled": settled,
        "followups": outcome,
        "emails": len(sink.messages),
        "ticket_id": ticket["id"],
        "csat": report["csat"],
        "nps": report["nps"],
        "gas": {n: r["gasUsed"] for n, r in receipts.items()},
    }
