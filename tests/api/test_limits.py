"""Body size limit, per-key rate limit, trusted proxies, CORS."""

from __future__ import annotations

import logging
import socket
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.app import MAX_RECURSION, TokenBucketLimiter
from api.deps import ApiConfig
from api.embedded import serve_in_thread
from api.settings import get_settings
from tests.api.conftest import auth, serve_app


class TestBodyLimit:
    def test_declared_length_over_limit_is_413(self, make_app, new_key):
        with TestClient(make_app(ApiConfig(max_body_bytes=1024, rate_limit_burst=1000))) as c:
            r = c.post(
                "/v1/webhook_endpoints",
                content=b"x" * 2048,
                headers=auth(new_key(), **{"Content-Type": "application/json"}),
            )
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"

    def test_streamed_body_over_limit_is_413(self, make_app, new_key):
        def chunks():
            for _ in range(8):
                yield b"y" * 512

        with TestClient(make_app(ApiConfig(max_body_bytes=1024, rate_limit_burst=1000))) as c:
            r = c.post(
                "/v1/webhook_endpoints",
                content=chunks(),
                headers=auth(new_key(), **{"Content-Type": "application/json"}),
            )
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"

    def test_default_limit_is_one_mebibyte(self, client, new_key):
        big = (
            b'{"url": "http://127.0.0.1/x", "enabled_events": ["*"], "d": "'
            + b"z" * (1024 * 1024)
            + b'"}'
        )
        r = client.post(
            "/v1/webhook_endpoints",
            content=big,
            headers=auth(new_key(), **{"Content-Type": "application/json"}),
        )
        assert r.status_code == 413

    @pytest.mark.parametrize("nest", [b"[]", b'{"a":}'])
    def test_deeply_nested_json_is_refused_without_killing_the_server(self, client, nest):
        """eth-account's py_ecc raises the recursion limit to 100,000 for the process: the
        JSON parser then recursed through ~160 KB of brackets until the C stack overflowed,
        and the server died (SIGSEGV) on one request without an API key."""
        assert sys.getrecursionlimit() <= MAX_RECURSION  # the app put it back
        opening, closing = (b"[", b"]") if nest == b"[]" else (b'{"a":', b"}")
        body = opening * 100_000 + b"1" + closing * 100_000
        r = client.post("/v1/api_keys", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422
        assert r.json()["error"]["message"] == "The request body is not valid JSON."
        assert client.get("/v1/health").status_code == 200

    @pytest.mark.parametrize(
        "body", [b'{"a": 1', b'{"a": ' + b"9" * 5000 + b"}", b"[" * 5000 + b"]" * 5000]
    )
    def test_every_unusable_body_gets_one_answer(self, client, new_key, body):
        """A syntax error was a 422, a number too long for int() or nesting too deep a 400
        with another code and message (FastAPI's own)."""
        h = auth(new_key(), **{"Content-Type": "application/json"})
        r = client.post("/v1/webhook_endpoints", content=body, headers=h)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert (error["code"], error["message"]) == (
            "parameter_invalid",
            "The request body is not valid JSON.",
        )


class TestSlowClients:
    """The body is read before a request is admitted, within ``body_read_seconds``."""

    @staticmethod
    def _stall(base: str, count: int) -> list[socket.socket]:
        host, port = base.removeprefix("http://").split(":")
        stalled = []
        for _ in range(count):
            s = socket.create_connection((host, int(port)))
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
            stalled.append(s)
        return stalled

    def test_clients_stalling_their_bodies_hold_no_admission_slot(self, make_app):
        """32 connections announcing 10 bytes and sending 1 held every slot: the API answered
        nobody, for as long as they liked."""
        config = ApiConfig()
        with serve_app(make_app(config)) as base:
            stalled = self._stall(base, config.max_in_flight + 4)
            try:
                time.sleep(0.3)
                with httpx.Client(base_url=base, timeout=5) as c:
                    assert c.get("/v1/health").status_code == 200
            finally:
                for s in stalled:
                    s.close()

    def test_a_body_that_does_not_arrive_in_time_is_a_408(self, make_app):
        with serve_app(make_app(ApiConfig(body_read_seconds=0.3))) as base:
            (s,) = self._stall(base, 1)
            try:
                s.settimeout(5)
                answer = s.recv(4096)
            finally:
                s.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert b"request_timeout" in answer

    def test_a_client_leaving_mid_body_logs_no_error(self, make_app, caplog):
        """starlette's ClientDisconnect escaped as an unhandled error with a traceback, and
        health, exempt from the rate limit, let anyone fill the error log."""
        with serve_app(make_app(ApiConfig())) as base, caplog.at_level(logging.ERROR):
            for s in self._stall(base, 3):
                time.sleep(0.1)
                s.close()
            time.sleep(0.5)
            with httpx.Client(base_url=base, timeout=5) as c:
                assert c.get("/v1/health").status_code == 200
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []

    @pytest.mark.parametrize(
        "path", ["/v1/health", "/v1/invoices", "/v1/public/consent/" + "x" * 43]
    )
    def test_deep_json_on_a_route_that_takes_no_body_is_not_a_500(self, client, new_key, path):
        """The text check parses a body with an escape itself: nesting too deep raised a
        RecursionError there (a 500, with no key needed on health)."""
        deep = b"[" * 5000 + b'"\\u0000"' + b"]" * 5000
        h = auth(new_key(), **{"Content-Type": "application/json"})
        assert client.request("GET", path, content=deep, headers=h).status_code < 500


class TestRateLimit:
    def test_an_ipv6_client_draws_from_one_bucket_for_its_64(self, make_app):
        """One subscriber holds a whole /64: a fresh source address per request bought a
        fresh bucket, and the per-address limit did nothing."""
        config = ApiConfig(
            rate_limit_per_second=0.001, rate_limit_burst=2, trusted_proxies=("10.0.0.0/8",)
        )
        link = f"/v1/public/consent/{'x' * 43}"
        with TestClient(make_app(config), client=("10.1.2.3", 40000)) as c:
            rotating = [
                c.get(link, headers={"X-Forwarded-For": f"2001:db8:1:2::{n:x}"}).status_code
                for n in range(1, 8)
            ]
            other = c.get(link, headers={"X-Forwarded-For": "2001:db8:1:3::1"}).status_code
        assert rotating.count(429) == 5, rotating
        assert other != 429  # the next /64 is someone else

    def test_429_with_retry_after_per_key(self, make_app, new_key):
        config = ApiConfig(rate_limit_per_second=0.01, rate_limit_burst=3)
        a, b = new_key(merchant_id="m_a"), new_key(merchant_id="m_b")
        with TestClient(make_app(config)) as c:
            # a key's first request counts against its client's address, then its own bucket
            statuses = [
                c.get("/v1/webhook_endpoints", headers=auth(a)).status_code for _ in range(5)
            ]
            limited = c.get("/v1/webhook_endpoints", headers=auth(a))
            other = c.get("/v1/webhook_endpoints", headers=auth(b))
            health = c.get("/v1/health")
        assert statuses == [200, 200, 200, 200, 429]
        assert limited.status_code == 429
        assert limited.json()["error"]["type"] == "rate_limit_error"
        assert int(limited.headers["retry-after"]) >= 1
        assert other.status_code == 200
        assert health.status_code == 200

    def test_a_merchants_keys_share_its_bucket_per_mode(self, make_app, new_key):
        """Each key had a bucket of its own: a merchant minting ten keys got ten times the
        rate. A merchant's keys now draw from one bucket per mode (test, live); another
        merchant's bucket and an admin key's are their own."""
        config = ApiConfig(rate_limit_per_second=0.01, rate_limit_burst=5)
        first, second = new_key(merchant_id="m_a"), new_key(merchant_id="m_a")
        live = new_key(merchant_id="m_a", live=True)
        other, admin = new_key(merchant_id="m_b"), new_key(role="admin", merchant_id=None)
        path = "/v1/webhook_endpoints"
        with TestClient(make_app(config)) as c:
            learned = [  # each key's first request: the address's burst of 5
                c.get(path, headers=auth(k)).status_code
                for k in (first, second, live, other, admin)
            ]
            keys = (first, second) * 3
            statuses = [c.get(path, headers=auth(k)).status_code for k in keys]
            live_status = c.get(path, headers=auth(live)).status_code
            other_status = c.get(path, headers=auth(other)).status_code
            admin_status = c.get(path, headers=auth(admin)).status_code
        assert learned == [200] * 5
        assert statuses == [200] * 5 + [429]  # the merchant's burst of 5 over its two keys
        assert (live_status, other_status, admin_status) == (200, 200, 200)

    def test_one_key_is_one_bucket_however_the_header_spells_it(self, make_app, new_key):
        config = ApiConfig(rate_limit_per_second=0.01, rate_limit_burst=3)
        key = new_key(merchant_id="m_a")
        spellings = [f"Bearer {key}", f"Bearer {key}", f"bearer {key}", key, f"  BEARER   {key} "]
        with TestClient(make_app(config)) as c:
            statuses = [
                c.get("/v1/webhook_endpoints", headers={"Authorization": s}).status_code
                for s in spellings
            ]
        assert statuses == [200, 200, 200, 200, 429]  # the first one: the address's bucket

    def test_customer_links_are_limited_per_client_whatever_header_they_send(self, make_app):
        """A fresh junk ``Authorization`` per request bought a fresh bucket on the routes that
        take no key; they are limited per client address."""
        config = ApiConfig(rate_limit_per_second=0.01, rate_limit_burst=3)
        with TestClient(make_app(config)) as c:
            statuses = [
                c.get(
                    f"/v1/public/consent/{'x' * 43}",
                    headers={"Authorization": f"Bearer fp_test_{n:043d}"},
                ).status_code
                for n in range(4)
            ]
            junk = c.get("/v1/webhook_endpoints", headers={"Authorization": "junk"})
        assert statuses[-1] == 429
        assert 429 not in statuses[:-1]
        assert junk.status_code == 429  # a malformed key shares the client's bucket too

    def test_made_up_keys_share_their_clients_bucket(self, make_app, new_key):
        """A fresh well-formed key per request (each one unknown: 401) bought a fresh bucket,
        and enough of them flushed every real client's bucket out of the limiter."""
        config = ApiConfig(rate_limit_per_second=0.01, rate_limit_burst=3)
        with TestClient(make_app(config)) as c:
            statuses = [
                c.get(
                    "/v1/webhook_endpoints", headers={"Authorization": f"Bearer fp_test_{n:043d}"}
                ).status_code
                for n in range(5)
            ]
        assert statuses == [401, 401, 401, 429, 429]

    def test_a_made_up_key_that_met_no_key_check_is_not_learned(self, make_app, new_key):
        """A made-up key sent to a route that checks no key (an unknown path: 404) was
        learned as known, and bought a bucket of its own for its requests that then 401."""
        config = ApiConfig(rate_limit_per_second=0.01, rate_limit_burst=3)
        made_up = {"Authorization": "Bearer fp_test_" + "Z" * 43}
        with TestClient(make_app(config)) as c:
            assert c.get("/v1/nope", headers=made_up).status_code == 404
            statuses = [c.get("/v1/invoices", headers=made_up).status_code for _ in range(3)]
        assert statuses == [401, 401, 429]  # the client's bucket: 3 in all, then limited

    def test_bucket_refills(self):
        limiter = TokenBucketLimiter(rate=2.0, burst=2)
        assert limiter.take("k", now=0.0) == 0.0
        assert limiter.take("k", now=0.0) == 0.0
        wait = limiter.take("k", now=0.0)
        assert 0.49 < wait <= 0.5
        assert limiter.take("k", now=0.5) == 0.0
        assert limiter.take("other", now=0.5) == 0.0


class TestTrustedProxies:
    """Behind a reverse proxy every request comes from the proxy's address: customer links,
    limited per client, shared one bucket. The proxy's ``X-Forwarded-For`` is believed only
    from the peers ``FOLLOWPAY_API_TRUSTED_PROXIES`` names."""

    LINK = f"/v1/public/consent/{'x' * 43}"

    def _statuses(self, app, peer: str, forwarded: list[str]) -> list[int]:
        with TestClient(app, client=(peer, 40000)) as c:
            return [c.get(self.LINK, headers={"X-Forwarded-For": f}).status_code for f in forwarded]

    def test_a_trusted_proxys_clients_get_a_bucket_each(self, make_app):
        config = ApiConfig(
            rate_limit_per_second=0.01, rate_limit_burst=2, trusted_proxies=("10.0.0.0/8",)
        )
        statuses = self._statuses(
            make_app(config),
            "10.1.2.3",
            [
                "198.51.100.7",
                "198.51.100.7",
                "198.51.100.7",
                "198.51.100.8",
                "203.0.113.5, 198.51.100.9",
            ],
        )
        # the third from one customer is limited; others, and a forged hop before a real
        # client (only the address the proxy saw counts), are not
        assert statuses == [404, 404, 429, 404, 404]

    def test_an_ipv4_proxy_on_a_dual_stack_socket_is_trusted(self, make_app):
        """Served on ``::``, an IPv4 proxy's address arrives IPv4-mapped (``::ffff:a.b.c.d``)."""
        config = ApiConfig(
            rate_limit_per_second=0.01, rate_limit_burst=1, trusted_proxies=("10.0.0.0/8",)
        )
        statuses = self._statuses(make_app(config), "::ffff:10.1.2.3", ["198.51.100.1"] * 2)
        assert statuses == [404, 429]
        other = self._statuses(make_app(config), "::ffff:10.1.2.3", ["198.51.100.2"])
        assert other == [404]

    @pytest.mark.parametrize(
        ("trusted", "peer"), [((), "10.1.2.3"), (("10.0.0.0/8",), "192.0.2.50")]
    )
    def test_anyone_elses_header_is_ignored(self, make_app, trusted, peer):
        """No trusted proxy (the default), or a peer outside the trusted networks: the
        header is the client's own claim, and the client's address keeps its one bucket."""
        config = ApiConfig(rate_limit_per_second=0.01, rate_limit_burst=2, trusted_proxies=trusted)
        statuses = self._statuses(
            make_app(config), peer, ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
        )
        assert statuses == [404, 404, 429]

    def test_the_setting_names_networks(self, tmp_path):
        settings = get_settings(home=tmp_path, api_trusted_proxies=" 127.0.0.1, 10.0.0.0/8 ,::1")
        assert ApiConfig.from_settings(settings).trusted_proxies == (
            "127.0.0.1/32",
            "::ffff:7f00:1/128",
            "10.0.0.0/8",
            "::ffff:a00:0/104",
            "::1/128",
        )
        for bad in ("proxy.internal", "10.0.0.0/33", "10.0.0.5/8"):
            with pytest.raises(ValidationError, match="is not an IP address or network"):
                get_settings(home=tmp_path, api_trusted_proxies=bad)
        for everyone in ("*", "0.0.0.0/0", "10.0.0.1, ::/0"):
            with pytest.raises(ValidationError, match="trusts every peer"):
                get_settings(home=tmp_path, api_trusted_proxies=everyone)
            with pytest.raises(ValueError, match="trusts every peer"):  # built in code too
                ApiConfig(trusted_proxies=tuple(everyone.split(",")))


def test_limits_see_the_routes_path_under_a_root_path(make_app):
    """Under uvicorn with ``root_path`` (``FOLLOWPAY_API_ROOT_PATH``) every path arrives with
    the prefix in front. Health checks stay exempt, and a made-up key on a customer link is
    not learned (which would buy it a bucket of its own on keyed routes)."""
    config = ApiConfig(rate_limit_per_second=0.01, rate_limit_burst=2)
    with (
        serve_in_thread(make_app(config), root_path="/pay") as base,
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        assert [client.get("/v1/health").status_code for _ in range(5)] == [200] * 5
        made_up = {"Authorization": "Bearer fp_test_" + "Q" * 43}  # well-formed, unknown
        link = f"/v1/public/consent/{'x' * 43}"
        assert [client.get(link, headers=made_up).status_code for _ in range(2)] == [404, 404]
        assert client.get("/v1/merchants", headers=made_up).status_code == 429


def test_the_root_path_setting_is_a_path_prefix(tmp_path):
    for good in ("/pay/v-2.x", "/.well", "/a/...b"):
        assert get_settings(home=tmp_path, api_root_path=good).api_root_path == good
    assert get_settings(home=tmp_path).api_root_path == ""
    bad_paths = ("pay", "/pay/", "/", "//pay", "/pay?x=1", "https://shop.example/pay", "/p ay")
    for bad in (*bad_paths, "/..", "/pay/./v1", "/pay/.."):
        with pytest.raises(ValidationError, match="is not a path prefix like /pay"):
            get_settings(home=tmp_path, api_root_path=bad)


class TestCors:
    def test_off_by_default(self, client):
        r = client.get("/v1/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        pre = client.options(
            "/v1/health",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in pre.headers

    def test_allow_list(self, make_app):
        config = ApiConfig(cors_origins=("https://dash.example",), rate_limit_burst=1000)
        with TestClient(make_app(config)) as c:
            ok = c.get("/v1/health", headers={"Origin": "https://dash.example"})
            bad = c.get("/v1/health", headers={"Origin": "https://evil.example"})
        assert ok.headers["access-control-allow-origin"] == "https://dash.example"
        assert "access-control-allow-origin" not in bad.headers
