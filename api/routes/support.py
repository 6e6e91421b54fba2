"""/v1/followups, /v1/feedback and /v1/tickets (the support queue with its 24 h SLA)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path, Query, Request
from sqlmodel import Session

from api import queries
from api.deps import AfterCommit, ClockDep, KeyRingDep, SessionDep
from api.errors import NotFound
from api.keys.service import AuthenticatedKey
from api.pagination import MAX_ID, ListResponse, PageDep, paginate
from api.routes._common import (
    Staff,
    actor,
    crm_errors,
    merchant_scope,
    object_merchant,
    parse_id,
)
from api.routing import ApiRouter
from api.schemas.crm import (
    FeedbackOut,
    FollowUpDetailOut,
    FollowUpEventOut,
    FollowUpOut,
    TicketAssignBody,
    TicketOut,
    TicketResolveBody,
    TicketTagBody,
)
from api.webhooks import enqueue
from crm import FollowUpState, SuppressionReason, TicketState, feedback, followups, tickets
from crm.feedback.models import Feedback
from crm.followups.models import FollowUp
from crm.tickets import repository as tickets_repo
from crm.tickets.models import Ticket

__all__ = ["router"]

router = ApiRouter()

MerchantFilter = Annotated[
    str | None, Query(min_length=1, max_length=20, description="Admins: one merchant.")
]
ObjectId = Annotated[int, Path(ge=1, le=MAX_ID)]


# ----------------------------------------------------------------------------------- follow-ups


@router.get(
    "/followups",
    response_model=ListResponse[FollowUpOut],
    tags=["followups"],
    summary="List follow-ups",
    description="Newest first. `state=suppressed&reason=no_consent` lists every follow-up that "
    "was not sent for lack of consent (reasons: no_consent, quiet_hours, frequency_cap, erased).",
)
def list_followups(
    request: Request,
    session: SessionDep,
    caller: Staff,
    page: PageDep,
    state: Annotated[FollowUpState | None, Query()] = None,
    reason: Annotated[SuppressionReason | None, Query(description="Suppression reason.")] = None,
    contact_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    merchant_id: MerchantFilter = None,
) -> ListResponse[FollowUpOut]:
    stmt = queries.followups_select(
        merchant_scope(caller, merchant_id),
        state=None if state is None else state.value,
        reason=None if reason is None else reason.value,
        contact_id=contact_id,
    )
    rows, has_more = paginate(
        session,
        stmt,
        created_at=FollowUp.created_at,
        id=FollowUp.id,
        page=page,
        cursor_in=queries.followups_select(merchant_scope(caller, merchant_id)),
    )
    return ListResponse[FollowUpOut](
        data=[FollowUpOut.of(f) for f in rows], has_more=has_more, url=request.url.path
    )


@router.get(
    "/followups/{followup_id}",
    response_model=FollowUpDetailOut,
    tags=["followups"],
    summary="Retrieve a follow-up with its log",
    description="`events`: every state change and deferral, oldest first (a follow-up held "
    "for quiet hours stays `scheduled`; its last event says `quiet_hours`/`deferred`).",
)
def get_followup(followup_id: ObjectId, session: SessionDep, caller: Staff) -> FollowUpDetailOut:
    merchant_id = object_merchant(session, caller, FollowUp, followup_id, what="follow-up")
    with crm_errors("follow-up", followup_id):
        fu = followups.get_followup(session, merchant_id, followup_id)
        events = followups.history(session, merchant_id, followup_id)
    return FollowUpDetailOut(
        **FollowUpOut.of(fu).model_dump(),
        events=[
            FollowUpEventOut(
                at=e.at,
                from_state=e.from_state,
                to_state=e.to_state,
                reason=e.reason,
                detail=e.detail,
            )
            for e in events
        ],
    )


# ------------------------------------------------------------------------------------- feedback


def _feedback_out(session: Session, fb: Feedback, keyring: object) -> FeedbackOut:
    ticket = tickets_repo.get_by_feedback(session, fb.id or 0)
    public = feedback.to_public(session, fb, keyring)  # type: ignore[arg-type]
    return FeedbackOut.of(public, ticket_id=None if ticket is None else ticket.id)


@router.get(
    "/feedback",
    response_model=ListResponse[FeedbackOut],
    tags=["feedback"],
    summary="List submitted feedback",
)
def list_feedback(
    request: Request,
    session: SessionDep,
    caller: Staff,
    page: PageDep,
    keyring: KeyRingDep,
    contact_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    rating: Annotated[int | None, Query(ge=1, le=5)] = None,
    merchant_id: MerchantFilter = None,
) -> ListResponse[FeedbackOut]:
    stmt = queries.feedback_select(
        merchant_scope(caller, merchant_id), contact_id=contact_id, rating=rating
    )
    rows, has_more = paginate(
        session,
        stmt,
        created_at=Feedback.created_at,
        id=Feedback.id,
        page=page,
        cursor_in=queries.feedback_select(merchant_scope(caller, merchant_id)),
    )
    return ListResponse[FeedbackOut](
        data=[_feedback_out(session, f, keyring) for f in rows],
        has_more=has_more,
        url=request.url.path,
    )


@router.get(
    "/feedback/{feedback_id}",
    response_model=FeedbackOut,
    tags=["feedback"],
    summary="Retrieve feedback",
)
def get_feedback(
    feedback_id: ObjectId, session: SessionDep, caller: Staff, keyring: KeyRingDep
) -> FeedbackOut:
    merchant_id = object_merchant(session, caller, Feedback, feedback_id, what="feedback")
    with crm_errors("feedback", feedback_id):
        fb = feedback.get_feedback(session, merchant_id, feedback_id)
    return _feedback_out(session, fb, keyring)


# -------------------------------------------------------------------------------------- tickets


def _ticket_merchant(session: Session, caller: AuthenticatedKey, ticket_id: int) -> int:
    return object_merchant(session, caller, Ticket, ticket_id, what="ticket")


@router.get(
    "/tickets",
    response_model=ListResponse[TicketOut],
    tags=["tickets"],
    summary="The support queue, most urgent first",
    description="Tickets ordered by their SLA due time (earliest first), then id. Default: the "
    "open queue (`open` and `assigned`); `state=` picks one state. `starting_after` is the last "
    "ticket id of the previous page.",
)
def list_tickets(
    request: Request,
    session: SessionDep,
    caller: Staff,
    page: PageDep,
    state: Annotated[TicketState | None, Query()] = None,
    assignee: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    merchant_id: MerchantFilter = None,
) -> ListResponse[TicketOut]:
    scope = merchant_scope(caller, merchant_id)
    after = None
    if page.starting_after is not None:
        cursor = page.starting_after
        ticket_id = parse_id(cursor)
        after = None if ticket_id is None else queries.ticket_cursor(session, scope, ticket_id)
        if after is None:
            raise NotFound(f"No such object: '{cursor}'.", param="starting_after")
    states = [state.value] if state is not None else ["open", "assigned"]
    rows, has_more = queries.tickets_page(
        session, scope, states=states, limit=page.limit, after=after, assignee=assignee
    )
    return ListResponse[TicketOut](
        data=[TicketOut.of(t) for t in rows], has_more=has_more, url=request.url.path
    )


@router.get(
    "/tickets/{ticket_id}", response_model=TicketOut, tags=["tickets"], summary="Retrieve a ticket"
)
def get_ticket(ticket_id: ObjectId, session: SessionDep, caller: Staff) -> TicketOut:
    merchant_id = _ticket_merchant(session, caller, ticket_id)
    with crm_errors("ticket", ticket_id):
        return TicketOut.of(tickets.get_ticket(session, merchant_id, ticket_id))


@router.post(
    "/tickets/{ticket_id}/assign",
    response_model=TicketOut,
    tags=["tickets"],
    summary="Assign a ticket",
)
def assign_ticket(
    ticket_id: ObjectId,
    body: TicketAssignBody,
    session: SessionDep,
    caller: Staff,
    clock: ClockDep,
) -> TicketOut:
    merchant_id = _ticket_merchant(session, caller, ticket_id)
    with crm_errors("ticket", ticket_id):
        t = tickets.assign(
            session, merchant_id, ticket_id, body.assignee, actor=actor(caller), clock=clock
        )
    return TicketOut.of(t)


@router.post(
    "/tickets/{ticket_id}/respond",
    response_model=TicketOut,
    tags=["tickets"],
    summary="Record the first response",
    description="Stops the SLA clock. A response after `due_at` records the breach.",
)
def respond_ticket(
    ticket_id: ObjectId, session: SessionDep, caller: Staff, clock: ClockDep
) -> TicketOut:
    merchant_id = _ticket_merchant(session, caller, ticket_id)
    with crm_errors("ticket", ticket_id):
        before = tickets.get_ticket(session, merchant_id, ticket_id, for_update=True)
        breached_before = before.breached_at
        t = tickets.respond(session, merchant_id, ticket_id, actor=actor(caller), clock=clock)
    out = TicketOut.of(t)
    if breached_before is None and t.breached_at is not None:  # a late answer recorded it
        enqueue(session, str(merchant_id), "ticket.breached", out.model_dump(mode="json"))
    return out


@router.post(
    "/tickets/{ticket_id}/root_causes",
    response_model=TicketOut,
    tags=["tickets"],
    summary="Tag a ticket's root causes",
)
def tag_ticket(
    ticket_id: ObjectId,
    body: TicketTagBody,
    session: SessionDep,
    caller: Staff,
    clock: ClockDep,
) -> TicketOut:
    merchant_id = _ticket_merchant(session, caller, ticket_id)
    with crm_errors("ticket", ticket_id):
        t = tickets.tag_root_causes(
            session, merchant_id, ticket_id, body.root_cause_tags, actor=actor(caller), clock=clock
        )
    return TicketOut.of(t)


@router.post(
    "/tickets/{ticket_id}/resolve",
    response_model=TicketOut,
    tags=["tickets"],
    summary="Resolve a ticket (optionally tagging root causes)",
    description="Only after a first response (409 `invalid_transition` otherwise).",
)
def resolve_ticket(
    ticket_id: ObjectId,
    session: SessionDep,
    caller: Staff,
    clock: ClockDep,
    after_commit: AfterCommit,
    body: TicketResolveBody | None = None,
) -> TicketOut:
    merchant_id = _ticket_merchant(session, caller, ticket_id)
    with crm_errors("ticket", ticket_id):
        if body is not None and body.root_cause_tags is not None:
            tickets.tag_root_causes(
                session,
                merchant_id,
                ticket_id,
                body.root_cause_tags,
                actor=actor(caller),
                clock=clock,
            )
        t = tickets.resolve(session, merchant_id, ticket_id, actor=actor(caller), clock=clock)
    return TicketOut.of(t)


def emit_feedback_events(
    session: Session,
    merchant_id: int,
    out: FeedbackOut,
    ticket: Ticket | None,
    event_type: Literal["feedback.received", "feedback.updated"] = "feedback.received",
) -> None:
    """``event_type`` (and ``ticket.opened`` when the answer opened ``ticket``), in the outbox.

    The event says whether there is a comment, not what it says: outbox rows are kept for
    redelivery, and a contact's erasure must not leave their words behind in one (the API's
    ``GET /v1/feedback/{id}`` serves the text while the contact's key exists)."""
    payload = out.model_dump(mode="json", exclude={"comment"})
    payload["has_comment"] = out.comment is not None
    enqueue(session, str(merchant_id), event_type, payload)
    if ticket is not None:
        enqueue(
            session, str(merchant_id), "ticket.opened", TicketOut.of(ticket).model_dump(mode="json")
        )
