"""API key rules: creation (plaintext shown once), authentication, revocation.

Keys look like ``fp_test_<43 url-safe chars>`` (``secrets.token_urlsafe(32)``: 256 bits). Only the
SHA-256 of the whole key is stored; a fast hash is enough for such high-entropy secrets (there is
nothing to brute-force), and a lookup by hash plus :func:`hmac.compare_digest` keeps comparisons
constant-time. Keys are never logged, never in ``repr`` and never in error messages.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import Session

from api.db import new_id, utcnow
from api.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from api.keys import repository
from api.keys.models import ApiKeyRecord
from api.keys.roles import ApiRole
from api.pagination import parse_id

__all__ = [
    "KEY_PATTERN",
    "AuthenticatedKey",
    "authenticate",
    "authenticate_digest",
    "check_can_create",
    "create_key",
    "digest_of",
    "hash_key",
    "mark_used",
    "revoke",
    "sealing_key",
]

KEY_PATTERN = re.compile(r"^fp_(live|test)_[A-Za-z0-9_-]{43}$")
_DISPLAY_CHARS = 12  # "fp_test_" + 4 characters of the random part


@dataclass(frozen=True, slots=True)
class AuthenticatedKey:
    """The caller of a request (what ``CurrentKey`` yields): no secret material inside."""

    id: str
    merchant_id: str | None
    role: ApiRole
    livemode: bool

    @classmethod
    def from_record(cls, record: ApiKeyRecord) -> AuthenticatedKey:
        return cls(
            id=record.id,
            merchant_id=record.merchant_id,
            role=ApiRole(record.role),
            livemode=record.livemode,
        )

    @property
    def is_admin(self) -> bool:
        return self.role is ApiRole.ADMIN

    @property
    def scope(self) -> str | None:
        """The merchant every query must be restricted to; ``None`` (all merchants) for admins."""
        return None if self.is_admin else self.merchant_id

    def merchant_for_write(self, requested: str | None, *, param: str = "merchant_id") -> str:
        """The merchant a new object belongs to: the caller's own, or ``requested`` for admins."""
        if self.is_admin:
            if not requested:
                raise InvalidRequest(
                    "Admin keys must name the merchant.", param=param, code="parameter_missing"
                )
            return requested
        if requested is not None and requested != self.merchant_id:
            raise Forbidden("Only admin keys may act for another merchant.", param=param)
        if self.merchant_id is None:  # pragma: no cover - non-admin keys always have a merchant
            raise Forbidden()
        return self.merchant_id


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _generate(livemode: bool) -> str:
    return f"fp_{'live' if livemode else 'test'}_{secrets.token_urlsafe(32)}"


def check_can_create(
    creator: AuthenticatedKey | None, merchant_id: str | None, role: ApiRole, *, livemode: bool
) -> str | None:
    """Who may mint which key; returns the merchant the new key belongs to.

    Admins create any key (merchant and support keys need a merchant); merchants create merchant
    or support keys for themselves only; support keys create nothing. Every key creates keys of
    its own mode only: a test key minting a live key (or a live key a test key) is 403, so the
    mode of a key says what it can reach. ``creator=None`` is the trusted bootstrap path (CLI).
    """
    if creator is not None and creator.livemode != livemode:
        raise Forbidden(
            f"A {'live' if creator.livemode else 'test'}-mode key creates "
            f"{'live' if creator.livemode else 'test'}-mode keys only.",
            param="livemode",
        )
    if creator is not None and not creator.is_admin:
        if creator.role is not ApiRole.MERCHANT:
            raise Forbidden()
        if role is ApiRole.ADMIN:
            raise Forbidden("Only admin keys may create admin keys.")
        return creator.merchant_for_write(merchant_id)
    if role is not ApiRole.ADMIN and not merchant_id:
        raise InvalidRequest(
            f"A {role.value} key needs a merchant_id.",
            param="merchant_id",
            code="parameter_missing",
        )
    return merchant_id


def create_key(
    session: Session,
    merchant_id: str | None,
    role: ApiRole | str,
    live: bool,
    *,
    name: str | None = None,
    now: datetime | None = None,
) -> tuple[ApiKeyRecord, str]:
    """Create a key; returns the record and the plaintext key (show it once, then drop it)."""
    role = ApiRole(role)
    if role is not ApiRole.ADMIN and not merchant_id:
        raise InvalidRequest(
            f"A {role.value} key needs a merchant_id.",
            param="merchant_id",
            code="parameter_missing",
        )
    if merchant_id is not None and merchant_id.isascii() and merchant_id.isdigit():
        parsed = parse_id(merchant_id)
        if parsed is None or str(parsed) != merchant_id:  # "01" would act for merchant 1
            raise InvalidRequest(
                f"merchant_id {merchant_id!r} is no merchant id: write it as the merchant's "
                "id (no leading zeros).",
                param="merchant_id",
            )
    plaintext = _generate(live)
    record = ApiKeyRecord(
        id=new_id("key"),
        merchant_id=merchant_id,
        role=role.value,
        livemode=live,
        prefix=plaintext[:_DISPLAY_CHARS],
        key_hash=hash_key(plaintext),
        name=name,
        created_at=now or utcnow(),
    )
    repository.add(session, record)
    return record, plaintext


def _parse_bearer(bearer: str | None) -> str:
    if not bearer:
        raise Unauthorized(
            "You did not provide an API key. Send it as 'Authorization: Bearer <key>'."
        )
    value = bearer.strip()
    scheme, _, rest = value.partition(" ")
    if rest and scheme.lower() == "bearer":
        value = rest.strip()
    elif rest:
        raise Unauthorized("Use the Bearer scheme: 'Authorization: Bearer <key>'.")
    if not KEY_PATTERN.fullmatch(value):
        raise Unauthorized()
    return value


def digest_of(bearer: str | None) -> str:
    """The SHA-256 of the key in an ``Authorization`` value (401 when missing or malformed)."""
    return hash_key(_parse_bearer(bearer))


def sealing_key(bearer: str | None) -> bytes:
    """A symmetric key only the holder of the API key in ``bearer`` can re-derive (we store the
    key's SHA-256, never the key): what is stored for its requests, such as idempotent
    responses that carry secrets or personal data, is sealed under it."""
    raw = _parse_bearer(bearer).encode()
    return hmac.new(raw, b"followpay-api/sealed-response/v1", hashlib.sha256).digest()


def authenticate(session: Session, bearer: str | None) -> ApiKeyRecord:
    """The active key for an ``Authorization`` value (``Bearer fp_…`` or the bare key).

    Anything wrong (missing, malformed, unknown, revoked) raises :class:`Unauthorized`
    (401 ``invalid_api_key``); the message never echoes the key.
    """
    return authenticate_digest(session, digest_of(bearer))


def authenticate_digest(session: Session, digest: str) -> ApiKeyRecord:
    """The active key whose SHA-256 is ``digest`` (see :func:`authenticate`)."""
    record = repository.get_by_hash(session, digest)
    if record is None or not hmac.compare_digest(record.key_hash, digest):
        raise Unauthorized()
    if record.revoked_at is not None:
        raise Unauthorized("This API key has been revoked.")
    return record


def revoke(
    session: Session,
    key_id: str,
    *,
    merchant_id: str | None,
    livemode: bool,
    now: datetime | None = None,
) -> ApiKeyRecord:
    """Revoke a key of mode ``livemode`` visible in ``merchant_id``'s scope (``None``: any).
    Idempotent. Another mode's key is not found (a test key cannot revoke live keys)."""
    record = repository.get(session, key_id, merchant_id=merchant_id, livemode=livemode)
    if record is None:
        raise NotFound(f"No such API key: '{key_id}'.", param="id")
    return repository.set_revoked(session, record, now or utcnow())


def mark_used(session: Session, key_id: str, now: datetime | None = None) -> None:
    repository.set_last_used(session, key_id, now or utcnow())
