"""SQL for what the DB-only channels store (phone call tasks). The caller owns the transaction."""

from __future__ import annotations

from sqlmodel import Session, select

from api.dispatch.models import PhoneTask

__all__ = ["get_phone_task", "save"]


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
