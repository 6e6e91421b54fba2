"""What the DB-only channels produce: in-app messages and phone call tasks."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypeAlias, get_args

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from crm._base import UTCDateTime

__all__ = [
    "LINK_TOKEN",
    "PHONE_OUTCOMES",
    "SUBJECT_MAX_LENGTH",
    "InAppMessage",
    "PhoneCancelReason",
    "PhoneOutcome",
    "PhoneTask",
]

#: How a support agent closes a call task (``POST /v1/phone_tasks/{id}/complete``).
PhoneOutcome: TypeAlias = Literal["reached", "no_answer", "voicemail", "wrong_number", "declined"]
PHONE_OUTCOMES: tuple[str, ...] = get_args(PhoneOutcome)
#: Why an open task was cancelled instead (the follow-ups' suppression reasons): the contact's
#: consent to the call is gone, or the contact was erased.
PhoneCancelReason: TypeAlias = Literal["no_consent", "erased"]


#: An in-app message's subject column (a long merchant name is cut to it).
SUBJECT_MAX_LENGTH = 200


class InAppMessage(SQLModel, table=True):
    __tablename__ = "api_inapp_message"
    __table_args__ = (sa.Index("ix_api_inapp_contact", "merchant_id", "contact_id", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: int = Field(foreign_key="crm_merchant.id")
    contact_id: int
    followup_id: int = Field(unique=True)
    subject: str = Field(max_length=SUBJECT_MAX_LENGTH)
    #: the text with :data:`LINK_TOKEN` where the rating links' token goes (rendered on read)
    body: str
    #: the token, encrypted under the contact's data key (NULL: a body from before 0006)
    link_token_enc: bytes | None = Field(default=None, sa_type=sa.LargeBinary(), repr=False)
    created_at: datetime = Field(sa_type=UTCDateTime)
    read_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


#: Stands for the single-use token in a stored in-app body.
LINK_TOKEN = "{link_token}"  # noqa: S105 - a placeholder, not a secret


class PhoneTask(SQLModel, table=True):
    """A call for the support queue, to be made inside the contact's local window."""

    __tablename__ = "api_phone_task"
    __table_args__ = (
        sa.Index("ix_api_phone_task_queue", "merchant_id", "state", "call_after"),
        sa.Index("ix_api_phone_task_contact", "contact_id", "state"),
    )

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: int = Field(foreign_key="crm_merchant.id")
    contact_id: int
    followup_id: int = Field(unique=True)
    time_zone: str = Field(max_length=64)
    call_after: datetime = Field(sa_type=UTCDateTime)
    call_before: datetime = Field(sa_type=UTCDateTime)
    #: The policy's daily window in local minutes (NULL before 0013): an open task whose
    #: window passed is moved to the next one (:func:`api.dispatch.phone_tasks.roll_windows`)
    window_start_minute: int | None = Field(default=None)
    window_end_minute: int | None = Field(default=None)
    #: ``open`` until an agent completes it (``done``, with one of :data:`PHONE_OUTCOMES`) or
    #: the contact's consent goes (``cancelled``, with a :data:`PhoneCancelReason` as outcome)
    state: str = Field(default="open", max_length=16)
    created_at: datetime = Field(sa_type=UTCDateTime)
    outcome: str | None = Field(default=None, max_length=16)
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    completed_by: str | None = Field(default=None, max_length=128)
