"""Ticket rules: 24 h first-response SLA, assignment, response, resolution, breach sweep."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlmodel import Session

from crm.audit import service as audit
from crm.clock import Clock
from crm.enums import TicketState
from crm.errors import InvalidRequest, InvalidTransition, TicketNotFound
from crm.feedback.models import Feedback
from crm.tags import normalise_tags
from crm.tickets import repository as repo
from crm.tickets.models import Ticket, TicketEvent

__all__ = [
    "FIRST_RESPONSE_SLA",
    "assign",
    "close_for_erased_contact",
    "get_ticket",
    "is_negative",
    "list_queue",
    "open_for_feedback",
    "resolve",
    "respond",
    "sweep_breaches",
    "tag_root_causes",
]

FIRST_RESPONSE_SLA = timedelta(hours=24)


def is_negative(rating: int | None, nps: int | None) -> bool:
    return (rating is not None and rating <= 2) or (nps is not None and nps <= 6)


def _event(session: Session, t: Ticket, kind: str, actor: str, at: datetime) -> None:
    assert t.id is not None
    repo.add_event(
        session,
        TicketEvent(ticket_id=t.id, merchant_id=t.merchant_id, kind=kind, actor=actor, at=at),
    )


def open_for_feedback(session: Session, feedback: Feedback, now: datetime) -> Ticket:
    """Open (once) the ticket for a negative feedback."""
    assert feedback.id is not None
    existing = repo.get_by_feedback(session, feedback.id)
    if existing is not None:
        return existing
    ticket = repo.save(
        session,
        Ticket(
            merchant_id=feedback.merchant_id,
            feedback_id=feedback.id,
            followup_id=feedback.followup_id,
            contact_id=feedback.contact_id,
            state=TicketState.OPEN,
            opened_at=now,
            due_at=now + FIRST_RESPONSE_SLA,
            root_cause_tags=list(feedback.tags),
        ),
    )
    _event(session, ticket, "opened", "system", now)
    return ticket


def get_ticket(
    session: Session, merchant_id: int, ticket_id: int, *, for_update: bool = False
) -> Ticket:
    """``for_update``: locked until commit, for a change (:func:`repo.get`)."""
    ticket = repo.get(session, merchant_id, ticket_id, for_update=for_update)
    if ticket is None:
        raise TicketNotFound("no such ticket", param="ticket_id")
    return ticket


def _audit(
    session: Session, t: Ticket, action: str, actor: str, at: datetime, **detail: object
) -> None:
    audit.record(
        session,
        actor=actor,
        action=f"ticket.{action}",
        object_type="ticket",
        object_id=t.id or 0,
        at=at,
        merchant_id=t.merchant_id,
        detail=dict(detail),
    )


def assign(
    session: Session, merchant_id: int, ticket_id: int, assignee: str, *, actor: str, clock: Clock
) -> Ticket:
    if not assignee or len(assignee) > 128:
        raise InvalidRequest("assignee is required", code="invalid_assignee", param="assignee")
    t = get_ticket(session, merchant_id, ticket_id, for_update=True)
    if t.state == TicketState.RESOLVED:
        raise InvalidTransition("ticket is resolved")
    now = clock.now()
    t.assignee = assignee
    if t.state == TicketState.OPEN:
        t.state = TicketState.ASSIGNED
    repo.save(session, t)
    _event(session, t, "assigned", actor, now)
    _audit(session, t, "assigned", actor, now, assignee=assignee)
    return t


def _breach(session: Session, t: Ticket, at: datetime) -> bool:
    assert t.id is not None
    if repo.claim_breach(session, t.id, at):
        _event(session, t, "sla_breached", "system", at)
        return True
    return False


def respond(
    session: Session, merchant_id: int, ticket_id: int, *, actor: str, clock: Clock
) -> Ticket:
    """Record the first response (a late one also records the breach, exactly once)."""
    t = get_ticket(session, merchant_id, ticket_id, for_update=True)
    if t.state not in (TicketState.OPEN, TicketState.ASSIGNED):
        raise InvalidTransition(f"ticket is {t.state}")
    now = clock.now()
    if now > t.due_at:
        _breach(session, t, now)
        session.refresh(t)
    t.first_response_at = now
    t.state = TicketState.RESPONDED
    if t.assignee is None:
        t.assignee = actor
    repo.save(session, t)
    _event(session, t, "responded", actor, now)
    _audit(session, t, "responded", actor, now)
    return t


def resolve(
    session: Session, merchant_id: int, ticket_id: int, *, actor: str, clock: Clock
) -> Ticket:
    t = get_ticket(session, merchant_id, ticket_id, for_update=True)
    if t.state != TicketState.RESPONDED:
        raise InvalidTransition("a ticket is resolved only after a first response")
    now = clock.now()
    t.state, t.resolved_at = TicketState.RESOLVED, now
    repo.save(session, t)
    _event(session, t, "resolved", actor, now)
    _audit(session, t, "resolved", actor, now)
    return t


def tag_root_causes(
    session: Session,
    merchant_id: int,
    ticket_id: int,
    tags: Sequence[str],
    *,
    actor: str,
    clock: Clock,
) -> Ticket:
    clean = normalise_tags(tags, "root_cause_tags")
    t = get_ticket(session, merchant_id, ticket_id, for_update=True)
    now = clock.now()
    t.root_cause_tags = clean
    repo.save(session, t)
    _event(session, t, "tagged", actor, now)
    _audit(session, t, "tagged", actor, now, tags=clean)
    return t


def list_queue(
    session: Session,
    merchant_id: int,
    *,
    limit: int = 50,
    starting_after: tuple[datetime, int] | None = None,
) -> list[Ticket]:
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit must be between 1 and 100", code="invalid_limit", param="limit")
    return list(repo.queue_page(session, merchant_id, limit, starting_after))


def close_for_erased_contact(session: Session, contact_id: int, now: datetime, actor: str) -> int:
    """An erased contact's unresolved tickets are resolved (event ``closed_contact_erased``):
    nobody is left to answer, and an open one would only run out its SLA clock. One past its
    deadline unanswered is a miss, whether or not the sweep got to it first (its breach is
    recorded now; no ``ticket.breached`` alert, as the ticket is closed); one closed before
    its clock ran out counts as neither. Returns how many."""
    closed = 0
    for t in repo.list_for_contact(session, contact_id):
        if t.state == TicketState.RESOLVED:
            continue
        if t.first_response_at is None and now > t.due_at and _breach(session, t, now):
            session.refresh(t)
        t.state, t.resolved_at = TicketState.RESOLVED, now
        repo.save(session, t)
        _event(session, t, "closed_contact_erased", actor, now)
        _audit(session, t, "closed", actor, now, reason="contact_erased")
        closed += 1
    return closed


def sweep_breaches(session: Session, now: datetime) -> list[Ticket]:
    """Record each overdue, unanswered ticket's breach exactly once. Returns the tickets it
    breached now (the caller announces them: ``ticket.breached``)."""
    breached: list[Ticket] = []
    for ticket_id in repo.unbreached_overdue_ids(session, now):
        if ticket_id is not None and repo.claim_breach(session, ticket_id, now):
            t = session.get(Ticket, ticket_id, populate_existing=True)
            assert t is not None
            _event(session, t, "sla_breached", "system", now)
            breached.append(t)
    session.flush()
    return breached
