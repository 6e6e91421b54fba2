"""Follow-up SQL: policies, purchases, follow-ups, transition log, claiming."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, func, select

from crm.contacts.models import Contact
from crm.db import execute_many
from crm.followups.models import FollowUp, FollowUpEvent, FollowUpPolicy, Purchase

_T = TypeVar("_T")

__all__ = [
    "INTERRUPTED",
    "PENDING",
    "UNCERTAIN",
    "KnownPurchases",
    "add_event",
    "add_purchase",
    "claim_conditional",
    "claim_skip_locked",
    "contacts_with_pending",
    "due_to_expire",
    "first_purchases_without_periodic",
    "get",
    "get_for_update",
    "get_policy",
    "get_policy_by_id",
    "get_purchase",
    "has_pending",
    "insert_events",
    "insert_followups",
    "insert_purchases",
    "kinds_reached",
    "known_purchases",
    "last_contacted_at",
    "last_contacted_many",
    "list_events",
    "list_for_contact",
    "list_for_payment",
    "list_pending_for_contact",
    "list_policies",
    "list_purchases_for_contact",
    "lock_contact_of",
    "lock_contacts",
    "merchants_with_policy",
    "purchase_reversed",
    "renew_claims",
    "save",
    "save_policy",
    "stale_claims",
    "suppress_pending_for_contact",
]

PENDING = ("scheduled", "queued")
#: Why a follow-up failed when its message may have arrived all the same: the channel lost
#: the connection after handing it over, or its worker died mid-attempt. Never resent.
UNCERTAIN = "delivery_uncertain"
INTERRUPTED = "interrupted"
#: Prepared and claimed: its message may be leaving the worker right now, which records the
#: outcome. Consent withdrawal, erasure and expiry leave such a row alone rather than call
#: a message that went out "suppressed" or "expired".
_IN_FLIGHT = sa.and_(col(FollowUp.state) == "queued", col(FollowUp.attempted_at).is_not(None))
_CHUNK = 500  # bound IN lists
_PURCHASES = Purchase.__table__  # type: ignore[attr-defined]
_FOLLOWUPS = FollowUp.__table__  # type: ignore[attr-defined]
_EVENTS = FollowUpEvent.__table__  # type: ignore[attr-defined]
_CONTACTS = Contact.__table__  # type: ignore[attr-defined]
#: When the frequency cap counts a follow-up as contacting its contact: sent, or an attempt
#: that may have delivered (in flight, ``delivery_uncertain``, ``interrupted``).
_CONTACTED = sa.func.coalesce(_FOLLOWUPS.c.sent_at, _FOLLOWUPS.c.attempted_at)
_INSERT_PURCHASE = sa.insert(_PURCHASES)
# Built once: the settlement indexer runs these every step.
_PURCHASE_REFS = sa.select(
    _PURCHASES.c.payment_ref, _PURCHASES.c.invoice_ref, _PURCHASES.c.cancelled_at
).where(
    _PURCHASES.c.merchant_id == sa.bindparam("merchant_id"),
    sa.or_(
        _PURCHASES.c.payment_ref.in_(sa.bindparam("refs", expanding=True)),
        _PURCHASES.c.invoice_ref.in_(sa.bindparam("invoices", expanding=True)),
    ),
)
_FOLLOWUP_IDS = sa.select(_FOLLOWUPS.c.id, _FOLLOWUPS.c.payment_ref, _FOLLOWUPS.c.kind).where(
    _FOLLOWUPS.c.merchant_id == sa.bindparam("merchant_id"),
    _FOLLOWUPS.c.payment_ref.in_(sa.bindparam("refs", expanding=True)),
)
_POLICY = select(FollowUpPolicy).where(
    col(FollowUpPolicy.merchant_id) == sa.bindparam("merchant_id"),
    col(FollowUpPolicy.trigger) == sa.bindparam("trigger"),
)
_INSERT_FOLLOWUP = sa.insert(_FOLLOWUPS)
_INSERT_EVENT = sa.insert(_EVENTS)


def _chunks(values: Iterable[_T]) -> Iterator[list[_T]]:
    ordered = list(values)
    for start in range(0, len(ordered), _CHUNK):
        yield ordered[start : start + _CHUNK]


# --- bulk (the settlement indexer schedules a block range's payments at once) -----------------


@dataclass(frozen=True, slots=True)
class KnownPurchases:
    """What :func:`known_purchases` found: the payment refs already recorded, and per invoice
    the refs of its earlier purchases that were cancelled (a reorg, an invalidation)."""

    recorded: set[str]
    cancelled: dict[str, list[str]]


def known_purchases(
    session: Session, merchant_id: int, invoices_by_ref: Mapping[str, str]
) -> KnownPurchases:
    """One statement per chunk of ``payment_ref -> invoice_ref``: the refs already recorded,
    and the cancelled earlier purchases of the same invoices (a payment a reorg removed and
    the chain took again)."""
    recorded: set[str] = set()
    cancelled: dict[str, list[str]] = {}
    conn = session.connection()
    for chunk in _chunks(invoices_by_ref.items()):
        params = {
            "merchant_id": merchant_id,
            "refs": [ref for ref, _ in chunk],
            "invoices": sorted({invoice for _, invoice in chunk}),
        }
        for ref, invoice, cancelled_at in conn.execute(_PURCHASE_REFS, params):
            if ref in invoices_by_ref:
                recorded.add(ref)
            elif cancelled_at is not None:
                cancelled.setdefault(invoice, []).append(ref)
    return KnownPurchases(recorded, cancelled)


def kinds_reached(session: Session, merchant_id: int, refs: Iterable[str]) -> set[tuple[str, str]]:
    """``(payment_ref, kind)`` of the follow-ups of ``refs`` that may have reached their contact
    (sent, or an attempt that may have delivered)."""
    found: set[tuple[str, str]] = set()
    for chunk in _chunks(refs):
        stmt = sa.select(_FOLLOWUPS.c.payment_ref, _FOLLOWUPS.c.kind).where(
            _FOLLOWUPS.c.merchant_id == merchant_id,
            _FOLLOWUPS.c.payment_ref.in_(chunk),
            _CONTACTED.is_not(None),
        )
        found.update((ref, kind) for ref, kind in session.connection().execute(stmt))
    return found


def purchase_reversed(session: Session, merchant_id: int, invoice_ref: str) -> bool:
    """Whether the invoice's purchases were all cancelled (a reorg, an invalidation); False
    while one holds, or when the CRM recorded none."""
    stmt = sa.select(_PURCHASES.c.cancelled_at).where(
        _PURCHASES.c.merchant_id == merchant_id, _PURCHASES.c.invoice_ref == invoice_ref
    )
    found = session.connection().execute(stmt).scalars().all()
    return bool(found) and all(cancelled is not None for cancelled in found)


def insert_purchases(session: Session, rows: list[dict[str, Any]]) -> None:
    execute_many(session, _INSERT_PURCHASE, rows)


def insert_followups(session: Session, rows: list[dict[str, Any]]) -> list[int]:
    """Core executemany; the new ids in the order of ``rows``.

    No ``RETURNING`` (SQLite cannot promise its order, so SQLAlchemy would insert row by row):
    the ids are read back by the unique (merchant, payment_ref, kind).
    """
    if not rows:
        return []
    execute_many(session, _INSERT_FOLLOWUP, rows)
    ids: dict[tuple[int, str, str], int] = {}
    for merchant_id in {r["merchant_id"] for r in rows}:
        refs = [r["payment_ref"] for r in rows if r["merchant_id"] == merchant_id]
        for chunk in _chunks(refs):
            found = session.connection().execute(
                _FOLLOWUP_IDS, {"merchant_id": merchant_id, "refs": chunk}
            )
            ids.update({(merchant_id, ref, kind): int(i) for i, ref, kind in found})
    return [ids[(r["merchant_id"], r["payment_ref"], r["kind"])] for r in rows]


def insert_events(session: Session, rows: list[dict[str, Any]]) -> None:
    execute_many(session, _INSERT_EVENT, rows)


def last_contacted_many(session: Session, contact_ids: Iterable[int]) -> dict[int, datetime]:
    """:func:`last_contacted_at` for many contacts (contacts never messaged are absent)."""
    found: dict[int, datetime] = {}
    for chunk in _chunks(contact_ids):
        stmt = (
            sa.select(_FOLLOWUPS.c.contact_id, sa.func.max(_CONTACTED))
            .where(_FOLLOWUPS.c.contact_id.in_(chunk), _CONTACTED.is_not(None))
            .group_by(_FOLLOWUPS.c.contact_id)
        )
        found.update({int(c): at for c, at in session.execute(stmt)})
    return found


def _row_locks(session: Session) -> bool:
    """PostgreSQL needs row locks to serialise deciders; SQLite serialises writers already
    (the CRM engine opens ``BEGIN IMMEDIATE``), so there the lock statements are skipped."""
    return session.get_bind().dialect.name == "postgresql"


# FOR NO KEY UPDATE: excludes other deciders (and consent changes, which lock FOR UPDATE)
# without blocking inserts that merely reference the contact (foreign keys take KEY SHARE).
_LOCK_CONTACTS = (
    sa.select(_CONTACTS.c.id)
    .where(_CONTACTS.c.id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(_CONTACTS.c.id)
    .with_for_update(key_share=True)
)
_CONTACT_OF = (
    sa.select(_FOLLOWUPS.c.contact_id)
    .where(_FOLLOWUPS.c.id == sa.bindparam("followup_id"))
    .scalar_subquery()
)
_LOCK_CONTACT_OF = (
    sa.select(_CONTACTS.c.id).where(_CONTACTS.c.id == _CONTACT_OF).with_for_update(key_share=True)
)


def lock_contacts(session: Session, contact_ids: Iterable[int]) -> None:
    """Hold the contacts' rows until commit, in id order (two lockers never deadlock), so
    one transaction at a time decides whether a contact may be surveyed. One statement per
    500 contacts on PostgreSQL, none on SQLite."""
    if not _row_locks(session):
        return
    conn = session.connection()
    for chunk in _chunks(sorted(set(contact_ids))):
        conn.execute(_LOCK_CONTACTS, {"ids": chunk})


def lock_contact_of(session: Session, followup_id: int) -> None:
    """:func:`lock_contacts` for the follow-up's contact, in one statement."""
    if _row_locks(session):
        session.connection().execute(_LOCK_CONTACT_OF, {"followup_id": followup_id})


def contacts_with_pending(session: Session, contact_ids: Iterable[int]) -> set[int]:
    """The contacts among ``contact_ids`` with a scheduled or queued follow-up."""
    found: set[int] = set()
    for chunk in _chunks(contact_ids):
        stmt = (
            sa.select(_FOLLOWUPS.c.contact_id)
            .where(_FOLLOWUPS.c.contact_id.in_(chunk), _FOLLOWUPS.c.state.in_(PENDING))
            .distinct()
        )
        found.update(int(c) for c in session.execute(stmt).scalars())
    return found


def save_policy(session: Session, policy: FollowUpPolicy) -> FollowUpPolicy:
    session.add(policy)
    session.flush()
    return policy


def get_policy(session: Session, merchant_id: int, trigger: str) -> FollowUpPolicy | None:
    return session.exec(_POLICY, params={"merchant_id": merchant_id, "trigger": trigger}).first()


def get_policy_by_id(session: Session, merchant_id: int, policy_id: int) -> FollowUpPolicy | None:
    stmt = select(FollowUpPolicy).where(
        FollowUpPolicy.merchant_id == merchant_id, FollowUpPolicy.id == policy_id
    )
    return session.exec(stmt).first()


def list_policies(session: Session, merchant_id: int) -> Sequence[FollowUpPolicy]:
    stmt = (
        select(FollowUpPolicy)
        .where(FollowUpPolicy.merchant_id == merchant_id)
        .order_by(col(FollowUpPolicy.id))
    )
    return session.exec(stmt).all()


def merchants_with_policy(session: Session, trigger: str) -> Sequence[int]:
    stmt = (
        select(FollowUpPolicy.merchant_id)
        .where(FollowUpPolicy.trigger == trigger, col(FollowUpPolicy.active).is_(True))
        .order_by(col(FollowUpPolicy.merchant_id))  # contacts are locked merchant by merchant
    )
    return session.exec(stmt).all()


def add_purchase(session: Session, purchase: Purchase) -> Purchase:
    session.add(purchase)
    session.flush()
    return purchase


def get_purchase(session: Session, merchant_id: int, payment_ref: str) -> Purchase | None:
    stmt = select(Purchase).where(
        Purchase.merchant_id == merchant_id, Purchase.payment_ref == payment_ref
    )
    return session.exec(stmt).first()


def list_purchases_for_contact(session: Session, contact_id: int) -> Sequence[Purchase]:
    stmt = select(Purchase).where(Purchase.contact_id == contact_id).order_by(col(Purchase.id))
    return session.exec(stmt).all()


def first_purchases_without_periodic(
    session: Session, merchant_id: int, settled_before: datetime, kind: str
) -> Sequence[Purchase]:
    """Each contact's first live purchase settled before the cutoff without a ``kind`` follow-up.

    One cancelled for its own sale's reversal (a reorg, an invalidated invoice) before it
    could reach the contact does not count: a cancelled purchase never comes back (a payment
    the chain takes again is a new one), so the contact's next live purchase gets one."""
    first = (
        select(Purchase.contact_id, func.min(Purchase.id).label("first_id"))
        .where(Purchase.merchant_id == merchant_id, col(Purchase.cancelled_at).is_(None))
        .group_by(col(Purchase.contact_id))
        .subquery()
    )
    own_sale = aliased(Purchase)
    sale_reversed = (
        select(own_sale.id)
        .where(
            own_sale.merchant_id == FollowUp.merchant_id,
            own_sale.payment_ref == FollowUp.payment_ref,
            col(own_sale.cancelled_at).is_not(None),
        )
        .exists()
    )
    lost_with_its_sale = sa.and_(
        col(FollowUp.state) == "cancelled",
        col(FollowUp.sent_at).is_(None),
        col(FollowUp.attempted_at).is_(None),
        sale_reversed,
    )
    has_followup = (
        select(FollowUp.id)
        .where(
            FollowUp.contact_id == Purchase.contact_id,
            FollowUp.kind == kind,
            sa.not_(lost_with_its_sale),
        )
        .exists()
    )
    stmt = (
        select(Purchase)
        .join(first, first.c.first_id == Purchase.id)
        .where(Purchase.settled_at <= settled_before, ~has_followup)
        .order_by(col(Purchase.id))
    )
    return session.exec(stmt).all()


def save(session: Session, followup: FollowUp) -> FollowUp:
    session.add(followup)
    session.flush()
    return followup


def add_event(session: Session, event: FollowUpEvent) -> None:
    session.add(event)


def get(session: Session, merchant_id: int, followup_id: int) -> FollowUp | None:
    stmt = select(FollowUp).where(FollowUp.id == followup_id, FollowUp.merchant_id == merchant_id)
    return session.exec(stmt).first()


def get_for_update(session: Session, followup_id: int) -> FollowUp | None:
    stmt = select(FollowUp).where(FollowUp.id == followup_id).with_for_update()
    return session.exec(stmt).first()


def list_for_payment(
    session: Session, merchant_id: int, payment_ref: str, *, for_update: bool = False
) -> Sequence[FollowUp]:
    stmt = (
        select(FollowUp)
        .where(FollowUp.merchant_id == merchant_id, FollowUp.payment_ref == payment_ref)
        .order_by(col(FollowUp.id))
    )
    if for_update:  # PostgreSQL: a worker's mark_sent in flight commits first, then we read
        stmt = stmt.with_for_update()
    return session.exec(stmt).all()


def list_for_contact(session: Session, contact_id: int) -> Sequence[FollowUp]:
    stmt = select(FollowUp).where(FollowUp.contact_id == contact_id).order_by(col(FollowUp.id))
    return session.exec(stmt).all()


def list_pending_for_contact(
    session: Session, contact_id: int, purposes: Iterable[str] | None = None
) -> Sequence[FollowUp]:
    """The contact's follow-ups not yet sent nor in flight, locked."""
    stmt = select(FollowUp).where(
        FollowUp.contact_id == contact_id, col(FollowUp.state).in_(PENDING), ~_IN_FLIGHT
    )
    if purposes is not None:
        stmt = stmt.where(col(FollowUp.purpose).in_(list(purposes)))
    return session.exec(stmt.order_by(col(FollowUp.id)).with_for_update()).all()


def list_events(session: Session, followup_id: int) -> Sequence[FollowUpEvent]:
    stmt = (
        select(FollowUpEvent)
        .where(FollowUpEvent.followup_id == followup_id)
        .order_by(col(FollowUpEvent.id))
    )
    return session.exec(stmt).all()


def last_contacted_at(
    session: Session, contact_id: int, exclude_id: int | None = None
) -> datetime | None:
    """The latest send, or start of an attempt that may have delivered, to the contact."""
    stmt = sa.select(sa.func.max(_CONTACTED)).where(_FOLLOWUPS.c.contact_id == contact_id)
    if exclude_id is not None:
        stmt = stmt.where(_FOLLOWUPS.c.id != exclude_id)
    at: datetime | None = session.execute(stmt).scalar()
    return at


def has_pending(session: Session, contact_id: int, exclude_id: int | None = None) -> bool:
    stmt = select(FollowUp.id).where(
        FollowUp.contact_id == contact_id, col(FollowUp.state).in_(PENDING)
    )
    if exclude_id is not None:
        stmt = stmt.where(FollowUp.id != exclude_id)
    return session.exec(stmt.limit(1)).first() is not None


def claim_skip_locked(session: Session, now: datetime, limit: int, worker_id: str) -> list[int]:
    """PostgreSQL: lock due rows with SKIP LOCKED, then flip them to ``queued``."""
    due = (
        select(FollowUp.id)
        .where(FollowUp.state == "scheduled", FollowUp.due_at <= now)
        .order_by(col(FollowUp.due_at), col(FollowUp.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(session.exec(due).all())
    if ids:
        session.execute(
            sa.update(FollowUp)
            .where(col(FollowUp.id).in_(ids))
            .values(state="queued", worker_id=worker_id, queued_at=now, updated_at=now)
            .execution_options(synchronize_session="fetch")
        )
    return [int(i) for i in ids if i is not None]


def claim_conditional(session: Session, now: datetime, limit: int, worker_id: str) -> list[int]:
    """Portable fallback (SQLite serialises writers): conditional UPDATE per row."""
    candidates = session.exec(
        select(FollowUp.id)
        .where(FollowUp.state == "scheduled", FollowUp.due_at <= now)
        .order_by(col(FollowUp.due_at), col(FollowUp.id))
        .limit(limit)
    ).all()
    claimed: list[int] = []
    for followup_id in candidates:
        result = session.execute(
            sa.update(FollowUp)
            .where(col(FollowUp.id) == followup_id, col(FollowUp.state) == "scheduled")
            .values(state="queued", worker_id=worker_id, queued_at=now, updated_at=now)
            .execution_options(synchronize_session="fetch")
        )
        if getattr(result, "rowcount", 0) == 1 and followup_id is not None:
            claimed.append(int(followup_id))
    return claimed


def renew_claims(session: Session, ids: Sequence[int], worker_id: str, now: datetime) -> int:
    """Push the lease of ``worker_id``'s still-``queued`` claims among ``ids`` out to ``now``;
    returns how many it still held."""
    result = session.execute(
        sa.update(FollowUp)
        .where(
            col(FollowUp.id).in_(list(ids)),
            col(FollowUp.state) == "queued",
            col(FollowUp.worker_id) == worker_id,
        )
        .values(queued_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def stale_claims(session: Session, claimed_before: datetime, limit: int) -> Sequence[FollowUp]:
    """``queued`` follow-ups whose claim (or last lease renewal) is older than the cutoff."""
    stmt = (
        select(FollowUp)
        .where(FollowUp.state == "queued", col(FollowUp.queued_at) <= claimed_before)
        .order_by(col(FollowUp.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return session.exec(stmt).all()


def due_to_expire(session: Session, now: datetime) -> Sequence[FollowUp]:
    stmt = (
        select(FollowUp)
        .where(col(FollowUp.state).in_(PENDING), FollowUp.expires_at <= now, ~_IN_FLIGHT)
        .order_by(col(FollowUp.id))
        .with_for_update(skip_locked=True)
    )
    return session.exec(stmt).all()


def suppress_pending_for_contact(
    session: Session,
    contact_id: int,
    *,
    purposes: Iterable[str] | None,
    reason: str,
    at: datetime,
) -> int:
    """Move the contact's scheduled/queued follow-ups to ``suppressed`` (one event each)."""
    rows = list_pending_for_contact(session, contact_id, purposes)
    for fu in rows:
        assert fu.id is not None
        add_event(
            session,
            FollowUpEvent(
                followup_id=fu.id,
                merchant_id=fu.merchant_id,
                from_state=fu.state,
                to_state="suppressed",
                reason=reason,
                at=at,
            ),
        )
        fu.state, fu.reason, fu.updated_at = "suppressed", reason, at
        session.add(fu)
    session.flush()
    return len(rows)
