"""Record who changed what. Every staff/admin service function calls :func:`record`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlmodel import Session

from crm.audit import repository as repo
from crm.audit.models import AuditLog
from crm.errors import InvalidRequest

__all__ = ["list_for_object", "record"]


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    object_type: str,
    object_id: int | str,
    at: datetime,
    merchant_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditLog:
    if not actor or len(actor) > 128:
        raise InvalidRequest("actor is required", code="invalid_actor", param="actor")
    entry = AuditLog(
        merchant_id=merchant_id,
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        at=at,
        detail=detail or {},
    )
    return repo.add(session, entry)


def list_for_object(
    session: Session, merchant_id: int, object_type: str, object_id: int | str
) -> Sequence[AuditLog]:
    return repo.list_for_object(session, merchant_id, object_type, str(object_id))
