"""Sending the outbox: claim due deliveries, POST each one signed, record the outcome.

Retry schedule after a failed attempt (non-2xx, timeout, connection error):
:data:`~api.webhooks.service.RETRY_SCHEDULE`, ~3.3 days; after the 11th failed attempt the
delivery is ``failed``. Every attempt is logged in ``api_webhook_attempts``. A round sends to
up to :data:`ROUND_LANES` endpoints at once, each endpoint's deliveries in order.

A claim is a lease: ``status = delivering`` until ``locked_until``, after which another worker
may claim the row again. The ``locked_until`` a worker wrote is its claim token: a later claim
can only happen after it passed and always writes a later one, so "``locked_until`` is still
mine" means "nobody claimed this row since". Just before each POST the worker checks it and
pushes it out to :data:`ATTEMPT_LEASE` from now (a row someone else claimed is not sent), and it
writes the outcome only while it still holds (a worker that lost its claim writes nothing: its
late 503 cannot turn a delivered row back into pending).

A lease covers one attempt, not a round: :data:`ATTEMPT_LEASE` is the attempt's whole
:data:`~api.webhooks.transport.ATTEMPT_TIMEOUT` (15 s) plus :data:`LEASE_MARGIN` (30 s), 45 s
in all, both when a round claims its rows and when each row is renewed before its POST. So the
unsent rows of a killed worker go out 45 s after its claim (plus the next poll), whatever the
round's size. The rows of a round whose turn has not come may expire meanwhile (slow
receivers ahead of them) and be taken over by another worker; that is work stealing, not a
double send: the first worker finds them claimed when their turn comes and skips them.

The margin covers what surrounds the POST: committing the renewal, loading the endpoint and its
secrets, writing the outcome. That is milliseconds normally; 30 s leaves room for a slow
outcome write, a pause of the process and clocks a few seconds apart between workers' hosts. A
renewal that itself waited long for the database's write lock (a SQLite writer waits up to
30 s) is made again before the POST, so every POST starts with at least its deadline plus half
the margin left. Only a worker stalled beyond that can have a row it is sending claimed
again (sent twice; its outcome is then not written).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import httpx
from sqlmodel import Session

from api.db import SessionFactory, new_id, session_scope, utcnow
from api.webhooks import repository, transport
from api.webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from api.webhooks.secrets import SecretCipher, SecretDecryptionError
from api.webhooks.service import (
    DISABLED_FAILING,
    disable_endpoint,
    endpoint_secrets,
    next_retry_delay,
    signed_headers,
)
from api.webhooks.targets import TargetPolicy

__all__ = [
    "ATTEMPT_LEASE",
    "LEASE_MARGIN",
    "ROUND_LANES",
    "ROUND_LIMIT",
    "DeliveryResult",
    "deliver_due",
    "run_delivery_worker",
]

logger = logging.getLogger("followpay.webhooks")

#: What a lease keeps beyond its attempt's deadline (the module docstring says why 30 s).
LEASE_MARGIN = timedelta(seconds=30)
#: How long a claim or a renewal holds a row: one attempt at its full timeout, plus the margin.
ATTEMPT_LEASE = timedelta(seconds=transport.ATTEMPT_TIMEOUT) + LEASE_MARGIN
#: The least lease a POST starts with: its whole deadline and half the margin.
_LEASE_AT_POST = timedelta(seconds=transport.ATTEMPT_TIMEOUT) + LEASE_MARGIN / 2
#: Deliveries a worker's round claims (rows it does not reach in time go to other workers).
ROUND_LIMIT = 10
#: Endpoints a round sends to at once (each endpoint's deliveries one after another, in claim
#: order): a receiver that stalls every attempt to its deadline holds up its own lane, not the
#: round — before, one merchant's 16 stalling endpoints cost everyone 16 x 15 s per event.
ROUND_LANES = 8
_PLAIN = SecretCipher(None)
_PUBLIC_ONLY = TargetPolicy()


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
    claim: datetime  # the locked_until this worker holds


@dataclass(frozen=True)
class _Outcome:
    status_code: int | None
    error: str | None
    excerpt: str | None = None
    duration_ms: int = 0
    permanent: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


def _take(
    session: Session, delivery_id: str, claim: datetime, cipher: SecretCipher, now: datetime
) -> _Job | None:
    """The job for a row this worker still holds (its lease pushed out to cover the POST);
    ``None`` when another worker claimed it meanwhile."""
    renewed = max(claim, now + ATTEMPT_LEASE)  # never earlier than the token it replaces
    if not repository.renew_claim(session, delivery_id, claim, renewed):
        return None
    delivery = session.get(WebhookDelivery, delivery_id)
    assert delivery is not None
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
    problem: str | None = None
    keys: tuple[str, ...] = ()
    if endpoint is None or not endpoint.enabled:
        problem = "endpoint disabled or deleted"
    else:
        try:
            keys = endpoint_secrets(endpoint, cipher, now)
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
        claim=renewed,
    )


def _record(
    session: Session, job: _Job, sent_at: datetime, done_at: datetime, outcome: _Outcome
) -> DeliveryResult | None:
    """Write the attempt and the delivery's next state, only while the claim is still ours;
    ``None`` (nothing written) otherwise."""
    ok = outcome.ok
    error = None if ok else (outcome.error or f"HTTP {outcome.status_code}")[:500]
    if ok:
        status, next_at = DeliveryStatus.DELIVERED, None
    else:
        delay = None if outcome.permanent else next_retry_delay(job.attempt)
        status = DeliveryStatus.FAILED if delay is None else DeliveryStatus.PENDING
        next_at = None if delay is None else done_at + delay
    written = repository.finish_claim(
        session,
        job.delivery_id,
        job.claim,
        status=status.value,
        attempt_count=job.attempt,
        last_attempt_at=sent_at,
        last_status_code=outcome.status_code,
        last_error=error,
        delivered_at=done_at if ok else None,
        next_attempt_at=next_at,
    )
    if not written:
        return None
    attempt = WebhookAttempt(
        id=new_id("wha"),
        delivery_id=job.delivery_id,
        attempt=job.attempt,
        attempted_at=sent_at,
        status_code=outcome.status_code,
        error=error,
        duration_ms=outcome.duration_ms,
        response_excerpt=outcome.excerpt,
    )
    repository.add(session, attempt)
    if status is DeliveryStatus.FAILED and not outcome.permanent:
        _disable_if_failing(session, job, done_at)
    return DeliveryResult(
        delivery_id=job.delivery_id,
        endpoint_id=job.endpoint_id,
        attempt=job.attempt,
        ok=ok,
        status_code=outcome.status_code,
        error=error,
        status=status,
        next_attempt_at=next_at,
    )


def _disable_if_failing(session: Session, job: _Job, now: datetime) -> None:
    """A delivery used up its retry schedule (~3.3 days) and the endpoint accepted nothing since
    it was created: the endpoint is disabled (``disabled_reason`` ``failing``), as Stripe does,
    instead of failing every later event for days more. The merchant fixes the receiver, enables
    it again (``POST /v1/webhook_endpoints/{id}``) and redelivers what it missed."""
    if repository.delivered_since_created(session, job.endpoint_id, job.delivery_id):
        return
    endpoint = disable_endpoint(
        session, job.endpoint_id, merchant_id=None, now=now, reason=DISABLED_FAILING
    )
    logger.warning(
        "webhook endpoint %s disabled: nothing delivered for a whole retry schedule", endpoint.id
    )


def _send(client: httpx.Client, job: _Job, sent_at: datetime) -> _Outcome:
    """One signed POST; the signature's ``t`` is ``sent_at``, read just before sending."""
    assert job.url is not None
    headers = signed_headers(job.secrets, job.body, sent_at, job.event_id)
    headers["FollowPay-Delivery-Id"] = job.delivery_id
    started = time.perf_counter()
    try:
        reply = transport.post(
            client, job.url, job.body.encode("utf-8"), headers, timeout=transport.ATTEMPT_TIMEOUT
        )
    except httpx.HTTPError as exc:
        outcome = _Outcome(None, transport.describe_error(exc))
    except (httpx.InvalidURL, UnicodeError):  # stored before registration parsed urls as httpx does
        outcome = _Outcome(None, "invalid url", permanent=True)
    except Exception as exc:  # one row's surprise must not end the round (or every later one)
        logger.error("webhook %s: %s while sending", job.delivery_id, type(exc).__name__)
        outcome = _Outcome(None, "request failed")
    else:
        outcome = _Outcome(reply.status_code, None, reply.excerpt)
    return replace(outcome, duration_ms=int((time.perf_counter() - started) * 1000))


def _frozen(now: datetime) -> Callable[[], datetime]:
    return lambda: now


def deliver_due(
    session_factory: SessionFactory,
    now: datetime | None = None,
    http_client: httpx.Client | None = None,
    limit: int = 50,
    *,
    cipher: SecretCipher = _PLAIN,
    targets: TargetPolicy = _PUBLIC_ONLY,
    clock: Callable[[], datetime] | None = None,
) -> list[DeliveryResult]:
    """Claim up to ``limit`` due deliveries, POST each one signed, record the outcome.

    Safe to run from several workers/processes at once (claims: :func:`repository.claim_due`;
    leases: the module docstring). ``clock`` is read when the round starts (what is due), for
    each claim renewal, just before each POST (the signature's ``t``; the lease left is
    checked against it) and after it (the next retry is counted from then); default: the
    real clock, or ``now`` throughout when only ``now`` is given (tests).
    Each claim and each outcome is its own short transaction; the HTTP call happens outside any
    transaction. Without ``http_client`` the round uses :func:`transport.delivery_client`, which
    connects only where ``targets`` allows; a caller's client is used as it is.
    """
    if clock is None:
        clock = utcnow if now is None else _frozen(now)
    now = now or clock()
    claim = now + ATTEMPT_LEASE
    with session_scope(session_factory) as session:
        ids = repository.claim_due(session, now, limit, claim)
        endpoints = repository.endpoints_of(session, ids) if ids else {}
    if not ids:
        return []
    lanes: dict[str, list[str]] = {}  # endpoint -> its deliveries, in claim order
    for delivery_id in ids:
        lanes.setdefault(endpoints.get(delivery_id, ""), []).append(delivery_id)
    owns_client = http_client is None
    client = http_client or transport.delivery_client(targets)

    def lane(endpoint_id: str, delivery_ids: list[str]) -> list[DeliveryResult]:
        """One endpoint's deliveries, one after another. Once an attempt cannot reach the
        endpoint (timeout, refused), the rest of its rows, claimed or not, wait for that
        attempt's retry instead of each costing another full attempt: a dead endpoint's backlog
        would otherwise fill every later round's claims and hold up other merchants' events.
        One row's failure (a database error) is logged and does not end the lane."""
        done: list[DeliveryResult] = []
        retry_at: datetime | None = None
        for delivery_id in delivery_ids:
            if retry_at is not None:
                _postpone(session_factory, delivery_id, claim, retry_at)
                continue
            try:
                result = _deliver_one(session_factory, client, delivery_id, claim, cipher, clock)
            except Exception as exc:  # the row's lease runs out and a later round retries it
                logger.error("webhook %s: %s while recording", delivery_id, type(exc).__name__)
                continue
            if result is None:
                continue
            done.append(result)
            if result.status_code is None and result.next_attempt_at is not None:
                retry_at = result.next_attempt_at
                if endpoint_id:
                    with session_scope(session_factory) as session:
                        repository.postpone_endpoint(session, endpoint_id, retry_at)
        return done

    try:
        if len(lanes) == 1:
            per_lane = [lane(*next(iter(lanes.items())))]
        else:
            workers = min(ROUND_LANES, len(lanes))
            with ThreadPoolExecutor(workers, thread_name_prefix="webhook-lane") as pool:
                per_lane = list(pool.map(lane, lanes.keys(), lanes.values()))
    finally:
        if owns_client:
            client.close()
    order = {delivery_id: i for i, delivery_id in enumerate(ids)}
    return sorted((r for done in per_lane for r in done), key=lambda r: order[r.delivery_id])


def _postpone(
    session_factory: SessionFactory, delivery_id: str, claim: datetime, until: datetime
) -> None:
    """This round could not reach the row's endpoint (a timeout, a refused connection): the row
    waits for that attempt's retry instead of costing the round another full attempt, so one
    merchant's dead or slow endpoint does not hold up everyone else's deliveries. No attempt is
    recorded (nothing was sent)."""
    with session_scope(session_factory) as session:
        repository.finish_claim(
            session,
            delivery_id,
            claim,
            status=DeliveryStatus.PENDING.value,
            next_attempt_at=until,
        )


def _take_for_post(
    session_factory: SessionFactory,
    delivery_id: str,
    claim: datetime,
    cipher: SecretCipher,
    clock: Callable[[], datetime],
) -> tuple[_Job, datetime] | None:
    """:func:`_take`, and the clock read after it (the send time), with at least
    :data:`_LEASE_AT_POST` of the lease left then. The renewal is counted from the clock read
    before its UPDATE, which may wait for the database's write lock (SQLite: up to 30 s); a
    renewal that waited that long is made again. Twice too slow: not sent this round (its
    lease runs out and the row goes to the next claim)."""
    now = clock()
    for _ in range(2):
        with session_scope(session_factory) as session:
            job = _take(session, delivery_id, claim, cipher, now)
        if job is None:
            logger.warning("webhook %s: claimed by another worker meanwhile; not sent", delivery_id)
            return None
        now = clock()
        if job.claim - now >= _LEASE_AT_POST:
            return job, now
        claim = job.claim
    logger.warning(
        "webhook %s: the database was too slow to renew its claim; not sent", delivery_id
    )
    return None


def _deliver_one(
    session_factory: SessionFactory,
    client: httpx.Client,
    delivery_id: str,
    claim: datetime,
    cipher: SecretCipher,
    clock: Callable[[], datetime],
) -> DeliveryResult | None:
    taken = _take_for_post(session_factory, delivery_id, claim, cipher, clock)
    if taken is None:
        return None
    job, sent_at = taken
    if job.problem is not None:
        done_at = sent_at
        outcome = _Outcome(None, job.problem, permanent=True)
    else:
        outcome = _send(client, job, sent_at)
        done_at = clock()
    with session_scope(session_factory) as session:
        result = _record(session, job, sent_at, done_at, outcome)
    if result is None:
        logger.warning(
            "webhook %s attempt %d: claim lost while sending; outcome not recorded",
            job.delivery_id,
            job.attempt,
        )
    elif not result.ok:
        logger.info(
            "webhook %s attempt %d failed (%s); next: %s",
            job.delivery_id,
            job.attempt,
            result.error,
            result.next_attempt_at,
        )
    return result


def run_delivery_worker(
    session_factory: SessionFactory,
    stop: threading.Event,
    *,
    wake: threading.Event | None = None,
    interval: float = 1.0,
    limit: int = ROUND_LIMIT,
    cipher: SecretCipher = _PLAIN,
    http_client: httpx.Client | None = None,
    targets: TargetPolicy = _PUBLIC_ONLY,
) -> None:
    """Deliver due webhooks until ``stop`` is set, ``limit`` per round (the next round starts at
    once while rounds come back full).

    Polls every ``interval`` seconds, or at once when ``wake`` is set (an ``AfterCommit`` callback
    can call ``wake.set()`` after enqueueing). A failing round is logged and retried next round.
    ``targets``: where deliveries may connect (public addresses only by default).
    """
    wake = wake or threading.Event()
    owns_client = http_client is None
    client = http_client or transport.delivery_client(targets)
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
