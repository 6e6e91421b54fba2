"""Staff invalidating a settled invoice (BTCPay's "mark invalid"): the sale is not followed up."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from api.settlement import invoices
from crm.followups.models import FollowUpEvent
from tests.settlement.conftest import MarketSuite
from tests.settlement.test_indexer import (
    followups_of,
    indexer_for,
    new_invoice,
    open_shop,
    pay,
    reload,
)


class TestInvalidatingASettledInvoice(MarketSuite):
    @pytest.fixture
    def shop(self, engine, market, clock, keyring):
        return open_shop(engine, market, clock, keyring)

    def _settled(self, engine, market, clock, shop, order):
        invoice = new_invoice(engine, market, shop, clock, order=order)
        pay(engine, market, invoice)
        return invoice

    def _mark_invalid(self, engine, shop, invoice, clock):
        with Session(engine) as session, session.begin():
            invoices.mark_invoice(
                session, shop.merchant_id, invoice.id, settle=False, actor="staff", clock=clock
            )

    def test_cancels_its_unsent_followup_and_leaves_other_sales_alone(
        self, engine, market, clock, shop
    ):
        first = self._settled(engine, market, clock, shop, "order-1")
        second = self._settled(engine, market, clock, shop, "order-2")
        indexer_for(engine, market, clock).poll_once()
        before = {f.invoice_ref: f.state for f in followups_of(engine, shop.merchant_id)}
        assert before[first.id] == "scheduled"  # the second is frequency-capped: suppressed

        self._mark_invalid(engine, shop, first, clock)

        assert (reload(engine, first.id).state, reload(engine, first.id).status) == (
            "invalid",
            "marked",
        )
        by_invoice = {f.invoice_ref: f for f in followups_of(engine, shop.merchant_id)}
        assert (by_invoice[first.id].state, by_invoice[first.id].reason) == (
            "cancelled",
            "invoice_invalidated",
        )
        assert by_invoice[second.id].state == before[second.id]  # the other sale is untouched
        with Session(engine) as session:
            reasons = session.exec(
                select(FollowUpEvent.reason).where(
                    FollowUpEvent.followup_id == by_invoice[first.id].id
                )
            ).all()
        assert reasons[-1] == "invoice_invalidated"
        # the indexer stepping again does not bring it back
        indexer_for(engine, market, clock).poll_once()
        assert reload(engine, first.id).state == "invalid"
        states = {f.invoice_ref: f.state for f in followups_of(engine, shop.merchant_id)}
        assert states == {first.id: "cancelled", second.id: before[second.id]}

    def test_an_invoice_invalidated_before_payment_has_nothing_to_cancel(
        self, engine, market, clock, shop
    ):
        invoice = new_invoice(engine, market, shop, clock)
        self._mark_invalid(engine, shop, invoice, clock)
        assert followups_of(engine, shop.merchant_id) == []
        assert reload(engine, invoice.id).state == "invalid"
