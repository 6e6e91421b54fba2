"""Webhook signatures (pure functions, no I/O).

``FollowPay-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>``; during
a secret rotation grace period several ``v1=`` entries may be present (one per active secret).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable

__all__ = ["DEFAULT_TOLERANCE", "SIGNATURE_HEADER", "WebhookSignatureError", "sign", "verify"]

SIGNATURE_HEADER = "FollowPay-Signature"
DEFAULT_TOLERANCE = 300


class WebhookSignatureError(ValueError):
    """The signature header is missing, malformed, expired/future, or matches no secret."""

    status_code = 400
    code = "invalid_signature"
    type = "invalid_request_error"
    param = None


def _as_bytes(raw: bytes | str) -> bytes:
    return raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)


def _mac(secret: str, timestamp: int, raw_body: bytes) -> str:
    signed = str(timestamp).encode("ascii") + b"." + raw_body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def sign(
    secret: str, timestamp: int, raw_body: bytes | str, *, extra_secrets: Iterable[str] = ()
) -> str:
    """The header value for ``raw_body`` sent at ``timestamp`` (one ``v1`` per secret)."""
    body = _as_bytes(raw_body)
    t = int(timestamp)
    parts = [f"t={t}"] + [f"v1={_mac(s, t, body)}" for s in (secret, *extra_secrets)]
    return ",".join(parts)


def verify(
    secret: str,
    header: str | None,
    raw_body: bytes | str,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> int:
    """Check ``header`` against ``raw_body`` (the exact bytes received); returns the timestamp.

    Raises :class:`WebhookSignatureError` when the header is missing or malformed, when the
    timestamp is more than ``tolerance`` seconds away from ``now`` (past OR future: replays and
    clock games), or when no ``v1`` signature matches (compared in constant time).
    """
    if not header:
        raise WebhookSignatureError("missing signature header")
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            # int() also takes "١٢", "1_0", " 1", and raises ValueError past 4,300 digits
            if not (value.isascii() and value.isdigit()) or len(value) > 12:
                raise WebhookSignatureError("malformed timestamp")
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value.strip())
    if timestamp is None or not candidates:
        raise WebhookSignatureError("no timestamp or no v1 signature in header")
    current = time.time() if now is None else float(now)
    if abs(current - timestamp) > tolerance:
        raise WebhookSignatureError("timestamp outside the tolerance window")
    expected = _mac(secret, timestamp, _as_bytes(raw_body)).encode("ascii")
    matched = False
    for candidate in candidates:  # no early exit: every candidate is compared
        # as bytes: compare_digest raises TypeError on non-ASCII str, and junk is a mismatch
        matched |= hmac.compare_digest(expected, candidate.encode("utf-8", "surrogateescape"))
    if not matched:
        raise WebhookSignatureError("no signature matches the expected signature")
    return timestamp
