"""The FastAPI app factory.

Middleware, outermost first::

    CORS (only with an allow-list)  →  rate limit (token bucket per merchant and mode, 429 +
    Retry-After)  →  body limit (413)  →  _ApiMiddleware (error rendering, response buffering,
    idempotency finalisation)  →  FastAPI's exception middleware  →  routes under /v1

The lifespan owns the SQLAlchemy engine unless one is passed in (tests pass theirs).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio.to_thread
import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from api.cache import ConfigCache
from api.db import make_engine
from api.deps import (
    CONTEXT_SCOPE_KEY,
    ApiConfig,
    ChainInfo,
    IntentSigners,
    RequestContext,
    enter_request,
    leave_request,
)
from api.errors import (
    ApiError,
    RateLimited,
    Unauthorized,
    error_json,
    install_error_handlers,
    install_log_redaction,
    render_exception,
)
from api.idempotency import service as idempotency
from api.keys import service as keys_service
from api.keys.service import AuthenticatedKey
from api.operators import OperatorKeys
from api.routes import api_router
from api.runtime import WarmHeapFreezer
from api.settings import Settings, get_settings
from api.settlement.invoices import InvoiceNumbers
from api.text_input import refuse_unstorable_text
from api.webhooks.secrets import SecretCipher
from crm import Clock, KeyRing, SystemClock

__all__ = ["ApiConfig", "TokenBucketLimiter", "create_app"]

logger = logging.getLogger("followpay.api")

API_DESCRIPTION = """\
FollowPay merchant, support and admin API. Conventions (see docs/api.md):

* **Authentication**: `Authorization: Bearer fp_test_…` / `fp_live_…`.
* **Errors**: always `{"error": {"type", "code", "message", "param"}}`.
* **Idempotency**: send `Idempotency-Key` on any POST; a retry with the same key and body replays
  the stored response (header `Idempotent-Replayed: true`) for 24 hours.
* **Pagination**: `limit` (1-100, default 10) and `starting_after`, newest first; list responses are
  `{"object": "list", "data": [...], "has_more": bool, "url": "/v1/..."}`.
* **Rate limits**: a token bucket per merchant and mode (an admin key: per key); 429
  `rate_limit` with `Retry-After`.
"""


class TokenBucketLimiter:
    """In-process token buckets keyed by caller (bounded LRU of buckets). Thread-safe."""

    def __init__(self, rate: float, burst: int, *, max_buckets: int = 10_000) -> None:
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """Consume one token; 0.0 when allowed, else the seconds until a token is available."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate)
            if tokens >= 1.0:
                wait, tokens = 0.0, tokens - 1.0
            else:
                wait = (1.0 - tokens) / self.rate if self.rate > 0 else 3600.0
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
            return wait


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v
    return None


#: The customer-link routes (``api.routes.public``): no API key, limited per client address.
_PUBLIC_PREFIX = "/v1/public/"


def _route_path(scope: Scope) -> str:
    """The path the routes match: uvicorn puts its ``root_path`` (``FOLLOWPAY_API_ROOT_PATH``)
    in front of ``scope["path"]``, and routing takes it off again; so does this."""
    path, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :]
    return path


def _client_network(address: str) -> str:
    """Whose bucket an address draws from: an IPv6 client's /64 (one subscriber holds all
    2^64 of its addresses, and a fresh one per request bought a fresh bucket), an IPv4
    address (mapped into IPv6 or not) itself."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address


class _RateLimitMiddleware:
    """Keyed by the merchant and mode (live or test) of the presented API key, however the
    header spells it (the key's digest, as authentication computes it, is looked up), once
    that key has authenticated here (a route checked it; a response that merely is not a 401
    proves nothing): a merchant's keys share one bucket per mode, so minting keys buys no
    rate, and an admin key (no merchant) has its own; else by the client
    address: on customer-link routes, which take no key, for a header without a well-formed
    key, and for a key not yet known to authenticate (a fresh junk header or a fresh made-up
    key per request must not buy a fresh bucket). A key's first request counts against its
    client's address."""

    EXEMPT = frozenset({"/v1/health"})

    def __init__(
        self, app: ASGIApp, limiter: TokenBucketLimiter, *, known_keys: int = 10_000
    ) -> None:
        self.app = app
        self.limiter = limiter
        self._known: OrderedDict[str, str] = OrderedDict()  # authenticated digest -> bucket
        self._known_max = known_keys
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _route_path(scope) in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        digest = self._digest(scope)
        known = None if digest is None else self._bucket_of(digest)
        if known is not None:
            bucket = known
        else:
            client = scope.get("client") or ("unknown", 0)
            bucket = f"ip:{_client_network(client[0])}"
        wait = self.limiter.take(bucket)
        if wait > 0:
            exc = RateLimited(retry_after=math.ceil(wait))
            response = error_json(
                429, type=exc.type, code=exc.code, message=exc.message, headers=exc.headers
            )
            await response(scope, receive, send)
            return
        if digest is None or known is not None:
            await self.app(scope, receive, send)
            return

        async def learn(message: Message) -> None:
            # learned only once the key authenticated (the request's context holds it): a
            # made-up key sent where no key is checked (a 404, a 422) must not buy a bucket
            ctx = scope.get(CONTEXT_SCOPE_KEY)
            key = getattr(ctx, "key", None)
            if message["type"] == "http.response.start" and key is not None:
                self._remember(digest, key)
            await send(message)

        await self.app(scope, receive, learn)

    @staticmethod
    def _digest(scope: Scope) -> str | None:
        auth = _header(scope, b"authorization")
        if not auth or _route_path(scope).startswith(_PUBLIC_PREFIX):
            return None
        try:
            return keys_service.digest_of(auth.decode("latin-1"))
        except Unauthorized:
            return None

    def _bucket_of(self, digest: str) -> str | None:
        """The bucket of a key that authenticated here, else ``None``."""
        with self._lock:
            bucket = self._known.get(digest)
            if bucket is not None:
                self._known.move_to_end(digest)
            return bucket

    def _remember(self, digest: str, key: AuthenticatedKey) -> None:
        mode = "live" if key.livemode else "test"
        owner = f"merchant:{key.merchant_id}" if key.merchant_id else "key:" + digest[:32]
        with self._lock:
            self._known[digest] = f"{owner}:{mode}"
            self._known.move_to_end(digest)
            while len(self._known) > self._known_max:
                self._known.popitem(last=False)


class _BodyLimitMiddleware:
    """413 for a declared Content-Length over the limit, or once a streamed body exceeds it.

    The whole body is read here, before the request is admitted (``_ApiMiddleware``), within
    ``read_seconds`` (408 after): read inside, a client that announced a body and sent a byte
    held an admission slot for as long as it liked, and 32 of them stopped the API. A client
    that leaves meanwhile gets nothing (and logs nothing)."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_seconds: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_seconds = read_seconds

    def _too_large(self) -> Response:
        return error_json(
            413,
            code="request_too_large",
            message=f"The request body is larger than {self.max_bytes} bytes.",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await error_json(400, code="invalid_request", message="Invalid Content-Length.")(
                    scope, receive, send
                )
                return
            if size > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
        body = bytearray()
        try:
            async with asyncio.timeout(self.read_seconds):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # the client left: nobody to answer
                        return
                    body += message.get("body", b"")
                    if len(body) > self.max_bytes:
                        await self._too_large()(scope, receive, send)
                        return
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await error_json(
                408,
                code="request_timeout",
                message=f"The request body did not arrive within {self.read_seconds:g} s.",
                headers={"Connection": "close"},
            )(scope, receive, send)
            return
        whole: Message | None = {"type": "http.request", "body": bytes(body), "more_body": False}

        async def replay() -> Message:
            nonlocal whole
            if whole is not None:
                message, whole = whole, None
                return message
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)


class _CustomerLinkHeadersMiddleware:
    """Every ``/v1/public/`` response (JSON answers and errors too, not only the HTML pages)
    gets ``no-store``, ``no-referrer`` and ``nosniff`` unless it set its own: the URL holds
    the customer's token, and a message's body holds live rating links."""

    PREFIX = "/v1/public/"
    HEADERS = (
        (b"cache-control", b"no-store"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-content-type-options", b"nosniff"),
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _route_path(scope).startswith(self.PREFIX):
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in self.HEADERS if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class _ApiMiddleware:
    """Renders every escaping exception in the one error shape, makes the request's context
    current (``api.deps.current_request``), holds the response back until the request
    transaction has committed (routes outside ``ApiRouter`` commit after rendering), and stores
    the 4xx answer of an idempotent request that rolled back (5xx answers are never stored).

    It also admits at most ``max_in_flight`` requests at once (the rest wait here, in the event
    loop) and keeps the thread pool larger than that: a request holding a connection and, on
    SQLite, the write gate may need a second thread-pool call (a key-cache miss, a plain route's
    commit); without the bound, requests waiting for the gate could occupy every pool thread
    while the gate's holder waits for one: a deadlock until the busy timeout (seen with 50
    concurrent creates and anyio's default 40 threads)."""

    MAX_BUFFER = 8 * 1024 * 1024
    SPARE_THREADS = 8  # sync work outside any request: startup, after-response callbacks

    def __init__(self, app: ASGIApp, max_in_flight: int, freeze_heap_after: int = 0) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self._freezer = WarmHeapFreezer(freeze_heap_after)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._admission: asyncio.Semaphore | None = None

    def _admit(self) -> asyncio.Semaphore:
        """The semaphore of the running loop (tests run one app under several loops)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._admission = loop, asyncio.Semaphore(self.max_in_flight)
            limiter = anyio.to_thread.current_default_thread_limiter()
            limiter.total_tokens = max(
                limiter.total_tokens, self.max_in_flight + self.SPARE_THREADS
            )
        assert self._admission is not None
        return self._admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        async with self._admit():
            await self._handle(scope, receive, send)
        self._freezer.served()

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = RequestContext()
        scope[CONTEXT_SCOPE_KEY] = ctx
        token = enter_request(ctx)
        try:
            await self._serve(ctx, scope, receive, send)
        finally:
            leave_request(token)

    async def _serve(self, ctx: RequestContext, scope: Scope, receive: Receive, send: Send) -> None:
        buf = ctx.response

        async def capture(message: Message) -> None:
            if buf.flushed:
                await send(message)
                return
            kind = message["type"]
            if kind == "http.response.start":
                buf.status = int(message["status"])
                buf.headers = [
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in message.get("headers", [])
                ]
                buf.chunks.clear()
                buf.complete = False
            elif kind == "http.response.body":
                buf.chunks.append(bytes(message.get("body", b"")))
                if not message.get("more_body", False):
                    buf.complete = True
                elif sum(len(c) for c in buf.chunks) > self.MAX_BUFFER:
                    # A large streamed response: stop buffering (it is sent before the commit).
                    await self._flush(send, buf, more_body=True)
                    buf.flushed = True
            else:
                await send(message)

        method = scope.get("method", "")
        path = scope.get("path", "")
        try:
            await self.app(scope, receive, capture)
        except Exception as exc:
            if buf.flushed:
                logger.error("error after a streamed response started: %s", type(exc).__name__)
                return
            response = (  # a plain route's commit can meet a duplicate that committed first
                replay_response(exc)
                if isinstance(exc, idempotency.IdempotentReplay)
                else render_exception(exc, method=method, path=path)
            )
            buf.status = 0
            await response(scope, receive, capture)
        if not buf.complete and not buf.flushed:
            await render_exception(RuntimeError("no response"), method=method, path=path)(
                scope, receive, capture
            )
        ictx = ctx.idempotency
        if ictx is not None and not ictx.done and buf.complete and not buf.flushed:
            engine = scope["app"].state.engine
            try:
                await run_in_threadpool(
                    idempotency.store_outside, engine, ictx, buf.status, buf.headers, buf.body
                )
            except (idempotency.IdempotentReplay, ApiError) as answer:
                # the key already answers otherwise (a duplicate committed first)
                replacement = (
                    replay_response(answer)
                    if isinstance(answer, idempotency.IdempotentReplay)
                    else render_exception(answer, method=method, path=path)
                )
                await replacement(scope, receive, capture)
            except Exception as exc:
                logger.error("idempotency finalisation failed: %s", type(exc).__name__)
        if not buf.flushed:
            await self._flush(send, buf, more_body=False)

    @staticmethod
    async def _flush(send: Send, buf: Any, *, more_body: bool) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": buf.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in buf.headers],
            }
        )
        await send({"type": "http.response.body", "body": buf.body, "more_body": more_body})
        buf.chunks.clear()


def replay_response(replay: idempotency.IdempotentReplay) -> Response:
    """The stored response, byte for byte, marked ``Idempotent-Replayed: true``."""
    response = Response(content=replay.body, status_code=replay.status)
    for k, v in replay.headers:
        if k.lower() != idempotency.REPLAYED_HEADER.lower():
            response.headers.append(k, v)
    response.headers[idempotency.REPLAYED_HEADER] = "true"
    return response


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {})
    idem_param = {
        "name": idempotency.HEADER,
        "in": "header",
        "required": False,
        "description": "Optional. A unique key (≤255 chars, e.g. a UUID) that makes this POST "
        "safe to retry: the same key and body replay the first response for 24 h "
        "(`Idempotent-Replayed: true`); a different body is a 400 `idempotency_error`; a "
        "concurrent duplicate waits for the first one's commit and gets its answer.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
        "example": "6f1c3b1e-6a43-4b8e-9d8f-2b0f1a8c7e11",
    }
    for item in schema.get("paths", {}).values():
        post = item.get("post")
        # Idempotency is keyed by the API key: documented on authenticated POSTs only.
        if post is not None and post.get("security"):
            params = post.setdefault("parameters", [])
            if not any(p.get("name") == idempotency.HEADER for p in params):
                params.append(dict(idem_param))
            post.setdefault("responses", {}).setdefault(
                "409", {"$ref": "#/components/responses/IdempotencyConflict"}
            )
    components.setdefault("responses", {})["IdempotencyConflict"] = {
        "description": "The Idempotency-Key is held by an unfinished request recorded by an "
        "earlier release (until its lock times out); a concurrent duplicate of this release "
        "waits for the first request and replays its answer instead",
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorResponse"},
                "example": {
                    "error": {
                        "type": "idempotency_error",
                        "code": "idempotency_key_in_use",
                        "message": "There is currently another in-progress request using this "
                        "Idempotency-Key. Retry this request later.",
                        "param": "Idempotency-Key",
                    }
                },
            }
        },
    }
    app.openapi_schema = schema
    return schema


async def _purge_idempotency(engine: sa.Engine, every: float) -> None:
    """Delete expired idempotency records now and then: their stored responses (sealed, and
    carrying minted keys, webhook secrets or a contact's fields) must not outlive their TTL."""
    while True:
        await asyncio.sleep(every)
        try:
            purged = await asyncio.to_thread(idempotency.purge_expired, engine)
            if purged:
                logger.info("purged %d expired idempotency records", purged)
        except Exception as exc:  # the database may be briefly unavailable: next round
            logger.warning("idempotency purge failed: %s", type(exc).__name__)


#: The interpreter's recursion limit in an API process. eth-account imports py_ecc, which
#: raises it to 100,000 for the whole process: the JSON parser then recursed through a deeply
#: nested request body (~160 KB of brackets, no API key needed) until the C stack overflowed
#: and the server died with SIGSEGV, instead of stopping with a RecursionError (a 400).
MAX_RECURSION = 2000


def _bound_recursion() -> None:
    if sys.getrecursionlimit() > MAX_RECURSION:
        sys.setrecursionlimit(MAX_RECURSION)


def create_app(
    settings: Settings | None = None,
    *,
    engine: sa.Engine | None = None,
    config: ApiConfig | None = None,
    routers: Sequence[APIRouter] = (),
    keyring: KeyRing | None = None,
    signers: IntentSigners | None = None,
    chain_info: ChainInfo | None = None,
    clock: Clock | None = None,
    cipher: SecretCipher | None = None,
) -> FastAPI:
    """Build the API. ``routers`` (resource routers, paths without ``/v1``) are mounted under /v1.

    ``engine`` given: used as is and not disposed. Otherwise the lifespan creates one from
    ``settings.resolved_database_url`` (SQLite in ``FOLLOWPAY_HOME`` by default, PostgreSQL via
    ``FOLLOWPAY_DATABASE_URL``) and disposes it at shutdown. Tables are created by migrations
    (``api.db.upgrade``), never here.

    ``keyring`` (CRM personal-data keys) defaults to one built on first use from
    ``FOLLOWPAY_MASTER_KEY`` / ``<home>/master.key``. ``signers``
    (:class:`api.operators.OperatorKeys`) maps merchant operator addresses to
    :class:`wallet.signing.Signer` objects, and ``chain_info`` names the chain, router and token
    invoices are issued on: without them ``POST /v1/invoices`` answers 409
    ``signer_unavailable``.
    ``clock`` is the CRM clock (tests pass a ``FrozenClock``). ``cipher`` (webhook signing
    secrets) likewise defaults to :func:`api.runtime.secret_cipher` on first use.
    """
    settings = settings or get_settings()
    config = config or ApiConfig.from_settings(settings)
    _bound_recursion()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned: sa.Engine | None = None
        if app.state.engine is None:
            url = settings.resolved_database_url
            u = sa.make_url(url)
            if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
                Path(str(u.database)).parent.mkdir(parents=True, exist_ok=True)
            owned = make_engine(url)
            app.state.engine = owned
        purger = None
        if config.idempotency_purge_seconds > 0:
            purger = asyncio.create_task(
                _purge_idempotency(app.state.engine, config.idempotency_purge_seconds)
            )
        try:
            yield
        finally:
            if purger is not None:
                purger.cancel()
                with suppress(asyncio.CancelledError):
                    await purger
            if owned is not None:
                await asyncio.to_thread(owned.dispose)
                app.state.engine = None

    app = FastAPI(
        title="FollowPay API",
        version="1.0.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if config.docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if config.docs else None,
        debug=False,
        dependencies=[Depends(refuse_unstorable_text)],
    )
    app.state.settings = settings
    app.state.api_config = config
    app.state.engine = engine
    app.state.cipher = cipher
    app.state.keyring = keyring
    app.state.signers = signers or OperatorKeys()
    app.state.chain_info = chain_info
    app.state.clock = clock or SystemClock()
    app.state.invoice_numbers = InvoiceNumbers()
    app.state.config_cache = ConfigCache(config.cache_seconds)
    app.state.rate_limiter = TokenBucketLimiter(
        config.rate_limit_per_second, config.rate_limit_burst
    )

    install_error_handlers(app)
    install_log_redaction()  # uvicorn's access log prints customer links' tokens otherwise

    async def _replay(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, idempotency.IdempotentReplay)
        return replay_response(exc)

    app.add_exception_handler(idempotency.IdempotentReplay, _replay)

    app.include_router(api_router(*routers))

    # add_middleware puts each new one outermost: add innermost first.
    app.add_middleware(
        _ApiMiddleware,
        max_in_flight=config.max_in_flight,
        freeze_heap_after=config.freeze_heap_after,
    )
    app.add_middleware(
        _BodyLimitMiddleware,
        max_bytes=config.max_body_bytes,
        read_seconds=config.body_read_seconds,
    )
    app.add_middleware(_RateLimitMiddleware, limiter=app.state.rate_limiter)
    app.add_middleware(_CustomerLinkHeadersMiddleware)  # the limiter's 429s get them too
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "PATCH"],
            allow_headers=["Authorization", "Content-Type", idempotency.HEADER],
            expose_headers=[idempotency.REPLAYED_HEADER, "Retry-After"],
            allow_credentials=False,
            max_age=600,
        )

    if config.trusted_proxies:  # outermost: the limiter and the access log see the customer
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(config.trusted_proxies))

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def dump_openapi(app: FastAPI) -> str:
    return json.dumps(app.openapi(), indent=2, sort_keys=True)
