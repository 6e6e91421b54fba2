"""Hosted checkout: the link a customer opens to pay an invoice from a browser wallet.

The EIP-681 URI can only ask a wallet to approve the router (EIP-681 carries no tuple, and
wallets take no arbitrary call from a QR code), so an invoice also has a checkout link:
``/v1/public/checkout/{invoice_id}.{token}``. ``token`` is :meth:`crm.KeyRing.checkout_token`
of the id (an HMAC: nothing stored, unguessable, verified in constant time). The page hands the
wallet two ready call datas — the token's ``approve`` of the router (skipped when the allowance
covers the amount) and the router's ``pay`` with the merchant's signed intent — so the page's
script needs no cryptography; the indexer then settles the payment like any other.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sqlmodel import Session

from api.settlement import repository as repo
from api.settlement.errors import InvoiceNotFoundError
from api.settlement.invoices import intent_of
from api.settlement.models import Invoice, MerchantAccount
from crm import KeyRing
from wallet.addresses import parse_address
from wallet.errors import SigningError
from wallet.signing import recover_intent_signer
from wallet.tokens import call_data

__all__ = [
    "CheckoutCalls",
    "checkout_calls",
    "checkout_path",
    "open_checkout",
    "signed_by_operator",
]

_PREFIX = "/v1/public/checkout/"


@dataclass(frozen=True, slots=True)
class CheckoutCalls:
    """What the payer's wallet sends: ``approve_data`` to the token, then ``pay_data`` to the
    router (the payer's address, when the intent binds one)."""

    approve_data: str
    pay_data: str
    payer: str | None


def checkout_path(keyring: KeyRing, invoice_id: str) -> str:
    return f"{_PREFIX}{invoice_id}.{keyring.checkout_token(invoice_id)}"


def open_checkout(session: Session, keyring: KeyRing, link: str) -> tuple[Invoice, MerchantAccount]:
    """The invoice (and its router account) a checkout link names; a link whose token is not
    this server's for that id is the same 404 as an unknown invoice."""
    invoice_id, _, token = link.partition(".")
    expected = keyring.checkout_token(invoice_id)
    if not hmac.compare_digest(expected.encode(), token.encode("utf-8", "surrogateescape")):
        raise InvoiceNotFoundError("No such checkout link.", param="link")
    invoice = repo.invoice_by_id(session, invoice_id)
    account = repo.get_account(session, invoice.account_id) if invoice is not None else None
    if invoice is None or account is None:
        raise InvoiceNotFoundError("No such checkout link.", param="link")
    return invoice, account


def checkout_calls(invoice: Invoice, account: MerchantAccount, router: str) -> CheckoutCalls:
    intent = intent_of(invoice, account)
    r, vs = bytes.fromhex(invoice.signature_r[2:]), bytes.fromhex(invoice.signature_vs[2:])
    return CheckoutCalls(
        approve_data=call_data("TestToken", "approve", parse_address(router), invoice.amount),
        pay_data=call_data("PaymentRouter", "pay", intent.as_tuple(), r, vs),
        payer=None if int(intent.payer, 16) == 0 else intent.payer,
    )


def signed_by_operator(invoice: Invoice, account: MerchantAccount, router: str) -> bool:
    """Whether the router would take the invoice's signature now: it recovers the account's
    current operator. After a rotation whose new key this server does not hold, the stored
    signature is the previous operator's, and a ``pay`` would revert (an approve before it
    would spend the customer's gas for nothing)."""
    try:
        signer = recover_intent_signer(
            intent_of(invoice, account),
            bytes.fromhex(invoice.signature_r[2:]),
            bytes.fromhex(invoice.signature_vs[2:]),
            chain_id=invoice.chain_id,
            router=router,
        )
    except (SigningError, ValueError):
        return False
    return signer.lower() == account.operator.lower()
