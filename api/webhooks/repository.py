"""All SQL for webhooks. No commits here: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from api.webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint

__all__ = [
    "Subscription",
    "add",
    "attempts_for",
    "claim_due",
    "count_enabled_locked",
    "delivered_since_created",
    "deliveries_select",
    "enabled_endpoints",
    "endpoints_of",
    "endpoints_select",
    "failed_events",
    "finish_claim",
    "get_delivery",
    "get_endpoint",
    "renew_claim",
    "subscriptions",
]


def add(session: Session, *objects: object) -> None:
    session.add_all(objects)
    session.flush()


def endpoints_select(
    merchant_id: str | None, livemode: bool | None = None
) -> SelectOfScalar[WebhookEndpoint]:
    """A merchant's endpoints (``None``: every merchant's), of one mode when ``livemode`` is
    given: a key manages only the endpoints of its own mode."""
    stmt = select(WebhookEndpoint)
    if merchant_id is not None:
        stmt = stmt.where(WebhookEndpoint.merchant_id == merchant_id)
    if livemode is not None:
        stmt = stmt.where(WebhookEndpoint.livemode == livemode)
    return stmt


def enabled_endpoints(session: Session, merchant_id: str) -> Sequence[WebhookEndpoint]:
    stmt = (
        endpoints_select(merchant_id)
        .where(col(WebhookEndpoint.enabled).is_(True))
        .order_by(col(WebhookEndpoint.created_at), col(WebhookEndpoint.id))
    )
    return session.exec(stmt).all()


def count_enabled_locked(session: Session, merchant_id: str) -> int:
    """The merchant's enabled endpoints, counted under a lock that makes two registrations at
    once take turns. PostgreSQL: the rows are locked, and the count (a new statement, so a new
    snapshot) includes the endpoint of a registration that held them. SQLite: a write (one
    that matches nothing) opens the writer's ``BEGIN IMMEDIATE`` (:mod:`crm.sqlite_gate`); reads
    before it see whatever is committed, so two registrations would count alike."""
    if session.get_bind().dialect.name == "sqlite":
        nothing = sa.update(WebhookEndpoint).where(sa.false()).values(enabled=True)
        session.connection().execute(nothing)
    else:
        locked = endpoints_select(merchant_id).where(col(WebhookEndpoint.enabled).is_(True))
        session.exec(locked.with_for_update()).all()
    count = (
        sa.select(sa.func.count())
        .select_from(WebhookEndpoint)
        .where(
            col(WebhookEndpoint.merchant_id) == merchant_id,
            col(WebhookEndpoint.enabled).is_(True),
        )
    )
    return int(session.execute(count).scalar_one())


def get_endpoint(
    session: Session,
    endpoint_id: str,
    *,
    merchant_id: str | None,
    livemode: bool | None = None,
    for_update: bool = False,
) -> WebhookEndpoint | None:
    """``for_update``: read afresh and held until commit (PostgreSQL ``FOR UPDATE``; SQLite: the
    write lock, taken before the read by a write that matches nothing, as the API's connection
    reads outside a transaction until its first write)."""
    stmt = endpoints_select(merchant_id, livemode).where(WebhookEndpoint.id == endpoint_id)
    if for_update:
        if session.get_bind().dialect.name == "sqlite":
            nothing = sa.update(WebhookEndpoint).where(sa.false()).values(enabled=True)
            session.connection().execute(nothing)
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return session.exec(stmt).first()


@dataclass(frozen=True, slots=True)
class Subscription:
    """An enabled endpoint's id and the event types it receives (``*``: all)."""

    endpoint_id: str
    events: tuple[str, ...]

    def covers(self, event_type: str) -> bool:
        return "*" in self.events or event_type in self.events


_ENDPOINTS = WebhookEndpoint.__table__  # type: ignore[attr-defined]
# Built once and read as Core rows: every invoice creation and settlement step asks it.
_SUBSCRIBED = (
    sa.select(_ENDPOINTS.c.id, _ENDPOINTS.c.enabled_events)
    .where(
        _ENDPOINTS.c.merchant_id == sa.bindparam("merchant_id"),
        _ENDPOINTS.c.enabled.is_(True),
    )
    .order_by(_ENDPOINTS.c.created_at, _ENDPOINTS.c.id)
)


def subscriptions(session: Session, merchant_id: str) -> tuple[Subscription, ...]:
    rows = session.connection().execute(_SUBSCRIBED, {"merchant_id": merchant_id})
    return tuple(Subscription(row.id, tuple(row.enabled_events or ())) for row in rows)


def deliveries_select(
    endpoint_id: str | None, merchant_id: str | None, livemode: bool | None = None
) -> SelectOfScalar[WebhookDelivery]:
    stmt = select(WebhookDelivery)
    if endpoint_id is not None:
        stmt = stmt.where(WebhookDelivery.endpoint_id == endpoint_id)
    if merchant_id is not None:
        stmt = stmt.where(WebhookDelivery.merchant_id == merchant_id)
    if livemode is not None:  # the mode of the endpoint it goes to
        of_mode = select(WebhookEndpoint.id).where(WebhookEndpoint.livemode == livemode)
        stmt = stmt.where(col(WebhookDelivery.endpoint_id).in_(of_mode))
    return stmt


def get_delivery(
    session: Session, delivery_id: str, *, merchant_id: str | None, livemode: bool | None = None
) -> WebhookDelivery | None:
    return session.exec(
        deliveries_select(None, merchant_id, livemode).where(WebhookDelivery.id == delivery_id)
    ).first()


def attempts_for(session: Session, delivery_id: str) -> Sequence[WebhookAttempt]:
    return session.exec(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == delivery_id)
        .order_by(col(WebhookAttempt.attempt))
    ).all()


def _due(now: datetime) -> sa.ColumnElement[bool]:
    d = WebhookDelivery
    return sa.or_(
        sa.and_(col(d.status) == DeliveryStatus.PENDING.value, col(d.next_attempt_at) <= now),
        sa.and_(col(d.status) == DeliveryStatus.DELIVERING.value, col(d.locked_until) <= now),
    )


def claim_due(session: Session, now: datetime, limit: int, lease_until: datetime) -> list[str]:
    """Mark up to ``limit`` due deliveries as ``delivering`` (leased) and return their ids.

    PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` so concurrent workers never claim the same row.
    Other backends (SQLite): a conditional ``UPDATE … WHERE <still due>`` per candidate; SQLite
    serialises writers, so only one worker's update matches.
    """
    d = WebhookDelivery
    candidates = (
        sa.select(col(d.id))
        .where(_due(now))
        .order_by(col(d.next_attempt_at), col(d.id))
        .limit(limit)
    )
    claim = {"status": DeliveryStatus.DELIVERING.value, "locked_until": lease_until}
    if session.get_bind().dialect.name == "postgresql":
        ids = list(session.execute(candidates.with_for_update(skip_locked=True)).scalars())
        if ids:
            session.execute(sa.update(d).where(col(d.id).in_(ids)).values(**claim))
        return ids
    claimed: list[str] = []
    for delivery_id in session.execute(candidates).scalars():
        result = session.execute(
            sa.update(d).where(col(d.id) == delivery_id, _due(now)).values(**claim)
        )
        if getattr(result, "rowcount", 0) == 1:
            claimed.append(delivery_id)
    return claimed


def endpoints_of(session: Session, delivery_ids: Sequence[str]) -> dict[str, str]:
    """Delivery id -> its endpoint id."""
    d = WebhookDelivery
    rows = session.execute(
        sa.select(col(d.id), col(d.endpoint_id)).where(col(d.id).in_(delivery_ids))
    )
    return {delivery_id: endpoint_id for delivery_id, endpoint_id in rows}


def _held(delivery_id: str, claim: datetime) -> sa.ColumnElement[bool]:
    """The row is still leased under ``claim`` (the ``locked_until`` its worker wrote): nobody
    claimed it since (a later claim always writes a later ``locked_until``)."""
    d = WebhookDelivery
    return sa.and_(
        col(d.id) == delivery_id,
        col(d.status) == DeliveryStatus.DELIVERING.value,
        col(d.locked_until) == claim,
    )


def renew_claim(session: Session, delivery_id: str, claim: datetime, until: datetime) -> bool:
    """Extend a claim still held under ``claim`` to ``until``; ``False``: not ours any more."""
    d = WebhookDelivery
    result = session.execute(
        sa.update(d).where(_held(delivery_id, claim)).values(locked_until=until)
    )
    return getattr(result, "rowcount", 0) == 1


def delivered_since_created(session: Session, endpoint_id: str, delivery_id: str) -> bool:
    """Whether the endpoint accepted any delivery since ``delivery_id`` was created."""
    d = WebhookDelivery
    created = sa.select(col(d.created_at)).where(col(d.id) == delivery_id).scalar_subquery()
    stmt = (
        sa.select(sa.literal(1))
        .where(
            col(d.endpoint_id) == endpoint_id,
            col(d.status) == DeliveryStatus.DELIVERED.value,
            col(d.delivered_at) >= created,
        )
        .limit(1)
    )
    return session.execute(stmt).first() is not None


def failed_events(
    session: Session, endpoint_id: str, *, created_gte: datetime | None, limit: int
) -> Sequence[WebhookDelivery]:
    """The endpoint's events that never got through: per event, its latest ``failed`` delivery,
    where no delivery of that event to the endpoint is pending, in flight or delivered; oldest
    first."""
    d = WebhookDelivery
    other = sa.orm.aliased(WebhookDelivery)
    same_event = sa.and_(
        col(other.endpoint_id) == col(d.endpoint_id), col(other.event_id) == col(d.event_id)
    )
    outstanding = sa.exists().where(same_event, col(other.status) != DeliveryStatus.FAILED.value)
    newer = sa.or_(
        col(other.created_at) > col(d.created_at),
        sa.and_(col(other.created_at) == col(d.created_at), col(other.id) > col(d.id)),
    )
    superseded = sa.exists().where(
        same_event, col(other.status) == DeliveryStatus.FAILED.value, newer
    )
    stmt = select(d).where(
        col(d.endpoint_id) == endpoint_id,
        col(d.status) == DeliveryStatus.FAILED.value,
        ~outstanding,
        ~superseded,
    )
    if created_gte is not None:  # the event first sent then or later (not its last copy)
        earlier = sa.exists().where(same_event, col(other.created_at) < created_gte)
        stmt = stmt.where(col(d.created_at) >= created_gte, ~earlier)
    stmt = stmt.order_by(col(d.created_at), col(d.id)).limit(limit)
    return session.exec(stmt).all()


def postpone_endpoint(session: Session, endpoint_id: str, until: datetime) -> int:
    """Every unclaimed row of the endpoint due before ``until`` waits until then; how many."""
    d = WebhookDelivery
    result = session.execute(
        sa.update(d)
        .where(
            col(d.endpoint_id) == endpoint_id,
            col(d.status) == DeliveryStatus.PENDING.value,
            col(d.next_attempt_at) < until,
        )
        .values(next_attempt_at=until)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def finish_claim(session: Session, delivery_id: str, claim: datetime, **values: Any) -> bool:
    """Write an attempt's outcome (``values``) and release the claim, only while it is still held
    under ``claim``; ``False`` (nothing written): another worker claimed the row meanwhile."""
    d = WebhookDelivery
    result = session.execute(
        sa.update(d).where(_held(delivery_id, claim)).values(locked_until=None, **values)
    )
    return getattr(result, "rowcount", 0) == 1
