"""Webhook endpoints, deliveries (the outbox) and the per-attempt delivery log."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal, TypeAlias, get_args

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from api.db import UTCDateTime

__all__ = [
    "EVENT_TYPES",
    "DeliveryStatus",
    "EventType",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]

#: Every event a merchant can subscribe to: the one list both the API's schema and
#: :func:`api.webhooks.enqueue` check against (an event emitted but missing here would fail the
#: emitting transaction). ``followup.requested`` is the follow-up worker's webhook/SMS channel,
#: POSTed directly rather than through the outbox (:class:`api.dispatch.channels.WebhookChannel`).
EventType: TypeAlias = Literal[
    "invoice.created",
    "invoice.processing",
    "invoice.settled",
    "invoice.expired",
    "invoice.invalid",
    "invoice.payment_held",
    "invoice.refunded",
    "invoice.refund_unmatched",
    "invoice.reorged",
    "payment.unmatched",
    "feedback.received",
    "feedback.updated",
    "ticket.opened",
    "ticket.breached",
    "consent.changed",
    "followup.requested",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookEndpoint(SQLModel, table=True):
    __tablename__ = "api_webhook_endpoints"
    __table_args__ = (
        sa.Index(
            "ix_api_webhook_endpoints_merchant_id_created_at", "merchant_id", "created_at", "id"
        ),
    )

    id: str = Field(primary_key=True, max_length=40)
    merchant_id: str = Field(max_length=64)
    url: str = Field(max_length=2048)
    description: str | None = Field(default=None, max_length=500)
    enabled_events: list[str] = Field(default_factory=list, sa_type=sa.JSON())
    enabled: bool = Field(default=True)
    #: ``merchant`` (its own disable) or ``failing`` (every attempt failed for the whole retry
    #: schedule); None while enabled
    disabled_reason: str | None = Field(default=None, max_length=16)
    livemode: bool = Field(default=False)
    secret_encrypted: str = Field(max_length=512, repr=False)
    previous_secret_encrypted: str | None = Field(default=None, max_length=512, repr=False)
    previous_secret_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    created_at: datetime = Field(sa_type=UTCDateTime())
    updated_at: datetime = Field(sa_type=UTCDateTime())


class WebhookDelivery(SQLModel, table=True):
    """One event for one endpoint. ``payload`` is the exact JSON body sent on every attempt."""

    __tablename__ = "api_webhook_deliveries"
    __table_args__ = (
        sa.Index("ix_api_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        sa.Index(
            "ix_api_webhook_deliveries_endpoint_id_created_at", "endpoint_id", "created_at", "id"
        ),
    )

    id: str = Field(primary_key=True, max_length=40)
    endpoint_id: str = Field(foreign_key="api_webhook_endpoints.id", max_length=40)
    merchant_id: str = Field(max_length=64, index=True)
    event_id: str = Field(max_length=40, index=True)
    event_type: str = Field(max_length=64)
    payload: str = Field(sa_type=sa.Text())
    status: str = Field(default=DeliveryStatus.PENDING.value, max_length=16)
    attempt_count: int = Field(default=0)
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    locked_until: datetime | None = Field(default=None, sa_type=UTCDateTime())
    last_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    last_status_code: int | None = Field(default=None)
    last_error: str | None = Field(default=None, max_length=500)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    redelivery_of: str | None = Field(default=None, max_length=40)
    created_at: datetime = Field(sa_type=UTCDateTime())


class WebhookAttempt(SQLModel, table=True):
    """The delivery log: one row per HTTP attempt."""

    __tablename__ = "api_webhook_attempts"

    id: str = Field(primary_key=True, max_length=40)
    delivery_id: str = Field(foreign_key="api_webhook_deliveries.id", max_length=40, index=True)
    attempt: int
    attempted_at: datetime = Field(sa_type=UTCDateTime())
    status_code: int | None = Field(default=None)
    error: str | None = Field(default=None, max_length=500)
    duration_ms: int = Field(default=0)
    response_excerpt: str | None = Field(default=None, max_length=1000)
