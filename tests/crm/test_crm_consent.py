from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session, select

from crm.clock import FrozenClock
from crm.consent import chain
from crm.consent import service as consent
from crm.consent.models import ConsentEvent, ConsentState
from crm.enums import Channel, Purpose
from crm.errors import ContactNotFound, InvalidChoice, InvalidRequest

from .conftest import MakeContact, count

ACTIONS = st.sampled_from(["grant", "withdraw", "object"])
PURPOSES = st.sampled_from([p.value for p in Purpose])
CHANNELS = st.sampled_from([c.value for c in Channel])


def _step() -> st.SearchStrategy[tuple[str, str, str | None]]:
    return st.tuples(PURPOSES, CHANNELS, ACTIONS).map(
        lambda t: (t[0], t[1] if t[2] == "grant" else (None if t[2] == "object" else t[1]), t[2])
    )


class TestRecord:
    def test_grant_then_may_contact(
        self, session: Session, make_contact: MakeContact, merchant_id: int, clock: FrozenClock
    ) -> None:
        c = make_contact()
        assert c.id is not None
        assert not consent.may_contact(session, c.id, "service_followup", "email")
        consent.grant(
            session, merchant_id, c.id, "service_followup", "email", actor="contact:1", clock=clock
        )
        assert consent.may_contact(session, c.id, "service_followup", "email")
        assert not consent.may_contact(session, c.id, "service_followup", "sms")
        assert not consent.may_contact(session, c.id, "marketing", "email")

    def test_withdraw_one_call_all_channels(
        self, session: Session, make_contact: MakeContact, merchant_id: int, clock: FrozenClock
    ) -> None:
        c = make_contact()
        assert c.id is not None
        for ch in ("email", "sms", "phone"):
            consent.grant(session, merchant_id, c.id, "marketing", ch, actor="contact", clock=clock)
        consent.withdraw(session, merchant_id, c.id, "marketing", actor="contact", clock=clock)
        assert not any(consent.may_contact(session, c.id, "marketing", ch) for ch in Channel)

    def test_objection_blocks_marketing_everywhere_only(
        self, session: Session, make_contact: MakeContact, merchant_id: int, clock: FrozenClock
    ) -> None:
        c = make_contact()
        assert c.id is not None
        consent.grant(session, merchant_id, c.id, "marketing", "email", actor="c", clock=clock)
        consent.grant(
            session, merchant_id, c.id, "service_followup", "email", actor="c", clock=clock
        )
        consent.object_to(session, merchant_id, c.id, actor="c", clock=clock)
        assert not any(consent.may_contact(session, c.id, "marketing", ch) for ch in Channel)
        assert consent.may_contact(session, c.id, "service_followup", "email")
        states = {(s.purpose, s.channel): s.state for s in session.exec(select(ConsentState)).all()}
        assert states[("marketing", "webhook")] == "objected"

    @pytest.mark.parametrize(
        ("kwargs", "code"),
        [
            ({"purpose": "spam", "channel": "email", "action": "grant"}, "invalid_purpose"),
            ({"purpose": "marketing", "channel": "pigeon", "action": "grant"}, "invalid_channel"),
            ({"purpose": "marketing", "channel": "email", "action": "maybe"}, "invalid_action"),
            ({"purpose": "marketing", "channel": None, "action": "grant"}, "invalid_channel"),
            (
                {
                    "purpose": "marketing",
                    "channel": "email",
                    "action": "grant",
                    "legal_basis": "vibes",
                },
                "invalid_legal_basis",
            ),
        ],
    )
    def test_bad_input_nothing_written(
        self,
        session: Session,
        make_contact: MakeContact,
        merchant_id: int,
        clock: FrozenClock,
        kwargs: dict[str, object],
        code: str,
    ) -> None:
        c = make_contact()
        assert c.id is not None
        before = (count(session, ConsentEvent), count(session, ConsentState))
        with pytest.raises(InvalidRequest) as info:
            consent.record(session, merchant_id, c.id, actor="c", clock=clock, **kwargs)  # type: ignore[arg-type]
        assert info.value.code == code
        assert (count(session, ConsentEvent), count(session, ConsentState)) == before

    def test_unknown_choice_is_invalid_choice(self) -> None:
        from crm.enums import parse_choice

        with pytest.raises(InvalidChoice):
            parse_choice(Purpose, "nope", "purpose")

    def test_other_merchants_contact(
        self, session: Session, make_contact: MakeContact, merchant_id: int, clock: FrozenClock
    ) -> None:
        c = make_contact()
        assert c.id is not None
        with pytest.raises(ContactNotFound):
            consent.grant(
                session, merchant_id + 1, c.id, "marketing", "email", actor="c", clock=clock
            )
        assert count(session, ConsentEvent) == 0


class TestVerifyChain:
    def test_chain_links_and_detects_tampering(
        self, session: Session, make_contact: MakeContact, merchant_id: int, clock: FrozenClock
    ) -> None:
        c = make_contact()
        assert c.id is not None
        for _ in range(3):
            consent.grant(session, merchant_id, c.id, "marketing", "email", actor="c", clock=clock)
            clock.advance(minutes=1)
            consent.withdraw(
                session, merchant_id, c.id, "marketing", "email", actor="c", clock=clock
            )
        events = consent.history(session, c.id)
        assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
        assert events[0].prev_hash == chain.GENESIS
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
        assert consent.verify_chain(session, c.id).ok
        # rewrite history behind the service's back: the withdrawal at seq 4 becomes a grant
        session.execute(
            sa.update(ConsentEvent)
            .where(ConsentEvent.contact_id == c.id, ConsentEvent.seq == 4)
            .values(action="grant")
        )
        session.expire_all()
        report = consent.verify_chain(session, c.id)
        assert not report.ok
        assert report.broken_at_seq == 4

    def test_deleting_an_entry_is_detected(
        self, session: Session, make_contact: MakeContact, merchant_id: int, clock: FrozenClock
    ) -> None:
        c = make_contact()
        assert c.id is not None
        for ch in ("email", "sms", "phone"):
            consent.grant(session, merchant_id, c.id, "marketing", ch, actor="c", clock=clock)
        session.execute(sa.delete(ConsentState))
        session.execute(
            sa.delete(ConsentEvent).where(ConsentEvent.contact_id == c.id, ConsentEvent.seq == 2)
        )
        session.expire_all()
        assert consent.verify_chain(session, c.id).broken_at_seq == 3


class TestFoldProperty:
    @settings(database=None)
    @given(steps=st.lists(_step(), max_size=25))
    def test_fold_is_order_sensitive_last_writer_wins(
        self, steps: list[tuple[str, str | None, str]]
    ) -> None:
        state = chain.fold({"purpose": p, "channel": c, "action": a} for p, c, a in steps)
        for (purpose, channel), status in state.items():
            last = [a for p, c, a in steps if p == purpose and (c is None or c == channel)][-1]
            assert (
                status == {"grant": "granted", "withdraw": "withdrawn", "object": "objected"}[last]
            )

    @settings(
        max_examples=15,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(steps=st.lists(_step(), min_size=1, max_size=12))
    def test_projection_equals_fold_of_ledger(
        self,
        session: Session,
        make_contact: MakeContact,
        merchant_id: int,
        clock: FrozenClock,
        steps: list[tuple[str, str | None, str]],
    ) -> None:
        nested = session.begin_nested()
        try:
            c = make_contact()
            assert c.id is not None
            for purpose, channel, action in steps:
                consent.record(
                    session,
                    merchant_id,
                    c.id,
                    purpose=purpose,
                    channel=channel,
                    action=action,
                    actor="prop",
                    clock=clock,
                )
                clock.advance(timedelta(seconds=1))
            projection = {
                (s.purpose, s.channel): s.state
                for s in session.exec(
                    select(ConsentState).where(ConsentState.contact_id == c.id)
                ).all()
            }
            assert projection == chain.fold(consent.history(session, c.id))
            assert consent.verify_chain(session, c.id).ok
        finally:
            nested.rollback()
