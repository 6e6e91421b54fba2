"""What the merchant's webhooks are told about settlement beyond the happy path.

A reorg that undoes a payment or refund (``invoice.reorged``: a merchant who shipped on
``invoice.settled`` learns it no longer holds). Before, it was silent.
"""

from __future__ import annotations

import json

import pytest
from sqlmodel import Session, select

from api.webhooks import create_endpoint
from api.webhooks.models import WebhookDelivery
from tests.settlement.conftest import MarketSuite
from tests.settlement.test_indexer import (
    AMOUNT,
    Shop,
    indexer_for,
    new_invoice,
    open_shop,
    pay,
)
from tests.settlement.test_refunds import refund


def events(engine) -> list[tuple[str, dict]]:
    with Session(engine) as session:
        rows = session.exec(select(WebhookDelivery).order_by(WebhookDelivery.created_at)).all()
        return [(d.event_type, json.loads(d.payload)["data"]["object"]) for d in rows]


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


class TestEventsOnTester(EventBehaviour):
    backend = "tester"


class TestEventsOnAnvil(EventBehaviour):
    backend = "anvil"
