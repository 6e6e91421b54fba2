"""The phone channel's call tasks as support agents work them: retrieve, complete once; and
cancelled as soon as the contact's consent to the call is gone.

A task is callable only while the contact, not erased, has consent ``granted`` for the
follow-up's purpose on the phone. Every API path that withdraws, objects or erases calls
:func:`cancel_without_consent` in its own transaction; listing (:func:`blocked_reasons`) and
completing re-check, for a task the worker wrote while a withdrawal was committing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlmodel import Session

from api.dispatch import repository as repo
from api.dispatch.channels import call_window
from api.dispatch.models import PHONE_OUTCOMES, PhoneCancelReason, PhoneTask
from api.errors import ApiError, NotFound
from crm.audit import service as audit
from crm.clock import Clock
from crm.enums import ConsentStatus
from crm.errors import InvalidTimeZone
from crm.followups.windows import zone

__all__ = [
    "PhoneTaskClosed",
    "blocked_reasons",
    "cancel_without_consent",
    "complete",
    "get",
    "retime_for_contact",
    "roll_windows",
]

log = logging.getLogger(__name__)


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


def blocked_reasons(session: Session, tasks: Sequence[PhoneTask]) -> dict[int, PhoneCancelReason]:
    """Why each open task of ``tasks`` may not be called (absent: it may). Fails closed: a task
    without its follow-up or contact counts as without consent."""
    open_ids = [t.id for t in tasks if t.id is not None and t.state == "open"]
    facts = repo.call_consent(session, open_ids)
    reasons: dict[int, PhoneCancelReason] = {}
    for task_id in open_ids:
        erased, state = facts.get(task_id, (False, None))
        if erased:
            reasons[task_id] = "erased"
        elif state != ConsentStatus.GRANTED.value:
            reasons[task_id] = "no_consent"
    return reasons


def roll_windows(session: Session, now: datetime, limit: int = 500) -> int:
    """Move open tasks whose calling window closed to the contact's next one (they stayed open
    and never callable again). A task from before its window's minutes were kept takes them
    from its follow-up's policy (else from its stored bounds' local times, whose start may be
    the hour it was made). Returns how many moved (about ``limit`` a call at most).

    Tasks it cannot move (a zone that no longer resolves) stay first in line, so it reads on
    past them: ``limit`` of them at the head stopped every other task's window for good."""
    moved, after = 0, None
    while moved < limit:
        tasks = repo.open_tasks_past_window(session, now, limit, after=after)
        if tasks:  # the page's end as read: _retime moves the tasks it can into the future
            assert tasks[-1].id is not None
            page_end = (tasks[-1].call_before, tasks[-1].id)
        moved += _retime(session, tasks, now)
        if len(tasks) < limit:
            break
        after = page_end
    return moved


def retime_for_contact(
    session: Session, merchant_id: int, contact_id: int, time_zone: str, now: datetime
) -> int:
    """The contact moved to ``time_zone``: its open tasks' windows follow it (an agent was
    told a contact was callable at night in the zone it now lives in). How many."""
    tasks = repo.open_tasks_for_contact(session, merchant_id, contact_id)
    return _retime(session, tasks, now, time_zone)


def _retime(
    session: Session, tasks: Sequence[PhoneTask], now: datetime, moved_to: str | None = None
) -> int:
    """Each task's window from ``now`` (:func:`call_window`) in its zone, or in ``moved_to``
    (the window's minutes are read in the zone the task was made in, and only needed for a
    task from before they were kept: a contact moved out of a zone that no longer resolves
    takes its task along). A task whose zone no longer resolves and that stays there is left
    as it is (logged): its calling hours are unknown."""
    legacy = [t.followup_id for t in tasks if t.window_start_minute is None]
    policies = repo.policy_windows(session, legacy)
    done = 0
    for task in tasks:
        target = moved_to or task.time_zone
        try:
            zone(target)
        except InvalidTimeZone:
            log.warning("phone task %s: time zone %r no longer resolves", task.id, target)
            continue
        start, end = task.window_start_minute, task.window_end_minute
        if start is None or end is None:
            try:
                local = zone(task.time_zone)
            except InvalidTimeZone:
                log.warning("phone task %s: no window minutes and no zone to read them", task.id)
                continue
            opened, closed = task.call_after.astimezone(local), task.call_before.astimezone(local)
            start, end = policies.get(
                task.followup_id,
                (opened.hour * 60 + opened.minute, closed.hour * 60 + closed.minute or 24 * 60),
            )
        if not 0 <= start < end <= 24 * 60:  # read off bounds that crossed midnight
            log.warning("phone task %s: no usable window to move it to", task.id)
            continue
        if moved_to is not None:
            task.time_zone = moved_to
        task.call_after, task.call_before = call_window(now, task.time_zone, start, end)
        task.window_start_minute, task.window_end_minute = start, end
        repo.save(session, task)
        done += 1
    return done


def cancel_without_consent(
    session: Session, merchant_id: int, contact_id: int, *, actor: str, clock: Clock
) -> int:
    """Cancel the contact's open tasks it may no longer be called for (audited); call it in
    the transaction that withdrew, objected or erased. Returns how many."""
    tasks = repo.open_tasks_for_contact(session, merchant_id, contact_id)
    reasons = blocked_reasons(session, tasks)
    now = clock.now()
    for task in tasks:
        if task.id in reasons:
            _cancel(session, task, reasons[task.id], actor=actor, at=now)
    return len(reasons)


def complete(
    session: Session, merchant_id: int, task_id: int, *, outcome: str, actor: str, clock: Clock
) -> PhoneTask:
    """Close an open task with its outcome (audited). A second completion is refused, so two
    agents who took the same call cannot overwrite each other's outcome. A task whose consent
    is gone is cancelled with the reason instead (the reported outcome goes to the audit log)."""
    if outcome not in PHONE_OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")  # the schema admits only known ones
    task = get(session, merchant_id, task_id, for_update=True)
    if task.state != "open":
        raise PhoneTaskClosed(param="id")
    now = clock.now()
    reason = blocked_reasons(session, [task]).get(task_id)
    if reason is not None:
        _cancel(session, task, reason, actor=actor, at=now, reported_outcome=outcome)
        return task
    task.state, task.outcome, task.completed_at, task.completed_by = "done", outcome, now, actor
    repo.save(session, task)
    _audit(session, task, "phone_task.complete", actor, now, outcome=outcome)
    return task


def _cancel(
    session: Session,
    task: PhoneTask,
    reason: PhoneCancelReason,
    *,
    actor: str,
    at: datetime,
    **detail: str,
) -> None:
    task.state, task.outcome, task.completed_at, task.completed_by = "cancelled", reason, at, actor
    repo.save(session, task)
    _audit(session, task, "phone_task.cancel", actor, at, reason=reason, **detail)


def _audit(
    session: Session, task: PhoneTask, action: str, actor: str, at: datetime, **detail: str
) -> None:
    audit.record(
        session,
        merchant_id=task.merchant_id,
        actor=actor,
        action=action,
        object_type="phone_task",
        object_id=task.id or 0,
        at=at,
        detail=dict(detail),
    )
