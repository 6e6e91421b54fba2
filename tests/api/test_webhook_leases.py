"""Webhook claims and attempts: a killed worker's rows go out once its one-attempt lease passes,
a slow round's unreached rows go to another worker, a worker that lost its claim sends and
writes nothing, every attempt is signed when it is sent, replies are read capped and under one
deadline. Real HTTP receivers on 127.0.0.1; injected clocks instead of waiting."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from api.db import session_factory, session_scope, utcnow
from api.webhooks import delivery, repository, transport
from api.webhooks import service as webhooks
from api.webhooks.models import DeliveryStatus, WebhookDelivery
from api.webhooks.signing import SIGNATURE_HEADER
from api.webhooks.targets import TargetPolicy

LOCAL = TargetPolicy(allow_private=True)


@dataclass
class Hooked:
    """A receiver that records (worker, delivery id, signature t) and runs ``hook`` once, inside
    the first request, before answering ``first_status`` to it (then 200). ``each(worker,
    delivery id)`` runs inside every request, before the answer."""

    url: str = ""
    posts: list[tuple[str, str, int]] = field(default_factory=list)
    hook: Callable[[], None] | None = None
    each: Callable[[str, str], None] | None = None
    first_status: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def hooked() -> Iterator[Hooked]:
    state = Hooked()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            t = int(self.headers[SIGNATURE_HEADER].split(",")[0].removeprefix("t="))
            with state.lock:
                first = not state.posts
                state.posts.append(
                    (self.headers["X-Worker"], self.headers["FollowPay-Delivery-Id"], t)
                )
                hook, state.hook = (state.hook, None) if first else (None, state.hook)
            if hook is not None:
                hook()
            if state.each is not None:
                state.each(self.headers["X-Worker"], self.headers["FollowPay-Delivery-Id"])
            self.send_response(state.first_status if first else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _client(worker: str) -> httpx.Client:
    return httpx.Client(headers={"X-Worker": worker}, timeout=30)


def _setup(db, url: str, n: int) -> list[str]:
    ids = []
    with session_scope(session_factory(db)) as s:
        webhooks.create_endpoint(s, "m_1", url, ["*"])
    for i in range(n):
        with session_scope(session_factory(db)) as s:
            (d,) = webhooks.enqueue(s, "m_1", "invoice.settled", {"id": f"inv_{i}"})
            ids.append(d.id)
    return ids


def _by_delivery(posts: list[tuple[str, str, int]], ids: list[str]) -> dict[str, list[str]]:
    return {i: [w for w, d, _ in posts if d == i] for i in ids}


class _Killed(BaseException):
    """The worker's process dies here (a SIGKILL, as far as the database can tell)."""


def _die(request: httpx.Request) -> httpx.Response:
    raise _Killed


class TestLease:
    def test_a_killed_workers_rows_go_out_once_its_lease_passes(self, db, hooked):
        """Worker A claims a full round and dies at its first POST: nothing sent, nothing
        written. Worker B finds nothing a second before A's one-attempt lease ends; when it
        ends, B sends every row of A's round, each once: under a minute after A's claim,
        whatever the round's size."""
        ids = _setup(db, hooked.url, delivery.ROUND_LIMIT)
        factory = session_factory(db)
        t0 = utcnow()
        with httpx.Client(transport=httpx.MockTransport(_die)) as a, pytest.raises(_Killed):
            delivery.deliver_due(factory, now=t0, http_client=a, limit=delivery.ROUND_LIMIT)
        with session_scope(factory) as s:
            for delivery_id in ids:
                row = s.get(WebhookDelivery, delivery_id)
                assert row is not None
                assert (row.status, row.attempt_count) == (DeliveryStatus.DELIVERING, 0)
        expires = t0 + delivery.ATTEMPT_LEASE
        assert expires - t0 <= timedelta(minutes=1)
        with _client("B") as b:
            early = delivery.deliver_due(factory, now=expires - timedelta(seconds=1), http_client=b)
            assert (early, hooked.posts) == ([], [])
            results = delivery.deliver_due(factory, now=expires, http_client=b)
        assert sorted(r.delivery_id for r in results) == sorted(ids)
        assert {r.status for r in results} == {DeliveryStatus.DELIVERED}
        assert _by_delivery(hooked.posts, ids) == {i: ["B"] for i in ids}

    def test_a_slow_round_hands_its_unreached_rows_to_another_worker(self, db, hooked):
        """Worker A's receiver takes 14 s an answer (simulated time, shared by both workers), so
        the claims of A's round of 6 end during its 4th POST. Worker B, polling then for one row,
        cannot take the row A is sending (renewed for that attempt) and takes one of the two A
        has not reached. A skips that one when its turn comes (no POST, nothing written over
        B's outcome) and still sends the other (expired, but nobody claimed it). Every POST
        went out with its row leased for the attempt's whole deadline and a margin, and each
        delivery reached the receiver once."""
        ids = _setup(db, hooked.url, 6)
        factory = session_factory(db)
        t0 = utcnow()
        now = [t0]
        slow = timedelta(seconds=14)  # under the attempt's deadline
        steal_at = t0 + delivery.ATTEMPT_LEASE + timedelta(seconds=1)
        leases: dict[str, timedelta] = {}  # delivery -> its lease left when A's POST arrived
        b_results: list[delivery.DeliveryResult] = []

        def each(worker: str, delivery_id: str) -> None:
            if worker != "A":
                return
            with session_scope(factory) as s:
                row = s.get(WebhookDelivery, delivery_id)
                assert row is not None
                assert row.locked_until is not None
                leases[delivery_id] = row.locked_until - now[0]
            before, now[0] = now[0], now[0] + slow
            if before < steal_at <= now[0]:
                with _client("B") as b:
                    b_results.extend(
                        delivery.deliver_due(factory, now=steal_at, http_client=b, limit=1)
                    )

        hooked.each = each
        with _client("A") as a:
            a_results = delivery.deliver_due(factory, http_client=a, clock=lambda: now[0])
        (stolen,) = [r.delivery_id for r in b_results]
        assert stolen in ids[4:]  # not one A had reached: ids[3] was on the wire
        assert [r.delivery_id for r in a_results] == [i for i in ids if i != stolen]
        assert _by_delivery(hooked.posts, ids) == {i: ["B" if i == stolen else "A"] for i in ids}
        assert len(leases) == 5
        assert min(leases.values()) >= delivery.ATTEMPT_LEASE
        assert timedelta(seconds=transport.ATTEMPT_TIMEOUT + 15) <= delivery.ATTEMPT_LEASE
        with session_scope(factory) as s:
            for delivery_id in ids:
                row = s.get(WebhookDelivery, delivery_id)
                assert row is not None
                assert (row.status, row.attempt_count) == (DeliveryStatus.DELIVERED, 1)
                assert row.locked_until is None
                assert [a.status_code for a in repository.attempts_for(s, delivery_id)] == [200]

    def test_a_worker_that_lost_its_claim_sends_and_writes_nothing(self, db, hooked):
        """A stalls past its lease while its first POST is out (a paused process: the POST
        itself cannot outlive a renewed lease): B claims both rows and delivers them. A's late
        503 for the first row is not recorded (the row stays delivered), and A does not send the
        second row at all."""
        ids = _setup(db, hooked.url, 2)
        factory = session_factory(db)
        t0 = utcnow()

        def worker_b() -> None:
            with _client("B") as b:
                later = t0 + delivery.ATTEMPT_LEASE + timedelta(seconds=1)
                assert len(delivery.deliver_due(factory, now=later, http_client=b)) == 2

        hooked.hook = worker_b
        hooked.first_status = 503
        with _client("A") as a:
            results = delivery.deliver_due(factory, now=t0, http_client=a)
        assert results == []  # A recorded nothing
        # A's first POST was already on the wire when B took over; A's second never happened
        assert _by_delivery(hooked.posts, ids) == {ids[0]: ["A", "B"], ids[1]: ["B"]}
        with session_scope(factory) as s:
            for delivery_id in ids:
                row = s.get(WebhookDelivery, delivery_id)
                assert row is not None
                assert (row.status, row.attempt_count) == (DeliveryStatus.DELIVERED, 1)
                assert row.last_status_code == 200
                attempts = repository.attempts_for(s, delivery_id)
                assert [a.status_code for a in attempts] == [200]

    def test_a_renewal_that_waited_for_the_write_lock_is_made_again(self, db, hooked, monkeypatch):
        """The renewal before a POST is counted from the clock read before its UPDATE, which
        may wait for the database's write lock. One that waited 30 s would leave the POST only
        its own deadline; it is renewed again from the later clock. A second slow renewal
        sends nothing this round."""
        ids = _setup(db, hooked.url, 2)
        factory = session_factory(db)
        now = [utcnow()]
        renew = repository.renew_claim
        slow_calls = {1, 3, 4}  # the first row's first renewal; both of the second row's
        calls = itertools.count(1)
        leases: list[timedelta] = []

        def waits_for_the_lock(session, delivery_id, claim, renewed):
            if next(calls) in slow_calls:
                now[0] += timedelta(seconds=30)
            return renew(session, delivery_id, claim, renewed)

        def each(worker: str, delivery_id: str) -> None:
            with session_scope(factory) as s:
                row = s.get(WebhookDelivery, delivery_id)
                assert row is not None
                assert row.locked_until is not None
                leases.append(row.locked_until - now[0])

        monkeypatch.setattr(repository, "renew_claim", waits_for_the_lock)
        hooked.each = each
        with _client("A") as a:
            results = delivery.deliver_due(factory, http_client=a, clock=lambda: now[0])
        assert [r.delivery_id for r in results] == ids[:1]
        assert _by_delivery(hooked.posts, ids) == {ids[0]: ["A"], ids[1]: []}
        assert leases == [delivery.ATTEMPT_LEASE]
        with session_scope(factory) as s:
            row = s.get(WebhookDelivery, ids[1])
            assert row is not None
            assert (row.status, row.attempt_count) == (DeliveryStatus.DELIVERING, 0)

    def test_the_claim_token_is_checked_on_the_row(self, db):
        (delivery_id,) = _setup(db, "http://127.0.0.1:9/h", 1)
        factory = session_factory(db)
        t0 = utcnow()
        mine = t0 + timedelta(minutes=5)
        with session_scope(factory) as s:
            assert repository.claim_due(s, t0, 10, mine) == [delivery_id]
        with session_scope(factory) as s:
            assert not repository.renew_claim(s, delivery_id, mine - timedelta(0, 1), mine)
            assert not repository.finish_claim(s, delivery_id, t0, status="delivered")
            assert repository.renew_claim(s, delivery_id, mine, mine + timedelta(minutes=1))
        with session_scope(factory) as s:
            assert repository.finish_claim(
                s, delivery_id, mine + timedelta(minutes=1), status="failed"
            )
            row = s.get(WebhookDelivery, delivery_id)
            assert row is not None
            assert (row.status, row.locked_until) == ("failed", None)


class TestSendTime:
    def test_each_attempt_is_signed_when_sent_and_retried_from_its_end(self, db, hooked):
        """The clock moves a second a reading: the second delivery's signature is later than the
        first's, each one's ``t`` is its own send time, and a retry counts from after the POST."""
        ids = _setup(db, hooked.url, 2)
        hooked.first_status = 503
        t0 = utcnow().replace(microsecond=0) + timedelta(seconds=1)  # after the enqueue
        ticks = itertools.count()

        def clock() -> datetime:
            return t0 + timedelta(seconds=next(ticks))

        with _client("A") as a:
            first, second = delivery.deliver_due(session_factory(db), http_client=a, clock=clock)
        (_, d1, t1), (_, d2, t2) = hooked.posts
        assert [d1, d2] == ids
        assert int(t0.timestamp()) < t1 < t2  # not the round's start, and fresh per attempt
        with session_scope(session_factory(db)) as s:
            row1 = s.get(WebhookDelivery, ids[0])
            row2 = s.get(WebhookDelivery, ids[1])
            assert row1 is not None
            assert row2 is not None
            assert int(row1.last_attempt_at.timestamp()) == t1
            assert int(row2.last_attempt_at.timestamp()) == t2
        assert first.status_code == 503
        assert first.next_attempt_at is not None
        assert first.next_attempt_at - timedelta(seconds=10) > row1.last_attempt_at
        assert second.ok
        assert row2.delivered_at is not None
        assert row2.delivered_at > row2.last_attempt_at


@contextlib.contextmanager
def _raw_server(reply: Callable[[socket.socket], None]) -> Iterator[str]:
    """A raw TCP receiver: reads the request head and body, then ``reply(conn)`` writes bytes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                while len(body) < length:
                    body += conn.recv(65536)
                with contextlib.suppress(OSError):  # the client hung up (a capped read does)
                    reply(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hooks"
    finally:
        stop.set()
        listener.close()


class TestReply:
    def test_a_huge_reply_is_not_read(self, db):
        sent: list[int] = []

        def huge(conn: socket.socket) -> None:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n")
            block = b"x" * 65536
            for _ in range(1600):  # 100 MiB, unless the client hangs up first
                conn.sendall(block)
                sent.append(len(block))

        with _raw_server(huge) as url:
            (delivery_id,) = _setup(db, url, 1)
            (r,) = delivery.deliver_due(session_factory(db), targets=LOCAL)
        assert r.ok
        with session_scope(session_factory(db)) as s:
            (attempt,) = repository.attempts_for(s, delivery_id)
        assert attempt.response_excerpt is not None
        assert len(attempt.response_excerpt) <= 1000
        assert sum(sent) < 100 * 1024 * 1024  # the client hung up long before the end

    def test_a_trickled_reply_ends_at_the_deadline(self, db, monkeypatch):
        """A byte of the status line every 50 ms: no socket read ever times out, only the
        attempt's overall deadline ends it (shortened here to keep the test quick)."""
        monkeypatch.setattr(transport, "ATTEMPT_TIMEOUT", 1.0)
        stop = threading.Event()

        def trickle(conn: socket.socket) -> None:
            for byte in b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 100_000:
                if stop.wait(0.05):
                    return
                conn.sendall(bytes([byte]))

        with _raw_server(trickle) as url:
            (delivery_id,) = _setup(db, url, 1)
            (r,) = delivery.deliver_due(session_factory(db), targets=LOCAL)
            stop.set()
        assert (r.ok, r.status_code, r.error) == (False, None, "timeout")
        with session_scope(session_factory(db)) as s:
            row = s.get(WebhookDelivery, delivery_id)
            assert row is not None
            assert (row.status, row.last_error) == (DeliveryStatus.PENDING, "timeout")
