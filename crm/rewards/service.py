"""Reward rules. The signature has no rating and no consent argument on purpose."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from crm.rewards import repository as repo
from crm.rewards.models import RewardEntry

__all__ = ["balance", "grant_for_response"]


def grant_for_response(
    session: Session,
    *,
    merchant_id: int,
    contact_id: int,
    followup_id: int,
    points: int,
    now: datetime,
) -> RewardEntry:
    """Idempotent per follow-up (unique constraint backs the check)."""
    existing = repo.get_for_followup(session, followup_id)
    if existing is not None:
        return existing
    try:
        with session.begin_nested():
            return repo.add(
                session,
                RewardEntry(
                    merchant_id=merchant_id,
                    contact_id=contact_id,
                    followup_id=followup_id,
                    points=points,
                    created_at=now,
                ),
            )
    except IntegrityError:
        found = repo.get_for_followup(session, followup_id)
        assert found is not None
        return found


def balance(session: Session, merchant_id: int, contact_id: int) -> int:
    return repo.balance(session, merchant_id, contact_id)
