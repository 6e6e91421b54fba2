"""Staff marking an invoice settled (paid outside the router) is refused where it would be wrong:
while a payment confirms on chain (the mark turned that genuine payment into a "held" second
one, and its customer was never followed up), once the invoice is refunded in full, and when
a create for the same order commits between the open-order check and the write (a 500)."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from api.settlement import repository as repo
from api.settlement.errors import InvoiceStateError
from crm.audit.models import AuditLog
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
from tests.settlement.test_settlement_events import mark


def audit_actions(engine, invoice) -> list[str]:
    with Session(engine) as session:
        return list(
            session.exec(select(AuditLog.action).where(AuditLog.object_id == invoice.id)).all()
        )


class TestMarkingSettled(MarketSuite):
    @pytest.fixture
    def shop(self, engine, market, clock, keyring):
        return open_shop(engine, market, clock, keyring)

    def test_is_refused_while_a_payment_confirms_and_the_chain_settles_it(
        self, engine, market, clock, shop
    ):
        invoice = new_invoice(engine, market, shop, clock, confirmations=2)
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        assert reload(engine, invoice.id).state == "processing"
        with pytest.raises(InvoiceStateError, match="confirming on chain"):
            mark(engine, shop, invoice, clock, settle=True)
        assert audit_actions(engine, invoice) == []
        market.chain.mine(1)
        assert indexer.poll_once().settled == [invoice.id]
        after = reload(engine, invoice.id)
        assert (after.state, after.status, after.paid_amount) == ("settled", "none", AMOUNT)
        assert len(followups_of(engine, shop.merchant_id)) == 1

    def test_is_refused_once_the_invoice_is_refunded_in_full(self, engine, market, clock, shop):
        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        assert indexer.poll_once().settled == [invoice.id]
        refund(market, invoice, invoice.amount)
        indexer.poll_once()
        mark(engine, shop, invoice, clock, settle=False)
        with pytest.raises(InvoiceStateError, match="refunded in full"):
            mark(engine, shop, invoice, clock, settle=True)
        after = reload(engine, invoice.id)
        assert (after.state, after.refunded_amount) == ("invalid", invoice.amount)
        assert audit_actions(engine, invoice) == ["invoice.mark_invalid"]

    def test_a_create_for_the_order_that_wins_the_race_is_a_conflict_not_a_500(
        self, engine, market, clock, shop, monkeypatch
    ):
        """The check for another open invoice of the order passed; a create for that order
        committed before the mark's write: the open-order index refuses the write, and the
        mark is the same 409 the check gives, leaving the invoice as it was."""
        first = new_invoice(engine, market, shop, clock, order="o-race")
        mark(engine, shop, first, clock, settle=False)
        second = new_invoice(engine, market, shop, clock, order="o-race")
        monkeypatch.setattr(repo, "open_invoice_for_order", lambda *_a, **_k: None)
        with pytest.raises(InvoiceStateError, match="another open invoice"):
            mark(engine, shop, first, clock, settle=True)
        assert reload(engine, first.id).state == "invalid"
        assert reload(engine, second.id).state == "new"
        assert audit_actions(engine, first) == ["invoice.mark_invalid"]
