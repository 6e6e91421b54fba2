"""A merchant rotates its operator key (``setOperator`` on the router, then the new operator
recorded here). The router checks every intent's signer against the current record, so the
unpaid invoices the previous key signed would revert: they are signed again when this server
holds the new key, and their checkout says payment is unavailable when it does not."""

from __future__ import annotations

import dataclasses

import pytest
from eth_tester.exceptions import TransactionFailed
from eth_utils import keccak
from sqlmodel import Session, select

from api.settlement import invoices
from api.settlement.checkout import checkout_calls, signed_by_operator
from api.settlement.models import Invoice, InvoiceState, MerchantAccount
from tests.settlement.conftest import MarketSuite
from tests.settlement.test_indexer import indexer_for, new_invoice, open_shop, pay, reload
from wallet.secrets import PrivateKey
from wallet.signing import Signer

#: ``InvalidSigner(address merchant, address signer)``'s selector: the router's refusal.
INVALID_SIGNER = keccak(text="InvalidSigner(address,address)")[:4]


def _rotate(engine, market, shop, clock, operator, signer):
    market.transact(market.router.functions.setOperator(operator.address), market.merchant)
    with Session(engine) as session, session.begin():
        invoices.register_account(
            session,
            shop.merchant_id,
            chain_id=market.chain.chain_id,
            address=market.merchant.address,
            payout=market.payout.address,
            operator=operator.address,
            clock=clock,
            signer=signer,
            router=market.deployment.router,
        )


def _payable(engine, market, invoice: Invoice) -> bool:
    with Session(engine) as session:
        stored = session.get(Invoice, invoice.id)
        assert stored is not None
        account = session.get(MerchantAccount, stored.account_id)
        assert account is not None
        return signed_by_operator(stored, account, market.deployment.router)


class TestOperatorRotation(MarketSuite):
    backend = "tester"

    @pytest.fixture
    def shop(self, engine, market, clock, keyring):
        return open_shop(engine, market, clock, keyring)

    def test_unpaid_invoices_are_signed_again_and_still_pay(self, engine, market, clock, shop):
        """Before: the rotation left the old signature, and the checkout's ``pay`` reverted
        with ``InvalidSigner`` (after the customer's approve had spent gas)."""
        invoice = new_invoice(engine, market, shop, clock)
        expired = new_invoice(engine, market, shop, clock, order="order-2")
        paid = new_invoice(engine, market, shop, clock, order="order-3")
        pay(engine, market, paid)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        assert reload(engine, paid.id).state != InvoiceState.NEW
        old_signature = reload(engine, paid.id).signature_r
        with Session(engine) as session, session.begin():
            session.get(Invoice, expired.id).state = InvoiceState.EXPIRED  # late window open
        new_operator = market.payers[3]
        _rotate(
            engine, market, shop, clock, new_operator, Signer(PrivateKey(bytes(new_operator.key)))
        )
        assert _payable(engine, market, invoice)
        assert _payable(engine, market, expired)
        assert reload(engine, paid.id).signature_r == old_signature  # a paid one is left alone
        fresh = reload(engine, invoice.id)
        assert fresh.intent_hash == invoice.intent_hash  # the same intent, a new signature
        assert fresh.signature_r != invoice.signature_r
        receipt = pay(engine, market, fresh, payer=market.payers[1])
        assert receipt["status"] == 1
        indexer.poll_once()
        assert reload(engine, invoice.id).state != InvoiceState.NEW

    def test_without_the_new_key_the_checkout_offers_no_payment(self, engine, market, clock, shop):
        invoice = new_invoice(engine, market, shop, clock)
        assert _payable(engine, market, invoice)
        _rotate(engine, market, shop, clock, market.payers[3], None)
        assert not _payable(engine, market, invoice)
        with Session(engine) as session:
            stored = session.get(Invoice, invoice.id)
            account = session.get(MerchantAccount, stored.account_id)
            calls = checkout_calls(stored, account, market.deployment.router)
        market.transact(
            market.token.functions.approve(market.deployment.router, invoice.amount),
            market.payers[1],
        )
        call = {"from": market.payers[1].address, "to": market.deployment.router}
        with market.chain.lock, pytest.raises(TransactionFailed) as refused:
            market.chain.w3.eth.call({**call, "data": calls.pay_data})  # what the page sent
        assert repr(INVALID_SIGNER)[2:-1] in str(refused.value)  # the revert data's selector

    def test_a_create_that_read_the_old_operator_stores_nothing(self, engine, market, clock, shop):
        """The API reads the account from its one-second cache (or just before a rotation
        commits) and signs with the operator it read. The rotation signs again only the
        invoices it sees, and the insert only checked that the account was still the
        merchant's: an invoice signed by the replaced key was stored, unpayable for good. Now
        the insert also requires the signer to be the account's operator, and the create is
        refused with a retry."""
        from api.settlement import repository as repo
        from api.settlement.errors import MerchantAccountMissingError

        with Session(engine) as session:
            stale = repo.account_row(session, shop.merchant_id, market.chain.chain_id)
        new_operator = market.payers[3]
        _rotate(
            engine, market, shop, clock, new_operator, Signer(PrivateKey(bytes(new_operator.key)))
        )
        request = invoices.InvoiceRequest(
            merchant_id=shop.merchant_id,
            token=market.deployment.token,
            amount=1_000_000,
            order_id="order-late",
        )
        with (
            pytest.raises(MerchantAccountMissingError, match="operator changed") as refused,
            Session(engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            invoices.create_invoice(
                session,
                request,
                chain_id=market.chain.chain_id,
                router=market.deployment.router,
                signer=shop.signer,  # the replaced operator's key, as the stale account says
                clock=clock,
                account=stale,
            )
        assert refused.value.param == "operator"
        with Session(engine) as session:
            assert session.exec(select(Invoice).where(Invoice.order_id == "order-late")).all() == []
        rotated = dataclasses.replace(shop, signer=Signer(PrivateKey(bytes(new_operator.key))))
        retried = new_invoice(engine, market, rotated, clock, order="order-late")
        assert _payable(engine, market, retried)
