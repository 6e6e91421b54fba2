"""Erasure racing the writes a contact's answers and tickets get, on PostgreSQL.

Erasure locks the contact first and its answers and tickets last. A write that locked one of
those rows first and then wrote it deadlocked with it: writing a row this transaction already
wrote (the no-op UPDATE that is the lock) re-checks the row's foreign keys, which takes a
key-share lock on the contact the erasure holds. PostgreSQL then aborted one side with a 500
(the customer's edit, the agent's action, or the erasure itself).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from crm import KeyRing
from crm.clock import FrozenClock
from crm.db import session_scope
from crm.errors import FeedbackPaymentReversed
from crm.feedback import service as feedback
from crm.feedback.models import FeedbackCreate, FeedbackUpdate
from crm.followups import policies as followups_policies
from crm.followups import service as followups
from crm.followups.models import FollowUp, FollowUpPolicyCreate
from crm.privacy import service as privacy
from crm.tickets import service as tickets

from .conftest import START
from .test_crm_concurrency import (
    HANG,
    _backend_pid,
    _hold_then_race,
    _one_customer,
    _race,
    _surveyed_customer,
    _waits_for_lock,
)

pytestmark = pytest.mark.postgres

LATER = FrozenClock(START + timedelta(hours=1))


def _answered(engine: sa.Engine, keyring: KeyRing, rating: int) -> tuple[int, int, Any]:
    """A customer who answered a survey with ``rating``: (merchant, contact, the answer)."""
    clock = FrozenClock(START)
    mid, cid, token = _surveyed_customer(engine, keyring, clock)
    with session_scope(engine) as s:
        answer = feedback.submit_feedback(
            s, mid, token, FeedbackCreate(rating=rating), keyring=keyring, clock=clock
        )
    return mid, cid, answer


@pytest.mark.parametrize("transition", ["resolve", "respond", "assign"])
def test_a_ticket_transition_racing_an_erasure_does_not_deadlock(
    pg_committed: sa.Engine,
    pg_admin: sa.Engine,
    keyring: KeyRing,
    monkeypatch: pytest.MonkeyPatch,
    transition: str,
) -> None:
    mid, cid, answer = _answered(pg_committed, keyring, rating=1)
    tid = answer.ticket_id or 0
    if transition == "resolve":
        with session_scope(pg_committed) as s:
            tickets.respond(s, mid, tid, actor="agent", clock=LATER)

    def act(s: Session) -> object:
        if transition == "assign":
            return tickets.assign(s, mid, tid, "bob", actor="agent", clock=LATER)
        return getattr(tickets, transition)(s, mid, tid, actor="agent", clock=LATER)

    results = _hold_then_race(
        pg_committed,
        pg_admin,
        monkeypatch,
        (tickets.repo, "get"),
        act,
        lambda s: privacy.erase_contact(s, mid, cid, actor="dpo", clock=LATER),
    )
    assert set(results) == {"first", "second"}


def test_an_edit_racing_an_erasure_does_not_deadlock(
    pg_committed: sa.Engine, pg_admin: sa.Engine, keyring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit locked its answer first. Now it holds the contact (and the follow-up) by the
    time it locks the answer: the erasure, paused here, waits for the edit."""
    mid, cid, answer = _answered(pg_committed, keyring, rating=5)
    results = _hold_then_race(
        pg_committed,
        pg_admin,
        monkeypatch,
        (feedback.repo, "get_for_edit"),
        lambda s: feedback.edit_feedback(
            s, mid, answer.id, FeedbackUpdate(rating=4), actor="c", keyring=keyring, clock=LATER
        ),
        lambda s: privacy.erase_contact(s, mid, cid, actor="dpo", clock=LATER),
    )
    assert set(results) == {"first", "second"}


def test_an_edit_racing_a_reorg_of_its_sale_is_refused_or_goes_first(
    pg_committed: sa.Engine, pg_admin: sa.Engine, keyring: KeyRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reversal check was a plain read before any lock: a reorg that committed right after
    it let the edit (here one turning the answer negative, opening a ticket) through on a
    reversed sale. Made under the follow-up's lock, the check holds: a reorg that starts then
    waits for the edit, which therefore comes first."""
    mid, _, answer = _answered(pg_committed, keyring, rating=5)
    real_check = feedback.check_not_reversed
    reorg: dict[str, object] = {}

    def check_then_reorg(session: Session, merchant_id: int, followup_id: int) -> None:
        real_check(session, merchant_id, followup_id)  # the sale still holds

        def cancel() -> None:
            with session_scope(pg_committed) as indexer:
                reorg["pid"] = _backend_pid(indexer)
                followups.cancel_for_payment(indexer, mid, "p1", "reorg", LATER)
            reorg["committed"] = True

        thread = threading.Thread(target=cancel)
        thread.start()
        for _ in range(int(HANG / 0.01)):  # the reorg commits, or waits for the edit's lock
            pid = reorg.get("pid")
            if not thread.is_alive() or (pid and _waits_for_lock(pg_admin, int(pid))):
                break
            time.sleep(0.01)
        reorg["before_the_edit"] = not thread.is_alive()
        reorg["thread"] = thread

    monkeypatch.setattr(feedback, "check_not_reversed", check_then_reorg)
    try:
        with session_scope(pg_committed) as s:
            feedback.edit_feedback(
                s, mid, answer.id, FeedbackUpdate(rating=1), actor="c", keyring=keyring, clock=LATER
            )
        edited = True
    except FeedbackPaymentReversed:
        edited = False
    thread = reorg["thread"]
    assert isinstance(thread, threading.Thread)
    thread.join(HANG)
    assert reorg.get("committed") is True
    # an edit that went through came before the reorg, never after it
    assert not (edited and reorg["before_the_edit"])


@pytest.mark.parametrize("cap", [0, 30])
def test_scheduling_racing_an_erasure_leaves_no_pending_followup(
    pg_committed: sa.Engine, pg_admin: sa.Engine, keyring: KeyRing, cap: int
) -> None:
    """Scheduling read the contact's traits before anything waited, then waited for the
    erasure's contact lock (the purchase's foreign key) and decided on the stale traits: a
    ``scheduled`` follow-up for an erased contact, which erasure promises leaves none (the
    worker would have suppressed it at send time). It decides under the lock now."""
    clock = FrozenClock(START)
    mid, cid = _one_customer(pg_committed, keyring, clock)
    with session_scope(pg_committed) as s:
        followups_policies.create_policy(
            s,
            mid,
            FollowUpPolicyCreate(delay_minutes=0, frequency_cap_days=cap),
            actor="owner",
            clock=clock,
        )
    _race(
        pg_committed,
        pg_admin,
        lambda s: privacy.erase_contact(s, mid, cid, actor="dpo", clock=clock),
        lambda s: followups.schedule_for_payment(s, mid, cid, "p1", "i1", 5, "USDC", START, clock),
    )
    with session_scope(pg_committed) as s:
        rows = s.exec(select(FollowUp).where(FollowUp.contact_id == cid)).all()
        assert [(f.state, f.reason) for f in rows] == [("suppressed", "erased")]
