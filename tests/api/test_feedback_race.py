"""One feedback link, several requests at once, on the API's own engines (SQLite with writes
queued lazily, PostgreSQL): exactly one answer is recorded."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from sqlmodel import Session, col, select

from api.db import session_scope
from crm import KeyRing, MerchantCreate, merchants
from crm.clock import FrozenClock
from crm.contacts import service as contacts
from crm.contacts.models import ContactCreate
from crm.errors import FeedbackTokenUsed
from crm.feedback import service as feedback
from crm.feedback.models import Feedback, FeedbackCreate, FeedbackUpdate
from crm.feedback.tokens import hash_token
from crm.rewards.models import RewardEntry
from crm.tickets.models import Ticket
from tests.crm.conftest import START
from tests.crm.helpers import sent_followup

KEYRING = KeyRing(b"k" * 32)


def _sent_link(engine: sa.Engine, clock: FrozenClock) -> tuple[int, int, str]:
    with session_scope(engine) as s:
        m = merchants.create_merchant(s, MerchantCreate(name="Links"), clock)
        c = contacts.create_contact(
            s, m.id or 0, ContactCreate(email="ann@example.com", time_zone="UTC"), KEYRING, clock
        )
        fu, token = sent_followup(s, m.id or 0, c, clock, KEYRING)
    return m.id or 0, fu.id or 0, token


def _answers(engine: sa.Engine, followup_id: int) -> tuple[list[int | None], int, int]:
    with Session(engine) as s:
        (fb,) = s.exec(select(Feedback).where(Feedback.followup_id == followup_id))
        tickets = s.exec(select(Ticket).where(Ticket.feedback_id == fb.id)).all()
        rewards = s.exec(select(RewardEntry).where(col(RewardEntry.followup_id) == followup_id))
        return [fb.rating], len(tickets), len(rewards.all())


def _submit(session: Session, merchant_id: int, token: str, rating: int, clock: FrozenClock):
    return feedback.submit_feedback(
        session, merchant_id, token, FeedbackCreate(rating=rating), keyring=KEYRING, clock=clock
    )


def test_a_link_read_before_another_request_redeemed_it_is_not_redeemed_twice(db):
    """The public route reads the row before it writes: that earlier read must not let a
    second answer in after the first one committed."""
    clock = FrozenClock(START)
    merchant_id, followup_id, token = _sent_link(db, clock)
    with Session(db, expire_on_commit=False) as late:
        peeked = late.exec(select(Feedback).where(Feedback.token_hash == hash_token(token))).one()
        assert peeked.submitted_at is None
        with session_scope(db) as first:
            _submit(first, merchant_id, token, 5, clock)
        with pytest.raises(FeedbackTokenUsed):
            _submit(late, merchant_id, token, 1, clock)
        late.rollback()
    assert _answers(db, followup_id) == ([5], 0, 1)


def test_racing_answers_to_one_link_record_exactly_one(db):
    clock = FrozenClock(START)
    merchant_id, followup_id, token = _sent_link(db, clock)
    ratings = (1, 2, 4, 5)
    barrier = threading.Barrier(len(ratings), timeout=30)
    outcomes: list[str] = []

    def answer(rating: int) -> None:
        with Session(db, expire_on_commit=False) as s:
            s.exec(select(Feedback).where(Feedback.token_hash == hash_token(token))).one()
            barrier.wait()
            try:
                _submit(s, merchant_id, token, rating, clock)
                s.commit()
                outcomes.append(f"won:{rating}")
            except FeedbackTokenUsed:
                s.rollback()
                outcomes.append("used")

    threads = [threading.Thread(target=answer, args=(r,)) for r in ratings]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert outcomes.count("used") == len(ratings) - 1
    (won,) = [o for o in outcomes if o.startswith("won:")]
    rating = int(won.split(":")[1])
    assert _answers(db, followup_id) == ([rating], 1 if rating <= 2 else 0, 1)


def test_racing_edits_that_turn_an_answer_negative_open_one_ticket(db):
    """Edits read the answer before they write; two that both saw no ticket used to both open
    one, and the second failed on its unique feedback id (a 500 that lost that edit)."""
    clock = FrozenClock(START)
    merchant_id, followup_id, token = _sent_link(db, clock)
    with session_scope(db) as s:
        feedback_id = _submit(s, merchant_id, token, 5, clock).id
    edits = 4
    barrier = threading.Barrier(edits, timeout=30)
    errors: list[BaseException] = []

    def edit(rating: int) -> None:
        with Session(db, expire_on_commit=False) as s:
            s.exec(select(Feedback).where(Feedback.id == feedback_id)).one()
            barrier.wait()
            try:
                feedback.edit_feedback(
                    s,
                    merchant_id,
                    feedback_id,
                    FeedbackUpdate(rating=rating),
                    actor="contact",
                    keyring=KEYRING,
                    clock=clock,
                )
                s.commit()
            except BaseException as error:  # collected for the assertion below
                s.rollback()
                errors.append(error)

    threads = [threading.Thread(target=edit, args=(1 + i % 2,)) for i in range(edits)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    ratings, tickets, rewards = _answers(db, followup_id)
    assert ratings[0] in (1, 2)
    assert (tickets, rewards) == (1, 1)


def test_the_contact_lock_holds_on_the_apis_lazy_sqlite_engine(db, monkeypatch):
    """The API's SQLite engine reads in autocommit until a write, so ``FOR UPDATE`` locked
    nothing: an erasure could commit between an update's read of the contact and its write.
    The lock now opens the writer's transaction: a second locker waits for the first."""
    from crm.contacts import repository as contacts_repo
    from crm.sqlite_gate import WriteGate

    clock = FrozenClock(START)
    with session_scope(db) as s:
        m = merchants.create_merchant(s, MerchantCreate(name="Locks"), clock)
        c = contacts.create_contact(
            s, m.id or 0, ContactCreate(email="bo@example.com", time_zone="UTC"), KEYRING, clock
        )
        contact_id = c.id or 0
    holding, order = threading.Event(), []
    gate_waited = threading.Event()  # SQLite: the second locker reached the write gate
    backend: list[int] = []  # PostgreSQL: the second locker's backend pid
    real_acquire = WriteGate.acquire

    def watched_acquire(gate: WriteGate, timeout: float) -> None:
        if threading.current_thread() is thread:
            gate_waited.set()
        real_acquire(gate, timeout)

    monkeypatch.setattr(WriteGate, "acquire", watched_acquire)

    def second() -> None:
        holding.wait(10)
        with Session(db) as s:
            if db.dialect.name == "postgresql":
                backend.append(s.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar())
            contacts_repo.get_for_update(s, contact_id)
            order.append("second locked")
            s.commit()

    def second_is_blocked() -> bool:
        if db.dialect.name == "sqlite":  # the first session holds the gate: entering it waits
            return gate_waited.is_set()
        if not backend:
            return False
        with db.connect() as probe:  # a fresh connection: activity views are per-transaction
            query = sa.text("SELECT cardinality(pg_blocking_pids(:pid)) > 0")
            return bool(probe.execute(query, {"pid": backend[0]}).scalar())

    thread = threading.Thread(target=second)
    thread.start()
    with Session(db) as s:
        assert contacts_repo.get_for_update(s, contact_id) is not None
        holding.set()
        deadline = time.monotonic() + 10
        while not second_is_blocked():  # it must be waiting for this transaction
            assert time.monotonic() < deadline, "the second locker never waited for the first"
            time.sleep(0.01)
        assert thread.is_alive()
        order.append("first commits")
        s.commit()
    thread.join(30)
    assert not thread.is_alive()
    assert order == ["first commits", "second locked"]
