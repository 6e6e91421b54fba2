from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlmodel import Session, select

from crm import KeyRing
from crm.clock import FrozenClock
from crm.consent import service as consent
from crm.contacts import service as contacts
from crm.contacts.models import Contact, ContactUpdate
from crm.errors import (
    CRMError,
    DuplicatePolicy,
    InvalidChoice,
    InvalidPolicy,
    InvalidRequest,
    InvalidTransition,
)
from crm.feedback import service as feedback
from crm.feedback.models import Feedback, FeedbackCreate
from crm.feedback.tokens import hash_token
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
    Purchase,
)
from crm.privacy import service as privacy
from crm.rewards.models import RewardEntry

from .conftest import START, MakeContact, count
from .helpers import KEYRING


def policy(session: Session, merchant_id: int, clock: FrozenClock, **kw: Any) -> FollowUpPolicy:
    return followups_policies.create_policy(
        session, merchant_id, FollowUpPolicyCreate(**kw), actor="admin:root", clock=clock
    )


def consented(
    session: Session,
    make_contact: MakeContact,
    merchant_id: int,
    clock: FrozenClock,
    channels: tuple[str, ...] = ("email",),
    purpose: str = "service_followup",
    **kw: Any,
) -> Contact:
    c = make_contact(**kw)
    assert c.id is not None
    for ch in channels:
        consent.grant(
            session,
            merchant_id,
            c.id,
            purpose,
            ch,
            actor=f"contact:{c.id}",
            clock=clock,
            keyring=KEYRING,
        )
    return c


def pay(
    session: Session,
    merchant_id: int,
    contact: Contact,
    ref: str,
    clock: FrozenClock,
    settled_at: datetime | None = None,
) -> list[FollowUp]:
    assert contact.id is not None
    return followups.schedule_for_payment(
        session,
        merchant_id,
        contact.id,
        ref,
        f"inv-{ref}",
        12_345,
        "usdc",
        settled_at or clock.now(),
        clock,
    )


def events(session: Session, fu: FollowUp) -> list[tuple[str | None, str, str | None]]:
    rows = session.exec(
        select(FollowUpEvent).where(FollowUpEvent.followup_id == fu.id).order_by(FollowUpEvent.id)  # type: ignore[arg-type]
    ).all()
    return [(e.from_state, e.to_state, e.reason) for e in rows]


class TestCreatePolicy:
    def test_defaults(self, session: Session, merchant_id: int, clock: FrozenClock) -> None:
        p = policy(session, merchant_id, clock)
        assert p.frequency_cap_days == 30
        assert (p.window_start_minute, p.window_end_minute) == (480, 1260)
        assert p.expiry_days == 28
        assert p.channel_order == ["email"]

    @pytest.mark.parametrize(
        ("kw", "exc", "code"),
        [
            ({"channel_order": []}, InvalidPolicy, "policy_missing_default"),
            ({"channel_order": ["fax"]}, InvalidChoice, "invalid_channel"),
            (
                {"segment_rules": [{"field": "tier", "equals": "vip"}]},
                InvalidPolicy,
                "invalid_segment_rule",
            ),
            (
                {"segment_rules": [{"field": "income", "equals": "x", "channels": ["phone"]}]},
                InvalidPolicy,
                "invalid_segment_rule",
            ),
            *(
                (
                    {"segment_rules": [{"field": "tier", "equals": "vip", "channels": channels}]},
                    InvalidPolicy,
                    "invalid_segment_rule",
                )  # each once a 500: iterated (or not iterable) as if a list of names
                for channels in (5, True, 1.5, {"email": 1}, "email", [1], ["email", None])
            ),
            (
                {"window_start_minute": 1300, "window_end_minute": 600},
                InvalidPolicy,
                "invalid_send_window",
            ),
            ({"trigger": "whenever"}, InvalidChoice, "invalid_trigger"),
            ({"purpose": "spam"}, InvalidChoice, "invalid_purpose"),
            ({"frequency_cap_days": -1}, InvalidPolicy, "invalid_frequency_cap_days"),
        ],
    )
    def test_invalid_policy_nothing_written(
        self,
        session: Session,
        merchant_id: int,
        clock: FrozenClock,
        kw: dict[str, Any],
        exc: type[Exception],
        code: str,
    ) -> None:
        with pytest.raises(exc) as info:
            policy(session, merchant_id, clock, **kw)
        assert info.value.code == code
        assert count(session, FollowUpPolicy) == 0

    def test_one_policy_per_trigger(
        self, session: Session, merchant_id: int, clock: FrozenClock
    ) -> None:
        policy(session, merchant_id, clock)
        with pytest.raises(DuplicatePolicy):
            policy(session, merchant_id, clock)
        assert count(session, FollowUpPolicy) == 1


class TestScheduleForPayment:
    def test_schedules_after_delay_on_consented_channel(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        policy(session, merchant_id, clock, delay_minutes=24 * 60)
        c = consented(session, make_contact, merchant_id, clock)
        [fu] = pay(session, merchant_id, c, "pay-1", clock)
        assert fu.state == "scheduled"
        assert fu.channel == "email"
        assert fu.due_at == START + timedelta(days=1)
        assert fu.expires_at == START + timedelta(days=29)
        assert events(session, fu) == [(None, "scheduled", None)]
        purchase = session.exec(select(Purchase)).one()
        assert (purchase.amount_minor, purchase.currency) == (12_345, "USDC")

    def test_idempotent(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        policy(session, merchant_id, clock)
        c = consented(session, make_contact, merchant_id, clock)
        first = pay(session, merchant_id, c, "pay-1", clock)
        again = pay(session, merchant_id, c, "pay-1", clock)
        assert [f.id for f in first] == [f.id for f in again]
        assert (count(session, FollowUp), count(session, Purchase)) == (1, 1)

    def test_no_consent_is_suppressed_with_reason(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        policy(session, merchant_id, clock)
        c = make_contact()
        [fu] = pay(session, merchant_id, c, "pay-1", clock)
        assert (fu.state, fu.reason) == ("suppressed", "no_consent")
        assert events(session, fu) == [(None, "suppressed", "no_consent")]

    def test_marketing_consent_does_not_count_for_service(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        policy(session, merchant_id, clock)
        c = consented(session, make_contact, merchant_id, clock, purpose="marketing")
        [fu] = pay(session, merchant_id, c, "pay-1", clock)
        assert fu.reason == "no_consent"

    def test_quiet_hours_defer_in_contacts_time_zone(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        policy(session, merchant_id, clock, delay_minutes=0)
        c = consented(session, make_contact, merchant_id, clock, time_zone="Asia/Shanghai")
        settled = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # 22:00 in Shanghai
        [fu] = pay(session, merchant_id, c, "pay-1", clock, settled_at=settled)
        assert fu.state == "scheduled"
        assert fu.due_at == datetime(2026, 3, 3, 0, 0, tzinfo=UTC)  # 08:00 Shanghai
        assert events(session, fu) == [
            (None, "scheduled", None),
            ("scheduled", "scheduled", "quiet_hours"),
        ]

    def test_same_instant_is_daytime_elsewhere(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        policy(session, merchant_id, clock, delay_minutes=0)
        c = consented(session, make_contact, merchant_id, clock, time_zone="America/New_York")
        settled = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)  # 09:00 in New York
        [fu] = pay(session, merchant_id, c, "pay-1", clock, settled_at=settled)
        assert fu.due_at == settled

    def test_segment_rule_and_its_non_personalised_fallback(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        policy(
            session,
            merchant_id,
            clock,
            channel_order=["email"],
            segment_rules=[{"field": "tier", "equals": "vip", "channels": ["phone"]}],
        )
        vip = consented(session, make_contact, merchant_id, clock, ("email", "phone"), tier="vip")
        opted_out = consented(
            session,
            make_contact,
            merchant_id,
            clock,
            ("email", "phone"),
            tier="vip",
            personalised=False,
        )
        vip_no_phone = consented(session, make_contact, merchant_id, clock, ("email",), tier="vip")
        assert pay(session, merchant_id, vip, "p1", clock)[0].channel == "phone"
        assert pay(session, merchant_id, opted_out, "p2", clock)[0].channel == "email"
        assert pay(session, merchant_id, vip_no_phone, "p3", clock)[0].channel == "email"

    def test_frequency_cap(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        policy(session, merchant_id, clock, delay_minutes=0)
        c = consented(session, make_contact, merchant_id, clock)
        [first] = pay(session, merchant_id, c, "p1", clock)
        [second] = pay(session, merchant_id, c, "p2", clock)  # one is already pending
        assert (second.state, second.reason) == ("suppressed", "frequency_cap")
        assert first.id in followups_dispatch.claim_due(session, clock.now(), 10, "w1")
        assert (
            followups_dispatch.prepare_send(session, first.id or 0, clock.now(), keyring)
            is not None
        )
        followups_dispatch.mark_sent(session, first.id or 0, clock.now())
        clock.advance(days=10)
        [third] = pay(session, merchant_id, c, "p3", clock)
        assert third.reason == "frequency_cap"
        clock.advance(days=21)
        [fourth] = pay(session, merchant_id, c, "p4", clock)
        assert fourth.state == "scheduled"

    @pytest.mark.parametrize(
        ("amount", "ref", "currency", "code"),
        [
            (-1, "p", "USDC", "invalid_request"),
            (1.5, "p", "USDC", "invalid_request"),
            (True, "p", "USDC", "invalid_request"),
            (1, "", "USDC", "invalid_payment_ref"),
            (1, "p", "", "invalid_currency"),
        ],
    )
    def test_bad_input_nothing_written(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        amount: Any,
        ref: str,
        currency: str,
        code: str,
    ) -> None:
        policy(session, merchant_id, clock)
        c = make_contact()
        assert c.id is not None
        with pytest.raises(InvalidRequest) as info:
            followups.schedule_for_payment(
                session, merchant_id, c.id, ref, "inv", amount, currency, clock.now(), clock
            )
        assert info.value.code == code
        assert (count(session, FollowUp), count(session, Purchase)) == (0, 0)

    def test_without_policy_records_purchase_only(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        c = consented(session, make_contact, merchant_id, clock)
        assert pay(session, merchant_id, c, "p1", clock) == []
        assert (count(session, FollowUp), count(session, Purchase)) == (0, 1)


class TestCancelForPayment:
    def test_cancels_only_unsent(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        policy(session, merchant_id, clock, delay_minutes=0, frequency_cap_days=0)
        c = consented(session, make_contact, merchant_id, clock)
        [a] = pay(session, merchant_id, c, "p1", clock)
        [b] = pay(session, merchant_id, c, "p2", clock)
        followups_dispatch.claim_due(session, clock.now(), 10, "w")
        assert followups_dispatch.prepare_send(session, b.id or 0, clock.now(), keyring) is not None
        followups_dispatch.mark_sent(session, b.id or 0, clock.now())
        assert followups.cancel_for_payment(session, merchant_id, "p1", "reorg", clock) == 1
        assert followups.cancel_for_payment(session, merchant_id, "p2", "reorg", clock) == 0
        session.refresh(a)
        session.refresh(b)
        assert (a.state, a.reason, b.state) == ("cancelled", "reorg", "sent")
        purchase = session.exec(select(Purchase).where(Purchase.payment_ref == "p1")).one()
        assert purchase.cancel_reason == "reorg"

    def test_a_message_in_flight_when_its_payment_is_reorged_keeps_working_links(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        """Prepared (its link issued, the message possibly on its way), then the payment
        leaves the chain. The reorg used to cancel it and revoke its token, which is also the
        message's unsubscribe link: the customer got an e-mail whose "stop" link was dead, and
        no new survey when the payment came back. Like withdrawal and erasure, a reorg now
        leaves it to its worker; the link cannot rate until the payment is on chain again."""
        policy(session, merchant_id, clock, delay_minutes=0, frequency_cap_days=0)
        c = consented(session, make_contact, merchant_id, clock)
        [fu] = pay(session, merchant_id, c, "p1", clock)
        followups_dispatch.claim_due(session, clock.now(), 10, "w")
        instruction = followups_dispatch.prepare_send(session, fu.id or 0, clock.now(), keyring)
        assert instruction is not None
        assert followups.cancel_for_payment(session, merchant_id, "p1", "reorg", clock) == 0
        followups_dispatch.mark_sent(session, fu.id or 0, clock.now())  # the message left
        session.refresh(fu)
        assert fu.state == "sent"
        link = session.exec(
            select(Feedback).where(Feedback.token_hash == hash_token(instruction.token))
        ).first()
        assert link is not None  # the unsubscribe / withdraw link still opens
        answer = FeedbackCreate(rating=5)
        with pytest.raises(CRMError):  # rating a sale that is not on chain
            feedback.submit_feedback(
                session, merchant_id, instruction.token, answer, keyring=keyring, clock=clock
            )
        assert count(session, RewardEntry) == 0
        # the payment is mined again (a new payment row, the same invoice): no second
        # survey, and the first one's link rates now
        again = followups.schedule_for_payment(
            session, merchant_id, c.id or 0, "p1-again", "inv-p1", 12_345, "usdc",
            clock.now(), clock,
        )  # fmt: skip
        assert again == []
        assert count(session, FollowUp) == 1
        out = feedback.submit_feedback(
            session, merchant_id, instruction.token, answer, keyring=keyring, clock=clock
        )
        assert out.rating == 5
        assert count(session, RewardEntry) == 1

    def test_a_retry_of_an_attempt_a_reorg_let_finish_is_not_sent(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        """The reorg leaves the attempt in flight to its worker; when that attempt fails for
        sure and is retried, the next claim must not survey the sale that is gone."""
        policy(session, merchant_id, clock, delay_minutes=0, frequency_cap_days=0)
        c = consented(session, make_contact, merchant_id, clock)
        [fu] = pay(session, merchant_id, c, "p1", clock)
        followups_dispatch.claim_due(session, clock.now(), 10, "w")
        assert followups_dispatch.prepare_send(
            session, fu.id or 0, clock.now(), keyring, worker_id="w"
        )
        assert followups.cancel_for_payment(session, merchant_id, "p1", "reorg", clock) == 0
        followups_dispatch.mark_failed(session, fu.id or 0, clock.now(), worker_id="w")  # a 451
        clock.advance(minutes=30)
        assert followups_dispatch.claim_due(session, clock.now(), 10, "w2") == [fu.id]
        again = followups_dispatch.prepare_send(
            session, fu.id or 0, clock.now(), keyring, worker_id="w2"
        )
        assert again is None
        session.refresh(fu)
        assert (fu.state, fu.reason) == ("cancelled", "reorg")


class TestSchedulePeriodic:
    def test_once_per_contact_after_first_purchase(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        policy(session, merchant_id, clock, trigger="periodic", periodic_after_days=30)
        c = consented(session, make_contact, merchant_id, clock)
        other = consented(session, make_contact, merchant_id, clock)
        pay(session, merchant_id, c, "p1", clock)
        clock.advance(days=5)
        pay(session, merchant_id, c, "p2", clock)
        pay(session, merchant_id, other, "p3", clock)
        clock.advance(days=26)  # 31 days after c's first purchase, 26 after other's
        created = followups.schedule_periodic(session, merchant_id, clock)
        assert [(f.contact_id, f.payment_ref, f.kind) for f in created] == [
            (c.id, "p1", "periodic")
        ]
        assert followups.schedule_periodic(session, merchant_id, clock) == []
        clock.advance(days=5)
        assert [f.contact_id for f in followups.schedule_periodic(session, merchant_id, clock)] == [
            other.id
        ]

    def test_a_periodic_one_lost_with_its_sale_is_made_again_from_the_next_purchase(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        """The periodic follow-up hangs on the contact's first purchase, and a reversed sale
        (a reorg, an invalidated invoice) cancels it. The contact's next live purchase became
        the first, but the cancelled row counted as "has one": never surveyed again. One that
        reached the contact before its sale was reversed still counts (once per contact)."""
        policy(session, merchant_id, clock, trigger="periodic", periodic_after_days=30)
        c = consented(session, make_contact, merchant_id, clock)
        pay(session, merchant_id, c, "p1", clock)
        clock.advance(days=5)
        pay(session, merchant_id, c, "p2", clock)
        clock.advance(days=26)
        [periodic] = followups.schedule_periodic(session, merchant_id, clock)
        assert periodic.payment_ref == "p1"
        followups.cancel_for_payment(session, merchant_id, "p1", "invoice_invalidated", clock)
        session.refresh(periodic)
        assert periodic.state == "cancelled"
        clock.advance(days=5)  # p2, now the first live purchase, is 31 days old
        [again] = followups.schedule_periodic(session, merchant_id, clock)
        assert (again.contact_id, again.payment_ref, again.state) == (c.id, "p2", "scheduled")
        assert followups.schedule_periodic(session, merchant_id, clock) == []

        reached = consented(session, make_contact, merchant_id, clock)
        pay(session, merchant_id, reached, "p3", clock)
        pay(session, merchant_id, reached, "p4", clock)
        clock.advance(days=31)
        [sent] = followups.schedule_periodic(session, merchant_id, clock)
        assert sent.payment_ref == "p3"
        sent.state, sent.sent_at = "sent", clock.now()  # delivered, then the sale reversed
        session.add(sent)
        followups.cancel_for_payment(session, merchant_id, "p3", "reorg", clock)
        assert followups.schedule_periodic(session, merchant_id, clock) == []

    def test_a_survey_sent_within_the_cap_defers_the_periodic_one_instead_of_suppressing_it(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        """Defaults: survey a day after the payment, periodic 30 days after it, cap 30 days.
        The periodic one waits for the cap to pass (once per contact: suppressed, it was never
        tried again)."""
        policy(session, merchant_id, clock)
        cap = timedelta(
            days=policy(session, merchant_id, clock, trigger="periodic").frequency_cap_days
        )
        c = consented(session, make_contact, merchant_id, clock)
        [survey] = pay(session, merchant_id, c, "p1", clock)
        clock.advance(survey.due_at - clock.now())
        assert survey.id is not None
        assert followups_dispatch.claim_due(session, clock.now(), 10, "w") == [survey.id]
        assert followups_dispatch.prepare_send(
            session, survey.id, clock.now(), KEYRING, worker_id="w"
        )
        followups_dispatch.mark_sent(session, survey.id, clock.now(), worker_id="w")
        sent_at = clock.now()
        created: list[FollowUp] = []
        for _ in range(60):
            clock.advance(days=1)
            created += followups.schedule_periodic(session, merchant_id, clock)
        [periodic] = created
        assert (periodic.state, periodic.reason) == ("scheduled", None)
        assert periodic.due_at >= sent_at + cap
        clock.advance(periodic.due_at - clock.now())
        assert periodic.id is not None
        assert followups_dispatch.claim_due(session, clock.now(), 10, "w") == [periodic.id]
        sending = followups_dispatch.prepare_send(
            session, periodic.id, clock.now(), KEYRING, worker_id="w"
        )
        assert sending is not None

    @pytest.mark.parametrize("pending_survey", ["cancelled", "sent"])
    def test_a_survey_pending_when_the_periodic_one_is_made_never_loses_it(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        pending_survey: str,
    ) -> None:
        """A payment survey still scheduled when the periodic one was made suppressed the
        periodic one for good (``frequency_cap``); if the pending one then never went out (a
        reorg cancelled it), the contact was never surveyed at all. Now the periodic one
        stands; if the pending one is sent, the periodic one waits for the cap after it."""
        policy(session, merchant_id, clock, delay_minutes=24 * 60)
        periodic_policy = policy(
            session, merchant_id, clock, trigger="periodic", periodic_after_days=30
        )
        cap = timedelta(days=periodic_policy.frequency_cap_days)
        c = consented(session, make_contact, merchant_id, clock)
        followups_repo.insert_purchases(
            session,
            [
                {
                    "merchant_id": merchant_id,
                    "contact_id": c.id,
                    "payment_ref": "p_old",
                    "invoice_ref": "i_old",
                    "amount_minor": 1,
                    "currency": "USDC",
                    "settled_at": clock.now() - timedelta(days=31),
                }
            ],
        )
        [survey] = pay(session, merchant_id, c, "p_new", clock)  # due tomorrow: pending
        [periodic] = followups.schedule_periodic(session, merchant_id, clock)
        assert (periodic.state, periodic.reason) == ("scheduled", None)
        assert periodic.id is not None
        assert survey.id is not None
        if pending_survey == "cancelled":
            followups.cancel_for_payment(session, merchant_id, "p_new", "reorg", clock)
            claimed = followups_dispatch.claim_due(session, clock.now(), 10, "w")
            assert claimed == [periodic.id]
            assert followups_dispatch.prepare_send(
                session, periodic.id, clock.now(), KEYRING, worker_id="w"
            )
            return
        clock.advance(survey.due_at - clock.now())
        claimed = followups_dispatch.claim_due(session, clock.now(), 10, "w")
        assert sorted(claimed) == sorted([survey.id, periodic.id])
        assert followups_dispatch.prepare_send(
            session, survey.id, clock.now(), KEYRING, worker_id="w"
        )
        followups_dispatch.mark_sent(session, survey.id, clock.now(), worker_id="w")
        sent_at = clock.now()
        deferred = followups_dispatch.prepare_send(
            session, periodic.id, clock.now(), KEYRING, worker_id="w"
        )
        assert deferred is None
        session.refresh(periodic)
        assert (periodic.state, periodic.reason) == ("scheduled", None)
        assert periodic.due_at >= sent_at + cap


class TestClaimDue:
    def test_claims_only_due_and_only_once(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        policy(session, merchant_id, clock, delay_minutes=60, frequency_cap_days=0)
        c = consented(session, make_contact, merchant_id, clock)
        fus = [pay(session, merchant_id, c, f"p{i}", clock)[0] for i in range(3)]
        assert followups_dispatch.claim_due(session, clock.now(), 10, "w1") == []
        clock.advance(minutes=60)
        claimed = followups_dispatch.claim_due(session, clock.now(), 2, "w1")
        assert len(claimed) == 2
        rest = followups_dispatch.claim_due(session, clock.now(), 10, "w2")
        assert sorted(claimed + rest) == sorted(f.id for f in fus)
        assert followups_dispatch.claim_due(session, clock.now(), 10, "w3") == []
        fu = session.get(FollowUp, rest[0])
        assert fu is not None
        assert (fu.state, fu.worker_id) == ("queued", "w2")
        assert events(session, fu)[-1] == ("scheduled", "queued", None)


class TestPrepareSend:
    def _queued(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        **kw: Any,
    ) -> tuple[Contact, FollowUp]:
        policy(session, merchant_id, clock, delay_minutes=0, **kw)
        c = consented(session, make_contact, merchant_id, clock, email="ada@example.com")
        [fu] = pay(session, merchant_id, c, "p1", clock)
        assert followups_dispatch.claim_due(session, clock.now(), 10, "w") == [fu.id]
        return c, fu

    def test_returns_address_and_single_use_token(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        _, fu = self._queued(session, merchant_id, make_contact, clock)
        send = followups_dispatch.prepare_send(session, fu.id or 0, clock.now(), keyring)
        assert send is not None
        assert (send.channel, send.address) == ("email", "ada@example.com")
        assert "ada@" not in repr(send)
        assert send.token not in repr(send)
        stored = session.exec(select(Feedback).where(Feedback.followup_id == fu.id)).one()
        assert stored.token_hash == hash_token(send.token)
        assert send.token not in str(stored.model_dump())
        sent = followups_dispatch.mark_sent(session, fu.id or 0, clock.now())
        assert (sent.state, sent.sent_at) == ("sent", clock.now())

    def test_consent_withdrawn_after_scheduling_suppresses(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        c, fu = self._queued(session, merchant_id, make_contact, clock)
        consent.withdraw(
            session,
            merchant_id,
            c.id or 0,
            "service_followup",
            "email",
            actor="contact",
            clock=clock,
            keyring=keyring,
        )
        assert followups_dispatch.prepare_send(session, fu.id or 0, clock.now(), keyring) is None
        session.refresh(fu)
        assert (fu.state, fu.reason) == ("suppressed", "no_consent")
        assert count(session, Feedback) == 0

    def test_a_message_in_flight_is_recorded_as_sent_whatever_happens_meanwhile(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        """Prepared, its message leaving the worker: a withdraw-all and the follow-up's expiry
        leave it to the worker, which records it sent. They used to call it ``suppressed`` /
        ``expired``; the worker's ``mark_sent`` then failed as ``claim_lost``, so the record
        denied a message that went out."""
        c, fu = self._queued(session, merchant_id, make_contact, clock)
        assert followups_dispatch.prepare_send(session, fu.id or 0, clock.now(), keyring)
        consent.withdraw(
            session,
            merchant_id,
            c.id or 0,
            "service_followup",
            None,
            actor="contact",
            clock=clock,
            keyring=keyring,
        )
        later = fu.expires_at + timedelta(minutes=1)
        assert followups.expire_due(session, later) == 0
        session.refresh(fu)
        assert fu.state == "queued"
        sent = followups_dispatch.mark_sent(session, fu.id or 0, later, worker_id="w")
        assert (sent.state, sent.sent_at) == ("sent", later)
        # what was not in flight is still stopped by the withdrawal
        [other] = pay(session, merchant_id, c, "p2", clock)
        assert other.state == "suppressed"

    def test_quiet_hours_at_send_time_defers(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        _, fu = self._queued(session, merchant_id, make_contact, clock)
        late = datetime(2026, 3, 2, 21, 30, tzinfo=UTC)  # 21:30 London
        assert followups_dispatch.prepare_send(session, fu.id or 0, late, keyring) is None
        session.refresh(fu)
        assert fu.state == "scheduled"
        assert fu.due_at == datetime(2026, 3, 3, 8, 0, tzinfo=UTC)
        assert events(session, fu)[-1] == ("queued", "scheduled", "quiet_hours")

    def test_quiet_hours_past_expiry_suppresses(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        _, fu = self._queued(session, merchant_id, make_contact, clock, expiry_days=1)
        late = datetime(2026, 3, 2, 23, 0, tzinfo=UTC)  # next window: 08:00 London, after expiry
        fu.expires_at = datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
        session.add(fu)
        assert followups_dispatch.prepare_send(session, fu.id or 0, late, keyring) is None
        session.refresh(fu)
        assert (fu.state, fu.reason) == ("suppressed", "quiet_hours")

    def test_a_policy_switched_off_sends_nothing_it_scheduled(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        """Deactivating stops new scheduling and what is still waiting (it was sent anyway,
        for up to the expiry's 28 days)."""
        _, fu = self._queued(session, merchant_id, make_contact, clock)
        assert fu.policy_id is not None
        followups_policies.update_policy(
            session,
            merchant_id,
            fu.policy_id,
            FollowUpPolicyUpdate(active=False),
            actor="admin:root",
            clock=clock,
        )
        assert fu.id is not None
        assert followups_dispatch.prepare_send(session, fu.id, clock.now(), KEYRING) is None
        session.refresh(fu)
        assert (fu.state, fu.reason) == ("cancelled", followups_dispatch.POLICY_INACTIVE)
        assert events(session, fu)[-1] == ("queued", "cancelled", "policy_inactive")

    def test_erased_contact_suppressed(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        c, fu = self._queued(session, merchant_id, make_contact, clock)
        privacy.erase_contact(session, merchant_id, c.id or 0, actor="admin", clock=clock)
        session.refresh(fu)
        assert (fu.state, fu.reason) == ("suppressed", "erased")
        with pytest.raises(InvalidTransition):
            followups_dispatch.prepare_send(session, fu.id or 0, clock.now(), keyring)

    def test_opting_out_of_personalisation_after_scheduling_takes_the_default_order(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        policy(
            session,
            merchant_id,
            clock,
            delay_minutes=0,
            channel_order=["email"],
            segment_rules=[{"field": "tier", "equals": "vip", "channels": ["phone"]}],
        )
        c = consented(
            session,
            make_contact,
            merchant_id,
            clock,
            ("email", "phone"),
            tier="vip",
            email="ada@example.com",
        )
        [fu] = pay(session, merchant_id, c, "p1", clock)
        assert fu.channel == "phone"
        contacts.update_contact(
            session,
            merchant_id,
            c.id or 0,
            ContactUpdate(personalised=False),
            keyring,
            clock,
            "contact",
        )
        assert followups_dispatch.claim_due(session, clock.now(), 10, "w") == [fu.id]
        send = followups_dispatch.prepare_send(session, fu.id or 0, clock.now(), keyring)
        assert send is not None
        assert (send.channel, send.address) == ("email", "ada@example.com")
        session.refresh(fu)
        assert fu.channel == "email"

    def test_carries_the_policys_send_window(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        _, fu = self._queued(
            session,
            merchant_id,
            make_contact,
            clock,
            window_start_minute=9 * 60 + 30,
            window_end_minute=17 * 60,
        )
        send = followups_dispatch.prepare_send(session, fu.id or 0, clock.now(), keyring)
        assert send is not None
        assert (send.window_start_minute, send.window_end_minute) == (570, 1020)

    def test_not_queued_is_conflict(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        policy(session, merchant_id, clock)
        c = consented(session, make_contact, merchant_id, clock)
        [fu] = pay(session, merchant_id, c, "p1", clock)
        with pytest.raises(InvalidTransition) as info:
            followups_dispatch.prepare_send(session, fu.id or 0, clock.now(), keyring)
        assert info.value.status_code == 409


class TestMarkFailed:
    def test_backoff_then_give_up(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        policy(session, merchant_id, clock, delay_minutes=0)
        c = consented(session, make_contact, merchant_id, clock)
        [fu] = pay(session, merchant_id, c, "p1", clock)
        delays = []
        for _ in range(followups_dispatch.MAX_ATTEMPTS - 1):
            [fid] = followups_dispatch.claim_due(session, clock.now(), 1, "w")
            fu = followups_dispatch.mark_failed(session, fid, clock.now())
            assert fu.state == "scheduled"
            delays.append(fu.due_at - clock.now())
            clock.set(fu.due_at)
        assert delays == [timedelta(minutes=5 * 2**i) for i in range(4)]
        [fid] = followups_dispatch.claim_due(session, clock.now(), 1, "w")
        fu = followups_dispatch.mark_failed(session, fid, clock.now(), error="smtp_550")
        assert (fu.state, fu.reason) == ("failed", "smtp_550")

    @pytest.mark.parametrize(
        ("channel", "delays", "attempts"),
        [
            ("email", [5, 10, 20, 40], 5),  # SMTP greylisting lifts after minutes
            ("sms", [1, 2, 4, 8, 16, 32], 7),  # a gateway that is down comes back sooner
            ("webhook", [1, 2, 4, 8, 16, 32], 7),
        ],
    )
    def test_each_channel_has_its_own_backoff(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        channel: str,
        delays: list[int],
        attempts: int,
    ) -> None:
        policy(session, merchant_id, clock, delay_minutes=0, channel_order=[channel])
        c = consented(
            session, make_contact, merchant_id, clock, channels=(channel,), phone="+442071838750"
        )
        [fu] = pay(session, merchant_id, c, "p1", clock)
        assert fu.channel == channel
        seen = []
        for _ in range(attempts - 1):
            [fid] = followups_dispatch.claim_due(session, clock.now(), 1, "w")
            fu = followups_dispatch.mark_failed(session, fid, clock.now())
            assert fu.state == "scheduled"
            seen.append(fu.due_at - clock.now())
            clock.set(fu.due_at)
        assert seen == [timedelta(minutes=m) for m in delays]
        assert followups_dispatch.RETRY_POLICIES[channel].attempts == attempts
        [fid] = followups_dispatch.claim_due(session, clock.now(), 1, "w")
        fu = followups_dispatch.mark_failed(session, fid, clock.now(), error="down")
        assert (fu.state, fu.reason, fu.attempts) == ("failed", "down", attempts)

    def test_explicit_retry_at(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        policy(session, merchant_id, clock, delay_minutes=0)
        c = consented(session, make_contact, merchant_id, clock)
        pay(session, merchant_id, c, "p1", clock)
        [fid] = followups_dispatch.claim_due(session, clock.now(), 1, "w")
        fu = followups_dispatch.mark_failed(
            session, fid, clock.now(), clock.now() + timedelta(hours=2)
        )
        assert fu.due_at == clock.now() + timedelta(hours=2)


class TestFrequencyCapZero:
    def test_a_send_stamped_after_the_settlement_does_not_suppress(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        """Indexer and worker run concurrently: the worker may stamp ``sent_at`` after the
        ``settled_at`` the indexer took at the start of its (long) step. Cap 0 is no cap."""
        policy(session, merchant_id, clock, delay_minutes=0, frequency_cap_days=0)
        c = consented(session, make_contact, merchant_id, clock)
        assert len(pay(session, merchant_id, c, "p1", clock)) == 1
        [fid] = followups_dispatch.claim_due(session, clock.now(), 10, "w")
        assert followups_dispatch.prepare_send(session, fid, clock.now(), keyring) is not None
        followups_dispatch.mark_sent(session, fid, clock.now() + timedelta(seconds=2))
        [second] = pay(session, merchant_id, c, "p2", clock)
        assert (second.state, second.reason) == ("scheduled", None)
        assert followups_dispatch.claim_due(session, clock.now(), 10, "w") == [second.id]
        assert (
            followups_dispatch.prepare_send(session, second.id or 0, clock.now(), keyring)
            is not None
        )


class TestRecoverStale:
    """A worker died holding claims: recover them after the lease, never resend."""

    def _claimed(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> list[int]:
        policy(session, merchant_id, clock, delay_minutes=0, frequency_cap_days=0)
        c = consented(session, make_contact, merchant_id, clock)
        for ref in ("p1", "p2", "p3"):
            pay(session, merchant_id, c, ref, clock)
        ids = followups_dispatch.claim_due(session, clock.now(), 10, "dead-worker")
        assert len(ids) == 3
        return ids

    def test_nothing_recovered_within_the_lease(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        self._claimed(session, merchant_id, make_contact, clock)
        clock.advance(minutes=4)
        lease = timedelta(minutes=5)
        assert followups_dispatch.recover_stale(session, clock.now(), lease) == {
            "rescheduled": [],
            "interrupted": [],
        }
        states = session.exec(select(FollowUp.state)).all()
        assert sorted(states) == ["queued"] * 3

    def test_unprepared_claims_are_rescheduled_prepared_ones_fail_as_interrupted(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        claimed, prepared, sent = self._claimed(session, merchant_id, make_contact, clock)
        assert followups_dispatch.prepare_send(session, prepared, clock.now(), keyring) is not None
        assert followups_dispatch.prepare_send(session, sent, clock.now(), keyring) is not None
        followups_dispatch.mark_sent(session, sent, clock.now())
        clock.advance(minutes=6)
        recovered = followups_dispatch.recover_stale(session, clock.now(), timedelta(minutes=5))
        assert recovered == {"rescheduled": [claimed], "interrupted": [prepared]}
        back = session.get(FollowUp, claimed)
        failed = session.get(FollowUp, prepared)
        done = session.get(FollowUp, sent)
        assert back is not None
        assert failed is not None
        assert done is not None
        assert (back.state, back.worker_id, back.reason) == ("scheduled", None, None)
        assert events(session, back)[-1] == ("queued", "scheduled", "interrupted")
        assert (failed.state, failed.reason) == ("failed", "interrupted")
        assert events(session, failed)[-1] == ("queued", "failed", "interrupted")
        assert done.state == "sent"
        # the rescheduled one is claimable again; the interrupted one never comes back
        assert followups_dispatch.claim_due(session, clock.now(), 10, "w2") == [claimed]
        assert followups_dispatch.recover_stale(session, clock.now(), timedelta(minutes=5)) == {
            "rescheduled": [],
            "interrupted": [],
        }

    def test_dead_workers_late_calls_are_refused(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        claimed, prepared, other = self._claimed(session, merchant_id, make_contact, clock)
        assert (
            followups_dispatch.prepare_send(
                session, prepared, clock.now(), keyring, worker_id="dead-worker"
            )
            is not None
        )
        clock.advance(minutes=10)
        followups_dispatch.recover_stale(session, clock.now(), timedelta(minutes=5))
        assert followups_dispatch.claim_due(session, clock.now(), 10, "w2") == [claimed, other]
        with pytest.raises(InvalidTransition) as lost:
            followups_dispatch.prepare_send(
                session, claimed, clock.now(), keyring, worker_id="dead-worker"
            )
        assert lost.value.code == "claim_lost"
        with pytest.raises(InvalidTransition):
            followups_dispatch.mark_sent(session, prepared, clock.now(), worker_id="dead-worker")
        assert followups_dispatch.prepare_send(
            session, claimed, clock.now(), keyring, worker_id="w2"
        )

    def test_prepare_send_renews_the_lease(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        _, prepared, _ = self._claimed(session, merchant_id, make_contact, clock)
        clock.advance(minutes=4)
        followups_dispatch.prepare_send(
            session, prepared, clock.now(), keyring, worker_id="dead-worker"
        )
        clock.advance(minutes=2)  # 6 min after the claim, 2 after the renewal
        recovered = followups_dispatch.recover_stale(session, clock.now(), timedelta(minutes=5))
        assert prepared not in recovered["interrupted"]
        assert len(recovered["rescheduled"]) == 2
        fu = session.get(FollowUp, prepared)
        assert fu is not None
        assert fu.state == "queued"

    def test_negative_lease_is_refused(self, session: Session, clock: FrozenClock) -> None:
        with pytest.raises(InvalidRequest):
            followups_dispatch.recover_stale(session, clock.now(), timedelta(seconds=-1))


class TestExpireDue:
    def test_expires_pending_past_expiry(
        self, session: Session, merchant_id: int, make_contact: MakeContact, clock: FrozenClock
    ) -> None:
        policy(session, merchant_id, clock, delay_minutes=0, frequency_cap_days=0)
        c = consented(session, make_contact, merchant_id, clock)
        [a] = pay(session, merchant_id, c, "p1", clock)
        assert followups.expire_due(session, clock.now() + timedelta(days=27)) == 0
        assert followups.expire_due(session, clock.now() + timedelta(days=28)) == 1
        session.refresh(a)
        assert a.state == "expired"
        assert followups.expire_due(session, clock.now() + timedelta(days=29)) == 0


class TestObjectionStopsPending:
    def test_objection_suppresses_pending_marketing(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        policy(session, merchant_id, clock, purpose="marketing")
        c = consented(session, make_contact, merchant_id, clock, purpose="marketing")
        [fu] = pay(session, merchant_id, c, "p1", clock)
        assert fu.state == "scheduled"
        consent.object_to(
            session,
            merchant_id,
            c.id or 0,
            "marketing",
            actor="contact",
            clock=clock,
            keyring=keyring,
        )
        session.refresh(fu)
        assert (fu.state, fu.reason) == ("suppressed", "no_consent")
