"""FollowPay CRM: contacts, consent ledger, follow-ups, feedback, SLA tickets, rewards, privacy.

The off-chain half of FollowPay. It never imports ``wallet``, ``api`` or web3: payments are opaque
``payment_ref`` strings with integer minor-unit amounts. Services take a SQLModel ``Session`` and a
:class:`~crm.clock.Clock`, never commit, and raise :class:`~crm.errors.CRMError` subclasses.
"""

from __future__ import annotations

from crm import models as models
from crm.audit import service as audit
from crm.clock import Clock, FrozenClock, SystemClock
from crm.consent import service as consent
from crm.contacts import service as contacts
from crm.contacts.models import ContactCreate, ContactPublic, ContactUpdate
from crm.crypto import KeyRing
from crm.db import current_revision, make_engine, session_scope, upgrade
from crm.enums import (
    Channel,
    ConsentAction,
    ConsentStatus,
    FollowUpState,
    LegalBasis,
    Purpose,
    SuppressionReason,
    TicketState,
    Trigger,
)
from crm.errors import (
    Conflict,
    CRMError,
    InvalidRequest,
    NotFound,
)
from crm.feedback import service as feedback
from crm.feedback.models import FeedbackCreate, FeedbackPublic, FeedbackUpdate
from crm.followups import service as followups
from crm.followups.dispatch import SendInstruction
from crm.followups.models import FollowUpPolicyCreate, FollowUpPolicyUpdate
from crm.merchants import service as merchants
from crm.merchants.models import MerchantCreate
from crm.metrics import service as metrics
from crm.metrics.service import MerchantMetrics
from crm.privacy import service as privacy
from crm.rewards import service as rewards
from crm.tickets import service as tickets

__all__ = [
    "CRMError",
    "Channel",
    "Clock",
    "Conflict",
    "ConsentAction",
    "ConsentStatus",
    "ContactCreate",
    "ContactPublic",
    "ContactUpdate",
    "FeedbackCreate",
    "FeedbackPublic",
    "FeedbackUpdate",
    "FollowUpPolicyCreate",
    "FollowUpPolicyUpdate",
    "FollowUpState",
    "FrozenClock",
    "InvalidRequest",
    "KeyRing",
    "LegalBasis",
    "MerchantCreate",
    "MerchantMetrics",
    "NotFound",
    "Purpose",
    "SendInstruction",
    "SuppressionReason",
    "SystemClock",
    "TicketState",
    "Trigger",
    "audit",
    "consent",
    "contacts",
    "current_revision",
    "feedback",
    "followups",
    "make_engine",
    "merchants",
    "metrics",
    "models",
    "privacy",
    "rewards",
    "session_scope",
    "tickets",
    "upgrade",
]
