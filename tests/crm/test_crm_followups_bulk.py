"""schedule_for_payments (bulk, prefetched facts) decides exactly what the one-at-a-time path
(``_create``: a stored follow-up, facts queried as the rule asks) decides, payment by payment."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session, SQLModel

from crm import KeyRing, MerchantCreate, merchants
from crm.clock import FrozenClock
from crm.consent import service as consent
from crm.contacts import service as contacts
from crm.contacts.models import Contact, ContactCreate
from crm.db import make_engine
from crm.enums import Trigger
from crm.errors import ContactNotFound, InvalidRequest
from crm.followups import policies as followups_policies
from crm.followups import repository as repo
from crm.followups import service as followups
from crm.followups.models import FollowUp, FollowUpEvent, FollowUpPolicyCreate, Purchase
from crm.models import TABLES

from .conftest import START

KEYRING = KeyRing(b"b" * 32)
ZONES = ["Europe/London", "Asia/Shanghai", "America/Los_Angeles", "Pacific/Kiritimati"]
CHANNELS = ["email", "sms", "phone"]


@dataclass(frozen=True)
class Person:
    email: bool
    phone: bool
    vip: bool
    personalised: bool
    erased: bool
    zone: str
    granted: frozenset[str]
    history: str  # "none" | "pending" | "sent" | "in_flight" | "uncertain" (see _PRIOR)
    sent_days_ago: int


@dataclass(frozen=True)
class Scenario:
    cap_days: int
    delay_minutes: int
    window: tuple[int, int]
    channel_order: tuple[str, ...]
    vip_rule: bool
    people: tuple[Person, ...]
    payments: tuple[tuple[int, int, int], ...]  # (person, ref number, minutes after START)


people = st.builds(
    Person,
    email=st.booleans(),
    phone=st.booleans(),
    vip=st.booleans(),
    personalised=st.booleans(),
    erased=st.sampled_from([False, False, False, True]),
    zone=st.sampled_from(ZONES),
    granted=st.frozensets(st.sampled_from(CHANNELS)),
    history=st.sampled_from(["none", "pending", "sent", "in_flight", "uncertain"]),
    sent_days_ago=st.integers(min_value=1, max_value=60),
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    crowd = draw(st.lists(people, min_size=1, max_size=4))
    payments = draw(
        st.lists(
            st.tuples(
                st.integers(min_value=0, max_value=len(crowd) - 1),
                st.integers(min_value=0, max_value=9),  # small range: repeated refs happen
                st.integers(min_value=0, max_value=24 * 60),
            ),
            min_size=1,
            max_size=10,
        )
    )
    return Scenario(
        cap_days=draw(st.sampled_from([0, 30])),
        delay_minutes=draw(st.sampled_from([0, 90, 24 * 60])),
        window=draw(st.sampled_from([(8 * 60, 21 * 60), (0, 24 * 60), (10 * 60, 11 * 60)])),
        channel_order=tuple(
            draw(st.lists(st.sampled_from(CHANNELS), min_size=1, max_size=3, unique=True))
        ),
        vip_rule=draw(st.booleans()),
        people=tuple(crowd),
        payments=tuple(payments),
    )


#: a prior follow-up per history: (state, reason, sent, attempted)
_PRIOR = {
    "pending": ("scheduled", None, False, False),
    "sent": ("sent", None, True, True),
    "in_flight": ("queued", None, False, True),  # prepared, not yet marked sent
    "uncertain": ("failed", "delivery_uncertain", False, True),
}


def _world(s: Scenario) -> tuple[Session, int, list[int], FrozenClock]:
    engine = make_engine("sqlite://")
    SQLModel.metadata.create_all(engine, tables=TABLES)
    session = Session(engine, expire_on_commit=False)
    clock = FrozenClock(START)
    mid = merchants.create_merchant(session, MerchantCreate(name="M"), clock).id or 0
    rules = [{"field": "tier", "equals": "vip", "channels": ["phone"]}] if s.vip_rule else []
    policy = followups_policies.create_policy(
        session,
        mid,
        FollowUpPolicyCreate(
            delay_minutes=s.delay_minutes,
            frequency_cap_days=s.cap_days,
            window_start_minute=s.window[0],
            window_end_minute=s.window[1],
            channel_order=list(s.channel_order),
            segment_rules=rules,
        ),
        actor="t",
        clock=clock,
    )
    ids = []
    for n, p in enumerate(s.people):
        data: dict[str, Any] = {"time_zone": p.zone, "personalised": p.personalised}
        if p.email:
            data["email"] = f"p{n}@example.com"
        if p.phone:
            data["phone"] = "+447911123456"
        if p.vip:
            data["tier"] = "vip"
        contact = contacts.create_contact(session, mid, ContactCreate(**data), KEYRING, clock)
        cid = contact.id or 0
        ids.append(cid)
        for channel in sorted(p.granted):
            consent.grant(
                session,
                mid,
                cid,
                "service_followup",
                channel,
                actor="c",
                clock=clock,
                keyring=KEYRING,
            )
        if p.history != "none":
            at = START - timedelta(days=p.sent_days_ago)
            state, reason, sent, attempted = _PRIOR[p.history]
            session.add(
                FollowUp(
                    merchant_id=mid,
                    contact_id=cid,
                    policy_id=policy.id,
                    kind="payment_settled",
                    purpose="service_followup",
                    payment_ref=f"prior-{n}",
                    invoice_ref=f"inv-prior-{n}",
                    channel="email",
                    channels=["email"],
                    state=state,
                    reason=reason,
                    due_at=at,
                    expires_at=at + timedelta(days=60),
                    sent_at=at if sent else None,
                    attempted_at=at if attempted else None,
                    created_at=at,
                    updated_at=at,
                )
            )
        if p.erased:
            contact.erased_at = START - timedelta(days=1)
            session.add(contact)
    session.flush()
    return session, mid, ids, clock


def _payments(s: Scenario, ids: list[int]) -> list[followups.SettledPayment]:
    return [
        followups.SettledPayment(
            contact_id=ids[person],
            payment_ref=f"pay_{ref}",
            invoice_ref=f"inv_{ref}",
            amount_minor=1000 + ref,
            currency="usdc",
            settled_at=START + timedelta(minutes=minutes),
        )
        for person, ref, minutes in s.payments
    ]


def _snapshot(session: Session) -> dict[str, Any]:
    session.flush()
    followup_rows = session.execute(
        sa.select(FollowUp).where(~FollowUp.payment_ref.startswith("prior-"))  # type: ignore[attr-defined]
    ).scalars()
    out: dict[str, Any] = {}
    for fu in followup_rows:
        events = session.execute(
            sa.select(FollowUpEvent).where(FollowUpEvent.followup_id == fu.id)
        ).scalars()
        out[fu.payment_ref] = (
            fu.contact_id,
            fu.kind,
            fu.state,
            fu.reason,
            fu.channel,
            list(fu.channels),
            fu.due_at,
            fu.expires_at,
            [(e.from_state, e.to_state, e.reason, e.detail, e.at) for e in events],
        )
    purchases = session.execute(sa.select(Purchase)).scalars()
    out["purchases"] = sorted(
        (p.payment_ref, p.contact_id, p.amount_minor, p.currency, p.settled_at) for p in purchases
    )
    return out


def _one_at_a_time(session: Session, mid: int, p: followups.SettledPayment, clock: Any) -> None:
    """The reference: what scheduling did before the bulk path existed, one payment at a time."""
    contact = contacts.get_contact(session, mid, p.contact_id)
    if repo.get_purchase(session, mid, p.payment_ref) is not None:
        return
    repo.add_purchase(
        session,
        Purchase(
            merchant_id=mid,
            contact_id=p.contact_id,
            payment_ref=p.payment_ref,
            invoice_ref=p.invoice_ref,
            amount_minor=p.amount_minor,
            currency=p.currency.upper(),
            settled_at=p.settled_at,
        ),
    )
    policy = repo.get_policy(session, mid, "payment_settled")
    assert policy is not None
    followups._create(
        session,
        contact,
        policy,
        kind=Trigger.PAYMENT_SETTLED,
        payment_ref=p.payment_ref,
        invoice_ref=p.invoice_ref,
        due_at=p.settled_at + timedelta(minutes=policy.delay_minutes),
        now=clock.now(),
    )


class TestBulkEqualsOneAtATime:
    @settings(
        max_examples=120,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(scenario=scenarios())
    def test_same_followups_events_and_purchases(self, scenario: Scenario) -> None:
        one, mid, ids, clock = _world(scenario)
        for p in _payments(scenario, ids):
            _one_at_a_time(one, mid, p, clock)
        bulk, mid2, ids2, clock2 = _world(scenario)
        outcome = followups.schedule_for_payments(bulk, mid2, _payments(scenario, ids2), clock2)
        assert _snapshot(bulk) == _snapshot(one)
        refs = {f"pay_{ref}" for _, ref, _ in scenario.payments}
        assert set(outcome.created) == refs
        assert outcome.existing == []
        # a second call records nothing new: idempotent per payment_ref
        again = followups.schedule_for_payments(bulk, mid2, _payments(scenario, ids2), clock2)
        assert again.created == {}
        assert set(again.existing) == refs


class TestBulkEdges:
    def test_unknown_contact_is_reported_and_nothing_recorded(
        self, session: Session, merchant_id: int, make_contact: Any, clock: FrozenClock
    ) -> None:
        other = merchants.create_merchant(session, MerchantCreate(name="Other"), clock)
        stranger: Contact = make_contact(merchant=other.id)
        followups_policies.create_policy(
            session, merchant_id, FollowUpPolicyCreate(delay_minutes=0), actor="t", clock=clock
        )
        payment = followups.SettledPayment(
            stranger.id or 0, "pay_x", "inv_x", 10, "USDC", clock.now()
        )
        outcome = followups.schedule_for_payments(session, merchant_id, [payment], clock)
        assert outcome.missing_contact == ["pay_x"]
        assert outcome.created == {}
        assert session.execute(sa.select(sa.func.count()).select_from(Purchase)).scalar() == 0
        with pytest.raises(ContactNotFound):
            followups.schedule_for_payment(
                session, merchant_id, stranger.id or 0, "pay_x", "inv_x", 10, "USDC", START, clock
            )

    def test_bad_input_is_refused_before_anything_is_written(
        self, session: Session, merchant_id: int, make_contact: Any, clock: FrozenClock
    ) -> None:
        contact: Contact = make_contact()
        good = followups.SettledPayment(contact.id or 0, "pay_1", "inv_1", 10, "USDC", START)
        bad = followups.SettledPayment(contact.id or 0, "pay_2", "inv_2", -5, "USDC", START)
        with pytest.raises(InvalidRequest) as refused:
            followups.schedule_for_payments(session, merchant_id, [good, bad], clock)
        assert refused.value.param == "amount_minor"
        assert session.execute(sa.select(sa.func.count()).select_from(Purchase)).scalar() == 0

    def test_many_payments_on_both_databases(
        self,
        session: Session,
        merchant_id: int,
        make_contact: Any,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        """The bulk SQL (IN lists, executemany ... RETURNING in order) on SQLite and PostgreSQL."""
        followups_policies.create_policy(
            session,
            merchant_id,
            FollowUpPolicyCreate(delay_minutes=0, frequency_cap_days=30),
            actor="t",
            clock=clock,
        )
        people = [make_contact() for _ in range(3)]
        for c in people[:2]:
            consent.grant(
                session,
                merchant_id,
                c.id or 0,
                "service_followup",
                "email",
                actor="c",
                clock=clock,
                keyring=keyring,
            )
        payments = [
            followups.SettledPayment(
                people[n % 3].id or 0, f"pay_{n}", f"inv_{n}", n, "USDC", START
            )
            for n in range(1200)  # more than one IN-list chunk
        ]
        outcome = followups.schedule_for_payments(session, merchant_id, payments, clock)
        assert len(outcome.created) == 1200
        states = dict(
            session.execute(
                sa.select(FollowUp.payment_ref, FollowUp.state).where(
                    FollowUp.payment_ref.in_(["pay_0", "pay_1", "pay_2", "pay_3"])  # type: ignore[attr-defined]
                )
            ).all()
        )
        # first payment of each consenting contact scheduled, its next ones capped; no consent
        assert states == {
            "pay_0": "scheduled",
            "pay_1": "scheduled",
            "pay_2": "suppressed",
            "pay_3": "suppressed",
        }
        ids = [i for refs in outcome.created.values() for i in refs]
        assert len(set(ids)) == 1200
        by_ref = dict(session.execute(sa.select(FollowUp.payment_ref, FollowUp.id)).all())
        assert all(outcome.created[ref] == [by_ref[ref]] for ref in outcome.created)


class TestExecuteMany:
    def test_same_rows_as_session_execute(
        self, session: Session, merchant_id: int, make_contact: Any, clock: FrozenClock
    ) -> None:
        """crm.db.execute_many converts values exactly as SQLAlchemy's executemany does."""
        from crm.db import execute_many

        contact: Contact = make_contact()
        table = Purchase.__table__  # type: ignore[attr-defined]
        at = START + timedelta(minutes=3, microseconds=123_456)

        def rows(prefix: str) -> list[dict[str, Any]]:
            return [
                {
                    "merchant_id": merchant_id,
                    "contact_id": contact.id,
                    "payment_ref": f"{prefix}{n}",
                    "invoice_ref": f"inv{n}",
                    "amount_minor": 2**40 + n,
                    "currency": "USDC",
                    "settled_at": at,
                    "cancelled_at": None if n % 2 else at,
                }
                for n in range(3)
            ]

        execute_many(session, sa.insert(table), rows("fast"))
        session.execute(sa.insert(table), rows("core"))
        loaded = {
            p.payment_ref: (p.amount_minor, p.settled_at, p.cancelled_at)
            for p in session.execute(sa.select(Purchase)).scalars()
        }
        for n in range(3):
            assert loaded[f"fast{n}"] == loaded[f"core{n}"]
        assert loaded["fast0"] == (2**40, at, at)
        assert loaded["fast1"][2] is None
        execute_many(session, sa.insert(table), [])  # nothing to do: no statement at all
