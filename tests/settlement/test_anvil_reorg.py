"""Real chain reorganisations on anvil (``anvil_reorg``), not snapshots reverted under the indexer.

``anvil_reorg(depth, [(tx, block offset)])`` replaces the last ``depth`` blocks with new ones at
the same heights (different hashes), holding only the transactions it is given.
"""

from __future__ import annotations

import pytest
from sqlmodel import Session, col, func, select

from api.settlement import invoices
from api.settlement.models import IndexerCursor, InvoiceState, Payment, PaymentState
from crm.errors import FeedbackPaymentReversed
from crm.feedback import service as feedback
from crm.feedback.models import FeedbackCreate
from crm.followups import dispatch as followups_dispatch
from crm.followups.models import Purchase
from crm.rewards import service as rewards
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


def _signed_pay(engine, market, invoice, payer) -> bytes:
    """Approve (mined), then sign the ``pay`` transaction without sending it."""
    with Session(engine) as session:
        account = session.get(invoices.MerchantAccount, invoice.account_id)
        intent = invoices.intent_of(invoice, account)
    r, vs = bytes.fromhex(invoice.signature_r[2:]), bytes.fromhex(invoice.signature_vs[2:])
    market.transact(market.token.functions.approve(market.deployment.router, AMOUNT), payer)
    w3 = market.chain.w3
    tx = market.router.functions.pay(intent.as_tuple(), r, vs).build_transaction(
        {
            "from": payer.address,
            "nonce": w3.eth.get_transaction_count(payer.address),
            "gas": 300_000,
        }
    )
    return bytes(payer.sign_transaction(tx).raw_transaction)


def _payments(engine) -> list[Payment]:
    with Session(engine, expire_on_commit=False) as session:
        return list(session.exec(select(Payment).order_by(col(Payment.id))))


def _purchases(engine) -> list[Purchase]:
    with Session(engine, expire_on_commit=False) as session:
        return list(session.exec(select(Purchase).order_by(col(Purchase.id))))


def _cursor_block(engine) -> int:
    with Session(engine) as session:
        return session.exec(select(IndexerCursor.last_block)).one()


def _settled_on_chain(market, invoice) -> bool:
    return bool(market.router.functions.isSettled(market.merchant.address, invoice.number).call())


class TestAnvilReorg(MarketSuite):
    backend = "anvil"

    def test_reorg_dropping_the_payment_rolls_back_and_cancels_the_followup(
        self, engine, market, clock, keyring
    ):
        shop = open_shop(engine, market, clock, keyring)
        invoice = new_invoice(engine, market, shop, clock, confirmations=1)
        raw = _signed_pay(engine, market, invoice, market.payers[0])
        tx_hash = market.chain.w3.eth.send_raw_transaction(raw)
        receipt = market.chain.w3.eth.wait_for_transaction_receipt(tx_hash)
        assert receipt["status"] == 1
        indexer = indexer_for(engine, market, clock)
        assert indexer.poll_once().settled == [invoice.id]
        assert [f.state for f in followups_of(engine, shop.merchant_id)] == ["scheduled"]
        head = market.chain.w3.eth.block_number
        assert head == receipt["blockNumber"]

        market.chain.request("anvil_reorg", [1, []])  # the payment's block is replaced

        assert market.chain.w3.eth.block_number == head
        assert market.chain.w3.eth.get_block(head)["hash"] != receipt["blockHash"]
        result = indexer.poll_once()
        # the only stored block was replaced: the indexer rewinds below it and reads again
        assert result.reorged_to is not None
        assert result.reorged_to < receipt["blockNumber"]
        assert result.to_block == head
        rolled = reload(engine, invoice.id)
        assert (rolled.state, rolled.paid_amount, rolled.settled_at) == (InvoiceState.NEW, 0, None)
        [followup] = followups_of(engine, shop.merchant_id)
        assert (followup.state, followup.reason) == ("cancelled", "chain_reorg")
        assert [p.state for p in _payments(engine)] == [PaymentState.REORGED]
        # on the new chain the invoice is unpaid, so the customer can pay it again
        assert not market.router.functions.isSettled(market.merchant.address, invoice.number).call()
        assert indexer.poll_once().settled == []

    def test_payment_re_mined_in_another_block_settles_once_more_with_a_new_followup(
        self, engine, market, clock, keyring
    ):
        shop = open_shop(engine, market, clock, keyring)
        invoice = new_invoice(engine, market, shop, clock, confirmations=1)
        raw = _signed_pay(engine, market, invoice, market.payers[1])
        w3 = market.chain.w3
        first = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(raw))
        market.chain.mine(1)
        indexer = indexer_for(engine, market, clock)
        assert indexer.poll_once().settled == [invoice.id]

        # replace the last two blocks; the same transaction lands in the second new block
        market.chain.request("anvil_reorg", [2, [["0x" + raw.hex(), 1]]])

        second = w3.eth.get_transaction_receipt(first["transactionHash"])
        assert second["blockNumber"] == first["blockNumber"] + 1
        result = indexer.poll_once()
        assert result.reorged_to is not None
        assert result.settled == [invoice.id]
        settled = reload(engine, invoice.id)
        assert (settled.state, settled.paid_amount) == (InvoiceState.SETTLED, AMOUNT)
        old, new = _payments(engine)
        assert old.tx_hash == new.tx_hash
        assert (old.state, old.block_hash) == (
            PaymentState.REORGED,
            "0x" + first["blockHash"].hex(),
        )
        assert (new.state, new.block_hash) == (
            PaymentState.CONFIRMED,
            "0x" + second["blockHash"].hex(),
        )
        states = sorted(f.state for f in followups_of(engine, shop.merchant_id))
        assert states == ["cancelled", "scheduled"]

    def test_a_sale_surveyed_before_a_reorg_is_not_rated_while_reversed_nor_surveyed_twice(
        self, engine, market, clock, keyring
    ):
        """The follow-up went out, then a reorg dropped the payment: its link refuses (nothing
        written, no reward) while the sale is off chain. The chain takes the payment again: no
        second survey of the same sale, and the first link rates and rewards once."""
        shop = open_shop(engine, market, clock, keyring)
        invoice = new_invoice(engine, market, shop, clock, confirmations=1)
        raw = _signed_pay(engine, market, invoice, market.payers[2])
        w3 = market.chain.w3
        w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(raw))
        indexer = indexer_for(engine, market, clock)
        assert indexer.poll_once().settled == [invoice.id]
        [scheduled] = followups_of(engine, shop.merchant_id)
        with Session(engine) as session, session.begin():
            [fid] = followups_dispatch.claim_due(session, scheduled.due_at, 10, "w1")
            sent = followups_dispatch.prepare_send(
                session, fid, scheduled.due_at, keyring, worker_id="w1"
            )
            assert sent is not None
            followups_dispatch.mark_sent(session, fid, scheduled.due_at, worker_id="w1")

        def rate(session):
            rating = FeedbackCreate(rating=5)
            return feedback.submit_feedback(
                session, shop.merchant_id, sent.token, rating, keyring=keyring, clock=clock
            )

        market.chain.request("anvil_reorg", [1, []])  # the payment is gone
        assert indexer.poll_once().reorged_to is not None
        assert [p.cancelled_at is not None for p in _purchases(engine)] == [True]
        with Session(engine) as session, session.begin():
            with pytest.raises(FeedbackPaymentReversed):
                rate(session)
            assert rewards.balance(session, shop.merchant_id, shop.contact_id) == 0

        w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(raw))  # mined again
        assert indexer.poll_once().settled == [invoice.id]
        assert [p.cancelled_at is None for p in _purchases(engine)] == [False, True]
        assert [(f.id, f.state) for f in followups_of(engine, shop.merchant_id)] == [(fid, "sent")]
        with Session(engine) as session, session.begin():
            answer = rate(session)
            assert answer.reward_points > 0
            assert rewards.balance(session, shop.merchant_id, shop.contact_id) == (
                answer.reward_points
            )

    def test_reorg_below_six_confirmations_unwinds_a_pending_payment_and_repaying_settles_once(
        self, engine, market, clock, keyring
    ):
        """Depth 6: the payment has 3 of its 6 confirmations when its block is replaced. It
        never settled, so nothing was scheduled; afterwards the invoice is ``new`` again and
        a second payment settles it exactly once, after its own 6 confirmations."""
        shop = open_shop(engine, market, clock, keyring)
        invoice = new_invoice(engine, market, shop, clock, confirmations=6)
        indexer = indexer_for(engine, market, clock)
        below = indexer.poll_once().to_block  # a stored block the reorg leaves in place
        w3 = market.chain.w3
        raw = _signed_pay(engine, market, invoice, market.payers[0])
        receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(raw))
        market.chain.mine(2)  # 3 confirmations of 6
        head = w3.eth.block_number
        assert head == receipt["blockNumber"] + 2

        step = indexer.poll_once()
        assert (step.payments, step.settled) == (1, [])
        waiting = reload(engine, invoice.id)
        assert (waiting.state, waiting.paid_amount, waiting.settled_at) == (
            InvoiceState.PROCESSING,
            AMOUNT,
            None,
        )
        assert [p.state for p in _payments(engine)] == [PaymentState.PENDING]
        assert followups_of(engine, shop.merchant_id) == []
        assert _purchases(engine) == []
        assert _cursor_block(engine) == head

        market.chain.request("anvil_reorg", [3, []])  # the payment's block and the 2 above it

        assert w3.eth.block_number == head
        assert w3.eth.get_block(receipt["blockNumber"])["hash"] != receipt["blockHash"]
        assert not _settled_on_chain(market, invoice)
        result = indexer.poll_once()
        assert result.reorged_to is not None
        assert below <= result.reorged_to < receipt["blockNumber"]
        assert (result.payments, result.settled, result.to_block) == (0, [], head)
        assert _cursor_block(engine) == head
        rolled = reload(engine, invoice.id)
        assert (rolled.state, rolled.paid_amount, rolled.settled_at) == (
            InvoiceState.NEW,
            0,
            None,
        )
        [gone] = _payments(engine)
        assert (gone.state, gone.block_hash) == (
            PaymentState.REORGED,
            "0x" + receipt["blockHash"].hex(),
        )
        assert followups_of(engine, shop.merchant_id) == []
        assert _purchases(engine) == []
        market.chain.mine(6)  # the orphaned payment's old height gains depth: still nothing
        assert indexer.poll_once().settled == []
        assert reload(engine, invoice.id).state == InvoiceState.NEW

        repaid = pay(engine, market, invoice, market.payers[0])
        market.chain.mine(4)  # 5 confirmations of 6
        assert indexer.poll_once().settled == []
        assert reload(engine, invoice.id).state == InvoiceState.PROCESSING
        assert followups_of(engine, shop.merchant_id) == []
        market.chain.mine(1)
        settled_by = [indexer.poll_once().settled for _ in range(2)]
        assert settled_by == [[invoice.id], []]
        settled = reload(engine, invoice.id)
        assert (settled.state, settled.paid_amount) == (InvoiceState.SETTLED, AMOUNT)
        old, new = _payments(engine)
        assert old.state == PaymentState.REORGED
        assert (new.state, new.tx_hash) == (
            PaymentState.CONFIRMED,
            "0x" + repaid["transactionHash"].hex(),
        )
        [followup] = followups_of(engine, shop.merchant_id)
        assert (followup.state, followup.invoice_ref) == ("scheduled", invoice.id)
        [purchase] = _purchases(engine)
        assert (purchase.amount_minor, purchase.cancelled_at) == (AMOUNT, None)

    def test_reorg_of_a_payment_that_had_its_six_confirmations_rolls_the_settlement_back(
        self, engine, market, clock, keyring
    ):
        """The other side of the depth: 6 of 6 confirmations, settled and followed up, then
        all 6 blocks are replaced. The settlement, its purchase and follow-up are undone; a
        second payment settles once, with a follow-up of its own."""
        shop = open_shop(engine, market, clock, keyring)
        invoice = new_invoice(engine, market, shop, clock, confirmations=6)
        indexer = indexer_for(engine, market, clock)
        w3 = market.chain.w3
        raw = _signed_pay(engine, market, invoice, market.payers[1])
        receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(raw))
        market.chain.mine(5)
        assert indexer.poll_once().settled == [invoice.id]
        assert [f.state for f in followups_of(engine, shop.merchant_id)] == ["scheduled"]

        market.chain.request("anvil_reorg", [6, []])

        assert w3.eth.get_block(receipt["blockNumber"])["hash"] != receipt["blockHash"]
        result = indexer.poll_once()
        assert result.reorged_to is not None
        assert result.reorged_to < receipt["blockNumber"]
        assert result.settled == []
        rolled = reload(engine, invoice.id)
        assert (rolled.state, rolled.paid_amount, rolled.settled_at) == (
            InvoiceState.NEW,
            0,
            None,
        )
        assert [p.state for p in _payments(engine)] == [PaymentState.REORGED]
        [followup] = followups_of(engine, shop.merchant_id)
        assert (followup.state, followup.reason) == ("cancelled", "chain_reorg")
        [purchase] = _purchases(engine)
        assert purchase.cancel_reason == "chain_reorg"

        pay(engine, market, invoice, market.payers[1])
        market.chain.mine(5)
        assert [indexer.poll_once().settled for _ in range(2)] == [[invoice.id], []]
        assert reload(engine, invoice.id).state == InvoiceState.SETTLED
        states = sorted(f.state for f in followups_of(engine, shop.merchant_id))
        assert states == ["cancelled", "scheduled"]
        with Session(engine) as session:
            live = (
                select(func.count())
                .select_from(Purchase)
                .where(col(Purchase.cancelled_at).is_(None))
            )
            assert session.exec(live).one() == 1
