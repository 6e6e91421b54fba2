"""/v1/contacts: CRUD, wallet addresses, the consent ledger, GDPR export and erasure.

Every POST about a contact names it on its stored idempotent response, which erasure then
destroys (:func:`api.idempotency.forget_contact`); a withdrawal or objection cancels, in its
transaction, the contact's open phone calls it no longer allows."""

from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import Path, Query, Request
from sqlmodel import Session

from api import privacy as api_privacy
from api import queries
from api.deps import AfterCommit, ClockDep, KeyRingDep, SessionDep
from api.dispatch import phone_tasks
from api.errors import Forbidden
from api.keys.service import AuthenticatedKey
from api.pagination import MAX_ID, ListResponse, PageDep, paginate
from api.routes._common import (
    Manager,
    Staff,
    actor,
    crm_errors,
    merchant_scope,
    object_merchant,
    response_concerns,
    write_merchant,
)
from api.routing import ApiRouter
from api.schemas.crm import (
    ChainVerification,
    ConsentChange,
    ConsentEventOut,
    ConsentHistory,
    ConsentStateOut,
    ContactCreateBody,
    ContactExport,
    ContactOut,
    ContactUpdateBody,
    EraseBody,
    ErasureOut,
    WalletAddBody,
)
from api.webhooks import enqueue
from crm import (
    ConsentAction,
    ContactCreate,
    ContactUpdate,
    KeyRing,
    audit,
    consent,
    contacts,
)
from crm.contacts.models import Contact
from crm.db import truncate_wal

__all__ = ["router"]

router = ApiRouter(prefix="/contacts", tags=["contacts"])

ContactId = Annotated[int, Path(ge=1, le=MAX_ID, description="A contact id.")]


def _merchant(session: Session, caller: AuthenticatedKey, contact_id: int) -> int:
    return object_merchant(session, caller, Contact, contact_id, what="contact")


def _load(session: Session, caller: AuthenticatedKey, contact_id: int) -> tuple[int, Contact]:
    merchant_id = _merchant(session, caller, contact_id)
    with crm_errors("contact", contact_id):
        return merchant_id, contacts.get_contact(session, merchant_id, contact_id)


def _out(session: Session, contact: Contact, keyring: KeyRing) -> ContactOut:
    return ContactOut.of(contacts.to_public(session, contact, keyring))


@router.post(
    "",
    response_model=ContactOut,
    summary="Create a contact",
    description="Personal fields (name, e-mail, phone, wallets) are encrypted under a per-contact "
    "data key. A contact has no consent until one is granted (`POST /v1/contacts/{id}/consents`).",
)
def create_contact(
    body: ContactCreateBody,
    session: SessionDep,
    caller: Manager,
    keyring: KeyRingDep,
    clock: ClockDep,
) -> ContactOut:
    merchant_id = write_merchant(caller, body.merchant_id)
    data = ContactCreate(**body.model_dump(exclude={"merchant_id"}))
    with crm_errors("merchant", merchant_id):
        contact = contacts.create_contact(session, merchant_id, data, keyring, clock)
    response_concerns(contact.id or 0)
    audit.record(
        session,
        actor=actor(caller),
        action="contact.created",
        object_type="contact",
        object_id=contact.id or 0,
        at=clock.now(),
        merchant_id=merchant_id,
    )
    return _out(session, contact, keyring)


@router.get("", response_model=ListResponse[ContactOut], summary="List contacts")
def list_contacts(
    request: Request,
    session: SessionDep,
    caller: Staff,
    page: PageDep,
    keyring: KeyRingDep,
    merchant_id: Annotated[
        str | None, Query(min_length=1, max_length=20, description="Admins: one merchant.")
    ] = None,
) -> ListResponse[ContactOut]:
    rows, has_more = paginate(
        session,
        queries.contacts_select(merchant_scope(caller, merchant_id)),
        created_at=Contact.created_at,
        id=Contact.id,
        page=page,
    )
    return ListResponse[ContactOut](
        data=[_out(session, c, keyring) for c in rows], has_more=has_more, url=request.url.path
    )


@router.get("/{contact_id}", response_model=ContactOut, summary="Retrieve a contact")
def get_contact(
    contact_id: ContactId, session: SessionDep, caller: Staff, keyring: KeyRingDep
) -> ContactOut:
    _, contact = _load(session, caller, contact_id)
    return _out(session, contact, keyring)


@router.post("/{contact_id}", response_model=ContactOut, summary="Update a contact")
def update_contact(
    contact_id: ContactId,
    body: ContactUpdateBody,
    session: SessionDep,
    caller: Manager,
    keyring: KeyRingDep,
    clock: ClockDep,
) -> ContactOut:
    merchant_id = _merchant(session, caller, contact_id)
    response_concerns(contact_id)
    data = ContactUpdate(**body.model_dump(exclude_unset=True))
    with crm_errors("contact", contact_id):
        contact = contacts.update_contact(
            session, merchant_id, contact_id, data, keyring, clock, actor(caller)
        )
    if data.time_zone is not None:  # open call tasks follow the contact's clock
        phone_tasks.retime_for_contact(
            session, merchant_id, contact_id, contact.time_zone, clock.now()
        )
    return _out(session, contact, keyring)


@router.post(
    "/{contact_id}/wallet_addresses",
    response_model=ContactOut,
    summary="Add a wallet address to a contact",
    description="Payments from this address are attributed to the contact.",
)
def add_wallet_address(
    contact_id: ContactId,
    body: WalletAddBody,
    session: SessionDep,
    caller: Manager,
    keyring: KeyRingDep,
    clock: ClockDep,
) -> ContactOut:
    merchant_id = _merchant(session, caller, contact_id)
    response_concerns(contact_id)
    with crm_errors("contact", contact_id):
        contacts.add_wallet(session, merchant_id, contact_id, body.address, keyring, clock)
        contact = contacts.get_contact(session, merchant_id, contact_id)
    audit.record(  # no address in the detail: the log outlives an erasure
        session,
        actor=actor(caller),
        action="contact.wallet_added",
        object_type="contact",
        object_id=contact_id,
        at=clock.now(),
        merchant_id=merchant_id,
    )
    return _out(session, contact, keyring)


# ------------------------------------------------------------------------------------- consents


def consent_history(session: Session, contact_id: int, keyring: KeyRing) -> ConsentHistory:
    ledger = consent.read_verified(session, contact_id, keyring=keyring)
    events, states, report = ledger.events, ledger.states, ledger.report
    return ConsentHistory(
        contact_id=contact_id,
        events=[ConsentEventOut.of(e) for e in events],
        state=[
            ConsentStateOut(
                purpose=s.purpose, channel=s.channel, state=s.state, updated_at=s.updated_at
            )
            for s in states
        ],
        verification=ChainVerification(
            ok=report.ok,
            length=report.length,
            head_hash=events[-1].hash if events else None,
            broken_at_seq=report.broken_at_seq,
            seal=report.seal.value,
            problems=report.problems,
        ),
    )


@router.post(
    "/{contact_id}/consents",
    response_model=ConsentEventOut,
    summary="Record a consent decision (grant, withdraw, object)",
    description="Appends one entry to the contact's hash-chained ledger and updates the current "
    "state in the same transaction. A withdraw or objection without `channel` covers every "
    "channel; an objection stops pending follow-ups of that purpose at once. A withdrawal or "
    "objection also cancels the contact's open phone tasks it no longer allows (`outcome` "
    "`no_consent`). Support keys may record withdrawals and objections (never grants).",
)
def record_consent(
    contact_id: ContactId,
    body: ConsentChange,
    session: SessionDep,
    caller: Staff,
    clock: ClockDep,
    keyring: KeyRingDep,
    after_commit: AfterCommit,
) -> ConsentEventOut:
    if body.action is ConsentAction.GRANT and caller.role.value == "support":
        raise Forbidden("Support keys may record withdrawals and objections, not grants.")
    merchant_id = _merchant(session, caller, contact_id)
    response_concerns(contact_id)
    kwargs: dict[str, object] = {"policy_version": body.policy_version, "source": body.source}
    if body.legal_basis is not None:
        kwargs["legal_basis"] = body.legal_basis
    elif body.action is ConsentAction.OBJECT:
        kwargs["legal_basis"] = "legitimate_interest"
    with crm_errors("contact", contact_id):
        event = consent.record(
            session,
            merchant_id,
            contact_id,
            purpose=body.purpose,
            channel=body.channel,
            action=body.action,
            actor=actor(caller),
            clock=clock,
            keyring=keyring,
            **kwargs,  # type: ignore[arg-type]
        )
    if body.action is not ConsentAction.GRANT:
        phone_tasks.cancel_without_consent(
            session, merchant_id, contact_id, actor=actor(caller), clock=clock
        )
    out = ConsentEventOut.of(event)
    enqueue(session, str(merchant_id), "consent.changed", out.model_dump(mode="json"))
    return out


@router.get(
    "/{contact_id}/consents",
    response_model=ConsentHistory,
    summary="Consent ledger, current state and hash-chain verification",
    description="`verification.ok` is true when every entry's SHA-256 and link to its "
    "predecessor recompute, the current state is what the ledger replays to, and the sealed "
    "head (a MAC under the server's key) names the last entry; `problems` says what failed. "
    "`head_hash` commits to the whole history.",
)
def get_consents(
    contact_id: ContactId, session: SessionDep, caller: Staff, keyring: KeyRingDep
) -> ConsentHistory:
    _load(session, caller, contact_id)
    return consent_history(session, contact_id, keyring)


# ------------------------------------------------------------------------------------- privacy


@router.get(
    "/{contact_id}/export",
    response_model=ContactExport,
    summary="Export everything held about a contact (GDPR Art. 15/20)",
    description="Decrypted JSON: contact, consent ledger and state, purchases, follow-ups and "
    "tickets with their event logs, feedback, rewards, in-app messages (link tokens masked), "
    "phone tasks and their outcomes, invoices, the audit entries about them, erasure record. "
    "Audited. Not for support keys.",
)
def export_contact(
    contact_id: ContactId,
    session: SessionDep,
    caller: Manager,
    keyring: KeyRingDep,
    clock: ClockDep,
) -> ContactExport:
    merchant_id = _merchant(session, caller, contact_id)
    with crm_errors("contact", contact_id):
        data = api_privacy.export_contact(
            session, merchant_id, contact_id, keyring=keyring, actor=actor(caller), clock=clock
        )
    return ContactExport(contact_id=contact_id, generated_at=clock.now(), data=data)


@router.post(
    "/{contact_id}/erase",
    response_model=ErasureOut,
    summary="Erase a contact (crypto-shredding, GDPR Art. 17)",
    description="Destroys the contact's data key (every ciphertext becomes unreadable), scrubs "
    "blind indexes, suppresses pending follow-ups, cancels open phone tasks (`outcome` "
    "`erased`) and destroys stored idempotent responses about the contact (replaying one "
    "answers `409 contact_erased`); payment records stay, pseudonymised (Art. 17(3)(b)): "
    "invoices keep `contact_id`, the payer address and `metadata`. Idempotent: a second call "
    "returns the first erasure record.",
)
def erase_contact(
    contact_id: ContactId,
    session: SessionDep,
    caller: Manager,
    clock: ClockDep,
    after_commit: AfterCommit,
    body: EraseBody | None = None,
) -> ErasureOut:
    merchant_id = _merchant(session, caller, contact_id)
    # SQLite's WAL still holds the destroyed key's page images until it is checkpointed
    after_commit.append(partial(truncate_wal, session.get_bind()))
    with crm_errors("contact", contact_id):
        log = api_privacy.erase_contact(
            session,
            merchant_id,
            contact_id,
            actor=actor(caller),
            clock=clock,
            request_ref=body.request_ref if body is not None else None,
        )
    return ErasureOut.of(log)
