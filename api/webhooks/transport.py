"""The HTTP side of a webhook delivery: a guarded client, one bounded POST, generic errors.

- :func:`delivery_client`: an ``httpx.Client`` whose connections go only to addresses the
  :class:`~api.webhooks.targets.TargetPolicy` allows. The host is resolved when a connection is
  opened, every address checked, and the socket opened to a checked address; the URL is not
  rewritten, so the ``Host`` header, TLS SNI and certificate check still use the host name.
  Environment proxies are not used (the check must see the receiver's own address).
- :func:`post`: one POST under an overall wall-clock deadline (:data:`ATTEMPT_TIMEOUT`; httpx's
  own timeouts are per socket operation, so a receiver trickling its reply a byte at a time would
  never hit them), reading at most :data:`RESPONSE_READ_CAP` bytes of the reply.
- :func:`describe_error`: what the delivery log says about a failed request — a fixed phrase
  ("timeout", "connection refused", "tls error"…), never the exception's text, which named
  internal addresses, certificates and listening ports to the merchant reading the log.

Exceptions raised while connecting are ``httpx.ConnectError`` (or ``ConnectTimeout``) with the
cause chained: :class:`~api.webhooks.targets.TargetNotAllowed`, ``socket.gaierror``,
``ConnectionRefusedError``, ``ssl.SSLError``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
import typing
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

import httpcore
import httpx

from api.deadline import run_within
from api.webhooks.service import MAX_ENABLED_ENDPOINTS
from api.webhooks.targets import TargetNotAllowed, TargetPolicy

__all__ = [
    "ATTEMPT_TIMEOUT",
    "RESPONSE_READ_CAP",
    "Reply",
    "delivery_client",
    "describe_error",
    "post",
]

#: Seconds one delivery attempt may take in all: connect, TLS, send, the reply's head.
ATTEMPT_TIMEOUT = 15.0
#: Bytes of a reply read (the delivery log keeps an excerpt); the rest is never read.
RESPONSE_READ_CAP = 1024

_deadline: ContextVar[float | None] = ContextVar("webhook_deadline", default=None)


def _bounded(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout`` cut to what is left of the current attempt's deadline."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise expired("the delivery attempt ran out of time")
    return left if timeout is None else min(timeout, left)


@contextlib.contextmanager
def _deadline_in(seconds: float) -> Iterator[float]:
    deadline = time.monotonic() + seconds
    token = _deadline.set(deadline)
    try:
        yield deadline
    finally:
        _deadline.reset(token)


class _BoundedStream(httpcore.NetworkStream):
    """A socket stream whose every operation ends by the attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _BoundedStream(self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class _UrlOriginOnly(logging.Filter):
    """httpx logs every request's full URL at INFO; a webhook URL's path and query often carry
    the merchant's own shared secret (``?token=…``), and a follow-up's links carry customer
    tokens. Only the origin is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                f"{arg.scheme}://{arg.host}{f':{arg.port}' if arg.port else ''}"
                if isinstance(arg, httpx.URL)
                else arg
                for arg in record.args
            )
        return True


logging.getLogger("httpx").addFilter(_UrlOriginOnly())


class _AddressRefused(httpcore.ConnectError):
    pass


def _vet_by_deadline(
    policy: TargetPolicy, host: str, port: int, timeout: float | None
) -> list[str]:
    """``policy.vet`` (a blocking name lookup) within ``timeout``: the lookup runs in a daemon
    thread, so a merchant's slow DNS server cannot stretch an attempt past its deadline (a
    lookup still running is abandoned: getaddrinfo cannot be cancelled)."""
    if timeout is None:
        return policy.vet(host, port)
    try:
        return run_within(lambda: policy.vet(host, port), timeout, "webhook-dns")
    except TimeoutError:
        raise httpcore.ConnectTimeout("the name lookup ran out of time") from None


class _GuardedBackend(httpcore.SyncBackend):
    """Opens TCP connections only to addresses the policy allows (resolved here, per connection)."""

    def __init__(self, policy: TargetPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = _vet_by_deadline(
                self.policy, host, port, _bounded(timeout, httpcore.ConnectTimeout)
            )
        except TargetNotAllowed as exc:
            raise _AddressRefused("address not allowed") from exc
        except (OSError, UnicodeError, ValueError) as exc:  # the name did not resolve
            raise httpcore.ConnectError("dns error") from exc
        failure: Exception | None = None
        for address in addresses:
            try:
                stream = super().connect_tcp(
                    address,
                    port,
                    _bounded(timeout, httpcore.ConnectTimeout),
                    local_address,
                    socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return _BoundedStream(stream)
        assert failure is not None
        raise failure


class _GuardedTransport(httpx.HTTPTransport):
    def __init__(self, policy: TargetPolicy) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            # a follow-up POSTs to every enabled endpoint at once: stalled ones must not
            # leave a healthy one waiting for a connection (httpcore's default is 10)
            max_connections=MAX_ENABLED_ENDPOINTS,
            network_backend=_GuardedBackend(policy),
        )


def delivery_client(policy: TargetPolicy) -> httpx.Client:
    """The client deliveries use (no redirects followed, no environment proxies)."""
    return httpx.Client(
        transport=_GuardedTransport(policy),
        timeout=httpx.Timeout(ATTEMPT_TIMEOUT),
        follow_redirects=False,
        trust_env=False,
    )


@dataclass(frozen=True)
class Reply:
    status_code: int
    head: bytes  # at most RESPONSE_READ_CAP bytes of the body

    @property
    def excerpt(self) -> str | None:
        """The body's start as text; NUL (which PostgreSQL's text refuses: a gzip or UTF-16 reply
        has them) becomes U+FFFD, like undecodable bytes."""
        text = self.head.decode("utf-8", "replace").replace("\x00", "\ufffd")
        return text[:1000] or None


def post(
    client: httpx.Client,
    url: str,
    content: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float = ATTEMPT_TIMEOUT,
) -> Reply:
    """POST ``content`` and return the status and the start of the body, all within
    ``timeout`` seconds. Raises ``httpx.HTTPError`` when no status line arrived in time. A body
    still arriving when time is up is cut short (the status counts)."""
    with (
        _deadline_in(timeout) as deadline,
        client.stream(
            "POST", url, content=content, headers={**headers, "Accept-Encoding": "identity"}
        ) as response,
    ):
        if response.is_stream_consumed:  # a response built in memory (httpx.MockTransport)
            return Reply(response.status_code, response.content[:RESPONSE_READ_CAP])
        head = bytearray()
        with contextlib.suppress(httpx.TransportError):
            for chunk in response.iter_raw():
                head += chunk
                if len(head) >= RESPONSE_READ_CAP or time.monotonic() >= deadline:
                    break
        return Reply(response.status_code, bytes(head[:RESPONSE_READ_CAP]))


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def describe_error(exc: httpx.HTTPError) -> str:
    """A fixed phrase for the delivery log (see the module docstring)."""
    chain = list(_causes(exc))
    if any(isinstance(e, TargetNotAllowed) for e in chain):
        return "address not allowed"
    if any(isinstance(e, socket.gaierror | UnicodeError) for e in chain):  # IDNA: a bad label
        return "dns error"
    if isinstance(exc, httpx.TimeoutException) or any(
        isinstance(e, TimeoutError | httpcore.TimeoutException) for e in chain
    ):
        return "timeout"
    if any(isinstance(e, ssl.SSLError | ssl.CertificateError) for e in chain):
        return "tls error"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused"
    if isinstance(exc, httpx.ConnectError):
        return "connection failed"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return "connection closed"
    return "request failed"
