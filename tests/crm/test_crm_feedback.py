from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session, select

from crm import KeyRing
from crm.clock import FrozenClock
from crm.errors import (
    ContactErased,
    FeedbackFrozen,
    FeedbackNotFound,
    FeedbackNotSubmitted,
    FeedbackTokenExpired,
    FeedbackTokenInvalid,
    FeedbackTokenUsed,
    InvalidRating,
    InvalidRequest,
)
from crm.feedback import service as feedback
from crm.feedback.models import Feedback, FeedbackCreate, FeedbackPublic, FeedbackUpdate
from crm.followups.models import FollowUp
from crm.merchants import service as merchants
from crm.merchants.models import MerchantCreate
from crm.privacy import service as privacy
from crm.rewards import service as rewards
from crm.rewards.models import RewardEntry
from crm.tickets.models import Ticket

from .conftest import MakeContact, count
from .helpers import sent_followup


def _counts(session: Session) -> tuple[int, int, int]:
    submitted = len(session.exec(select(Feedback).where(Feedback.submitted_at != None)).all())  # noqa: E711
    return submitted, count(session, Ticket), count(session, RewardEntry)


class TestSubmitFeedback:
    def test_positive_answer_rewards_no_ticket(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        c = make_contact()
        fu, token = sent_followup(session, merchant_id, c, clock, keyring, reward_points=25)
        clock.advance(hours=3)
        out = feedback.submit_feedback(
            session,
            merchant_id,
            token,
            FeedbackCreate(rating=5, nps=10, comment="Lovely tea", tags=["Delivery"]),
            keyring=keyring,
            clock=clock,
        )
        assert (out.rating, out.nps, out.comment, out.tags) == (5, 10, "Lovely tea", ["delivery"])
        assert out.ticket_id is None
        assert out.reward_points == 25
        session.refresh(fu)
        assert (fu.state, fu.responded_at) == ("responded", clock.now())
        row = session.get(Feedback, out.id)
        assert row is not None
        assert row.comment_enc is not None
        assert b"Lovely" not in row.comment_enc
        assert "Lovely" not in repr(out)

    @pytest.mark.parametrize(("rating", "nps"), [(2, None), (None, 6), (5, 3), (1, 10)])
    def test_negative_opens_ticket_with_24h_sla(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
        rating: int | None,
        nps: int | None,
    ) -> None:
        _, token = sent_followup(session, merchant_id, make_contact(), clock, keyring)
        out = feedback.submit_feedback(
            session,
            merchant_id,
            token,
            FeedbackCreate(rating=rating, nps=nps),
            keyring=keyring,
            clock=clock,
        )
        ticket = session.get(Ticket, out.ticket_id)
        assert ticket is not None
        assert ticket.state == "open"
        assert ticket.due_at == clock.now() + timedelta(hours=24)

    @pytest.mark.parametrize(("rating", "nps"), [(3, None), (None, 7), (3, 8)])
    def test_neutral_no_ticket(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
        rating: int | None,
        nps: int | None,
    ) -> None:
        _, token = sent_followup(session, merchant_id, make_contact(), clock, keyring)
        out = feedback.submit_feedback(
            session,
            merchant_id,
            token,
            FeedbackCreate(rating=rating, nps=nps),
            keyring=keyring,
            clock=clock,
        )
        assert out.ticket_id is None
        assert count(session, Ticket) == 0

    def test_reward_independent_of_rating_and_marketing_consent(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        a, b = make_contact(), make_contact()
        _, ta = sent_followup(session, merchant_id, a, clock, keyring, ref="a")
        _, tb = sent_followup(session, merchant_id, b, clock, keyring, ref="b")
        ra = feedback.submit_feedback(
            session, merchant_id, ta, FeedbackCreate(rating=1), keyring=keyring, clock=clock
        )
        rb = feedback.submit_feedback(
            session, merchant_id, tb, FeedbackCreate(rating=5), keyring=keyring, clock=clock
        )
        assert ra.reward_points == rb.reward_points == 10
        assert rewards.balance(session, merchant_id, a.id or 0) == 10

    @pytest.mark.parametrize(
        ("kw", "exc", "code"),
        [
            ({"rating": 0}, InvalidRating, "invalid_rating"),
            ({"rating": 6}, InvalidRating, "invalid_rating"),
            ({"nps": 11}, InvalidRating, "invalid_nps"),
            ({"nps": -1}, InvalidRating, "invalid_nps"),
            ({}, InvalidRating, "invalid_rating"),
            ({"rating": 5, "tags": ["not a slug!"]}, InvalidRequest, "invalid_tags"),
            ({"rating": 5, "comment": "x" * 5000}, InvalidRequest, "invalid_comment"),
        ],
    )
    def test_out_of_range_nothing_written(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
        kw: dict[str, object],
        exc: type[Exception],
        code: str,
    ) -> None:
        _, token = sent_followup(session, merchant_id, make_contact(), clock, keyring)
        before = _counts(session)
        with pytest.raises(exc) as info:
            feedback.submit_feedback(
                session,
                merchant_id,
                token,
                FeedbackCreate(**kw),  # type: ignore[arg-type]
                keyring=keyring,
                clock=clock,
            )
        assert info.value.code == code
        assert info.value.status_code == 400
        assert _counts(session) == before

    def test_token_is_single_use(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        _, token = sent_followup(session, merchant_id, make_contact(), clock, keyring)
        feedback.submit_feedback(
            session, merchant_id, token, FeedbackCreate(rating=1), keyring=keyring, clock=clock
        )
        before = _counts(session)
        with pytest.raises(FeedbackTokenUsed) as info:
            feedback.submit_feedback(
                session, merchant_id, token, FeedbackCreate(rating=5), keyring=keyring, clock=clock
            )
        assert info.value.status_code == 409
        assert _counts(session) == before
        row = session.exec(select(Feedback)).one()
        assert row.rating == 1

    def test_expired_token(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        _, token = sent_followup(session, merchant_id, make_contact(), clock, keyring)
        clock.advance(days=14)
        before = _counts(session)
        with pytest.raises(FeedbackTokenExpired) as info:
            feedback.submit_feedback(
                session, merchant_id, token, FeedbackCreate(rating=4), keyring=keyring, clock=clock
            )
        assert info.value.code == "feedback_token_expired"
        assert _counts(session) == before

    def test_unknown_token(
        self, session: Session, merchant_id: int, keyring: KeyRing, clock: FrozenClock
    ) -> None:
        with pytest.raises(FeedbackTokenInvalid) as info:
            feedback.submit_feedback(
                session,
                merchant_id,
                "forged",
                FeedbackCreate(rating=4),
                keyring=keyring,
                clock=clock,
            )
        assert info.value.status_code == 404

    def test_every_attempt_carries_the_same_token(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        """A follow-up prepared again (a retry) issues the same token: a message an earlier
        attempt delivered although its receiver answered an error keeps working links. A
        sure failure revokes it until the next attempt makes it live again."""
        from crm.followups import dispatch as followups_dispatch

        c = make_contact()
        fu, first = sent_followup(session, merchant_id, c, clock, keyring)
        fu.state = "queued"  # the dispatcher sends it again
        session.add(fu)
        send = followups_dispatch.prepare_send(session, fu.id or 0, clock.now(), keyring)
        assert send is not None
        assert send.token == first
        followups_dispatch.mark_failed(session, fu.id or 0, clock.now())  # retried: revoked
        with pytest.raises(FeedbackTokenInvalid):
            feedback.submit_feedback(
                session, merchant_id, first, FeedbackCreate(rating=4), keyring=keyring, clock=clock
            )
        fu.state = "queued"
        session.add(fu)
        again = followups_dispatch.prepare_send(session, fu.id or 0, clock.now(), keyring)
        assert again is not None
        assert again.token == first
        recorded = feedback.submit_feedback(
            session, merchant_id, first, FeedbackCreate(rating=4), keyring=keyring, clock=clock
        )
        assert recorded.rating == 4

    @pytest.mark.parametrize("reason", ["delivery_uncertain", "interrupted"])
    def test_an_answer_to_a_message_recorded_as_maybe_delivered_counts(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
        reason: str,
    ) -> None:
        """The answer proves the message arrived: the follow-up stayed ``failed``, so the
        merchant's response rate counted an answered survey as unanswered and unsent."""
        from crm.metrics import service as metrics

        c = make_contact()
        fu, token = sent_followup(session, merchant_id, c, clock, keyring)
        attempted = clock.now()
        fu.state, fu.reason, fu.sent_at, fu.attempted_at = "failed", reason, None, attempted
        session.add(fu)
        clock.advance(hours=3)
        feedback.submit_feedback(
            session, merchant_id, token, FeedbackCreate(rating=5), keyring=keyring, clock=clock
        )
        session.refresh(fu)
        assert (fu.state, fu.sent_at, fu.responded_at) == ("responded", attempted, clock.now())
        period = metrics.compute(
            session,
            merchant_id,
            attempted - timedelta(days=1),
            clock.now() + timedelta(days=1),
            now=clock.now(),
        )
        assert period.response_rate == 100

    def test_other_merchants_followup(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        _, token = sent_followup(session, merchant_id, make_contact(), clock, keyring)
        other = merchants.create_merchant(session, MerchantCreate(name="Other"), clock)
        before = _counts(session)
        with pytest.raises(FeedbackNotFound) as info:
            feedback.submit_feedback(
                session,
                other.id or 0,
                token,
                FeedbackCreate(rating=5),
                keyring=keyring,
                clock=clock,
            )
        assert info.value.status_code == 404
        assert _counts(session) == before
        assert session.exec(select(FollowUp)).one().state == "sent"


def _edit(
    session: Session,
    merchant_id: int,
    feedback_id: int,
    update: FeedbackUpdate,
    keyring: KeyRing,
    clock: FrozenClock,
) -> FeedbackPublic:
    """The customer's edit (actor ``contact``)."""
    return feedback.edit_feedback(
        session, merchant_id, feedback_id, update, actor="contact", keyring=keyring, clock=clock
    )


class TestEditFeedback:
    def test_editable_for_14_days_then_frozen(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        _, token = sent_followup(session, merchant_id, make_contact(), clock, keyring)
        out = feedback.submit_feedback(
            session, merchant_id, token, FeedbackCreate(rating=4), keyring=keyring, clock=clock
        )
        clock.advance(days=13, hours=23)
        edited = _edit(
            session,
            merchant_id,
            out.id,
            FeedbackUpdate(rating=1, comment="Actually broken"),
            keyring,
            clock,
        )
        assert (edited.rating, edited.comment) == (1, "Actually broken")
        assert edited.ticket_id is not None  # became negative: ticket opened
        clock.advance(hours=1)
        with pytest.raises(FeedbackFrozen) as info:
            _edit(session, merchant_id, out.id, FeedbackUpdate(rating=5), keyring, clock)
        assert info.value.status_code == 409
        assert feedback.get_feedback(session, merchant_id, out.id).rating == 1

    def test_an_erased_contacts_answer_is_frozen(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        """Erasure ends the customer's say: a rating-only edit (no comment to encrypt) was
        still taken, and could open a ticket about an erased contact."""
        contact = make_contact()
        _, token = sent_followup(session, merchant_id, contact, clock, keyring)
        out = feedback.submit_feedback(
            session, merchant_id, token, FeedbackCreate(rating=4), keyring=keyring, clock=clock
        )
        privacy.erase_contact(session, merchant_id, contact.id or 0, actor="dpo", clock=clock)
        with pytest.raises(ContactErased):
            _edit(session, merchant_id, out.id, FeedbackUpdate(rating=1), keyring, clock)
        assert feedback.get_feedback(session, merchant_id, out.id).rating == 4
        assert count(session, Ticket) == 0

    def test_edit_needs_an_answer_and_a_change(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        from crm.feedback import repository as feedback_repo

        fu, token = sent_followup(session, merchant_id, make_contact(), clock, keyring)
        pending = feedback_repo.get_by_followup(session, fu.id or 0)
        assert pending is not None
        assert pending.id is not None
        with pytest.raises(FeedbackNotSubmitted) as info:
            _edit(session, merchant_id, pending.id, FeedbackUpdate(rating=2), keyring, clock)
        assert info.value.status_code == 409
        out = feedback.submit_feedback(
            session, merchant_id, token, FeedbackCreate(rating=4), keyring=keyring, clock=clock
        )
        clock.advance(hours=1)
        with pytest.raises(InvalidRequest, match="nothing to change"):
            _edit(session, merchant_id, out.id, FeedbackUpdate(), keyring, clock)
        stored = feedback.get_feedback(session, merchant_id, out.id)
        assert (stored.rating, stored.updated_at) == (4, stored.submitted_at)

    def test_edit_validates(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        _, token = sent_followup(session, merchant_id, make_contact(), clock, keyring)
        out = feedback.submit_feedback(
            session, merchant_id, token, FeedbackCreate(rating=4), keyring=keyring, clock=clock
        )
        with pytest.raises(InvalidRating):
            _edit(session, merchant_id, out.id, FeedbackUpdate(rating=9), keyring, clock)
        assert feedback.get_feedback(session, merchant_id, out.id).rating == 4
