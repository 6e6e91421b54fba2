"""``followpay demo``: the whole story on one laptop, offline.

Deploy → merchant and policy → three customers → invoices paid on-chain (one with permit) →
indexer settles → worker follows up (e-mail over real SMTP to a sink started here; one
suppressed for missing consent; one VIP phone task held for quiet hours) → a customer clicks a
low rating → a ticket with its 24-hour SLA clock → CSAT/NPS.
"""

from __future__ import annotations

import re
import tempfile
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiosmtpd.controller import Controller
from rich.console import Console
from rich.table import Table
from sqlmodel import Session, SQLModel, select
from web3.logs import DISCARD

import api.dispatch.models
import api.settlement.models  # noqa: F401 - registers tables
import crm.models  # noqa: F401 - registers tables
from api.dispatch.channels import EmailChannel, InAppChannel, Links, PhoneChannel
from api.dispatch.worker import Channel, Worker
from api.settlement import invoices
from api.settlement.indexer import Indexer
from contracts import load_artifact
from crm import (
    ContactCreate,
    FeedbackCreate,
    FollowUpPolicyCreate,
    KeyRing,
    SystemClock,
    consent,
    contacts,
    feedback,
    followups,
    make_engine,
    merchants,
)
from crm.followups.models import FollowUp
from crm.merchants.models import MerchantCreate
from crm.metrics import service as metrics
from crm.tickets.models import Ticket
from wallet.chain import ChainConfig, connect, free_port
from wallet.deployment import deploy_contracts
from wallet.secrets import PrivateKey
from wallet.signing import Signer, permit_typed_data, sign_typed_data, split_signature

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


def _id(value: int | None) -> int:
    assert value is not None, "flushed rows have ids"
    return value


def _zone(inside_window: bool) -> str:
    """A time zone whose local hour right now is inside (or outside) 08:00-21:00."""
    for name in _ZONES:
        hour = datetime.now(ZoneInfo(name)).hour
        if (8 <= hour < 21) == inside_window:
            return name
    raise RuntimeError("no suitable time zone")  # pragma: no cover - 10 zones span the day


def run_demo(chain_backend: str = "tester", console: Console | None = None) -> dict[str, Any]:
    out = console or Console()
    clock = SystemClock()
    workdir = Path(tempfile.mkdtemp(prefix="followpay-demo-"))
    engine = make_engine(f"sqlite:///{workdir / 'demo.sqlite3'}")
    SQLModel.metadata.create_all(engine)
    keyring = KeyRing.generate()
    sink = _Sink()
    smtp = Controller(sink, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        with connect(ChainConfig(backend=chain_backend)) as chain:
            return _story(out, chain, engine, keyring, clock, smtp, sink)
    finally:
        smtp.stop()
        engine.dispose()


def _story(out, chain, engine, keyring, clock, smtp, sink) -> dict[str, Any]:
    w3 = chain.w3
    owner, merchant_acct, operator, payout, *customers = chain.dev_accounts()
    out.rule(f"[bold]FollowPay demo[/] on the {chain.backend.value} chain (id {chain.chain_id})")
    deployment = deploy_contracts(chain, owner)
    token = w3.eth.contract(address=deployment.token, abi=load_artifact("TestToken").abi)
    router = w3.eth.contract(address=deployment.router, abi=load_artifact("PaymentRouter").abi)

    def transact(fn: Any, sender: Any) -> Any:
        with chain.lock:
            receipt = w3.eth.wait_for_transaction_receipt(fn.transact({"from": sender.address}))
        if receipt["status"] != 1:
            raise RuntimeError("demo transaction reverted")
        return receipt

    out.print(f"deployed TestToken {deployment.token}\n         PaymentRouter {deployment.router}")
    transact(router.functions.registerMerchant(payout.address, operator.address), merchant_acct)
    for customer in customers[:3]:
        transact(token.functions.mint(customer.address, 100_000_000), owner)

    ada_zone, vip_zone = _zone(True), _zone(False)
    with Session(engine, expire_on_commit=False) as session, session.begin():
        shop_id = _id(
            merchants.create_merchant(session, MerchantCreate(name="Tea House"), clock).id
        )
        followups.create_policy(
            session,
            shop_id,
            FollowUpPolicyCreate(
                delay_minutes=0,
                channel_order=["email", "in_app"],
                segment_rules=[{"field": "tier", "equals": "vip", "channels": ["phone"]}],
            ),
            actor="owner",
            clock=clock,
        )
        people = {
            "Ada": ContactCreate(name="Ada", email="ada@example.com", time_zone=ada_zone),
            "Bob": ContactCreate(name="Bob", email="bob@example.com", time_zone=ada_zone),
            "Chen": ContactCreate(
                name="Chen", phone="+8613800138000", time_zone=vip_zone, tier="vip"
            ),
        }
        ids = {
            n: _id(contacts.create_contact(session, shop_id, c, keyring, clock).id)
            for n, c in people.items()
        }
        consent.grant(
            session, shop_id, ids["Ada"], "service_followup", "email", actor="ada", clock=clock
        )
        consent.grant(
            session, shop_id, ids["Chen"], "service_followup", "phone", actor="chen", clock=clock
        )
        invoices.register_account(
            session,
            shop_id,
            chain_id=chain.chain_id,
            address=merchant_acct.address,
            payout=payout.address,
            operator=operator.address,
            clock=clock,
        )
    out.print(
        f"merchant [bold]Tea House[/]; customers: Ada (e-mail consent, {ada_zone}), "
        f"Bob (no consent), Chen (VIP, phone consent, {vip_zone})"
    )

    signer = Signer(PrivateKey(bytes(operator.key)))
    issued = {}
    with Session(engine, expire_on_commit=False) as session, session.begin():
        for index, name in enumerate(("Ada", "Bob", "Chen")):
            request = invoices.InvoiceRequest(
                merchant_id=shop_id,
                token=deployment.token,
                amount=(index + 1) * 12_500_000,
                order_id=f"order-{name.lower()}",
                contact_id=ids[name],
                fee=250_000,
            )
            issued[name] = invoices.create_invoice(
                session,
                request,
                chain_id=chain.chain_id,
                router=deployment.router,
                signer=signer,
                clock=clock,
            )
        account = invoices.repo.account_for_merchant(session, shop_id, chain.chain_id)
        assert account is not None
    table = Table("customer", "invoice", "on-chain id", "amount", "EIP-681")
    for name, inv in issued.items():
        table.add_row(
            name,
            inv.id,
            str(inv.number),
            f"{inv.amount / 1e6:.2f} tUSD",
            invoices.eip681_uri(inv, deployment.router)[:60] + "…",
        )
    out.print(table)

    receipts = {}
    for name, customer in zip(("Ada", "Bob", "Chen"), customers[:3], strict=True):
        inv = issued[name]
        intent = invoices.intent_of(inv, account)
        r, vs = bytes.fromhex(inv.signature_r[2:]), bytes.fromhex(inv.signature_vs[2:])
        if name == "Ada":  # one transaction: EIP-2612 permit + pay
            nonce = token.functions.nonces(customer.address).call()
            deadline = w3.eth.get_block("latest")["timestamp"] + 3600
            typed = permit_typed_data(
                token_name=token.functions.name().call(),
                token=deployment.token,
                chain_id=chain.chain_id,
                owner=customer.address,
                spender=deployment.router,
                value=inv.amount,
                nonce=nonce,
                deadline=deadline,
            )
            v, pr, ps = split_signature(sign_typed_data(typed, PrivateKey(bytes(customer.key))))
            permit = (inv.amount, deadline, v, pr, ps)
            receipts[name] = transact(
                router.functions.payWithPermit(intent.as_tuple(), r, vs, permit), customer
            )
        else:
            transact(token.functions.approve(deployment.router, inv.amount), customer)
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
            f"#{event['invoiceId']}: {event['amount']} (fee {event['fee']})",
        )
    out.print(paid)

    indexer = Indexer(
        chain, engine, deployment.router, start_block=deployment.deploy_block, clock=clock
    )
    settled = indexer.poll_once().settled
    out.print(f"indexer: {len(settled)} invoices settled at block {w3.eth.block_number}")

    links = Links("http://127.0.0.1:8000")
    channels: dict[str, Channel] = {
        "email": EmailChannel(smtp.hostname, smtp.port, "followup@teahouse.example", links),
        "in_app": InAppChannel(links),
        "phone": PhoneChannel(),
    }
    Worker(engine, keyring, channels, clock).run_once()
    with Session(engine, expire_on_commit=False) as session:
        states = {
            name: session.exec(select(FollowUp).where(FollowUp.contact_id == ids[name])).all()
            for name in ("Ada", "Bob", "Chen")
        }
    fu_table = Table("customer", "follow-up", "channel", "reason", "due (UTC)")
    for name, rows in states.items():
        for fu in rows:
            held = fu.state == "scheduled" and fu.due_at > clock.now()
            reason = "held: quiet hours" if held else fu.reason or "-"
            fu_table.add_row(name, fu.state, fu.channel or "-", reason, f"{fu.due_at:%H:%M}")
    out.print(fu_table)

    mail = sink.messages[0]
    body = mail.get_payload(decode=True).decode()
    out.print(f"SMTP sink got: [bold]{mail['Subject']}[/] from {mail['From']} to {mail['To']}")
    token_match = re.search(r"/feedback/([^?\s]+)\?rating=2", body)
    assert token_match, "rating link missing from the e-mail"
    with Session(engine, expire_on_commit=False) as session, session.begin():
        answer = feedback.submit_feedback(
            session,
            shop_id,
            token_match.group(1),
            FeedbackCreate(rating=2, nps=5, comment="Tea arrived cold", tags=["delivery"]),
            keyring=keyring,
            clock=clock,
        )
    with Session(engine, expire_on_commit=False) as session:
        ticket = session.get(Ticket, answer.ticket_id)
        assert ticket is not None, "a rating of 2 opens a ticket"
        report = metrics.compute(
            session, shop_id, datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
        )
    remaining = ticket.due_at - clock.now()
    out.print(
        f"Ada clicked rating 2 → ticket #{ticket.id} ({ticket.state}), first response due "
        f"{ticket.due_at:%Y-%m-%d %H:%M} UTC ({remaining.total_seconds() / 3600:.1f} h left); "
        f"{answer.reward_points} reward points credited"
    )
    summary = Table("metric", "value")
    for label, value in (
        ("CSAT %", report.csat),
        ("NPS", report.nps),
        ("response rate %", report.response_rate),
        ("sent", report.sent),
        ("responded", report.responded),
        ("suppressed", ", ".join(f"{k}: {v}" for k, v in report.suppressions.items()) or "-"),
    ):
        summary.add_row(label, "n/a" if value is None else str(value))
    out.print(summary)
    return {
        "settled": settled,
        "followups": {n: [f.state for f in rows] for n, rows in states.items()},
        "emails": len(sink.messages),
        "ticket_id": ticket.id,
        "csat": report.csat,
        "nps": report.nps,
        "gas": {n: r["gasUsed"] for n, r in receipts.items()},
    }
