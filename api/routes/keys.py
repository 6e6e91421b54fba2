"""/v1/api_keys: create (secret shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query, Request

from api.deps import AfterCommit, ConfigCacheDep, SessionDep, require_role
from api.errors import InvalidRequest
from api.keys import repository
from api.keys import service as keys
from api.keys.models import ApiKeyRecord
from api.keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic
from api.keys.service import AuthenticatedKey
from api.pagination import ListResponse, PageDep, paginate
from api.routes._common import visible_merchant
from api.routing import ApiRouter

__all__ = ["router"]

router = ApiRouter(prefix="/api_keys", tags=["api_keys"])

KeyManager = Annotated[AuthenticatedKey, require_role("admin", "merchant")]


@router.post(
    "",
    response_model=ApiKeyCreated,
    summary="Create an API key",
    description="Admins create any key; merchant keys create merchant or support keys for their "
    "own merchant. Every key creates keys of its own mode (`livemode`) only. The `secret` is "
    "returned in this response only; only its SHA-256 is stored.",
)
def create_api_key(body: ApiKeyCreate, session: SessionDep, caller: KeyManager) -> ApiKeyCreated:
    live = caller.livemode if body.livemode is None else body.livemode
    merchant_id = keys.check_can_create(caller, body.merchant_id, body.role, livemode=live)
    if caller.is_admin and body.role.value == "admin" and body.merchant_id is not None:
        raise InvalidRequest("Admin keys are not bound to a merchant.", param="merchant_id")
    if caller.is_admin and merchant_id is not None:
        # a key for a merchant id nobody has (yet) would act for whoever is given it later
        visible_merchant(session, caller, merchant_id)
    record, plaintext = keys.create_key(session, merchant_id, body.role, live, name=body.name)
    return ApiKeyCreated(**ApiKeyPublic.of(record).model_dump(), secret=plaintext)


@router.get("", response_model=ListResponse[ApiKeyPublic], summary="List API keys")
def list_api_keys(
    request: Request,
    session: SessionDep,
    caller: KeyManager,
    page: PageDep,
    merchant_id: Annotated[
        str | None, Query(min_length=1, max_length=64, description="Filter by merchant.")
    ] = None,
) -> ListResponse[ApiKeyPublic]:
    stmt = repository.scoped_select(caller.scope, caller.livemode)
    if merchant_id is not None:  # a filter inside the caller's scope (other merchants: empty)
        stmt = stmt.where(ApiKeyRecord.merchant_id == merchant_id)
    rows, has_more = paginate(
        session,
        stmt,
        created_at=ApiKeyRecord.created_at,
        id=ApiKeyRecord.id,
        page=page,
    )
    return ListResponse[ApiKeyPublic](
        data=[ApiKeyPublic.of(r) for r in rows], has_more=has_more, url=request.url.path
    )


@router.delete("/{key_id}", response_model=ApiKeyPublic, summary="Revoke an API key")
def revoke_api_key(
    key_id: Annotated[str, Path(max_length=40)],
    session: SessionDep,
    caller: KeyManager,
    cache: ConfigCacheDep,
    after_commit: AfterCommit,
) -> ApiKeyPublic:
    revoked = keys.revoke(session, key_id, merchant_id=caller.scope, livemode=caller.livemode)
    after_commit.append(cache.clear)  # this process stops accepting it at once
    return ApiKeyPublic.of(revoked)
