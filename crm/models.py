"""Import every table so ``SQLModel.metadata`` (and Alembic) see the whole CRM schema."""

from __future__ import annotations

from crm.audit.models import AuditLog
from crm.consent.models import ConsentEvent, ConsentHead, ConsentState
from crm.contacts.models import Contact, ContactKey, ContactWallet
from crm.feedback.models import Feedback
from crm.followups.models import FollowUp, FollowUpEvent, FollowUpPolicy, Purchase
from crm.merchants.models import Merchant
from crm.privacy.models import ErasureLog
from crm.rewards.models import RewardEntry
from crm.tickets.models import Ticket, TicketEvent

__all__ = [
    "TABLES",
    "AuditLog",
    "ConsentEvent",
    "ConsentHead",
    "ConsentState",
    "Contact",
    "ContactKey",
    "ContactWallet",
    "ErasureLog",
    "Feedback",
    "FollowUp",
    "FollowUpEvent",
    "FollowUpPolicy",
    "Merchant",
    "Purchase",
    "RewardEntry",
    "Ticket",
    "TicketEvent",
]

TABLES = [
    m.__table__  # type: ignore[attr-defined,union-attr]
    for m in (
        Merchant,
        Contact,
        ContactKey,
        ContactWallet,
        ConsentEvent,
        ConsentState,
        ConsentHead,
        FollowUpPolicy,
        Purchase,
        FollowUp,
        FollowUpEvent,
        Feedback,
        Ticket,
        TicketEvent,
        RewardEntry,
        AuditLog,
        ErasureLog,
    )
]
