"""Consent SQL: ledger appends and the one-row projection lookup."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crm.consent.models import ConsentEvent, ConsentHead, ConsentState
from crm.enums import ConsentStatus

__all__ = [
    "add_event",
    "get_head",
    "get_state",
    "granted_channels",
    "last_event",
    "latest_setting",
    "list_events",
    "list_states",
    "list_unsealed_heads",
    "put_head",
    "upsert_state",
]


def last_event(session: Session, contact_id: int) -> ConsentEvent | None:
    stmt = (
        select(ConsentEvent)
        .where(ConsentEvent.contact_id == contact_id)
        .order_by(col(ConsentEvent.seq).desc())
        .limit(1)
    )
    return session.exec(stmt).first()


def latest_setting(
    session: Session, contact_id: int, purpose: str, channels: Iterable[str]
) -> dict[str, ConsentEvent]:
    """Per channel, the newest entry that sets (``purpose``, channel): one naming the channel or
    one naming none (every channel). A channel no entry sets is absent. One backward walk of
    the contact's ``(contact_id, seq)`` index per channel, stopping at the first hit."""
    found: dict[str, ConsentEvent] = {}
    for channel in channels:
        stmt = (
            select(ConsentEvent)
            .where(
                ConsentEvent.contact_id == contact_id,
                ConsentEvent.purpose == purpose,
                sa.or_(col(ConsentEvent.channel) == channel, col(ConsentEvent.channel).is_(None)),
            )
            .order_by(col(ConsentEvent.seq).desc())
            .limit(1)
        )
        if (event := session.exec(stmt).first()) is not None:
            found[channel] = event
    return found


def add_event(session: Session, event: ConsentEvent) -> ConsentEvent:
    session.add(event)
    session.flush()
    return event


def list_events(session: Session, contact_id: int) -> Sequence[ConsentEvent]:
    """The contact's ledger, oldest first, read afresh (verification must see the rows)."""
    stmt = (
        select(ConsentEvent)
        .where(ConsentEvent.contact_id == contact_id)
        .order_by(col(ConsentEvent.seq))
        .execution_options(populate_existing=True)
    )
    return session.exec(stmt).all()


def get_state(session: Session, contact_id: int, purpose: str, channel: str) -> str | None:
    """Single primary-key lookup on (contact_id, purpose, channel)."""
    stmt = select(ConsentState.state).where(
        ConsentState.contact_id == contact_id,
        ConsentState.purpose == purpose,
        ConsentState.channel == channel,
    )
    return session.exec(stmt).first()


_GRANTED = select(ConsentState.contact_id, ConsentState.channel).where(
    col(ConsentState.contact_id).in_(sa.bindparam("ids", expanding=True)),
    col(ConsentState.purpose) == sa.bindparam("purpose"),
    col(ConsentState.channel).in_(sa.bindparam("channels", expanding=True)),
    col(ConsentState.state) == ConsentStatus.GRANTED.value,
)


def granted_channels(
    session: Session, contact_ids: Iterable[int], purpose: str, channels: Iterable[str]
) -> dict[int, set[str]]:
    """Per contact, the ``channels`` on which ``purpose`` is granted (projection rows only)."""
    ids, wanted = sorted(set(contact_ids)), sorted(set(channels))
    found: dict[int, set[str]] = {}
    if not wanted:
        return found
    for start in range(0, len(ids), 500):
        params = {"ids": ids[start : start + 500], "purpose": purpose, "channels": wanted}
        for contact_id, channel in session.exec(_GRANTED, params=params):
            found.setdefault(int(contact_id), set()).add(channel)
    return found


def list_states(session: Session, contact_id: int) -> Sequence[ConsentState]:
    """The contact's projection rows, read afresh (an identity-map copy from earlier in the
    session would hide a concurrent append's rows from verification)."""
    stmt = (
        select(ConsentState)
        .where(ConsentState.contact_id == contact_id)
        .order_by(col(ConsentState.purpose), col(ConsentState.channel))
        .execution_options(populate_existing=True)
    )
    return session.exec(stmt).all()


def upsert_state(
    session: Session,
    *,
    merchant_id: int,
    contact_id: int,
    purpose: str,
    channel: str,
    state: str,
    event_id: int,
    at: datetime,
) -> None:
    row = session.get(ConsentState, (contact_id, purpose, channel))
    if row is None:
        row = ConsentState(
            contact_id=contact_id,
            purpose=purpose,
            channel=channel,
            merchant_id=merchant_id,
            state=state,
            event_id=event_id,
            updated_at=at,
        )
    else:
        row.state, row.event_id, row.updated_at = state, event_id, at
    session.add(row)


def get_head(session: Session, contact_id: int) -> ConsentHead | None:
    """The contact's sealed head, read afresh (never a stale identity-map copy)."""
    stmt = (
        select(ConsentHead)
        .where(ConsentHead.contact_id == contact_id)
        .execution_options(populate_existing=True)
    )
    return session.exec(stmt).first()


def put_head(session: Session, head: ConsentHead) -> None:
    session.add(head)


def list_unsealed_heads(
    session: Session, *, after_contact_id: int, limit: int
) -> Sequence[ConsentHead]:
    """Heads without a MAC, in contact order (keyset page after ``after_contact_id``)."""
    stmt = (
        select(ConsentHead)
        .where(col(ConsentHead.mac).is_(None), col(ConsentHead.contact_id) > after_contact_id)
        .order_by(col(ConsentHead.contact_id))
        .limit(limit)
    )
    return session.exec(stmt).all()
