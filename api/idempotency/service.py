"""Idempotent POSTs (Stripe semantics).

* Scope: (API key id, ``Idempotency-Key``). Keys are optional; when sent they are honoured for
  ``ttl`` (default 24 h).
* Fingerprint: SHA-256 over method, path, query string and the canonical JSON body (keys sorted,
  no whitespace; a non-JSON body is hashed raw). :func:`prepare` computes it (no I/O).
* :func:`record` writes the key's row, WITH the response, as the last statement of the request's
  own transaction (``INSERT … ON CONFLICT DO NOTHING``); the unique constraint decides which
  request owns the key: the first to commit. The handler's effects and the stored answer commit
  together or not at all: a crash or a 5xx leaves nothing behind, and no committed effect is
  without its stored answer. A request whose insert meets an existing row rolls its own work back
  and answers instead (PostgreSQL makes it wait on the unique index for a concurrent duplicate
  to commit; SQLite's single writer orders them anyway):
  - the stored response, replayed byte-for-byte with ``Idempotent-Replayed: true``
    (:class:`IdempotentReplay`), when the row holds the same fingerprint;
  - 400 ``idempotency_error`` when the fingerprint differs.
  A retry of a finished request therefore runs its handler once more, inside a transaction that
  is rolled back: every effect of our handlers is transactional (after-commit callbacks run only
  on commit), so nothing takes effect twice, and the common case (no retry) costs one statement.
* Error responses (4xx) roll the request's transaction back; :func:`store_outside` then records
  them in a transaction of its own, meeting what the key already answers like any request (a
  request refused before it ran, e.g. a 422, still gets the stored response or a 400). 5xx
  responses are never stored; one met by a stored answer for the key (a retry's re-run that
  failed) is replaced by that answer.
* The stored body is sealed (AES-GCM, bound to the API key id and ``Idempotency-Key``) under
  a key derived from the caller's API key, which the database never holds (only its hash):
  minted API keys, webhook secrets and decrypted contact fields in responses are unreadable
  at rest. The API deletes expired rows every ``ApiConfig.idempotency_purge_seconds``.
* A committed ``in_progress`` row (written by releases before this design) still answers 409
  ``idempotency_key_in_use`` until ``lock_timeout``, then is taken over.
* Erasure: a response holding a CRM contact's data names it (``IdempotencyContext.contact_id``,
  set by the route). :func:`forget_contact`, in the erasure's transaction, overwrites every such
  response with :data:`ERASED_RESPONSE` (409 ``contact_erased``, what the request would get
  now): a replay neither returns the data nor runs again (a create would bring it back). A
  replay also checks the contact, for a response stored by a request that raced the erasure.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col

from api.db import new_id, utcnow
from api.errors import IdempotencyError, IdempotencyKeyInUse, InvalidRequest
from api.idempotency.models import IdempotencyRecord, IdempotencyStatus
from api.keys.models import ApiKeyRecord
from crm.contacts.models import Contact

__all__ = [
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_TTL",
    "ERASED_FINGERPRINT",
    "ERASED_RESPONSE",
    "HEADER",
    "REPLAYED_HEADER",
    "IdempotencyContext",
    "IdempotentReplay",
    "fingerprint",
    "forget_contact",
    "prepare",
    "purge_expired",
    "record",
    "store_outside",
]

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
DEFAULT_TTL = timedelta(hours=24)
DEFAULT_LOCK_TIMEOUT = timedelta(seconds=60)
MAX_KEY_LENGTH = 255
_SKIPPED_HEADERS = frozenset(
    {"content-length", "date", "server", "set-cookie", "transfer-encoding"}
)
_T = IdempotencyRecord.__table__  # type: ignore[attr-defined]


class IdempotentReplay(Exception):
    """Raised by :func:`record` to answer the request with the stored response."""

    def __init__(self, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        super().__init__("idempotent replay")
        self.status = status
        self.headers = list(headers)
        self.body = body


@dataclass
class IdempotencyContext:
    record_id: str
    api_key_id: str
    key: str
    fingerprint: str = ""
    legacy_fingerprint: str = field(default="", repr=False)
    method: str = "POST"
    path: str = ""
    created_at: datetime | None = None
    expires_at: datetime | None = None
    done: bool = field(default=False)
    #: AES-GCM key for the stored body (:func:`api.keys.service.sealing_key`); empty: stored
    #: as is (direct callers and tests).
    sealing_key: bytes = field(default=b"", repr=False)
    #: the contact whose data the response holds (erasure destroys it: :func:`forget_contact`)
    contact_id: int | None = None


#: Marks a sealed body: ``_SEALED + nonce(12) + AES-GCM ciphertext``. A response body is JSON
#: and never starts with NUL, so rows written before sealing still replay as they are.
_SEALED = b"\x00fps1"


def _seal(ctx: IdempotencyContext, body: bytes) -> bytes:
    if not ctx.sealing_key:
        return body
    nonce = os.urandom(12)
    return _SEALED + nonce + AESGCM(ctx.sealing_key).encrypt(nonce, body, _bound(ctx))


def _unseal(ctx: IdempotencyContext, stored: bytes) -> bytes:
    if not stored.startswith(_SEALED):
        return stored
    data = stored[len(_SEALED) :]
    try:
        return AESGCM(ctx.sealing_key).decrypt(data[:12], data[12:], _bound(ctx))
    except (InvalidTag, ValueError):
        raise IdempotencyError(
            "The stored response for this Idempotency-Key cannot be replayed; use a new key.",
            param=HEADER,
        ) from None


#: What a key whose response held an erased contact's data answers from then on.
ERASED_RESPONSE = (
    409,
    [("content-type", "application/json")],
    json.dumps(
        {
            "error": {
                "type": "conflict_error",
                "code": "contact_erased",
                "message": "The contact this request concerned has been erased; its stored "
                "response was destroyed with its data.",
                "param": None,
            }
        },
        separators=(",", ":"),
    ).encode(),
)


def _bound(ctx: IdempotencyContext) -> bytes:
    return f"{ctx.api_key_id}\x00{ctx.key}".encode()


def _canonical(body: bytes) -> bytes:
    if not body:
        return b""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # the route refuses it
        return body
    canonical = json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # "\ud800" is valid JSON but no UTF-8: kept as is, for the route's 422 (it was a 500)
    return canonical.encode("utf-8", "surrogatepass")


def fingerprint(method: str, path: str, query: str, body: bytes, key: bytes = b"") -> str:
    """The request's digest; an HMAC under ``key`` (the API key's sealing key) when given: the
    body of ``POST /v1/contacts`` is an e-mail address, and a bare SHA-256 of it let anyone
    who reads the database confirm a guessed address, even after the contact's erasure."""
    return _digest((method.upper().encode(), path.encode(), query.encode(), _canonical(body)), key)


def _digest(parts: tuple[bytes, ...], key: bytes = b"") -> str:
    h = hmac.new(key, digestmod=hashlib.sha256) if key else hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def _check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequest(
            f"The Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} printable characters.",
            param=HEADER,
        )
    return key


def purge_expired(engine: sa.Engine, now: datetime | None = None) -> int:
    with engine.begin() as conn:
        result = conn.execute(sa.delete(_T).where(_T.c.expires_at <= (now or utcnow())))
        return int(result.rowcount or 0)


#: What an erased contact's stored request fingerprints become: the HMAC of a body holding the
#: person's name, e-mail and phone told a guess that matched (the erased answer) from one that
#: did not (400), for as long as the key lived.
ERASED_FINGERPRINT = "erased"


def forget_contact(session: Session, contact_id: int, merchant_id: int) -> int:
    """Overwrite every stored response about ``contact_id`` (of ``merchant_id``) with
    :data:`ERASED_RESPONSE`, and its request's fingerprint with :data:`ERASED_FINGERPRINT`, in
    the caller's (the erasure's) transaction; returns how many.
    Only responses to keys of that merchant (or admin keys): another merchant's request naming
    the id got a 404, and rewriting it would tell that merchant the id exists and was erased."""
    status, headers, body = ERASED_RESPONSE
    own_keys = sa.select(col(ApiKeyRecord.id)).where(
        sa.or_(
            col(ApiKeyRecord.merchant_id).is_(None),
            col(ApiKeyRecord.merchant_id) == str(merchant_id),
        )
    )
    result = session.connection().execute(
        sa.update(_T)
        .where(_T.c.contact_id == contact_id, _T.c.api_key_id.in_(own_keys))
        .values(
            fingerprint=ERASED_FINGERPRINT,
            response_status=status,
            response_headers=[list(h) for h in headers],
            response_body=body,
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _contact_erased(conn: sa.Connection, contact_id: int, api_key_id: str) -> bool:
    """Whether the stored response's contact was erased, asked only of a contact of the key's
    own merchant (any, for an admin key): a merchant key's request about another merchant's
    contact id is stored as its 404 with that id, and answering its replay by the other
    contact's erasure would let ids be probed."""
    key_merchant = (
        sa.select(col(ApiKeyRecord.merchant_id))
        .where(col(ApiKeyRecord.id) == api_key_id)
        .scalar_subquery()
    )
    stmt = sa.select(col(Contact.erased_at)).where(
        col(Contact.id) == contact_id,
        sa.or_(
            key_merchant.is_(None), sa.cast(col(Contact.merchant_id), sa.String) == key_merchant
        ),
    )
    return conn.execute(stmt).scalar() is not None


# "INSERT … ON CONFLICT DO NOTHING RETURNING id" (SQLite ≥ 3.35 and PostgreSQL): a duplicate key
# returns no row instead of raising, so no savepoint is needed around the lock.
_TAKE = {
    "sqlite": sqlite_insert(_T).on_conflict_do_nothing().returning(_T.c.id),
    "postgresql": pg_insert(_T).on_conflict_do_nothing().returning(_T.c.id),
}
_BY_KEY = sa.select(_T).where(
    _T.c.api_key_id == sa.bindparam("api_key_id"),
    _T.c.idempotency_key == sa.bindparam("idempotency_key"),
)


def prepare(
    *,
    api_key_id: str,
    key: str,
    method: str,
    path: str,
    query: str = "",
    body: bytes = b"",
    now: datetime | None = None,
    ttl: timedelta = DEFAULT_TTL,
    sealing_key: bytes = b"",
) -> IdempotencyContext:
    """Check the key (400 when malformed) and fingerprint the request; no database work.
    ``sealing_key``: the stored response is encrypted under it (see :func:`record`)."""
    key = _check_key(key)
    now = now or utcnow()
    parts = (method.upper().encode(), path.encode(), query.encode(), _canonical(body))  # once
    return IdempotencyContext(
        record_id=new_id("idem"),
        api_key_id=api_key_id,
        key=key,
        fingerprint=_digest(parts, sealing_key),
        # rows stored before fingerprints were keyed, until they expire
        legacy_fingerprint=_digest(parts) if sealing_key else "",
        method=method.upper(),
        path=path[:2048],
        created_at=now,
        expires_at=now + ttl,
        sealing_key=sealing_key,
    )


def _row(ctx: IdempotencyContext, status: IdempotencyStatus, now: datetime) -> dict[str, object]:
    return {
        "id": ctx.record_id,
        "api_key_id": ctx.api_key_id,
        "idempotency_key": ctx.key,
        "fingerprint": ctx.fingerprint,
        "method": ctx.method,
        "path": ctx.path,
        "status": status.value,
        "locked_at": now,
        "created_at": ctx.created_at or now,
        "expires_at": ctx.expires_at or now + DEFAULT_TTL,
    }


def _stored_headers(headers: Iterable[tuple[str, str]]) -> list[list[str]]:
    return [[k, v] for k, v in headers if k.lower() not in _SKIPPED_HEADERS]


_TAKE_OVER = (
    sa.update(_T)
    .where(
        _T.c.id == sa.bindparam("record_id"),
        _T.c.status == IdempotencyStatus.IN_PROGRESS.value,
        _T.c.locked_at == sa.bindparam("stale_locked_at"),
    )
    .values(
        status=IdempotencyStatus.COMPLETED.value,
        locked_at=sa.bindparam("now"),
        response_status=sa.bindparam("response_status"),
        response_headers=sa.bindparam("response_headers", type_=_T.c.response_headers.type),
        response_body=sa.bindparam("response_body", type_=_T.c.response_body.type),
        contact_id=sa.bindparam("contact_id", type_=_T.c.contact_id.type),
    )
)


def record(
    executor: sa.Connection | Session,
    ctx: IdempotencyContext,
    status: int,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    *,
    now: datetime | None = None,
    lock_timeout: timedelta = DEFAULT_LOCK_TIMEOUT,
) -> None:
    """Store the response under the key in ``executor``'s transaction, or raise what the key
    already answers (:class:`IdempotentReplay`, 400, 409; the caller must roll back). See the
    module docstring."""
    now = now or utcnow()
    conn = executor if isinstance(executor, sa.Connection) else executor.connection()
    response = {
        "response_status": status,
        "response_headers": _stored_headers(headers),
        "response_body": _seal(ctx, body),
        "contact_id": ctx.contact_id,
    }
    try:
        _record(conn, ctx, now, lock_timeout, response)
    except (IdempotentReplay, IdempotencyError, IdempotencyKeyInUse):
        ctx.done = True  # the key answers for this request: nothing left to store
        raise
    ctx.done = True


def _record(
    conn: sa.Connection,
    ctx: IdempotencyContext,
    now: datetime,
    lock_timeout: timedelta,
    response: dict[str, object],
) -> None:
    take = _TAKE[conn.dialect.name]
    values = _row(ctx, IdempotencyStatus.COMPLETED, now) | response
    for _ in range(5):
        if conn.execute(take, values).first():
            return
        row = conn.execute(
            _BY_KEY, {"api_key_id": ctx.api_key_id, "idempotency_key": ctx.key}
        ).first()
        if row is None:
            continue  # purged meanwhile: try again
        if row.expires_at <= now:
            conn.execute(sa.delete(_T).where(_T.c.id == row.id, _T.c.expires_at <= now))
            continue
        _answer_stored(conn, ctx, row)
        if row.locked_at <= now - lock_timeout:  # a legacy in-progress row, abandoned
            params = {"record_id": row.id, "stale_locked_at": row.locked_at, "now": now}
            if getattr(conn.execute(_TAKE_OVER, params | response), "rowcount", 0) == 1:
                ctx.record_id = row.id
                return
        raise IdempotencyKeyInUse(param=HEADER)
    raise IdempotencyKeyInUse(param=HEADER)


def _answer_stored(conn: sa.Connection, ctx: IdempotencyContext, row: sa.Row[Any]) -> None:
    """Raise what an unexpired stored row answers this request: 400 for another request
    under the key, the stored response for the same one once it is complete. A row about an
    erased contact answers :data:`ERASED_RESPONSE` to any body: comparing the body would tell
    whether a guess of the person's data was the one sent."""
    completed = row.status == IdempotencyStatus.COMPLETED.value
    if row.fingerprint == ERASED_FINGERPRINT or (
        completed
        and row.contact_id is not None
        and _contact_erased(conn, row.contact_id, row.api_key_id)
    ):
        raise IdempotentReplay(*ERASED_RESPONSE)
    if row.fingerprint not in (ctx.fingerprint, ctx.legacy_fingerprint or ctx.fingerprint):
        raise IdempotencyError(param=HEADER)
    if completed:
        raise IdempotentReplay(
            row.response_status,
            [tuple(h) for h in row.response_headers or []],
            _unseal(ctx, bytes(row.response_body or b"")),
        )


def store_outside(
    engine: sa.Engine,
    ctx: IdempotencyContext,
    status: int,
    headers: Iterable[tuple[str, str]],
    body: bytes,
) -> None:
    """Record a (4xx) response whose request never committed, in a transaction of its own
    (raises like :func:`record`). A 5xx is not stored, but still meets what the key answers:
    a retry of a finished request runs its handler again (rolled back at the end), and a
    node or a database briefly away during that run must not turn the stored answer into a
    500 (nor a changed body's 400 into one)."""
    if status >= 500:
        ctx.done = True
        now = utcnow()
        with engine.connect() as conn:
            row = conn.execute(
                _BY_KEY, {"api_key_id": ctx.api_key_id, "idempotency_key": ctx.key}
            ).first()
            if row is not None and row.expires_at > now:
                _answer_stored(conn, ctx, row)
        return
    with engine.begin() as conn:
        record(conn, ctx, status, headers, body)
