"""Idempotency-Key on POST: replay, mismatch, concurrency, what is (not) stored."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import anyio.to_thread
import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlmodel import Session

from api.db import utcnow
from api.deps import ApiConfig, CurrentKey, SessionDep
from api.errors import IdempotencyError, IdempotencyKeyInUse
from api.idempotency import service as idem
from api.idempotency.models import IdempotencyRecord
from api.keys.models import ApiKeyRecord
from api.routing import ApiRouter
from tests.api.conftest import TEST_CONFIG, auth, serve_app

BODY = {"url": "http://127.0.0.1:9/hooks", "enabled_events": ["invoice.settled"]}


def _count(db, table: str = "api_webhook_endpoints") -> int:
    with db.connect() as conn:
        query = sa.text(f"SELECT count(*) FROM {table}")  # noqa: S608
        return int(conn.execute(query).scalar_one())


class TestReplay:
    def test_same_key_same_body_replays_byte_for_byte(self, client, db, new_key):
        key = new_key()
        h = auth(key, **{"Idempotency-Key": "req-1"})
        first = client.post("/v1/webhook_endpoints", json=BODY, headers=h)
        # same JSON, different key order and whitespace: same canonical body
        second = client.post(
            "/v1/webhook_endpoints",
            content=b'{ "enabled_events": ["invoice.settled"],  "url": "http://127.0.0.1:9/hooks"}',
            headers={**h, "Content-Type": "application/json"},
        )
        assert first.status_code == second.status_code == 200
        assert second.content == first.content
        assert second.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        assert second.headers["content-type"] == first.headers["content-type"]
        assert _count(db) == 1

    @pytest.mark.parametrize(
        "body",
        [b'{"url": "http://127.0.0.1:9/h", "description": "\\ud800"}', b"[" * 5000 + b"]" * 5000],
        ids=["lone surrogate", "deep nesting"],
    )
    def test_a_body_the_route_refuses_is_a_4xx_with_a_key_too(self, client, db, new_key, body):
        """Valid JSON that is not UTF-8 (a lone surrogate) broke the key's fingerprint: a 500
        on every POST that carried an Idempotency-Key, where the route answers 422."""
        h = auth(new_key(), **{"Idempotency-Key": "odd-1", "Content-Type": "application/json"})
        r = client.post("/v1/webhook_endpoints", content=body, headers=h)
        assert 400 <= r.status_code < 500, r.text
        assert _count(db) == 0

    def test_different_body_is_idempotency_error(self, client, db, new_key):
        h = auth(new_key(), **{"Idempotency-Key": "req-2"})
        assert client.post("/v1/webhook_endpoints", json=BODY, headers=h).status_code == 200
        r = client.post("/v1/webhook_endpoints", json={**BODY, "description": "changed"}, headers=h)
        assert r.status_code == 400
        err = r.json()["error"]
        assert (err["type"], err["code"]) == ("idempotency_error", "idempotency_error")
        assert _count(db) == 1

    def test_different_path_same_key_is_idempotency_error(self, client, new_key):
        h = auth(new_key(), **{"Idempotency-Key": "req-3"})
        created = client.post("/v1/webhook_endpoints", json=BODY, headers=h).json()
        r = client.post(f"/v1/webhook_endpoints/{created['id']}/rotate_secret", headers=h)
        assert r.status_code == 400

    def test_without_key_every_post_runs(self, client, db, new_key):
        key = new_key()
        for _ in range(2):
            assert (
                client.post("/v1/webhook_endpoints", json=BODY, headers=auth(key)).status_code
                == 200
            )
        assert _count(db) == 2

    def test_scope_is_per_api_key(self, client, db, new_key):
        a, b = new_key(merchant_id="m_a"), new_key(merchant_id="m_b")
        for key in (a, b):
            r = client.post(
                "/v1/webhook_endpoints", json=BODY, headers=auth(key, **{"Idempotency-Key": "same"})
            )
            assert r.status_code == 200
            assert "idempotent-replayed" not in r.headers
        assert _count(db) == 2

    def test_4xx_is_stored_and_replayed(self, client, new_key):
        h = auth(new_key(), **{"Idempotency-Key": "req-404"})
        first = client.post("/v1/webhook_deliveries/whd_missing/redeliver", headers=h)
        second = client.post("/v1/webhook_deliveries/whd_missing/redeliver", headers=h)
        assert first.status_code == second.status_code == 404
        assert second.content == first.content
        assert second.headers["idempotent-replayed"] == "true"

    def test_a_request_refused_before_its_transaction_meets_the_keys_answer(
        self, client, db, new_key
    ):
        """A 422 comes before the request's transaction (and so before its lock): storing it
        still checks what the key answers."""
        h = auth(new_key(), **{"Idempotency-Key": "req-422"})
        assert client.post("/v1/webhook_endpoints", json=BODY, headers=h).status_code == 200
        r = client.post("/v1/webhook_endpoints", json={"url": 5}, headers=h)
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "idempotency_error"
        h = auth(new_key(), **{"Idempotency-Key": "req-422b"})
        first = client.post("/v1/webhook_endpoints", json={"url": 5}, headers=h)
        second = client.post("/v1/webhook_endpoints", json={"url": 5}, headers=h)
        assert first.status_code == second.status_code == 422
        assert second.content == first.content
        assert second.headers["idempotent-replayed"] == "true"
        assert _count(db) == 1

    def test_expired_key_runs_again(self, make_app, db, new_key):
        config = ApiConfig(
            rate_limit_burst=TEST_CONFIG.rate_limit_burst, idempotency_ttl=timedelta(seconds=-1)
        )
        h = auth(new_key(), **{"Idempotency-Key": "req-ttl"})
        with TestClient(make_app(config)) as c:
            c.post("/v1/webhook_endpoints", json=BODY, headers=h)
            r = c.post("/v1/webhook_endpoints", json=BODY, headers=h)
        assert "idempotent-replayed" not in r.headers
        assert _count(db) == 2

    def test_key_too_long(self, client, new_key):
        r = client.post(
            "/v1/webhook_endpoints",
            json=BODY,
            headers=auth(new_key(), **{"Idempotency-Key": "k" * 256}),
        )
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "Idempotency-Key"


class TestAtRest:
    def test_a_stored_response_is_sealed_under_the_callers_api_key(self, client, db, new_key):
        """The response of a webhook endpoint create carries its signing secret: the stored
        copy is unreadable without the caller's API key (we keep only its hash), and the
        replay still returns it."""
        h = auth(new_key(), **{"Idempotency-Key": "sealed-1"})
        first = client.post("/v1/webhook_endpoints", json=BODY, headers=h)
        secret = first.json()["secret"]
        with db.connect() as conn:
            stored = conn.execute(sa.text("SELECT response_body FROM api_idempotency_keys")).one()
        assert secret.encode() not in bytes(stored[0])
        assert b"whsec_" not in bytes(stored[0])
        again = client.post("/v1/webhook_endpoints", json=BODY, headers=h)
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["secret"] == secret

    def test_expired_records_are_purged_while_the_app_runs(self, make_app, db):
        long_ago = utcnow() - timedelta(days=2)
        _record(db, _ctx(api_key_id="k", key="old", path="/", now=long_ago), now=long_ago)
        app = make_app(config=dataclasses.replace(TEST_CONFIG, idempotency_purge_seconds=0.05))
        with TestClient(app):
            for _ in range(100):
                if _count(db, "api_idempotency_keys") == 0:
                    break
                threading.Event().wait(0.05)
        assert _count(db, "api_idempotency_keys") == 0


def _flaky_router(state: dict[str, int]) -> ApiRouter:
    router = ApiRouter()

    @router.post("/flaky")
    def flaky(session: SessionDep, key: CurrentKey) -> dict[str, int]:
        state["runs"] += 1
        session.execute(
            sa.update(ApiKeyRecord)
            .where(ApiKeyRecord.id == key.id)
            .values(name=f"run{state['runs']}")
        )
        if state["runs"] == 1:
            raise RuntimeError("transient failure")
        return {"runs": state["runs"]}

    return router


class TestServerErrors:
    def test_5xx_is_not_stored_so_a_retry_runs(self, make_app, db, new_key):
        state = {"runs": 0}
        h = auth(new_key(), **{"Idempotency-Key": "req-500"})
        with TestClient(make_app(routers=[_flaky_router(state)])) as c:
            first = c.post("/v1/flaky", json={}, headers=h)
            second = c.post("/v1/flaky", json={}, headers=h)
            third = c.post("/v1/flaky", json={}, headers=h)
        assert first.status_code == 500
        assert second.status_code == 200
        assert second.json() == {"runs": 2}
        assert third.content == second.content
        assert third.headers["idempotent-replayed"] == "true"
        # the replay ran the handler once more, in a transaction that was rolled back
        assert state["runs"] == 3
        with db.connect() as conn:
            assert conn.execute(sa.text("SELECT name FROM api_keys")).scalar() == "run2"

    def test_a_retry_whose_run_again_fails_still_gets_the_stored_answer(
        self, make_app, db, new_key
    ):
        """A retry of a finished request runs its handler again; a dependency away during
        that run (a node, a database) answered 500 where the key holds the first answer, and
        a changed body got a 500 instead of its 400."""
        state = {"runs": 0}
        router = ApiRouter()

        @router.post("/fails-after-first")
        def fails_after_first(session: SessionDep, key: CurrentKey) -> dict[str, int]:
            state["runs"] += 1
            if state["runs"] > 1:
                raise ConnectionError("node away")
            return {"runs": state["runs"]}

        h = auth(new_key(), **{"Idempotency-Key": "req-then-500"})
        with TestClient(make_app(routers=[router]), raise_server_exceptions=False) as c:
            first = c.post("/v1/fails-after-first", json={"a": 1}, headers=h)
            retry = c.post("/v1/fails-after-first", json={"a": 1}, headers=h)
            changed = c.post("/v1/fails-after-first", json={"a": 2}, headers=h)
            unkeyed = c.post("/v1/fails-after-first", json={"a": 1}, headers=auth(new_key()))
        assert first.status_code == 200
        assert (retry.status_code, retry.headers.get("idempotent-replayed")) == (200, "true")
        assert retry.content == first.content
        assert (changed.status_code, changed.json()["error"]["code"]) == (
            400,
            "idempotency_error",
        )
        assert unkeyed.status_code == 500  # nothing stored to answer with
        assert state["runs"] == 4


class TestConcurrency:
    def test_concurrent_duplicates_have_exactly_one_effect(self, live_server, db, new_key):
        key = new_key()
        barrier = threading.Barrier(8)

        def fire(_: int) -> httpx.Response:
            with httpx.Client(base_url=live_server, timeout=30) as c:
                barrier.wait()
                return c.post(
                    "/v1/webhook_endpoints",
                    json=BODY,
                    headers=auth(key, **{"Idempotency-Key": "race"}),
                )

        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(fire, range(8)))
        # the duplicates wait for the first request's transaction, then replay its answer
        assert [r.status_code for r in responses] == [200] * 8
        assert _count(db) == 1
        assert len({r.content for r in responses}) == 1  # the original and every replay
        assert sum("idempotent-replayed" not in r.headers for r in responses) == 1
        # once the first finished, a retry replays
        with httpx.Client(base_url=live_server) as c:
            again = c.post(
                "/v1/webhook_endpoints", json=BODY, headers=auth(key, **{"Idempotency-Key": "race"})
            )
        assert again.status_code == 200
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == responses[0].content


class TestAdmission:
    def test_more_concurrent_writers_than_threads_never_deadlock(self, make_app, db, new_key):
        """60 idempotent POSTs at once against a 4-thread pool. Each takes the write gate (SQLite)
        or a connection in its auth dependency, then needs another pool thread for its endpoint:
        unbounded, the waiters would hold every thread and the holder none (until the 30 s busy
        timeout). The app admits ``max_in_flight`` requests and grows the pool past that."""
        inner = make_app(dataclasses.replace(TEST_CONFIG, max_in_flight=4))
        limits: list[int] = []

        async def four_threads(scope, receive, send):
            limiter = anyio.to_thread.current_default_thread_limiter()
            if scope["type"] == "lifespan":
                limiter.total_tokens = 4
            elif scope["type"] == "http":
                limits.append(int(limiter.total_tokens))
            await inner(scope, receive, send)

        keys = [new_key(merchant_id=f"m_{m}") for m in range(4)]  # 15 endpoints each (max 16)
        with serve_app(four_threads) as base:
            barrier = threading.Barrier(60)

            def fire(n: int) -> int:
                with httpx.Client(base_url=base, timeout=60) as c:
                    barrier.wait()
                    return c.post(
                        "/v1/webhook_endpoints",
                        json={**BODY, "url": f"http://127.0.0.1:9/hooks/{n}"},
                        headers=auth(keys[n % 4], **{"Idempotency-Key": f"admit-{n}"}),
                    ).status_code

            with ThreadPoolExecutor(60) as pool:
                statuses = list(pool.map(fire, range(60)))
        assert statuses == [200] * 60
        assert _count(db) == 60
        assert limits[0] == 4  # as the wrapper set it
        assert limits[-1] >= 4 + 8  # raised by the first request

    @pytest.mark.parametrize("bad", [0, -1])
    def test_max_in_flight_below_one_is_refused_when_configured(self, bad):
        with pytest.raises(ValueError, match="max_in_flight must be at least 1"):
            dataclasses.replace(TEST_CONFIG, max_in_flight=bad)


def _ctx(body=b'{"a":1}', **over) -> idem.IdempotencyContext:
    kwargs = {"api_key_id": "key_x", "key": "k1", "method": "POST", "path": "/v1/x"}
    return idem.prepare(body=body, **(kwargs | over))


def _record(db, ctx, status=200, body=b'{"ok":1}', *, commit=True, now=None):
    """``idem.record`` in a transaction of its own (committed, or rolled back)."""
    with Session(db) as session:
        try:
            idem.record(session, ctx, status, [("content-type", "application/json")], body, now=now)
        except BaseException:
            session.rollback()
            raise
        if commit:
            session.commit()
        else:
            session.rollback()


class TestService:
    def test_the_stored_fingerprint_confirms_no_guess_without_the_api_key(self, db):
        """``POST /v1/contacts {"email": …}``: a bare SHA-256 of the request let anyone who
        reads the table confirm a guessed address (the contact's erasure left it)."""
        body = b'{"email":"ada@example.com"}'
        ctx = _ctx(body, path="/v1/contacts", sealing_key=b"s" * 32)
        _record(db, ctx)
        with db.connect() as conn:
            (stored,) = conn.execute(sa.select(IdempotencyRecord.fingerprint)).scalars()
        assert stored != idem.fingerprint("POST", "/v1/contacts", "", body)
        with pytest.raises(idem.IdempotentReplay):  # the same key's retry still replays
            _record(db, _ctx(body, path="/v1/contacts", sealing_key=b"s" * 32))
        with pytest.raises(IdempotencyError):
            _record(
                db, _ctx(b'{"email":"bo@example.com"}', path="/v1/contacts", sealing_key=b"s" * 32)
            )

    def test_a_row_fingerprinted_before_keys_were_used_still_replays(self, db):
        _record(db, _ctx(key="old"))  # no sealing key: as stored by an earlier release
        with pytest.raises(idem.IdempotentReplay):
            _record(db, _ctx(key="old", sealing_key=b"s" * 32))

    def test_the_first_commit_owns_the_key(self, db):
        first = _ctx()
        _record(db, first, 201)
        assert first.done
        with pytest.raises(idem.IdempotentReplay) as replay:
            _record(db, _ctx(body=b'{ "a" : 1 }'))  # same canonical body
        assert (replay.value.status, replay.value.body) == (201, b'{"ok":1}')
        other = _ctx(body=b'{"a":2}')
        with pytest.raises(IdempotencyError):
            _record(db, other)
        assert other.done  # nothing left to store for it
        assert _count(db, "api_idempotency_keys") == 1

    def test_a_rolled_back_request_leaves_nothing(self, db):
        _record(db, _ctx(), commit=False)
        assert _count(db, "api_idempotency_keys") == 0
        _record(db, _ctx())
        assert _count(db, "api_idempotency_keys") == 1

    def test_a_4xx_is_stored_outside_the_rolled_back_transaction(self, db):
        ctx = _ctx()
        idem.store_outside(db, ctx, 404, [("content-type", "application/json")], b'{"e":1}')
        assert ctx.done
        with pytest.raises(idem.IdempotentReplay) as replay:
            _record(db, _ctx())
        assert (replay.value.status, replay.value.body) == (404, b'{"e":1}')
        assert _count(db, "api_idempotency_keys") == 1

    def test_a_5xx_is_never_stored(self, db):
        ctx = _ctx()
        idem.store_outside(db, ctx, 503, [], b"{}")
        assert ctx.done
        assert _count(db, "api_idempotency_keys") == 0

    @pytest.mark.parametrize("status", [422, 503])
    def test_storing_outside_meets_what_the_key_already_answers(self, db, status):
        """A request refused before it ran (a 422) must not overwrite the key's answer; a
        retry's run again that failed (a 503, never stored) is answered with it too."""
        _record(db, _ctx())
        with pytest.raises(idem.IdempotentReplay) as replay:
            idem.store_outside(db, _ctx(), status, [], b'{"e":1}')
        assert replay.value.body == b'{"ok":1}'
        with pytest.raises(IdempotencyError):
            idem.store_outside(db, _ctx(body=b"{}"), status, [], b'{"e":1}')
        assert _count(db, "api_idempotency_keys") == 1

    def test_a_5xx_meets_no_expired_answer(self, db):
        then = utcnow() - timedelta(days=2)
        _record(db, _ctx(now=then), now=then)
        idem.store_outside(db, _ctx(), 503, [], b"{}")
        assert _count(db, "api_idempotency_keys") == 1

    def test_a_committed_legacy_lock_conflicts_then_is_taken_over(self, db):
        """Releases before this design committed ``in_progress`` rows: 409 until stale."""
        now = utcnow()
        legacy = _ctx(now=now)
        with db.begin() as conn:
            conn.execute(
                sa.insert(IdempotencyRecord.__table__),  # type: ignore[attr-defined]
                {
                    "id": legacy.record_id,
                    "api_key_id": legacy.api_key_id,
                    "idempotency_key": legacy.key,
                    "fingerprint": legacy.fingerprint,
                    "method": legacy.method,
                    "path": legacy.path,
                    "status": "in_progress",
                    "locked_at": now,
                    "created_at": now,
                    "expires_at": now + idem.DEFAULT_TTL,
                },
            )
        with pytest.raises(IdempotencyKeyInUse):
            _record(db, _ctx(now=now), now=now)
        later = now + idem.DEFAULT_LOCK_TIMEOUT + timedelta(seconds=1)
        taken = _ctx(now=later)
        _record(db, taken, now=later)
        assert taken.record_id == legacy.record_id
        with pytest.raises(idem.IdempotentReplay):
            _record(db, _ctx(now=later), now=later)

    def test_purge_expired(self, db):
        now = utcnow()
        for key, at in (("old", now - timedelta(days=2)), ("new", now)):
            _record(db, _ctx(api_key_id="k", key=key, path="/", now=at), now=at)
        assert idem.purge_expired(db, now) == 1
        assert _count(db, "api_idempotency_keys") == 1

    def test_an_expired_key_is_recorded_anew(self, db):
        now = utcnow()
        _record(db, _ctx(now=now - timedelta(days=2)), now=now - timedelta(days=2))
        fresh = _ctx(body=b'{"other":1}', now=now)
        _record(db, fresh, now=now)  # a different request: fine once the old row expired
        assert _count(db, "api_idempotency_keys") == 1

    def test_fingerprint_is_canonical(self):
        a = idem.fingerprint("POST", "/v1/x", "", b'{"b": 1, "a": [1, 2]}')
        assert a == idem.fingerprint("post", "/v1/x", "", b'{"a":[1,2],"b":1}')
        assert a != idem.fingerprint("POST", "/v1/y", "", b'{"a":[1,2],"b":1}')
        assert a != idem.fingerprint("POST", "/v1/x", "", b'{"a":[2,1],"b":1}')
