"""Follow-up policies: a merchant's rules per trigger (delay, channel order, segment rules,
frequency cap, send window, expiry), and the channel order a policy gives a contact.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from crm.audit import service as audit
from crm.clock import Clock
from crm.contacts.models import ContactTraits
from crm.enums import Channel, Purpose, Trigger, parse_choice
from crm.errors import DuplicatePolicy, InvalidPolicy, PolicyNotFound
from crm.followups import repository as repo
from crm.followups.models import FollowUpPolicy, FollowUpPolicyCreate, FollowUpPolicyUpdate
from crm.merchants import service as merchants

__all__ = [
    "choose_channels",
    "create_policy",
    "get_policy",
    "list_policies",
    "update_policy",
]

_RULE_FIELDS = ("tier", "segment")


def _validate_policy(data: dict[str, Any]) -> None:
    parse_choice(Trigger, data["trigger"], "trigger")
    parse_choice(Purpose, data["purpose"], "purpose")
    order = data["channel_order"]
    if not order:
        raise InvalidPolicy(
            "a policy needs a non-personalised default channel order",
            code="policy_missing_default",
            param="channel_order",
        )
    for c in order:
        parse_choice(Channel, c, "channel")
    for rule in data["segment_rules"]:
        if (
            not isinstance(rule, dict)
            or rule.get("field", "tier") not in _RULE_FIELDS
            or not isinstance(rule.get("equals"), str)
            or not isinstance(rule.get("channels"), list)
            or not rule["channels"]
            or not all(isinstance(c, str) for c in rule["channels"])
        ):
            raise InvalidPolicy(
                "segment rule needs field (tier|segment), equals and channels",
                code="invalid_segment_rule",
                param="segment_rules",
            )
        for c in rule["channels"]:
            parse_choice(Channel, c, "channel")
    for name in ("delay_minutes", "frequency_cap_days", "reward_points"):
        if int(data[name]) < 0:
            raise InvalidPolicy(f"{name} must be >= 0", code=f"invalid_{name}", param=name)
    if int(data["expiry_days"]) < 1 or int(data["periodic_after_days"]) < 1:
        raise InvalidPolicy("expiry and period must be >= 1 day", code="invalid_expiry_days")
    start, end = int(data["window_start_minute"]), int(data["window_end_minute"])
    if not 0 <= start < end <= 24 * 60:
        raise InvalidPolicy(
            "send window must satisfy 0 <= start < end <= 1440",
            code="invalid_send_window",
            param="window_start_minute",
        )


def create_policy(
    session: Session, merchant_id: int, data: FollowUpPolicyCreate, *, actor: str, clock: Clock
) -> FollowUpPolicy:
    merchants.get_merchant(session, merchant_id)
    values = data.model_dump()
    _validate_policy(values)
    duplicate = DuplicatePolicy("merchant already has a policy for this trigger")
    if repo.get_policy(session, merchant_id, values["trigger"]) is not None:
        raise duplicate
    now = clock.now()
    row = FollowUpPolicy(**values, merchant_id=merchant_id, created_at=now, updated_at=now)
    try:  # a concurrent creation commits first: its unique index refuses this one
        with session.begin_nested():
            policy = repo.save_policy(session, row)
    except IntegrityError:
        raise duplicate from None
    audit.record(
        session,
        actor=actor,
        action="policy.created",
        object_type="followup_policy",
        object_id=policy.id or 0,
        at=now,
        merchant_id=merchant_id,
    )
    return policy


def list_policies(session: Session, merchant_id: int) -> list[FollowUpPolicy]:
    merchants.get_merchant(session, merchant_id)
    return list(repo.list_policies(session, merchant_id))


def get_policy(session: Session, merchant_id: int, policy_id: int) -> FollowUpPolicy:
    policy = repo.get_policy_by_id(session, merchant_id, policy_id)
    if policy is None:
        raise PolicyNotFound("no such policy", param="policy_id")
    return policy


def update_policy(
    session: Session,
    merchant_id: int,
    policy_id: int,
    data: FollowUpPolicyUpdate,
    *,
    actor: str,
    clock: Clock,
) -> FollowUpPolicy:
    policy = repo.get_policy_by_id(session, merchant_id, policy_id)
    if policy is None:
        raise PolicyNotFound("no such policy", param="policy_id")
    changes = {k: v for k, v in data.model_dump(exclude_unset=True).items() if v is not None}
    merged = policy.model_dump()
    merged.update(changes)
    _validate_policy(merged)
    for k, v in changes.items():
        setattr(policy, k, v)
    policy.updated_at = clock.now()
    repo.save_policy(session, policy)
    audit.record(
        session,
        actor=actor,
        action="policy.updated",
        object_type="followup_policy",
        object_id=policy_id,
        at=policy.updated_at,
        merchant_id=merchant_id,
        detail={"fields": sorted(changes)},
    )
    return policy


def choose_channels(policy: FollowUpPolicy, contact: ContactTraits) -> list[str]:
    """Segment rule first (if the contact accepts personalisation), default order as fallback."""
    order = list(policy.channel_order)
    if contact.personalised:
        for rule in policy.segment_rules:
            if getattr(contact, rule.get("field", "tier"), None) == rule["equals"]:
                return list(dict.fromkeys([*rule["channels"], *order]))
    return order
