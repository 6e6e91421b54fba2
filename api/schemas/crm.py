"""Bodies of /v1/merchants, /v1/contacts (+ consents, export, erase), /v1/audit_log,
/v1/followups, /v1/feedback, /v1/tickets and /v1/metrics.

Ids of CRM objects are integers; ``merchant_id`` is the merchant's id as a string (as on API keys).
Timestamps are ISO-8601 UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from api.dispatch.channels import CONTROL_CHARACTERS
from api.operators import OperatorKeys
from api.settlement.models import MerchantAccount
from crm.audit.models import AuditLog
from crm.consent.models import ConsentEvent
from crm.contacts.models import ContactPublic
from crm.enums import Channel, ConsentAction, LegalBasis, Purpose
from crm.feedback.models import FeedbackPublic
from crm.followups.models import FollowUp
from crm.merchants.models import Merchant
from crm.privacy.models import ErasureLog
from crm.tickets.models import Ticket

__all__ = [
    "AccountLinkMessageOut",
    "AuditEntryPublic",
    "ConsentChange",
    "ConsentEventOut",
    "ConsentHistory",
    "ConsentStateOut",
    "ContactCreateBody",
    "ContactExport",
    "ContactOut",
    "ContactUpdateBody",
    "EraseBody",
    "ErasureOut",
    "FeedbackOut",
    "FollowUpDetailOut",
    "FollowUpEventOut",
    "FollowUpOut",
    "MerchantAccountBody",
    "MerchantAccountOut",
    "MerchantCreateBody",
    "MerchantOut",
    "MetricsOut",
    "Reconciliation",
    "ReconciliationRow",
    "RootCause",
    "TicketAssignBody",
    "TicketOut",
    "TicketResolveBody",
    "TicketTagBody",
    "WalletAddBody",
]

_ADDRESS = r"^0x[0-9a-fA-F]{40}$"
_TAG = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,47}$"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------ merchants


class MerchantCreateBody(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "Acme"}]})

    name: str = Field(
        min_length=1,
        max_length=200,
        pattern=r"\S",
        description="Display name (the From name and subject of follow-up e-mails): no control "
        "characters such as line breaks or tabs.",
    )

    @field_validator("name")
    @classmethod
    def _fits_a_header(cls, value: str) -> str:
        if CONTROL_CHARACTERS.search(value):
            raise PydanticCustomError(
                "control_characters", "must not contain control characters such as line breaks"
            )
        return value


class MerchantOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "42",
                    "object": "merchant",
                    "name": "Acme",
                    "created_at": "2026-01-01T12:00:00Z",
                }
            ]
        }
    )

    id: str = Field(description="The merchant id (what API keys carry as `merchant_id`).")
    object: Literal["merchant"] = "merchant"
    name: str
    created_at: datetime

    @classmethod
    def of(cls, m: Merchant) -> MerchantOut:
        return cls(id=str(m.id), name=m.name, created_at=m.created_at)


class MerchantAccountBody(_Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "address": "0x1111111111111111111111111111111111111111",
                    "payout": "0x2222222222222222222222222222222222222222",
                    "operator": "0x3333333333333333333333333333333333333333",
                }
            ]
        },
    )

    address: str = Field(pattern=_ADDRESS, description="The merchant address on the router.")
    payout: str = Field(pattern=_ADDRESS, description="Where settled funds go.")
    operator: str = Field(pattern=_ADDRESS, description="The key that signs payment intents.")
    proof_signature: str | None = Field(
        default=None,
        pattern=r"^0x[0-9a-fA-F]{130}$",
        description="EIP-191 `personal_sign` by `address` of the text from `GET "
        "/v1/merchants/{id}/account/link_message`. Needed only to reclaim an address another "
        "merchant recorded first (`409 account_address_taken`); checked whenever given.",
    )
    proof_valid_until: int | None = Field(
        default=None,
        ge=0,
        description="The `valid_until` (Unix seconds) named in the signed text; with "
        "`proof_signature` only.",
    )


class AccountLinkMessageOut(BaseModel):
    object: Literal["account_link_message"] = "account_link_message"
    merchant_id: str
    chain_id: int
    address: str
    valid_until: int = Field(description="Unix seconds; the proof is refused after it.")
    message: str = Field(
        description="The exact text `address` signs with EIP-191 `personal_sign` "
        "(e.g. `followpay wallet sign-message`, `cast wallet sign`, a browser wallet)."
    )


class MerchantAccountOut(BaseModel):
    object: Literal["merchant_account"] = "merchant_account"
    merchant_id: str
    chain_id: int
    address: str
    payout: str
    operator: str
    signer_available: bool = Field(
        description="Whether this server holds a signer for the operator (needed to create "
        "invoices)."
    )
    created_at: datetime

    @classmethod
    def of(cls, account: MerchantAccount, signers: OperatorKeys) -> MerchantAccountOut:
        """``signers``: the operator keys this server holds (a key bound to another merchant
        does not sign for this one)."""
        return cls(
            merchant_id=str(account.merchant_id),
            chain_id=account.chain_id,
            address=account.address,
            payout=account.payout,
            operator=account.operator,
            signer_available=signers.for_merchant(account.merchant_id, account.operator)
            is not None,
            created_at=account.created_at,
        )


# ------------------------------------------------------------------------------------- contacts


class ContactCreateBody(_Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Ada Lovelace",
                    "email": "ada@example.com",
                    "time_zone": "Europe/London",
                    "wallet_addresses": ["0x4444444444444444444444444444444444444444"],
                }
            ]
        },
    )

    merchant_id: str | None = Field(
        default=None, min_length=1, max_length=64, description="Admin keys only."
    )
    name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=254)
    phone: str | None = Field(default=None, max_length=32, description="E.164, e.g. +4420…")
    wallet_addresses: list[str] = Field(default_factory=list, max_length=20)
    locale: str | None = Field(default=None, max_length=35)
    time_zone: str = Field(default="UTC", min_length=1, max_length=64, description="IANA zone.")
    segment: str | None = Field(default=None, max_length=64)
    tier: str | None = Field(default=None, max_length=32)
    personalised: bool = Field(default=True, description="False: only non-personalised follow-ups.")


class ContactUpdateBody(_Body):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"time_zone": "Asia/Shanghai"}]}
    )

    name: str | None = Field(default=None, max_length=200)
    email: str | None = Field(default=None, max_length=254)
    phone: str | None = Field(default=None, max_length=32)
    locale: str | None = Field(default=None, max_length=35)
    time_zone: str | None = Field(default=None, min_length=1, max_length=64)
    segment: str | None = Field(default=None, max_length=64)
    tier: str | None = Field(default=None, max_length=32)
    personalised: bool | None = None


class WalletAddBody(_Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"address": "0x5555555555555555555555555555555555555555"}]},
    )

    address: str = Field(min_length=1, max_length=64, description="A 0x-prefixed address.")


class ContactOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 7,
                    "object": "contact",
                    "merchant_id": "42",
                    "name": "Ada Lovelace",
                    "email": "ada@example.com",
                    "phone": None,
                    "wallet_addresses": ["0x4444444444444444444444444444444444444444"],
                    "locale": None,
                    "time_zone": "Europe/London",
                    "segment": None,
                    "tier": None,
                    "personalised": True,
                    "erased": False,
                    "created_at": "2026-01-01T12:00:00Z",
                }
            ]
        }
    )

    id: int
    object: Literal["contact"] = "contact"
    merchant_id: str
    name: str | None
    email: str | None
    phone: str | None
    wallet_addresses: list[str]
    locale: str | None
    time_zone: str
    segment: str | None
    tier: str | None
    personalised: bool
    erased: bool = Field(description="Erased contacts keep only pseudonymised payment records.")
    created_at: datetime

    @classmethod
    def of(cls, c: ContactPublic) -> ContactOut:
        return cls(
            id=c.id,
            merchant_id=str(c.merchant_id),
            name=c.name,
            email=c.email,
            phone=c.phone,
            wallet_addresses=list(c.wallet_addresses),
            locale=c.locale,
            time_zone=c.time_zone,
            segment=c.segment,
            tier=c.tier,
            personalised=c.personalised,
            erased=c.erased,
            created_at=c.created_at,
        )


# ------------------------------------------------------------------------------------- consents


class ConsentChange(_Body):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"action": "grant", "purpose": "service_followup", "channel": "email"},
                {"action": "withdraw", "purpose": "marketing"},
                {"action": "object", "purpose": "marketing"},
            ]
        },
    )

    action: ConsentAction = Field(description="grant, withdraw or object (Art. 21).")
    purpose: Purpose
    channel: Channel | None = Field(
        default=None,
        description="Required for a grant; omitted on withdraw/object it covers every channel.",
    )
    legal_basis: LegalBasis | None = Field(
        default=None, description="Defaults: consent (grant/withdraw), legitimate_interest."
    )
    policy_version: str = Field(default="1", min_length=1, max_length=32)
    source: str = Field(default="api", min_length=1, max_length=64)


class ConsentEventOut(BaseModel):
    id: int
    object: Literal["consent_event"] = "consent_event"
    contact_id: int
    seq: int
    action: str
    purpose: str
    channel: str | None
    legal_basis: str
    policy_version: str
    source: str
    actor: str
    occurred_at: datetime
    prev_hash: str = Field(description="The previous entry's hash (64 zeros for the first).")
    hash: str = Field(description="SHA-256 of this entry's canonical JSON and prev_hash.")

    @classmethod
    def of(cls, e: ConsentEvent) -> ConsentEventOut:
        return cls(
            id=e.id or 0,
            contact_id=e.contact_id,
            seq=e.seq,
            action=e.action,
            purpose=e.purpose,
            channel=e.channel,
            legal_basis=e.legal_basis,
            policy_version=e.policy_version,
            source=e.source,
            actor=e.actor,
            occurred_at=e.occurred_at,
            prev_hash=e.prev_hash,
            hash=e.hash,
        )


class ConsentStateOut(BaseModel):
    purpose: str
    channel: str
    state: str = Field(description="granted, withdrawn or objected.")
    updated_at: datetime | None = None


class ChainVerification(BaseModel):
    ok: bool = Field(
        description="Every hash and link recomputed, the state matches the ledger's replay and "
        "the sealed head names the last entry."
    )
    length: int
    head_hash: str | None = Field(description="The last entry's hash: a commitment to it all.")
    broken_at_seq: int | None
    seal: str = Field(
        description="The sealed head: `valid`, `empty` (no ledger), `unsealed` (written before "
        "sealing, sealed at the next upgrade or append), `missing`, `stale`, `invalid` or "
        "`flagged` (the last three: entries removed or rewritten)."
    )
    problems: list[str] = Field(description="One line per failed check (empty when `ok`).")


class ConsentHistory(BaseModel):
    object: Literal["consent_history"] = "consent_history"
    contact_id: int
    events: list[ConsentEventOut] = Field(description="The ledger, oldest first.")
    state: list[ConsentStateOut] = Field(description="The current projection.")
    verification: ChainVerification


class ContactExport(BaseModel):
    object: Literal["contact_export"] = "contact_export"
    contact_id: int
    generated_at: datetime
    data: dict[str, Any] = Field(
        description="Everything held about the contact (GDPR Art. 15/20), decrypted."
    )


class EraseBody(_Body):
    request_ref: str | None = Field(
        default=None, max_length=128, description="Your reference for the erasure request."
    )


class ErasureOut(BaseModel):
    object: Literal["erasure"] = "erasure"
    id: int
    contact_id: int
    erased_at: datetime
    request_ref: str | None
    summary: dict[str, Any] = Field(description="What was destroyed and what was retained.")

    @classmethod
    def of(cls, log: ErasureLog) -> ErasureOut:
        return cls(
            id=log.id or 0,
            contact_id=log.contact_id,
            erased_at=log.erased_at,
            request_ref=log.request_ref,
            summary=dict(log.summary),
        )


# ------------------------------------------------------------------------------------ audit log


class AuditEntryPublic(BaseModel):
    id: int
    object: Literal["audit_entry"] = "audit_entry"
    merchant_id: str | None
    actor: str
    action: str
    object_type: str
    object_id: str
    at: datetime
    detail: dict[str, Any]

    @classmethod
    def of(cls, a: AuditLog) -> AuditEntryPublic:
        return cls(
            id=a.id or 0,
            merchant_id=None if a.merchant_id is None else str(a.merchant_id),
            actor=a.actor,
            action=a.action,
            object_type=a.object_type,
            object_id=a.object_id,
            at=a.at,
            detail=dict(a.detail or {}),
        )


# ------------------------------------------------------------------- follow-ups, feedback, SLA


class FollowUpOut(BaseModel):
    id: int
    object: Literal["followup"] = "followup"
    merchant_id: str
    contact_id: int
    kind: str
    purpose: str
    invoice_id: str
    payment_ref: str
    channel: str | None
    state: str
    suppression_reason: str | None = Field(description="Why it was suppressed (if it was).")
    due_at: datetime
    expires_at: datetime
    sent_at: datetime | None
    responded_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, f: FollowUp) -> FollowUpOut:
        return cls(
            id=f.id or 0,
            merchant_id=str(f.merchant_id),
            contact_id=f.contact_id,
            kind=f.kind,
            purpose=f.purpose,
            invoice_id=f.invoice_ref,
            payment_ref=f.payment_ref,
            channel=f.channel,
            state=f.state,
            suppression_reason=f.reason,
            due_at=f.due_at,
            expires_at=f.expires_at,
            sent_at=f.sent_at,
            responded_at=f.responded_at,
            created_at=f.created_at,
        )


class FeedbackOut(BaseModel):
    id: int
    object: Literal["feedback"] = "feedback"
    merchant_id: str
    contact_id: int
    followup_id: int
    rating: int | None
    nps: int | None
    tags: list[str]
    comment: str | None
    submitted_at: datetime | None
    edit_until: datetime | None
    ticket_id: int | None = None

    @classmethod
    def of(cls, f: FeedbackPublic, ticket_id: int | None = None) -> FeedbackOut:
        return cls(
            id=f.id,
            merchant_id=str(f.merchant_id),
            contact_id=f.contact_id,
            followup_id=f.followup_id,
            rating=f.rating,
            nps=f.nps,
            tags=list(f.tags),
            comment=f.comment,
            submitted_at=f.submitted_at,
            edit_until=f.edit_until,
            ticket_id=ticket_id if ticket_id is not None else f.ticket_id,
        )


class FollowUpEventOut(BaseModel):
    at: datetime
    from_state: str | None
    to_state: str
    reason: str | None = Field(description="e.g. no_consent, quiet_hours, retry, chain_reorg.")
    detail: str | None = Field(description="`deferred` for a hold; a delivery error's summary.")


class FollowUpDetailOut(FollowUpOut):
    events: list[FollowUpEventOut] = Field(description="The follow-up's log, oldest first.")


class TicketOut(BaseModel):
    id: int
    object: Literal["ticket"] = "ticket"
    merchant_id: str
    feedback_id: int
    contact_id: int
    state: str = Field(description="open, assigned, responded or resolved.")
    assignee: str | None
    root_cause_tags: list[str]
    opened_at: datetime
    due_at: datetime = Field(description="First-response SLA deadline (opened + 24 h).")
    first_response_at: datetime | None
    resolved_at: datetime | None
    breached_at: datetime | None
    sla_breached: bool

    @classmethod
    def of(cls, t: Ticket) -> TicketOut:
        return cls(
            id=t.id or 0,
            merchant_id=str(t.merchant_id),
            feedback_id=t.feedback_id,
            contact_id=t.contact_id,
            state=t.state,
            assignee=t.assignee,
            root_cause_tags=list(t.root_cause_tags or []),
            opened_at=t.opened_at,
            due_at=t.due_at,
            first_response_at=t.first_response_at,
            resolved_at=t.resolved_at,
            breached_at=t.breached_at,
            sla_breached=t.breached_at is not None
            or (t.first_response_at is not None and t.first_response_at > t.due_at),
        )


class TicketAssignBody(_Body):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"assignee": "agent-7"}]}
    )

    assignee: str = Field(min_length=1, max_length=128, description="Staff handle (no e-mail).")


class TicketTagBody(_Body):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"root_cause_tags": ["late_delivery"]}]}
    )

    root_cause_tags: list[str] = Field(max_length=10, description="Lowercase slugs.")


class TicketResolveBody(_Body):
    root_cause_tags: list[str] | None = Field(
        default=None, max_length=10, description="Set the root causes while resolving."
    )


class RootCause(BaseModel):
    tag: str
    count: int


class MetricsOut(BaseModel):
    object: Literal["metrics"] = "metrics"
    merchant_id: str
    start: datetime
    end: datetime
    csat: float | None = Field(description="% of ratings that are 4 or 5 (null: no ratings).")
    nps: float | None = Field(description="% promoters (9-10) minus % detractors (0-6).")
    response_rate: float | None = Field(description="% of sent follow-ups answered.")
    sla_hit_rate: float | None = Field(description="% of tickets answered within 24 h.")
    rating_responses: int
    nps_responses: int
    sent: int
    responded: int
    top_root_causes: list[RootCause]
    suppressions: dict[str, int] = Field(description="Suppressed follow-ups by reason.")


class ReconciliationRow(BaseModel):
    invoice_id: str
    order_id: str
    merchant_id: str
    invoice_state: str
    invoice_status: str
    token: str
    decimals: int | None = Field(
        description="Null for a token other than the server's configured one: base units only."
    )
    amount: str
    paid_amount: str
    refunded_amount: str
    fee: str = Field(description="The router's fee on the invoice's payments on chain.")
    net_amount: str = Field(
        description="paid_amount - fee - refunded_amount: what reached the payout address, "
        "less refunds (negative when a full refund also gave back the fee)."
    )
    created_at: datetime
    settled_at: datetime | None
    tx_hash: str | None
    block_number: int | None
    log_index: int | None
    payment_state: str | None
    contact_id: int | None
    followup_id: int | None
    followup_state: str | None
    feedback_id: int | None
    rating: int | None
    nps: int | None


class Reconciliation(BaseModel):
    object: Literal["reconciliation"] = "reconciliation"
    start: datetime
    end: datetime
    truncated: bool = Field(description="More than 10,000 invoices: narrow the period.")
    data: list[ReconciliationRow]
