"""One feedback link, several requests at once, on the API's own engines (SQLite with writes
queued lazily, PostgreSQL): exactly one answer is recorded; the tickets it opens and the
contact's erasure take turns with it."""

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
from crm.enums import TicketState
from crm.errors import FeedbackTokenUsed
from crm.feedback import service as feedback
from crm.feedback.models import Feedback, FeedbackCreate, FeedbackUpdate
from crm.feedback.tokens import hash_token
from crm.rewards.models import RewardEntry
from crm.tickets import repository as tickets_repo
from crm.tickets import service as tickets
from crm.tickets.models import Ticket, TicketEvent
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


class _Waiter:
    """Runs ``work(session)`` in a thread and tells when that thread waits for another
    transaction's lock: on SQLite, at the in-process write gate; on PostgreSQL, per
    ``pg_blocking_pids``."""

    def __init__(self, db: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        from crm.sqlite_gate import WriteGate

        self.db, self.gate_waited, self.backend = db, threading.Event(), []
        self.errors: list[BaseException] = []
        self.thread: threading.Thread | None = None
        real_acquire = WriteGate.acquire

        def watched_acquire(gate: WriteGate, timeout: float) -> None:
            if threading.current_thread() is self.thread:
                self.gate_waited.set()
            real_acquire(gate, timeout)

        monkeypatch.setattr(WriteGate, "acquire", watched_acquire)

    def start(self, work) -> None:
        def run() -> None:
            with Session(self.db, expire_on_commit=False) as s:
                if self.db.dialect.name == "postgresql":
                    pid = s.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
                    self.backend.append(pid)
                try:
                    work(s)
                    s.commit()
                except BaseException as error:  # collected for the test's assertions
                    s.rollback()
                    self.errors.append(error)

        self.thread = threading.Thread(target=run)
        self.thread.start()

    def _blocked(self) -> bool:
        if self.db.dialect.name == "sqlite":  # the holder has the gate: entering it waits
            return self.gate_waited.is_set()
        if not self.backend:
            return False
        with self.db.connect() as probe:  # a fresh connection: activity views are per-transaction
            query = sa.text("SELECT cardinality(pg_blocking_pids(:pid)) > 0")
            return bool(probe.execute(query, {"pid": self.backend[0]}).scalar())

    def wait_until_blocked(self) -> None:
        deadline = time.monotonic() + 10
        while not self._blocked():  # it must be waiting for the holder's transaction
            assert self.thread is not None
            assert self.thread.is_alive(), self.errors
            assert time.monotonic() < deadline, "the second transaction never waited"
            time.sleep(0.01)

    def join(self) -> None:
        assert self.thread is not None
        self.thread.join(30)
        assert not self.thread.is_alive()


def test_the_contact_lock_holds_on_the_apis_lazy_sqlite_engine(db, monkeypatch):
    """The API's SQLite engine reads in autocommit until a write, so ``FOR UPDATE`` locked
    nothing: an erasure could commit between an update's read of the contact and its write.
    The lock now opens the writer's transaction: a second locker waits for the first."""
    from crm.contacts import repository as contacts_repo

    clock = FrozenClock(START)
    with session_scope(db) as s:
        m = merchants.create_merchant(s, MerchantCreate(name="Locks"), clock)
        c = contacts.create_contact(
            s, m.id or 0, ContactCreate(email="bo@example.com", time_zone="UTC"), KEYRING, clock
        )
        contact_id = c.id or 0
    order: list[str] = []
    second = _Waiter(db, monkeypatch)
    with Session(db) as s:
        assert contacts_repo.get_for_update(s, contact_id) is not None
        second.start(lambda s2: (contacts_repo.get_for_update(s2, contact_id), order.append("2")))
        second.wait_until_blocked()
        order.append("1")
        s.commit()
    second.join()
    assert (order, second.errors) == (["1", "2"], [])


def test_a_ticket_change_waits_for_one_in_progress(db, monkeypatch):
    """Ticket transitions read the ticket, then write it. On the API's SQLite engine that read
    locked nothing: a response committed in between was overwritten by the assignment (the
    answered ticket went back to the queue) and a second response was accepted."""
    clock = FrozenClock(START)
    merchant_id, _, token = _sent_link(db, clock)
    with session_scope(db) as s:
        ticket_id = _submit(s, merchant_id, token, 1, clock).ticket_id or 0
    clock.advance(hours=2)
    responder = _Waiter(db, monkeypatch)
    with Session(db, expire_on_commit=False) as s:
        assert tickets_repo.get(s, merchant_id, ticket_id, for_update=True) is not None
        responder.start(
            lambda s2: tickets.respond(s2, merchant_id, ticket_id, actor="b", clock=clock)
        )
        responder.wait_until_blocked()
        tickets.assign(s, merchant_id, ticket_id, "agent-a", actor="a", clock=clock)
        s.commit()
    responder.join()
    assert responder.errors == []
    with Session(db) as s:
        t = s.get(Ticket, ticket_id)
        assert t is not None
        assert (t.state, t.assignee) == (TicketState.RESPONDED, "agent-a")
        assert t.first_response_at == clock.now()
        events = s.exec(
            select(TicketEvent.kind)
            .where(TicketEvent.ticket_id == ticket_id)
            .order_by(col(TicketEvent.id))
        ).all()
    assert list(events) == ["opened", "assigned", "responded"]


def test_an_answer_and_an_erasure_at_once_leave_nothing_about_the_contact(db, monkeypatch):
    """An answer read the contact and its key, then wrote; on the API's SQLite engine an
    erasure committed in between, and the answer still opened a ticket, credited points and
    stored a comment for the erased contact. The answer now holds the contact's lock, as
    erasure does: whichever comes second sees the other."""
    from crm.feedback import service as feedback_service
    from crm.privacy import service as privacy

    clock = FrozenClock(START)
    merchant_id, followup_id, token = _sent_link(db, clock)
    with Session(db) as s:
        (fb,) = s.exec(select(Feedback).where(Feedback.followup_id == followup_id))
        contact_id = fb.contact_id
    eraser = _Waiter(db, monkeypatch)
    real_data_key = feedback_service.contacts.data_key

    def data_key_then_erase(session, keyring, contact):
        eraser.start(
            lambda s2: privacy.erase_contact(s2, merchant_id, contact_id, actor="dpo", clock=clock)
        )
        eraser.wait_until_blocked()
        return real_data_key(session, keyring, contact)

    monkeypatch.setattr(feedback_service.contacts, "data_key", data_key_then_erase)
    with Session(db, expire_on_commit=False) as s:
        answer = feedback.submit_feedback(
            s,
            merchant_id,
            token,
            FeedbackCreate(rating=1, comment="It arrived broken"),
            keyring=KEYRING,
            clock=clock,
        )
        s.commit()
    eraser.join()
    assert eraser.errors == []
    assert answer.ticket_id is not None  # the answer came first, so erasure closed its ticket
    with Session(db) as s:
        fb = s.exec(select(Feedback).where(Feedback.followup_id == followup_id)).one()
        assert fb.comment_enc is None
        states = s.exec(select(Ticket.state).where(Ticket.contact_id == contact_id)).all()
        assert list(states) == [TicketState.RESOLVED]
