"""The API benchmark's load generator: counts right, charges stalls to the requests they delay."""

from __future__ import annotations

import asyncio

from scripts import loadgen


class _Server:
    """A keep-alive HTTP/1.1 server on a free loopback port; request ``n`` answers after
    ``delays.get(n, 0)`` seconds, status 201 unless ``n`` is in ``fail``."""

    def __init__(self, delays: dict[int, float] | None = None, fail: set[int] | None = None):
        self.delays = delays or {}
        self.fail = fail or set()
        self.seen = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                self.seen += 1
                n = self.seen
                await asyncio.sleep(self.delays.get(n, 0))
                status = b"500 Oops" if n in self.fail else b"201 Created"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionResetError):
            writer.close()


def _factory(n: int) -> bytes:
    return loadgen.render("POST", "/x", "127.0.0.1", {"X-N": str(n)}, b'{"n": 1}')


async def _run(server: _Server, coro_factory):  # type: ignore[no-untyped-def]
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        return await coro_factory(port)
    finally:
        listener.close()
        await listener.wait_closed()


def test_closed_loop_counts_requests_and_errors() -> None:
    server = _Server(fail={3, 7})

    async def go(port: int) -> loadgen.LoadResult:
        return await loadgen.closed_loop(
            "127.0.0.1", port, _factory, connections=4, total=40, seconds=10
        )

    result = asyncio.run(_run(server, go))
    assert len(result.statuses) == 40
    assert server.seen == 40
    assert result.errors == 2
    assert result.ok == 38
    assert len(result.latencies) == 38


def test_open_loop_charges_a_stall_to_every_request_it_delays() -> None:
    # 1 connection, 20 req/s for 1 s: request 3 stalls 0.5 s. The requests scheduled during the
    # stall wait for the connection; their latency counts from their scheduled time, so several
    # show up as slow (a closed-loop client would report only the one slow request).
    server = _Server(delays={3: 0.5})

    async def go(port: int) -> loadgen.LoadResult:
        # a hang guard only: a stuck run fails with TimeoutError instead of blocking the suite
        return await asyncio.wait_for(
            loadgen.open_loop("127.0.0.1", port, _factory, connections=1, rate=20, seconds=1),
            30,
        )

    result = asyncio.run(_run(server, go))
    assert len(result.statuses) == 20
    slow = [lat for lat in result.latencies if lat > 0.2]
    assert len(slow) >= 5
    assert max(result.latencies) >= 0.45
    assert result.offered_rps == 20
