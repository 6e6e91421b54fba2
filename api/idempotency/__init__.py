"""Idempotent POST requests: see :mod:`api.idempotency.service` for the exact semantics."""

from api.idempotency.models import IdempotencyRecord, IdempotencyStatus
from api.idempotency.service import (
    HEADER,
    REPLAYED_HEADER,
    IdempotencyContext,
    IdempotentReplay,
    begin,
    complete,
    fingerprint,
    purge_expired,
    release,
    store_outside,
)

__all__ = [
    "HEADER",
    "REPLAYED_HEADER",
    "IdempotencyContext",
    "IdempotencyRecord",
    "IdempotencyStatus",
    "IdempotentReplay",
    "begin",
    "complete",
    "fingerprint",
    "purge_expired",
    "release",
    "store_outside",
]
