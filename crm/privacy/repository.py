"""Privacy SQL: scrub blind indexes/ciphertexts, keep the erasure log, read a contact's logs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crm.audit.models import AuditLog
from crm.contacts.models import ContactWallet
from crm.feedback.models import Feedback
from crm.followups.models import FollowUp, FollowUpEvent
from crm.privacy.models import ErasureLog
from crm.tickets.models import Ticket, TicketEvent

__all__ = [
    "add_log",
    "audit_entries",
    "followup_events",
    "get_log",
    "scrub_feedback",
    "scrub_wallets",
    "ticket_events",
]


def get_log(session: Session, contact_id: int) -> ErasureLog | None:
    return session.exec(select(ErasureLog).where(ErasureLog.contact_id == contact_id)).first()


def add_log(session: Session, log: ErasureLog) -> ErasureLog:
    session.add(log)
    session.flush()
    return log


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def scrub_wallets(session: Session, contact_id: int) -> int:
    return _rowcount(
        session.execute(
            sa.update(ContactWallet)
            .where(col(ContactWallet.contact_id) == contact_id)
            .values(address_index=None, address_enc=None)
            .execution_options(synchronize_session="fetch")
        )
    )


def scrub_feedback(session: Session, contact_id: int) -> int:
    return _rowcount(
        session.execute(
            sa.update(Feedback)
            .where(col(Feedback.contact_id) == contact_id)
            .values(comment_enc=None, token_hash=None)
            .execution_options(synchronize_session="fetch")
        )
    )


def followup_events(session: Session, contact_id: int) -> Sequence[FollowUpEvent]:
    """Every logged transition of the contact's follow-ups, in order."""
    ids = select(FollowUp.id).where(FollowUp.contact_id == contact_id)
    stmt = select(FollowUpEvent).where(col(FollowUpEvent.followup_id).in_(ids))
    return session.exec(stmt.order_by(col(FollowUpEvent.id))).all()


def ticket_events(session: Session, contact_id: int) -> Sequence[TicketEvent]:
    """Every logged step of the contact's tickets, in order."""
    ids = select(Ticket.id).where(Ticket.contact_id == contact_id)
    stmt = select(TicketEvent).where(col(TicketEvent.ticket_id).in_(ids))
    return session.exec(stmt.order_by(col(TicketEvent.id))).all()


def audit_entries(
    session: Session, merchant_id: int, objects: Iterable[tuple[str, Iterable[int | str]]]
) -> Sequence[AuditLog]:
    """The merchant's audit entries about any of ``objects`` (``(object_type, ids)`` pairs)."""
    clauses = [
        sa.and_(col(AuditLog.object_type) == kind, col(AuditLog.object_id).in_(ids))
        for kind, ids in ((k, sorted({str(i) for i in v})) for k, v in objects)
        if ids
    ]
    if not clauses:
        return []
    stmt = select(AuditLog).where(AuditLog.merchant_id == merchant_id, sa.or_(*clauses))
    return session.exec(stmt.order_by(col(AuditLog.id))).all()
