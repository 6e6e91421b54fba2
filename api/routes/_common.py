"""Shared pieces of the resource routes: roles, merchant scoping, error translation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from sqlmodel import Session, SQLModel

from api import queries
from api.deps import ChainInfo, current_request, require_role
from api.errors import InvalidRequest, NotFound
from api.keys.service import AuthenticatedKey
from api.pagination import parse_id
from api.schemas.times import PLAUSIBLE_TIME
from crm import merchants as merchants_service
from crm.errors import NotFound as CRMNotFound
from crm.merchants.models import Merchant

__all__ = [
    "PLAUSIBLE_TIME",
    "Admin",
    "Manager",
    "Staff",
    "actor",
    "configured_chain",
    "crm_errors",
    "merchant_scope",
    "object_merchant",
    "parse_id",
    "response_concerns",
    "token_decimals",
    "visible_merchant",
    "write_merchant",
]


def response_concerns(contact_id: int) -> None:
    """Name the contact on this request's stored idempotent response (if it has one), so that
    erasing the contact destroys it: every route whose answer holds a contact's data."""
    ctx = current_request()
    if ctx is not None and ctx.idempotency is not None:
        ctx.idempotency.contact_id = contact_id


Admin = Annotated[AuthenticatedKey, require_role("admin")]
Manager = Annotated[AuthenticatedKey, require_role("admin", "merchant")]
Staff = Annotated[AuthenticatedKey, require_role("admin", "merchant", "support")]

_NOBODY = -1  # a merchant id no row has: keys bound to a non-CRM merchant see nothing


def actor(caller: AuthenticatedKey) -> str:
    """The audit actor of a request: the API key id (never a secret, never personal data)."""
    return f"api_key:{caller.id}"


def _as_int(value: str | None) -> int:
    """A key's merchant as the CRM's id; only its canonical spelling (a key bound to "01",
    minted before that was refused, would act for merchant 1 where its own merchant could
    neither list nor revoke it)."""
    parsed = parse_id(value)
    return _NOBODY if parsed is None or str(parsed) != value else parsed


def merchant_scope(caller: AuthenticatedKey, requested: str | None = None) -> int | None:
    """The CRM merchant every query is restricted to (None: all, for admins without a filter).

    ``requested`` is an optional ``merchant_id`` filter: admins may name any merchant; for other
    keys a different merchant simply matches nothing (lists are empty, objects 404).
    """
    if caller.scope is None:
        return None if requested is None else _as_int(requested)
    own = _as_int(caller.scope)
    if requested is not None and requested != caller.scope:
        return _NOBODY
    return own


def write_merchant(caller: AuthenticatedKey, requested: str | None) -> int:
    """The merchant a new object belongs to (admins must name it)."""
    value = caller.merchant_for_write(requested)
    merchant = _as_int(value)
    if merchant == _NOBODY:
        if caller.is_admin:
            raise NotFound(f"No such merchant: '{value}'.", param="merchant_id")
        raise InvalidRequest(
            "This API key is not bound to a FollowPay merchant.", param="merchant_id"
        )
    return merchant


def object_merchant(
    session: Session,
    caller: AuthenticatedKey,
    model: type[SQLModel],
    object_id: int | str,
    *,
    what: str,
) -> int:
    """The merchant to pass to the domain service for object ``object_id``.

    Admins: the object's own merchant (404 if it does not exist). Others: their merchant (the
    service then 404s for another merchant's object, exactly as for a missing one).
    """
    scope = merchant_scope(caller)
    if scope is not None:
        return scope
    owner = queries.merchant_of(session, model, object_id)
    if owner is None:
        raise NotFound(f"No such {what}: '{object_id}'.", param="id")
    return owner


@contextmanager
def crm_errors(what: str, object_id: Any = None) -> Iterator[None]:
    """Render the CRM's not-found family as the API's ``404 resource_missing``."""
    try:
        yield
    except CRMNotFound as exc:
        label = f": '{object_id}'" if object_id is not None else ""
        raise NotFound(f"No such {what}{label}.", param=exc.param or "id") from exc


def visible_merchant(session: Session, caller: AuthenticatedKey, merchant_id: str) -> Merchant:
    """The merchant ``merchant_id`` if the caller may see it; else 404, as for a missing one."""
    scope = merchant_scope(caller)
    parsed = parse_id(merchant_id)
    if parsed is None or (scope is not None and scope != parsed):
        raise NotFound(f"No such merchant: '{merchant_id}'.", param="id")
    with crm_errors("merchant", merchant_id):
        return merchants_service.get_merchant(session, parsed)


def token_decimals(chain: ChainInfo | None, token: str) -> int | None:
    """Only the configured token's decimals are known: any other (or no chain configured) is
    ``None`` and its amounts are shown in base units. A guess (ERC-20's usual 18) showed a
    6-decimal invoice 10**12 times too small."""
    if chain is not None and chain.token.lower() == token.lower():
        return chain.decimals
    return None


def configured_chain(chain: ChainInfo | None) -> ChainInfo:
    """The chain this server issues invoices on, or 400 ``chain_unavailable``."""
    if chain is None:
        raise InvalidRequest(
            "This server is not configured with a chain.", code="chain_unavailable"
        )
    return chain
