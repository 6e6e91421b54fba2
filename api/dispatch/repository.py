"""SQL for what the DB-only channels store (in-app messages, phone call tasks). The caller
owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from api.dispatch.models import InAppMessage, PhoneTask

__all__ = ["get_phone_task", "mark_read", "save"]


def get_phone_task(
    session: Session, merchant_id: int, task_id: int, *, for_update: bool = False
) -> PhoneTask | None:
    stmt = select(PhoneTask).where(PhoneTask.id == task_id, PhoneTask.merchant_id == merchant_id)
    if for_update:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return session.exec(stmt).first()


def save(session: Session, task: PhoneTask) -> PhoneTask:
    session.add(task)
    session.flush()
    return task


def mark_read(session: Session, message_ids: Sequence[int], now: datetime) -> None:
    """Stamp ``read_at`` on those of ``message_ids`` not read before (the first read stays)."""
    if message_ids:
        session.connection().execute(
            sa.update(InAppMessage)
            .where(col(InAppMessage.id).in_(list(message_ids)), col(InAppMessage.read_at).is_(None))
            .values(read_at=now)
        )
