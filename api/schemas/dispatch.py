"""Phone call tasks as the support queue shows them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from api.dispatch.models import PhoneCancelReason, PhoneOutcome, PhoneTask
from crm.errors import InvalidTimeZone
from crm.followups.windows import zone

__all__ = ["PhoneTaskCompleteBody", "PhoneTaskOut"]


class PhoneTaskOut(BaseModel):
    id: int
    object: Literal["phone_task"] = "phone_task"
    merchant_id: str
    contact_id: int = Field(description="The number to call: `GET /v1/contacts/{contact_id}`.")
    followup_id: int
    time_zone: str
    call_after: datetime = Field(description="Start of the contact's local calling window.")
    call_before: datetime = Field(description="End of that window.")
    local_window: str = Field(description="The window in the contact's time, e.g. `08:00-21:00`.")
    callable_now: bool = Field(
        description="Whether the call may be made now: inside the window, and not blocked."
    )
    blocked_reason: PhoneCancelReason | None = Field(
        description="Set on an open task whose contact has withdrawn consent to the call or was "
        "erased since it was queued: do not call (completing it cancels it with this reason)."
    )
    state: Literal["open", "done", "cancelled"] = Field(
        description="`cancelled`: closed without a call because consent went (see `outcome`)."
    )
    outcome: PhoneOutcome | PhoneCancelReason | None = Field(
        description="The call's outcome; for a cancelled task why: `no_consent` (consent to "
        "the call withdrawn or objected to) or `erased` (the contact was erased)."
    )
    completed_at: datetime | None
    completed_by: str | None
    created_at: datetime

    @classmethod
    def of(
        cls, task: PhoneTask, now: datetime, blocked: PhoneCancelReason | None = None
    ) -> PhoneTaskOut:
        """``blocked``: :func:`api.dispatch.phone_tasks.blocked_reasons` of an open task."""
        try:
            local, hours_known = zone(task.time_zone), True
        except InvalidTimeZone:  # tzdata dropped the name: shown in UTC, never callable
            local, hours_known = ZoneInfo("UTC"), False
        open_ = task.state == "open"
        start, end = task.call_after.astimezone(local), task.call_before.astimezone(local)
        return cls(
            id=task.id or 0,
            merchant_id=str(task.merchant_id),
            contact_id=task.contact_id,
            followup_id=task.followup_id,
            time_zone=task.time_zone,
            call_after=task.call_after,
            call_before=task.call_before,
            local_window=f"{start:%H:%M}-{end:%H:%M}",
            callable_now=open_
            and hours_known
            and blocked is None
            and task.call_after <= now < task.call_before,
            blocked_reason=blocked if open_ else None,
            state=task.state,  # type: ignore[arg-type]
            outcome=task.outcome,  # type: ignore[arg-type]
            completed_at=task.completed_at,
            completed_by=task.completed_by,
            created_at=task.created_at,
        )


class PhoneTaskCompleteBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"outcome": "reached"}]}
    )

    outcome: PhoneOutcome
