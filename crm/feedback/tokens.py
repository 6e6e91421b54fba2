"""Single-use feedback tokens: derived per follow-up (:meth:`crm.crypto.KeyRing.followup_token`),
returned once in the message's links, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib

__all__ = ["hash_token"]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
