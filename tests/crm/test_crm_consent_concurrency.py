"""Concurrent consent appends to one contact still form one chain with a valid seal."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from crm import KeyRing, MerchantCreate, merchants
from crm.clock import FrozenClock
from crm.consent import service as consent
from crm.consent.service import SealStatus
from crm.contacts import service as contacts
from crm.contacts.models import ContactCreate
from crm.db import session_scope

from .conftest import START

WORKERS = 4
APPENDS = 15


def test_concurrent_appends_still_verify(committed_engine: sa.Engine, keyring: KeyRing) -> None:
    """Workers appending to one contact's ledger at once, each append its own transaction,
    serialise on the contact row: one unbroken chain, a valid seal, a projection equal to it."""
    clock = FrozenClock(START)
    with session_scope(committed_engine) as s:
        mid = merchants.create_merchant(s, MerchantCreate(name="Busy"), clock).id or 0
        cid = contacts.create_contact(s, mid, ContactCreate(time_zone="UTC"), keyring, clock).id
    assert cid is not None
    barrier = threading.Barrier(WORKERS)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        channel = ("email", "sms", "phone", "in_app")[worker]
        try:
            barrier.wait()
            for i in range(APPENDS):
                with session_scope(committed_engine) as s:
                    consent.record(
                        s,
                        mid,
                        cid,
                        purpose="marketing",
                        channel=channel,
                        action="withdraw" if i % 2 else "grant",
                        actor=f"w{worker}",
                        clock=clock,
                        keyring=keyring,
                    )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with session_scope(committed_engine) as s:
        report = consent.verify_chain(s, cid, keyring=keyring)
        assert (report.ok, report.length, report.seal) == (
            True,
            WORKERS * APPENDS,
            SealStatus.VALID,
        )
        assert report.problems == []
        assert {e.actor for e in consent.history(s, cid)} == {f"w{w}" for w in range(WORKERS)}
        # every channel ended on its worker's last action (APPENDS is odd: a grant)
        assert all(consent.may_contact(s, cid, "marketing", ch) for ch in ("email", "sms"))


def test_another_merchants_request_neither_waits_for_nor_locks_the_contact(
    pg_admin: sa.Engine, keyring: KeyRing
) -> None:
    """Merchant B naming A's contact id is refused without touching A's row: before, the lock
    came first, so B's request waited on A's busy contact (and held it) before its 404."""
    from crm.contacts import repository as contacts_repo
    from crm.errors import ContactNotFound

    from .conftest import committed_pg_engine

    clock = FrozenClock(START)
    with committed_pg_engine(pg_admin) as engine:
        with session_scope(engine) as s:
            a = merchants.create_merchant(s, MerchantCreate(name="A"), clock).id or 0
            b = merchants.create_merchant(s, MerchantCreate(name="B"), clock).id or 0
            cid = contacts.create_contact(s, a, ContactCreate(time_zone="UTC"), keyring, clock).id
        assert cid is not None
        with session_scope(engine) as holder:
            assert contacts_repo.get_for_update(holder, cid) is not None  # A's request, busy
            for attempt in (
                lambda s: consent.record(
                    s, b, cid, purpose="marketing", channel="email", action="grant",
                    actor="b", clock=clock, keyring=keyring,
                ),
                lambda s: contacts.get_contact_for_update(s, b, cid),
            ):  # fmt: skip
                with session_scope(engine) as other:
                    other.execute(sa.text("SET LOCAL lock_timeout = '300ms'"))
                    with pytest.raises(ContactNotFound):
                        attempt(other)


def test_verification_racing_appends_raises_no_false_alarm(
    pg_admin: sa.Engine, keyring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appends committing while a verification reads (READ COMMITTED: each statement its own
    snapshot) made the entries run past the head read beside them: a STALE seal, a tamper
    alarm over an untouched ledger. It reads again until the head stands still, and says
    busy (409) rather than report what it could not read whole."""
    from crm.consent import repository as consent_repo
    from crm.errors import ConsentBusy

    from .conftest import committed_pg_engine

    clock = FrozenClock(START)
    real_list_events = consent_repo.list_events
    with committed_pg_engine(pg_admin) as engine:
        with session_scope(engine) as s:
            mid = merchants.create_merchant(s, MerchantCreate(name="M"), clock).id or 0
            cid = contacts.create_contact(s, mid, ContactCreate(time_zone="UTC"), keyring, clock).id
        assert cid is not None
        appends = {"left": 0}

        def append() -> None:
            with session_scope(engine) as other:
                consent.record(
                    other, mid, cid, purpose="marketing", channel="email", action="grant",
                    actor="customer", clock=clock, keyring=keyring,
                )  # fmt: skip

        def list_events_then_append(session: Session, contact_id: int) -> object:
            events = real_list_events(session, contact_id)
            if session is verifying and appends["left"]:
                appends["left"] -= 1
                append()  # lands between this read and the next ones
            return events

        append()
        monkeypatch.setattr(consent_repo, "list_events", list_events_then_append)
        appends["left"] = 2
        with session_scope(engine) as verifying:
            report = consent.verify_chain(verifying, cid, keyring=keyring)
        assert (report.ok, report.seal, report.length, report.problems) == (
            True,
            SealStatus.VALID,
            3,
            [],
        )
        appends["left"] = 10  # a ledger that never stands still: busy, not tampered
        with session_scope(engine) as verifying, pytest.raises(ConsentBusy):
            consent.verify_chain(verifying, cid, keyring=keyring)
