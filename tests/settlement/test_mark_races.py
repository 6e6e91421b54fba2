"""Staff marking an invoice while the indexer steps: whichever commits first, the other sees it.

The indexer reads a range's invoices without locks and writes each back only if it still holds
what it read; staff marking and expiry read the invoice under a lock (PostgreSQL row lock,
SQLite's one write lock). Before, a mark `invalid` committed during a step was overwritten
with `settled` (follow-up scheduled), and a step committed during a mark left the invoice
`invalid` with the settled sale's follow-up still scheduled.

The interleavings are forced, not timed: a step runs inside a mark (or a mark inside a step)
through a hook, and an engine whose lock waits fail at once ("impatient") stands for a
transaction that would wait; it is simply retried afterwards, as the indexer's loop does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

import crm
from api import db as api_db
from api.settlement import invoices
from api.settlement import repository as repo
from api.settlement.indexer import Indexer
from api.settlement.models import InvoiceState, InvoiceStatus
from api.webhooks import create_endpoint
from api.webhooks.models import WebhookDelivery
from crm.audit import service as audit_service
from crm.audit.models import AuditLog
from tests.settlement.conftest import MarketSuite
from tests.settlement.test_indexer import (
    AMOUNT,
    Shop,
    followups_of,
    indexer_for,
    new_invoice,
    open_shop,
    pay,
    reload,
)


def impatient(engine: sa.Engine, make: Callable[..., sa.Engine]) -> sa.Engine:
    """Another engine on the same database whose lock waits fail within 0.2 s."""
    if engine.dialect.name == "sqlite":
        return make(engine.url, connect_args={"timeout": 0.2})
    with engine.connect() as conn:
        path = conn.execute(sa.text("SHOW search_path")).scalar_one()
    options = f"-csearch_path={path} -clock_timeout=200"
    return make(engine.url, connect_args={"options": options})


def attempt(step: Callable[[], object]) -> bool:
    """Run ``step``; False if it met a lock another transaction holds (and changed nothing)."""
    try:
        step()
    except sa.exc.OperationalError as exc:
        if "lock" not in str(exc).lower():
            raise
        return False
    return True


def deliveries(engine: sa.Engine) -> list[tuple[str, dict]]:
    with Session(engine) as session:
        rows = session.exec(select(WebhookDelivery).order_by(WebhookDelivery.created_at)).all()
        return [(d.event_type, json.loads(d.payload)["data"]["object"]) for d in rows]


def mark_invalid(engine: sa.Engine, shop: Shop, invoice_id: str, clock) -> bool:
    with Session(engine) as session, session.begin():
        outcome = invoices.mark_invoice(
            session, shop.merchant_id, invoice_id, settle=False, actor="staff", clock=clock
        )
        return outcome.changed


def assert_held_invalid(engine: sa.Engine, shop: Shop, invoice_id: str) -> None:
    """The consistent outcome of "invalidated, paid anyway": invalid (staff decided), the money
    recorded, nothing settled, no follow-up, the merchant told of the held payment once."""
    after = reload(engine, invoice_id)
    assert (after.state, after.status, after.paid_amount) == ("invalid", "marked", AMOUNT)
    assert after.settled_at is None
    assert followups_of(engine, shop.merchant_id) == []
    types = [t for t, _ in deliveries(engine)]
    assert types.count("invoice.payment_held") == 1, types
    assert "invoice.settled" not in types


class _StaffMarks(MarketSuite):
    @pytest.fixture
    def shop(self, engine, market, clock, keyring) -> Shop:
        shop = open_shop(engine, market, clock, keyring)
        with Session(engine) as session, session.begin():
            create_endpoint(session, str(shop.merchant_id), "https://s.example/h", ["*"])
        return shop

    @pytest.fixture
    def impatient_engines(self, engine) -> Iterator[tuple[sa.Engine, sa.Engine]]:
        """(the indexer's, the API's) on the test database, lock waits failing fast."""
        engines = (impatient(engine, crm.make_engine), impatient(engine, api_db.make_engine))
        yield engines
        for e in engines:
            e.dispose()


class TestStaffMarksDuringAStep(_StaffMarks):
    def test_a_step_tried_while_staff_mark_the_invoice_waits_for_the_mark(
        self, engine, market, clock, shop, impatient_engines, monkeypatch
    ):
        """The step is tried after the mark read the invoice and before it wrote (the API's
        engine: on SQLite it reads in autocommit until its first write). It cannot write the
        invoice until the mark commits; retried, it holds the payment."""
        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        step_engine, api_engine = impatient_engines
        stepper = Indexer(
            market.chain,
            step_engine,
            market.deployment.router,
            start_block=market.deployment.deploy_block,
            clock=clock,
        )
        tried: list[bool] = []
        record = audit_service.record

        def step_then_record(*args, **kwargs):
            tried.append(attempt(stepper.poll_once))
            return record(*args, **kwargs)

        monkeypatch.setattr(audit_service, "record", step_then_record)
        assert mark_invalid(api_engine, shop, invoice.id, clock)
        monkeypatch.undo()
        assert attempt(stepper.poll_once)  # the retry
        assert_held_invalid(engine, shop, invoice.id)
        assert tried == [False]  # the step met the mark's lock

    def test_a_step_that_settled_first_has_its_followup_cancelled_by_the_mark(
        self, engine, market, clock, shop, impatient_engines, monkeypatch
    ):
        """The other order: the step commits before the mark reads; the mark sees the sale and
        cancels its follow-up."""
        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        lock_invoice = repo.lock_invoice

        def step_then_lock(session, *args, **kwargs):
            indexer.poll_once()  # commits before the mark takes its lock
            return lock_invoice(session, *args, **kwargs)

        monkeypatch.setattr(repo, "lock_invoice", step_then_lock)
        assert mark_invalid(impatient_engines[1], shop, invoice.id, clock)
        after = reload(engine, invoice.id)
        assert (after.state, after.status, after.paid_amount) == ("invalid", "marked", AMOUNT)
        assert [f.state for f in followups_of(engine, shop.merchant_id)] == ["cancelled"]


class TestStaffMarksDuringAStepOnPostgreSQL(_StaffMarks):
    """Interleavings only PostgreSQL allows: on SQLite a step holds the only write lock from its
    first statement, so nothing commits between its read and its write."""

    @pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres)])
    def engine(self, request, pg_engine, pg_truncate) -> sa.Engine:
        with pg_engine.begin() as conn:
            conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
            conn.execute(sa.text(pg_truncate))
        return pg_engine

    def test_a_mark_committed_after_the_step_read_the_invoice_is_not_overwritten(
        self, engine, market, clock, shop, monkeypatch
    ):
        """The mark commits between the step's read of the invoice and its write: the step
        finds the row changed, reads it again and holds the payment instead of settling."""
        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        prefetch = Indexer._prefetch

        def prefetch_then_mark(self, *args, **kwargs):
            batch = prefetch(self, *args, **kwargs)
            assert mark_invalid(engine, shop, invoice.id, clock)
            return batch

        monkeypatch.setattr(Indexer, "_prefetch", prefetch_then_mark)
        result = indexer_for(engine, market, clock).poll_once()
        assert (result.payments, result.settled) == (1, [])
        assert_held_invalid(engine, shop, invoice.id)
        assert [t for t, _ in deliveries(engine)] == ["invoice.payment_held"]

    def test_a_step_that_read_first_and_waits_for_the_marks_lock_applies_to_the_mark(
        self, engine, market, clock, shop, monkeypatch
    ):
        """The step reads the invoice while the mark holds it, then waits for the mark's lock to
        write; the mark commits; the step's write finds the row changed and re-applies."""
        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        read = threading.Event()
        prefetch = Indexer._prefetch

        def prefetch_and_signal(self, *args, **kwargs):
            batch = prefetch(self, *args, **kwargs)
            read.set()
            return batch

        monkeypatch.setattr(Indexer, "_prefetch", prefetch_and_signal)
        errors: list[BaseException] = []

        def step() -> None:
            try:
                indexer.poll_once()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=step)
        record = audit_service.record

        def record_once_the_step_read(*args, **kwargs):
            thread.start()
            assert read.wait(60), "the step never read the invoice"
            return record(*args, **kwargs)

        monkeypatch.setattr(audit_service, "record", record_once_the_step_read)
        assert mark_invalid(engine, shop, invoice.id, clock)
        thread.join(60)
        assert not thread.is_alive()
        assert errors == []
        assert_held_invalid(engine, shop, invoice.id)

    def test_a_mark_committed_while_a_pending_payment_confirms_is_not_overwritten(
        self, engine, market, clock, shop, monkeypatch
    ):
        """The payment was seen (processing) in an earlier step; staff invalidate the invoice
        after the confirming step read it: held, not settled."""
        invoice = new_invoice(engine, market, shop, clock, confirmations=2)
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        assert reload(engine, invoice.id).state == InvoiceState.PROCESSING
        market.chain.mine(1)
        rows_by_id = repo.invoice_rows_by_id
        marked: list[bool] = []

        def read_then_mark(session, ids, **kwargs):
            rows = rows_by_id(session, ids, **kwargs)
            if not marked:
                marked.append(mark_invalid(engine, shop, invoice.id, clock))
            return rows

        monkeypatch.setattr(repo, "invoice_rows_by_id", read_then_mark)
        assert indexer.poll_once().settled == []
        assert marked == [True]
        assert_held_invalid(engine, shop, invoice.id)


class TestExpiryDuringAMark(MarketSuite):
    @pytest.fixture
    def shop(self, engine, market, clock, keyring) -> Shop:
        return open_shop(engine, market, clock, keyring)

    def test_an_invoice_staff_invalidate_while_it_expires_stays_invalid(
        self, engine, market, clock, shop, monkeypatch
    ):
        """Expiry read the invoice (``new``, past due); staff invalidate it before expiry
        writes. Expiry holds it locked, so the mark waits (here: is retried) and decides on
        ``expired``; before, expiry overwrote the committed ``invalid``."""
        invoice = new_invoice(engine, market, shop, clock, expires=timedelta(minutes=1))
        clock.advance(timedelta(minutes=2))
        api_engine = impatient(engine, api_db.make_engine)
        expirable = repo.expirable
        tried: list[bool] = []

        def read_then_mark(session, now, limit):
            rows = expirable(session, now, limit)
            tried.append(attempt(lambda: mark_invalid(api_engine, shop, invoice.id, clock)))
            return rows

        monkeypatch.setattr(repo, "expirable", read_then_mark)
        try:
            with Session(engine) as session, session.begin():
                expired = [i.id for i in invoices.expire_due(session, clock)]
            monkeypatch.undo()
            assert tried == [False]  # it met expiry's lock
            assert mark_invalid(api_engine, shop, invoice.id, clock)
        finally:
            api_engine.dispose()
        assert expired == [invoice.id]
        after = reload(engine, invoice.id)
        assert (after.state, after.status) == (InvoiceState.INVALID, InvoiceStatus.MARKED)


class TestMarkingInvalidTwice(MarketSuite):
    def test_is_a_no_op(self, engine, market, clock, keyring):
        shop = open_shop(engine, market, clock, keyring)
        invoice = new_invoice(engine, market, shop, clock)
        assert mark_invalid(engine, shop, invoice.id, clock)
        assert not mark_invalid(engine, shop, invoice.id, clock)
        with Session(engine) as session:
            actions = session.exec(
                select(AuditLog.action).where(AuditLog.object_id == invoice.id)
            ).all()
        assert actions == ["invoice.mark_invalid"]
        assert reload(engine, invoice.id).state == InvoiceState.INVALID
