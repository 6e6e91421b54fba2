"""Webhook rules: endpoints, secrets, the outbox (``enqueue``), the retry schedule, redelivery.

Sending is :mod:`api.webhooks.delivery`. Retry schedule after a failed attempt (non-2xx,
timeout, connection error): :data:`RETRY_SCHEDULE`, 10 s up to 24 h (~3.3 days); after the
11th failed attempt the delivery is ``failed``. ``redeliver`` creates a NEW delivery of the
same event (same event id, same body; receivers dedupe on ``FollowPay-Event-Id``), and
``redeliver_failed`` does so for every event an endpoint never received.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlmodel import Session

from api.db import new_id, utcnow
from api.errors import ApiError, InvalidRequest, NotFound
from api.webhooks import repository
from api.webhooks.models import (
    EVENT_TYPES,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
)
from api.webhooks.secrets import SecretCipher, SecretDecryptionError
from api.webhooks.signing import SIGNATURE_HEADER, sign
from api.webhooks.targets import TargetPolicy

__all__ = [
    "DISABLED_BY_MERCHANT",
    "DISABLED_FAILING",
    "MAX_ENABLED_ENDPOINTS",
    "RETRY_SCHEDULE",
    "EndpointChanges",
    "EndpointDisabled",
    "SigningTarget",
    "create_endpoint",
    "disable_endpoint",
    "endpoint_secrets",
    "enqueue",
    "event_body",
    "get_endpoint",
    "next_retry_delay",
    "redeliver",
    "redeliver_failed",
    "rotate_secret",
    "signed_headers",
    "signing_targets",
    "update_endpoint",
    "validate_events",
    "validate_url",
]

logger = logging.getLogger("followpay.webhooks")

#: Delays after each failed attempt: ~3.3 days in all (Stripe retries for 3 days), so a receiver
#: down over a weekend loses nothing; the 11th failure marks the delivery ``failed``.
RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=10),
    timedelta(minutes=1),
    timedelta(minutes=10),
    timedelta(hours=1),
    timedelta(hours=2),
    timedelta(hours=4),
    timedelta(hours=8),
    timedelta(hours=16),
    timedelta(hours=24),
    timedelta(hours=24),
)
USER_AGENT = "FollowPay-Webhooks/1.0"
#: Why an endpoint is disabled (``disabled_reason``): its merchant said so, or every attempt
#: failed for a whole retry schedule with nothing delivered meanwhile (Stripe does the same).
DISABLED_BY_MERCHANT = "merchant"
DISABLED_FAILING = "failing"
#: Enabled endpoints per merchant (Stripe's limit too). A follow-up's webhook attempt POSTs to
#: all of them at once (:class:`api.dispatch.channels.WebhookChannel`), so this bounds it.
MAX_ENABLED_ENDPOINTS = 16
_PLAIN = SecretCipher(None)


def next_retry_delay(failed_attempts: int) -> timedelta | None:
    """Delay before the next attempt after ``failed_attempts`` failures; ``None``: give up."""
    if 1 <= failed_attempts <= len(RETRY_SCHEDULE):
        return RETRY_SCHEDULE[failed_attempts - 1]
    return None


def _new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def validate_url(url: str, *, livemode: bool, targets: TargetPolicy | None = None) -> str:
    """The url's form (http(s), https in live mode, no credentials) and, with ``targets``, its
    host's addresses (:meth:`TargetPolicy.check_url`: ``400 url_not_allowed``) and https for
    every key unless the policy allows private targets."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("The url must be an absolute http(s) URL.", param="url")
    if livemode and parts.scheme != "https":
        raise InvalidRequest("Live-mode webhook endpoints must use https.", param="url")
    if parts.username or parts.password:
        raise InvalidRequest("The url must not contain credentials.", param="url")
    try:
        port = parts.port
    except ValueError:  # out of range or not a number
        port = 0
    if port == 0:  # past 65535 the socket layer wraps it: events would go to another port
        raise InvalidRequest("The url's port must be a number from 1 to 65535.", param="url")
    try:  # as deliveries will: httpx's request (IDNA 2008 for the host), then the resolver's
        httpx.Request("POST", url)
        parts.hostname.encode("idna")
    except (httpx.InvalidURL, UnicodeError):
        raise InvalidRequest(
            "The url's host is not a valid host name or IP address.", param="url"
        ) from None
    if targets is not None:
        targets.check_url(url)
        if parts.scheme != "https" and not targets.allow_private:
            # Keys' modes label keys, they do not partition data: a test key's endpoint gets
            # the merchant's real events too, personal data included. Plain http is for
            # development receivers only (where private targets are allowed).
            raise InvalidRequest(
                "Webhook endpoints must use https (plain http only where private targets "
                "are allowed: FOLLOWPAY_WEBHOOK_ALLOW_PRIVATE_TARGETS, for development).",
                param="url",
            )
    return url


def validate_events(events: Sequence[str]) -> list[str]:
    if not events:
        raise InvalidRequest(
            "enabled_events needs at least one event type (or '*').", param="enabled_events"
        )
    out: list[str] = []
    for i, event in enumerate(events):
        if event != "*" and event not in EVENT_TYPES:
            raise InvalidRequest(
                f"Unknown event type '{event}'. Known: {', '.join(EVENT_TYPES)} or '*'.",
                param=f"enabled_events[{i}]",
            )
        if event not in out:
            out.append(event)
    return out


def _require_room(session: Session, merchant_id: str) -> None:
    """Refuse a 17th enabled endpoint (counted under a lock: see the repository)."""
    if repository.count_enabled_locked(session, merchant_id) >= MAX_ENABLED_ENDPOINTS:
        raise InvalidRequest(
            f"A merchant can have at most {MAX_ENABLED_ENDPOINTS} enabled webhook endpoints; "
            "disable one first.",
            code="webhook_endpoint_limit",
        )


def create_endpoint(
    session: Session,
    merchant_id: str,
    url: str,
    enabled_events: Sequence[str],
    *,
    description: str | None = None,
    livemode: bool = False,
    cipher: SecretCipher = _PLAIN,
    now: datetime | None = None,
    targets: TargetPolicy | None = None,
) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint; returns it and its signing secret (returned only now and on rotate).

    ``targets``: the address policy the url's host must pass (the API always passes the app's;
    ``None``, trusted callers such as fixtures: form only). Deliveries check again when they
    connect (:mod:`api.webhooks.transport`), whatever was checked here."""
    now = now or utcnow()
    checked_url = validate_url(url, livemode=livemode, targets=targets)
    events = validate_events(enabled_events)
    _require_room(session, merchant_id)
    secret = _new_secret()
    endpoint_id = new_id("we")
    endpoint = WebhookEndpoint(
        id=endpoint_id,
        merchant_id=merchant_id,
        url=checked_url,
        description=description,
        enabled_events=events,
        livemode=livemode,
        secret_encrypted=cipher.encrypt(secret, context=endpoint_id),
        created_at=now,
        updated_at=now,
    )
    repository.add(session, endpoint)
    return endpoint, secret


@dataclass(frozen=True, slots=True)
class EndpointChanges:
    """What :func:`update_endpoint` changes; ``None`` leaves a field as it is (``description``:
    ``clear_description`` empties it)."""

    url: str | None = None
    enabled_events: Sequence[str] | None = None
    description: str | None = None
    clear_description: bool = False
    enabled: bool | None = None


def update_endpoint(
    session: Session,
    endpoint_id: str,
    changes: EndpointChanges,
    *,
    merchant_id: str | None,
    livemode: bool | None = None,
    targets: TargetPolicy | None = None,
    now: datetime | None = None,
) -> WebhookEndpoint:
    """Change an endpoint's url, events or description, or disable or re-enable it (Stripe's
    update). Everything is checked before anything is written: a new url as at registration, a
    re-enabled endpoint against the merchant's limit of enabled ones (under the same lock
    registrations take). Deliveries that failed while it was disabled stay failed; redeliver
    them once it is enabled."""
    endpoint = repository.get_endpoint(
        session, endpoint_id, merchant_id=merchant_id, livemode=livemode, for_update=True
    )
    if endpoint is None:
        raise NotFound(f"No such webhook endpoint: '{endpoint_id}'.", param="id")
    url = (
        validate_url(changes.url, livemode=endpoint.livemode, targets=targets)
        if changes.url is not None
        else endpoint.url
    )
    events = (
        validate_events(changes.enabled_events)
        if changes.enabled_events is not None
        else list(endpoint.enabled_events)
    )
    if changes.enabled is True and not endpoint.enabled:
        _require_room(session, endpoint.merchant_id)
    endpoint.url = url
    endpoint.enabled_events = events
    if changes.clear_description:
        endpoint.description = None
    elif changes.description is not None:
        endpoint.description = changes.description
    if changes.enabled is not None and changes.enabled != endpoint.enabled:
        endpoint.enabled = changes.enabled
        endpoint.disabled_reason = None if changes.enabled else DISABLED_BY_MERCHANT
    endpoint.updated_at = now or utcnow()
    repository.add(session, endpoint)
    return endpoint


class EndpointDisabled(ApiError):
    status_code = 409
    type = "conflict_error"
    code = "webhook_endpoint_disabled"


def get_endpoint(
    session: Session, endpoint_id: str, *, merchant_id: str | None, livemode: bool | None = None
) -> WebhookEndpoint:
    endpoint = repository.get_endpoint(
        session, endpoint_id, merchant_id=merchant_id, livemode=livemode
    )
    if endpoint is None:
        raise NotFound(f"No such webhook endpoint: '{endpoint_id}'.", param="id")
    return endpoint


def rotate_secret(
    session: Session,
    endpoint_id: str,
    *,
    merchant_id: str | None,
    livemode: bool | None = None,
    cipher: SecretCipher = _PLAIN,
    grace: timedelta = timedelta(0),
    now: datetime | None = None,
) -> tuple[WebhookEndpoint, str]:
    """Replace the signing secret; with ``grace`` > 0 deliveries are signed with both secrets
    (two ``v1=`` entries) until the old one expires."""
    now = now or utcnow()
    endpoint = repository.get_endpoint(
        session, endpoint_id, merchant_id=merchant_id, livemode=livemode, for_update=True
    )
    if endpoint is None:
        raise NotFound(f"No such webhook endpoint: '{endpoint_id}'.", param="id")
    secret = _new_secret()
    if grace > timedelta(0):
        endpoint.previous_secret_encrypted = endpoint.secret_encrypted
        endpoint.previous_secret_expires_at = now + grace
    else:
        endpoint.previous_secret_encrypted = None
        endpoint.previous_secret_expires_at = None
    endpoint.secret_encrypted = cipher.encrypt(secret, context=endpoint.id)
    endpoint.updated_at = now
    repository.add(session, endpoint)
    return endpoint, secret


def disable_endpoint(
    session: Session,
    endpoint_id: str,
    *,
    merchant_id: str | None,
    livemode: bool | None = None,
    now: datetime | None = None,
    reason: str = DISABLED_BY_MERCHANT,
) -> WebhookEndpoint:
    """Stop sending to an endpoint (its pending deliveries fail with "endpoint disabled");
    ``reason``: :data:`DISABLED_BY_MERCHANT` or :data:`DISABLED_FAILING`."""
    endpoint = repository.get_endpoint(
        session, endpoint_id, merchant_id=merchant_id, livemode=livemode, for_update=True
    )
    if endpoint is None:
        raise NotFound(f"No such webhook endpoint: '{endpoint_id}'.", param="id")
    if endpoint.enabled:
        endpoint.enabled = False
        endpoint.disabled_reason = reason
        endpoint.updated_at = now or utcnow()
        repository.add(session, endpoint)
    return endpoint


def event_body(event_id: str, event_type: str, payload: Mapping[str, Any], now: datetime) -> str:
    """The exact JSON every receiver gets: ``{id, object: "event", type, created, data}``."""
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": event_type,
            "created": int(now.timestamp()),
            "data": {"object": payload},
        },
        separators=(",", ":"),
        sort_keys=True,
        default=str,
    )


def enqueue(
    session: Session,
    merchant_id: str,
    event_type: str,
    payload: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
    *,
    now: datetime | None = None,
    subscriptions: Sequence[repository.Subscription] | None = None,
) -> list[WebhookDelivery]:
    """Outbox: one pending delivery per enabled endpoint subscribed to ``event_type``, written in
    the CALLER's transaction (nothing is sent unless that transaction commits). ``payload`` may
    be a function that makes it, called only when an endpoint listens. ``subscriptions``: the
    merchant's, when the caller has them (e.g. from the API's configuration cache)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    if subscriptions is None:
        subscriptions = repository.subscriptions(session, merchant_id)
    targets = [sub.endpoint_id for sub in subscriptions if sub.covers(event_type)]
    if not targets:
        return []
    now = now or utcnow()
    event_id = new_id("evt")
    body = event_body(event_id, event_type, payload() if callable(payload) else payload, now)
    deliveries = [
        WebhookDelivery(
            id=new_id("whd"),
            endpoint_id=endpoint_id,
            merchant_id=merchant_id,
            event_id=event_id,
            event_type=event_type,
            payload=body,
            status=DeliveryStatus.PENDING.value,
            next_attempt_at=now,
            created_at=now,
        )
        for endpoint_id in targets
    ]
    repository.add(session, *deliveries)
    return deliveries


def redeliver(
    session: Session,
    delivery_id: str,
    *,
    merchant_id: str | None,
    livemode: bool | None = None,
    now: datetime | None = None,
) -> WebhookDelivery:
    """Queue the same event again for the same endpoint, due now (a new delivery row). Refused
    (``409 webhook_endpoint_disabled``) for a disabled endpoint: the copy could only fail."""
    original = repository.get_delivery(
        session, delivery_id, merchant_id=merchant_id, livemode=livemode
    )
    if original is None:
        raise NotFound(f"No such webhook delivery: '{delivery_id}'.", param="id")
    endpoint = repository.get_endpoint(session, original.endpoint_id, merchant_id=None)
    _require_enabled(endpoint, original.endpoint_id)
    copy = _copy(original, now or utcnow())
    repository.add(session, copy)
    return copy


def redeliver_failed(
    session: Session,
    endpoint_id: str,
    *,
    merchant_id: str | None,
    livemode: bool | None = None,
    created_gte: datetime | None = None,
    limit: int = 100,
    now: datetime | None = None,
) -> tuple[list[WebhookDelivery], bool]:
    """Queue, due now, one new delivery of each event the endpoint never received (its latest
    delivery ``failed``, none pending or delivered), oldest first, at most ``limit``; and
    whether more remain. Calling again queues the next ones and never copies an event twice:
    the endpoint's row is locked, and an event with a pending copy is no longer a candidate."""
    endpoint = repository.get_endpoint(
        session, endpoint_id, merchant_id=merchant_id, livemode=livemode, for_update=True
    )
    if endpoint is None:
        raise NotFound(f"No such webhook endpoint: '{endpoint_id}'.", param="id")
    _require_enabled(endpoint, endpoint_id)
    failed = repository.failed_events(
        session, endpoint.id, created_gte=created_gte, limit=limit + 1
    )
    now = now or utcnow()
    copies = [_copy(original, now) for original in failed[:limit]]
    repository.add(session, *copies)
    return copies, len(failed) > limit


def _require_enabled(endpoint: WebhookEndpoint | None, endpoint_id: str) -> None:
    if endpoint is None or not endpoint.enabled:
        raise EndpointDisabled(
            f"Webhook endpoint '{endpoint_id}' is disabled: nothing is sent to it.", param="id"
        )


def _copy(original: WebhookDelivery, now: datetime) -> WebhookDelivery:
    return WebhookDelivery(
        id=new_id("whd"),
        endpoint_id=original.endpoint_id,
        merchant_id=original.merchant_id,
        event_id=original.event_id,
        event_type=original.event_type,
        payload=original.payload,
        status=DeliveryStatus.PENDING.value,
        next_attempt_at=now,
        redelivery_of=original.id,
        created_at=now,
    )


def endpoint_secrets(
    endpoint: WebhookEndpoint, cipher: SecretCipher, now: datetime
) -> tuple[str, ...]:
    """The endpoint's signing secrets: the current one, and the previous one during its
    rotation grace period. Raises :class:`SecretDecryptionError`."""
    keys: tuple[str, ...] = (cipher.decrypt(endpoint.secret_encrypted, context=endpoint.id),)
    if (
        endpoint.previous_secret_encrypted
        and endpoint.previous_secret_expires_at
        and endpoint.previous_secret_expires_at > now
    ):
        keys += (cipher.decrypt(endpoint.previous_secret_encrypted, context=endpoint.id),)
    return keys


@dataclass(frozen=True)
class SigningTarget:
    """An enabled endpoint to POST to directly, with its decrypted signing secrets."""

    endpoint_id: str
    url: str
    secrets: tuple[str, ...] = field(repr=False)


def signing_targets(
    session: Session, merchant_id: str, event_type: str, cipher: SecretCipher, now: datetime
) -> list[SigningTarget]:
    """The merchant's enabled endpoints subscribed to ``event_type``, oldest first. An endpoint
    whose secret cannot be decrypted (wrong master key) is left out and logged."""
    targets = []
    for endpoint in repository.enabled_endpoints(session, merchant_id):
        if not ("*" in endpoint.enabled_events or event_type in endpoint.enabled_events):
            continue
        try:
            keys = endpoint_secrets(endpoint, cipher, now)
        except SecretDecryptionError:
            logger.warning("webhook endpoint %s: signing secret unavailable", endpoint.id)
            continue
        targets.append(SigningTarget(endpoint.id, endpoint.url, keys))
    return targets


def signed_headers(
    secrets: Sequence[str], body: str, now: datetime, event_id: str
) -> dict[str, str]:
    """The headers of every FollowPay webhook POST (DESIGN §8): signature, event id."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(secrets[0], int(now.timestamp()), body, extra_secrets=secrets[1:]),
        "FollowPay-Event-Id": event_id,
    }
