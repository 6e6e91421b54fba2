"""Bodies of the customer-facing /v1/public links (no API key; the credential is the link token)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from crm.enums import Channel, Purpose

__all__ = [
    "PublicConsents",
    "PublicFeedback",
    "PublicFeedbackBody",
    "PublicFeedbackEdit",
    "PublicMessage",
    "PublicMessages",
    "PublicWithdrawBody",
]


class PublicFeedback(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "object": "feedback_link",
                    "state": "recorded",
                    "rating": 2,
                    "nps": None,
                    "submitted_at": "2026-01-02T09:00:00Z",
                    "expires_at": "2026-01-16T09:00:00Z",
                    "editable_until": "2026-01-16T09:00:00Z",
                    "reward_points": 10,
                    "follow_up_within_hours": 24,
                    "message": "Thank you. We are sorry: someone will get back to you within 24 h.",
                }
            ]
        }
    )

    object: Literal["feedback_link"] = "feedback_link"
    state: Literal["pending", "recorded"] = Field(
        description="pending: not answered yet; recorded: the answer below (changeable with "
        "PATCH until `editable_until`)."
    )
    rating: int | None
    nps: int | None
    submitted_at: datetime | None
    expires_at: datetime | None
    editable_until: datetime | None = Field(
        default=None, description="Recorded answers: until then, PATCH this link to change it."
    )
    reward_points: int | None = Field(description="Points credited for answering (any answer).")
    follow_up_within_hours: int | None = Field(
        description="Set when the answer opened a support ticket: its first-response SLA."
    )
    message: str


class PublicFeedbackBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"rating": 4, "nps": 9, "comment": "Quick delivery."}]},
    )

    rating: int | None = Field(default=None, ge=1, le=5, description="1 (bad) to 5 (great).")
    nps: int | None = Field(default=None, ge=0, le=10, description="How likely to recommend.")
    comment: str | None = Field(default=None, max_length=4000)


class PublicFeedbackEdit(BaseModel):
    """A change to a recorded answer: only the fields sent change (``null`` clears NPS or the
    comment)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"rating": 2, "comment": "It broke after a day."}]},
    )

    rating: int | None = Field(default=None, ge=1, le=5, description="1 (bad) to 5 (great).")
    nps: int | None = Field(default=None, ge=0, le=10, description="How likely to recommend.")
    comment: str | None = Field(default=None, max_length=4000)

    @model_validator(mode="after")
    def _needs_a_change(self) -> PublicFeedbackEdit:
        if not self.model_fields_set:
            raise ValueError("nothing to change: send rating, nps or comment")
        if "rating" in self.model_fields_set and self.rating is None:
            # the rating is the link's one-click answer: changed, never cleared (CSAT would
            # silently lose a recorded answer)
            raise ValueError("rating can be changed (1-5), not cleared")
        return self


class PublicConsentState(BaseModel):
    purpose: str
    channel: str
    state: str


class PublicConsents(BaseModel):
    object: Literal["consent_preferences"] = "consent_preferences"
    consents: list[PublicConsentState] = Field(description="Only what you have decided so far.")
    withdraw_url: str = Field(description="POST here (no body) to withdraw everything.")


class PublicWithdrawBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"purpose": "marketing"}]}
    )

    purpose: Purpose | None = Field(default=None, description="Default: every purpose.")
    channel: Channel | None = Field(default=None, description="Default: every channel.")


class PublicMessage(BaseModel):
    id: int
    subject: str
    body: str
    created_at: datetime
    read_at: datetime | None


class PublicMessages(BaseModel):
    object: Literal["list"] = "list"
    data: list[PublicMessage]
