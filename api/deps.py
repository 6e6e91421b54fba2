"""Request dependencies (``Annotated`` aliases) and the per-request context.

Transaction rules (polar style): a route never commits. :data:`SessionDep` yields one
:class:`~sqlmodel.Session` per request; when the route and the response rendering succeed, the
dependency commits (after writing the idempotent response into the same transaction), then runs the
:data:`AfterCommit` callbacks (enqueue jobs, wake the webhook worker…). On any error it rolls back
and drops them. The app's outer middleware buffers the response until this has happened, so a client
never sees a 2xx for a transaction that failed to commit.

Usage::

    @router.post("/things")
    def create_thing(body: ThingCreate, session: SessionDep, key: CurrentKey,
                     after_commit: AfterCommit) -> ThingPublic:
        thing = service.create(session, key.merchant_for_write(body.merchant_id), body)
        after_commit.append(lambda: notify(thing.id))
        return ThingPublic.from_model(thing)

    @router.delete("/things/{id}")
    def delete(id: str, key: Annotated[AuthenticatedKey, require_role("admin", "merchant")]): ...
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

import anyio
import anyio.to_thread
import sqlalchemy as sa
from anyio import CapacityLimiter
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from api.db import utcnow
from api.errors import Forbidden, ServerError
from api.idempotency import service as idempotency
from api.keys import service as keys_service
from api.keys.models import ApiRole
from api.keys.service import AuthenticatedKey
from api.settings import Settings
from api.settlement.invoices import InvoiceNumbers
from api.webhooks.secrets import SecretCipher
from crm import Clock, KeyRing
from wallet.signing import Signer

__all__ = [
    "CONTEXT_SCOPE_KEY",
    "AfterCommit",
    "ApiConfig",
    "BufferedResponse",
    "ChainInfo",
    "ChainInfoDep",
    "CipherDep",
    "ClockDep",
    "ConfigDep",
    "CurrentKey",
    "EngineDep",
    "IntentSigners",
    "InvoiceNumbersDep",
    "KeyRingDep",
    "RequestContext",
    "SessionDep",
    "SettingsDep",
    "SignersDep",
    "get_current_key",
    "get_session",
    "request_context",
    "require_role",
]

logger = logging.getLogger("followpay.api")

CONTEXT_SCOPE_KEY = "followpay.context"
_LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class ApiConfig:
    """HTTP-layer knobs. :meth:`from_settings` reads optional ``api_*`` fields off ``Settings``."""

    max_body_bytes: int = 1024 * 1024
    rate_limit_per_second: float = 25.0
    rate_limit_burst: int = 100
    cors_origins: tuple[str, ...] = ()
    idempotency_ttl: timedelta = idempotency.DEFAULT_TTL
    idempotency_lock_timeout: timedelta = idempotency.DEFAULT_LOCK_TIMEOUT
    docs: bool = True
    #: Requests inside the app at once; more wait in the event loop (see ``api.app``).
    max_in_flight: int = 32

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")

    @classmethod
    def from_settings(cls, settings: Any) -> ApiConfig:
        d = cls()
        origins = getattr(settings, "api_cors_origins", d.cors_origins) or ()
        if isinstance(origins, str):
            origins = tuple(o.strip() for o in origins.split(",") if o.strip())
        ttl = getattr(settings, "api_idempotency_ttl_seconds", None)
        return cls(
            max_body_bytes=int(getattr(settings, "api_max_body_bytes", d.max_body_bytes)),
            rate_limit_per_second=float(
                getattr(settings, "api_rate_limit_per_second", d.rate_limit_per_second)
            ),
            rate_limit_burst=int(getattr(settings, "api_rate_limit_burst", d.rate_limit_burst)),
            cors_origins=tuple(origins),
            idempotency_ttl=timedelta(seconds=float(ttl)) if ttl else d.idempotency_ttl,
            docs=bool(getattr(settings, "api_docs", d.docs)),
            max_in_flight=int(getattr(settings, "api_max_in_flight", d.max_in_flight)),
        )


@dataclass
class BufferedResponse:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = False
    flushed: bool = False

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


@dataclass
class RequestContext:
    """Per-request state shared by the outer middleware and the dependencies."""

    response: BufferedResponse = field(default_factory=BufferedResponse)
    key: AuthenticatedKey | None = None
    idempotency: idempotency.IdempotencyContext | None = None
    before_commit: list[Callable[[Session], object]] = field(default_factory=list)
    after_commit: list[Callable[[], object]] = field(default_factory=list)


def request_context(request: Request) -> RequestContext:
    ctx = request.scope.get(CONTEXT_SCOPE_KEY)
    if ctx is None:
        ctx = RequestContext()
        request.scope[CONTEXT_SCOPE_KEY] = ctx
    return ctx


def _engine(request: Request) -> sa.Engine:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise ServerError()
    return engine


# Dependencies that only read app state are ``async def``: FastAPI runs a plain ``def``
# dependency in the thread pool, a hop that costs more than the lookup itself.


async def get_engine(request: Request) -> sa.Engine:
    return _engine(request)


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_config(request: Request) -> ApiConfig:
    return request.app.state.api_config


async def get_cipher(request: Request) -> SecretCipher:
    return request.app.state.cipher


@dataclass(frozen=True, slots=True)
class ChainInfo:
    """The chain invoices are issued on: id, PaymentRouter and token addresses, token decimals."""

    chain_id: int
    router: str
    token: str
    decimals: int = 18
    head: Callable[[], int] | None = None
    """Optional: the current block number (payments then report their confirmations)."""
    gas_used: Callable[[str], int | None] | None = None
    """Optional: a transaction hash's ``gasUsed`` (payments then report it)."""


IntentSigners = Mapping[str, Signer]
"""Operator address (any case) -> the :class:`~wallet.signing.Signer` that signs its intents.

Held on ``app.state.signers`` and configured by whoever builds the app: tests and the demo pass
dev keys; production loads the operator keys from a wallet vault (``wallet.keystore``) at start-up
or runs a separate signer process exposing the same ``sign_intent`` interface.
"""


def get_keyring(request: Request) -> KeyRing:
    """The CRM key ring (per-contact data keys); built once from the settings' master key."""
    state = request.app.state
    keyring = getattr(state, "keyring", None)
    if keyring is None:
        from api.runtime import load_master_key

        keyring = KeyRing(load_master_key(state.settings))
        state.keyring = keyring
    return keyring


async def get_signers(request: Request) -> IntentSigners:
    return getattr(request.app.state, "signers", None) or {}


async def get_chain_info(request: Request) -> ChainInfo | None:
    return getattr(request.app.state, "chain_info", None)


async def get_invoice_numbers(request: Request) -> InvoiceNumbers:
    return request.app.state.invoice_numbers


async def get_clock(request: Request) -> Clock:
    return request.app.state.clock


EngineDep = Annotated[sa.Engine, Depends(get_engine)]
KeyRingDep = Annotated[KeyRing, Depends(get_keyring)]
SignersDep = Annotated[IntentSigners, Depends(get_signers)]
ChainInfoDep = Annotated[ChainInfo | None, Depends(get_chain_info)]
ClockDep = Annotated[Clock, Depends(get_clock)]
InvoiceNumbersDep = Annotated[InvoiceNumbers, Depends(get_invoice_numbers)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
ConfigDep = Annotated[ApiConfig, Depends(get_config)]
CipherDep = Annotated[SecretCipher, Depends(get_cipher)]


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request; commit on success (then after-commit hooks), rollback on error.

    An async generator on purpose: creating the session does no I/O, and the end of the request
    (hooks, commit or rollback, close) is ONE thread-pool call with its own limiter, shielded
    from cancellation, so a request never waits for a free worker while it holds a connection
    (FastAPI gives a sync generator's teardown the same treatment, plus a hop on entry)."""
    ctx = request_context(request)
    session = Session(_engine(request), expire_on_commit=False)
    try:
        yield session
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_abort, session, ctx, limiter=CapacityLimiter(1))
        raise
    else:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_finish, session, ctx, limiter=CapacityLimiter(1))


def _abort(session: Session, ctx: RequestContext) -> None:
    try:
        session.rollback()
        ctx.after_commit.clear()
    finally:
        session.close()


def _finish(session: Session, ctx: RequestContext) -> None:
    try:
        try:
            for hook in ctx.before_commit:
                hook(session)
            session.commit()
        except BaseException:
            session.rollback()
            ctx.after_commit.clear()
            raise
        if ctx.idempotency is not None and ctx.response.complete:
            ctx.idempotency.done = ctx.response.status < 500
        for callback in ctx.after_commit:
            try:
                callback()
            except Exception as exc:  # the transaction is committed: never turn it into an error
                logger.error("after-commit callback failed: %s", type(exc).__name__, exc_info=exc)
        ctx.after_commit.clear()
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]


async def get_after_commit(request: Request) -> list[Callable[[], object]]:
    """Append zero-argument callables; they run only after the request's commit succeeded."""
    return request_context(request).after_commit


AfterCommit = Annotated[list[Callable[[], object]], Depends(get_after_commit)]


async def _idempotent_body(request: Request) -> bytes:
    if request.method == "POST" and request.headers.get(idempotency.HEADER):
        return await request.body()
    return b""


# Documents the scheme on every operation that authenticates (OpenAPI ``security``); the header
# itself is parsed by keys_service.authenticate so every failure has the one error shape.
_bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKeyAuth",
    bearerFormat="fp_live_… / fp_test_…",
    description="An API key (`Authorization: Bearer fp_test_…`), shown once at creation.",
)


def get_current_key(
    request: Request,
    session: SessionDep,
    body: Annotated[bytes, Depends(_idempotent_body)],
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
) -> AuthenticatedKey:
    """Authenticate ``Authorization: Bearer fp_…`` (401 otherwise) and, on a POST carrying an
    ``Idempotency-Key``, take the idempotency lock (or replay / 400 / 409)."""
    ctx = request_context(request)
    if ctx.key is not None:
        return ctx.key
    record = keys_service.authenticate(session, request.headers.get("authorization"))
    key = AuthenticatedKey.from_record(record)
    engine = _engine(request)
    now = utcnow()
    if record.last_used_at is None or record.last_used_at <= now - _LAST_USED_RESOLUTION:
        # Its own short transaction, before the request writes anything (SQLite: one writer).
        with Session(engine) as side:
            keys_service.mark_used(side, key.id, now)
            side.commit()
    ctx.key = key
    idem_key = request.headers.get(idempotency.HEADER)
    if request.method == "POST" and idem_key is not None:
        config: ApiConfig = getattr(request.app.state, "api_config", ApiConfig())
        ictx = idempotency.begin(
            session,
            api_key_id=key.id,
            key=idem_key,
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            body=body,
            now=now,
            ttl=config.idempotency_ttl,
            lock_timeout=config.idempotency_lock_timeout,
        )
        ctx.idempotency = ictx

        def _store(s: Session) -> None:
            r = ctx.response
            if r.complete and not r.flushed:
                idempotency.complete(s, ictx, r.status, r.headers, r.body)
            else:  # streamed past the buffer: nothing to replay, so no lock either
                idempotency.discard(s, ictx)

        ctx.before_commit.append(_store)
    return key


CurrentKey = Annotated[AuthenticatedKey, Depends(get_current_key)]


def require_role(*roles: ApiRole | str) -> Any:
    """``key: Annotated[AuthenticatedKey, require_role("admin", "merchant")]`` (403 otherwise)."""
    allowed = frozenset(ApiRole(r) for r in roles)

    async def check_role(key: CurrentKey) -> AuthenticatedKey:
        if key.role not in allowed:
            raise Forbidden(
                "This endpoint needs a key with role "
                + " or ".join(sorted(r.value for r in allowed))
                + "."
            )
        return key

    return Depends(check_role)
