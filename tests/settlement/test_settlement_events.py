"""What the merchant's webhooks are told about settlement beyond the happy path.

A reorg that undoes a payment or refund (``invoice.reorged``: a merchant who shipped on
``invoice.settled`` learns it no longer holds), a payment an invoice cannot take by itself
(``invoice.payment_held``: marked settled by staff, or invalidated while the payment
confirmed), and a payment no invoice matches (``payment.unmatched``). Before, all of these
were silent.
"""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session, select

from api.settlement import invoices
from api.settlement.models import Invoice, Payment
from api.webhooks import create_endpoint
from api.webhooks.models import WebhookDelivery
from tests.settlement.conftest import MarketSuite
from tests.settlement.test_indexer import (
    AMOUNT,
    Shop,
    followups_of,
    indexer_for,
    new_invoice,
    open_shop,
    pay,
    reload,
)
from tests.settlement.test_refunds import refund
from wallet.secrets import PrivateKey
from wallet.signing import PaymentIntent, payment_intent_typed_data, sign_typed_data, to_compact


def events(engine) -> list[tuple[str, dict]]:
    with Session(engine) as session:
        rows = session.exec(select(WebhookDelivery).order_by(WebhookDelivery.created_at)).all()
        return [(d.event_type, json.loads(d.payload)["data"]["object"]) for d in rows]


def mark(engine, shop, invoice, clock, *, settle: bool) -> None:
    with Session(engine) as session, session.begin():
        invoices.mark_invoice(
            session, shop.merchant_id, invoice.id, settle=settle, actor="staff", clock=clock
        )


class EventBehaviour(MarketSuite):
    @pytest.fixture
    def shop(self, engine, market, clock, keyring) -> Shop:
        shop = open_shop(engine, market, clock, keyring)
        with Session(engine) as session, session.begin():
            create_endpoint(session, str(shop.merchant_id), "https://s.example/h", ["*"])
        return shop

    def test_a_reorg_that_undoes_a_settlement_is_announced(self, engine, market, clock, shop):
        invoice = new_invoice(engine, market, shop, clock)
        fork = market.chain.snapshot()
        receipt = pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        market.chain.revert(fork)
        market.chain.mine(4)
        assert indexer.poll_once().reorged_to is not None
        sent = events(engine)
        assert [t for t, _ in sent] == ["invoice.processing", "invoice.settled", "invoice.reorged"]
        reorged = sent[-1][1]
        assert (reorged["invoice"]["id"], reorged["invoice"]["state"]) == (invoice.id, "new")
        assert reorged["invoice"]["paid_amount"] == "0"
        evidence = reorged["chain_evidence"]
        assert evidence["kind"] == "payment"
        assert evidence["tx_hash"] == "0x" + bytes(receipt["transactionHash"]).hex()
        assert (evidence["block_number"], evidence["amount"]) == (
            receipt["blockNumber"],
            str(AMOUNT),
        )

    def test_a_reorg_that_undoes_a_refund_is_announced(self, engine, market, clock, shop):
        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        fork = market.chain.snapshot()
        refund(market, invoice, 5_000_000)
        indexer.poll_once()
        market.chain.revert(fork)
        market.chain.mine(4)
        indexer.poll_once()
        kind, reorged = events(engine)[-1]
        assert kind == "invoice.reorged"
        assert (reorged["chain_evidence"]["kind"], reorged["chain_evidence"]["amount"]) == (
            "refund",
            "5000000",
        )
        assert (reorged["invoice"]["state"], reorged["invoice"]["refunded_amount"]) == (
            "settled",
            "0",
        )

    def test_a_payment_for_an_invoice_marked_settled_is_held(self, engine, market, clock, shop):
        """Staff marked it settled (paid outside the router); the customer pays on chain too:
        paid twice, so the merchant is told, and nothing is followed up twice."""
        invoice = new_invoice(engine, market, shop, clock)
        mark(engine, shop, invoice, clock, settle=True)
        pay(engine, market, invoice)
        assert indexer_for(engine, market, clock).poll_once().settled == []
        after = reload(engine, invoice.id)
        assert (after.state, after.status, after.paid_amount) == ("settled", "marked", AMOUNT)
        assert followups_of(engine, shop.merchant_id) == []
        assert [t for t, _ in events(engine)] == ["invoice.payment_held"]

    def test_a_payment_confirming_while_its_invoice_was_invalidated_is_held(
        self, engine, market, clock, shop
    ):
        invoice = new_invoice(engine, market, shop, clock, confirmations=2)
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        mark(engine, shop, invoice, clock, settle=False)
        market.chain.mine(1)
        assert indexer.poll_once().settled == []
        assert [t for t, _ in events(engine)] == ["invoice.processing", "invoice.payment_held"]
        assert followups_of(engine, shop.merchant_id) == []
        after = reload(engine, invoice.id)
        assert (after.state, after.paid_amount) == ("invalid", AMOUNT)

    def test_a_held_payment_is_announced_once_when_it_is_confirmed(
        self, engine, market, clock, shop
    ):
        invoice = new_invoice(engine, market, shop, clock, confirmations=2)
        mark(engine, shop, invoice, clock, settle=False)
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        assert events(engine) == []  # seen, not final yet
        market.chain.mine(1)
        indexer.poll_once()
        market.chain.mine(1)
        indexer.poll_once()
        assert [t for t, _ in events(engine)] == ["invoice.payment_held"]

    def test_a_payment_no_invoice_matches_is_announced(self, engine, market, clock, shop):
        invoice = new_invoice(engine, market, shop, clock)
        with Session(engine) as session, session.begin():
            stored = session.get(Invoice, invoice.id)
            assert stored is not None
            stored.intent_hash = "0x" + "ab" * 32  # what was paid is not what we signed
            session.add(stored)
        receipt = pay(engine, market, invoice)
        indexer_for(engine, market, clock).poll_once()
        ((kind, body),) = events(engine)
        assert kind == "payment.unmatched"
        payment = body["payment"]
        assert (payment["invoice_id"], payment["invoice_number"]) == (None, str(invoice.number))
        assert payment["tx_hash"] == "0x" + bytes(receipt["transactionHash"]).hex()
        assert (payment["token"], payment["amount"], payment["merchant_address"]) == (
            market.deployment.token,
            str(AMOUNT),
            market.merchant.address,
        )

    def test_an_unmatched_payment_through_a_contract_shows_no_terms(
        self, engine, market, clock, shop, monkeypatch
    ):
        """A contract in between can expose the same ``pay`` with other terms than the ones it
        passes on: calldata is read only from a transaction sent to the router itself."""
        invoice = new_invoice(engine, market, shop, clock)
        with Session(engine) as session, session.begin():
            stored = session.get(Invoice, invoice.id)
            assert stored is not None
            stored.intent_hash = "0x" + "ab" * 32
            session.add(stored)
        pay(engine, market, invoice)
        real = market.chain.request

        def seen_through_a_forwarder(method, params):
            answer = real(method, params)
            if method == "eth_getTransactionByHash":
                return {**answer, "to": "0x" + "fe" * 20}  # same calldata, another contract
            return answer

        monkeypatch.setattr(market.chain, "request", seen_through_a_forwarder)
        indexer_for(engine, market, clock).poll_once()
        ((kind, body),) = events(engine)
        assert kind == "payment.unmatched"
        payment = body["payment"]
        assert (payment["token"], payment["amount"], payment["fee"]) == (
            "0x" + "00" * 20,
            "0",
            "0",
        )

    def test_each_event_of_one_step_shows_the_invoice_as_it_was_then(
        self, engine, market, clock, shop
    ):
        """Paid and confirmed in one step, the invoice's ``invoice.processing`` payload was
        built after the step settled it: ``state: settled`` with a ``settled_at``."""
        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        indexer_for(engine, market, clock).poll_once()
        sent = events(engine)
        assert [t for t, _ in sent] == ["invoice.processing", "invoice.settled"]
        processing, settled = (body["invoice"] for _, body in sent)
        assert (processing["state"], processing["settled_at"]) == ("processing", None)
        assert processing["paid_amount"] == str(AMOUNT)
        assert settled["state"] == "settled"
        assert settled["settled_at"] is not None

    def test_logs_for_router_accounts_not_ours_cost_nothing(
        self, engine, market, clock, shop, monkeypatch
    ):
        """Anyone can register on the router and emit PaymentSettled for a zero-amount pay
        (~35k gas, no token call): each used to cost a transaction lookup inside the step and
        a stored payment nobody could see."""
        stranger, operator, payer = market.chain.dev_accounts()[7:10]
        market.transact(
            market.router.functions.registerMerchant(payer.address, operator.address), stranger
        )
        for number in range(3):
            intent = PaymentIntent(
                merchant=stranger.address,
                token=market.deployment.token,
                amount=0,
                fee=0,
                invoice_id=10_000 + number,
                deadline=2**40,
            )
            typed = payment_intent_typed_data(
                intent, chain_id=market.chain.chain_id, router=market.deployment.router
            )
            r, vs = to_compact(sign_typed_data(typed, PrivateKey(bytes(operator.key))))
            market.pay_signed(intent, r, vs, payer)
        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        asked: list[str] = []
        real = market.chain.request

        def counting(method, params=None):
            asked.append(method)
            return real(method, params)

        monkeypatch.setattr(market.chain, "request", counting)
        result = indexer_for(engine, market, clock).poll_once()
        assert (result.payments, result.settled) == (1, [invoice.id])
        assert "eth_getTransactionByHash" not in asked
        with Session(engine) as session:
            stored = session.exec(select(Payment.merchant_address)).all()
        assert stored == [market.merchant.address]
        assert [t for t, _ in events(engine)] == ["invoice.processing", "invoice.settled"]


class TestEventsOnTester(EventBehaviour):
    backend = "tester"


class TestEventsOnAnvil(EventBehaviour):
    backend = "anvil"
