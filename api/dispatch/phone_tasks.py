"""The phone channel's call tasks as support agents work them: retrieve, complete once."""

from __future__ import annotations

from sqlmodel import Session

from api.dispatch import repository as repo
from api.dispatch.models import PHONE_OUTCOMES, PhoneTask
from api.errors import ApiError, NotFound
from crm.audit import service as audit
from crm.clock import Clock

__all__ = ["PhoneTaskClosed", "complete", "get"]


class PhoneTaskClosed(ApiError):
    status_code = 409
    type = "conflict_error"
    code = "phone_task_closed"
    message = "This call task is already done."


def get(session: Session, merchant_id: int, task_id: int, *, for_update: bool = False) -> PhoneTask:
    task = repo.get_phone_task(session, merchant_id, task_id, for_update=for_update)
    if task is None:
        raise NotFound(f"No such phone task: '{task_id}'.", param="id")
    return task


def complete(
    session: Session, merchant_id: int, task_id: int, *, outcome: str, actor: str, clock: Clock
) -> PhoneTask:
    """Close an open task with its outcome (audited). A second completion is refused, so two
    agents who took the same call cannot overwrite each other's outcome."""
    if outcome not in PHONE_OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")  # the schema admits only known ones
    task = get(session, merchant_id, task_id, for_update=True)
    if task.state != "open":
        raise PhoneTaskClosed(param="id")
    now = clock.now()
    task.state, task.outcome, task.completed_at, task.completed_by = "done", outcome, now, actor
    repo.save(session, task)
    audit.record(
        session,
        merchant_id=merchant_id,
        actor=actor,
        action="phone_task.complete",
        object_type="phone_task",
        object_id=task_id,
        at=now,
        detail={"outcome": outcome},
    )
    return task
