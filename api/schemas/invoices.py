"""Bodies of /v1/invoices and their payments.

Amounts are strings of integer token base units (``"2500000"`` with ``decimals: 6`` is 2.5
tokens): uint256 values do not fit a JSON number safely. Timestamps are ISO-8601 UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.pagination import MAX_ID
from api.settlement.models import Invoice, InvoiceState, Payment, PaymentState

__all__ = [
    "InvoiceCreateBody",
    "InvoiceMarkBody",
    "InvoiceOut",
    "PaymentIntentOut",
    "PaymentOut",
    "SignatureOut",
]

_ADDRESS = r"^0x[0-9a-fA-F]{40}$"
_UINT = r"^[0-9]{1,78}$"


class InvoiceCreateBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "amount": "2500000",
                    "order_id": "order_1001",
                    "contact_id": 7,
                    "expires_in": 900,
                    "confirmations": 1,
                }
            ]
        },
    )

    merchant_id: str | None = Field(
        default=None, min_length=1, max_length=20, description="Admin keys only."
    )
    amount: str = Field(pattern=_UINT, description="Token base units, as a string of digits.")
    fee: str = Field(default="0", pattern=_UINT, description="Platform fee in base units.")
    order_id: str = Field(
        min_length=1,
        max_length=200,
        description="Your order reference; at most one payable invoice per order.",
    )
    contact_id: int | None = Field(default=None, ge=1, le=MAX_ID)
    payer: str | None = Field(
        default=None, pattern=_ADDRESS, description="Only this address may pay (default: any)."
    )
    token: str | None = Field(
        default=None,
        pattern=_ADDRESS,
        description="The server's token (the default); any other is 400 `token_unsupported`.",
    )
    expires_in: int = Field(default=900, ge=60, le=7 * 86400, description="Seconds.")
    confirmations: Literal[0, 1, 2, 6] = Field(
        default=1, description="Blocks before the payment counts as settled."
    )
    metadata: dict[str, str] = Field(
        default_factory=dict,
        max_length=20,
        description="Your references (order, SKU). No personal data: invoices outlive a "
        "contact's erasure (kept pseudonymised as payment records), and so does metadata.",
    )

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, str]) -> dict[str, str]:
        for k, v in value.items():
            if not 1 <= len(k) <= 40 or len(v) > 500:
                raise ValueError("metadata keys are 1-40 chars, values at most 500")
        return value


class InvoiceMarkBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"status": "settled"}]}
    )

    status: Literal["settled", "invalid"] = Field(
        description="settled: paid outside the router; invalid: must not be paid."
    )


class PaymentIntentOut(BaseModel):
    """The EIP-712 ``PaymentIntent`` the payer submits to ``PaymentRouter.pay``."""

    merchant: str
    token: str
    amount: str
    fee: str
    invoice_id: str = Field(description="The on-chain invoice number (uint256, as a string).")
    payer: str = Field(description="The zero address means anyone may pay.")
    deadline: int = Field(description="Unix seconds: expiry plus the late-payment window.")


class SignatureOut(BaseModel):
    """The operator's EIP-2098 compact signature over the intent."""

    r: str
    vs: str


class InvoiceOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "inv_0c3f5a6e9b1d2f4a8c7e6d5b",
                    "object": "invoice",
                    "merchant_id": "42",
                    "order_id": "order_1001",
                    "contact_id": 7,
                    "state": "new",
                    "status": "none",
                    "chain_id": 31337,
                    "router": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
                    "token": "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
                    "decimals": 6,
                    "amount": "2500000",
                    "fee": "0",
                    "paid_amount": "0",
                    "refunded_amount": "0",
                    "confirmations_required": 1,
                    "intent": {
                        "merchant": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
                        "token": "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512",
                        "amount": "2500000",
                        "fee": "0",
                        "invoice_id": "1",
                        "payer": "0x0000000000000000000000000000000000000000",
                        "deadline": 1767229200,
                    },
                    "signature": {"r": "0x…", "vs": "0x…"},
                    "payment_uri": "ethereum:0xe7f1…@31337/approve?address=0x5FbD…&uint256=2500000",
                    "qr_svg_url": "/v1/invoices/inv_0c3f5a6e9b1d2f4a8c7e6d5b/qr.svg",
                    "qr_png_url": "/v1/invoices/inv_0c3f5a6e9b1d2f4a8c7e6d5b/qr.png",
                    "metadata": {},
                    "created_at": "2026-01-01T12:00:00Z",
                    "expires_at": "2026-01-01T12:15:00Z",
                    "settled_at": None,
                }
            ]
        }
    )

    id: str
    object: Literal["invoice"] = "invoice"
    merchant_id: str
    order_id: str
    contact_id: int | None
    state: InvoiceState = Field(description="new, processing, settled, expired or invalid.")
    status: str = Field(
        description="none, paid_late, refunded, partially_refunded or marked (manual)."
    )
    chain_id: int
    router: str | None = Field(
        description="The PaymentRouter to pay through; null on a server configured without a "
        "chain (no payment can be made through it)."
    )
    token: str
    decimals: int | None = Field(
        description="The token's decimals: amount / 10**decimals tokens. Null when the token "
        "is not the server's configured one (or no chain is configured): amounts are then "
        "base units only."
    )
    amount: str
    fee: str
    paid_amount: str
    refunded_amount: str
    confirmations_required: int
    intent: PaymentIntentOut
    signature: SignatureOut
    payment_uri: str | None = Field(
        description="EIP-681 URI (with @chainId; null without a configured chain): the token "
        "`approve` of the router for the "
        "amount, the step a plain wallet can take from a QR code. It pays nothing by itself: "
        "the payment is the router's `pay` (or `payWithPermit`, no approve needed) with "
        "`intent` and `signature`, sent by a checkout page or the payer's client."
    )
    checkout_url: str = Field(
        description="The invoice's hosted checkout page: send it to the customer (or put it in "
        "your own QR code). It pays from a browser wallet — the approve when needed, then "
        "`pay` — and needs no API key: the link itself is the credential."
    )
    qr_svg_url: str
    qr_png_url: str
    metadata: dict[str, Any]
    created_at: datetime
    expires_at: datetime
    settled_at: datetime | None

    @classmethod
    def of(
        cls,
        invoice: Invoice,
        merchant_address: str,
        *,
        router: str | None,
        decimals: int | None,
        payment_uri: str | None,
        checkout_url: str,
    ) -> InvoiceOut:
        base = f"/v1/invoices/{invoice.id}"
        return cls(
            id=invoice.id,
            merchant_id=str(invoice.merchant_id),
            order_id=invoice.order_id,
            contact_id=invoice.contact_id,
            state=InvoiceState(invoice.state),
            status=str(invoice.status),
            chain_id=invoice.chain_id,
            router=router,
            token=invoice.token,
            decimals=decimals,
            amount=str(invoice.amount),
            fee=str(invoice.fee),
            paid_amount=str(invoice.paid_amount),
            refunded_amount=str(invoice.refunded_amount),
            confirmations_required=invoice.confirmations_required,
            intent=PaymentIntentOut(
                merchant=merchant_address,
                token=invoice.token,
                amount=str(invoice.amount),
                fee=str(invoice.fee),
                invoice_id=str(invoice.number),
                payer=invoice.payer,
                deadline=invoice.deadline,
            ),
            signature=SignatureOut(r=invoice.signature_r, vs=invoice.signature_vs),
            payment_uri=payment_uri,
            checkout_url=checkout_url,
            qr_svg_url=f"{base}/qr.svg",
            qr_png_url=f"{base}/qr.png",
            metadata=dict(invoice.metadata_ or {}),
            created_at=invoice.created_at,
            expires_at=invoice.expires_at,
            settled_at=invoice.settled_at,
        )


class PaymentOut(BaseModel):
    """On-chain evidence of one ``PaymentSettled`` log."""

    id: int
    object: Literal["payment"] = "payment"
    invoice_id: str | None = Field(
        description="null: no invoice matched (an unknown number, or terms we did not sign)."
    )
    chain_id: int
    merchant_address: str = Field(description="The router account the payment went to.")
    invoice_number: str = Field(description="The on-chain invoice id it paid (uint256).")
    tx_hash: str
    block_number: int
    block_hash: str
    log_index: int
    payer: str
    token: str
    amount: str
    fee: str
    state: str = Field(description="pending (waiting for depth), confirmed, or reorged.")
    late: bool = Field(description="Paid after the invoice expired (inside the late window).")
    confirmations: int | None = Field(
        description="Blocks on top, including its own; null for a reorged payment (or when "
        "the chain is unreachable)."
    )
    gas_used: int | None = Field(description="Transaction gasUsed, when the chain is reachable.")
    seen_at: datetime

    @classmethod
    def of(cls, p: Payment, *, head: int | None, gas_used: int | None) -> PaymentOut:
        return cls(
            id=p.id or 0,
            invoice_id=p.invoice_id,
            chain_id=p.chain_id,
            merchant_address=p.merchant_address,
            invoice_number=str(p.invoice_number),
            tx_hash=p.tx_hash,
            block_number=p.block_number,
            block_hash=p.block_hash,
            log_index=p.log_index,
            payer=p.payer,
            token=p.token,
            amount=str(p.amount),
            fee=str(p.fee),
            state=str(p.state),
            late=p.late,
            # a reorged payment is in no block of the chain: it has no confirmations
            confirmations=None
            if head is None or p.state == PaymentState.REORGED
            else max(0, head - p.block_number + 1),
            gas_used=gas_used,
            seen_at=p.seen_at,
        )
