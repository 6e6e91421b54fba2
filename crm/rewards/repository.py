"""Reward SQL."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, func, select

from crm.rewards.models import RewardEntry

__all__ = ["add", "balance", "get_for_followup", "list_for_contact"]


def get_for_followup(session: Session, followup_id: int) -> RewardEntry | None:
    return session.exec(select(RewardEntry).where(RewardEntry.followup_id == followup_id)).first()


def add(session: Session, entry: RewardEntry) -> RewardEntry:
    session.add(entry)
    session.flush()
    return entry


def balance(session: Session, merchant_id: int, contact_id: int) -> int:
    stmt = select(func.coalesce(func.sum(RewardEntry.points), 0)).where(
        RewardEntry.merchant_id == merchant_id, RewardEntry.contact_id == contact_id
    )
    return int(session.exec(stmt).one())


def list_for_contact(session: Session, contact_id: int) -> Sequence[RewardEntry]:
    stmt = select(RewardEntry).where(RewardEntry.contact_id == contact_id)
    return session.exec(stmt.order_by(col(RewardEntry.id))).all()
