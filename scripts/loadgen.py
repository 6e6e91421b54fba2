"""A lean HTTP/1.1 load generator for the API benchmark (loopback only, bounded in count and time).

Why not httpx: its async client spends ~1 ms of CPU per request here, as much as the server under
test, and it shares the machine's two cores with that server. This client pre-renders each
request's bytes, writes them on a keep-alive connection and reads the status line, the headers
and a ``Content-Length`` body (responses without one are counted as errors). Two modes:

* :func:`closed_loop`: ``connections`` clients, each sending its next request as soon as the
  previous answer arrived — throughput at saturation. Latency here is mostly queueing: by
  Little's law the mean is ``connections / throughput``.
* :func:`open_loop`: the same clients, but requests are *scheduled* at a fixed total rate
  (spread evenly over the connections) and latency is measured from the scheduled send time, so
  a stalled server is charged for the requests it delayed (no coordinated omission, as in wrk2).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["LoadResult", "RequestFactory", "closed_loop", "open_loop", "render"]

RequestFactory = Callable[[int], bytes]
"""``factory(sequence_number) -> the full request bytes`` (request line, headers, body)."""


def render(method: str, path: str, host: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    statuses: list[int] = field(default_factory=list)
    seconds: float = 0.0
    offered_rps: float | None = None

    @property
    def ok(self) -> int:
        return sum(1 for s in self.statuses if 200 <= s < 300)

    @property
    def errors(self) -> int:
        return len(self.statuses) - self.ok

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile_ms(self, p: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))] * 1000


#: Seconds one request may take before the run fails (a hung server must not hang the bench).
EXCHANGE_TIMEOUT = 30.0


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    try:
        async with asyncio.timeout(EXCHANGE_TIMEOUT):
            return await _answer(reader, writer, request)
    except TimeoutError:
        raise RuntimeError(f"no answer within {EXCHANGE_TIMEOUT:g} s") from None


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        return 599  # chunked or close-delimited: not what the API sends
    if length:
        await reader.readexactly(length)
    return status


async def _connect(host: str, port: int, n: int) -> list[tuple[asyncio.StreamReader, ...]]:
    return [await asyncio.open_connection(host, port) for _ in range(n)]  # type: ignore[misc]


async def closed_loop(
    host: str, port: int, factory: RequestFactory, *, connections: int, total: int, seconds: float
) -> LoadResult:
    """Up to ``total`` requests or ``seconds``, whichever comes first."""
    conns = await _connect(host, port, connections)
    result = LoadResult()
    issued = 0
    deadline = time.perf_counter() + seconds

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal issued
        while issued < total and time.perf_counter() < deadline:
            issued += 1
            request = factory(issued)
            started = time.perf_counter()
            status = await _exchange(reader, writer, request)
            if 200 <= status < 300:
                result.latencies.append(time.perf_counter() - started)
            result.statuses.append(status)

    started = time.perf_counter()
    await asyncio.gather(*(client(r, w) for r, w in conns))  # type: ignore[has-type]
    result.seconds = time.perf_counter() - started
    for _, w in conns:  # type: ignore[has-type]
        w.close()
    return result


async def open_loop(
    host: str, port: int, factory: RequestFactory, *, connections: int, rate: float, seconds: float
) -> LoadResult:
    """``rate`` requests/s in total for ``seconds``; connection ``i`` owns every
    ``connections``-th slot of the schedule. A request whose slot comes while its connection is
    still busy waits for it, and that wait counts in its latency."""
    conns = await _connect(host, port, connections)
    result = LoadResult(offered_rps=rate)
    count = int(rate * seconds)
    start = time.perf_counter() + 0.05

    async def client(
        index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        for k in range(index, count, connections):
            slot = start + k / rate
            delay = slot - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            status = await _exchange(reader, writer, factory(k + 1))
            if 200 <= status < 300:
                result.latencies.append(time.perf_counter() - slot)
            result.statuses.append(status)

    await asyncio.gather(*(client(i, r, w) for i, (r, w) in enumerate(conns)))  # type: ignore[has-type]
    result.seconds = time.perf_counter() - start
    for _, w in conns:  # type: ignore[has-type]
        w.close()
    return result
