"""Refunds on chain and what the invoice shows.

The router refunds under an intent the merchant's operator signs again at refund time, so a
refund may name another token or a larger amount than the invoice's. Only a refund in the
invoice's token counts toward its ``refunded_amount``, which follows the router's running total
(``PaymentRefunded.totalRefunded``, less refunds in other tokens) and never shows more than was
paid. Before, every refund's amount was added, in any token and any amount.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

import pytest
from sqlmodel import Session, select

from api.settlement.invoices import expire_due
from api.settlement.models import Refund
from api.webhooks import create_endpoint
from api.webhooks.models import WebhookDelivery
from contracts import load_artifact
from crm.followups.models import Purchase
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
from wallet.secrets import PrivateKey
from wallet.signing import (
    PaymentIntent,
    payment_intent_typed_data,
    sign_typed_data,
    to_compact,
)


def refund(market, invoice, amount, *, token=None, signed_amount=None):
    """The merchant refunds ``amount`` of ``invoice`` to its payer under the invoice's intent,
    re-signed with ``token`` and ``signed_amount`` when given (as the router allows)."""
    intent = PaymentIntent(
        merchant=market.merchant.address,
        token=invoice.token,
        amount=invoice.amount,
        fee=invoice.fee,
        invoice_id=invoice.number,
        payer=invoice.payer,
        deadline=invoice.deadline,
    )
    intent = dataclasses.replace(
        intent,
        token=token.address if token is not None else intent.token,
        amount=signed_amount if signed_amount is not None else intent.amount,
    )
    typed = payment_intent_typed_data(
        intent, chain_id=market.chain.chain_id, router=market.deployment.router
    )
    r, vs = to_compact(sign_typed_data(typed, PrivateKey(bytes(market.operator.key))))
    contract = token if token is not None else market.token
    market.transact(contract.functions.mint(market.merchant.address, amount), market.owner)
    market.transact(contract.functions.approve(market.deployment.router, amount), market.merchant)
    return market.transact(
        market.router.functions.refund(intent.as_tuple(), r, vs, market.payers[0].address, amount),
        market.merchant,
    )


def other_token(market):
    """A second ERC-20 the merchant can refund in (the router accepts any signed token)."""
    artifact = load_artifact("TestToken")
    w3 = market.chain.w3
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    with market.chain.lock:
        sent = factory.constructor(market.owner.address).transact({"from": market.owner.address})
        address = w3.eth.wait_for_transaction_receipt(sent)["contractAddress"]
    return w3.eth.contract(address=address, abi=artifact.abi)


def refunds(engine) -> list[Refund]:
    with Session(engine, expire_on_commit=False) as session:
        return list(session.exec(select(Refund).order_by(Refund.block_number, Refund.log_index)))


def events(engine) -> list[tuple[str, dict]]:
    with Session(engine) as session:
        rows = session.exec(select(WebhookDelivery).order_by(WebhookDelivery.created_at)).all()
        return [(d.event_type, json.loads(d.payload)["data"]["object"]) for d in rows]


class RefundBehaviour(MarketSuite):
    @pytest.fixture
    def shop(self, engine, market, clock, keyring) -> Shop:
        shop = open_shop(engine, market, clock, keyring)
        with Session(engine) as session, session.begin():
            create_endpoint(session, str(shop.merchant_id), "https://s.example/h", ["*"])
        return shop

    @pytest.fixture
    def paid(self, engine, market, clock, shop):
        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        assert indexer.poll_once().settled == [invoice.id]
        return invoice, indexer

    def test_a_refund_in_another_token_is_recorded_not_credited(self, engine, market, paid):
        invoice, indexer = paid
        token = other_token(market)
        refund(market, invoice, 4 * AMOUNT, token=token, signed_amount=4 * AMOUNT)
        assert indexer.poll_once().refunds == 1
        after = reload(engine, invoice.id)
        assert (after.state, after.status, after.refunded_amount) == ("settled", "none", 0)
        (stored,) = refunds(engine)
        assert (stored.invoice_id, stored.token, stored.amount) == (
            invoice.id,
            token.address,
            4 * AMOUNT,
        )
        assert (stored.credited, stored.total_refunded) == (False, 4 * AMOUNT)
        held = [(t, o) for t, o in events(engine) if t.startswith("invoice.refund")]
        assert [t for t, _ in held] == ["invoice.refund_unmatched"]
        evidence = held[0][1]["chain_evidence"]
        assert (evidence["token"], evidence["amount"], evidence["credited"]) == (
            token.address,
            str(4 * AMOUNT),
            False,
        )

    def test_a_refund_larger_than_the_payment_shows_what_was_paid(self, engine, market, paid):
        """A re-signed intent with a larger amount lets the router refund more than the
        invoice took: the row keeps the real figures, the invoice shows the payment."""
        invoice, indexer = paid
        refund(market, invoice, 3 * AMOUNT, signed_amount=3 * AMOUNT)
        indexer.poll_once()
        after = reload(engine, invoice.id)
        assert (after.paid_amount, after.refunded_amount, after.status) == (
            AMOUNT,
            AMOUNT,
            "refunded",
        )
        (stored,) = refunds(engine)
        assert (stored.amount, stored.total_refunded, stored.credited) == (
            3 * AMOUNT,
            3 * AMOUNT,
            True,
        )
        assert [t for t, _ in events(engine)][-1] == "invoice.refunded"

    def test_the_running_total_counts_only_the_invoices_token(self, engine, market, paid):
        """Partial refunds in the invoice's token around one in another token (the router's
        total counts all three): the invoice shows the first and the last."""
        invoice, indexer = paid
        refund(market, invoice, 5_000_000)
        indexer.poll_once()
        assert reload(engine, invoice.id).refunded_amount == 5_000_000
        refund(market, invoice, 1_000_000, token=other_token(market))
        refund(market, invoice, 2_000_000)
        indexer.poll_once()  # both in one range
        after = reload(engine, invoice.id)
        assert (after.refunded_amount, after.status) == (7_000_000, "partially_refunded")
        assert [r.total_refunded for r in refunds(engine)] == [5_000_000, 6_000_000, 8_000_000]
        assert [r.credited for r in refunds(engine)] == [True, False, True]

    def test_refunds_reorged_away_leave_what_the_remaining_ones_say(self, engine, market, paid):
        invoice, indexer = paid
        refund(market, invoice, 5_000_000)
        refund(market, invoice, 1_000_000, token=other_token(market))
        indexer.poll_once()
        fork = market.chain.snapshot()
        refund(market, invoice, 2_000_000)
        indexer.poll_once()
        assert reload(engine, invoice.id).refunded_amount == 7_000_000
        market.chain.revert(fork)
        market.chain.mine(4)
        assert indexer.poll_once().reorged_to is not None
        after = reload(engine, invoice.id)
        assert (after.refunded_amount, after.status) == (5_000_000, "partially_refunded")
        assert [r.reorged for r in refunds(engine)] == [False, False, True]

    def test_a_payment_refunded_in_full_while_confirming_asks_the_customer_nothing(
        self, engine, market, clock, shop
    ):
        """Refunded before it reached its depth (an order cancelled at once), the payment still
        settles the invoice — the money moved — but nobody is surveyed about a sale that
        did not happen: no purchase, no follow-up."""
        invoice = new_invoice(engine, market, shop, clock, confirmations=6)
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        assert indexer.poll_once().settled == []
        assert reload(engine, invoice.id).state == "processing"
        refund(market, invoice, invoice.amount)
        indexer.poll_once()
        market.chain.mine(8)
        assert indexer.poll_once().settled == [invoice.id]
        after = reload(engine, invoice.id)
        assert (after.state, after.status, after.refunded_amount) == (
            "settled",
            "refunded",
            invoice.amount,
        )
        assert followups_of(engine, shop.merchant_id) == []
        with Session(engine) as session:
            assert session.exec(select(Purchase)).all() == []

    def test_a_partial_refund_while_confirming_still_follows_up(self, engine, market, clock, shop):
        invoice = new_invoice(engine, market, shop, clock, confirmations=6)
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        refund(market, invoice, invoice.amount // 2)
        market.chain.mine(8)
        assert indexer.poll_once().settled == [invoice.id]
        assert reload(engine, invoice.id).status == "partially_refunded"
        assert len(followups_of(engine, shop.merchant_id)) == 1

    def test_a_full_refund_reorged_away_brings_back_the_purchase_and_its_follow_up(
        self, engine, market, clock, shop
    ):
        """Refunded in full while confirming, the sale got no purchase and no follow-up. A
        reorg then drops the refund and keeps the payment: the sale stands, and it is
        recorded and followed up now, once (another step schedules nothing more)."""
        invoice = new_invoice(engine, market, shop, clock, confirmations=6)
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        assert indexer.poll_once().settled == []
        fork = market.chain.snapshot()  # the payment's block stays canonical
        refund(market, invoice, invoice.amount)
        market.chain.mine(8)
        assert indexer.poll_once().settled == [invoice.id]
        assert followups_of(engine, shop.merchant_id) == []
        market.chain.revert(fork)
        market.chain.mine(12)
        assert indexer.poll_once().reorged_to is not None
        indexer.poll_once()
        after = reload(engine, invoice.id)
        assert (after.state, after.status, after.refunded_amount) == ("settled", "none", 0)
        with Session(engine) as session:
            (purchase,) = session.exec(select(Purchase)).all()
        assert (purchase.invoice_ref, purchase.amount_minor) == (invoice.id, invoice.amount)
        assert [f.state for f in followups_of(engine, shop.merchant_id)] == ["scheduled"]

    def test_a_refund_reorged_away_after_the_sale_was_followed_up_schedules_nothing_more(
        self, engine, market, paid, shop
    ):
        invoice, indexer = paid
        fork = market.chain.snapshot()
        refund(market, invoice, invoice.amount)
        indexer.poll_once()
        assert reload(engine, invoice.id).status == "refunded"
        market.chain.revert(fork)
        market.chain.mine(4)
        assert indexer.poll_once().reorged_to is not None
        assert reload(engine, invoice.id).status == "none"
        assert len(followups_of(engine, shop.merchant_id)) == 1
        with Session(engine) as session:
            assert len(session.exec(select(Purchase)).all()) == 1

    def test_a_held_late_payment_stays_paid_late_when_a_refund_is_reorged_away(
        self, engine, market, clock, shop
    ):
        """A late payment held (its order has a new invoice) is ``paid_late`` on sight, before
        its depth. A refund reorged away re-derived the status from confirmed late payments
        only: the invoice read ``expired``, ``none``, fully paid, as if nobody had paid."""
        first = new_invoice(
            engine, market, shop, clock, expires=timedelta(minutes=1), confirmations=6
        )
        clock.advance(timedelta(minutes=5))
        market.chain.increase_time(int((clock.now() - first.created_at).total_seconds()) + 600)
        with Session(engine) as session, session.begin():
            expire_due(session, clock)
        new_invoice(engine, market, shop, clock)  # the order's new open invoice
        pay(engine, market, first)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        held = reload(engine, first.id)
        assert (held.state, held.status) == ("expired", "paid_late")
        fork = market.chain.snapshot()
        refund(market, first, 1_000_000)
        indexer.poll_once()
        assert reload(engine, first.id).status == "partially_refunded"
        market.chain.revert(fork)
        market.chain.mine(2)
        assert indexer.poll_once().reorged_to is not None
        after = reload(engine, first.id)
        assert (after.state, after.status, after.refunded_amount) == ("expired", "paid_late", 0)


class TestRefundsOnTester(RefundBehaviour):
    backend = "tester"


class TestRefundsOnAnvil(RefundBehaviour):
    backend = "anvil"
