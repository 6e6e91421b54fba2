"""The frequency cap counts every survey that may have reached the contact: sent, in flight
(prepared, not yet marked sent), or ended ``delivery_uncertain``/``interrupted``; not one whose
delivery failed for sure. Concurrent deciders: tests/crm/test_crm_concurrency.py."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session

from crm import KeyRing
from crm.clock import FrozenClock
from crm.contacts.models import Contact
from crm.followups import dispatch as followups_dispatch
from crm.followups import policies as followups_policies
from crm.followups import service as followups
from crm.followups.models import FollowUp, FollowUpPolicyUpdate

from .conftest import MakeContact
from .test_crm_followups import consented, pay, policy


def _prepared(
    session: Session, contact: Contact, clock: FrozenClock, keyring: KeyRing, ref: str
) -> FollowUp:
    """A survey claimed by ``w`` and prepared: its message may be on its way."""
    [fu] = pay(session, contact.merchant_id, contact, ref, clock)
    assert fu.state == "scheduled", fu.reason
    assert followups_dispatch.claim_due(session, clock.now(), 10, "w") == [fu.id]
    assert followups_dispatch.prepare_send(session, fu.id or 0, clock.now(), keyring, worker_id="w")
    return fu


def _next_survey(session: Session, contact: Contact, clock: FrozenClock, ref: str) -> FollowUp:
    [fu] = pay(session, contact.merchant_id, contact, ref, clock)
    return fu


class TestInFlight:
    def test_a_prepared_survey_caps_another_one_prepared_for_the_same_contact(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        """Two surveys were scheduled for one contact (the cap was 0 then); the first is
        prepared and not yet marked sent when the second is prepared."""
        rule = policy(session, merchant_id, clock, delay_minutes=0, frequency_cap_days=0)
        c = consented(session, make_contact, merchant_id, clock)
        [first] = pay(session, merchant_id, c, "p1", clock)
        [second] = pay(session, merchant_id, c, "p2", clock)
        followups_policies.update_policy(
            session,
            merchant_id,
            rule.id or 0,
            FollowUpPolicyUpdate(frequency_cap_days=30),
            actor="admin",
            clock=clock,
        )
        assert followups_dispatch.claim_due(session, clock.now(), 10, "w") == [first.id, second.id]
        assert followups_dispatch.prepare_send(
            session, first.id or 0, clock.now(), keyring, worker_id="w"
        )
        held = followups_dispatch.prepare_send(
            session, second.id or 0, clock.now(), keyring, worker_id="w"
        )
        assert held is None
        session.refresh(second)
        assert (second.state, second.reason) == ("suppressed", "frequency_cap")


class TestMaybeDelivered:
    def test_an_uncertain_delivery_caps_the_next_survey(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        policy(session, merchant_id, clock, delay_minutes=0)
        c = consented(session, make_contact, merchant_id, clock)
        fu = _prepared(session, c, clock, keyring, "p1")
        failed = followups_dispatch.mark_failed(
            session, fu.id or 0, clock.now(), error="lost during DATA", worker_id="w", retry=False
        )
        assert (failed.state, failed.reason, failed.sent_at) == (
            "failed",
            "delivery_uncertain",
            None,
        )
        clock.advance(days=2)
        capped = _next_survey(session, c, clock, "p2")
        assert (capped.state, capped.reason) == ("suppressed", "frequency_cap")
        clock.advance(days=29)  # 31 days after the attempt
        assert _next_survey(session, c, clock, "p3").state == "scheduled"

    def test_an_interrupted_delivery_caps_the_next_survey(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        """The worker died after preparing: recovered as ``interrupted``, never resent."""
        policy(session, merchant_id, clock, delay_minutes=0)
        c = consented(session, make_contact, merchant_id, clock)
        fu = _prepared(session, c, clock, keyring, "p1")
        clock.advance(minutes=10)
        recovered = followups_dispatch.recover_stale(session, clock.now(), timedelta(minutes=5))
        assert recovered["interrupted"] == [fu.id]
        clock.advance(days=2)
        capped = _next_survey(session, c, clock, "p2")
        assert (capped.state, capped.reason) == ("suppressed", "frequency_cap")

    def test_the_bulk_path_counts_them_too(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        policy(session, merchant_id, clock, delay_minutes=0)
        uncertain = consented(session, make_contact, merchant_id, clock)
        fresh = consented(session, make_contact, merchant_id, clock)
        fu = _prepared(session, uncertain, clock, keyring, "p1")
        followups_dispatch.mark_failed(session, fu.id or 0, clock.now(), worker_id="w", retry=False)
        clock.advance(days=2)
        outcome = followups.schedule_for_payments(
            session,
            merchant_id,
            [
                followups.SettledPayment(c.id or 0, ref, f"inv-{ref}", 1, "USDC", clock.now())
                for c, ref in ((uncertain, "p2"), (fresh, "p3"))
            ],
            clock,
        )
        states = {
            ref: (f.state, f.reason)
            for ref, [fid] in outcome.created.items()
            if (f := session.get(FollowUp, fid)) is not None
        }
        assert states == {"p2": ("suppressed", "frequency_cap"), "p3": ("scheduled", None)}


class TestFailedForSure:
    def test_a_delivery_that_failed_for_sure_does_not_cap_the_next_survey(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        """Every attempt was refused (nothing delivered): the customer got no survey."""
        policy(session, merchant_id, clock, delay_minutes=0, expiry_days=28)
        c = consented(session, make_contact, merchant_id, clock)
        fu = _prepared(session, c, clock, keyring, "p1")
        while True:
            done = followups_dispatch.mark_failed(session, fu.id or 0, clock.now(), worker_id="w")
            if done.state == "failed":
                break
            clock.set(done.due_at)
            assert followups_dispatch.claim_due(session, clock.now(), 10, "w") == [fu.id]
            assert followups_dispatch.prepare_send(
                session, fu.id or 0, clock.now(), keyring, worker_id="w"
            )
        clock.advance(days=2)
        assert _next_survey(session, c, clock, "p2").state == "scheduled"
