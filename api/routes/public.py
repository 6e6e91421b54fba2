"""Customer links (no API key): rate a purchase, see and withdraw consent, read the message.

The credential is the single-use feedback token from the follow-up e-mail (random 256 bits,
stored only as its SHA-256). Errors are explicit:

* unknown or altered token → 404 ``feedback_token_invalid``;
* expired token → 400 ``feedback_token_expired`` (feedback links live 14 days; the consent and
  message links of the same e-mail keep working for :data:`CONSENT_LINK_VALIDITY` after that,
  because withdrawing must stay as easy as granting);
* a second answer → the rating page shows the recorded answer (nothing changes); a second
  ``POST`` with a JSON body is a 409 ``feedback_token_used``; ``PATCH`` changes a recorded
  answer for 14 days.

No ``GET`` records a choice: mail scanners and link previews open every link in a message (the
one write a ``GET`` makes is an in-app message's ``read_at``, a URL no message links to).
The messages' rating links open a confirmation page (``GET /feedback/{token}/rate?rating=N``,
the rating preselected) whose one button POSTs it; messages sent before that page existed link
``GET /feedback/{token}?rating=N``, which redirects there; the "Stop these messages" link opens a
confirmation page (``GET /consent/{token}/withdraw``) whose one button POSTs the withdrawal, and
mail clients POST that URL from the RFC 8058 ``List-Unsubscribe`` header. Both POSTs answer a
browser (``Accept: text/html``) with a page and anyone else with JSON.
A withdrawal also cancels the contact's open phone tasks it no longer allows.

A token reads its own follow-up's in-app message only (``GET /messages/{token}``): a link that
reached the merchant's SMS gateway or a forwarded e-mail must not open the contact's other
messages, whose links carry other follow-ups' live tokens.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated
from urllib.parse import parse_qs, quote

from fastapi import Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from sqlmodel import Session
from starlette.responses import HTMLResponse, RedirectResponse

from api import queries
from api.deps import ClockDep, KeyRingDep, SessionDep
from api.dispatch import phone_tasks
from api.dispatch import repository as dispatch_repo
from api.dispatch.channels import render_in_app
from api.errors import error_responses
from api.routes._consent_page import (
    confirm_page,
    done_page,
    error_page,
    rated_page,
    rating_page,
    wants_html,
)
from api.routes.support import emit_feedback_events
from api.routing import ApiRouter
from api.schemas.crm import ConsentEventOut, FeedbackOut
from api.schemas.public import (
    PublicConsents,
    PublicConsentState,
    PublicFeedback,
    PublicFeedbackBody,
    PublicFeedbackEdit,
    PublicMessage,
    PublicMessages,
    PublicWithdrawBody,
)
from api.webhooks import enqueue
from crm import FeedbackCreate, FeedbackUpdate, KeyRing, Purpose, consent, feedback
from crm.clock import Clock
from crm.consent import repository as consent_repo
from crm.errors import (
    CRMError,
    FeedbackPaymentReversed,
    FeedbackTokenExpired,
    FeedbackTokenInvalid,
    FeedbackTokenUsed,
)
from crm.feedback.models import Feedback
from crm.feedback.tokens import hash_token
from crm.rewards import repository as rewards_repo
from crm.tickets import repository as tickets_repo
from crm.tickets.service import FIRST_RESPONSE_SLA

__all__ = ["CONSENT_LINK_VALIDITY", "router"]

router = ApiRouter(
    prefix="/public",
    tags=["public"],
    responses=error_responses(400, 404, 409, 422, 429),
)

CONSENT_LINK_VALIDITY = timedelta(days=365)
Token = Annotated[
    str, Path(min_length=1, max_length=200, description="The token from the e-mail link.")
]
_ACTOR = "customer:link"


def _by_token(session: Session, token: str) -> Feedback:
    fb = queries.feedback_by_token_hash(session, hash_token(token)) if len(token) <= 200 else None
    if fb is None:
        raise FeedbackTokenInvalid("this link is not valid (unknown or altered token)")
    return fb


def _view(session: Session, fb: Feedback, *, message: str | None = None) -> PublicFeedback:
    if fb.submitted_at is None:
        return PublicFeedback(
            state="pending",
            rating=None,
            nps=None,
            submitted_at=None,
            expires_at=fb.token_expires_at,
            editable_until=None,
            reward_points=None,
            follow_up_within_hours=None,
            message=message or "How did it go? Choose a rating from 1 to 5.",
        )
    reward = rewards_repo.get_for_followup(session, fb.followup_id)
    ticket = tickets_repo.get_by_feedback(session, fb.id or 0)
    hours = int(FIRST_RESPONSE_SLA.total_seconds() // 3600) if ticket is not None else None
    default = "Thank you, your answer is recorded."
    if ticket is not None:
        default = f"Thank you. We are sorry: someone will get back to you within {hours} h."
    return PublicFeedback(
        state="recorded",
        rating=fb.rating,
        nps=fb.nps,
        submitted_at=fb.submitted_at,
        expires_at=fb.token_expires_at,
        editable_until=fb.edit_until,
        reward_points=None if reward is None else reward.points,
        follow_up_within_hours=hours,
        message=message or default,
    )


def _submit(
    session: Session,
    fb: Feedback,
    token: str,
    data: FeedbackCreate,
    keyring: object,
    clock: Clock,
) -> None:
    out = feedback.submit_feedback(
        session,
        fb.merchant_id,
        token,
        data,
        keyring=keyring,  # type: ignore[arg-type]
        clock=clock,
    )
    ticket = tickets_repo.get_by_feedback(session, out.id) if out.ticket_id is not None else None
    emit_feedback_events(session, fb.merchant_id, FeedbackOut.of(out), ticket)


@router.get(
    "/feedback/{token}",
    response_model=PublicFeedback,
    summary="A feedback link's state",
    description="Pending (with its expiry) or the recorded answer. Changes nothing: the "
    "messages' rating links open `GET /feedback/{token}/rate`, whose button records. With "
    "`rating` (the rating links of messages sent before the confirmation page existed): a 303 "
    "to that page, the rating preselected.",
    responses={
        303: {
            "description": "A legacy rating link: to the confirmation page.",
            "headers": {"Location": {"schema": {"type": "string"}}},
        }
    },
)
def open_feedback_link(
    token: Token,
    session: SessionDep,
    clock: ClockDep,
    rating: Annotated[
        int | None, Query(ge=1, le=5, description="A legacy rating link's rating.")
    ] = None,
) -> PublicFeedback | RedirectResponse:
    if rating is not None:  # the page checks the token; a GET still records nothing
        # relative: a proxy's path prefix stays; quoted: a token is never read as a scheme
        return RedirectResponse(f"./{quote(token, safe='')}/rate?rating={rating}", 303)
    return _view(session, _feedback_link(session, token, clock))


def _feedback_link(session: Session, token: str, clock: Clock) -> Feedback:
    """The token's feedback row: answered (shown as it is, expired or not) or still open."""
    fb = _by_token(session, token)
    if fb.submitted_at is None and (
        fb.token_expires_at is None or clock.now() >= fb.token_expires_at
    ):
        raise FeedbackTokenExpired("this feedback link has expired")
    return fb


_RATING_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {"rating": {"type": "integer", "minimum": 1, "maximum": 5}},
                    "required": ["rating"],
                }
            }
        },
    }
}


async def _form_rating(request: Request) -> int:
    """The confirmation page's ``rating`` field (a browser form, url-encoded; parsed here: the
    app carries no multipart parser). Errors are the usual 422 of the one handler."""
    try:
        fields = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=8)
    except ValueError:  # more fields than a rating form has
        raise RequestValidationError(
            [{"type": "too_long", "loc": ("body",), "msg": "a rating form has one field"}]
        ) from None
    values = fields.get("rating", [])
    if not values:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body", "rating"), "msg": "Field required"}]
        )
    value = values[-1].strip()
    if value not in ("1", "2", "3", "4", "5"):  # isdigit() took '²' and 5,000 digits: a 500
        raise RequestValidationError(
            [{"type": "int_range", "loc": ("body", "rating"), "msg": "a whole number 1-5"}]
        )
    return int(value)


@router.get(
    "/feedback/{token}/rate",
    response_class=HTMLResponse,
    summary="A message's rating link: a confirmation page",
    description="An HTML page with the five ratings, `rating` preselected, and one button that "
    "POSTs the choice to this URL. Opening it changes nothing, so mail scanners and link "
    "previews that open links rate nothing. On an answered link: the recorded answer; on a "
    "link that does not work (unknown, expired, its sale reversed): a page saying why, no form. "
    "No script, no outside resources, not frameable.",
    responses={200: {"content": {"text/html": {}}, "description": "The confirmation page."}},
)
def confirm_rating(
    token: Token,
    session: SessionDep,
    clock: ClockDep,
    rating: Annotated[int | None, Query(ge=1, le=5, description="The preselected rating.")] = None,
) -> HTMLResponse:
    try:
        fb = _feedback_link(session, token, clock)
        if fb.submitted_at is not None:
            return rated_page(_view(session, fb))
        feedback.check_not_reversed(session, fb.merchant_id, fb.followup_id)
    except (FeedbackTokenInvalid, FeedbackTokenExpired, FeedbackPaymentReversed) as exc:
        return error_page(exc.status_code, exc.message)
    return rating_page(rating)


@router.post(
    "/feedback/{token}/rate",
    response_model=PublicFeedback,
    summary="Record the confirmation page's rating",
    description="The page's form (`rating=N`, url-encoded). Records the rating (reward points "
    "credited whatever the rating; 1-2 opens a support ticket with a 24 h first-response SLA); "
    "on an answered link it shows the recorded answer, unchanged. A browser (`Accept: "
    "text/html`) gets an HTML page instead of JSON, an error page included.",
    responses={200: {"content": {"text/html": {}}}},
    openapi_extra=_RATING_FORM,
)
def rate_from_page(
    token: Token,
    request: Request,
    rating: Annotated[int, Depends(_form_rating)],
    session: SessionDep,
    keyring: KeyRingDep,
    clock: ClockDep,
) -> PublicFeedback | HTMLResponse:
    html = wants_html(request.headers.get("accept"))
    try:
        fb = _feedback_link(session, token, clock)
        if fb.submitted_at is None:
            try:
                _submit(session, fb, token, FeedbackCreate(rating=rating), keyring, clock)
            except FeedbackTokenUsed:  # a concurrent click won: show what it recorded
                session.expire_all()
                fb = _by_token(session, token)
            session.refresh(fb)
    except CRMError as exc:  # a dead link, a reversed payment: the page's button gets a page
        if not html:
            raise
        session.rollback()  # nothing of a refused answer is kept
        return error_page(exc.status_code, exc.message)
    view = _view(session, fb)
    return rated_page(view) if html else view


@router.post(
    "/feedback/{token}",
    response_model=PublicFeedback,
    summary="Answer a feedback link (rating, NPS, comment)",
    description="Single use: a second answer is a 409 `feedback_token_used`.",
)
def submit_feedback_link(
    token: Token,
    body: PublicFeedbackBody,
    session: SessionDep,
    keyring: KeyRingDep,
    clock: ClockDep,
) -> PublicFeedback:
    fb = _by_token(session, token)
    data = FeedbackCreate(rating=body.rating, nps=body.nps, comment=body.comment)
    _submit(session, fb, token, data, keyring, clock)
    session.refresh(fb)
    return _view(session, fb)


@router.patch(
    "/feedback/{token}",
    response_model=PublicFeedback,
    summary="Change a recorded answer (for 14 days)",
    description="Until the answer's `editable_until`: only the fields sent change. An answer "
    "that turns negative (rating 1-2, NPS 0-6) opens a support ticket if it had none; points are "
    "not credited again. Before any answer: 409 `feedback_not_submitted`; after the window: "
    "409 `feedback_frozen`. Queues `feedback.updated`.",
)
def edit_feedback_link(
    token: Token,
    body: PublicFeedbackEdit,
    session: SessionDep,
    keyring: KeyRingDep,
    clock: ClockDep,
) -> PublicFeedback:
    fb = _by_token(session, token)
    assert fb.id is not None
    data = FeedbackUpdate(**body.model_dump(exclude_unset=True))
    out = feedback.edit_feedback(
        session, fb.merchant_id, fb.id, data, actor=_ACTOR, keyring=keyring, clock=clock
    )
    opened = tickets_repo.get_by_feedback(session, fb.id) if out.ticket_opened else None
    emit_feedback_events(
        session, fb.merchant_id, FeedbackOut.of(out), opened, event_type="feedback.updated"
    )
    session.refresh(fb)
    return _view(session, fb, message="Thank you, your answer is updated.")


def _consent_link(session: Session, token: str, clock: Clock) -> Feedback:
    fb = _by_token(session, token)
    if fb.token_expires_at is None or clock.now() >= fb.token_expires_at + CONSENT_LINK_VALIDITY:
        raise FeedbackTokenExpired("this link has expired")
    return fb


def _consents(session: Session, fb: Feedback, request: Request) -> PublicConsents:
    states = consent_repo.list_states(session, fb.contact_id)
    return PublicConsents(
        consents=[
            PublicConsentState(purpose=s.purpose, channel=s.channel, state=s.state) for s in states
        ],
        # the ASGI root_path: the prefix a reverse proxy stripped (FOLLOWPAY_API_ROOT_PATH)
        withdraw_url=request.scope.get("root_path", "")
        + request.app.url_path_for("withdraw_all_my_consent", token=request.path_params["token"]),
    )


@router.get(
    "/consent/{token}",
    response_model=PublicConsents,
    summary="My consent preferences",
)
def get_my_consents(
    token: Token, request: Request, session: SessionDep, clock: ClockDep
) -> PublicConsents:
    return _consents(session, _consent_link(session, token, clock), request)


def _withdraw(
    session: Session,
    fb: Feedback,
    body: PublicWithdrawBody | None,
    clock: Clock,
    keyring: KeyRing,
) -> None:
    purposes = [body.purpose] if body is not None and body.purpose is not None else list(Purpose)
    channel = body.channel if body is not None else None
    for purpose in purposes:
        if consent.withdrawn_already(session, fb.contact_id, purpose, channel):
            continue  # a repeated click or a retried one-click POST: nothing to record
        event = consent.withdraw(
            session,
            fb.merchant_id,
            fb.contact_id,
            purpose,
            channel,
            actor=_ACTOR,
            clock=clock,
            source="customer_link",
            keyring=keyring,
        )
        payload = ConsentEventOut.of(event).model_dump(mode="json")
        enqueue(session, str(fb.merchant_id), "consent.changed", payload)
    phone_tasks.cancel_without_consent(
        session, fb.merchant_id, fb.contact_id, actor=_ACTOR, clock=clock
    )


@router.post(
    "/consent/{token}",
    response_model=PublicConsents,
    summary="Withdraw consent (one purpose/channel, or everything)",
)
def withdraw_my_consent(
    token: Token,
    request: Request,
    session: SessionDep,
    clock: ClockDep,
    keyring: KeyRingDep,
    body: PublicWithdrawBody | None = None,
) -> PublicConsents:
    fb = _consent_link(session, token, clock)
    _withdraw(session, fb, body, clock, keyring)
    return _consents(session, fb, request)


@router.get(
    "/consent/{token}/withdraw",
    response_class=HTMLResponse,
    summary="The 'Stop these messages' link: a confirmation page",
    description="An HTML page showing the customer's consents and one button that POSTs the "
    "withdrawal to this URL. Opening it changes nothing, so mail scanners that prefetch links "
    "withdraw nothing. No script, no outside resources, not frameable.",
    responses={200: {"content": {"text/html": {}}, "description": "The confirmation page."}},
)
def confirm_withdraw_all(
    token: Token, request: Request, session: SessionDep, clock: ClockDep
) -> HTMLResponse:
    try:
        fb = _consent_link(session, token, clock)
    except (FeedbackTokenInvalid, FeedbackTokenExpired) as exc:
        return error_page(exc.status_code, exc.message)
    return confirm_page(_consents(session, fb, request).consents)


@router.post(
    "/consent/{token}/withdraw",
    response_model=PublicConsents,
    summary="Withdraw every consent in one click",
    description="No body needed: withdraws every purpose on every channel (pending follow-ups "
    "stop at once, open phone tasks are cancelled). The RFC 8058 one-click POST of mail "
    "clients (`List-Unsubscribe=One-Click`) lands here too. A browser (`Accept: text/html`, "
    "the confirmation page's button) gets an HTML page instead of JSON.",
    responses={200: {"content": {"text/html": {}}}},
)
def withdraw_all_my_consent(
    token: Token, request: Request, session: SessionDep, clock: ClockDep, keyring: KeyRingDep
) -> PublicConsents | HTMLResponse:
    try:
        fb = _consent_link(session, token, clock)
    except (FeedbackTokenInvalid, FeedbackTokenExpired) as exc:
        if wants_html(request.headers.get("accept")):  # the page's button: answer a page
            return error_page(exc.status_code, exc.message)
        raise
    _withdraw(session, fb, None, clock, keyring)
    consents = _consents(session, fb, request)
    return done_page(consents.consents) if wants_html(request.headers.get("accept")) else consents


@router.get(
    "/messages/{token}",
    response_model=PublicMessages,
    summary="The in-app message this link came with",
    description="The follow-up's own in-app message with its links (none: an empty list). A "
    "token never shows the contact's other messages, nor their links. `read_at`: when it was "
    "first shown (this read, for a new one).",
)
def get_my_messages(
    token: Token, session: SessionDep, clock: ClockDep, keyring: KeyRingDep
) -> PublicMessages:
    fb = _consent_link(session, token, clock)
    message = dispatch_repo.message_for_followup(session, fb.merchant_id, fb.followup_id)
    if message is None or message.id is None:
        return PublicMessages(data=[])
    now = clock.now()
    if message.read_at is None:
        dispatch_repo.mark_read(session, [message.id], now)
    return PublicMessages(
        data=[
            PublicMessage(
                id=message.id,
                subject=message.subject,
                body=render_in_app(session, keyring, message),
                created_at=message.created_at,
                read_at=message.read_at or now,
            )
        ]
    )
