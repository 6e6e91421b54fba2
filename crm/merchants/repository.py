"""Merchant SQL."""

from __future__ import annotations

from sqlmodel import Session

from crm.merchants.models import Merchant

__all__ = ["add", "get"]


def add(session: Session, merchant: Merchant) -> Merchant:
    session.add(merchant)
    session.flush()
    return merchant


def get(session: Session, merchant_id: int) -> Merchant | None:
    return session.get(Merchant, merchant_id)
