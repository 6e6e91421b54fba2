"""/v1/phone_tasks: the phone channel's call tasks, worked by support agents."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path, Query, Request

from api import queries
from api.deps import ClockDep, SessionDep
from api.dispatch import phone_tasks
from api.dispatch.models import PhoneTask
from api.errors import NotFound
from api.pagination import MAX_ID, ListResponse, PageDep
from api.routes._common import (
    Staff,
    actor,
    merchant_scope,
    object_merchant,
    parse_id,
    response_concerns,
)
from api.routing import ApiRouter
from api.schemas.dispatch import PhoneTaskCompleteBody, PhoneTaskOut

__all__ = ["router"]

router = ApiRouter(prefix="/phone_tasks", tags=["phone_tasks"])

TaskId = Annotated[int, Path(ge=1, le=MAX_ID)]


@router.get(
    "",
    response_model=ListResponse[PhoneTaskOut],
    summary="The call queue, earliest call first",
    description="Call tasks ordered by the start of the contact's local calling window, then id. "
    "Default: the open ones; `state=done` lists completed calls, `state=cancelled` those closed "
    "because the contact's consent went. Consent is re-checked here: an open task whose contact "
    "withdrew or was erased shows `blocked_reason` and is never `callable_now`. "
    "`starting_after` is the last task id of the previous page.",
)
def list_phone_tasks(
    request: Request,
    session: SessionDep,
    caller: Staff,
    page: PageDep,
    clock: ClockDep,
    state: Annotated[Literal["open", "done", "cancelled"], Query()] = "open",
    merchant_id: Annotated[
        str | None, Query(min_length=1, max_length=20, description="Admins: one merchant.")
    ] = None,
) -> ListResponse[PhoneTaskOut]:
    scope = merchant_scope(caller, merchant_id)
    after = None
    if page.starting_after is not None:
        task_id = parse_id(page.starting_after)
        after = None if task_id is None else queries.phone_task_cursor(session, scope, task_id)
        if after is None:
            raise NotFound(f"No such object: '{page.starting_after}'.", param="starting_after")
    rows, has_more = queries.phone_tasks_page(
        session, scope, state=state, limit=page.limit, after=after
    )
    now, blocked = clock.now(), phone_tasks.blocked_reasons(session, rows)
    return ListResponse[PhoneTaskOut](
        data=[PhoneTaskOut.of(t, now, blocked.get(t.id or 0)) for t in rows],
        has_more=has_more,
        url=request.url.path,
    )


@router.get("/{task_id}", response_model=PhoneTaskOut, summary="Retrieve a call task")
def get_phone_task(
    task_id: TaskId, session: SessionDep, caller: Staff, clock: ClockDep
) -> PhoneTaskOut:
    merchant_id = object_merchant(session, caller, PhoneTask, task_id, what="phone task")
    task = phone_tasks.get(session, merchant_id, task_id)
    blocked = phone_tasks.blocked_reasons(session, [task]).get(task_id)
    return PhoneTaskOut.of(task, clock.now(), blocked)


@router.post(
    "/{task_id}/complete",
    response_model=PhoneTaskOut,
    summary="Record a call's outcome",
    description="Closes the task (audited). A task is completed once: a second completion is "
    "`409 phone_task_closed`. Consent is re-checked: a task whose contact withdrew consent to "
    "the call or was erased is cancelled instead (`state: cancelled`, `outcome` `no_consent` "
    "or `erased`; the reported outcome is in the audit log).",
)
def complete_phone_task(
    task_id: TaskId,
    body: PhoneTaskCompleteBody,
    session: SessionDep,
    caller: Staff,
    clock: ClockDep,
) -> PhoneTaskOut:
    merchant_id = object_merchant(session, caller, PhoneTask, task_id, what="phone task")
    task = phone_tasks.complete(
        session, merchant_id, task_id, outcome=body.outcome, actor=actor(caller), clock=clock
    )
    response_concerns(task.contact_id)  # its time zone is the contact's
    return PhoneTaskOut.of(task, clock.now())
