"""Logs on a router account that was reclaimed (:mod:`api.settlement.account_proof`).

A merchant that recorded an address first (a squatter) loses it to the owner's proof. Its
unpaid invoices are invalidated, but their signed intents stay payable on chain until their
deadline, and every payment to the address reaches the owner's payout. What such a payment
or a refund is after the move, and what a reorg does to a sale the move spared.
"""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from api.settlement import account_proof, invoices
from api.settlement import repository as repo
from api.webhooks import create_endpoint
from api.webhooks.models import WebhookDelivery
from crm import merchants
from crm.audit.models import AuditLog
from crm.merchants.models import MerchantCreate
from tests.settlement.conftest import MarketSuite
from tests.settlement.test_indexer import (
    AMOUNT,
    followups_of,
    indexer_for,
    new_invoice,
    open_shop,
    pay,
    reload,
)
from tests.settlement.test_refunds import refund


def _events_of(engine, merchant_id: int) -> list[str]:
    with Session(engine) as session:
        rows = session.exec(
            select(WebhookDelivery.event_type)
            .where(WebhookDelivery.merchant_id == str(merchant_id))
            .order_by(WebhookDelivery.created_at)
        ).all()
    return list(rows)


def _reclaim(engine, market, clock, *, register: bool) -> int:
    """The owner takes the address (and, with ``register``, records it as its account)."""
    with Session(engine) as session, session.begin():
        owner = merchants.create_merchant(session, MerchantCreate(name="Owner"), clock).id
        assert owner is not None
        create_endpoint(session, str(owner), "https://owner.example/hooks", ["*"])
        account_proof.reclaim_address(
            session, owner, market.chain.chain_id, market.merchant.address, actor="t", clock=clock
        )
        if register:
            invoices.register_account(
                session,
                owner,
                chain_id=market.chain.chain_id,
                address=market.merchant.address,
                payout=market.payout.address,
                operator=market.operator.address,
                clock=clock,
            )
    return owner


class TestAfterAReclaim(MarketSuite):
    @pytest.fixture
    def moved(self, engine, market, clock, keyring):
        squatter = open_shop(engine, market, clock, keyring)
        with Session(engine) as session, session.begin():
            create_endpoint(session, str(squatter.merchant_id), "https://sq.example/h", ["*"])
        theirs = new_invoice(engine, market, squatter, clock, order="s-1")
        owner = _reclaim(engine, market, clock, register=True)
        assert (reload(engine, theirs.id).state, reload(engine, theirs.id).status) == (
            "invalid",
            "marked",
        )
        return squatter, owner, theirs

    def test_a_payment_of_a_former_holders_intent_is_the_owners_unmatched_payment(
        self, engine, market, clock, moved
    ):
        """The money reached the owner's payout; it was held on the squatter's invalidated
        invoice, announced to the squatter (who cannot refund it) and hidden from the owner."""
        squatter, owner, theirs = moved
        pay(engine, market, theirs)  # a customer of the squatter still holds the intent
        indexer_for(engine, market, clock).poll_once()
        with Session(engine) as session:
            owners = session.exec(repo.payments_select(owner)).all()
            squatters = session.exec(repo.payments_select(squatter.merchant_id)).all()
        assert [(p.amount, p.invoice_id) for p in owners] == [(AMOUNT, None)]
        assert squatters == []
        assert reload(engine, theirs.id).paid_amount == 0
        assert "payment.unmatched" in _events_of(engine, owner)
        assert "invoice.payment_held" not in _events_of(engine, squatter.merchant_id)

    def test_the_owners_refund_of_it_is_not_announced_to_the_former_holder(
        self, engine, market, clock, moved
    ):
        squatter, _owner, theirs = moved
        pay(engine, market, theirs)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        refund(market, theirs, AMOUNT)  # only the address's owner can send it
        assert indexer.poll_once().refunds == 1
        assert "invoice.refunded" not in _events_of(engine, squatter.merchant_id)
        assert reload(engine, theirs.id).refunded_amount == 0


class TestReorgAfterAReclaim(MarketSuite):
    def test_a_reorg_does_not_reopen_a_former_holders_spared_sale(
        self, engine, market, clock, keyring
    ):
        """The reclaim spared the squatter's invoice because a payment had reached it; a reorg
        that took the payment away reopened it as ``new``, payable again on the owner's
        address as the squatter's sale (with a follow-up for the squatter's customer). It
        is invalidated now, as the reclaim would have."""
        squatter = open_shop(engine, market, clock, keyring)
        theirs = new_invoice(engine, market, squatter, clock, order="s-1", confirmations=6)
        fork = market.chain.snapshot()
        pay(engine, market, theirs)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        assert reload(engine, theirs.id).state == "processing"
        _reclaim(engine, market, clock, register=False)
        assert reload(engine, theirs.id).state == "processing"  # paid: left to the squatter
        market.chain.revert(fork)
        market.chain.mine(8)
        assert indexer.poll_once().reorged_to is not None
        rolled = reload(engine, theirs.id)
        assert (rolled.state, rolled.status, rolled.paid_amount) == ("invalid", "marked", 0)
        with Session(engine) as session:
            reasons = session.exec(
                select(AuditLog.detail).where(
                    AuditLog.object_id == theirs.id, AuditLog.action == "invoice.mark_invalid"
                )
            ).all()
        assert reasons == [{"reason": "account_reclaimed"}]
        pay(engine, market, theirs)  # its customer pays again: the owner's money, unmatched
        market.chain.mine(8)
        indexer.poll_once()
        assert reload(engine, theirs.id).state == "invalid"
        assert followups_of(engine, squatter.merchant_id) == []

    def test_a_reorged_sale_of_a_merchant_still_holding_its_account_reopens(
        self, engine, market, clock, keyring
    ):
        """The reclaim rule touches only moved accounts: a holder's own sale reorged away is
        open again, as before."""
        shop = open_shop(engine, market, clock, keyring)
        mine = new_invoice(engine, market, shop, clock, confirmations=6)
        fork = market.chain.snapshot()
        pay(engine, market, mine)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        market.chain.revert(fork)
        market.chain.mine(8)
        assert indexer.poll_once().reorged_to is not None
        assert (reload(engine, mine.id).state, reload(engine, mine.id).status) == ("new", "none")
