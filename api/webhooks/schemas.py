"""Request and response bodies of the webhook routes."""

from __future__ import annotations

from typing import Annotated, Literal, TypeAlias

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from api.schemas.times import PLAUSIBLE_TIME
from api.webhooks.models import EventType, WebhookAttempt, WebhookDelivery, WebhookEndpoint

__all__ = [
    "DeliveryAttemptPublic",
    "EventTypeOrAll",
    "WebhookDeliveryPublic",
    "WebhookEndpointCreate",
    "WebhookEndpointPublic",
    "WebhookEndpointUpdate",
    "WebhookEndpointWithSecret",
    "WebhookRedeliverFailed",
    "WebhookSecretRotate",
]


EventTypeOrAll: TypeAlias = Literal["*", EventType]
# http(s), an ASCII host name or IPv4 address, optional port and path, no credentials
_URL_PATTERN = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[!-~]*)?$"


def _ts(value: object) -> int | None:
    return int(value.timestamp()) if value is not None else None  # type: ignore[attr-defined]


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://shop.example/followpay/webhooks",
                    "enabled_events": ["invoice.settled", "ticket.opened"],
                    "description": "production backend",
                }
            ]
        },
    )

    url: str = Field(
        min_length=8,
        max_length=2048,
        pattern=_URL_PATTERN,
        description="http(s) URL (https in live mode): an ASCII host name or IPv4 address "
        "(punycode for IDNs), optional port and path, no credentials.",
    )
    enabled_events: list[EventTypeOrAll] = Field(
        min_length=1, max_length=32, description="Event types to receive, or ['*'] for all."
    )
    description: str | None = Field(default=None, max_length=500)
    merchant_id: str | None = Field(
        default=None, min_length=1, max_length=64, description="Admins only: the owning merchant."
    )


class WebhookEndpointUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"disabled": False}, {"enabled_events": ["*"]}]},
    )

    url: str | None = Field(
        default=None,
        min_length=8,
        max_length=2048,
        pattern=_URL_PATTERN,
        description="A new URL, checked as at registration.",
    )
    enabled_events: list[EventTypeOrAll] | None = Field(
        default=None, min_length=1, max_length=32, description="Replaces the event types."
    )
    description: str | None = Field(
        default=None, max_length=500, description="A new description; `null` clears it."
    )
    disabled: bool | None = Field(
        default=None,
        description="`true` disables the endpoint (as DELETE does), `false` enables it again "
        "(within the 16 enabled endpoints a merchant may have).",
    )


class WebhookSecretRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_in: int = Field(
        default=0,
        ge=0,
        le=86_400,
        description="Seconds the old secret keeps signing beside the new one (two `v1=` "
        "entries), up to 24 hours, so a receiver can switch without failing deliveries; 0: it "
        "stops at once.",
    )


class WebhookRedeliverFailed(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"created_gte": "2026-12-01T00:00:00Z", "limit": 100}]},
    )

    created_gte: Annotated[AwareDatetime | None, PLAUSIBLE_TIME] = Field(
        default=None,
        description="Only events first sent at or after this time (ISO-8601 with a time zone), "
        "e.g. when the receiver went down. Default: all of them.",
    )
    limit: int = Field(
        default=100,
        ge=1,
        le=500,
        description="At most this many events per call; `has_more` says whether to call again.",
    )


class WebhookEndpointPublic(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    merchant_id: str
    url: str
    description: str | None
    enabled_events: list[str]
    status: Literal["enabled", "disabled"]
    disabled_reason: Literal["merchant", "failing"] | None = Field(
        default=None,
        description="Why it is disabled: `merchant` (you disabled it) or `failing` (every "
        "attempt failed for a whole retry schedule, ~3.3 days, with nothing delivered: fix the "
        "receiver, enable it again and redeliver what it missed); null while enabled.",
    )
    livemode: bool
    created: int

    @classmethod
    def of(cls, e: WebhookEndpoint) -> WebhookEndpointPublic:
        return cls(
            id=e.id,
            merchant_id=e.merchant_id,
            url=e.url,
            description=e.description,
            enabled_events=list(e.enabled_events),
            status="enabled" if e.enabled else "disabled",
            disabled_reason=None if e.enabled else e.disabled_reason,  # type: ignore[arg-type]
            livemode=e.livemode,
            created=int(e.created_at.timestamp()),
        )


class WebhookEndpointWithSecret(WebhookEndpointPublic):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "we_9kT2hQ0vJx7bN3sLpR5cWg",
                    "object": "webhook_endpoint",
                    "merchant_id": "42",
                    "url": "https://shop.example/followpay/webhooks",
                    "description": "production backend",
                    "enabled_events": ["invoice.settled"],
                    "status": "enabled",
                    "livemode": False,
                    "created": 1767225600,
                    "secret": "whsec_…",
                }
            ]
        }
    )

    secret: str = Field(
        description="The signing secret. Returned only on creation and rotation: store it."
    )

    @classmethod
    def with_secret(cls, e: WebhookEndpoint, secret: str) -> WebhookEndpointWithSecret:
        return cls(**WebhookEndpointPublic.of(e).model_dump(), secret=secret)


class DeliveryAttemptPublic(BaseModel):
    attempt: int
    attempted_at: int
    status_code: int | None
    error: str | None
    duration_ms: int

    @classmethod
    def of(cls, a: WebhookAttempt) -> DeliveryAttemptPublic:
        return cls(
            attempt=a.attempt,
            attempted_at=int(a.attempted_at.timestamp()),
            status_code=a.status_code,
            error=a.error,
            duration_ms=a.duration_ms,
        )


class WebhookDeliveryPublic(BaseModel):
    """A delivery; ``attempts`` (the delivery log) is filled when retrieving one delivery."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "whd_Q2m9xV1cT8pL4nB7sK0fHw",
                    "object": "webhook_delivery",
                    "endpoint": "we_9kT2hQ0vJx7bN3sLpR5cWg",
                    "event_id": "evt_7Yx2pK9qL1mN4bV8cZ3sDa",
                    "event_type": "invoice.settled",
                    "status": "pending",
                    "attempt_count": 1,
                    "next_attempt_at": 1767225610,
                    "last_status_code": 500,
                    "last_error": "HTTP 500",
                    "delivered_at": None,
                    "redelivery_of": None,
                    "created": 1767225600,
                }
            ]
        }
    )

    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    endpoint: str
    event_id: str
    event_type: str
    status: Literal["pending", "delivering", "delivered", "failed"]
    attempt_count: int
    next_attempt_at: int | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: int | None
    redelivery_of: str | None
    created: int
    attempts: list[DeliveryAttemptPublic] | None = None

    @classmethod
    def of(
        cls, d: WebhookDelivery, attempts: list[WebhookAttempt] | None = None
    ) -> WebhookDeliveryPublic:
        return cls(
            id=d.id,
            endpoint=d.endpoint_id,
            event_id=d.event_id,
            event_type=d.event_type,
            status=d.status,  # type: ignore[arg-type]
            attempt_count=d.attempt_count,
            next_attempt_at=_ts(d.next_attempt_at),
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            delivered_at=_ts(d.delivered_at),
            redelivery_of=d.redelivery_of,
            created=int(d.created_at.timestamp()),
            attempts=None if attempts is None else [DeliveryAttemptPublic.of(a) for a in attempts],
        )
