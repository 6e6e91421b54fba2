"""Test helpers for the embedded stack: what a developer on ``followpay serve`` cannot do from
outside, since its chain lives inside the process (no JSON-RPC port, like Stripe's test mode
``/v1/test_helpers``).

- :meth:`Sandbox.register_account` gives a merchant a router account: a new key, funded on the
  in-process chain, calls ``registerMerchant(payout, operator)`` with the development operator
  (which the embedded server holds), and the registration is recorded as
  ``POST /v1/merchants/{id}/account`` would.
- :meth:`Sandbox.pay_invoice` pays an invoice's signed intent from a development customer
  account (minting it test tokens first if it is short), with an ERC-2612 permit in the same
  transaction or after an ``approve``; the embedded indexer then settles it as any payment.

Nothing here exists outside the embedded stack: these routes are not mounted on a real node.
"""

from __future__ import annotations

import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import Session

from api.settlement import invoices
from api.settlement import repository as settlement_repo
from api.settlement.errors import (
    AccountExistsError,
    InvoiceStateError,
    MerchantAccountMissingError,
)
from api.settlement.models import Invoice, InvoiceState, MerchantAccount
from crm.clock import Clock
from wallet.chain import Chain
from wallet.deployment import Deployment
from wallet.nonces import NonceLedger
from wallet.secrets import PrivateKey
from wallet.sender import Receipt, Sender
from wallet.signing import Signer
from wallet.tokens import Router, Token

__all__ = ["CUSTOMER_INDEXES", "Sandbox"]

#: Development accounts that pay (0: deployer, 1: demo merchant, 2: operator, 3: payout).
CUSTOMER_INDEXES = range(4, 10)
_GAS_MONEY = 10**18  # wei for a new merchant address's registration


@dataclass
class Sandbox:
    chain: Chain
    deployment: Deployment
    #: nonces of the helpers' senders live as long as the in-process chain: a temporary file
    workdir: tempfile.TemporaryDirectory[str] = field(
        default_factory=lambda: tempfile.TemporaryDirectory(prefix="followpay-sandbox-")
    )
    _senders: dict[str, Sender] = field(default_factory=dict, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    #: one pay at a time: the on-chain check and the payment must not interleave
    _paying: threading.Lock = field(default_factory=threading.Lock, init=False)
    #: merchant id -> the address registered on chain for it: a request whose transaction has
    #: not committed yet (or rolled back) does not make the next one register again
    _registered: dict[int, str] = field(default_factory=dict, init=False)
    _registering: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self._ledger = NonceLedger(Path(self.workdir.name) / "nonces.sqlite3")
        accounts = self.chain.dev_accounts()
        self.owner, self.operator, self.payout = accounts[0], accounts[2], accounts[3]
        self.customers = [accounts[i] for i in CUSTOMER_INDEXES]

    def close(self) -> None:
        self._ledger.close()
        self.workdir.cleanup()

    def _sender(self, key: bytes) -> Sender:
        signer = Signer(PrivateKey(key))
        with self._lock:
            if signer.address not in self._senders:
                self._senders[signer.address] = Sender(self.chain, signer, ledger=self._ledger)
            return self._senders[signer.address]

    def register_account(self, session: Session, merchant_id: int, clock: Clock) -> MerchantAccount:
        """A new merchant address registered on the router with the development operator and
        payout, recorded for ``merchant_id`` (which must not have an account on this chain).

        The chain work is done once per merchant: concurrent requests (a retried one, the same
        Idempotency-Key) each registered a new funded address before any of them committed,
        and all but one stayed on the chain, orphaned. A later request reuses the address."""
        with self._registering:
            if settlement_repo.account_for_merchant(session, merchant_id, self.chain.chain_id):
                raise AccountExistsError(
                    "This merchant already has an account on this chain.", param="merchant_id"
                )
            address = self._registered.get(merchant_id)
            if address is None:
                merchant = self._sender(secrets.token_bytes(32))
                self.chain.fund(merchant.address, _GAS_MONEY)
                Router(self.chain, self.deployment.router).register_merchant(
                    merchant, payout=self.payout.address, operator=self.operator.address
                )
                address = self._registered[merchant_id] = merchant.address
        return invoices.register_account(
            session,
            merchant_id,
            chain_id=self.chain.chain_id,
            address=address,
            payout=self.payout.address,
            operator=self.operator.address,
            clock=clock,
        )

    def pay_invoice(
        self, session: Session, merchant_id: int, invoice_id: str, *, customer: int, permit: bool
    ) -> Receipt:
        """Pay the merchant's open invoice from development account ``customer``.

        The invoice stays ``new`` until the indexer settles it, so the chain is asked too: a
        second pay before then is the same 409 as a settled invoice's, and mints nothing."""
        invoice = invoices.get_invoice(session, merchant_id, invoice_id)
        if invoice.state != InvoiceState.NEW:
            raise InvoiceStateError(
                f"Invoice {invoice_id} is {invoice.state}: only a new invoice is paid.",
                param="id",
            )
        account = settlement_repo.get_account(session, invoice.account_id)
        if account is None:
            raise MerchantAccountMissingError("The invoice's router account is gone.")
        router = Router(self.chain, self.deployment.router)
        with self._paying:
            if router.is_settled(account.address, invoice.number):
                raise InvoiceStateError(
                    f"Invoice {invoice_id} is already paid on chain; the indexer settles it "
                    "shortly.",
                    param="id",
                )
            return self._pay(invoice, account, router, customer=customer, permit=permit)

    def _pay(
        self,
        invoice: Invoice,
        account: MerchantAccount,
        router: Router,
        *,
        customer: int,
        permit: bool,
    ) -> Receipt:
        payer = self._sender(bytes(self.customers[customer - CUSTOMER_INDEXES.start].key))
        token = Token(self.chain, invoice.token)
        if token.balance_of(payer.address) < invoice.amount:
            token.mint(self._sender(bytes(self.owner.key)), payer.address, invoice.amount)
        intent = invoices.intent_of(invoice, account)
        r = bytes.fromhex(invoice.signature_r[2:])
        vs = bytes.fromhex(invoice.signature_vs[2:])
        if permit:
            deadline = int(time.time()) + 3600
            signed = token.sign_permit(payer.signer, router.address, invoice.amount, deadline)
            return router.pay_with_permit(payer, intent, r, vs, signed)  # type: ignore[no-any-return]
        if token.allowance(payer.address, router.address) < invoice.amount:
            token.approve(payer, router.address, invoice.amount)
        return router.pay(payer, intent, r, vs)  # type: ignore[no-any-return]
