"""Feedback SQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crm.feedback.models import Feedback

__all__ = [
    "claim_submission",
    "get",
    "get_by_followup",
    "get_by_token_hash",
    "get_for_edit",
    "list_for_contact",
    "revoke_token",
    "save",
    "upsert_token",
]


def save(session: Session, feedback: Feedback) -> Feedback:
    session.add(feedback)
    session.flush()
    return feedback


def get(session: Session, merchant_id: int, feedback_id: int) -> Feedback | None:
    stmt = select(Feedback).where(Feedback.id == feedback_id, Feedback.merchant_id == merchant_id)
    return session.exec(stmt).first()


def get_for_edit(session: Session, merchant_id: int, feedback_id: int) -> Feedback | None:
    """Write-locked, then read afresh: edits of one answer run one after another, so the second
    sees the ticket the first opened. The no-op UPDATE is the lock on both databases (a row
    lock on PostgreSQL; on SQLite it opens the writer's transaction before the read)."""
    session.connection().execute(
        sa.update(Feedback)
        .where(col(Feedback.id) == feedback_id, col(Feedback.merchant_id) == merchant_id)
        .values(id=Feedback.id)
    )
    stmt = (
        select(Feedback)
        .where(Feedback.id == feedback_id, Feedback.merchant_id == merchant_id)
        .execution_options(populate_existing=True)
    )
    return session.exec(stmt).first()


def get_by_followup(session: Session, followup_id: int) -> Feedback | None:
    return session.exec(select(Feedback).where(Feedback.followup_id == followup_id)).first()


def get_by_token_hash(session: Session, token_hash: str, *, lock: bool = True) -> Feedback | None:
    """Read afresh (a row this session peeked at before another request redeemed it must not
    come back with its old values from the identity map), and locked unless ``lock=False``
    (a first look, before the contact's lock: erasure takes the contact, then its answers)."""
    stmt = (
        select(Feedback)
        .where(Feedback.token_hash == token_hash)
        .execution_options(populate_existing=True)
    )
    return session.exec(stmt.with_for_update() if lock else stmt).first()


def claim_submission(session: Session, feedback_id: int, token_hash: str, now: datetime) -> bool:
    """Mark the token redeemed unless another request did first or it was revoked or replaced
    meanwhile (erasure clears it): the one check that holds on SQLite too, where ``FOR
    UPDATE`` is a no-op and a read may predate the write lock."""
    result = session.connection().execute(
        sa.update(Feedback)
        .where(
            col(Feedback.id) == feedback_id,
            col(Feedback.submitted_at).is_(None),
            col(Feedback.token_hash) == token_hash,
        )
        .values(submitted_at=now)
    )
    return result.rowcount == 1


def list_for_contact(session: Session, contact_id: int) -> Sequence[Feedback]:
    stmt = select(Feedback).where(Feedback.contact_id == contact_id).order_by(Feedback.id)  # type: ignore[arg-type]
    return session.exec(stmt).all()


def revoke_token(session: Session, followup_id: int, now: datetime) -> None:
    """The follow-up's link never reached anyone (its delivery failed for sure)."""
    row = get_by_followup(session, followup_id)
    if row is not None and row.submitted_at is None and row.token_hash is not None:
        row.token_hash, row.token_expires_at, row.updated_at = None, None, now
        save(session, row)


def upsert_token(
    session: Session,
    *,
    merchant_id: int,
    followup_id: int,
    contact_id: int,
    token_hash: str,
    expires_at: datetime,
    now: datetime,
) -> Feedback:
    """Attach a fresh token to the follow-up's feedback row (re-issuing revokes the old one)."""
    row = get_by_followup(session, followup_id)
    if row is None:
        row = Feedback(
            merchant_id=merchant_id,
            followup_id=followup_id,
            contact_id=contact_id,
            created_at=now,
            updated_at=now,
        )
    row.token_hash, row.token_expires_at, row.updated_at = token_hash, expires_at, now
    return save(session, row)
