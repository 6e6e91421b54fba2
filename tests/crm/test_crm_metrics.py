from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from sqlmodel import Session

from crm import KeyRing
from crm.clock import FrozenClock
from crm.errors import InvalidRequest
from crm.feedback import service as feedback
from crm.feedback.models import FeedbackCreate
from crm.followups import service as followups
from crm.metrics import service as metrics
from crm.metrics.service import percent
from crm.tickets import service as tickets

from .conftest import START, MakeContact
from .helpers import sent_followup


class TestPercent:
    @pytest.mark.parametrize(
        ("num", "den", "expected"),
        [
            (0, 0, None),
            (1, 3, Decimal("33.3")),
            (2, 3, Decimal("66.7")),
            (1, 8, Decimal("12.5")),
            (3, 3, Decimal("100.0")),
            (0, 5, Decimal("0.0")),
        ],
    )
    def test_rounding_and_none(self, num: int, den: int, expected: Decimal | None) -> None:
        assert percent(num, den) == expected


class TestCompute:
    def test_empty_period_gives_none_not_zero(self, session: Session, merchant_id: int) -> None:
        m = metrics.compute(session, merchant_id, START, START + timedelta(days=1), now=START)
        assert (m.csat, m.nps, m.response_rate, m.sla_hit_rate) == (None, None, None, None)
        assert m.top_root_causes == []
        assert m.suppressions == {}

    def test_bad_period(self, session: Session, merchant_id: int) -> None:
        with pytest.raises(InvalidRequest):
            metrics.compute(session, merchant_id, START, START, now=START)

    def test_maybe_delivered_messages_count_as_sent_answered_or_not(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        """Four messages recorded as maybe delivered, one answered: 1 of 4, not 1 of 1 (left
        out of the count, they entered the rate only when answered)."""
        tokens = []
        for i in range(4):
            fu, token = sent_followup(
                session, merchant_id, make_contact(), clock, keyring, ref=f"u{i}"
            )
            fu.state, fu.reason, fu.sent_at, fu.attempted_at = (
                "failed", "delivery_uncertain", None, clock.now(),
            )  # fmt: skip
            session.add(fu)
            tokens.append(token)
        session.flush()
        period = (START - timedelta(days=1), START + timedelta(days=2))
        before = metrics.compute(session, merchant_id, *period, now=clock.now())
        assert (before.sent, before.responded) == (4, 0)
        feedback.submit_feedback(
            session, merchant_id, tokens[0], FeedbackCreate(rating=5), keyring=keyring,
            clock=clock,
        )  # fmt: skip
        after = metrics.compute(session, merchant_id, *period, now=clock.now())
        assert (after.sent, after.responded, after.response_rate) == (4, 1, Decimal("25.0"))

    def test_full_scenario(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        answers = [  # (rating, nps, tags)
            (5, 10, []),
            (4, 9, []),
            (3, 7, []),
            (2, 6, ["late"]),
            (1, 0, ["late", "broken"]),
            (None, 8, []),
        ]
        ticket_ids = []
        for i, (rating, nps, tags) in enumerate(answers):
            _, token = sent_followup(
                session, merchant_id, make_contact(), clock, keyring, ref=f"p{i}"
            )
            out = feedback.submit_feedback(
                session,
                merchant_id,
                token,
                FeedbackCreate(rating=rating, nps=nps, tags=tags),
                keyring=keyring,
                clock=clock,
            )
            if out.ticket_id:
                ticket_ids.append(out.ticket_id)
        # two more sent, never answered
        for i in range(2):
            sent_followup(session, merchant_id, make_contact(), clock, keyring, ref=f"q{i}")
        # one suppression (no consent)
        c = make_contact()
        followups.schedule_for_payment(
            session, merchant_id, c.id or 0, "nc", "inv", 1, "USDC", clock.now(), clock
        )
        # ticket 1 answered in time, ticket 2 breached
        clock.advance(hours=1)
        tickets.respond(session, merchant_id, ticket_ids[0], actor="s", clock=clock)
        tickets.sweep_breaches(session, clock.now() + timedelta(hours=30))
        m = metrics.compute(session, merchant_id, START, START + timedelta(days=2), now=clock.now())
        assert m.rating_responses == 5
        assert m.csat == Decimal("40.0")  # 2 of 5
        assert m.nps_responses == 6
        assert m.nps == Decimal("0.0")  # 2 promoters, 2 detractors of 6
        assert (m.sent, m.responded) == (8, 6)
        assert m.response_rate == Decimal("75.0")
        assert m.sla_hit_rate == Decimal("50.0")
        assert m.top_root_causes == [("late", 2), ("broken", 1)]
        assert m.suppressions == {"no_consent": 1}
        # period boundaries are half-open and per merchant
        later = metrics.compute(
            session, merchant_id, START + timedelta(days=2), START + timedelta(days=3),
            now=clock.now(),
        )  # fmt: skip
        assert later.csat is None
        other = metrics.compute(
            session, merchant_id + 1, START, START + timedelta(days=2), now=clock.now()
        )
        assert other.sent == 0
