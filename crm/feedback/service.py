"""Feedback rules: single-use expiring tokens, range checks, 14-day edit window, side effects.

Submitting marks the follow-up ``responded``, grants reward points (whatever the rating) and opens
a ticket for negative feedback (rating ≤ 2 or NPS ≤ 6).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlmodel import Session

from crm.audit import service as audit
from crm.clock import Clock
from crm.contacts import repository as contacts_repo
from crm.contacts import service as contacts
from crm.crypto import KeyRing
from crm.errors import (
    ContactErased,
    FeedbackFrozen,
    FeedbackNotFound,
    FeedbackNotSubmitted,
    FeedbackPaymentReversed,
    FeedbackTokenExpired,
    FeedbackTokenInvalid,
    FeedbackTokenUsed,
    InvalidRating,
    InvalidRequest,
)
from crm.feedback import repository as repo
from crm.feedback.models import Feedback, FeedbackCreate, FeedbackPublic, FeedbackUpdate
from crm.feedback.tokens import hash_token
from crm.followups import repository as followups_repo
from crm.followups import service as followups
from crm.rewards import service as rewards
from crm.tags import normalise_tags
from crm.tickets import repository as tickets_repo
from crm.tickets import service as tickets

__all__ = [
    "COMMENT",
    "EDIT_WINDOW",
    "check_not_reversed",
    "edit_feedback",
    "get_feedback",
    "submit_feedback",
    "to_public",
    "validate_scores",
]

EDIT_WINDOW = timedelta(days=14)
COMMENT = "crm_feedback.comment"
MAX_COMMENT = 4000


def validate_scores(rating: int | None, nps: int | None, *, require_one: bool = True) -> None:
    if rating is not None and (
        isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5
    ):
        raise InvalidRating("rating must be an integer from 1 to 5", param="rating")
    if nps is not None and (
        isinstance(nps, bool) or not isinstance(nps, int) or not 0 <= nps <= 10
    ):
        raise InvalidRating("NPS must be an integer from 0 to 10", code="invalid_nps", param="nps")
    if require_one and rating is None and nps is None:
        raise InvalidRating("give a rating, an NPS score or both", param="rating")


def _check_comment(comment: str | None) -> str | None:
    if comment is None:
        return None
    text = comment.strip()
    if len(text) > MAX_COMMENT:
        raise InvalidRequest("comment is too long", code="invalid_comment", param="comment")
    return text or None


def submit_feedback(
    session: Session,
    merchant_id: int,
    token: str,
    data: FeedbackCreate,
    *,
    keyring: KeyRing,
    clock: Clock,
) -> FeedbackPublic:
    """Redeem a single-use token. Errors are raised before anything is written."""
    validate_scores(data.rating, data.nps)
    tags = normalise_tags(data.tags)
    comment = _check_comment(data.comment)
    if not token or len(token) > 200:
        raise FeedbackTokenInvalid("unknown feedback token")
    token_hash = hash_token(token)
    fb = repo.get_by_token_hash(session, token_hash, lock=False)
    if fb is None:
        raise FeedbackTokenInvalid("unknown feedback token")
    if fb.merchant_id != merchant_id:
        raise FeedbackNotFound("no such feedback request", param="token")
    if fb.submitted_at is not None:
        raise FeedbackTokenUsed("this feedback link has already been used")
    now = clock.now()
    if fb.token_expires_at is None or now >= fb.token_expires_at:
        raise FeedbackTokenExpired("this feedback link has expired")
    check_not_reversed(session, merchant_id, fb.followup_id)
    # Locks in the order every writer of these rows takes them: contact, follow-up, answer
    # (erasure; the worker's prepare_send, mark_failed; a reorg's cancellation). The answer's
    # row before the contact's deadlocked an erasure on PostgreSQL, and before the follow-up's
    # a worker recording a failed send of this survey (writing the answer's row twice also
    # takes a key-share lock on its follow-up, for the foreign key). An erasure that committed
    # since the reads above is seen here, and one that starts now waits for this answer.
    contact = contacts_repo.get_for_update(session, fb.contact_id, merchant_id)
    assert contact is not None
    key = contacts.data_key(session, keyring, contact)
    if key is None or contact.erased_at is not None:
        raise ContactErased("contact has been erased")
    fu = followups_repo.get_for_update(session, fb.followup_id)
    assert fu is not None
    fb = repo.get_by_token_hash(session, token_hash)
    if fb is None:  # revoked since the first look
        raise FeedbackTokenUsed("this feedback link has already been used")
    assert fb.id is not None
    if not repo.claim_submission(session, fb.id, token_hash, now):  # redeemed or revoked since
        raise FeedbackTokenUsed("this feedback link has already been used")
    fb.rating, fb.nps, fb.tags = data.rating, data.nps, tags
    fb.comment_enc = key.encrypt(comment, f"{COMMENT}:{fb.id}")
    fb.submitted_at, fb.edit_until, fb.updated_at = now, now + EDIT_WINDOW, now
    repo.save(session, fb)
    followups.mark_responded(session, fu, now)
    policy = followups_repo.get_policy_by_id(session, merchant_id, fu.policy_id or 0)
    points = policy.reward_points if policy is not None else 0
    reward = rewards.grant_for_response(
        session,
        merchant_id=merchant_id,
        contact_id=fb.contact_id,
        followup_id=fb.followup_id,
        points=points,
        now=now,
    )
    ticket = (
        tickets.open_for_feedback(session, fb, now)
        if tickets.is_negative(fb.rating, fb.nps)
        else None
    )
    out = to_public(session, fb, keyring)
    out.ticket_id = None if ticket is None else ticket.id
    out.reward_points = reward.points
    return out


def check_not_reversed(session: Session, merchant_id: int, followup_id: int) -> None:
    """``FeedbackPaymentReversed`` when the sale the link asks about is gone (a reorg, an
    invalidated invoice): a page must not offer a form whose answer would be refused."""
    surveyed = followups_repo.get(session, merchant_id, followup_id)
    if surveyed is not None and followups_repo.purchase_reversed(
        session, merchant_id, surveyed.invoice_ref
    ):
        raise FeedbackPaymentReversed(
            "the payment this link asks about was reversed or its invoice invalidated"
        )


def get_feedback(session: Session, merchant_id: int, feedback_id: int) -> Feedback:
    fb = repo.get(session, merchant_id, feedback_id)
    if fb is None or fb.submitted_at is None:
        raise FeedbackNotFound("no such feedback", param="feedback_id")
    return fb


def edit_feedback(
    session: Session,
    merchant_id: int,
    feedback_id: int,
    data: FeedbackUpdate,
    *,
    actor: str,
    keyring: KeyRing,
    clock: Clock,
) -> FeedbackPublic:
    """The customer may change their answer for 14 days after submitting; then it is frozen.
    Not once the contact is erased or the payment it rates was reversed (as for a first
    answer). Two edits at once run one after another (:func:`repo.get_for_edit`): both turning
    the answer negative open one ticket. Locks as :func:`submit_feedback` takes them (contact,
    follow-up, answer): the answer's first made an edit racing an erasure deadlock, and the
    reversal check, made under the follow-up's lock, sees a reorg that committed meanwhile."""
    peek = repo.get(session, merchant_id, feedback_id)
    if peek is None:
        raise FeedbackNotFound("no such feedback", param="feedback_id")
    contact = contacts_repo.get_for_update(session, peek.contact_id, merchant_id)
    followups_repo.get_for_update(session, peek.followup_id)
    fb = repo.get_for_edit(session, merchant_id, feedback_id)
    if fb is None:
        raise FeedbackNotFound("no such feedback", param="feedback_id")
    if fb.submitted_at is None:
        raise FeedbackNotSubmitted("nothing to change: this feedback has not been answered yet")
    changes = data.model_dump(exclude_unset=True)
    if not changes:
        raise InvalidRequest("nothing to change: give a rating, nps, tags or a comment")
    rating = changes.get("rating", fb.rating)
    nps = changes.get("nps", fb.nps)
    validate_scores(rating, nps)
    tags = normalise_tags(changes["tags"]) if changes.get("tags") is not None else fb.tags
    comment = _check_comment(changes.get("comment"))
    now = clock.now()
    if fb.edit_until is None or now >= fb.edit_until:
        raise FeedbackFrozen("feedback can no longer be edited")
    assert fb.id is not None
    key = None if contact is None else contacts.data_key(session, keyring, contact)
    if key is None or contact is None or contact.erased_at is not None:
        raise ContactErased("contact has been erased")
    check_not_reversed(session, merchant_id, fb.followup_id)
    if "comment" in changes:
        fb.comment_enc = key.encrypt(comment, f"{COMMENT}:{fb.id}")
    fb.rating, fb.nps, fb.tags, fb.updated_at = rating, nps, list(tags), now
    repo.save(session, fb)
    ticket = tickets_repo.get_by_feedback(session, fb.id)
    opened = ticket is None and tickets.is_negative(fb.rating, fb.nps)
    if opened:
        ticket = tickets.open_for_feedback(session, fb, now)
    audit.record(
        session,
        actor=actor,
        action="feedback.edited",
        object_type="feedback",
        object_id=fb.id,
        at=now,
        merchant_id=merchant_id,
        detail={"fields": sorted(changes)},
    )
    out = to_public(session, fb, keyring)
    out.ticket_id = None if ticket is None else ticket.id
    out.ticket_opened = opened
    return out


def to_public(session: Session, fb: Feedback, keyring: KeyRing) -> FeedbackPublic:
    assert fb.id is not None
    comment = None
    contact = contacts_repo.get(session, fb.merchant_id, fb.contact_id)
    key = None if contact is None else contacts.data_key(session, keyring, contact)
    if key is not None:
        comment = key.decrypt(fb.comment_enc, f"{COMMENT}:{fb.id}")
    return FeedbackPublic(
        id=fb.id,
        merchant_id=fb.merchant_id,
        followup_id=fb.followup_id,
        contact_id=fb.contact_id,
        rating=fb.rating,
        nps=fb.nps,
        tags=list(fb.tags),
        comment=comment,
        submitted_at=fb.submitted_at,
        edit_until=fb.edit_until,
    )


def list_for_contact(session: Session, contact_id: int) -> Sequence[Feedback]:
    return repo.list_for_contact(session, contact_id)
