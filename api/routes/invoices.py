"""/v1/invoices: create (signed EIP-712 intent), list, retrieve, QR codes, mark, payments."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.responses import Response
from sqlmodel import Session

from api.deps import (
    ChainInfo,
    ChainInfoDep,
    ClockDep,
    InvoicingDep,
    SessionDep,
    SettingsDep,
    get_keyring,
)
from api.errors import ApiError, InvalidRequest
from api.keys.service import AuthenticatedKey
from api.pagination import ListResponse, PageDep, paginate
from api.routes._common import (
    PLAUSIBLE_TIME,
    Manager,
    Staff,
    actor,
    configured_chain,
    merchant_scope,
    object_merchant,
    token_decimals,
    write_merchant,
)
from api.routing import ApiRouter
from api.schemas.invoices import InvoiceCreateBody, InvoiceMarkBody, InvoiceOut, PaymentOut
from api.settlement import invoices as settlement
from api.settlement import repository as repo
from api.settlement.checkout import checkout_path
from api.settlement.errors import MerchantAccountMissingError
from api.settlement.events import emit_invoice_event
from api.settlement.models import Invoice, InvoiceState
from api.webhooks import enqueue
from api.webhooks.repository import subscriptions

__all__ = ["SignerUnavailable", "router"]

router = ApiRouter(prefix="/invoices", tags=["invoices"])

InvoiceId = Annotated[str, Path(max_length=40, description="An invoice id (inv_…).")]


class SignerUnavailable(ApiError):
    status_code = 409
    code = "signer_unavailable"
    message = "This server holds no signer for the merchant's operator key."


def _chain(chain: ChainInfo | None) -> ChainInfo:
    if chain is None:
        raise SignerUnavailable("This server is not configured with a chain.")
    return chain


async def _checkout_links(request: Request, settings: SettingsDep) -> Callable[[str], str]:
    """Invoice id -> its hosted checkout page's absolute URL (``FOLLOWPAY_PUBLIC_BASE_URL``).

    Async on purpose: a sync dependency costs every invoice request a threadpool hop (measured:
    ~10 % of ``POST /v1/invoices`` throughput). The key ring is built on the app's first use of
    it (the master key file read once); after that this is an attribute read."""
    keyring = get_keyring(request)
    base = settings.public_base_url.rstrip("/")
    return lambda invoice_id: base + checkout_path(keyring, invoice_id)


CheckoutLinks = Annotated[Callable[[str], str], Depends(_checkout_links)]


def _public(
    session: Session,
    invoice: Invoice,
    chain: ChainInfo | None,
    checkout: Callable[[str], str],
    addresses: dict[int, str] | None = None,
) -> InvoiceOut:
    """``addresses``: merchant router addresses by account id, filled as needed (a list reads
    each account once)."""
    known = addresses if addresses is not None else {}
    if invoice.account_id not in known:
        account = repo.get_account(session, invoice.account_id)
        known[invoice.account_id] = account.address if account is not None else ""
    router_address = chain.router if chain is not None else None
    return InvoiceOut.of(
        invoice,
        known[invoice.account_id],
        router=router_address,
        decimals=token_decimals(chain, invoice.token),
        payment_uri=settlement.eip681_uri(invoice, router_address) if router_address else None,
        checkout_url=checkout(invoice.id),
    )


def _load(session: Session, caller: AuthenticatedKey, invoice_id: str) -> Invoice:
    merchant_id = object_merchant(session, caller, Invoice, invoice_id, what="invoice")
    return settlement.get_invoice(session, merchant_id, invoice_id)


@router.post(
    "",
    response_model=InvoiceOut,
    summary="Create an invoice",
    description="Signs an EIP-712 payment intent with the merchant's operator key (bound to the "
    "chain id and router) and returns it with the compact signature `(r, vs)`, the EIP-681 URI "
    "and QR code links. One payable invoice per `order_id`: a second create for an order whose "
    "invoice is not expired/invalid is a 409 `duplicate_order` (concurrent creates are "
    "refused by a unique index). Send an `Idempotency-Key` to make retries return the same "
    "invoice. Emits `invoice.created`.",
)
def create_invoice(
    body: InvoiceCreateBody,
    session: SessionDep,
    caller: Manager,
    invoicing: InvoicingDep,
    checkout: CheckoutLinks,
) -> InvoiceOut:
    chain = _chain(invoicing.chain)
    if body.token is not None and body.token.lower() != chain.token.lower():
        raise InvalidRequest(  # only its decimals are known: amounts elsewhere would be guesses
            f"This server accepts payments in its token {chain.token} only.",
            code="token_unsupported",
            param="token",
        )
    merchant_id = write_merchant(caller, body.merchant_id)
    cache = invoicing.cache
    account = cache.load(
        ("account", merchant_id, chain.chain_id),
        partial(repo.account_row, session, merchant_id, chain.chain_id),
    )
    if account is None:
        raise MerchantAccountMissingError(
            f"merchant has no router account on chain {chain.chain_id}: register it with "
            "POST /v1/merchants/{id}/account",
            param="merchant_id",
        )
    signer = invoicing.signers.for_merchant(merchant_id, account.operator)
    if signer is None:
        raise SignerUnavailable()
    request = settlement.InvoiceRequest(
        merchant_id=merchant_id,
        token=body.token or chain.token,
        amount=int(body.amount),
        order_id=body.order_id,
        contact_id=body.contact_id,
        fee=int(body.fee),
        payer=body.payer,
        expires_in=timedelta(seconds=body.expires_in),
        confirmations=body.confirmations,
        metadata=dict(body.metadata),
    )

    invoice = settlement.create_invoice(
        session,
        request,
        chain_id=chain.chain_id,
        router=chain.router,
        signer=signer,
        clock=invoicing.clock,
        allocate=partial(invoicing.numbers.take, session, invoicing.engine),
        account=account,
    )
    out = _public(session, invoice, chain, checkout, {account.id: account.address})
    listeners = cache.load(
        ("webhooks", str(merchant_id)), partial(subscriptions, session, str(merchant_id))
    )
    enqueue(
        session,
        str(merchant_id),
        "invoice.created",
        partial(out.model_dump, mode="json"),
        subscriptions=listeners,
    )
    return out


@router.get("", response_model=ListResponse[InvoiceOut], summary="List invoices")
def list_invoices(
    request: Request,
    session: SessionDep,
    caller: Staff,
    page: PageDep,
    chain: ChainInfoDep,
    checkout: CheckoutLinks,
    state: Annotated[InvoiceState | None, Query(description="Filter by state.")] = None,
    order_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    created_gte: Annotated[
        datetime | None, Query(description="Created at or after (ISO-8601)."), PLAUSIBLE_TIME
    ] = None,
    created_lt: Annotated[
        datetime | None, Query(description="Created before (ISO-8601)."), PLAUSIBLE_TIME
    ] = None,
    merchant_id: Annotated[
        str | None, Query(min_length=1, max_length=20, description="Admins: one merchant.")
    ] = None,
) -> ListResponse[InvoiceOut]:
    for name, value in (("created_gte", created_gte), ("created_lt", created_lt)):
        if value is not None and value.tzinfo is None:
            raise InvalidRequest("Give a time zone (e.g. a trailing Z).", param=name)
    stmt = repo.invoices_select(
        merchant_scope(caller, merchant_id),
        state=state,
        order_id=order_id,
        created_gte=created_gte,
        created_lt=created_lt,
    )
    rows, has_more = paginate(
        session,
        stmt,
        created_at=Invoice.created_at,
        id=Invoice.id,
        page=page,
        cursor_in=repo.invoices_select(merchant_scope(caller, merchant_id)),
    )
    addresses: dict[int, str] = {}
    return ListResponse[InvoiceOut](
        data=[_public(session, inv, chain, checkout, addresses) for inv in rows],
        has_more=has_more,
        url=request.url.path,
    )


@router.get("/{invoice_id}", response_model=InvoiceOut, summary="Retrieve an invoice")
def get_invoice(
    invoice_id: InvoiceId,
    session: SessionDep,
    caller: Staff,
    chain: ChainInfoDep,
    checkout: CheckoutLinks,
) -> InvoiceOut:
    return _public(session, _load(session, caller, invoice_id), chain, checkout)


def _qr_uri(session: Session, caller: AuthenticatedKey, invoice_id: str, chain: Any) -> str:
    invoice = _load(session, caller, invoice_id)
    return settlement.eip681_uri(invoice, configured_chain(chain).router)


@router.get(
    "/{invoice_id}/qr.svg",
    response_class=Response,
    summary="The payment URI as an SVG QR code",
    responses={200: {"content": {"image/svg+xml": {}}, "description": "An SVG image."}},
)
def invoice_qr_svg(
    invoice_id: InvoiceId, session: SessionDep, caller: Staff, chain: ChainInfoDep
) -> Response:
    uri = _qr_uri(session, caller, invoice_id, chain)
    return Response(settlement.qr_svg(uri), media_type="image/svg+xml")


@router.get(
    "/{invoice_id}/qr.png",
    response_class=Response,
    summary="The payment URI as a PNG QR code",
    responses={200: {"content": {"image/png": {}}, "description": "A PNG image."}},
)
def invoice_qr_png(
    invoice_id: InvoiceId, session: SessionDep, caller: Staff, chain: ChainInfoDep
) -> Response:
    uri = _qr_uri(session, caller, invoice_id, chain)
    return Response(settlement.qr_png(uri), media_type="image/png")


@router.post(
    "/{invoice_id}/mark",
    response_model=InvoiceOut,
    summary="Mark an invoice settled or invalid by hand",
    description="For payments made outside the router (`settled`) or invoices that must not be "
    "paid (`invalid`). Sets status `marked`, is audited and emits `invoice.settled` / "
    "`invoice.invalid`. Marking an invalid invoice `invalid` again changes nothing: the "
    "invoice as it is, no audit entry, no event. `settled` is refused (409 "
    "`invoice_state_invalid`) while a payment confirms on chain (it settles by itself), once "
    "the invoice is refunded in full, and while the order has another open invoice.",
)
def mark_invoice(
    invoice_id: InvoiceId,
    body: InvoiceMarkBody,
    session: SessionDep,
    caller: Manager,
    clock: ClockDep,
    chain: ChainInfoDep,
    checkout: CheckoutLinks,
) -> InvoiceOut:
    merchant_id = object_merchant(session, caller, Invoice, invoice_id, what="invoice")
    outcome = settlement.mark_invoice(
        session,
        merchant_id,
        invoice_id,
        settle=body.status == "settled",
        actor=actor(caller),
        clock=clock,
    )
    session.flush()
    out = _public(session, outcome.invoice, chain, checkout)
    if outcome.changed:  # the shape the indexer's invoice.settled has: one shape per event type
        event = "invoice.settled" if body.status == "settled" else "invoice.invalid"
        emit_invoice_event(session, outcome.invoice, event)
    return out


@router.get(
    "/{invoice_id}/payments",
    response_model=ListResponse[PaymentOut],
    summary="On-chain payments of an invoice",
    description="Every `PaymentSettled` log matched to the invoice, oldest first, including "
    "reorged ones (kept as evidence): transaction hash, block, log index, confirmations and "
    "gas used when the chain is reachable.",
)
def list_invoice_payments(
    invoice_id: InvoiceId, request: Request, session: SessionDep, caller: Staff, chain: ChainInfoDep
) -> ListResponse[PaymentOut]:
    invoice = _load(session, caller, invoice_id)
    head = None
    if chain is not None and chain.head is not None:
        try:
            head = chain.head()
        except Exception:  # the chain is optional here: evidence without depth
            head = None
    data = []
    for payment in repo.payments_for_invoice(session, invoice.id):
        gas = None
        if chain is not None and chain.gas_used is not None:
            try:
                gas = chain.gas_used(payment.tx_hash)
            except Exception:
                gas = None
        data.append(PaymentOut.of(payment, head=head, gas_used=gas))
    return ListResponse[PaymentOut](data=data, has_more=False, url=request.url.path)
