"""Invoice rules: creation (signed EIP-712 intent, EIP-681 URI, QR), expiry, manual marking.

The on-chain ``deadline`` is the invoice expiry plus a late-payment window (default 1 h): a
customer whose transaction lands just after expiry still pays, and the indexer settles the
invoice as ``paid_late`` instead of leaving money unmatched (BTCPay's most common complaint).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import segno
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from api.settlement import repository as repo
from api.settlement.errors import (
    DuplicateOrderError,
    InvoiceNotFoundError,
    InvoiceRequestError,
    InvoiceStateError,
    MerchantAccountMissingError,
)
from api.settlement.events import emit_invoice_event
from api.settlement.models import Invoice, InvoiceState, InvoiceStatus, MerchantAccount
from crm.audit import service as audit
from crm.clock import Clock
from wallet.addresses import parse_address
from wallet.signing import PaymentIntent, Signer, payment_intent_typed_data, to_compact

__all__ = [
    "ALLOWED_CONFIRMATIONS",
    "InvoiceRequest",
    "create_invoice",
    "eip681_uri",
    "expire_due",
    "get_invoice",
    "intent_of",
    "mark_invoice",
    "qr_png",
    "qr_svg",
    "register_account",
]

ALLOWED_CONFIRMATIONS = (0, 1, 2, 6)
DEFAULT_EXPIRY = timedelta(minutes=15)
LATE_WINDOW = timedelta(hours=1)
_REOPENABLE = (InvoiceState.EXPIRED, InvoiceState.INVALID)


@dataclass(frozen=True, slots=True)
class InvoiceRequest:
    merchant_id: int
    token: str
    amount: int
    order_id: str
    contact_id: int | None = None
    fee: int = 0
    payer: str | None = None
    expires_in: timedelta = DEFAULT_EXPIRY
    confirmations: int = 1
    metadata: dict[str, Any] = field(default_factory=dict)


def _address(value: str, param: str) -> str:
    try:
        return parse_address(value, param=param)
    except ValueError as exc:
        raise InvoiceRequestError(str(exc), param=param) from None


def register_account(
    session: Session,
    merchant_id: int,
    *,
    chain_id: int,
    address: str,
    payout: str,
    operator: str,
    clock: Clock,
) -> MerchantAccount:
    """Record the merchant's on-chain account (its router registration) for ``chain_id``."""
    existing = repo.account_for_merchant(session, merchant_id, chain_id)
    values = {
        "address": _address(address, "address"),
        "payout": _address(payout, "payout"),
        "operator": _address(operator, "operator"),
    }
    if existing is not None:
        for key, value in values.items():
            setattr(existing, key, value)
        return repo.add(session, existing)
    account = MerchantAccount(
        merchant_id=merchant_id,
        chain_id=chain_id,
        address=values["address"],
        payout=values["payout"],
        operator=values["operator"],
        created_at=clock.now(),
    )
    return repo.add(session, account)


def _validate(request: InvoiceRequest) -> None:
    if isinstance(request.amount, bool) or not isinstance(request.amount, int):
        raise InvoiceRequestError("amount must be an integer in base units", param="amount")
    if not 0 < request.amount < 2**256:
        raise InvoiceRequestError("amount must be positive and below 2**256", param="amount")
    if not 0 <= request.fee <= request.amount:
        raise InvoiceRequestError("fee must be between 0 and amount", param="fee")
    if request.confirmations not in ALLOWED_CONFIRMATIONS:
        raise InvoiceRequestError(
            f"confirmations must be one of {ALLOWED_CONFIRMATIONS}", param="confirmations"
        )
    if not timedelta(minutes=1) <= request.expires_in <= timedelta(days=7):
        raise InvoiceRequestError("expiry must be between 1 minute and 7 days", param="expires_in")
    if not request.order_id or len(request.order_id) > 200:
        raise InvoiceRequestError("order_id is required (max 200 chars)", param="order_id")


def create_invoice(
    session: Session,
    request: InvoiceRequest,
    *,
    chain_id: int,
    router: str,
    signer: Signer,
    clock: Clock,
    allocate: Callable[[int], int] | None = None,
) -> Invoice:
    """Allocate the next invoice number, sign its intent with the operator key, store it.

    ``allocate(account_id)`` may take the number in its own short transaction (the API does, so
    no request holds the account row's lock while it signs and responds); numbers skipped by a
    failed create are harmless: on-chain ids only need to be unique per merchant. Two open
    invoices for one order are refused by a partial unique index as well as by this check, so
    concurrent creates cannot both succeed.
    """
    _validate(request)
    token = _address(request.token, "token")
    payer = _address(request.payer, "payer") if request.payer else "0x" + "0" * 40
    account = repo.account_for_merchant(session, request.merchant_id, chain_id)
    if account is None:
        raise MerchantAccountMissingError(
            f"merchant has no router account on chain {chain_id}", param="merchant"
        )
    if signer.address.lower() != account.operator.lower():
        raise MerchantAccountMissingError(
            "the configured signer is not this merchant's operator", param="operator"
        )
    live = [
        inv
        for inv in repo.invoices_for_order(session, request.merchant_id, request.order_id)
        if inv.state not in _REOPENABLE
    ]
    if live:
        raise DuplicateOrderError(
            f"order {request.order_id!r} already has invoice {live[0].id} ({live[0].state})",
            param="order_id",
        )
    now = clock.now()
    expires_at = now + request.expires_in
    number = (allocate or partial(repo.allocate_invoice_number, session))(account.id or 0)
    intent = PaymentIntent(
        merchant=account.address,
        token=token,
        amount=request.amount,
        fee=request.fee,
        invoice_id=number,
        payer=payer,
        deadline=int((expires_at + LATE_WINDOW).timestamp()),
    )
    signature = signer.sign_typed_data(
        payment_intent_typed_data(intent, chain_id=chain_id, router=router)
    )
    r, vs = to_compact(signature)
    invoice = Invoice(
        id="inv_" + secrets.token_hex(12),
        merchant_id=request.merchant_id,
        account_id=account.id or 0,
        number=number,
        order_id=request.order_id,
        contact_id=request.contact_id,
        chain_id=chain_id,
        token=token,
        amount=request.amount,
        fee=request.fee,
        payer=payer,
        deadline=intent.deadline,
        signature_r="0x" + r.hex(),
        signature_vs="0x" + vs.hex(),
        confirmations_required=request.confirmations,
        metadata_=dict(request.metadata),
        created_at=now,
        expires_at=expires_at,
    )
    try:
        with session.begin_nested():
            return repo.add(session, invoice)
    except IntegrityError:
        raise DuplicateOrderError(
            f"order {request.order_id!r} already has an open invoice", param="order_id"
        ) from None


def intent_of(invoice: Invoice, account: MerchantAccount) -> PaymentIntent:
    return PaymentIntent(
        merchant=account.address,
        token=invoice.token,
        amount=invoice.amount,
        fee=invoice.fee,
        invoice_id=invoice.number,
        payer=invoice.payer,
        deadline=invoice.deadline,
    )


def get_invoice(session: Session, merchant_id: int, invoice_id: str) -> Invoice:
    invoice = repo.get_invoice(session, merchant_id, invoice_id)
    if invoice is None:
        raise InvoiceNotFoundError(f"no invoice {invoice_id}", param="id")
    return invoice


def eip681_uri(invoice: Invoice, router: str) -> str:
    """EIP-681 request for the wallet-standard step: approve the router for the amount.

    EIP-681 cannot carry the tuple argument of ``pay``; wallets that only speak EIP-681 approve
    with this URI, and the pay call (or ``payWithPermit``, which needs no approval) follows.
    """
    return (
        f"ethereum:{invoice.token}@{invoice.chain_id}/approve"
        f"?address={parse_address(router)}&uint256={invoice.amount}"
    )


def qr_svg(uri: str) -> str:
    return str(segno.make(uri, error="m").svg_inline(scale=4))


def qr_png(uri: str) -> bytes:
    import io

    buffer = io.BytesIO()
    segno.make(uri, error="m").save(buffer, kind="png", scale=4)
    return buffer.getvalue()


def expire_due(session: Session, clock: Clock, limit: int = 500) -> list[Invoice]:
    """``new`` invoices past their expiry become ``expired`` (late payments still settle)."""
    expired = list(repo.expirable(session, clock.now(), limit))
    for invoice in expired:
        invoice.state = InvoiceState.EXPIRED
        session.add(invoice)
        emit_invoice_event(session, invoice, "invoice.expired")
    session.flush()
    return expired


def mark_invoice(
    session: Session,
    merchant_id: int,
    invoice_id: str,
    *,
    settle: bool,
    actor: str,
    clock: Clock,
) -> Invoice:
    """Manual settle/invalidate by staff, with an audit entry (BTCPay's "marked")."""
    invoice = get_invoice(session, merchant_id, invoice_id)
    if invoice.state == InvoiceState.SETTLED and settle:
        raise InvoiceStateError("invoice is already settled")
    invoice.state = InvoiceState.SETTLED if settle else InvoiceState.INVALID
    invoice.status = InvoiceStatus.MARKED
    if settle:
        invoice.settled_at = clock.now()
    session.add(invoice)
    audit.record(
        session,
        merchant_id=merchant_id,
        actor=actor,
        action="invoice.mark_settled" if settle else "invoice.mark_invalid",
        object_type="invoice",
        object_id=invoice.id,
        at=clock.now(),
    )
    return invoice
