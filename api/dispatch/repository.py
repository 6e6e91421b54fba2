"""SQL for what the DB-only channels store (in-app messages, phone call tasks). The caller
owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from api.dispatch.models import InAppMessage, PhoneTask
from crm.consent.models import ConsentState
from crm.contacts.models import Contact
from crm.enums import Channel
from crm.followups.models import FollowUp, FollowUpPolicy

__all__ = [
    "call_consent",
    "forget_time_zones",
    "get_phone_task",
    "mark_read",
    "message_for_followup",
    "open_tasks_for_contact",
    "open_tasks_past_window",
    "policy_windows",
    "save",
]


def get_phone_task(
    session: Session, merchant_id: int, task_id: int, *, for_update: bool = False
) -> PhoneTask | None:
    """The task; ``for_update``: write-locked before it is read, then read afresh. The no-op
    ``UPDATE`` is the lock on both databases (a row lock on PostgreSQL; on SQLite it opens the
    writer's transaction, where ``FOR UPDATE`` does nothing and a read before the first write
    let two completions, or a completion and an erasure, each decide on the open task)."""
    where = (col(PhoneTask.id) == task_id, col(PhoneTask.merchant_id) == merchant_id)
    stmt = select(PhoneTask).where(*where)
    if for_update:
        session.connection().execute(sa.update(PhoneTask).where(*where).values(id=PhoneTask.id))
        stmt = stmt.execution_options(populate_existing=True)
    return session.exec(stmt).first()


def open_tasks_for_contact(
    session: Session, merchant_id: int, contact_id: int
) -> Sequence[PhoneTask]:
    """The contact's open call tasks, locked (``ix_api_phone_task_contact``)."""
    stmt = (
        select(PhoneTask)
        .where(
            PhoneTask.contact_id == contact_id,
            PhoneTask.state == "open",
            PhoneTask.merchant_id == merchant_id,
        )
        .order_by(col(PhoneTask.id))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return session.exec(stmt).all()


def open_tasks_past_window(
    session: Session, now: datetime, limit: int, *, after: tuple[datetime, int] | None = None
) -> Sequence[PhoneTask]:
    """Open tasks whose calling window closed, oldest window first, at most ``limit``; with
    ``after``, those following that (``call_before``, id) (a keyset page)."""
    stmt = select(PhoneTask).where(PhoneTask.state == "open", col(PhoneTask.call_before) <= now)
    if after is not None:  # the column comparisons bind the time as the column stores it
        due, task_id = after
        stmt = stmt.where(
            sa.or_(
                col(PhoneTask.call_before) > due,
                sa.and_(col(PhoneTask.call_before) == due, col(PhoneTask.id) > task_id),
            )
        )
    stmt = stmt.order_by(col(PhoneTask.call_before), col(PhoneTask.id)).limit(limit)
    return session.exec(stmt).all()


def policy_windows(session: Session, followup_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
    """Per follow-up, its policy's daily send window in local minutes (absent: no policy)."""
    if not followup_ids:
        return {}
    stmt = (
        sa.select(
            col(FollowUp.id),
            col(FollowUpPolicy.window_start_minute),
            col(FollowUpPolicy.window_end_minute),
        )
        .join(FollowUpPolicy, col(FollowUpPolicy.id) == col(FollowUp.policy_id))
        .where(col(FollowUp.id).in_(followup_ids))
    )
    return {int(f): (int(s), int(e)) for f, s, e in session.execute(stmt)}


def forget_time_zones(session: Session, merchant_id: int, contact_id: int) -> None:
    """An erased contact's call tasks keep their window but no longer name where they live
    (the contact's own ``time_zone`` becomes UTC on erasure too)."""
    session.execute(
        sa.update(PhoneTask)
        .where(col(PhoneTask.contact_id) == contact_id, col(PhoneTask.merchant_id) == merchant_id)
        .values(time_zone="UTC")
    )


def call_consent(session: Session, task_ids: Sequence[int]) -> dict[int, tuple[bool, str | None]]:
    """Per task: ``(contact erased, the contact's consent state for the task's purpose on the
    phone)``, the state ``None`` when never recorded. A task whose follow-up or contact is
    missing, or belongs to another merchant, is absent."""
    if not task_ids:
        return {}
    task, followup, contact, state = PhoneTask, FollowUp, Contact, ConsentState
    stmt = (
        sa.select(col(task.id), col(contact.erased_at), col(state.state))
        .join(
            followup,
            sa.and_(
                col(followup.id) == col(task.followup_id),
                col(followup.merchant_id) == col(task.merchant_id),
                col(followup.contact_id) == col(task.contact_id),
            ),
        )
        .join(
            contact,
            sa.and_(
                col(contact.id) == col(task.contact_id),
                col(contact.merchant_id) == col(task.merchant_id),
            ),
        )
        .outerjoin(
            state,
            sa.and_(
                col(state.contact_id) == col(task.contact_id),
                col(state.purpose) == col(followup.purpose),
                col(state.channel) == Channel.PHONE.value,
            ),
        )
        .where(col(task.id).in_(list(task_ids)))
    )
    return {
        int(task_id): (erased_at is not None, consent)
        for task_id, erased_at, consent in session.execute(stmt)
    }


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


def message_for_followup(
    session: Session, merchant_id: int, followup_id: int
) -> InAppMessage | None:
    """The in-app message a follow-up stored (at most one: ``followup_id`` is unique)."""
    stmt = select(InAppMessage).where(
        InAppMessage.followup_id == followup_id, InAppMessage.merchant_id == merchant_id
    )
    return session.exec(stmt).first()
