"""Concurrent transactions: two workers calling ``claim_due`` at once never claim the same
follow-up; two deciders (scheduling, ``prepare_send``) never both survey one contact within the
frequency cap (PostgreSQL: SQLite serialises writers)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from crm import KeyRing, MerchantCreate, merchants
from crm.clock import FrozenClock
from crm.consent import service as consent
from crm.contacts import service as contacts
from crm.contacts.models import Contact, ContactCreate, ContactUpdate
from crm.db import session_scope
from crm.errors import ContactErased, DuplicatePolicy
from crm.followups import dispatch as followups_dispatch
from crm.followups import policies as followups_policies
from crm.followups import repository as followups_repo
from crm.followups import service as followups
from crm.followups.models import (
    FollowUp,
    FollowUpEvent,
    FollowUpPolicy,
    FollowUpPolicyCreate,
    FollowUpPolicyUpdate,
)
from crm.privacy import service as privacy

from .conftest import START

N = 120
WORKERS = 4


def _seed(engine: sa.Engine, keyring: KeyRing, clock: FrozenClock) -> set[int]:
    with session_scope(engine) as s:
        m = merchants.create_merchant(s, MerchantCreate(name="Busy"), clock)
        mid = m.id or 0
        followups_policies.create_policy(
            s,
            mid,
            FollowUpPolicyCreate(delay_minutes=0, frequency_cap_days=0, channel_order=["in_app"]),
            actor="admin",
            clock=clock,
        )
        c = contacts.create_contact(s, mid, ContactCreate(time_zone="UTC"), keyring, clock)
        consent.grant(
            s, mid, c.id or 0, "service_followup", "in_app", actor="c", clock=clock, keyring=keyring
        )
        ids: set[int] = set()
        for i in range(N):
            [fu] = followups.schedule_for_payment(
                s, mid, c.id or 0, f"pay-{i}", f"inv-{i}", 100, "USDC", clock.now(), clock
            )
            assert fu.state == "scheduled"
            ids.add(fu.id or 0)
    return ids


def test_claim_due_never_double_claims(committed_engine: sa.Engine, keyring: KeyRing) -> None:
    clock = FrozenClock(START)
    expected = _seed(committed_engine, keyring, clock)
    barrier = threading.Barrier(WORKERS)
    claimed: dict[str, list[int]] = {f"w{i}": [] for i in range(WORKERS)}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            barrier.wait()
            while True:
                with session_scope(committed_engine) as s:
                    got = followups_dispatch.claim_due(s, clock.now(), 7, name)
                if not got:
                    return
                claimed[name].extend(got)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    flat = [i for ids in claimed.values() for i in ids]
    assert len(flat) == len(set(flat))  # nobody claimed a follow-up twice
    assert set(flat) == expected  # and every due follow-up was claimed
    with session_scope(committed_engine) as s:
        rows = s.exec(select(FollowUp)).all()
        assert {r.state for r in rows} == {"queued"}
        owner = {i: w for w, ids in claimed.items() for i in ids}
        assert all(r.worker_id == owner[r.id or 0] for r in rows)
        queued_events = s.exec(
            select(FollowUpEvent).where(FollowUpEvent.to_state == "queued")
        ).all()
        assert len(queued_events) == N


# ----------------------------------------------------------------------------- frequency cap
#
# Two transactions decide for one contact. The first decides and keeps its transaction open
# until the second is either waiting for a lock (the fix: it will decide after the commit) or
# done (no lock: it decided without seeing the first). Then the first commits.

_T = TypeVar("_T")

HANG = 60.0  # seconds before a wait is a hang (a failure), never a measured duration


def _backend_pid(session: Session) -> int:
    return int(session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def _waits_for_lock(admin: sa.Engine, pid: int) -> bool:
    with admin.connect() as conn:
        event = conn.execute(
            sa.text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"),
            {"pid": pid},
        ).scalar()
    return event == "Lock"


def _wait_until(check: Callable[[], bool]) -> None:
    for _ in range(int(HANG / 0.01)):
        if check():
            return
        time.sleep(0.01)
    raise TimeoutError("the second transaction neither waited for a lock nor finished")


def _race(
    engine: sa.Engine,
    admin: sa.Engine,
    first: Callable[[Session], object],
    second: Callable[[Session], object],
) -> tuple[object, object]:
    """``first`` decides and holds its transaction open until ``second`` waits on a lock or
    has finished; returns both results."""
    results: dict[str, object] = {}
    errors: list[BaseException] = []
    first_decided, second_done = threading.Event(), threading.Event()
    second_pid: list[int] = []

    def run_first() -> None:
        try:
            with session_scope(engine) as s:
                results["first"] = first(s)
                first_decided.set()
                _wait_until(
                    lambda: (
                        second_done.is_set()
                        or bool(second_pid and _waits_for_lock(admin, second_pid[0]))
                    )
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            first_decided.set()

    def run_second() -> None:
        try:
            assert first_decided.wait(HANG)
            with session_scope(engine) as s:
                second_pid.append(_backend_pid(s))
                results["second"] = second(s)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            second_done.set()

    _run_together(run_first, run_second)
    assert errors == []
    return results["first"], results["second"]


def _run_together(*jobs: Callable[[], None]) -> None:
    """Each job in a thread of its own, all started, then all waited for (bounded)."""
    threads = [threading.Thread(target=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG * 2)


def _call_noting_lock_wait(
    admin: sa.Engine, session: Session, waiting: threading.Event, call: Callable[[], _T]
) -> _T:
    """``call()`` in ``session``; ``waiting`` is set once its backend waits for a lock (or
    the call is over), so the transaction that holds the lock can be let go on."""
    pid, done = _backend_pid(session), threading.Event()

    def watch() -> None:
        for _ in range(int(HANG / 0.01)):
            if done.is_set() or _waits_for_lock(admin, pid):
                break
            time.sleep(0.01)
        waiting.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        return call()
    finally:
        done.set()


def _hold_then_race(
    engine: sa.Engine,
    admin: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
    pause_after: tuple[Any, str],
    first: Callable[[Session], object],
    second: Callable[[Session], object],
    *,
    refusals: tuple[type[BaseException], ...] = (),
) -> dict[str, object]:
    """``first`` in one transaction, paused once ``pause_after`` (an object and the name of a
    call ``first`` makes) has run, until ``second`` in another waits for a lock or is done.
    Returns each side's result under "first" and "second" (a refusal in ``refusals`` counts
    as its result); any other error, a deadlock included, fails the test."""
    holder, name = pause_after
    real = getattr(holder, name)
    paused, second_waits = threading.Event(), threading.Event()

    def pausing(*args: object, **kwargs: object) -> object:
        answer = real(*args, **kwargs)
        paused.set()
        assert second_waits.wait(HANG)
        return answer

    monkeypatch.setattr(holder, name, pausing)
    results: dict[str, object] = {}
    errors: list[BaseException] = []

    def run_first() -> None:
        try:
            with session_scope(engine) as s:
                results["first"] = first(s)
        except refusals as refused:
            results["first"] = refused
        except BaseException as exc:
            errors.append(exc)

    def run_second() -> None:
        try:
            assert paused.wait(HANG)
            with session_scope(engine) as s:
                results["second"] = _call_noting_lock_wait(
                    admin, s, second_waits, lambda: second(s)
                )
        except refusals as refused:
            results["second"] = refused
        except BaseException as exc:
            errors.append(exc)
        finally:
            second_waits.set()

    _run_together(run_first, run_second)
    assert [f"{type(e).__name__}: {str(e).splitlines()[0]}" for e in errors] == []
    return results


def _one_customer(engine: sa.Engine, keyring: KeyRing, clock: FrozenClock) -> tuple[int, int]:
    with session_scope(engine) as s:
        mid = merchants.create_merchant(s, MerchantCreate(name="Acme"), clock).id or 0
        c = contacts.create_contact(
            s, mid, ContactCreate(email="ada@example.com", time_zone="UTC"), keyring, clock
        )
        consent.grant(
            s, mid, c.id or 0, "service_followup", "email", actor="c", clock=clock, keyring=keyring
        )
    return mid, c.id or 0


def _surveyed_customer(
    engine: sa.Engine, keyring: KeyRing, clock: FrozenClock
) -> tuple[int, int, str]:
    """:func:`_one_customer` whose survey was sent: (merchant, contact, the link's token)."""
    from tests.crm.helpers import sent_followup

    mid, cid = _one_customer(engine, keyring, clock)
    with session_scope(engine) as s:
        contact = s.get(Contact, cid)
        assert contact is not None
        _, token = sent_followup(s, mid, contact, clock, keyring)
    return mid, cid, token


@pytest.mark.postgres
def test_indexer_and_worker_scheduling_at_once_survey_a_contact_once(
    pg_committed: sa.Engine, pg_admin: sa.Engine, keyring: KeyRing
) -> None:
    """The indexer schedules a payment follow-up while a worker schedules the periodic one
    (30 days after the first purchase) for the same contact: both stand, and the periodic one
    waits at send time for the cap after the other (suppressed at scheduling, it was lost for
    good when the payment survey then never went out)."""
    clock = FrozenClock(START)
    mid, cid = _one_customer(pg_committed, keyring, clock)
    with session_scope(pg_committed) as s:
        for trigger in ("payment_settled", "periodic"):
            followups_policies.create_policy(
                s,
                mid,
                FollowUpPolicyCreate(trigger=trigger, delay_minutes=0),
                actor="a",
                clock=clock,
            )
        followups_repo.insert_purchases(  # recorded before the policies existed
            s,
            [
                {
                    "merchant_id": mid,
                    "contact_id": cid,
                    "payment_ref": "p_old",
                    "invoice_ref": "i_old",
                    "amount_minor": 1,
                    "currency": "USDC",
                    "settled_at": START - timedelta(days=31),
                }
            ],
        )

    def indexer(s: Session) -> object:
        return followups.schedule_for_payment(
            s, mid, cid, "p_new", "i_new", 5, "USDC", START, clock
        )

    def worker(s: Session) -> object:
        return followups.schedule_periodic(s, mid, clock)

    _race(pg_committed, pg_admin, indexer, worker)
    with session_scope(pg_committed) as s:
        rows = s.exec(select(FollowUp).order_by(FollowUp.kind)).all()  # type: ignore[arg-type]
        got = [(f.kind, f.state, f.reason) for f in rows]
    assert got == [
        ("payment_settled", "scheduled", None),
        ("periodic", "scheduled", None),
    ]


@pytest.mark.postgres
def test_two_workers_preparing_one_contacts_surveys_at_once_send_one(
    pg_committed: sa.Engine, pg_admin: sa.Engine, keyring: KeyRing
) -> None:
    """Two surveys of one contact are due (scheduled while the cap was 0); two workers
    prepare one each at the same moment."""
    clock = FrozenClock(START)
    mid, cid = _one_customer(pg_committed, keyring, clock)
    with session_scope(pg_committed) as s:
        rule = followups_policies.create_policy(
            s,
            mid,
            FollowUpPolicyCreate(delay_minutes=0, frequency_cap_days=0),
            actor="a",
            clock=clock,
        )
        for n in (1, 2):
            followups.schedule_for_payment(s, mid, cid, f"p{n}", f"i{n}", 5, "USDC", START, clock)
        followups_policies.update_policy(
            s,
            mid,
            rule.id or 0,
            FollowUpPolicyUpdate(frequency_cap_days=30),
            actor="a",
            clock=clock,
        )
    claimed = {}
    for worker in ("w1", "w2"):
        with session_scope(pg_committed) as s:
            [claimed[worker]] = followups_dispatch.claim_due(s, START, 1, worker)

    def prepare(worker: str) -> Callable[[Session], object]:
        def run(s: Session) -> object:
            send = followups_dispatch.prepare_send(
                s, claimed[worker], START, keyring, worker_id=worker
            )
            return None if send is None else send.address

        return run

    first, second = _race(pg_committed, pg_admin, prepare("w1"), prepare("w2"))
    assert (first, second) == ("ada@example.com", None)
    with session_scope(pg_committed) as s:
        held = s.get(FollowUp, claimed["w2"])
        assert held is not None
        assert (held.state, held.reason) == ("suppressed", "frequency_cap")


@pytest.mark.postgres
def test_an_update_racing_an_erasure_waits_and_sees_it(
    pg_committed: sa.Engine, pg_admin: sa.Engine, keyring: KeyRing
) -> None:
    """Both lock the contact row first: the update waits for the erasure's commit and is
    refused, instead of writing fresh personal data onto the erased contact."""
    clock = FrozenClock(START)
    mid, cid = _one_customer(pg_committed, keyring, clock)

    def erase(s: Session) -> object:
        return privacy.erase_contact(s, mid, cid, actor="a", clock=clock)

    def update(s: Session) -> object:
        try:
            change = ContactUpdate(name="Ada L.", email="ada.l@example.com")
            return contacts.update_contact(s, mid, cid, change, keyring, clock, actor="a")
        except ContactErased as refused:
            return refused

    _, second = _race(pg_committed, pg_admin, erase, update)
    assert isinstance(second, ContactErased)
    with session_scope(pg_committed) as s:
        erased = s.exec(select(Contact).where(Contact.id == cid)).one()
        assert (erased.name_enc, erased.email_enc, erased.email_index) == (None, None, None)


@pytest.mark.postgres
def test_two_creations_of_one_policy_at_once_refuse_the_second_as_a_duplicate(
    pg_committed: sa.Engine, pg_admin: sa.Engine, keyring: KeyRing
) -> None:
    """The second waits on the unique index and is refused like a sequential duplicate (it
    was an IntegrityError: a 500), leaving its transaction usable."""
    clock = FrozenClock(START)
    mid, _ = _one_customer(pg_committed, keyring, clock)

    def create(s: Session) -> object:
        try:
            return followups_policies.create_policy(
                s, mid, FollowUpPolicyCreate(), actor="a", clock=clock
            ).id
        except DuplicatePolicy as refused:
            s.exec(select(FollowUpPolicy.id)).all()  # the transaction still works
            return refused

    first, second = _race(pg_committed, pg_admin, create, create)
    assert isinstance(first, int)
    assert isinstance(second, DuplicatePolicy)
    with session_scope(pg_committed) as s:
        assert s.exec(select(FollowUpPolicy.id)).all() == [first]


@pytest.mark.postgres
def test_the_sla_sweep_does_not_breach_a_ticket_answered_on_time_meanwhile(
    pg_committed: sa.Engine, keyring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READ COMMITTED: the worker's sweep lists overdue unanswered tickets, an agent's on-time
    answer commits, then the sweep's claim (``breached_at IS NULL`` only) still recorded a
    breach on the answered ticket (and the worker sent ``ticket.breached``): a hit counted as
    a miss too."""
    from crm.feedback import service as feedback
    from crm.feedback.models import FeedbackCreate
    from crm.tickets import repository as tickets_repo
    from crm.tickets import service as tickets
    from crm.tickets.models import Ticket

    from .helpers import sent_followup

    clock = FrozenClock(START)
    with session_scope(pg_committed) as s:
        m = merchants.create_merchant(s, MerchantCreate(name="Acme"), clock)
        c = contacts.create_contact(
            s, m.id or 0, ContactCreate(email="a@example.com", time_zone="UTC"), keyring, clock
        )
        _, token = sent_followup(s, m.id or 0, c, clock, keyring)
        out = feedback.submit_feedback(
            s, m.id or 0, token, FeedbackCreate(rating=1), keyring=keyring, clock=clock
        )
        merchant_id, ticket_id = m.id or 0, out.ticket_id or 0
    due = START + tickets.FIRST_RESPONSE_SLA
    listed = tickets_repo.unbreached_overdue_ids

    def listed_then_answered(session: Session, now: object) -> object:
        ids = listed(session, now)  # type: ignore[arg-type]
        assert ticket_id in ids
        with session_scope(pg_committed) as agent:  # answers at the deadline: on time
            tickets.respond(agent, merchant_id, ticket_id, actor="agent", clock=FrozenClock(due))
        return ids

    monkeypatch.setattr(tickets_repo, "unbreached_overdue_ids", listed_then_answered)
    with session_scope(pg_committed) as worker:
        breached = tickets.sweep_breaches(worker, due + timedelta(seconds=1))
    with Session(pg_committed) as s:
        ticket = s.get(Ticket, ticket_id)
        assert ticket is not None
        assert (breached, ticket.first_response_at, ticket.breached_at) == ([], due, None)


@pytest.mark.postgres
def test_an_answer_racing_an_erasure_neither_deadlocks_nor_outlives_it(
    pg_committed: sa.Engine, pg_admin: sa.Engine, keyring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer took its feedback row's lock and then the contact's; erasure takes the
    contact's and then the answers'. Between the answer's two locks an erasure started:
    PostgreSQL found the deadlock and aborted one of them (the erasure, a 500). Now both take
    the contact first: the erasure goes through, and the answer is refused as erased."""
    from crm.feedback import service as feedback
    from crm.feedback.models import FeedbackCreate

    clock = FrozenClock(START)
    mid, cid, token = _surveyed_customer(pg_committed, keyring, clock)
    results = _hold_then_race(
        pg_committed,
        pg_admin,
        monkeypatch,
        (feedback, "check_not_reversed"),  # between the answer's first read and its locks
        lambda s: feedback.submit_feedback(
            s, mid, token, FeedbackCreate(rating=1), keyring=keyring, clock=clock
        ),
        lambda s: privacy.erase_contact(s, mid, cid, actor="dpo", clock=clock),
        refusals=(ContactErased,),
    )
    assert isinstance(results["first"], ContactErased)
    assert "second" in results


@pytest.mark.postgres
def test_an_answer_racing_a_failed_send_of_its_survey_does_not_deadlock(
    pg_committed: sa.Engine, pg_admin: sa.Engine, keyring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link works while the worker sends the survey (the token is the same on every
    attempt). An answer locked its feedback row and then the follow-up; a worker recording a
    sure failure of the send locks the follow-up and then revokes the feedback row's token.
    PostgreSQL aborted one of them (the worker's whole batch, or the customer's answer with
    a 500). Now the answer takes the follow-up first: the worker waits, then finds the survey
    answered and leaves it."""
    from crm.errors import InvalidTransition
    from crm.feedback import service as feedback
    from crm.feedback.models import FeedbackCreate

    clock = FrozenClock(START)
    mid, cid = _one_customer(pg_committed, keyring, clock)
    with session_scope(pg_committed) as s:
        followups_policies.create_policy(
            s,
            mid,
            FollowUpPolicyCreate(delay_minutes=0, frequency_cap_days=0),
            actor="admin",
            clock=clock,
        )
        [fu] = followups.schedule_for_payment(
            s, mid, cid, "p1", "inv-p1", 1000, "USDC", clock.now(), clock
        )
        fid = fu.id or 0
        assert fid in followups_dispatch.claim_due(s, clock.now(), 10, "w")
        send = followups_dispatch.prepare_send(s, fid, clock.now(), keyring, worker_id="w")
        assert send is not None
    results = _hold_then_race(
        pg_committed,
        pg_admin,
        monkeypatch,
        (feedback.repo, "claim_submission"),  # the answer now holds its rows
        lambda s: feedback.submit_feedback(
            s, mid, send.token, FeedbackCreate(rating=2), keyring=keyring, clock=clock
        ),
        lambda s: followups_dispatch.mark_failed(
            s, fid, clock.now(), error="smtp 451", worker_id="w"
        ),
        refusals=(InvalidTransition,),  # the survey was answered meanwhile
    )
    assert not isinstance(results["first"], InvalidTransition)
    assert isinstance(results["second"], InvalidTransition)
    with session_scope(pg_committed) as s:
        answered = s.get(FollowUp, fid)
        assert answered is not None
        assert answered.state == "responded"
