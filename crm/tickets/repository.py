"""Ticket SQL, including the support queue and the breach sweep."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from crm._base import UTCDateTime
from crm.contacts.models import Contact
from crm.enums import TicketState
from crm.tickets.models import Ticket, TicketEvent

__all__ = [
    "OPEN_STATES",
    "add_event",
    "claim_breach",
    "get",
    "get_by_feedback",
    "list_events",
    "list_for_contact",
    "queue_page",
    "queue_sql",
    "save",
    "unbreached_overdue_ids",
]

OPEN_STATES = ("open", "assigned")


def save(session: Session, ticket: Ticket) -> Ticket:
    session.add(ticket)
    session.flush()
    return ticket


def add_event(session: Session, event: TicketEvent) -> None:
    session.add(event)


def get(
    session: Session, merchant_id: int, ticket_id: int, *, for_update: bool = False
) -> Ticket | None:
    """The merchant's ticket. ``for_update``: read afresh and locked until commit, for a
    transition that writes it. The no-op UPDATE is the lock on SQLite too (the API's engine
    reads outside a transaction until its first write, so ``FOR UPDATE`` alone let a racing
    transition commit in between: an assign overwrote a response, and a second response was
    accepted). The ticket's contact is locked first, in the order erasure takes them: the
    transition's write re-checks the ticket's foreign keys, which on PostgreSQL waits on a
    contact an erasure holds while the erasure waits for the ticket (a deadlock)."""
    scope = (col(Ticket.id) == ticket_id, col(Ticket.merchant_id) == merchant_id)
    stmt = select(Ticket).where(*scope)
    if for_update:
        contact = select(Ticket.contact_id).where(*scope).scalar_subquery()
        session.connection().execute(
            sa.update(Contact).where(col(Contact.id) == contact).values(id=Contact.id)
        )
        session.connection().execute(sa.update(Ticket).where(*scope).values(id=Ticket.id))
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return session.exec(stmt).first()


def get_by_feedback(session: Session, feedback_id: int) -> Ticket | None:
    return session.exec(select(Ticket).where(Ticket.feedback_id == feedback_id)).first()


@lru_cache(maxsize=32)
def _queue_stmt(limit: int, with_cursor: bool) -> sa.Select[tuple[Ticket]]:
    """Built once per shape (building the ORM union costs milliseconds); values are bound."""
    branches = []
    for state in OPEN_STATES:
        branch = select(Ticket).where(
            Ticket.merchant_id == sa.bindparam("merchant_id"), Ticket.state == state
        )
        if with_cursor:
            due: sa.BindParameter[datetime] = sa.bindparam("after_due", type_=UTCDateTime())
            tid: sa.BindParameter[int] = sa.bindparam("after_id", type_=sa.Integer())
            branch = branch.where(
                sa.or_(
                    col(Ticket.due_at) > due,
                    sa.and_(col(Ticket.due_at) == due, col(Ticket.id) > tid),
                )
            )
        sub = branch.order_by(col(Ticket.due_at), col(Ticket.id)).limit(limit).subquery()
        branches.append(sa.select(sub))
    merged = sa.union_all(*branches).subquery()
    ticket = aliased(Ticket, merged)
    return (
        select(ticket)  # type: ignore[return-value]
        .order_by(merged.c.due_at, merged.c.id)
        .limit(limit)
    )


def _queue_params(
    merchant_id: int, starting_after: tuple[datetime, int] | None
) -> dict[str, object]:
    params: dict[str, object] = {"merchant_id": merchant_id}
    if starting_after is not None:
        params["after_due"], params["after_id"] = starting_after
    return params


def queue_sql(
    merchant_id: int, limit: int = 50, starting_after: tuple[datetime, int] | None = None
) -> sa.Select[tuple[Ticket]]:
    """Open tickets for one merchant, most urgent first.

    One branch per open state, each an ordered, limited range scan of the
    (merchant_id, state, due_at) index; the union of at most ``2 * limit`` rows is merged. This
    keeps the query O(limit) however long the merchant's queue is (a plain ``state IN (...)``
    would have to sort every open ticket).
    """
    stmt = _queue_stmt(limit, starting_after is not None)
    return stmt.params(_queue_params(merchant_id, starting_after))


def queue_page(
    session: Session,
    merchant_id: int,
    limit: int = 50,
    starting_after: tuple[datetime, int] | None = None,
) -> Sequence[Ticket]:
    stmt = _queue_stmt(limit, starting_after is not None)
    params = _queue_params(merchant_id, starting_after)
    return session.exec(stmt, params=params).all()  # type: ignore[call-overload,no-any-return]


def unbreached_overdue_ids(session: Session, now: datetime) -> Sequence[int | None]:
    stmt = select(Ticket.id).where(
        col(Ticket.first_response_at).is_(None),
        col(Ticket.breached_at).is_(None),
        Ticket.due_at < now,  # a response at due_at is on time (tickets.respond)
        col(Ticket.state) != TicketState.RESOLVED,  # closed unanswered (contact erased)
    )
    return session.exec(stmt.order_by(col(Ticket.id))).all()


def claim_breach(session: Session, ticket_id: int, at: datetime) -> bool:
    """Conditional update: True only for the one caller that records the breach, and never
    over a first response (the sweep lists before it claims: under READ COMMITTED an on-time
    answer can commit in between; the update re-reads the row and leaves it)."""
    result = session.execute(
        sa.update(Ticket)
        .where(
            col(Ticket.id) == ticket_id,
            col(Ticket.breached_at).is_(None),
            col(Ticket.first_response_at).is_(None),
        )
        .values(breached_at=at)
        .execution_options(synchronize_session="fetch")
    )
    return getattr(result, "rowcount", 0) == 1


def list_events(session: Session, ticket_id: int) -> Sequence[TicketEvent]:
    stmt = select(TicketEvent).where(TicketEvent.ticket_id == ticket_id)
    return session.exec(stmt.order_by(col(TicketEvent.id))).all()


def list_for_contact(session: Session, contact_id: int) -> Sequence[Ticket]:
    stmt = select(Ticket).where(Ticket.contact_id == contact_id).order_by(col(Ticket.id))
    return session.exec(stmt).all()
