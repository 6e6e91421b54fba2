"""Webhook rules: endpoints, secrets, the outbox (``enqueue``), delivery with retries, redelivery.

Retry schedule after a failed attempt (non-2xx, timeout, connection error): 10 s, 1 min,
then 10 min six times; after the 9th failed attempt the delivery is ``failed``. Every attempt is
logged in ``api_webhook_attempts``. ``redeliver`` creates a NEW delivery of the same event (same
event id, same body; receivers dedupe on ``FollowPay-Event-Id``).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlmodel import Session

from api.db import SessionFactory, new_id, session_scope, utcnow
from api.errors import InvalidRequest, NotFound
from api.webhooks import repository
from api.webhooks.models import (
    EVENT_TYPES,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from api.webhooks.secrets import SecretCipher, SecretDecryptionError
from api.webhooks.signing import SIGNATURE_HEADER, sign

__all__ = [
    "CLAIM_LEASE",
    "RETRY_SCHEDULE",
    "DeliveryResult",
    "SigningTarget",
    "create_endpoint",
    "deliver_due",
    "disable_endpoint",
    "enqueue",
    "event_body",
    "get_endpoint",
    "next_retry_delay",
    "redeliver",
    "rotate_secret",
    "run_delivery_worker",
    "signed_headers",
    "signing_targets",
    "validate_events",
    "validate_url",
]

logger = logging.getLogger("followpay.webhooks")

RETRY_SCHEDULE: tuple[timedelta, ...] = (
    timedelta(seconds=10),
    timedelta(minutes=1),
    *(timedelta(minutes=10),) * 6,
)
CLAIM_LEASE = timedelta(minutes=2)
USER_AGENT = "FollowPay-Webhooks/1.0"
_PLAIN = SecretCipher(None)


def next_retry_delay(failed_attempts: int) -> timedelta | None:
    """Delay before the next attempt after ``failed_attempts`` failures; ``None``: give up."""
    if 1 <= failed_attempts <= len(RETRY_SCHEDULE):
        return RETRY_SCHEDULE[failed_attempts - 1]
    return None


def _new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def validate_url(url: str, *, livemode: bool) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("The url must be an absolute http(s) URL.", param="url")
    if livemode and parts.scheme != "https":
        raise InvalidRequest("Live-mode webhook endpoints must use https.", param="url")
    if parts.username or parts.password:
        raise InvalidRequest("The url must not contain credentials.", param="url")
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
) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint; returns it and its signing secret (returned only now and on rotate)."""
    now = now or utcnow()
    secret = _new_secret()
    endpoint_id = new_id("we")
    endpoint = WebhookEndpoint(
        id=endpoint_id,
        merchant_id=merchant_id,
        url=validate_url(url, livemode=livemode),
        description=description,
        enabled_events=validate_events(enabled_events),
        livemode=livemode,
        secret_encrypted=cipher.encrypt(secret, context=endpoint_id),
        created_at=now,
        updated_at=now,
    )
    repository.add(session, endpoint)
    return endpoint, secret


def get_endpoint(session: Session, endpoint_id: str, *, merchant_id: str | None) -> WebhookEndpoint:
    endpoint = repository.get_endpoint(session, endpoint_id, merchant_id=merchant_id)
    if endpoint is None:
        raise NotFound(f"No such webhook endpoint: '{endpoint_id}'.", param="id")
    return endpoint


def rotate_secret(
    session: Session,
    endpoint_id: str,
    *,
    merchant_id: str | None,
    cipher: SecretCipher = _PLAIN,
    grace: timedelta = timedelta(0),
    now: datetime | None = None,
) -> tuple[WebhookEndpoint, str]:
    """Replace the signing secret; with ``grace`` > 0 deliveries are signed with both secrets
    (two ``v1=`` entries) until the old one expires."""
    now = now or utcnow()
    endpoint = repository.get_endpoint(
        session, endpoint_id, merchant_id=merchant_id, for_update=True
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
    session: Session, endpoint_id: str, *, merchant_id: str | None, now: datetime | None = None
) -> WebhookEndpoint:
    """Stop sending to an endpoint (its pending deliveries fail with "endpoint disabled")."""
    endpoint = repository.get_endpoint(
        session, endpoint_id, merchant_id=merchant_id, for_update=True
    )
    if endpoint is None:
        raise NotFound(f"No such webhook endpoint: '{endpoint_id}'.", param="id")
    if endpoint.enabled:
        endpoint.enabled = False
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
    session: Session, delivery_id: str, *, merchant_id: str | None, now: datetime | None = None
) -> WebhookDelivery:
    """Queue the same event again for the same endpoint, due now (a new delivery row)."""
    now = now or utcnow()
    original = repository.get_delivery(session, delivery_id, merchant_id=merchant_id)
    if original is None:
        raise NotFound(f"No such webhook delivery: '{delivery_id}'.", param="id")
    copy = WebhookDelivery(
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
    repository.add(session, copy)
    return copy


@dataclass(frozen=True)
class DeliveryResult:
    delivery_id: str
    endpoint_id: str
    attempt: int
    ok: bool
    status_code: int | None
    error: str | None
    status: DeliveryStatus
    next_attempt_at: datetime | None


@dataclass(frozen=True)
class _Job:
    delivery_id: str
    endpoint_id: str
    event_id: str
    url: str | None
    secrets: tuple[str, ...] = field(repr=False)  # decrypted signing secrets
    body: str
    attempt: int
    problem: str | None


def _secrets(endpoint: WebhookEndpoint, cipher: SecretCipher, now: datetime) -> tuple[str, ...]:
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
            keys = _secrets(endpoint, cipher, now)
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


def _load_job(
    session: Session, delivery_id: str, cipher: SecretCipher, now: datetime
) -> _Job | None:
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        return None
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
    problem: str | None = None
    keys: tuple[str, ...] = ()
    if endpoint is None or not endpoint.enabled:
        problem = "endpoint disabled or deleted"
    else:
        try:
            keys = _secrets(endpoint, cipher, now)
        except SecretDecryptionError:
            problem = "signing secret unavailable (master key?)"
    return _Job(
        delivery_id=delivery.id,
        endpoint_id=delivery.endpoint_id,
        event_id=delivery.event_id,
        url=endpoint.url if endpoint else None,
        secrets=keys,
        body=delivery.payload,
        attempt=delivery.attempt_count + 1,
        problem=problem,
    )


def _record(
    session: Session,
    job: _Job,
    now: datetime,
    *,
    status_code: int | None,
    error: str | None,
    duration_ms: int,
    excerpt: str | None,
    permanent: bool = False,
) -> DeliveryResult:
    delivery = session.get(WebhookDelivery, job.delivery_id)
    assert delivery is not None
    ok = status_code is not None and 200 <= status_code < 300 and error is None
    delivery.attempt_count = job.attempt
    delivery.last_attempt_at = now
    delivery.last_status_code = status_code
    delivery.last_error = None if ok else (error or f"HTTP {status_code}")[:500]
    delivery.locked_until = None
    if ok:
        delivery.status = DeliveryStatus.DELIVERED.value
        delivery.delivered_at = now
        delivery.next_attempt_at = None
    else:
        delay = None if permanent else next_retry_delay(job.attempt)
        if delay is None:
            delivery.status = DeliveryStatus.FAILED.value
            delivery.next_attempt_at = None
        else:
            delivery.status = DeliveryStatus.PENDING.value
            delivery.next_attempt_at = now + delay
    attempt = WebhookAttempt(
        id=new_id("wha"),
        delivery_id=job.delivery_id,
        attempt=job.attempt,
        attempted_at=now,
        status_code=status_code,
        error=delivery.last_error,
        duration_ms=duration_ms,
        response_excerpt=excerpt,
    )
    repository.add(session, delivery, attempt)
    return DeliveryResult(
        delivery_id=job.delivery_id,
        endpoint_id=job.endpoint_id,
        attempt=job.attempt,
        ok=ok,
        status_code=status_code,
        error=delivery.last_error,
        status=DeliveryStatus(delivery.status),
        next_attempt_at=delivery.next_attempt_at,
    )


def _post(
    client: httpx.Client, job: _Job, now: datetime
) -> tuple[int | None, str | None, str | None]:
    assert job.url is not None
    headers = signed_headers(job.secrets, job.body, now, job.event_id)
    headers["FollowPay-Delivery-Id"] = job.delivery_id
    try:
        response = client.post(job.url, content=job.body.encode("utf-8"), headers=headers)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {str(exc)[:200]}", None
    excerpt = response.text[:1000] if response.content else None
    return response.status_code, None, excerpt


def deliver_due(
    session_factory: SessionFactory,
    now: datetime | None = None,
    http_client: httpx.Client | None = None,
    limit: int = 50,
    *,
    cipher: SecretCipher = _PLAIN,
) -> list[DeliveryResult]:
    """Claim up to ``limit`` due deliveries, POST each one signed, record the outcome.

    Safe to run from several workers/processes at once (see :func:`repository.claim_due`).
    ``now`` drives scheduling AND the signature timestamp: pass the real clock (default) in
    production. Each claim and each outcome is its own short transaction; the HTTP call happens
    outside any transaction.
    """
    now = now or utcnow()
    with session_scope(session_factory) as session:
        ids = repository.claim_due(session, now, limit, now + CLAIM_LEASE)
    if not ids:
        return []
    owns_client = http_client is None
    client = http_client or httpx.Client(timeout=10.0, follow_redirects=False)
    results: list[DeliveryResult] = []
    try:
        for delivery_id in ids:
            with session_scope(session_factory) as session:
                job = _load_job(session, delivery_id, cipher, now)
            if job is None:
                continue
            if job.problem is not None:
                with session_scope(session_factory) as session:
                    results.append(
                        _record(
                            session,
                            job,
                            now,
                            status_code=None,
                            error=job.problem,
                            duration_ms=0,
                            excerpt=None,
                            permanent=True,
                        )
                    )
                continue
            started = time.perf_counter()
            status_code, error, excerpt = _post(client, job, now)
            duration_ms = int((time.perf_counter() - started) * 1000)
            with session_scope(session_factory) as session:
                result = _record(
                    session,
                    job,
                    now,
                    status_code=status_code,
                    error=error,
                    duration_ms=duration_ms,
                    excerpt=excerpt,
                )
            results.append(result)
            if not result.ok:
                logger.info(
                    "webhook %s attempt %d failed (%s); next: %s",
                    job.delivery_id,
                    job.attempt,
                    result.error,
                    result.next_attempt_at,
                )
    finally:
        if owns_client:
            client.close()
    return results


def run_delivery_worker(
    session_factory: SessionFactory,
    stop: threading.Event,
    *,
    wake: threading.Event | None = None,
    interval: float = 1.0,
    limit: int = 50,
    cipher: SecretCipher = _PLAIN,
    http_client: httpx.Client | None = None,
) -> None:
    """Deliver due webhooks until ``stop`` is set.

    Polls every ``interval`` seconds, or at once when ``wake`` is set (an ``AfterCommit`` callback
    can call ``wake.set()`` after enqueueing). A failing round is logged and retried next round.
    """
    wake = wake or threading.Event()
    owns_client = http_client is None
    client = http_client or httpx.Client(timeout=10.0, follow_redirects=False)
    try:
        while not stop.is_set():
            try:
                results = deliver_due(
                    session_factory, http_client=client, limit=limit, cipher=cipher
                )
            except Exception as exc:  # the database may be briefly unavailable: keep going
                logger.error("webhook delivery round failed: %s", type(exc).__name__)
                results = []
            if len(results) >= limit:
                continue  # more may be due right now
            wake.wait(interval)
            wake.clear()
    finally:
        if owns_client:
            client.close()
