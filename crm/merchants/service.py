"""Merchant rules."""

from __future__ import annotations

from sqlmodel import Session

from crm.clock import Clock
from crm.errors import InvalidRequest, MerchantNotFound
from crm.merchants import repository as repo
from crm.merchants.models import Merchant, MerchantCreate

__all__ = ["create_merchant", "get_merchant"]


def create_merchant(session: Session, data: MerchantCreate, clock: Clock) -> Merchant:
    name = data.name.strip()
    if not name:
        raise InvalidRequest("merchant name is required", code="invalid_name", param="name")
    return repo.add(session, Merchant(name=name, created_at=clock.now()))


def get_merchant(session: Session, merchant_id: int) -> Merchant:
    merchant = repo.get(session, merchant_id)
    if merchant is None:
        raise MerchantNotFound("no such merchant", param="merchant_id")
    return merchant
