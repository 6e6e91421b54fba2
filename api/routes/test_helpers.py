"""/v1/test_helpers: register a router account and pay an invoice on the embedded stack's
in-process chain (``api.sandbox``). Mounted only by ``followpay serve`` on the tester chain and
the demo; on a real node these paths are 404 like any unknown URL."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from api.deps import AfterCommit, ClockDep, ConfigCacheDep, SessionDep, SignersDep
from api.errors import Forbidden
from api.keys.service import AuthenticatedKey
from api.routes._common import Manager, object_merchant, visible_merchant
from api.routing import ApiRouter
from api.sandbox import CUSTOMER_INDEXES, Sandbox
from api.schemas.crm import MerchantAccountOut
from api.settlement.models import Invoice

__all__ = ["TestPaymentBody", "TestPaymentOut", "router"]

router = ApiRouter(prefix="/test_helpers", tags=["test_helpers"])


def _sandbox(request: Request) -> Sandbox:
    return request.app.state.sandbox  # type: ignore[no-any-return]


SandboxDep = Annotated[Sandbox, Depends(_sandbox)]


def _test_mode(caller: Manager) -> AuthenticatedKey:
    """Test helpers move test tokens on a development chain: a live key has no business here
    (and a server that runs them must never be mistaken for a live one)."""
    if caller.livemode:
        raise Forbidden("Test helpers take test-mode keys (fp_test_...) only.", param="livemode")
    return caller


TestModeManager = Annotated[AuthenticatedKey, Depends(_test_mode)]


class TestPaymentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    __test__ = False  # not a pytest class

    method: Literal["permit", "approve"] = Field(
        default="permit",
        description="`permit`: ERC-2612 permit and pay in one transaction; `approve`: an "
        "approve, then pay.",
    )
    customer: int = Field(
        default=CUSTOMER_INDEXES.start,
        ge=CUSTOMER_INDEXES.start,
        le=CUSTOMER_INDEXES.stop - 1,
        description="The development account that pays (test test … junk, index 4-9); it is "
        "minted test tokens first if it holds too few.",
    )


class TestPaymentOut(BaseModel):
    __test__ = False

    object: Literal["test_payment"] = "test_payment"
    invoice_id: str
    payer: str
    tx_hash: str
    block_number: int
    gas_used: int


@router.post(
    "/merchants/{merchant_id}/account",
    response_model=MerchantAccountOut,
    summary="Give a merchant a router account on the in-process chain",
    description="A new address registers on the router with the development operator (held by "
    "this server) and payout, and is recorded as the merchant's account: invoices can be "
    "created at once. 409 `account_exists` if the merchant has one on this chain.",
)
def register_test_account(
    merchant_id: Annotated[str, Path(max_length=20)],
    session: SessionDep,
    caller: TestModeManager,
    clock: ClockDep,
    sandbox: SandboxDep,
    signers: SignersDep,
    cache: ConfigCacheDep,
    after_commit: AfterCommit,
) -> MerchantAccountOut:
    merchant = visible_merchant(session, caller, merchant_id)
    account = sandbox.register_account(session, merchant.id or 0, clock)
    after_commit.append(cache.clear)  # invoices sign with the new account at once
    return MerchantAccountOut.of(account, signers)


@router.post(
    "/invoices/{invoice_id}/pay",
    response_model=TestPaymentOut,
    summary="Pay an invoice on the in-process chain",
    description="Sends the invoice's signed intent from a development account; the embedded "
    "indexer then settles it (and schedules its follow-up) like any payment. 409 "
    "`invoice_state_invalid` unless the invoice is `new`.",
)
def pay_test_invoice(
    invoice_id: Annotated[str, Path(max_length=40)],
    session: SessionDep,
    caller: TestModeManager,
    sandbox: SandboxDep,
    body: TestPaymentBody | None = None,
) -> TestPaymentOut:
    body = body or TestPaymentBody()
    merchant_id = object_merchant(session, caller, Invoice, invoice_id, what="invoice")
    receipt = sandbox.pay_invoice(
        session, merchant_id, invoice_id, customer=body.customer, permit=body.method == "permit"
    )
    return TestPaymentOut(
        invoice_id=invoice_id,
        payer=str(receipt.raw["from"]),
        tx_hash=receipt.tx_hash,
        block_number=receipt.block_number,
        gas_used=receipt.gas_used,
    )
