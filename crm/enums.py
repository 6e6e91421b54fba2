"""Closed vocabularies of the CRM (stored as short strings) and a strict parser."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from crm.errors import InvalidChoice

__all__ = [
    "Channel",
    "ConsentAction",
    "ConsentStatus",
    "FollowUpKind",
    "FollowUpState",
    "LegalBasis",
    "Purpose",
    "SuppressionReason",
    "TicketState",
    "Trigger",
    "parse_choice",
]


class Purpose(StrEnum):
    SERVICE_FOLLOWUP = "service_followup"
    MARKETING = "marketing"
    RESEARCH = "research"


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"
    IN_APP = "in_app"
    PHONE = "phone"
    WEBHOOK = "webhook"


class ConsentAction(StrEnum):
    GRANT = "grant"
    WITHDRAW = "withdraw"
    OBJECT = "object"


class ConsentStatus(StrEnum):
    GRANTED = "granted"
    WITHDRAWN = "withdrawn"
    OBJECTED = "objected"


class LegalBasis(StrEnum):
    CONSENT = "consent"
    LEGITIMATE_INTEREST = "legitimate_interest"
    CONTRACT = "contract"
    LEGAL_OBLIGATION = "legal_obligation"


class Trigger(StrEnum):
    PAYMENT_SETTLED = "payment_settled"
    PERIODIC = "periodic"


FollowUpKind = Trigger


class FollowUpState(StrEnum):
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENT = "sent"
    RESPONDED = "responded"
    SUPPRESSED = "suppressed"
    EXPIRED = "expired"
    FAILED = "failed"
    CANCELLED = "cancelled"


class SuppressionReason(StrEnum):
    NO_CONSENT = "no_consent"
    QUIET_HOURS = "quiet_hours"
    FREQUENCY_CAP = "frequency_cap"
    ERASED = "erased"
    #: the contact's stored zone no longer resolves (tzdata dropped it): quiet hours unknown
    UNKNOWN_TIME_ZONE = "unknown_time_zone"


class TicketState(StrEnum):
    OPEN = "open"
    ASSIGNED = "assigned"
    RESPONDED = "responded"
    RESOLVED = "resolved"


E = TypeVar("E", bound=StrEnum)


def parse_choice(enum: type[E], value: object, param: str) -> E:
    """Coerce ``value`` to ``enum`` or raise :class:`InvalidChoice` (code ``invalid_<param>``)."""
    if isinstance(value, enum):
        return value
    try:
        return enum(str(value))
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise InvalidChoice(
            f"unknown {param}; expected one of: {allowed}", code=f"invalid_{param}", param=param
        ) from None
