"""Read-side SQL of the /v1 resource routes: scoped list selects and id → merchant lookups.

The CRM's own repositories answer per-object questions; these are the list/filter queries the
HTTP layer needs (newest-first selects handed to :func:`api.pagination.paginate`, the support
queue cursor, the reconciliation join). Writes never happen here: they go through the CRM and
settlement services. ``merchant_id=None`` means "every merchant" (admin keys); otherwise every
statement is restricted to that merchant.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, SQLModel, col, select

from api.dispatch.models import PhoneTask
from crm.audit.models import AuditLog
from crm.contacts.models import Contact
from crm.feedback.models import Feedback
from crm.followups.models import FollowUp
from crm.merchants.models import Merchant
from crm.tickets.models import Ticket

__all__ = [
    "audit_select",
    "contacts_select",
    "feedback_by_token_hash",
    "feedback_for_followups",
    "feedback_select",
    "followups_for_invoices",
    "followups_select",
    "merchant_of",
    "merchants_select",
    "phone_task_cursor",
    "phone_tasks_page",
    "ticket_cursor",
    "tickets_page",
]


def _scoped(stmt: Any, column: Any, merchant_id: int | None) -> Any:
    return stmt if merchant_id is None else stmt.where(column == merchant_id)


def merchant_of(session: Session, model: type[SQLModel], object_id: int | str) -> int | None:
    """The merchant owning row ``object_id`` of ``model`` (a table with ``merchant_id``)."""
    table: Any = model
    stmt = select(table.merchant_id).where(table.id == object_id)
    value = session.exec(stmt).first()
    return None if value is None else int(value)


def merchants_select(merchant_id: int | None) -> Any:
    return _scoped(select(Merchant), col(Merchant.id), merchant_id)


def contacts_select(merchant_id: int | None, *, include_erased: bool = True) -> Any:
    stmt = _scoped(select(Contact), col(Contact.merchant_id), merchant_id)
    if not include_erased:
        stmt = stmt.where(col(Contact.erased_at).is_(None))
    return stmt


def audit_select(
    merchant_id: int | None,
    *,
    object_type: str | None = None,
    object_id: str | None = None,
    action: str | None = None,
) -> Any:
    stmt = _scoped(select(AuditLog), col(AuditLog.merchant_id), merchant_id)
    if object_type is not None:
        stmt = stmt.where(AuditLog.object_type == object_type)
    if object_id is not None:
        stmt = stmt.where(AuditLog.object_id == object_id)
    if action is not None:
        stmt = stmt.where(AuditLog.action == action)
    return stmt


def followups_select(
    merchant_id: int | None,
    *,
    state: str | None = None,
    reason: str | None = None,
    contact_id: int | None = None,
) -> Any:
    stmt = _scoped(select(FollowUp), col(FollowUp.merchant_id), merchant_id)
    if state is not None:
        stmt = stmt.where(FollowUp.state == state)
    if reason is not None:
        stmt = stmt.where(FollowUp.reason == reason)
    if contact_id is not None:
        stmt = stmt.where(FollowUp.contact_id == contact_id)
    return stmt


def feedback_select(
    merchant_id: int | None,
    *,
    contact_id: int | None = None,
    rating: int | None = None,
) -> Any:
    """Submitted feedback only (a row without ``submitted_at`` is an unanswered link)."""
    stmt = _scoped(select(Feedback), col(Feedback.merchant_id), merchant_id).where(
        col(Feedback.submitted_at).is_not(None)
    )
    if contact_id is not None:
        stmt = stmt.where(Feedback.contact_id == contact_id)
    if rating is not None:
        stmt = stmt.where(Feedback.rating == rating)
    return stmt


def feedback_by_token_hash(session: Session, token_hash: str) -> Feedback | None:
    """The feedback row a customer link points at (no lock: read-only peek)."""
    return session.exec(select(Feedback).where(Feedback.token_hash == token_hash)).first()


def _queue_cursor(
    session: Session, model: Any, key: Any, merchant_id: int | None, object_id: int
) -> tuple[datetime, int] | None:
    """The ``(key, id)`` position of row ``object_id`` in a queue ordered by ``key``, ``id``."""
    stmt = _scoped(
        select(key, model.id).where(model.id == object_id), col(model.merchant_id), merchant_id
    )
    row = session.exec(stmt).first()
    return None if row is None else (row[0], int(row[1] or 0))


def _queue_page(
    session: Session,
    stmt: Any,
    model: Any,
    key: Any,
    *,
    limit: int,
    after: tuple[datetime, int] | None,
) -> tuple[list[Any], bool]:
    """Keyset page of ``stmt`` ordered by ``key`` then id, after ``after``; ``(rows, has_more)``."""
    ident = col(model.id)
    if after is not None:
        at, last_id = after
        stmt = stmt.where(sa.or_(key > at, sa.and_(key == at, ident > last_id)))
    rows = list(session.exec(stmt.order_by(key, ident).limit(limit + 1)).all())
    return rows[:limit], len(rows) > limit


def ticket_cursor(
    session: Session, merchant_id: int | None, ticket_id: int
) -> tuple[datetime, int] | None:
    return _queue_cursor(session, Ticket, col(Ticket.due_at), merchant_id, ticket_id)


def tickets_page(
    session: Session,
    merchant_id: int | None,
    *,
    states: Sequence[str],
    limit: int,
    after: tuple[datetime, int] | None = None,
    assignee: str | None = None,
) -> tuple[list[Ticket], bool]:
    """Tickets in ``states``, most urgent (earliest SLA due time) first; ``(rows, has_more)``."""
    stmt = _scoped(select(Ticket), col(Ticket.merchant_id), merchant_id).where(
        col(Ticket.state).in_(list(states))
    )
    if assignee is not None:
        stmt = stmt.where(Ticket.assignee == assignee)
    return _queue_page(session, stmt, Ticket, col(Ticket.due_at), limit=limit, after=after)


def phone_task_cursor(
    session: Session, merchant_id: int | None, task_id: int
) -> tuple[datetime, int] | None:
    return _queue_cursor(session, PhoneTask, col(PhoneTask.call_after), merchant_id, task_id)


def phone_tasks_page(
    session: Session,
    merchant_id: int | None,
    *,
    state: str,
    limit: int,
    after: tuple[datetime, int] | None = None,
) -> tuple[list[PhoneTask], bool]:
    """Call tasks in ``state``, the earliest allowed call first; ``(rows, has_more)``."""
    stmt = _scoped(select(PhoneTask), col(PhoneTask.merchant_id), merchant_id).where(
        PhoneTask.state == state
    )
    return _queue_page(
        session, stmt, PhoneTask, col(PhoneTask.call_after), limit=limit, after=after
    )


def followups_for_invoices(
    session: Session, merchant_id: int | None, invoice_ids: Sequence[str]
) -> Sequence[FollowUp]:
    if not invoice_ids:
        return []
    stmt = _scoped(
        select(FollowUp).where(col(FollowUp.invoice_ref).in_(list(invoice_ids))),
        col(FollowUp.merchant_id),
        merchant_id,
    )
    return session.exec(stmt.order_by(col(FollowUp.id))).all()


def feedback_for_followups(session: Session, followup_ids: Sequence[int]) -> Sequence[Feedback]:
    if not followup_ids:
        return []
    stmt = select(Feedback).where(
        col(Feedback.followup_id).in_(list(followup_ids)), col(Feedback.submitted_at).is_not(None)
    )
    return session.exec(stmt).all()
