"""Webhooks: signatures, endpoints API, outbox, real HTTP delivery with retries, redelivery."""

from __future__ import annotations

import functools
import itertools
import json
import threading
import time
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.db import session_factory, session_scope, utcnow
from api.errors import InvalidRequest
from api.webhooks import delivery
from api.webhooks import service as webhooks
from api.webhooks.models import (
    EVENT_TYPES,
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from api.webhooks.secrets import SecretCipher, SecretDecryptionError
from api.webhooks.signing import SIGNATURE_HEADER, WebhookSignatureError, sign, verify
from api.webhooks.targets import TargetPolicy
from tests.api.conftest import auth, free_port
from tests.support import stalling_server

SECRET = "whsec_test_secret"
#: the receivers here are on 127.0.0.1 (the production default refuses it: test_webhook_targets)
LOCAL = TargetPolicy(allow_private=True)
_deliver = functools.partial(delivery.deliver_due, targets=LOCAL)
BODY = b'{"id":"evt_1","type":"invoice.settled"}'


class TestSignature:
    def test_round_trip(self):
        header = sign(SECRET, 1_700_000_000, BODY)
        assert header.startswith("t=1700000000,v1=")
        assert verify(SECRET, header, BODY, now=1_700_000_100) == 1_700_000_000

    def test_matches_the_documented_recipe(self):
        import hashlib
        import hmac

        expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
        assert sign(SECRET, 1_700_000_000, BODY) == f"t=1700000000,v1={expected}"

    @pytest.mark.parametrize(
        ("secret", "body", "now"),
        [
            (SECRET, BODY + b" ", 1_700_000_000),  # tampered body
            ("whsec_other", BODY, 1_700_000_000),  # wrong secret
            (SECRET, BODY, 1_700_000_301),  # too old (tolerance 300 s)
            (SECRET, BODY, 1_699_999_699),  # from the future
        ],
    )
    def test_rejections(self, secret, body, now):
        header = sign(SECRET, 1_700_000_000, BODY)
        with pytest.raises(WebhookSignatureError):
            verify(secret, header, body, now=now)

    def test_tolerance_edges_accepted(self):
        header = sign(SECRET, 1_700_000_000, BODY)
        verify(SECRET, header, BODY, now=1_700_000_300)
        verify(SECRET, header, BODY, now=1_699_999_700)

    @pytest.mark.parametrize(
        "header",
        [
            *(None, "", "t=abc,v1=00", "v1=00", "t=1700000000", "garbage"),
            "t=1700000000,v0=ab",
            "t=" + "1" * 5000 + ",v1=00",  # past int()'s digit limit: not a bare ValueError
        ],
    )
    def test_malformed_headers(self, header):
        with pytest.raises(WebhookSignatureError):
            verify(SECRET, header, BODY, now=1_700_000_000)

    def test_any_of_several_signatures_during_rotation(self):
        header = sign("whsec_new", 1_700_000_000, BODY, extra_secrets=["whsec_old"])
        assert verify("whsec_old", header, BODY, now=1_700_000_000)
        assert verify("whsec_new", header, BODY, now=1_700_000_000)


class TestCipher:
    def test_encrypted_at_rest_with_master_key(self):
        cipher = SecretCipher(b"m" * 32)
        stored = cipher.encrypt("whsec_abc", context="we_1")
        assert "whsec_abc" not in stored
        assert stored.startswith("aesgcm:")
        assert cipher.decrypt(stored, context="we_1") == "whsec_abc"
        with pytest.raises(Exception, match="decrypted"):
            cipher.decrypt(stored, context="we_2")  # bound to the endpoint id
        assert "m" * 32 not in repr(cipher)

    def test_the_master_key_setting_is_read_as_the_key_ring_reads_it(self, tmp_path):
        """The cipher took FOLLOWPAY_MASTER_KEY as a string: "AB…" and "ab…\n" (a Kubernetes
        secret's newline) were one key for the CRM and other keys for the webhook secrets, and
        an empty setting stored secrets in clear."""
        from api.runtime import secret_cipher
        from api.settings import get_settings

        stored = secret_cipher(get_settings(home=tmp_path, master_key="ab" * 32)).encrypt(
            "whsec_abc", context="we_1"
        )
        for spelling in ("AB" * 32, "ab" * 32 + "\n", " " + "Ab" * 32):
            cipher = secret_cipher(get_settings(home=tmp_path, master_key=spelling))
            assert cipher.decrypt(stored, context="we_1") == "whsec_abc"
        with pytest.raises(ValueError, match="at least 32 bytes"):
            secret_cipher(get_settings(home=tmp_path, master_key=""))

    @pytest.mark.parametrize("spelling", ["AB" * 32, "ab" * 32 + "\n", " " + "Ab" * 32])
    def test_secrets_stored_under_the_settings_text_still_read(self, tmp_path, spelling):
        """Earlier releases keyed the webhook secrets on the setting's text as given: after
        the fix, every endpoint registered under an upper-case or padded key stopped
        delivering (secret unavailable) until it was registered again."""
        from api.runtime import secret_cipher
        from api.settings import get_settings

        stored = SecretCipher(spelling).encrypt("whsec_old", context="we_1")
        cipher = secret_cipher(get_settings(home=tmp_path, master_key=spelling))
        assert cipher.decrypt(stored, context="we_1") == "whsec_old"
        fresh = cipher.encrypt("whsec_new", context="we_1")  # new ones under the key's bytes
        canonical = secret_cipher(get_settings(home=tmp_path, master_key="ab" * 32))
        assert canonical.decrypt(fresh, context="we_1") == "whsec_new"
        with pytest.raises(SecretDecryptionError):
            cipher.decrypt(stored, context="we_2")  # still bound to the endpoint id
        other = secret_cipher(get_settings(home=tmp_path, master_key="cd" * 32))
        with pytest.raises(SecretDecryptionError):
            other.decrypt(stored, context="we_1")


class TestEndpointsApi:
    def test_secret_returned_on_create_and_rotate_only(self, client, db, new_key):
        key = new_key()
        r = client.post(
            "/v1/webhook_endpoints",
            json={"url": "http://127.0.0.1:9/h", "enabled_events": ["invoice.settled", "*"]},
            headers=auth(key),
        )
        assert r.status_code == 200, r.text
        created = r.json()
        secret = created["secret"]
        assert secret.startswith("whsec_")
        assert created["merchant_id"] == "m_1"
        assert created["object"] == "webhook_endpoint"
        one = client.get(f"/v1/webhook_endpoints/{created['id']}", headers=auth(key))
        listed = client.get("/v1/webhook_endpoints", headers=auth(key))
        assert secret not in one.text
        assert secret not in listed.text
        rotated = client.post(
            f"/v1/webhook_endpoints/{created['id']}/rotate_secret", headers=auth(key)
        ).json()
        assert rotated["secret"].startswith("whsec_")
        assert rotated["secret"] != secret

    def test_every_event_the_schema_offers_can_be_subscribed_to(self, client, new_key):
        offered = client.get("/openapi.json").json()["components"]["schemas"]
        enum = offered["WebhookEndpointCreate"]["properties"]["enabled_events"]["items"]["enum"]
        assert set(enum) == {"*", *EVENT_TYPES}
        assert {"invoice.payment_held", "feedback.updated"} <= set(enum)
        r = client.post(
            "/v1/webhook_endpoints",
            json={"url": "http://127.0.0.1:9/h", "enabled_events": list(EVENT_TYPES)},
            headers=auth(new_key()),
        )
        assert r.status_code == 200, r.text
        assert sorted(r.json()["enabled_events"]) == sorted(EVENT_TYPES)

    @pytest.mark.parametrize("master_key", ["ab" * 32, None], ids=["env", "home-file"])
    def test_secret_encrypted_in_the_row(self, make_app, settings, db, new_key, master_key):
        """With FOLLOWPAY_MASTER_KEY, or without it under the key ring's own
        ``<home>/master.key``: never ``plain:`` on a default install."""
        secret_key = SecretStr(master_key) if master_key else None
        app = make_app(settings=settings.model_copy(update={"master_key": secret_key}))
        with TestClient(app) as c:
            secret = c.post(
                "/v1/webhook_endpoints",
                json={"url": "http://127.0.0.1:9/h", "enabled_events": ["*"]},
                headers=auth(new_key()),
            ).json()["secret"]
        with db.connect() as conn:
            rows = [
                dict(r._mapping)
                for r in conn.execute(sa.text("SELECT * FROM api_webhook_endpoints"))
            ]
        assert secret not in repr(rows)
        assert rows[0]["secret_encrypted"].startswith("aesgcm:")

    @pytest.mark.parametrize(
        ("body", "param"),
        [
            ({"url": "ftp://x/y", "enabled_events": ["*"]}, "url"),
            (
                {"url": "http://127.0.0.1/h", "enabled_events": ["invoice.nope"]},
                "enabled_events[0]",
            ),
            ({"url": "http://u:p@127.0.0.1/h", "enabled_events": ["*"]}, "url"),
        ],
    )
    def test_invalid_endpoint(self, client, new_key, body, param):
        r = client.post("/v1/webhook_endpoints", json=body, headers=auth(new_key()))
        assert r.status_code == 422
        assert r.json()["error"]["param"] == param

    def test_a_host_deliveries_could_not_encode_is_refused(self, client, new_key):
        """'xn--zz' passes Python's IDNA 2003 codec but not the IDNA 2008 check httpx makes
        when it builds a request: every delivery would have failed."""
        body = {"url": "https://xn--zz.example/h", "enabled_events": ["*"]}
        r = client.post("/v1/webhook_endpoints", json=body, headers=auth(new_key()))
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "url"

    @pytest.mark.parametrize("port", ["99999", "70000", "65536", "0"])
    def test_a_port_out_of_range_is_refused_on_create_and_update(self, client, new_key, port):
        """A port past 65535 was accepted, and the socket layer wrapped it: the signed events,
        customers' data included, went to port - 65536, a port the merchant never named."""
        key = new_key()
        refused = client.post(
            "/v1/webhook_endpoints",
            json={"url": f"https://hooks.example.com:{port}/in", "enabled_events": ["*"]},
            headers=auth(key),
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "url"
        made = client.post(
            "/v1/webhook_endpoints",
            json={"url": "https://hooks.example.com:8443/in", "enabled_events": ["*"]},
            headers=auth(key),
        )
        assert made.status_code == 200, made.text
        update = client.post(
            f"/v1/webhook_endpoints/{made.json()['id']}",
            json={"url": f"https://hooks.example.com:{port}/in"},
            headers=auth(key),
        )
        assert update.status_code == 400, update.text
        listed = client.get("/v1/webhook_endpoints", headers=auth(key)).json()["data"]
        assert [e["url"] for e in listed] == ["https://hooks.example.com:8443/in"]

    def test_a_port_out_of_range_is_refused_under_the_production_policy(self, db):
        with session_scope(session_factory(db)) as s, pytest.raises(InvalidRequest):
            webhooks.create_endpoint(
                s, "m_1", "https://93.184.215.14:99999/in", ["*"], targets=TargetPolicy(False)
            )

    def test_service_validates_for_non_http_callers(self, db):
        with session_scope(session_factory(db)) as s:
            for url, events in [("ftp://x/y", ["*"]), ("http://127.0.0.1/h", ["invoice.nope"])]:
                with pytest.raises(InvalidRequest):
                    webhooks.create_endpoint(s, "m_1", url, events)

    def test_live_keys_need_https(self, client, new_key):
        r = client.post(
            "/v1/webhook_endpoints",
            json={"url": "http://127.0.0.1/h", "enabled_events": ["*"]},
            headers=auth(new_key(live=True)),
        )
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "url"

    def test_other_merchants_objects_are_404(self, client, db, new_key):
        with session_scope(session_factory(db)) as s:
            e, _ = webhooks.create_endpoint(s, "m_2", "http://127.0.0.1/h", ["*"])
            (d,) = webhooks.enqueue(s, "m_2", "ticket.opened", {"id": "t_1"})
        key = new_key(merchant_id="m_1")
        for method, path in [
            ("GET", f"/v1/webhook_endpoints/{e.id}"),
            ("GET", f"/v1/webhook_endpoints/{e.id}/deliveries"),
            ("POST", f"/v1/webhook_endpoints/{e.id}/rotate_secret"),
            ("POST", f"/v1/webhook_deliveries/{d.id}/redeliver"),
        ]:
            r = client.request(method, path, headers=auth(key))
            assert r.status_code == 404, path
            assert r.json()["error"]["code"] == "resource_missing"

    def test_a_key_manages_only_its_own_modes_endpoints(self, client, db, new_key):
        """A test key (a developer's, a staging server's) rotating a live endpoint would get the
        secret that signs production webhooks: it could forge `invoice.settled` to the
        merchant's live receiver. Another mode's endpoints and deliveries are 404 to it."""
        with session_scope(session_factory(db)) as s:
            live, _ = webhooks.create_endpoint(
                s, "m_1", "https://127.0.0.1:9/live", ["*"], livemode=True, targets=LOCAL
            )
            (d,) = webhooks.enqueue(s, "m_1", "ticket.opened", {"id": "t_1"})
        test_key, live_key = auth(new_key()), auth(new_key(live=True))
        paths = [
            ("GET", f"/v1/webhook_endpoints/{live.id}"),
            ("GET", f"/v1/webhook_endpoints/{live.id}/deliveries"),
            ("GET", f"/v1/webhook_deliveries/{d.id}"),
            ("POST", f"/v1/webhook_deliveries/{d.id}/redeliver"),
            ("POST", f"/v1/webhook_endpoints/{live.id}/rotate_secret"),
            ("DELETE", f"/v1/webhook_endpoints/{live.id}"),
        ]
        for method, path in paths:
            r = client.request(method, path, headers=test_key)
            assert r.status_code == 404, (path, r.text)
        assert client.get("/v1/webhook_endpoints", headers=test_key).json()["data"] == []
        with session_scope(session_factory(db)) as s:
            kept = webhooks.get_endpoint(s, live.id, merchant_id="m_1")
            assert kept.enabled  # nothing changed
            assert kept.secret_encrypted == live.secret_encrypted
        for method, path in paths:
            r = client.request(method, path, headers=live_key)
            assert r.status_code == 200, (path, r.text)
        listed = client.get("/v1/webhook_endpoints", headers=live_key).json()["data"]
        assert [e["id"] for e in listed] == [live.id]

    def test_redelivering_to_a_disabled_endpoint_is_refused(self, client, db, new_key):
        with session_scope(session_factory(db)) as s:
            e, _ = webhooks.create_endpoint(s, "m_1", "http://127.0.0.1:9/h", ["*"])
            (d,) = webhooks.enqueue(s, "m_1", "ticket.opened", {"id": "t_1"})
        key = auth(new_key())
        assert client.delete(f"/v1/webhook_endpoints/{e.id}", headers=key).status_code == 200
        r = client.post(f"/v1/webhook_deliveries/{d.id}/redeliver", headers=key)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "webhook_endpoint_disabled")
        log = client.get(f"/v1/webhook_endpoints/{e.id}/deliveries", headers=key).json()
        assert [x["id"] for x in log["data"]] == [d.id]  # no copy queued

    def test_an_endpoint_is_updated_and_enabled_again(self, client, db, new_key):
        key = auth(new_key())
        made = client.post(
            "/v1/webhook_endpoints",
            json={"url": "http://127.0.0.1:9/a", "enabled_events": ["*"], "description": "old"},
            headers=key,
        ).json()
        path = f"/v1/webhook_endpoints/{made['id']}"
        r = client.post(
            path,
            json={"url": "http://127.0.0.1:9/b", "enabled_events": ["ticket.opened"]},
            headers=key,
        )
        assert r.status_code == 200, r.text
        assert (r.json()["url"], r.json()["enabled_events"]) == (
            "http://127.0.0.1:9/b",
            ["ticket.opened"],
        )
        assert r.json()["description"] == "old"  # left out: unchanged
        assert (
            client.post(path, json={"description": None}, headers=key).json()["description"] is None
        )
        off = client.post(path, json={"disabled": True}, headers=key).json()
        assert (off["status"], off["disabled_reason"]) == ("disabled", "merchant")
        with session_scope(session_factory(db)) as s:
            assert webhooks.enqueue(s, "m_1", "ticket.opened", {"id": "t_1"}) == []
        again = client.post(path, json={"disabled": False}, headers=key)
        assert again.json()["status"] == "enabled"
        with session_scope(session_factory(db)) as s:
            (d,) = webhooks.enqueue(s, "m_1", "ticket.opened", {"id": "t_2"})
        assert d.endpoint_id == made["id"]
        assert secret_unchanged(db, client.app.state.cipher, made["id"], made["secret"])

    def test_a_bad_update_changes_nothing(self, client, db, new_key):
        key = auth(new_key())
        body = {"url": "http://127.0.0.1:9/h", "enabled_events": ["*"]}
        first = client.post("/v1/webhook_endpoints", json=body, headers=key).json()
        path = f"/v1/webhook_endpoints/{first['id']}"
        client.post(path, json={"disabled": True}, headers=key)
        for _ in range(webhooks.MAX_ENABLED_ENDPOINTS):
            assert client.post("/v1/webhook_endpoints", json=body, headers=key).status_code == 200
        for bad, code in (
            ({"disabled": False}, "webhook_endpoint_limit"),  # a 17th enabled one
            ({"url": "ftp://127.0.0.1/h", "disabled": False}, "parameter_invalid"),
            ({"enabled_events": ["invoice.bogus"]}, "parameter_invalid"),
            ({"enabled_events": []}, "parameter_invalid"),
            ({"secret": "whsec_mine"}, "parameter_invalid"),  # not settable here
        ):
            r = client.post(path, json={**bad, "description": "changed"}, headers=key)
            assert r.status_code in (400, 422), r.text
            assert r.json()["error"]["code"] == code, (bad, r.text)
        shown = client.get(path, headers=key).json()
        assert (shown["status"], shown["url"], shown["description"]) == (
            "disabled",
            "http://127.0.0.1:9/h",
            None,
        )
        assert _endpoint_count(db, "m_1") == webhooks.MAX_ENABLED_ENDPOINTS + 1

    def test_support_keys_cannot_manage_webhooks(self, client, new_key):
        r = client.get("/v1/webhook_endpoints", headers=auth(new_key("support", "m_1")))
        assert r.status_code == 403

    def test_a_merchant_has_at_most_16_enabled_endpoints(self, client, db, new_key):
        key = new_key()
        body = {"url": "http://127.0.0.1:9/h", "enabled_events": ["*"]}
        made = []
        for _ in range(webhooks.MAX_ENABLED_ENDPOINTS):
            r = client.post("/v1/webhook_endpoints", json=body, headers=auth(key))
            assert r.status_code == 200, r.text
            made.append(r.json()["id"])
        refused = client.post("/v1/webhook_endpoints", json=body, headers=auth(key))
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "webhook_endpoint_limit"
        assert _endpoint_count(db, "m_1") == webhooks.MAX_ENABLED_ENDPOINTS  # nothing written
        m_2 = auth(new_key(merchant_id="m_2"))
        other = client.post("/v1/webhook_endpoints", json=body, headers=m_2)
        assert other.status_code == 200, other.text  # the limit is per merchant
        gone = client.delete(f"/v1/webhook_endpoints/{made[0]}", headers=auth(key))
        assert gone.status_code == 200
        again = client.post("/v1/webhook_endpoints", json=body, headers=auth(key))
        assert again.status_code == 200, again.text  # disabled ones do not count

    def test_registrations_at_once_never_pass_the_limit(self, db):
        sessions = session_factory(db)
        with session_scope(sessions) as s:
            for _ in range(webhooks.MAX_ENABLED_ENDPOINTS - 2):
                webhooks.create_endpoint(s, "m_1", "http://127.0.0.1:9/h", ["*"])
        start = threading.Barrier(6)
        outcomes: list[str] = []

        def register() -> None:
            start.wait(timeout=10)
            try:
                with session_scope(sessions) as s:
                    webhooks.create_endpoint(s, "m_1", "http://127.0.0.1:9/h", ["*"])
                outcomes.append("made")
            except InvalidRequest as exc:
                outcomes.append(exc.code)

        threads = [threading.Thread(target=register) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(outcomes) == ["made"] * 2 + ["webhook_endpoint_limit"] * 4
        assert _endpoint_count(db, "m_1") == webhooks.MAX_ENABLED_ENDPOINTS


def secret_unchanged(db, cipher: SecretCipher, endpoint_id: str, secret: str) -> bool:
    """The endpoint still signs with ``secret`` (an update never touches it)."""
    with session_scope(session_factory(db)) as s:
        endpoint = webhooks.get_endpoint(s, endpoint_id, merchant_id=None)
        return cipher.decrypt(endpoint.secret_encrypted, context=endpoint_id) == secret


def _endpoint_count(db, merchant_id: str) -> int:
    with db.connect() as conn:
        return conn.execute(
            sa.text("SELECT count(*) FROM api_webhook_endpoints WHERE merchant_id = :m"),
            {"m": merchant_id},
        ).scalar_one()


class TestOutbox:
    def test_enqueue_is_part_of_the_callers_transaction(self, db):
        factory = session_factory(db)
        with session_scope(factory) as s:
            webhooks.create_endpoint(s, "m_1", "http://127.0.0.1/a", ["invoice.settled"])
            webhooks.create_endpoint(s, "m_1", "http://127.0.0.1/b", ["ticket.opened"])
            webhooks.create_endpoint(s, "m_2", "http://127.0.0.1/c", ["*"])
        queued: list[int] = []

        def business_transaction_that_fails() -> None:
            with session_scope(factory) as s:
                queued.append(len(webhooks.enqueue(s, "m_1", "invoice.settled", {"id": "inv_1"})))
                raise RuntimeError("the business transaction failed")

        with pytest.raises(RuntimeError, match="business"):
            business_transaction_that_fails()
        assert queued == [1]
        with session_scope(factory) as s:
            assert s.exec(sa.select(WebhookDelivery)).all() == []  # type: ignore[call-overload]
            deliveries = webhooks.enqueue(s, "m_1", "invoice.settled", {"id": "inv_1"})
        assert len(deliveries) == 1
        body = json.loads(deliveries[0].payload)
        assert body["type"] == "invoice.settled"
        assert body["data"]["object"] == {"id": "inv_1"}

    @pytest.mark.parametrize(
        "header",
        [
            "t=1700000000,v1=\u00e9",  # non-ASCII: compare_digest(str, str) raised TypeError
            "t=1700000000,v1=\udcff",  # a lone surrogate (undecodable bytes)
            "t=\u0661\u0667\u0660\u0660,v1=00",  # non-ASCII digits int() would accept
            "t=1_700_000_000,v1=00",
        ],
    )
    def test_junk_is_a_signature_error_not_a_crash(self, header):
        with pytest.raises(WebhookSignatureError):
            verify(SECRET, header, BODY, now=1_700_000_000)

    def test_unknown_event_type_is_a_bug(self, db):
        with session_scope(session_factory(db)) as s, pytest.raises(ValueError, match="unknown"):
            webhooks.enqueue(s, "m_1", "invoice.bogus", {})


def _endpoint(db, url: str, merchant: str = "m_1") -> tuple[WebhookEndpoint, str]:
    with session_scope(session_factory(db)) as s:
        return webhooks.create_endpoint(s, merchant, url, ["*"])


def _enqueue(db, merchant: str = "m_1", event: str = "invoice.settled") -> WebhookDelivery:
    with session_scope(session_factory(db)) as s:
        (d,) = webhooks.enqueue(s, merchant, event, {"id": "inv_42", "amount": "12.50"})
    return d


def _delivery(db, delivery_id: str) -> WebhookDelivery:
    with session_scope(session_factory(db)) as s:
        d = s.get(WebhookDelivery, delivery_id)
        assert d is not None
        return d


class TestDelivery:
    def test_signed_post_to_a_real_receiver(self, db, receiver):
        _, secret = _endpoint(db, receiver.url)
        d = _enqueue(db)
        results = _deliver(session_factory(db))
        assert [(r.delivery_id, r.ok, r.status_code) for r in results] == [(d.id, True, 200)]
        (got,) = receiver.received
        assert got.path == "/hooks"
        verify(secret, got.headers[SIGNATURE_HEADER], got.body)  # real clock, 300 s tolerance
        assert got.body.decode() == d.payload
        assert got.headers["FollowPay-Event-Id"] == d.event_id
        after = _delivery(db, d.id)
        assert after.status == DeliveryStatus.DELIVERED
        assert after.attempt_count == 1
        assert _deliver(session_factory(db)) == []  # nothing due any more

    def test_failures_follow_the_backoff_then_succeed(self, db, receiver):
        receiver.statuses = [500, 503]
        _endpoint(db, receiver.url)
        d = _enqueue(db)
        factory = session_factory(db)
        t0 = utcnow()
        (r1,) = _deliver(factory, now=t0)
        assert (r1.ok, r1.status_code, r1.status) == (False, 500, DeliveryStatus.PENDING)
        assert r1.next_attempt_at == t0 + timedelta(seconds=10)
        assert _deliver(factory, now=t0 + timedelta(seconds=9)) == []
        t1 = t0 + timedelta(seconds=10)
        (r2,) = _deliver(factory, now=t1)
        assert r2.status_code == 503
        assert r2.next_attempt_at == t1 + timedelta(minutes=1)
        t2 = t1 + timedelta(minutes=1)
        (r3,) = _deliver(factory, now=t2)
        assert r3.ok
        assert r3.status is DeliveryStatus.DELIVERED
        assert len(receiver.received) == 3
        assert len({x.body for x in receiver.received}) == 1  # same body on every attempt
        with session_scope(factory) as s:
            log = (
                s.exec(sa.select(WebhookAttempt).where(WebhookAttempt.delivery_id == d.id))
                .scalars()
                .all()
            )  # type: ignore[call-overload]
        assert sorted((a.attempt, a.status_code) for a in log) == [(1, 500), (2, 503), (3, 200)]

    def test_gives_up_after_the_schedule(self, db, receiver):
        receiver.default = 500
        endpoint, _ = _endpoint(db, receiver.url)
        d = _enqueue(db)
        factory = session_factory(db)
        now = utcnow()
        delays = []
        while True:
            (r,) = _deliver(factory, now=now)
            if r.status is DeliveryStatus.FAILED:
                break
            assert r.next_attempt_at is not None
            delays.append(r.next_attempt_at - now)
            now = r.next_attempt_at
        assert delays == list(webhooks.RETRY_SCHEDULE)
        assert delays[:3] == [timedelta(seconds=10), timedelta(minutes=1), timedelta(minutes=10)]
        assert all(b >= a for a, b in itertools.pairwise(delays))  # backing off
        assert timedelta(days=3) <= sum(delays, timedelta()) <= timedelta(days=4)
        assert _delivery(db, d.id).attempt_count == len(delays) + 1
        assert len(receiver.received) == len(delays) + 1
        assert _deliver(factory, now=now + timedelta(days=1)) == []
        # nothing delivered for a whole schedule: the endpoint is disabled, and says why
        with session_scope(factory) as s:
            stored = webhooks.get_endpoint(s, endpoint.id, merchant_id="m_1")
            assert (stored.enabled, stored.disabled_reason) == (False, "failing")
            assert webhooks.enqueue(s, "m_1", "invoice.settled", {"id": "inv_43"}) == []

    def test_an_endpoint_that_delivered_meanwhile_stays_enabled(self, db, receiver):
        """One event failing for days while others get through is that event's problem (a
        payload the receiver rejects), not a dead endpoint."""
        receiver.default = 500
        endpoint, _ = _endpoint(db, receiver.url)
        d = _enqueue(db)
        factory = session_factory(db)
        now = utcnow()
        (r,) = _deliver(factory, now=now)
        assert r.status is DeliveryStatus.PENDING
        receiver.statuses = [200]  # the next attempt gets through: a later event's
        later = _enqueue(db)
        (ok,) = _deliver(factory, now=utcnow())  # before the first event's retry is due
        assert (ok.delivery_id, ok.ok) == (later.id, True)
        now = r.next_attempt_at
        while (r := _deliver(factory, now=now)[0]).status is not DeliveryStatus.FAILED:
            now = r.next_attempt_at
        assert r.delivery_id == d.id
        with session_scope(factory) as s:
            assert webhooks.get_endpoint(s, endpoint.id, merchant_id="m_1").enabled

    def test_connection_refused_is_a_failed_attempt(self, db):
        _endpoint(db, f"http://127.0.0.1:{free_port()}/closed")
        d = _enqueue(db)
        with httpx.Client(timeout=2) as client:
            (r,) = _deliver(session_factory(db), http_client=client)
        assert not r.ok
        assert r.status_code is None
        assert r.error == "connection refused"  # never the exception's text
        assert _delivery(db, d.id).status == DeliveryStatus.PENDING

    def test_concurrent_workers_send_each_delivery_once(self, db, receiver):
        _endpoint(db, receiver.url)
        ids = {_enqueue(db).id for _ in range(12)}
        factory = session_factory(db)
        barrier = threading.Barrier(4)
        results: list = []
        lock = threading.Lock()

        def worker() -> None:
            barrier.wait()
            got = _deliver(factory, limit=12)
            with lock:
                results.extend(got)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(r.delivery_id for r in results) == sorted(ids)
        assert len(receiver.received) == 12
        assert len({x.headers["FollowPay-Delivery-Id"] for x in receiver.received}) == 12

    def test_a_merchant_with_stalling_endpoints_does_not_hold_up_another(self, db):
        """m_1's three endpoints accept the connection and answer nothing until m_2's event has
        arrived. Sent one after another, m_2 would wait for each of them to time out (15 s
        apiece); in lanes it goes out at once, and every delivery still succeeds."""
        with stalling_server() as server:
            for n in range(3):
                _endpoint(db, f"{server.base}/slow/{n}", merchant="m_1")
            _endpoint(db, f"{server.base}/fast", merchant="m_2")
            with session_scope(session_factory(db)) as s:
                for _ in range(2):  # two events: six deliveries in three lanes, enqueued first
                    webhooks.enqueue(s, "m_1", "invoice.settled", {"id": "inv_1"})
            fast = _enqueue(db, "m_2")
            results: list = []
            round_ = threading.Thread(
                target=lambda: results.extend(_deliver(session_factory(db), limit=20))
            )
            round_.start()
            arrived = server.fast_arrived.wait(10)  # a hang guard; in lanes it takes milliseconds
            server.release.set()
            round_.join(60)
        assert arrived, "m_2's delivery waited behind m_1's stalled endpoints"
        assert not round_.is_alive()
        assert len(results) == 7
        assert all(r.ok for r in results)
        assert fast.id in {r.delivery_id for r in results}

    def test_a_reply_with_nul_bytes_is_delivered_once(self, db):
        """PostgreSQL's text refuses NUL (a UTF-16 or a gzip reply has them): the attempt's
        excerpt failed to insert, the outcome rolled back, and the row was POSTed again after
        every lease, for ever."""
        reply = httpx.Response(200, content="ok".encode("utf-16-le"))
        client = httpx.Client(transport=httpx.MockTransport(lambda _: reply))
        _endpoint(db, "https://hooks.example/h")
        first, second = _enqueue(db), _enqueue(db)
        factory, now = session_factory(db), utcnow()
        for n in range(3):  # the later rounds come after a lease would have run out
            results = _deliver(factory, now=now + timedelta(minutes=n), http_client=client)
            assert all(r.ok for r in results)
        for d in (first, second):
            after = _delivery(db, d.id)
            assert (after.status, after.attempt_count) == (DeliveryStatus.DELIVERED, 1)
        with session_scope(factory) as s:
            excerpts = s.exec(sa.select(WebhookAttempt.response_excerpt)).scalars().all()
        assert len(excerpts) == 2
        assert all("\x00" not in (e or "") for e in excerpts)

    def test_one_rows_database_error_does_not_end_its_endpoints_lane(
        self, db, receiver, monkeypatch
    ):
        _endpoint(db, receiver.url)
        broken, fine = _enqueue(db), _enqueue(db)
        deliver_one = delivery._deliver_one

        def failing(factory, client, delivery_id, *args):
            if delivery_id == broken.id:
                raise sa.exc.OperationalError("INSERT", {}, Exception("disk I/O error"))
            return deliver_one(factory, client, delivery_id, *args)

        monkeypatch.setattr(delivery, "_deliver_one", failing)
        results = _deliver(session_factory(db))
        assert [(r.delivery_id, r.ok) for r in results] == [(fine.id, True)]
        assert _delivery(db, broken.id).status == DeliveryStatus.DELIVERING  # until its lease ends

    def test_an_unreachable_endpoints_backlog_waits_for_its_retry(self, db, receiver):
        """A dead endpoint's first failed attempt postpones all its due rows, not only the
        ones the round claimed: its backlog filled every later round's claims and held up
        other merchants' events one attempt deadline (15 s) per round."""
        _endpoint(db, f"http://127.0.0.1:{free_port()}/closed", merchant="m_dead")
        _endpoint(db, receiver.url, merchant="m_live")
        factory, now = session_factory(db), utcnow()
        with session_scope(factory) as s:
            for n in range(3 * delivery.ROUND_LIMIT):
                webhooks.enqueue(s, "m_dead", "invoice.settled", {"n": n}, now=now)
        live = _enqueue(db, "m_live")
        later = now + timedelta(seconds=1)
        first = _deliver(factory, now=later, limit=delivery.ROUND_LIMIT)
        assert [(r.error, r.status) for r in first] == [
            ("connection refused", DeliveryStatus.PENDING)
        ]
        retry_at = first[0].next_attempt_at
        second = _deliver(factory, now=later, limit=delivery.ROUND_LIMIT)
        assert [(r.delivery_id, r.ok) for r in second] == [(live.id, True)]
        with session_scope(factory) as s:
            waiting = (
                s.exec(
                    sa.select(WebhookDelivery.next_attempt_at).where(
                        WebhookDelivery.merchant_id == "m_dead"
                    )
                )
                .scalars()
                .all()
            )
        assert len(waiting) == 3 * delivery.ROUND_LIMIT
        assert all(at == retry_at for at in waiting)

    def test_an_invalid_stored_url_fails_at_once(self, db):
        """Nothing can ever be sent to it: the delivery fails for good, not after 3.3 days of
        retries (the permanent flag was lost when the attempt's duration was added)."""
        endpoint, _ = _endpoint(db, "https://hooks.example/h")
        d = _enqueue(db)
        with session_scope(session_factory(db)) as s:
            s.execute(
                sa.text("UPDATE api_webhook_endpoints SET url = :u WHERE id = :i"),
                {"u": "https://[::1/h", "i": endpoint.id},
            )
        (r,) = _deliver(session_factory(db))
        assert (r.error, r.status) == ("invalid url", DeliveryStatus.FAILED)
        assert _delivery(db, d.id).status == DeliveryStatus.FAILED

    def test_redeliver_via_api(self, client, db, receiver, new_key):
        receiver.default = 500
        endpoint, secret = _endpoint(db, receiver.url)
        d = _enqueue(db)
        factory = session_factory(db)
        now = utcnow()
        for _ in range(len(webhooks.RETRY_SCHEDULE) + 1):
            (r,) = _deliver(factory, now=now)
            now = r.next_attempt_at or now
        assert _delivery(db, d.id).status == DeliveryStatus.FAILED
        receiver.default = 200
        key = new_key()
        r = client.post(f"/v1/webhook_deliveries/{d.id}/redeliver", headers=auth(key))
        assert r.status_code == 409  # the failing endpoint was disabled: enable it first
        shown = client.get(f"/v1/webhook_endpoints/{endpoint.id}", headers=auth(key)).json()
        assert (shown["status"], shown["disabled_reason"]) == ("disabled", "failing")
        enabled = client.post(
            f"/v1/webhook_endpoints/{endpoint.id}", json={"disabled": False}, headers=auth(key)
        ).json()
        assert (enabled["status"], enabled["disabled_reason"]) == ("enabled", None)
        r = client.post(f"/v1/webhook_deliveries/{d.id}/redeliver", headers=auth(key))
        assert r.status_code == 200, r.text
        again = r.json()
        assert again["status"] == "pending"
        assert again["redelivery_of"] == d.id
        assert again["event_id"] == d.event_id
        assert again["id"] != d.id
        (res,) = _deliver(factory)
        assert res.ok
        assert res.delivery_id == again["id"]
        assert receiver.received[-1].headers["FollowPay-Event-Id"] == d.event_id
        verify(secret, receiver.received[-1].headers[SIGNATURE_HEADER], receiver.received[-1].body)
        log = client.get(
            f"/v1/webhook_endpoints/{endpoint.id}/deliveries", headers=auth(key)
        ).json()
        assert [x["status"] for x in log["data"]] == ["delivered", "failed"]
        assert log["data"][1]["attempt_count"] == len(webhooks.RETRY_SCHEDULE) + 1

    def test_rotation_signs_with_the_new_secret(self, db, receiver):
        endpoint, old = _endpoint(db, receiver.url)
        with session_scope(session_factory(db)) as s:
            _, new = webhooks.rotate_secret(s, endpoint.id, merchant_id="m_1")
        _enqueue(db)
        _deliver(session_factory(db))
        got = receiver.received[-1]
        verify(new, got.headers[SIGNATURE_HEADER], got.body)
        with pytest.raises(WebhookSignatureError):
            verify(old, got.headers[SIGNATURE_HEADER], got.body)

    def test_rotation_grace_signs_with_both(self, db, receiver):
        endpoint, old = _endpoint(db, receiver.url)
        with session_scope(session_factory(db)) as s:
            _, new = webhooks.rotate_secret(
                s, endpoint.id, merchant_id="m_1", grace=timedelta(hours=1)
            )
        _enqueue(db)
        _deliver(session_factory(db))
        got = receiver.received[-1]
        verify(new, got.headers[SIGNATURE_HEADER], got.body)
        verify(old, got.headers[SIGNATURE_HEADER], got.body)

    def test_rotation_through_the_api_can_keep_the_old_secret_signing(
        self, db, receiver, client, new_key
    ):
        key = auth(new_key(merchant_id="m_1"))
        created = client.post(
            "/v1/webhook_endpoints",
            json={"url": receiver.url, "enabled_events": ["*"]},
            headers=key,
        ).json()
        old, path = created["secret"], f"/v1/webhook_endpoints/{created['id']}/rotate_secret"
        # the worker decrypts secrets with the cipher the API encrypted them under
        _deliver = functools.partial(
            delivery.deliver_due, targets=LOCAL, cipher=client.app.state.cipher
        )
        for bad in ({"expires_in": 86_401}, {"expires_in": -1}, {"grace": 60}):
            r = client.post(path, json=bad, headers=key)
            assert r.status_code in (400, 422), r.text
        _enqueue(db)
        _deliver(session_factory(db))
        verify(old, receiver.received[-1].headers[SIGNATURE_HEADER], receiver.received[-1].body)

        r = client.post(path, json={"expires_in": 3600}, headers=key)
        assert r.status_code == 200, r.text
        new = r.json()["secret"]
        _enqueue(db)
        _deliver(session_factory(db))
        got = receiver.received[-1]
        verify(new, got.headers[SIGNATURE_HEADER], got.body)
        verify(old, got.headers[SIGNATURE_HEADER], got.body)  # receivers switch meanwhile

        newest = client.post(path, headers=key).json()["secret"]  # no body: at once
        _enqueue(db)
        _deliver(session_factory(db))
        got = receiver.received[-1]
        verify(newest, got.headers[SIGNATURE_HEADER], got.body)
        for retired in (old, new):
            with pytest.raises(WebhookSignatureError):
                verify(retired, got.headers[SIGNATURE_HEADER], got.body)

    def test_the_request_log_names_only_the_receivers_origin(self, db, receiver, caplog):
        """httpx logs each request's URL at INFO: a merchant's shared secret in the query (or a
        customer's link token in a path) must not reach the log."""
        import logging

        _endpoint(db, receiver.url + "/in?token=s3cret-shared-0042")
        _enqueue(db)
        with caplog.at_level(logging.INFO, logger="httpx"):
            (r,) = _deliver(session_factory(db))
        assert r.ok
        lines = [rec.getMessage() for rec in caplog.records if rec.name == "httpx"]
        origin = receiver.url.split("/hooks")[0]
        assert lines
        assert all(f"POST {origin} " in line for line in lines), lines
        assert "s3cret-shared-0042" not in caplog.text
        assert receiver.received[-1].path == "/hooks/in?token=s3cret-shared-0042"  # sent whole

    def test_signature_timestamp_is_fresh(self, db, receiver):
        _, _secret = _endpoint(db, receiver.url)
        _enqueue(db)
        _deliver(session_factory(db))
        header = receiver.received[-1].headers[SIGNATURE_HEADER]
        t = int(header.split(",")[0].removeprefix("t="))
        assert abs(t - time.time()) < 300


def _documented_verifier():
    """The verification recipe of docs/api.md, executed as published."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    block = next(
        b.split("\n", 1)[1] for b in text.split("```python")[1:] if "def verify_followpay" in b
    ).split("```", 1)[0]
    namespace: dict = {}
    exec(compile(block, "docs/api.md", "exec"), namespace)  # noqa: S102 - our own docs
    return namespace["verify_followpay"]


class TestDocumentedRecipe:
    def test_recipe_accepts_a_real_delivery_and_rejects_tampering(self, db, receiver):
        verify_followpay = _documented_verifier()
        _, secret = _endpoint(db, receiver.url)
        _enqueue(db)
        _deliver(session_factory(db))
        got = receiver.received[-1]
        verify_followpay(secret, got.headers[SIGNATURE_HEADER], got.body)
        with pytest.raises(ValueError, match="mismatch"):
            verify_followpay(secret, got.headers[SIGNATURE_HEADER], got.body + b" ")
        old = sign(secret, int(time.time()) - 301, got.body)
        with pytest.raises(ValueError, match="tolerance"):
            verify_followpay(secret, old, got.body)


class TestDeliveryLogAndDisable:
    def test_delivery_with_attempts_via_api(self, client, db, receiver, new_key):
        receiver.statuses = [502]
        _endpoint(db, receiver.url)
        d = _enqueue(db)
        factory = session_factory(db)
        now = utcnow()
        (r1,) = _deliver(factory, now=now)
        _deliver(factory, now=r1.next_attempt_at)
        body = client.get(f"/v1/webhook_deliveries/{d.id}", headers=auth(new_key())).json()
        assert body["status"] == "delivered"
        assert [(a["attempt"], a["status_code"]) for a in body["attempts"]] == [(1, 502), (2, 200)]
        other = client.get(
            f"/v1/webhook_deliveries/{d.id}", headers=auth(new_key(merchant_id="m_9"))
        )
        assert other.status_code == 404

    def test_disabled_endpoint_gets_nothing(self, client, db, receiver, new_key):
        endpoint, _ = _endpoint(db, receiver.url)
        d = _enqueue(db)
        r = client.delete(f"/v1/webhook_endpoints/{endpoint.id}", headers=auth(new_key()))
        assert r.status_code == 200
        assert r.json()["status"] == "disabled"
        (res,) = _deliver(session_factory(db))
        assert res.status is DeliveryStatus.FAILED
        assert "disabled" in (res.error or "")
        assert receiver.received == []
        with session_scope(session_factory(db)) as s:
            assert webhooks.enqueue(s, "m_1", "invoice.settled", {}) == []
        assert _delivery(db, d.id).status == DeliveryStatus.FAILED


class TestWorker:
    def test_worker_delivers_when_woken_and_stops(self, db, receiver):
        _endpoint(db, receiver.url)
        stop, wake = threading.Event(), threading.Event()
        worker = threading.Thread(
            target=delivery.run_delivery_worker,
            args=(session_factory(db), stop),
            kwargs={"wake": wake, "interval": 30.0, "targets": LOCAL},
            daemon=True,
        )
        worker.start()
        d = _enqueue(db)
        wake.set()  # what an AfterCommit callback does
        deadline = time.monotonic() + 20
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.02)
        stop.set()
        wake.set()
        worker.join(20)
        assert not worker.is_alive()
        assert [x.headers["FollowPay-Delivery-Id"] for x in receiver.received] == [d.id]


def _mark_failed(db, *delivery_ids: str) -> None:
    """Set-up shortcut: deliveries that used up their schedule (TestDelivery covers the path)."""
    with db.begin() as conn:
        conn.execute(
            sa.update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(delivery_ids))  # type: ignore[attr-defined]
            .values(status=DeliveryStatus.FAILED.value, next_attempt_at=None)
        )


def _redeliver_failed(client, key: str, endpoint_id: str, **body):
    return client.post(
        f"/v1/webhook_endpoints/{endpoint_id}/redeliver_failed", json=body, headers=auth(key)
    )


class TestRedeliverFailed:
    def test_after_an_outage_each_missed_event_is_delivered_once(
        self, client, db, receiver, new_key
    ):
        endpoint, secret = _endpoint(db, receiver.url)
        factory = session_factory(db)
        got_through = _enqueue(db)
        assert [r.ok for r in _deliver(factory)] == [True]
        receiver.default = 500  # the receiver goes down
        missed = [_enqueue(db, event="ticket.opened") for _ in range(3)]
        now = utcnow()
        for _ in range(len(webhooks.RETRY_SCHEDULE) + 1):
            results = _deliver(factory, now=now)
            now = max((r.next_attempt_at for r in results if r.next_attempt_at), default=now)
        assert {_delivery(db, d.id).status for d in missed} == {DeliveryStatus.FAILED}
        receiver.default = 200  # fixed
        key = new_key()
        r = _redeliver_failed(client, key, endpoint.id)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "webhook_endpoint_disabled")
        shown = client.get(f"/v1/webhook_endpoints/{endpoint.id}", headers=auth(key)).json()
        assert shown["disabled_reason"] == "failing"
        enabled = client.post(
            f"/v1/webhook_endpoints/{endpoint.id}", json={"disabled": False}, headers=auth(key)
        )
        assert enabled.json()["status"] == "enabled"
        r = _redeliver_failed(client, key, endpoint.id)
        assert r.status_code == 200, r.text
        page = r.json()
        assert (page["object"], page["has_more"]) == ("list", False)
        assert [x["redelivery_of"] for x in page["data"]] == [d.id for d in missed]
        assert {x["status"] for x in page["data"]} == {"pending"}
        assert _redeliver_failed(client, key, endpoint.id).json()["data"] == []  # queued once
        before = len(receiver.received)
        assert all(r.ok for r in _deliver(factory))
        sent = receiver.received[before:]
        assert sorted(x.headers["FollowPay-Event-Id"] for x in sent) == sorted(
            d.event_id for d in missed
        )
        for x in sent:
            verify(secret, x.headers[SIGNATURE_HEADER], x.body)
        assert got_through.event_id not in {x.headers["FollowPay-Event-Id"] for x in sent}
        assert _redeliver_failed(client, key, endpoint.id).json()["data"] == []

    def test_pages_oldest_first_and_skips_events_already_on_their_way(self, client, db, new_key):
        endpoint, _ = _endpoint(db, "http://127.0.0.1:9/h")
        events = [_enqueue(db) for _ in range(5)]
        _mark_failed(db, *(d.id for d in events))
        key = new_key()
        # event 0 was redelivered by hand and failed again: one copy, of its latest delivery
        retried = client.post(f"/v1/webhook_deliveries/{events[0].id}/redeliver", headers=auth(key))
        _mark_failed(db, retried.json()["id"])
        # event 1 already has a copy pending: nothing to add
        assert (
            client.post(
                f"/v1/webhook_deliveries/{events[1].id}/redeliver", headers=auth(key)
            ).status_code
            == 200
        )
        first = _redeliver_failed(client, key, endpoint.id, limit=2).json()
        assert first["has_more"] is True
        assert [x["redelivery_of"] for x in first["data"]] == [events[2].id, events[3].id]
        second = _redeliver_failed(client, key, endpoint.id, limit=2).json()
        assert second["has_more"] is False
        assert [x["redelivery_of"] for x in second["data"]] == [events[4].id, retried.json()["id"]]
        assert _redeliver_failed(client, key, endpoint.id).json()["data"] == []
        with session_scope(session_factory(db)) as s:
            pending = s.exec(
                sa.select(WebhookDelivery.event_id).where(
                    WebhookDelivery.status == DeliveryStatus.PENDING.value
                )
            ).all()
        assert sorted(e for (e,) in pending) == sorted(d.event_id for d in events)

    def test_created_gte_leaves_older_events_alone(self, client, db, new_key):
        endpoint, _ = _endpoint(db, "http://127.0.0.1:9/h")
        old, recent = _enqueue(db), _enqueue(db)
        _mark_failed(db, old.id, recent.id)
        cut = recent.created_at - timedelta(microseconds=1)
        with db.begin() as conn:  # the older event is a day older
            conn.execute(
                sa.update(WebhookDelivery)
                .where(WebhookDelivery.id == old.id)
                .values(created_at=recent.created_at - timedelta(days=1))
            )
        key = new_key()
        # the old event was redelivered by hand after the cut and failed again: it was still
        # first sent before the cut, so it stays out
        copy = client.post(f"/v1/webhook_deliveries/{old.id}/redeliver", headers=auth(key))
        _mark_failed(db, copy.json()["id"])
        r = _redeliver_failed(
            client, key, endpoint.id, created_gte=cut.isoformat().replace("+00:00", "Z")
        )
        assert [x["redelivery_of"] for x in r.json()["data"]] == [recent.id]

    @pytest.mark.parametrize(
        ("body", "param"),
        [
            ({"limit": 0}, "limit"),
            ({"limit": 501}, "limit"),
            ({"created_gte": "2026-12-01T00:00:00"}, "created_gte"),  # no time zone
            ({"created_gte": "0001-01-01T00:00:00Z"}, "created_gte"),
            ({"since": 1}, "since"),
        ],
    )
    def test_bad_input_queues_nothing(self, client, db, new_key, body, param):
        endpoint, _ = _endpoint(db, "http://127.0.0.1:9/h")
        d = _enqueue(db)
        _mark_failed(db, d.id)
        r = _redeliver_failed(client, new_key(), endpoint.id, **body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["param"] == param
        assert _delivery_count(db) == 1

    def test_disabled_and_foreign_endpoints_queue_nothing(self, client, db, new_key):
        mine, _ = _endpoint(db, "http://127.0.0.1:9/h")
        theirs, _ = _endpoint(db, "http://127.0.0.1:9/h", merchant="m_2")
        _mark_failed(db, _enqueue(db).id, _enqueue(db, merchant="m_2").id)
        key = new_key()
        r = _redeliver_failed(client, key, theirs.id)
        assert r.status_code == 404
        live = new_key(live=True)  # a live key does not manage test-mode endpoints
        assert _redeliver_failed(client, live, mine.id).status_code == 404
        assert client.delete(f"/v1/webhook_endpoints/{mine.id}", headers=auth(key)).status_code
        r = _redeliver_failed(client, key, mine.id)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "webhook_endpoint_disabled")
        assert _redeliver_failed(client, new_key("support"), mine.id).status_code == 403
        assert _delivery_count(db) == 2

    def test_calls_at_once_never_queue_an_event_twice(self, db):
        endpoint, _ = _endpoint(db, "http://127.0.0.1:9/h")
        events = [_enqueue(db) for _ in range(30)]
        _mark_failed(db, *(d.id for d in events))
        sessions = session_factory(db)
        start = threading.Barrier(4)
        queued: list[str] = []

        def call() -> None:
            start.wait(timeout=10)
            with session_scope(sessions) as s:
                copies, _ = webhooks.redeliver_failed(s, endpoint.id, merchant_id="m_1", limit=20)
                queued.extend(c.event_id for c in copies)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(queued) == sorted(d.event_id for d in events)
        assert _delivery_count(db) == 60


def _delivery_count(db) -> int:
    with db.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(WebhookDelivery)).scalar())
