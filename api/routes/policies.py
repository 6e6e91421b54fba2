"""/v1/followup_policies: when, how and to whom a merchant follows up after a payment."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from api.deps import ClockDep, SessionDep
from api.errors import NotFound
from api.pagination import ListResponse
from api.routes._common import (
    Manager,
    Staff,
    actor,
    crm_errors,
    merchant_scope,
    object_merchant,
    parse_id,
    write_merchant,
)
from api.routing import ApiRouter
from crm import FollowUpPolicyCreate, FollowUpPolicyUpdate
from crm.followups import policies as followups_policies
from crm.followups.models import FollowUpPolicy

__all__ = ["PolicyBody", "PolicyOut", "PolicyUpdateBody", "router"]

router = ApiRouter(prefix="/followup_policies", tags=["followup_policies"])
PolicyId = Annotated[str, Path(max_length=20, description="A policy id, e.g. `3`.")]
_EXAMPLE: dict[str, Any] = {
    "trigger": "payment_settled",
    "delay_minutes": 1440,
    "channel_order": ["email", "in_app"],
    "segment_rules": [{"field": "tier", "equals": "vip", "channels": ["phone"]}],
    "frequency_cap_days": 30,
    "window_start_minute": 480,
    "window_end_minute": 1260,
    "expiry_days": 28,
}


class PolicyBody(BaseModel):
    """A policy. ``channel_order`` is the non-personalised default every segment rule falls
    back to; quiet hours are the contact's own local time (minutes after midnight)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_EXAMPLE]})

    merchant_id: str | None = Field(default=None, max_length=20, description="Admins only.")
    trigger: str = Field(default="payment_settled", max_length=32)
    purpose: str = Field(default="service_followup", max_length=32)
    delay_minutes: int = Field(default=24 * 60, ge=0, le=60 * 24 * 365)
    periodic_after_days: int = Field(default=30, ge=1, le=3650)
    channel_order: list[str] = Field(default_factory=lambda: ["email"], max_length=5)
    segment_rules: list[dict[str, Any]] = Field(default_factory=list, max_length=20)
    frequency_cap_days: int = Field(default=30, ge=0, le=3650)
    window_start_minute: int = Field(default=8 * 60, ge=0, le=1440)
    window_end_minute: int = Field(default=21 * 60, ge=0, le=1440)
    expiry_days: int = Field(default=28, ge=1, le=3650)
    reward_points: int = Field(default=10, ge=0, le=1_000_000)
    active: bool = True


class PolicyUpdateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delay_minutes: int | None = Field(default=None, ge=0, le=60 * 24 * 365)
    periodic_after_days: int | None = Field(default=None, ge=1, le=3650)
    channel_order: list[str] | None = Field(default=None, max_length=5)
    segment_rules: list[dict[str, Any]] | None = Field(default=None, max_length=20)
    frequency_cap_days: int | None = Field(default=None, ge=0, le=3650)
    window_start_minute: int | None = Field(default=None, ge=0, le=1440)
    window_end_minute: int | None = Field(default=None, ge=0, le=1440)
    expiry_days: int | None = Field(default=None, ge=1, le=3650)
    reward_points: int | None = Field(default=None, ge=0, le=1_000_000)
    active: bool | None = None


class PolicyOut(BaseModel):
    object: str = "followup_policy"
    id: str
    merchant_id: str
    trigger: str
    purpose: str
    delay_minutes: int
    periodic_after_days: int
    channel_order: list[str]
    segment_rules: list[dict[str, Any]]
    frequency_cap_days: int
    window_start_minute: int
    window_end_minute: int
    expiry_days: int
    reward_points: int
    active: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, policy: FollowUpPolicy) -> PolicyOut:
        data = policy.model_dump()
        data["id"], data["merchant_id"] = str(policy.id), str(policy.merchant_id)
        return cls(**data)


def _find(session: SessionDep, caller: Staff, policy_id: str) -> FollowUpPolicy:
    parsed = parse_id(policy_id)
    if parsed is None:
        raise NotFound(f"No such followup policy: '{policy_id}'.", param="id")
    merchant = object_merchant(session, caller, FollowUpPolicy, parsed, what="followup policy")
    with crm_errors("followup policy", policy_id):
        return followups_policies.get_policy(session, merchant, parsed)


@router.post("", response_model=PolicyOut, summary="Create a follow-up policy")
def create_policy(
    body: PolicyBody, session: SessionDep, caller: Manager, clock: ClockDep
) -> PolicyOut:
    merchant_id = write_merchant(caller, body.merchant_id)
    data = FollowUpPolicyCreate(**body.model_dump(exclude={"merchant_id"}))
    with crm_errors("merchant", merchant_id):
        policy = followups_policies.create_policy(
            session, merchant_id, data, actor=actor(caller), clock=clock
        )
    return PolicyOut.of(policy)


@router.get("", response_model=ListResponse[PolicyOut], summary="List follow-up policies")
def list_policies(
    request: Request,
    session: SessionDep,
    caller: Staff,
    merchant_id: Annotated[str | None, Query(max_length=20, description="Admins.")] = None,
) -> ListResponse[PolicyOut]:
    scope = merchant_scope(caller, merchant_id)
    rows: list[FollowUpPolicy] = []
    if scope is not None:
        with crm_errors("merchant", scope):
            rows = followups_policies.list_policies(session, scope)
    return ListResponse[PolicyOut](
        data=[PolicyOut.of(p) for p in rows], has_more=False, url=request.url.path
    )


@router.get("/{policy_id}", response_model=PolicyOut, summary="Retrieve a follow-up policy")
def get_policy(policy_id: PolicyId, session: SessionDep, caller: Staff) -> PolicyOut:
    return PolicyOut.of(_find(session, caller, policy_id))


@router.post("/{policy_id}", response_model=PolicyOut, summary="Update a follow-up policy")
def update_policy(
    policy_id: PolicyId,
    body: PolicyUpdateBody,
    session: SessionDep,
    caller: Manager,
    clock: ClockDep,
) -> PolicyOut:
    policy = _find(session, caller, policy_id)
    data = FollowUpPolicyUpdate(**body.model_dump(exclude_unset=True))
    updated = followups_policies.update_policy(
        session, policy.merchant_id, policy.id or 0, data, actor=actor(caller), clock=clock
    )
    return PolicyOut.of(updated)
