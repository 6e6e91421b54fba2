"""Erasure as the API runs it: the CRM's (:mod:`crm.privacy`) plus what only the API side
holds, in the caller's transaction: the contact's open phone tasks are cancelled and the
stored idempotent responses that held the contact's data are destroyed."""

from __future__ import annotations

from sqlmodel import Session

from api import idempotency
from api.dispatch import phone_tasks as calls
from crm import privacy
from crm.clock import Clock
from crm.privacy.models import ErasureLog

__all__ = ["erase_contact"]


def erase_contact(
    session: Session,
    merchant_id: int,
    contact_id: int,
    *,
    actor: str,
    clock: Clock,
    request_ref: str | None = None,
) -> ErasureLog:
    """:func:`crm.privacy.erase_contact`, then cancel the contact's open calls and destroy the
    stored idempotent responses about it. Idempotent like the CRM's: a repeat also catches a
    task or response a racing request wrote."""
    log = privacy.erase_contact(
        session, merchant_id, contact_id, actor=actor, clock=clock, request_ref=request_ref
    )
    calls.cancel_without_consent(session, merchant_id, contact_id, actor=actor, clock=clock)
    idempotency.forget_contact(session, contact_id)
    return log
