"""Webhook targets (SSRF): non-public hosts refused at registration and at connect time, generic
errors in the delivery log."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Sequence

import httpx
import pytest

from api.db import session_factory, session_scope
from api.errors import InvalidRequest
from api.settings import get_settings
from api.webhooks import delivery, transport
from api.webhooks import service as webhooks
from api.webhooks.models import DeliveryStatus, WebhookAttempt, WebhookDelivery
from api.webhooks.targets import TargetPolicy, is_public_address
from tests.api.conftest import Receiver, auth, free_port

PUBLIC = "93.184.216.34"


def _resolver(*answers: Sequence[str]) -> Callable[[str, int], Sequence[str]]:
    """Answers every lookup of ``hooks.test`` with the next of ``answers`` (the last repeats)."""
    queue = list(answers)

    def resolve(host: str, port: int) -> Sequence[str]:
        if host != "hooks.test":
            raise OSError("no such host")
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return resolve


class TestIsPublicAddress:
    @pytest.mark.parametrize(
        "address",
        [
            "127.0.0.1",  # loopback
            "10.0.0.5",  # RFC 1918
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",  # link-local: cloud metadata
            "100.64.0.1",  # CGNAT
            "0.0.0.0",  # unspecified  # noqa: S104
            "224.0.0.1",  # multicast (is_global says True)
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",  # ULA
            "fe80::1",  # link-local
            "ff02::1",  # multicast
            "::ffff:127.0.0.1",  # IPv4-mapped
            "::ffff:169.254.169.254",
            "::7f00:1",  # IPv4-compatible
            "64:ff9b::a00:5",  # NAT64 of 10.0.0.5
            "2002:7f00:1::",  # 6to4 of 127.0.0.1
            "2001:db8::1",  # documentation
            "3fff::1",  # documentation since RFC 9637 (is_global says True on 3.11)
        ],
    )
    def test_refused(self, address):
        assert not is_public_address(ipaddress.ip_address(address))

    @pytest.mark.parametrize("address", [PUBLIC, "1.1.1.1", "2606:4700:4700::1111"])
    def test_public(self, address):
        assert is_public_address(ipaddress.ip_address(address))


@pytest.fixture
def production(make_app, tmp_path):
    """The app with the production default (private targets refused)."""
    from fastapi.testclient import TestClient

    app = make_app(settings=get_settings(home=tmp_path, webhook_allow_private_targets=False))
    with TestClient(app) as c:
        yield c


#: Hosts the URL pattern lets through that httpx or the resolver cannot use: a label over 63
#: characters and an empty label (the resolver's IDNA encoding fails), an IPv4 literal with a
#: leading zero (the system resolver reads 8.8.8.8, httpx refuses it).
POISON_URLS = [
    "https://" + "a" * 64 + ".example.com/h",
    "https://a..example.com/h",
    "https://010.8.8.8/h",
]


def _register(client, key: str, url: str):
    return client.post(
        "/v1/webhook_endpoints", json={"url": url, "enabled_events": ["*"]}, headers=auth(key)
    )


class TestRegistration:
    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1:1/x",
            "http://10.0.0.1/hooks",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.64.0.1/hooks",
            "http://0.0.0.0:8000/hooks",
            "http://localhost:5432/hooks",  # a name that resolves to loopback
        ],
    )
    def test_non_public_hosts_are_400(self, production, new_key, url):
        r = _register(production, new_key(), url)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["code"], error["param"]) == ("url_not_allowed", "url")

    @pytest.mark.parametrize("url", POISON_URLS)
    def test_hosts_deliveries_could_not_use_are_400(self, production, new_key, url):
        r = _register(production, new_key(), url)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "url"

    def test_ipv6_loopback_literal_is_refused_by_the_service(self, db):
        policy = TargetPolicy()
        for url in ("http://[::1]/h", "http://[::ffff:127.0.0.1]/h", "http://[fd00::1]/h"):
            with session_scope(session_factory(db)) as s, pytest.raises(InvalidRequest) as caught:
                webhooks.create_endpoint(s, "m_1", url, ["*"], targets=policy)
            assert caught.value.code == "url_not_allowed", url

    def test_a_name_resolving_to_any_private_address_is_refused(self, db):
        policy = TargetPolicy(resolve=_resolver([PUBLIC, "10.0.0.7"]))
        with session_scope(session_factory(db)) as s, pytest.raises(InvalidRequest) as caught:
            webhooks.create_endpoint(s, "m_1", "https://hooks.test/h", ["*"], targets=policy)
        assert caught.value.code == "url_not_allowed"

    def test_public_hosts_and_unresolved_names_are_accepted(self, db):
        policy = TargetPolicy(resolve=_resolver([PUBLIC]))
        urls = [f"https://{PUBLIC}/h", "https://hooks.test/h", "https://nowhere.test/h"]
        with session_scope(session_factory(db)) as s:
            made = [
                webhooks.create_endpoint(s, "m_1", url, ["*"], targets=policy)[0].id for url in urls
            ]
        with session_scope(session_factory(db)) as s:
            stored = [webhooks.get_endpoint(s, i, merchant_id="m_1") for i in made]
        assert [(e.url, e.enabled) for e in stored] == [(url, True) for url in urls]

    def test_a_public_receiver_needs_https_whatever_the_keys_mode(self, db):
        """A test key's endpoint gets the merchant's real events (modes label keys, they do
        not partition data): plain http to a public host was accepted for test keys, sending
        customers' phone numbers and live link tokens in clear."""
        policy = TargetPolicy(resolve=_resolver([PUBLIC]))
        with session_scope(session_factory(db)) as s:
            for url in (f"http://{PUBLIC}/h", "http://hooks.test/h"):
                with pytest.raises(InvalidRequest, match="must use https"):
                    webhooks.create_endpoint(s, "m_1", url, ["*"], targets=policy)
            webhooks.create_endpoint(s, "m_1", "https://hooks.test/h", ["*"], targets=policy)

    def test_the_allowance_admits_loopback(self, client, new_key, receiver):
        assert _register(client, new_key(), receiver.url).status_code == 200  # tests' setting


def _enqueue(db, url: str) -> str:
    with session_scope(session_factory(db)) as s:
        webhooks.create_endpoint(s, "m_1", url, ["*"])  # trusted path: no address check
        (d,) = webhooks.enqueue(s, "m_1", "invoice.settled", {"id": "inv_1"})
    return d.id


def _row(db, delivery_id: str) -> tuple[WebhookDelivery, list[WebhookAttempt]]:
    from api.webhooks import repository

    with session_scope(session_factory(db)) as s:
        row = s.get(WebhookDelivery, delivery_id)
        assert row is not None
        return row, list(repository.attempts_for(s, delivery_id))


class TestConnectTime:
    def test_default_policy_never_connects_to_loopback(self, db, receiver: Receiver):
        delivery_id = _enqueue(db, receiver.url)
        (r,) = delivery.deliver_due(session_factory(db))  # production default: public only
        assert (r.ok, r.error) == (False, "address not allowed")
        assert receiver.received == []
        row, _ = _row(db, delivery_id)
        assert row.status == DeliveryStatus.PENDING  # retried: DNS may change back

    def test_dns_rebinding_is_checked_on_the_connected_address(self, db, receiver: Receiver):
        port = receiver.url.split(":")[2].split("/")[0]
        url = f"http://hooks.test:{port}/hooks"
        policy = TargetPolicy(resolve=_resolver([PUBLIC], ["127.0.0.1"]))
        policy.check_url(url)  # registration saw a public address
        delivery_id = _enqueue(db, url)
        (r,) = delivery.deliver_due(session_factory(db), targets=policy)  # now 127.0.0.1
        assert r.error == "address not allowed"
        assert receiver.received == []
        assert _row(db, delivery_id)[0].last_error == "address not allowed"

    def test_connects_to_the_checked_address_with_the_host_name_kept(self, db, receiver):
        port = receiver.url.split(":")[2].split("/")[0]
        lookups: list[str] = []

        def resolve(host: str, p: int) -> list[str]:
            lookups.append(host)
            return ["127.0.0.1"]

        policy = TargetPolicy(allow_private=True, resolve=resolve)
        _enqueue(db, f"http://hooks.test:{port}/hooks")
        (r,) = delivery.deliver_due(session_factory(db), targets=policy)
        assert r.ok, r.error
        assert lookups == ["hooks.test"]  # resolved by the guard, once for the connection
        (got,) = receiver.received
        assert got.headers["Host"] == f"hooks.test:{port}"

    def test_a_slow_name_lookup_counts_against_the_attempts_deadline(self):
        """A merchant controls its domain's DNS: a lookup that never answers must end the
        attempt at its deadline (``timeout``), not hold the worker's lane until it answers."""
        release, started = threading.Event(), threading.Event()

        def stalling(host: str, port: int) -> list[str]:
            started.set()
            release.wait(30)
            return [PUBLIC]

        outcome: list[BaseException | None] = []

        def attempt() -> None:
            with transport.delivery_client(TargetPolicy(resolve=stalling)) as client:
                try:
                    transport.post(client, "https://slow-dns.test/h", b"{}", {}, timeout=0.5)
                except httpx.HTTPError as exc:
                    outcome.append(exc)
                else:
                    outcome.append(None)

        thread = threading.Thread(target=attempt)
        thread.start()
        try:
            assert started.wait(10)
            thread.join(10)  # a hang guard: the lookup is still stalled throughout
            assert not thread.is_alive(), "the attempt waited for the name lookup"
        finally:
            release.set()
            thread.join(30)
        (error,) = outcome
        assert isinstance(error, httpx.ConnectTimeout)
        assert transport.describe_error(error) == "timeout"


class TestGenericErrors:
    LOCAL = TargetPolicy(allow_private=True)

    def test_connection_refused(self, db):
        delivery_id = _enqueue(db, f"http://127.0.0.1:{free_port()}/closed")
        (r,) = delivery.deliver_due(session_factory(db), targets=self.LOCAL)
        assert r.error == "connection refused"
        row, (attempt,) = _row(db, delivery_id)
        assert (row.last_error, attempt.error) == ("connection refused", "connection refused")

    def test_tls_failure_says_tls_error_only(self, db, receiver):
        # https to a plain-HTTP listener: the raw text named the address and the SSL internals
        delivery_id = _enqueue(db, receiver.url.replace("http://", "https://"))
        (r,) = delivery.deliver_due(session_factory(db), targets=self.LOCAL)
        assert r.error == "tls error"
        assert _row(db, delivery_id)[0].last_error == "tls error"

    def test_non_2xx_is_the_status_only(self, db, receiver):
        receiver.statuses = [503]
        _enqueue(db, receiver.url)
        (r,) = delivery.deliver_due(session_factory(db), targets=self.LOCAL)
        assert (r.status_code, r.error) == (503, "HTTP 503")

    def test_the_api_shows_no_address_or_exception_text(self, client, db, new_key):
        port = free_port()
        delivery_id = _enqueue(db, f"http://127.0.0.1:{port}/closed")
        delivery.deliver_due(session_factory(db), targets=self.LOCAL)
        body = client.get(f"/v1/webhook_deliveries/{delivery_id}", headers=auth(new_key())).text
        assert "connection refused" in body
        for leak in ("Error", "Errno", str(port) + "/", "[SSL"):
            assert leak not in body.replace(f"127.0.0.1:{port}/closed", "")


class TestOneRowNeverStopsARound:
    @pytest.mark.parametrize("poison", POISON_URLS)
    def test_an_unusable_stored_url_fails_its_attempt_and_the_round_goes_on(
        self, db, receiver: Receiver, poison
    ):
        """An endpoint stored before registration parsed urls as deliveries do: its delivery
        raised out of the round (not an httpx.HTTPError), so the round's other rows, other
        merchants' too, stayed claimed, and it headed every later round for ever."""
        import sqlalchemy as sa

        with session_scope(session_factory(db)) as s:
            bad = webhooks.create_endpoint(s, "m_bad", "https://bad.example/h", ["*"])[0]
            webhooks.create_endpoint(s, "m_good", receiver.url, ["*"])
            (first,) = webhooks.enqueue(s, "m_bad", "invoice.settled", {"id": "inv_1"})
            (second,) = webhooks.enqueue(s, "m_good", "invoice.settled", {"id": "inv_2"})
            s.execute(
                sa.text("UPDATE api_webhook_endpoints SET url = :u WHERE id = :i"),
                {"u": poison, "i": bad.id},
            )
        results = delivery.deliver_due(
            session_factory(db), targets=TargetPolicy(allow_private=True)
        )
        assert {r.delivery_id: r.ok for r in results} == {first.id: False, second.id: True}
        assert len(receiver.received) == 1
        row, attempts = _row(db, first.id)
        assert row.status != DeliveryStatus.DELIVERING
        assert [a.error for a in attempts] in (["dns error"], ["invalid url"])


class TestAnUnreachableEndpointDoesNotHoldUpOthers:
    def test_its_other_rows_wait_for_its_retry_and_the_round_moves_on(self, db, receiver: Receiver):
        """A round tried every row of an endpoint that timed out, one full attempt each, while
        other merchants' deliveries waited behind them. After one failed connection the
        endpoint's other rows wait for that attempt's retry, unsent and uncounted."""
        dead = f"http://127.0.0.1:{free_port()}/h"  # nothing listens: connection refused
        with session_scope(session_factory(db)) as s:
            webhooks.create_endpoint(s, "m_dead", dead, ["*"])
            webhooks.create_endpoint(s, "m_live", receiver.url, ["*"])
            queued = [
                webhooks.enqueue(s, "m_dead", "invoice.settled", {"id": f"inv_{n}"})[0].id
                for n in range(3)
            ]
            (live,) = webhooks.enqueue(s, "m_live", "invoice.settled", {"id": "inv_9"})
        policy = TargetPolicy(allow_private=True)
        results = delivery.deliver_due(session_factory(db), targets=policy)
        assert [(r.delivery_id, r.ok, r.error) for r in results] == [
            (queued[0], False, "connection refused"),
            (live.id, True, None),
        ]
        assert len(receiver.received) == 1
        first, _ = _row(db, queued[0])
        for waiting in queued[1:]:
            row, attempts = _row(db, waiting)
            assert (row.status, row.attempt_count, attempts) == (DeliveryStatus.PENDING, 0, [])
            assert row.next_attempt_at == first.next_attempt_at
