"""The hosted checkout page of an invoice (``api.settlement.checkout``) and its script.

No API key: the link's HMAC is the credential. The page shows what the customer pays (the
merchant's name, the amount, the token, the expiry) and, while the invoice is payable, a button
whose script asks the visitor's wallet (EIP-1193, ``window.ethereum``) to send the approve and
the pay. The script is served from this origin (``script-src 'self'``); the invoice's data rides
in a JSON block, which no browser executes. Nothing is written when the page is opened.
"""

from __future__ import annotations

import json
from html import escape
from importlib.resources import files
from typing import Annotated

from fastapi import Path
from starlette.responses import HTMLResponse, Response

from api.deps import ChainInfoDep, ClockDep, KeyRingDep, SessionDep
from api.errors import error_responses
from api.routes._common import token_decimals
from api.routes._consent_page import PAGE_HEADERS, html_page
from api.routing import ApiRouter
from api.settlement.checkout import checkout_calls, open_checkout, signed_by_operator
from api.settlement.errors import InvoiceNotFoundError
from api.settlement.models import InvoiceState
from crm import merchants
from wallet.amounts import format_amount

__all__ = ["router"]

router = ApiRouter(prefix="/public", tags=["public"], responses=error_responses(404, 429))

_SCRIPT = files("api").joinpath("static/checkout.js").read_bytes()
_HEADERS = {  # the customer pages' headers, with a script from this origin allowed
    **PAGE_HEADERS,
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}
_STYLE = "dt{color:#555}dd{margin:0 0 .6rem;word-break:break-all}button{font-size:1.1rem}"
Link = Annotated[
    str, Path(min_length=1, max_length=120, description="The invoice's checkout link segment.")
]


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return html_page(title, body, status, headers=_HEADERS, style=_STYLE)


@router.get("/checkout.js", include_in_schema=False)
def checkout_script() -> Response:
    return Response(
        _SCRIPT,
        media_type="text/javascript",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "public, max-age=300"},
    )


@router.get(
    "/checkout/{link}",
    response_class=HTMLResponse,
    summary="An invoice's hosted checkout page (HTML)",
    description="The page behind an invoice's `checkout_url`: the amount, the merchant, and while "
    "the invoice is `new` and unexpired a button that pays it from the visitor's browser wallet "
    "(the token's approve when needed, then the router's `pay`). Opening it changes nothing. "
    "An unknown or altered link is a 404 page.",
)
def checkout_page(
    link: Link, session: SessionDep, keyring: KeyRingDep, chain: ChainInfoDep, clock: ClockDep
) -> HTMLResponse:
    try:
        invoice, account = open_checkout(session, keyring, link)
    except InvoiceNotFoundError:
        return _page("This link does not work", "<p>No such invoice.</p>", 404)
    merchant = merchants.get_merchant(session, invoice.merchant_id)
    decimals = token_decimals(chain, invoice.token)
    amount = (
        f"{format_amount(invoice.amount, decimals)} of token"
        if decimals is not None
        else f"{invoice.amount} base units of token"  # no guessed decimals: a wrong amount
    )
    facts = (
        f"<dl><dt>Pay</dt><dd>{escape(merchant.name)}</dd>"
        f"<dt>Amount</dt><dd>{amount} {escape(invoice.token)} (chain {invoice.chain_id})</dd>"
        f"<dt>Order</dt><dd>{escape(invoice.order_id)}</dd>"
        f"<dt>Pay by</dt><dd>{invoice.expires_at:%Y-%m-%d %H:%M} UTC</dd></dl>"
    )
    # past its time but not yet swept by the worker's expiry: expired for the customer
    expired = invoice.state == InvoiceState.NEW and clock.now() >= invoice.expires_at
    if invoice.state != InvoiceState.NEW or expired:
        state = (
            "expired"
            if expired
            else "paid"
            if invoice.state in (InvoiceState.PROCESSING, InvoiceState.SETTLED)
            else invoice.state
        )
        return _page(f"Invoice {state}", facts + "<p>Nothing is left to pay here.</p>")
    if (
        chain is None
        or chain.chain_id != invoice.chain_id
        or not signed_by_operator(invoice, account, chain.router)  # operator rotated, no key
    ):
        # open, but this server cannot take its payment now: say so, not "nothing to pay"
        return _page(
            "Payment unavailable",
            facts + "<p>This invoice cannot be paid here right now. Please try again later "
            "or contact the merchant.</p>",
            503,
        )
    calls = checkout_calls(invoice, account, chain.router)
    data = {
        "chain_id": str(invoice.chain_id),
        "token": invoice.token,
        "router": chain.router,
        "amount": str(invoice.amount),
        "payer": calls.payer,
        "approve_data": calls.approve_data,
        "pay_data": calls.pay_data,
        "confirmations": invoice.confirmations_required,
    }
    # "</" cannot close the block: JSON escapes it, so no invoice field can end the script
    blob = json.dumps(data).replace("</", "<\\/")
    button = (
        '<p><button id="pay" type="button">Pay with your wallet</button></p>'
        '<p id="status" role="status">Your wallet asks you to confirm each step.</p>'
        f'<script type="application/json" id="invoice">{blob}</script>'
        '<script src="../checkout.js" defer></script>'
    )
    return _page("Pay this invoice", facts + button)
