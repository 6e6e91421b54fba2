from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from crm import KeyRing
from crm.audit.models import AuditLog
from crm.clock import FrozenClock
from crm.enums import TicketState
from crm.errors import InvalidRequest, InvalidTransition, TicketNotFound
from crm.feedback import service as feedback
from crm.feedback.models import FeedbackCreate
from crm.metrics import repository as metrics_repo
from crm.privacy import service as privacy
from crm.tickets import repository as tickets_repo
from crm.tickets import service as tickets
from crm.tickets.models import Ticket, TicketEvent

from .conftest import MakeContact
from .helpers import sent_followup


def open_ticket(
    session: Session,
    merchant_id: int,
    make_contact: MakeContact,
    clock: FrozenClock,
    keyring: KeyRing,
    ref: str = "p1",
) -> Ticket:
    _, token = sent_followup(session, merchant_id, make_contact(), clock, keyring, ref=ref)
    out = feedback.submit_feedback(
        session,
        merchant_id,
        token,
        FeedbackCreate(rating=1, tags=["late-delivery"]),
        keyring=keyring,
        clock=clock,
    )
    ticket = session.get(Ticket, out.ticket_id)
    assert ticket is not None
    return ticket


def kinds(session: Session, t: Ticket) -> list[str]:
    return [
        e.kind
        for e in session.exec(
            select(TicketEvent).where(TicketEvent.ticket_id == t.id).order_by(TicketEvent.id)
        )
    ]  # type: ignore[arg-type]


class TestLifecycle:
    def test_open_assign_respond_resolve_audited(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        t = open_ticket(session, merchant_id, make_contact, clock, keyring)
        assert t.root_cause_tags == ["late-delivery"]
        tid = t.id or 0
        tickets.assign(session, merchant_id, tid, "support:bob", actor="support:lead", clock=clock)
        clock.advance(hours=2)
        tickets.tag_root_causes(
            session,
            merchant_id,
            tid,
            ["Packaging", "late-delivery"],
            actor="support:bob",
            clock=clock,
        )
        tickets.respond(session, merchant_id, tid, actor="support:bob", clock=clock)
        done = tickets.resolve(session, merchant_id, tid, actor="support:bob", clock=clock)
        assert done.state == "resolved"
        assert done.first_response_at == clock.now()
        assert done.breached_at is None
        assert done.root_cause_tags == ["packaging", "late-delivery"]
        assert kinds(session, t) == ["opened", "assigned", "tagged", "responded", "resolved"]
        actions = [
            a.action
            for a in session.exec(
                select(AuditLog).where(AuditLog.object_type == "ticket").order_by(AuditLog.id)
            )
        ]  # type: ignore[arg-type]
        assert actions == [
            "ticket.assigned",
            "ticket.tagged",
            "ticket.responded",
            "ticket.resolved",
        ]

    def test_resolve_requires_response(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        t = open_ticket(session, merchant_id, make_contact, clock, keyring)
        with pytest.raises(InvalidTransition):
            tickets.resolve(session, merchant_id, t.id or 0, actor="s", clock=clock)
        session.refresh(t)
        assert t.state == "open"

    def test_other_merchant_cannot_see(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        t = open_ticket(session, merchant_id, make_contact, clock, keyring)
        with pytest.raises(TicketNotFound):
            tickets.assign(session, merchant_id + 1, t.id or 0, "x", actor="x", clock=clock)

    def test_bad_tags(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        t = open_ticket(session, merchant_id, make_contact, clock, keyring)
        with pytest.raises(InvalidRequest):
            tickets.tag_root_causes(
                session, merchant_id, t.id or 0, ["DROP TABLE;"], actor="s", clock=clock
            )


def _sla(session: Session, merchant_id: int, opened: datetime, now: datetime) -> tuple[int, int]:
    """(hits, misses) at ``now`` for tickets opened around ``opened``."""
    return metrics_repo.sla_counts(
        session, merchant_id, opened - timedelta(days=1), opened + timedelta(days=2), now
    )


class TestSweepBreaches:
    def test_each_breach_recorded_exactly_once(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        a = open_ticket(session, merchant_id, make_contact, clock, keyring, "a")
        clock.advance(hours=1)
        b = open_ticket(session, merchant_id, make_contact, clock, keyring, "b")
        tickets.respond(session, merchant_id, b.id or 0, actor="s", clock=clock)
        past_a = clock.now() + timedelta(hours=23, seconds=1)  # a's deadline passed, not b's
        assert len(tickets.sweep_breaches(session, past_a)) == 1
        assert tickets.sweep_breaches(session, clock.now() + timedelta(hours=48)) == []
        session.refresh(a)
        session.refresh(b)
        assert a.breached_at is not None
        assert b.breached_at is None
        assert kinds(session, a).count("sla_breached") == 1

    def test_late_first_response_records_breach_once(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        t = open_ticket(session, merchant_id, make_contact, clock, keyring)
        clock.advance(hours=25)
        tickets.sweep_breaches(session, clock.now())
        tickets.respond(session, merchant_id, t.id or 0, actor="s", clock=clock)
        assert kinds(session, t).count("sla_breached") == 1

    def test_a_response_at_the_deadline_is_on_time_for_the_sweep_too(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        """The sweep breached a ticket at exactly ``due_at`` while a response then was on time:
        the metrics counted it as a hit and a miss."""
        t = open_ticket(session, merchant_id, make_contact, clock, keyring)
        opened = clock.now()
        clock.advance(hours=24)
        assert clock.now() == t.due_at
        assert tickets.sweep_breaches(session, clock.now()) == []
        tickets.respond(session, merchant_id, t.id or 0, actor="s", clock=clock)
        session.refresh(t)
        assert t.breached_at is None
        assert _sla(session, merchant_id, opened, clock.now()) == (1, 0)

    def test_an_overdue_unanswered_ticket_is_a_miss_before_the_sweep_runs(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        """Only the worker's sweep recorded the breach: with no worker running, a ticket 30
        hours past due counted as neither, and the hit rate looked perfect."""
        open_ticket(session, merchant_id, make_contact, clock, keyring, "late")
        opened = clock.now()
        assert _sla(session, merchant_id, opened, clock.now()) == (0, 0)  # still within 24 h
        clock.advance(hours=30)
        assert _sla(session, merchant_id, opened, clock.now()) == (0, 1)
        tickets.sweep_breaches(session, clock.now())
        assert _sla(session, merchant_id, opened, clock.now()) == (0, 1)  # counted once

    def test_erasing_the_contact_of_an_overdue_ticket_still_counts_a_miss(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        """Erasure closes the contact's tickets; one past its deadline that the sweep had not
        reached yet was closed with no breach, and counted as neither a hit nor a miss."""
        overdue = open_ticket(session, merchant_id, make_contact, clock, keyring, "late")
        opened = clock.now()
        clock.advance(hours=30)
        privacy.erase_contact(session, merchant_id, overdue.contact_id, actor="dpo", clock=clock)
        session.refresh(overdue)
        assert overdue.state == TicketState.RESOLVED
        assert overdue.breached_at == clock.now()
        assert kinds(session, overdue).count("sla_breached") == 1
        assert tickets.sweep_breaches(session, clock.now()) == []
        assert _sla(session, merchant_id, opened, clock.now()) == (0, 1)

    def test_erasing_the_contact_of_a_ticket_within_its_clock_counts_neither(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        t = open_ticket(session, merchant_id, make_contact, clock, keyring, "early")
        opened = clock.now()
        clock.advance(hours=2)
        privacy.erase_contact(session, merchant_id, t.contact_id, actor="dpo", clock=clock)
        session.refresh(t)
        assert (t.state, t.breached_at) == (TicketState.RESOLVED, None)
        assert _sla(session, merchant_id, opened, clock.now()) == (0, 0)


class TestListQueue:
    def test_open_tickets_by_due_time_paginated(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        made = []
        for i in range(5):
            made.append(open_ticket(session, merchant_id, make_contact, clock, keyring, f"p{i}"))
            clock.advance(minutes=10)
        tickets.respond(session, merchant_id, made[1].id or 0, actor="s", clock=clock)
        page = tickets.list_queue(session, merchant_id, limit=2)
        assert [t.id for t in page] == [made[0].id, made[2].id]
        cursor = (page[-1].due_at, page[-1].id or 0)
        rest = tickets.list_queue(session, merchant_id, limit=50, starting_after=cursor)
        assert [t.id for t in rest] == [made[3].id, made[4].id]
        assert tickets.list_queue(session, merchant_id + 1) == []
        with pytest.raises(InvalidRequest):
            tickets.list_queue(session, merchant_id, limit=101)

    def test_queue_sql_uses_merchant_state_due_index(self, pg_engine: sa.Engine) -> None:
        compiled = tickets_repo.queue_sql(1, 50).compile(
            pg_engine, compile_kwargs={"literal_binds": True}
        )
        with pg_engine.connect() as conn:
            conn.execute(sa.text("SET enable_seqscan = off"))
            plan = "\n".join(r[0] for r in conn.execute(sa.text(f"EXPLAIN {compiled}")))
            conn.rollback()
        assert "ix_crm_ticket_queue" in plan
