"""Idempotent POST requests: see :mod:`api.idempotency.service` for the exact semantics."""

from api.idempotency.models import IdempotencyRecord, IdempotencyStatus
from api.idempotency.service import (
    HEADER,
    REPLAYED_HEADER,
    IdempotencyContext,
    IdempotentReplay,
    fingerprint,
    prepare,
    purge_expired,
    record,
    store_outside,
)

__all__ = [
    "HEADER",
    "REPLAYED_HEADER",
    "IdempotencyContext",
    "IdempotencyRecord",
    "IdempotencyStatus",
    "IdempotentReplay",
    "fingerprint",
    "prepare",
    "purge_expired",
    "record",
    "store_outside",
]
