"""Shared builders for CRM tests (not fixtures: plain functions)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from crm import KeyRing
from crm.clock import FrozenClock
from crm.consent import service as consent
from crm.contacts.models import Contact
from crm.followups import dispatch as followups_dispatch
from crm.followups import policies as followups_policies
from crm.followups import service as followups
from crm.followups.models import FollowUp, FollowUpPolicyCreate

__all__ = ["sent_followup"]

#: The key ring of the CRM tests (the ``keyring`` fixture); for helpers that take no fixtures.
KEYRING = KeyRing(b"k" * 32)


def sent_followup(
    session: Session,
    merchant_id: int,
    contact: Contact,
    clock: FrozenClock,
    keyring: KeyRing,
    ref: str = "p1",
    **policy_kw: Any,
) -> tuple[FollowUp, str]:
    """Policy (if missing), consent, payment, claim, prepare, mark_sent: (follow-up, token)."""
    from crm.followups import repository

    if repository.get_policy(session, merchant_id, "payment_settled") is None:
        policy_kw.setdefault("delay_minutes", 0)
        policy_kw.setdefault("frequency_cap_days", 0)
        followups_policies.create_policy(
            session, merchant_id, FollowUpPolicyCreate(**policy_kw), actor="admin", clock=clock
        )
    assert contact.id is not None
    if not consent.may_contact(session, contact.id, "service_followup", "email"):
        consent.grant(
            session,
            merchant_id,
            contact.id,
            "service_followup",
            "email",
            actor="contact",
            clock=clock,
            keyring=keyring,
        )
    [fu] = followups.schedule_for_payment(
        session, merchant_id, contact.id, ref, f"inv-{ref}", 1000, "USDC", clock.now(), clock
    )
    assert fu.id is not None
    assert fu.id in followups_dispatch.claim_due(session, clock.now(), 100, "w")
    send = followups_dispatch.prepare_send(session, fu.id, clock.now(), keyring)
    assert send is not None
    return followups_dispatch.mark_sent(session, fu.id, clock.now()), send.token
