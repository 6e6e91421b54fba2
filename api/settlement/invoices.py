"""Invoice rules: creation (signed EIP-712 intent, EIP-681 URI, QR), expiry, manual marking.

The on-chain ``deadline`` is the invoice expiry plus a late-payment window (default 1 h): a
customer whose transaction lands just after expiry still pays, and the indexer settles the
invoice as ``paid_late`` instead of leaving money unmatched (BTCPay's most common complaint).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import segno
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from api.settlement import repository as repo
from api.settlement.chain_evidence import payment_ref
from api.settlement.errors import (
    AccountExistsError,
    AccountInUseError,
    DuplicateOrderError,
    InvoiceNotFoundError,
    InvoiceRequestError,
    InvoiceStateError,
    MerchantAccountMissingError,
    UnknownContactError,
)
from api.settlement.events import emit_invoice_event
from api.settlement.models import (
    REOPENABLE_STATES,
    Invoice,
    InvoiceState,
    InvoiceStatus,
    MerchantAccount,
    PaymentState,
)
from crm import contacts
from crm.audit import service as audit
from crm.clock import Clock
from crm.errors import ContactErased, ContactNotFound
from crm.followups import service as followups
from crm.sqlite_gate import holds_write_lock
from wallet.addresses import parse_address
from wallet.signing import PaymentIntent, Signer, payment_intent_struct_hash

__all__ = [
    "ALLOWED_CONFIRMATIONS",
    "EXPIRY_GRACE",
    "InvoiceNumbers",
    "InvoiceRequest",
    "MarkOutcome",
    "create_invoice",
    "eip681_uri",
    "expire_due",
    "get_invoice",
    "intent_of",
    "mark_invoice",
    "operator_of",
    "qr_png",
    "qr_svg",
    "register_account",
]

ALLOWED_CONFIRMATIONS = (0, 1, 2, 6)
DEFAULT_EXPIRY = timedelta(minutes=15)
LATE_WINDOW = timedelta(hours=1)
#: An invoice is announced expired this long after its expiry: a block is stamped before it
#: reaches the node (a slot's start on Ethereum, 12 s slots, then propagation), so a payment
#: stamped on time can arrive after the expiry, and ``invoice.expired`` must not precede it.
EXPIRY_GRACE = timedelta(seconds=30)


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


@dataclass
class _Blocks:
    """One account's numbers in this process: ``[start, end)`` ranges."""

    current: tuple[int, int] = (0, 0)
    spare: tuple[int, int] | None = None
    refilling: bool = False


class InvoiceNumbers:
    """On-chain invoice numbers for the API, without holding the account row for a request.

    One ``UPDATE … RETURNING`` in its own short transaction reserves ``block`` consecutive
    numbers for this process; the next creates take theirs from memory, so a create costs no
    extra statement, and no request holds the account row's lock (PostgreSQL) or SQLite's one
    write lock while it signs and responds: its first write is its invoice. Numbers a process
    leaves unused when it stops are skipped, which is harmless: on-chain ids only need to be
    unique per merchant. Several processes interleave blocks, each sequential inside.

    The next block is reserved ahead, by the create that takes the middle number of the current
    one, outside the lock: a reservation is a commit (an fsync, which on a busy disk can take a
    tenth of a second), and no other create waits for it. Only the first create of an account
    in a process (or one that outran the spare) reserves while it waits.

    SQLite, when the request has already written: the number is taken in the request's own
    transaction (it holds the one write lock, which a side transaction would wait for).
    """

    def __init__(self, block: int = 256) -> None:
        if block < 1:
            raise ValueError("block must be >= 1")
        self.block = block
        self._lock = threading.Lock()
        self._blocks: dict[tuple[int, int], _Blocks] = {}

    def take(self, session: Session, engine: Engine, account_id: int) -> int:
        if engine.dialect.name == "sqlite" and holds_write_lock(session):
            return repo.allocate_invoice_number(session, account_id)
        with self._lock:
            blocks = self._blocks.setdefault((id(engine), account_id), _Blocks())
            start, end = blocks.current
            if start >= end and blocks.spare is not None:
                (start, end), blocks.spare = blocks.spare, None
            number = start if start < end else None
            refill = False
            if number is not None:
                blocks.current = (start + 1, end)
                refill = (
                    blocks.spare is None
                    and not blocks.refilling
                    and end - start - 1 <= self.block // 2
                )
                blocks.refilling = blocks.refilling or refill
        if number is None:  # nothing in memory: reserve now, and keep the rest of the block
            number = self._reserve(engine, account_id)
            self._keep(blocks, (number + 1, number + self.block))
        elif refill:
            try:
                spare = self._reserve(engine, account_id)
                self._keep(blocks, (spare, spare + self.block))
            finally:
                with self._lock:
                    blocks.refilling = False
        return number

    def _reserve(self, engine: Engine, account_id: int) -> int:
        with Session(engine) as side, side.begin():
            return repo.reserve_invoice_numbers(side, account_id, self.block)

    def _keep(self, blocks: _Blocks, numbers: tuple[int, int]) -> None:
        """Use ``numbers`` as the current range if it ran out, else as the spare; a range that
        fits neither (another create reserved too) is skipped, which is harmless."""
        with self._lock:
            if blocks.current[0] >= blocks.current[1]:
                blocks.current = numbers
            elif blocks.spare is None:
                blocks.spare = numbers


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
    signer: Signer | None = None,
    router: str | None = None,
) -> MerchantAccount:
    """Record the merchant's on-chain account (its router registration) for ``chain_id``.

    A new operator invalidates every intent the previous one signed (the router checks the
    signer against the current record): with ``signer`` (the new operator's) and ``router``,
    the unpaid invoices are signed again in the same transaction, so their checkout links and
    URIs keep working. Without it they stay as signed; their checkout page says payment is
    unavailable rather than offer a transaction the router would revert."""
    existing = repo.account_for_merchant(session, merchant_id, chain_id)
    values = {
        "address": _address(address, "address"),
        "payout": _address(payout, "payout"),
        "operator": _address(operator, "operator"),
    }
    if existing is not None:
        moved = existing.address.lower() != values["address"].lower()
        if moved and repo.account_has_invoices(session, existing.id or 0):
            raise AccountInUseError(
                "This account has invoices, whose signed intents name its address: the address "
                "cannot change (payout and operator can).",
                param="address",
            )
        rotated = existing.operator.lower() != values["operator"].lower()
        for key, value in values.items():
            setattr(existing, key, value)
        account = repo.add(session, existing)
        if rotated and signer is not None and router is not None:
            _sign_unpaid_again(session, account, signer, router)
        return account
    account = MerchantAccount(
        merchant_id=merchant_id,
        chain_id=chain_id,
        address=values["address"],
        payout=values["payout"],
        operator=values["operator"],
        created_at=clock.now(),
    )
    try:
        with session.begin_nested():
            return repo.add(session, account)
    except IntegrityError:  # a unique key: a concurrent registration committed first
        raise AccountExistsError(
            "Another registration of this merchant's account or of this address committed "
            "first; read it back with GET /v1/merchants/{id}/account.",
            param="address",
        ) from None


def _sign_unpaid_again(
    session: Session, account: MerchantAccount, signer: Signer, router: str
) -> None:
    """Sign the account's unpaid invoices (``new``; ``expired`` within the late window) with
    the new operator. The intent and its hash do not change, only the signature."""
    if signer.address.lower() != account.operator.lower():
        return
    assert account.id is not None
    unpaid = repo.unpaid_invoices_on_account(session, account.id, account.merchant_id)
    for invoice in unpaid:
        r, vs = signer.sign_intent(
            intent_of(invoice, account), chain_id=account.chain_id, router=router
        )
        invoice.signature_r, invoice.signature_vs = "0x" + r.hex(), "0x" + vs.hex()
        session.add(invoice)


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
    account: repo.AccountRow | None = None,
) -> Invoice:
    """Allocate the next invoice number, sign its intent with the operator key, store it.

    ``allocate(account_id)`` may take the number outside the request's transaction (the API
    uses :class:`InvoiceNumbers`, so no request holds the account row's lock while it signs and
    responds); numbers skipped by a failed create are harmless: on-chain ids only need to be
    unique per merchant. ``account`` saves the lookup when the caller has it already. Two open
    invoices for one order are refused by a partial unique index (the insert does nothing, and
    :class:`DuplicateOrderError` names the open invoice), so concurrent creates cannot both
    succeed.
    """
    _validate(request)
    if request.contact_id is not None:
        _require_contact(session, request.merchant_id, request.contact_id)
    token = _address(request.token, "token")
    payer = _address(request.payer, "payer") if request.payer else "0x" + "0" * 40
    if account is None or account.merchant_id != request.merchant_id:
        account = repo.account_row(session, request.merchant_id, chain_id)
    if account is None or account.chain_id != chain_id:
        raise MerchantAccountMissingError(
            f"merchant has no router account on chain {chain_id}", param="merchant"
        )
    if signer.address.lower() != account.operator.lower():
        raise MerchantAccountMissingError(
            "the configured signer is not this merchant's operator", param="operator"
        )
    now = clock.now()
    expires_at = now + request.expires_in
    number = (allocate or partial(repo.allocate_invoice_number, session))(account.id)
    intent = PaymentIntent(
        merchant=account.address,
        token=token,
        amount=request.amount,
        fee=request.fee,
        invoice_id=number,
        payer=payer,
        deadline=int((expires_at + LATE_WINDOW).timestamp()),
    )
    r, vs = signer.sign_intent(intent, chain_id=chain_id, router=router)
    intent_hash = "0x" + payment_intent_struct_hash(intent).hex()
    invoice = Invoice(
        id="inv_" + secrets.token_hex(12),
        merchant_id=request.merchant_id,
        account_id=account.id,
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
        intent_hash=intent_hash,
        confirmations_required=request.confirmations,
        metadata_=dict(request.metadata),
        created_at=now,
        expires_at=expires_at,
    )
    if repo.insert_invoice(session, invoice, signer.address):
        return invoice
    current = repo.account_row(session, request.merchant_id, chain_id)
    if current is None or current.id != account.id:
        raise MerchantAccountMissingError(  # moved to another merchant since it was read
            "the merchant's router account changed while the invoice was made: retry",
            param="merchant",
        )
    if current.operator.lower() != signer.address.lower():
        raise MerchantAccountMissingError(  # rotated since it was read: the router would refuse
            "the merchant's operator changed while the invoice was made: retry",
            param="operator",
        )
    live = repo.open_invoice_for_order(
        session, request.merchant_id, request.order_id, [s.value for s in REOPENABLE_STATES]
    )
    detail = f"invoice {live[0]} ({live[1]})" if live else "an open invoice"
    raise DuplicateOrderError(f"order {request.order_id!r} already has {detail}", param="order_id")


def _require_contact(session: Session, merchant_id: int, contact_id: int) -> None:
    """The follow-up needs the merchant's own contact: another's, or none, is refused, and so
    is an erased one (409 ``contact_erased``, as every other write for it)."""
    try:
        contact = contacts.get_contact(session, merchant_id, contact_id)
    except ContactNotFound:
        raise UnknownContactError(f"No such contact: '{contact_id}'.", param="contact_id") from None
    if contact.erased_at is not None:
        raise ContactErased("contact has been erased")


def operator_of(session: Session, merchant_id: int, chain_id: int) -> str:
    """The operator address registered for the merchant's router account on ``chain_id``."""
    account = repo.account_row(session, merchant_id, chain_id)
    if account is None:
        raise MerchantAccountMissingError(
            f"merchant has no router account on chain {chain_id}", param="merchant"
        )
    return account.operator


def intent_of(invoice: Invoice, account: MerchantAccount | repo.AccountRow) -> PaymentIntent:
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
    """A standalone SVG document (with its ``xmlns``: without it, a browser or an image viewer
    opening the file or the ``image/svg+xml`` response shows nothing)."""
    import io

    buffer = io.BytesIO()
    segno.make(uri, error="m").save(buffer, kind="svg", xmldecl=False, scale=4)
    return buffer.getvalue().decode()


def qr_png(uri: str) -> bytes:
    import io

    buffer = io.BytesIO()
    segno.make(uri, error="m").save(buffer, kind="png", scale=4)
    return buffer.getvalue()


def expire_due(session: Session, clock: Clock, limit: int = 500) -> list[Invoice]:
    """``new`` invoices past their expiry by :data:`EXPIRY_GRACE` become ``expired`` (late
    payments still settle). They are read locked (PostgreSQL), so a staff mark committed
    meanwhile is never overwritten; one a mark holds right now is left to it."""
    expired = list(repo.expirable(session, clock.now() - EXPIRY_GRACE, limit))
    for invoice in expired:
        invoice.state = InvoiceState.EXPIRED
        session.add(invoice)
        emit_invoice_event(session, invoice, "invoice.expired")
    session.flush()
    return expired


def _cancel_followups(session: Session, invoice: Invoice, clock: Clock) -> None:
    """An invalidated sale is not followed up: its payments' unsent follow-ups are cancelled
    (links revoked), as after a reorg; sent ones stay sent."""
    for payment in repo.payments_for_invoice(session, invoice.id):
        if payment.state == PaymentState.CONFIRMED:
            followups.cancel_for_payment(
                session, invoice.merchant_id, payment_ref(payment), "invoice_invalidated", clock
            )


@dataclass(frozen=True, slots=True)
class MarkOutcome:
    """What :func:`mark_invoice` did: ``changed`` is False for a repeated ``invalid`` (the
    invoice as it is: no audit entry, no event)."""

    invoice: Invoice
    changed: bool


def mark_invoice(
    session: Session,
    merchant_id: int,
    invoice_id: str,
    *,
    settle: bool,
    actor: str,
    clock: Clock,
) -> MarkOutcome:
    """Manual settle/invalidate by staff, with an audit entry (BTCPay's "marked"). Invalidating
    a settled invoice cancels its follow-ups that were not sent yet; invalidating an invalid one
    changes nothing.

    The invoice is read under a lock held until commit (:func:`repo.lock_invoice`), so the
    decision is made on what the indexer last committed and an indexer step cannot overwrite it:
    a step that read the invoice before applies its payment again to the marked invoice (held
    when invalid), and one that settled it first has its follow-ups cancelled here.

    Settling is refused while a payment confirms (the chain settles it) and once the invoice
    is refunded in full."""
    invoice = repo.lock_invoice(session, merchant_id, invoice_id)
    if invoice is None:
        raise InvoiceNotFoundError(f"no invoice {invoice_id}", param="id")
    if not settle and invoice.state == InvoiceState.INVALID:
        return MarkOutcome(invoice, changed=False)
    if invoice.state == InvoiceState.SETTLED and settle:
        raise InvoiceStateError("invoice is already settled")
    if settle and invoice.state == InvoiceState.PROCESSING:
        # marking it would turn the confirming payment into a second, "held" one
        raise InvoiceStateError(
            "a payment for this invoice is confirming on chain: it settles at its depth "
            "(mark it invalid to refuse it)"
        )
    if settle and invoice.refunded_amount >= invoice.amount > 0:
        raise InvoiceStateError("invoice is refunded in full: there is nothing to settle")
    if settle and invoice.state in REOPENABLE_STATES:
        other = repo.open_invoice_for_order(
            session, merchant_id, invoice.order_id, [s.value for s in REOPENABLE_STATES]
        )
        if other is not None:  # the open-order rule: one live invoice per order
            raise InvoiceStateError(
                f"order {invoice.order_id!r} has another open invoice ({other[0]}); "
                "invalidate it first or refund this payment"
            )
    was_settled = invoice.state == InvoiceState.SETTLED
    try:
        with session.begin_nested():  # the write alone: a refusal leaves the transaction usable
            invoice.state = InvoiceState.SETTLED if settle else InvoiceState.INVALID
            invoice.status = InvoiceStatus.MARKED
            invoice.settled_at = clock.now() if settle else None  # as a reorg leaves it
            session.add(invoice)
            session.flush()
    except IntegrityError:  # a create for the order committed after the check above
        raise InvoiceStateError(
            f"order {invoice.order_id!r} has another open invoice; invalidate it first or "
            "refund this payment"
        ) from None
    if was_settled and not settle:
        _cancel_followups(session, invoice, clock)
    audit.record(
        session,
        merchant_id=merchant_id,
        actor=actor,
        action="invoice.mark_settled" if settle else "invoice.mark_invalid",
        object_type="invoice",
        object_id=invoice.id,
        at=clock.now(),
    )
    return MarkOutcome(invoice, changed=True)
