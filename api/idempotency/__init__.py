"""Idempotent POST requests: see :mod:`api.idempotency.service` for the exact semantics."""

from api.idempotency.models import IdempotencyRecord, IdempotencyStatus
from api.idempotency.service import (
    ERASED_FINGERPRINT,
    ERASED_RESPONSE,
    HEADER,
    REPLAYED_HEADER,
    IdempotencyContext,
    IdempotentReplay,
    fingerprint,
    forget_contact,
    prepare,
    purge_expired,
    record,
    store_outside,
)

__all__ = [
    "ERASED_FINGERPRINT",
    "ERASED_RESPONSE",
    "HEADER",
    "REPLAYED_HEADER",
    "IdempotencyContext",
    "IdempotencyRecord",
    "IdempotencyStatus",
    "IdempotentReplay",
    "fingerprint",
    "forget_contact",
    "prepare",
    "purge_expired",
    "record",
    "store_outside",
]
