"""Request dependencies (``Annotated`` aliases) and the per-request context.

Transaction rules (polar style): a route never commits. :data:`SessionDep` yields one
session per request; when the route and the response rendering succeed, the request
commits (after writing the idempotent response into the same transaction), then runs the
:data:`AfterCommit` callbacks (enqueue jobs, wake the webhook worker…). On any error it rolls back
and drops them. Routes of an :class:`api.routing.ApiRouter` (all of ours) do all of this in the
endpoint's own thread-pool call, before FastAPI sends anything; for other routes the session
dependency does it afterwards and the app's outer middleware buffers the response until then. Either
way a client never sees a 2xx for a transaction that failed to commit.

Authentication (:data:`CurrentKey`) reads a short-lived in-process cache first
(:class:`api.cache.ConfigCache`) and the database only on a miss; the idempotent response of a
POST is the last statement of the request's transaction (:mod:`api.idempotency.service`).

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

import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

import anyio
import anyio.to_thread
import sqlalchemy as sa
from anyio import CapacityLimiter
from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from sqlmodel import Session
from starlette.responses import Response

from api.cache import ConfigCache
from api.db import utcnow
from api.errors import Forbidden, ServerError
from api.idempotency import service as idempotency
from api.keys import service as keys_service
from api.keys.roles import ApiRole
from api.keys.service import AuthenticatedKey
from api.operators import OperatorKeys
from api.settings import Settings, trusted_proxy_networks
from api.settlement.invoices import InvoiceNumbers
from api.webhooks.secrets import SecretCipher
from crm import Clock, KeyRing

__all__ = [
    "CONTEXT_SCOPE_KEY",
    "AfterCommit",
    "ApiConfig",
    "ApiKeyAuth",
    "BufferedResponse",
    "ChainInfo",
    "ChainInfoDep",
    "CipherDep",
    "ClockDep",
    "ConfigCacheDep",
    "ConfigDep",
    "CurrentKey",
    "EngineDep",
    "IntentSigners",
    "Invoicing",
    "InvoicingDep",
    "KeyRingDep",
    "RequestContext",
    "SessionDep",
    "SettingsDep",
    "SignersDep",
    "current_request",
    "get_current_key",
    "get_keyring",
    "get_session",
    "request_context",
    "require_role",
]

logger = logging.getLogger("followpay.api")

CONTEXT_SCOPE_KEY = "followpay.context"
_LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class ApiConfig:
    """HTTP-layer knobs; :meth:`from_settings` reads the ``FOLLOWPAY_API_*`` settings."""

    max_body_bytes: int = 1024 * 1024
    #: Seconds a client has to send its whole body (408 after): the body is read before the
    #: request is admitted, so a client that stalls holds no admission slot meanwhile.
    body_read_seconds: float = 30.0
    rate_limit_per_second: float = 25.0
    rate_limit_burst: int = 100
    cors_origins: tuple[str, ...] = ()
    idempotency_ttl: timedelta = idempotency.DEFAULT_TTL
    idempotency_lock_timeout: timedelta = idempotency.DEFAULT_LOCK_TIMEOUT
    docs: bool = True
    #: Requests inside the app at once; more wait in the event loop (see ``api.app``).
    max_in_flight: int = 32
    #: Seconds keys, accounts and webhook subscriptions are served from memory
    #: (:mod:`api.cache`); 0: off.
    cache_seconds: float = 1.0
    #: Requests after which the heap is frozen again (:class:`api.runtime.WarmHeapFreezer`).
    freeze_heap_after: int = 200
    #: Seconds between deletions of expired idempotency records (0: never, tests).
    idempotency_purge_seconds: float = 600.0
    #: Peers (networks) whose ``X-Forwarded-For`` is believed; empty: none (``api.app``).
    trusted_proxies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if self.cache_seconds < 0:
            raise ValueError("cache_seconds must be >= 0")
        if self.freeze_heap_after < 0:
            raise ValueError("freeze_heap_after must be >= 0")
        if self.idempotency_purge_seconds < 0:
            raise ValueError("idempotency_purge_seconds must be >= 0")
        # validated and normalised however the config was built (uvicorn trusts "*" silently)
        object.__setattr__(self, "trusted_proxies", trusted_proxy_networks(self.trusted_proxies))

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiConfig:
        origins = tuple(o.strip() for o in settings.api_cors_origins.split(",") if o.strip())
        return cls(
            max_body_bytes=settings.api_max_body_bytes,
            rate_limit_per_second=settings.api_rate_limit_per_second,
            rate_limit_burst=settings.api_rate_limit_burst,
            cors_origins=origins,
            idempotency_ttl=timedelta(seconds=settings.api_idempotency_ttl_seconds),
            docs=settings.api_docs,
            max_in_flight=settings.api_max_in_flight,
            cache_seconds=settings.api_cache_seconds,
            trusted_proxies=tuple(settings.api_trusted_proxies.split(",")),
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

    def record(self, response: Response) -> None:
        """Hold ``response`` as the one about to be sent (streamed bodies stay incomplete)."""
        self.status = response.status_code
        self.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers]
        body = getattr(response, "body", None)
        self.chunks = [bytes(body)] if isinstance(body, bytes | memoryview) else []
        self.complete = isinstance(body, bytes | memoryview)


@dataclass
class RequestContext:
    """Per-request state shared by the outer middleware, the dependencies and the route."""

    response: BufferedResponse = field(default_factory=BufferedResponse)
    key: AuthenticatedKey | None = None
    idempotency: idempotency.IdempotencyContext | None = None
    session: Session | None = None
    #: ``hook(session, response)`` (no closure over the context: a request must leave no
    #: reference cycle behind, or every request's objects wait for a full collection).
    before_commit: list[Callable[[Session, BufferedResponse], object]] = field(default_factory=list)
    after_commit: list[Callable[[], object]] = field(default_factory=list)
    finished: bool = False

    def finish(self, response: Response | None = None) -> None:
        """Commit the request's transaction in the calling thread: before-commit hooks (which
        see ``response``, or the buffered one), commit, after-commit callbacks; close."""
        self.finished = True
        session = self.session
        if session is None:
            return
        if response is not None:
            self.response.record(response)
        try:
            try:
                for hook in self.before_commit:
                    hook(session, self.response)
                session.commit()
            except BaseException:
                session.rollback()
                self.after_commit.clear()
                raise
            if self.idempotency is not None:
                self.idempotency.done = True  # stored with the commit, or not storable
            for callback in self.after_commit:
                try:
                    callback()
                except Exception as exc:  # committed: never turn it into an error
                    logger.error(
                        "after-commit callback failed: %s", type(exc).__name__, exc_info=exc
                    )
            self.after_commit.clear()
        finally:
            session.close()

    def abort(self) -> None:
        """Roll back (in the calling thread) and drop the after-commit callbacks."""
        self.finished = True
        session = self.session
        self.after_commit.clear()
        if session is not None:
            try:
                session.rollback()
            finally:
                session.close()

    @property
    def idle(self) -> bool:
        """Nothing to commit or run: the session never began a transaction."""
        if self.session is None:
            return True
        return not (self.session.in_transaction() or self.before_commit or self.after_commit)


_CURRENT: ContextVar[RequestContext | None] = ContextVar("followpay_request", default=None)


def current_request() -> RequestContext | None:
    """The context of the request being served (set by the app's middleware; thread-pool
    calls inherit it)."""
    return _CURRENT.get()


def enter_request(ctx: RequestContext) -> Any:
    """Make ``ctx`` the current request; returns the token for :func:`leave_request`."""
    return _CURRENT.set(ctx)


def leave_request(token: Any) -> None:
    _CURRENT.reset(token)


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
    """Webhook secrets' cipher; built once from the master key the key ring uses."""
    state = request.app.state
    cipher = getattr(state, "cipher", None)
    if cipher is None:
        from api.runtime import secret_cipher

        cipher = secret_cipher(state.settings)
        state.cipher = cipher
    return cipher


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
    registration: Callable[[str], tuple[str, str] | None] | None = None
    """Optional: the router's ``merchantOf(address)`` as ``(payout, operator)``, ``None`` when
    unregistered. With it, registering an account requires the on-chain registration to match:
    only the address itself can register it on the router, so this proves control of it."""


IntentSigners = OperatorKeys
"""Operator address (any case) -> the :class:`~wallet.signing.Signer` that signs its intents, and
the merchant each bound key signs for (``OperatorKeys.for_merchant``).

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
    return getattr(request.app.state, "signers", None) or OperatorKeys()


async def get_chain_info(request: Request) -> ChainInfo | None:
    return getattr(request.app.state, "chain_info", None)


async def get_clock(request: Request) -> Clock:
    return request.app.state.clock


@dataclass(frozen=True, slots=True)
class Invoicing:
    """What issuing an invoice takes from the app, as one dependency (each dependency costs
    FastAPI more than reading app state): chain, operator signers, clock, engine, numbers and
    the configuration cache (accounts, webhook subscriptions)."""

    chain: ChainInfo | None
    signers: IntentSigners
    clock: Clock
    engine: sa.Engine
    numbers: InvoiceNumbers
    cache: ConfigCache


async def get_invoicing(request: Request) -> Invoicing:
    state = request.app.state
    return Invoicing(
        chain=getattr(state, "chain_info", None),
        signers=getattr(state, "signers", None) or OperatorKeys(),
        clock=state.clock,
        engine=_engine(request),
        numbers=state.invoice_numbers,
        cache=_config_cache(request),
    )


EngineDep = Annotated[sa.Engine, Depends(get_engine)]
KeyRingDep = Annotated[KeyRing, Depends(get_keyring)]
SignersDep = Annotated[IntentSigners, Depends(get_signers)]
ChainInfoDep = Annotated[ChainInfo | None, Depends(get_chain_info)]
ClockDep = Annotated[Clock, Depends(get_clock)]
InvoicingDep = Annotated[Invoicing, Depends(get_invoicing)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
ConfigDep = Annotated[ApiConfig, Depends(get_config)]
CipherDep = Annotated[SecretCipher, Depends(get_cipher)]


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request (see the module docstring).

    An async generator on purpose: creating the session does no I/O. When the route did not
    finish the transaction itself (a plain ``APIRouter`` route, or an error before the endpoint
    ran), the end of the request is ONE thread-pool call with its own limiter, shielded from
    cancellation, so a request never waits for a free worker while it holds a connection; an
    idle session is just closed."""
    ctx = request_context(request)
    session = Session(_engine(request), expire_on_commit=False)
    ctx.session = session
    try:
        yield session
    except BaseException:
        if not ctx.finished:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(ctx.abort, limiter=CapacityLimiter(1))
        raise
    else:
        if ctx.finished:
            return
        if ctx.idle:
            ctx.abort()  # no transaction: closing does no I/O
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(ctx.finish, limiter=CapacityLimiter(1))


SessionDep = Annotated[Session, Depends(get_session)]


async def get_after_commit(request: Request) -> list[Callable[[], object]]:
    """Append zero-argument callables; they run only after the request's commit succeeded."""
    return request_context(request).after_commit


AfterCommit = Annotated[list[Callable[[], object]], Depends(get_after_commit)]


def _load_key(engine: sa.Engine, digest: str) -> AuthenticatedKey:
    """A cache miss: look the key up (401 unless active) and record its use (at most once per
    minute, in this short transaction of its own)."""
    with Session(engine) as session:
        record = keys_service.authenticate_digest(session, digest)
        now = utcnow()
        if record.last_used_at is None or record.last_used_at <= now - _LAST_USED_RESOLUTION:
            keys_service.mark_used(session, record.id, now)
            session.commit()
        return AuthenticatedKey.from_record(record)


def _config_cache(request: Request) -> ConfigCache:
    state = request.app.state
    cache = getattr(state, "config_cache", None)
    if cache is None:
        config: ApiConfig = getattr(state, "api_config", ApiConfig())
        cache = state.config_cache = ConfigCache(config.cache_seconds)
    return cache


async def get_config_cache(request: Request) -> ConfigCache:
    return _config_cache(request)


ConfigCacheDep = Annotated[ConfigCache, Depends(get_config_cache)]


async def get_current_key(request: Request) -> AuthenticatedKey:
    """Authenticate ``Authorization: Bearer fp_…`` (401 otherwise) and, on a POST carrying an
    ``Idempotency-Key``, make the stored response the request transaction's last statement
    (a duplicate that committed first makes it a replay / 400 instead)."""
    ctx = request_context(request)
    if ctx.key is not None:
        return ctx.key
    digest = keys_service.digest_of(request.headers.get("authorization"))
    cache = _config_cache(request)
    key: AuthenticatedKey | None = cache.get(("key", digest))
    if key is None:
        loader = functools.partial(_load_key, _engine(request), digest)
        key = await anyio.to_thread.run_sync(cache.load, ("key", digest), loader)
    ctx.key = key
    idem_key = request.headers.get(idempotency.HEADER)
    if request.method == "POST" and idem_key is not None:
        config: ApiConfig = getattr(request.app.state, "api_config", ApiConfig())
        ictx = idempotency.prepare(
            api_key_id=key.id,
            key=idem_key,
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            body=await request.body(),
            ttl=config.idempotency_ttl,
            sealing_key=keys_service.sealing_key(request.headers.get("authorization")),
        )
        ctx.idempotency = ictx

        def _store(s: Session, r: BufferedResponse) -> None:
            # a 5xx or a body streamed past the buffer is not stored: a retry runs again
            if r.complete and not r.flushed and r.status < 500:
                idempotency.record(
                    s,
                    ictx,
                    r.status,
                    r.headers,
                    r.body,
                    lock_timeout=config.idempotency_lock_timeout,
                )

        ctx.before_commit.append(_store)
    return key


class ApiKeyAuth(HTTPBearer):
    """The API key as ONE dependency: :func:`get_current_key` plus an optional role check.

    A ``SecurityBase`` (FastAPI's bearer scheme) so that every operation using it documents the
    ``ApiKeyAuth`` scheme in OpenAPI; the header itself is parsed by :func:`get_current_key`, so
    every failure has the one error shape."""

    def __init__(self, roles: frozenset[ApiRole] | None = None) -> None:
        super().__init__(
            auto_error=False,
            scheme_name="ApiKeyAuth",
            bearerFormat="fp_live_… / fp_test_…",
            description="An API key (`Authorization: Bearer fp_test_…`), shown once at creation.",
        )
        self.roles = roles

    async def __call__(self, request: Request) -> AuthenticatedKey:  # type: ignore[override]
        key = await get_current_key(request)
        if self.roles is not None and key.role not in self.roles:
            raise Forbidden(
                "This endpoint needs a key with role "
                + " or ".join(sorted(r.value for r in self.roles))
                + "."
            )
        return key


CurrentKey = Annotated[AuthenticatedKey, Depends(ApiKeyAuth())]


def require_role(*roles: ApiRole | str) -> Any:
    """``key: Annotated[AuthenticatedKey, require_role("admin", "merchant")]`` (403 otherwise)."""
    return Depends(ApiKeyAuth(frozenset(ApiRole(r) for r in roles)))
