"""Metrics SQL (aggregates only; no personal data leaves these queries)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from crm.enums import TicketState
from crm.feedback.models import Feedback
from crm.followups import repository as followups_repo
from crm.followups.models import FollowUp, FollowUpEvent
from crm.tickets.models import Ticket

__all__ = [
    "nps_counts",
    "rating_counts",
    "response_counts",
    "sla_counts",
    "suppression_counts",
    "ticket_tags",
]


def _count_if(cond: Any) -> Any:
    return func.coalesce(func.sum(sa.case((cond, 1), else_=0)), 0)


def rating_counts(
    session: Session, merchant_id: int, start: datetime, end: datetime
) -> tuple[int, int]:
    stmt = select(func.count(col(Feedback.rating)), _count_if(col(Feedback.rating) >= 4)).where(
        Feedback.merchant_id == merchant_id,
        col(Feedback.submitted_at) >= start,
        col(Feedback.submitted_at) < end,
    )
    total, good = session.exec(stmt).one()
    return int(total), int(good)


def nps_counts(
    session: Session, merchant_id: int, start: datetime, end: datetime
) -> tuple[int, int, int]:
    stmt = select(
        func.count(col(Feedback.nps)),
        _count_if(col(Feedback.nps) >= 9),
        _count_if(col(Feedback.nps) <= 6),
    ).where(
        Feedback.merchant_id == merchant_id,
        col(Feedback.submitted_at) >= start,
        col(Feedback.submitted_at) < end,
    )
    total, promoters, detractors = session.exec(stmt).one()
    return int(total), int(promoters), int(detractors)


def response_counts(
    session: Session, merchant_id: int, start: datetime, end: datetime
) -> tuple[int, int]:
    """(sent, responded) for follow-ups sent in the period. A message recorded as maybe
    delivered (``delivery_uncertain``, ``interrupted``: no ``sent_at``) counts as sent when it
    was attempted: left out, it entered the rate only once answered, as an answer."""
    maybe_delivered = sa.and_(
        col(FollowUp.state) == "failed",
        col(FollowUp.reason).in_((followups_repo.UNCERTAIN, followups_repo.INTERRUPTED)),
    )
    sent_at = sa.case(
        (col(FollowUp.sent_at).is_not(None), col(FollowUp.sent_at)),
        (maybe_delivered, col(FollowUp.attempted_at)),
    )
    stmt = select(
        func.count(col(FollowUp.id)), _count_if(col(FollowUp.responded_at).is_not(None))
    ).where(
        FollowUp.merchant_id == merchant_id,
        sent_at >= start,
        sent_at < end,
    )
    sent, responded = session.exec(stmt).one()
    return int(sent), int(responded)


def sla_counts(
    session: Session, merchant_id: int, start: datetime, end: datetime, now: datetime
) -> tuple[int, int]:
    """(hits, misses) for tickets opened in the period whose SLA outcome is known: answered,
    or past its deadline unanswered at ``now`` (whether or not the worker's sweep has recorded
    the breach yet: with no worker running, the rate looked perfect)."""
    responded_in_time = sa.and_(
        col(Ticket.first_response_at).is_not(None),
        col(Ticket.first_response_at) <= col(Ticket.due_at),
    )
    missed = sa.or_(
        col(Ticket.breached_at).is_not(None),
        col(Ticket.first_response_at) > col(Ticket.due_at),
        sa.and_(  # closed unanswered before its deadline (contact erased): neither
            col(Ticket.first_response_at).is_(None),
            col(Ticket.due_at) < now,
            col(Ticket.state) != TicketState.RESOLVED,
        ),
    )
    stmt = select(_count_if(responded_in_time), _count_if(missed)).where(
        Ticket.merchant_id == merchant_id, Ticket.opened_at >= start, Ticket.opened_at < end
    )
    hits, misses = session.exec(stmt).one()
    return int(hits), int(misses)


def ticket_tags(
    session: Session, merchant_id: int, start: datetime, end: datetime
) -> Sequence[Sequence[str]]:
    stmt = select(Ticket.root_cause_tags).where(
        Ticket.merchant_id == merchant_id, Ticket.opened_at >= start, Ticket.opened_at < end
    )
    return session.exec(stmt).all()


def suppression_counts(
    session: Session, merchant_id: int, start: datetime, end: datetime
) -> dict[str, int]:
    stmt = (
        select(FollowUpEvent.reason, func.count())
        .where(
            FollowUpEvent.merchant_id == merchant_id,
            FollowUpEvent.to_state == "suppressed",
            FollowUpEvent.at >= start,
            FollowUpEvent.at < end,
        )
        .group_by(col(FollowUpEvent.reason))
    )
    return {str(reason): int(n) for reason, n in session.exec(stmt).all()}
