"""Real chain reorganisations on anvil (``anvil_reorg``), not snapshots reverted under the indexer.

``anvil_reorg(depth, [(tx, block offset)])`` replaces the last ``depth`` blocks with new ones at
the same heights (different hashes), holding only the transactions it is given.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from api.settlement import invoices
from api.settlement.models import InvoiceState, Payment, PaymentState
from tests.settlement.conftest import MarketSuite
from tests.settlement.test_indexer import (
    AMOUNT,
    followups_of,
    indexer_for,
    new_invoice,
    open_shop,
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
