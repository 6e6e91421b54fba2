"""/v1/merchants (admin: create/list/get; others: their own) and the merchant's chain account."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import Path, Query, Request

from api import queries
from api.deps import (
    AfterCommit,
    ChainInfo,
    ChainInfoDep,
    ClockDep,
    ConfigCacheDep,
    SessionDep,
    SignersDep,
)
from api.errors import ApiError, InvalidRequest, NotFound
from api.pagination import ListResponse, PageDep, paginate
from api.routes._common import (
    Admin,
    Manager,
    Staff,
    actor,
    configured_chain,
    merchant_scope,
    visible_merchant,
)
from api.routing import ApiRouter
from api.schemas.crm import (
    AccountLinkMessageOut,
    MerchantAccountBody,
    MerchantAccountOut,
    MerchantCreateBody,
    MerchantOut,
)
from api.settlement import account_proof
from api.settlement import invoices as settlement
from api.settlement import repository as settlement_repo
from crm import MerchantCreate
from crm import merchants as merchants_service
from crm.merchants.models import Merchant

__all__ = ["LINK_MESSAGE_VALIDITY", "AccountAddressTaken", "AccountNotOnChain", "router"]

router = ApiRouter(prefix="/merchants", tags=["merchants"])


class AccountAddressTaken(ApiError):
    status_code = 409
    type = "conflict_error"
    code = "account_address_taken"
    param = "address"
    message = (
        "This address is already registered to another merchant on this chain. If it is yours, "
        "sign the text of GET /v1/merchants/{id}/account/link_message with it and send the "
        "signature as proof_signature with its proof_valid_until."
    )


class AccountNotOnChain(ApiError):
    """The router's registration of the address is missing or names another payout/operator.
    Registering on the router is what only the address's owner can do: without it, a merchant
    could claim another's address on this server."""

    status_code = 409
    type = "conflict_error"
    code = "account_not_on_chain"


def _check_on_chain(chain: ChainInfo, body: MerchantAccountBody) -> None:
    if chain.registration is None:
        return
    found = chain.registration(body.address)
    if found is None:
        raise AccountNotOnChain(
            "This address has no PaymentRouter registration: call registerMerchant(payout, "
            "operator) from it first.",
            param="address",
        )
    for name, on_chain in zip(("payout", "operator"), found, strict=True):
        if on_chain.lower() != str(getattr(body, name)).lower():
            raise AccountNotOnChain(
                f"The router registers this address with {name} {on_chain}.", param=name
            )


MerchantId = Annotated[str, Path(max_length=20, description="A merchant id, e.g. `42`.")]


@router.post(
    "",
    response_model=MerchantOut,
    summary="Create a merchant (admin)",
    description="Then mint its keys with `POST /v1/api_keys` (`merchant_id` = the new `id`).",
)
def create_merchant(
    body: MerchantCreateBody, session: SessionDep, caller: Admin, clock: ClockDep
) -> MerchantOut:
    merchant = merchants_service.create_merchant(session, MerchantCreate(name=body.name), clock)
    return MerchantOut.of(merchant)


@router.get("", response_model=ListResponse[MerchantOut], summary="List merchants")
def list_merchants(
    request: Request, session: SessionDep, caller: Staff, page: PageDep
) -> ListResponse[MerchantOut]:
    rows, has_more = paginate(
        session,
        queries.merchants_select(merchant_scope(caller)),
        created_at=Merchant.created_at,
        id=Merchant.id,
        page=page,
    )
    return ListResponse[MerchantOut](
        data=[MerchantOut.of(m) for m in rows], has_more=has_more, url=request.url.path
    )


@router.get("/{merchant_id}", response_model=MerchantOut, summary="Retrieve a merchant")
def get_merchant(merchant_id: MerchantId, session: SessionDep, caller: Staff) -> MerchantOut:
    return MerchantOut.of(visible_merchant(session, caller, merchant_id))


@router.post(
    "/{merchant_id}/account",
    response_model=MerchantAccountOut,
    summary="Register the merchant's on-chain account",
    description="Records the merchant's PaymentRouter registration (address, payout, operator) "
    "on this server's chain; the router must already register the address with that payout "
    "and operator (409 `account_not_on_chain`). Invoices are signed by the operator's signer, "
    "which the server must hold (see `signer_available`). An address another merchant "
    "recorded first (`409 account_address_taken`) is reclaimed with an ownership proof "
    "(`proof_signature`, `proof_valid_until`) while that record has no invoices and this "
    "merchant has no account on the chain yet (else `409 account_address_in_use`); both "
    "merchants' audit logs record the move.",
)
def register_account(
    merchant_id: MerchantId,
    body: MerchantAccountBody,
    session: SessionDep,
    caller: Manager,
    clock: ClockDep,
    chain: ChainInfoDep,
    signers: SignersDep,
    cache: ConfigCacheDep,
    after_commit: AfterCommit,
) -> MerchantAccountOut:
    merchant = visible_merchant(session, caller, merchant_id)
    chain = configured_chain(chain)
    merchant_key = merchant.id or 0
    taken = settlement_repo.account_by_address(session, chain.chain_id, body.address)
    held_by_another = taken is not None and taken.merchant_id != merchant_key
    if held_by_another and body.proof_signature is None:
        raise AccountAddressTaken()
    _check_on_chain(chain, body)
    if body.proof_signature is not None or body.proof_valid_until is not None:
        if body.proof_signature is None or body.proof_valid_until is None:
            missing = "proof_signature" if body.proof_signature is None else "proof_valid_until"
            raise InvalidRequest(
                "proof_signature and proof_valid_until go together.", param=missing
            )
        account_proof.verify_proof(
            merchant_key,
            chain.chain_id,
            body.address,
            signature=body.proof_signature,
            valid_until=body.proof_valid_until,
            clock=clock,
        )
    if held_by_another:
        account_proof.reclaim_address(
            session, merchant_key, chain.chain_id, body.address, actor=actor(caller), clock=clock
        )
    account = settlement.register_account(
        session,
        merchant_key,
        chain_id=chain.chain_id,
        address=body.address,
        payout=body.payout,
        operator=body.operator,
        clock=clock,
        signer=signers.for_merchant(merchant_key, body.operator),
        router=chain.router,
    )
    after_commit.append(cache.clear)  # invoices sign with the new operator at once
    return MerchantAccountOut.of(account, signers)


@router.get(
    "/{merchant_id}/account",
    response_model=MerchantAccountOut,
    summary="Retrieve the merchant's on-chain account",
)
def get_account(
    merchant_id: MerchantId,
    session: SessionDep,
    caller: Staff,
    chain: ChainInfoDep,
    signers: SignersDep,
) -> MerchantAccountOut:
    merchant = visible_merchant(session, caller, merchant_id)
    account = (
        None
        if chain is None
        else settlement_repo.account_for_merchant(session, merchant.id or 0, chain.chain_id)
    )
    if account is None:
        raise NotFound("This merchant has no account on this chain.", param="merchant_id")
    return MerchantAccountOut.of(account, signers)


#: How long the text offered by ``link_message`` stays valid (at most ``MAX_VALIDITY``).
LINK_MESSAGE_VALIDITY = timedelta(hours=1)


@router.get(
    "/{merchant_id}/account/link_message",
    response_model=AccountLinkMessageOut,
    summary="The text an address signs to prove it belongs to this merchant",
    description="Sign `message` with `address` (EIP-191 `personal_sign`) and send the "
    "signature as `proof_signature`, with `valid_until` as `proof_valid_until`, to `POST "
    "/v1/merchants/{id}/account`. The text names this merchant, this server's chain and an "
    "expiry an hour ahead, so a proof cannot serve another merchant, chain or a later day.",
)
def account_link_message(
    merchant_id: MerchantId,
    address: Annotated[
        str, Query(pattern=r"^0x[0-9a-fA-F]{40}$", description="The address to prove.")
    ],
    session: SessionDep,
    caller: Manager,
    clock: ClockDep,
    chain: ChainInfoDep,
) -> AccountLinkMessageOut:
    merchant = visible_merchant(session, caller, merchant_id)
    chain = configured_chain(chain)
    valid_until = int((clock.now() + LINK_MESSAGE_VALIDITY).timestamp())
    return AccountLinkMessageOut(
        merchant_id=str(merchant.id),
        chain_id=chain.chain_id,
        address=address,
        valid_until=valid_until,
        message=account_proof.link_message(merchant.id or 0, chain.chain_id, address, valid_until),
    )
