"""Request and response bodies of /v1/api_keys."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.keys.models import ApiKeyRecord
from api.keys.roles import ApiRole

__all__ = ["ApiKeyCreate", "ApiKeyCreated", "ApiKeyPublic"]


def _ts(value: object) -> int | None:
    return int(value.timestamp()) if value is not None else None  # type: ignore[attr-defined]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"role": "merchant", "livemode": False, "name": "backend"}]
        },
    )

    role: ApiRole = Field(default=ApiRole.MERCHANT, description="admin, merchant or support.")
    livemode: bool | None = Field(
        default=None,
        description="fp_live_ key when true, fp_test_ when false; default: the calling key's "
        "mode. A key creates keys of its own mode only (403 otherwise).",
    )
    merchant_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Admins only: the merchant the key acts for (required for merchant/support).",
    )
    name: str | None = Field(default=None, max_length=100, description="A label for humans.")


class ApiKeyPublic(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "key_4fQpZ2rj0Hc1bYc7X9mK1A",
                    "object": "api_key",
                    "role": "merchant",
                    "livemode": False,
                    "merchant_id": "42",
                    "name": "backend",
                    "redacted_key": "fp_test_Ab3x…",
                    "created": 1767225600,
                    "last_used": None,
                    "revoked": False,
                    "revoked_at": None,
                }
            ]
        }
    )

    id: str
    object: Literal["api_key"] = "api_key"
    role: ApiRole
    livemode: bool
    merchant_id: str | None
    name: str | None
    redacted_key: str = Field(description="The first characters of the key, for recognition.")
    created: int = Field(description="Unix timestamp.")
    last_used: int | None = Field(description="Unix timestamp (minute resolution) or null.")
    revoked: bool
    revoked_at: int | None

    @classmethod
    def of(cls, record: ApiKeyRecord) -> ApiKeyPublic:
        return cls(
            id=record.id,
            role=ApiRole(record.role),
            livemode=record.livemode,
            merchant_id=record.merchant_id,
            name=record.name,
            redacted_key=record.prefix + "…",
            created=int(record.created_at.timestamp()),
            last_used=_ts(record.last_used_at),
            revoked=record.revoked_at is not None,
            revoked_at=_ts(record.revoked_at),
        )


class ApiKeyCreated(ApiKeyPublic):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "key_4fQpZ2rj0Hc1bYc7X9mK1A",
                    "object": "api_key",
                    "role": "merchant",
                    "livemode": False,
                    "merchant_id": "42",
                    "name": "backend",
                    "redacted_key": "fp_test_Ab3x…",
                    "secret": "fp_test_Ab3x…(the whole key, shown only in this response)",
                    "created": 1767225600,
                    "last_used": None,
                    "revoked": False,
                    "revoked_at": None,
                }
            ]
        }
    )

    secret: str = Field(
        description="The API key. Shown ONCE: store it now, it cannot be read again."
    )
