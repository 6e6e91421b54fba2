"""Audit SQL."""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from crm.audit.models import AuditLog

__all__ = ["add", "list_for_object"]


def add(session: Session, entry: AuditLog) -> AuditLog:
    session.add(entry)
    session.flush()
    return entry


def list_for_object(
    session: Session, merchant_id: int, object_type: str, object_id: str
) -> Sequence[AuditLog]:
    stmt = (
        select(AuditLog)
        .where(
            AuditLog.merchant_id == merchant_id,
            AuditLog.object_type == object_type,
            AuditLog.object_id == object_id,
        )
        .order_by(col(AuditLog.id))
    )
    return session.exec(stmt).all()
