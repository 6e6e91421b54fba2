"""/v1/audit_log: who changed what (staff and admin actions; no personal data)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request

from api import queries
from api.deps import SessionDep
from api.pagination import ListResponse, PageDep, paginate
from api.routes._common import Manager, merchant_scope
from api.routing import ApiRouter
from api.schemas.crm import AuditEntryPublic
from crm.audit.models import AuditLog

__all__ = ["router"]

router = ApiRouter(prefix="/audit_log", tags=["audit_log"])


@router.get(
    "",
    response_model=ListResponse[AuditEntryPublic],
    summary="List audit entries",
    description="Newest first. Filter by `object_type` + `object_id` (e.g. `contact`, `7`) or "
    "by `action` (e.g. `contact.erased`, `consent.withdraw`, `invoice.mark_settled`).",
)
def list_audit_log(
    request: Request,
    session: SessionDep,
    caller: Manager,
    page: PageDep,
    object_type: Annotated[str | None, Query(min_length=1, max_length=32)] = None,
    object_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    action: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    merchant_id: Annotated[
        str | None, Query(min_length=1, max_length=20, description="Admins: one merchant.")
    ] = None,
) -> ListResponse[AuditEntryPublic]:
    stmt = queries.audit_select(
        merchant_scope(caller, merchant_id),
        object_type=object_type,
        object_id=object_id,
        action=action,
    )
    rows, has_more = paginate(session, stmt, created_at=AuditLog.at, id=AuditLog.id, page=page)
    return ListResponse[AuditEntryPublic](
        data=[AuditEntryPublic.of(a) for a in rows], has_more=has_more, url=request.url.path
    )
