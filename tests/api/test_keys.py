"""API keys: shown once, stored hashed, 401 on anything wrong, roles and merchant scoping."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.cache import ConfigCache
from api.db import session_factory, session_scope, utcnow
from api.errors import Unauthorized
from api.keys import service
from api.keys.models import ApiKeyRecord
from api.keys.roles import ApiRole
from tests.api.conftest import TEST_CONFIG, auth
from tests.api.test_resources_crm import new_contact, world

__all__ = ["world"]  # the fixture


class TestCreate:
    def test_secret_shown_once_and_stored_as_sha256(self, client, db, new_key):
        admin = new_key("admin", None, live=True)  # a key mints keys of its own mode only
        shop = client.post("/v1/merchants", json={"name": "Shop"}, headers=auth(admin)).json()
        r = client.post(
            "/v1/api_keys",
            json={"role": "merchant", "merchant_id": shop["id"], "livemode": True},
            headers=auth(admin),
        )
        assert r.status_code == 200, r.text
        body = r.json()
        secret = body["secret"]
        assert secret.startswith("fp_live_")
        assert len(secret) == len("fp_live_") + 43
        assert body["redacted_key"] == secret[:12] + "…"
        assert (body["role"], body["merchant_id"], body["livemode"]) == (
            "merchant",
            shop["id"],
            True,
        )

        with db.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM api_keys"))]
        row = next(r for r in rows if r["id"] == body["id"])
        assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
        flat = repr(rows)
        assert secret not in flat
        assert secret[12:] not in flat

        listed = client.get("/v1/api_keys", headers=auth(admin)).json()["data"]
        assert {k["id"] for k in listed} >= {body["id"]}
        assert secret not in repr(listed)
        assert all("secret" not in k for k in listed)
        # the new key works
        assert client.get("/v1/api_keys", headers=auth(secret)).status_code == 200

    def test_record_repr_hides_hash(self, db):
        with session_scope(session_factory(db)) as s:
            record, plaintext = service.create_key(s, "m_1", "merchant", False)
        assert record.key_hash not in repr(record)
        assert plaintext not in repr(record)

    def test_merchant_creates_for_itself_only(self, client, new_key):
        merchant = new_key("merchant", "m_1")
        own = client.post("/v1/api_keys", json={"role": "support"}, headers=auth(merchant))
        assert own.status_code == 200
        assert own.json()["merchant_id"] == "m_1"
        other = client.post(
            "/v1/api_keys", json={"role": "merchant", "merchant_id": "m_2"}, headers=auth(merchant)
        )
        assert other.status_code == 403
        assert other.json()["error"]["param"] == "merchant_id"
        admin = client.post("/v1/api_keys", json={"role": "admin"}, headers=auth(merchant))
        assert admin.status_code == 403
        assert admin.json()["error"]["type"] == "permission_error"

    def test_admin_must_name_the_merchant(self, client, new_key):
        r = client.post(
            "/v1/api_keys", json={"role": "merchant"}, headers=auth(new_key("admin", None))
        )
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "parameter_missing"

    def test_an_admin_binds_a_key_to_an_existing_merchant_by_its_id(self, world):
        """``"01"`` acted for merchant 1 (the CRM parses it) while key lists and revocation
        compare the text: merchant 1's own key could neither see nor revoke it. An id nobody
        has (numeric or not, spaces around it) would act for whoever gets that id later."""
        a = world.a.id
        attempts = [("0" + a, 400), ("999999", 404), ("acme", 404), (" " + a, 404)]
        attempts += [(a + " ", 404), (a + "\n", 404), (a, 200)]
        for merchant_id, status in attempts:
            r = world.client.post(
                "/v1/api_keys",
                json={"role": "merchant", "merchant_id": merchant_id},
                headers=auth(world.admin),
            )
            assert r.status_code == status, (merchant_id, r.text)
        assert r.json()["merchant_id"] == a
        listed = world.client.get("/v1/api_keys", headers=auth(world.a.merchant)).json()["data"]
        assert r.json()["id"] in {k["id"] for k in listed}

    def test_a_key_bound_to_a_non_canonical_id_acts_for_nobody(self, world, db, new_key):
        """Such a key minted before that was refused sees no merchant's data."""
        alias = new_key("merchant", world.a.id)
        with db.begin() as conn:
            conn.execute(
                sa.update(ApiKeyRecord)
                .where(ApiKeyRecord.key_hash == service.hash_key(alias))
                .values(merchant_id="0" + world.a.id)
            )
        contact = new_contact(world, world.a)
        seen = world.client.get(f"/v1/contacts/{contact['id']}", headers=auth(alias))
        assert seen.status_code == 404
        listed = world.client.get("/v1/contacts", headers=auth(alias))
        assert listed.json()["data"] == []

    def test_support_cannot_manage_keys(self, client, new_key):
        support = new_key("support", "m_1")
        assert client.post("/v1/api_keys", json={}, headers=auth(support)).status_code == 403
        assert client.get("/v1/api_keys", headers=auth(support)).status_code == 403


class TestAuthenticate:
    @pytest.mark.parametrize(
        "header",
        [
            None,
            "",
            "Bearer",
            "Basic Zm9vOmJhcg==",
            "Bearer fp_test_short",
            "Bearer fp_prod_" + "a" * 43,
            "Bearer fp_test_" + "a" * 43,  # well-formed but unknown
        ],
    )
    def test_401_on_anything_wrong(self, client, header):
        headers = {} if header is None else {"Authorization": header}
        r = client.get("/v1/api_keys", headers=headers)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
        if header:
            assert header.split(" ")[-1] not in r.json()["error"]["message"] or header == "Bearer"

    def test_revoked_key_is_401(self, client, new_key):
        admin = new_key("admin", None)
        victim = new_key("merchant", "m_1")
        # used first, so this process holds it in its key cache
        assert client.get("/v1/webhook_endpoints", headers=auth(victim)).status_code == 200
        key_id = client.get("/v1/api_keys?merchant_id=m_1", headers=auth(admin)).json()["data"][0][
            "id"
        ]
        r = client.delete(f"/v1/api_keys/{key_id}", headers=auth(admin))
        assert r.status_code == 200
        assert r.json()["revoked"] is True
        r = client.get("/v1/webhook_endpoints", headers=auth(victim))
        assert r.status_code == 401
        assert "revoked" in r.json()["error"]["message"]

    def test_service_accepts_bare_key_and_bearer(self, db, new_key):
        key = new_key()
        with session_scope(session_factory(db)) as s:
            assert service.authenticate(s, key).id == service.authenticate(s, f"Bearer {key}").id
            with pytest.raises(Unauthorized):
                service.authenticate(s, key[:-1] + ("A" if key[-1] != "A" else "B"))

    def test_last_used_is_recorded(self, client, db, new_key):
        key = new_key()
        client.get("/v1/webhook_endpoints", headers=auth(key))
        with session_scope(session_factory(db)) as s:
            record = s.exec(sa.select(ApiKeyRecord)).scalars().one()  # type: ignore[call-overload]
        assert record.last_used_at is not None


class TestRevokeScope:
    def test_merchant_revokes_own_keys_only(self, client, new_key):
        m1 = new_key("merchant", "m_1")
        m2 = new_key("merchant", "m_2")
        m2_key_id = client.get("/v1/api_keys", headers=auth(m2)).json()["data"][0]["id"]
        r = client.delete(f"/v1/api_keys/{m2_key_id}", headers=auth(m1))
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "resource_missing"
        listed = client.get("/v1/api_keys", headers=auth(m1)).json()["data"]
        assert [k["merchant_id"] for k in listed] == ["m_1"]
        # the filter never widens a merchant's scope
        r = client.get("/v1/api_keys?merchant_id=m_2", headers=auth(m1))
        assert r.status_code == 200
        assert r.json()["data"] == []
        own_id = listed[0]["id"]
        assert client.delete(f"/v1/api_keys/{own_id}", headers=auth(m1)).status_code == 200
        assert client.get("/v1/api_keys", headers=auth(m1)).status_code == 401


def _revoke_in_database(db, key: str) -> None:
    """What another API process's revocation leaves: the row revoked, this process unaware."""
    with db.begin() as conn:
        conn.execute(
            sa.update(ApiKeyRecord)
            .where(ApiKeyRecord.key_hash == service.hash_key(key))
            .values(revoked_at=utcnow())
        )


class TestConfigCache:
    def test_entries_expire_after_the_ttl(self):
        cache = ConfigCache(1.0)
        key = service.AuthenticatedKey(
            id="key_1", merchant_id="m", role=ApiRole.MERCHANT, livemode=False
        )
        cache.put("d", key, now=100.0)
        assert cache.get("d", now=100.9) is key
        assert cache.get("d", now=101.0) is None
        assert len(cache) == 0

    def test_zero_ttl_caches_nothing_and_the_size_is_bounded(self):
        key = service.AuthenticatedKey(
            id="key_1", merchant_id="m", role=ApiRole.MERCHANT, livemode=False
        )
        off = ConfigCache(0)
        off.put("d", key)
        assert off.get("d") is None
        small = ConfigCache(60, max_entries=2)
        for digest in ("a", "b", "c"):
            small.put(digest, key)
        assert (small.get("a"), len(small)) == (None, 2)
        with pytest.raises(ValueError, match="ttl"):
            ConfigCache(-1)

    def test_a_load_that_read_before_a_change_does_not_cache_it(self):
        """A request read a key just before its revoke committed; the revoke cleared the
        cache, then the request stored what it had read: the revoked key was accepted for
        another ttl in the process that revoked it."""
        cache = ConfigCache(60)

        def read_then_revoked_elsewhere() -> str:
            value = "active key"  # what the database said
            cache.clear()  # the revoke commits (and clears) before this load stores it
            return value

        assert cache.load("digest", read_then_revoked_elsewhere) == "active key"  # this request
        assert cache.get("digest") is None  # not the next one
        assert cache.load("digest", lambda: "revoked") == "revoked"
        assert cache.get("digest") == "revoked"

    def test_a_failing_load_leaves_nothing_behind(self):
        """Every request with an unknown key fails its load: none may leave a gate behind (a
        stream of random keys grew the cache's memory without bound)."""
        cache = ConfigCache(60)

        def unknown() -> str:
            raise LookupError("no such key")

        for n in range(50):
            with pytest.raises(LookupError):
                cache.load(f"digest-{n}", unknown)
        assert (len(cache), len(cache._loading)) == (0, 0)
        assert cache.load("digest-0", lambda: "value") == "value"  # a later load still works

    def test_concurrent_misses_load_once(self):
        cache = ConfigCache(60)
        calls: list[int] = []
        barrier = threading.Barrier(8)

        def loader() -> str:
            calls.append(1)
            time.sleep(0.05)
            return "value"

        def miss(_: int) -> str:
            barrier.wait()
            return cache.load(("key", "d"), loader)

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(miss, range(8))) == ["value"] * 8
        assert len(calls) == 1

    def test_another_process_revocation_takes_effect_within_the_ttl(self, make_app, db, new_key):
        config = dataclasses.replace(TEST_CONFIG, cache_seconds=0.3)
        key = new_key()
        with TestClient(make_app(config)) as c:
            assert c.get("/v1/webhook_endpoints", headers=auth(key)).status_code == 200
            _revoke_in_database(db, key)
            deadline = time.monotonic() + 10
            while c.get("/v1/webhook_endpoints", headers=auth(key)).status_code == 200:
                assert time.monotonic() < deadline, "a revoked key stayed accepted"
                time.sleep(0.05)
            r = c.get("/v1/webhook_endpoints", headers=auth(key))
        assert r.status_code == 401
        assert "revoked" in r.json()["error"]["message"]

    def test_without_the_cache_revocation_is_immediate(self, make_app, db, new_key):
        config = dataclasses.replace(TEST_CONFIG, cache_seconds=0)
        key = new_key()
        with TestClient(make_app(config)) as c:
            assert c.get("/v1/webhook_endpoints", headers=auth(key)).status_code == 200
            _revoke_in_database(db, key)
            assert c.get("/v1/webhook_endpoints", headers=auth(key)).status_code == 401


class TestKeyModes:
    @pytest.mark.parametrize("role", ["admin", "merchant"])
    def test_a_test_key_cannot_mint_a_live_key(self, client, new_key, role):
        creator = new_key(role, None if role == "admin" else "m_1", live=False)
        body = {"role": "merchant", "livemode": True}
        if role == "admin":
            body["merchant_id"] = "m_1"
        r = client.post("/v1/api_keys", json=body, headers=auth(creator))
        assert r.status_code == 403, r.text
        assert r.json()["error"]["param"] == "livemode"

    def test_a_live_key_cannot_mint_a_test_key(self, client, new_key):
        live = new_key("merchant", "m_1", live=True)
        r = client.post(
            "/v1/api_keys", json={"role": "support", "livemode": False}, headers=auth(live)
        )
        assert r.status_code == 403

    def test_the_mode_defaults_to_the_callers(self, client, new_key):
        live = new_key("merchant", "m_1", live=True)
        r = client.post("/v1/api_keys", json={"role": "support"}, headers=auth(live))
        assert r.status_code == 200, r.text
        assert r.json()["livemode"] is True
        assert r.json()["secret"].startswith("fp_live_")

    @pytest.mark.parametrize("role", ["admin", "merchant"])
    def test_a_key_sees_and_revokes_keys_of_its_own_mode_only(self, client, db, new_key, role):
        """A test key listed its merchant's live keys and could revoke them."""
        scope = None if role == "admin" else "m_1"
        test_key = new_key(role, scope, live=False)
        live_key = new_key("merchant", "m_1", live=True)
        with session_scope(session_factory(db)) as session:
            live_id = service.authenticate(session, live_key).id
        listed = client.get("/v1/api_keys", params={"limit": 100}, headers=auth(test_key))
        assert listed.status_code == 200, listed.text
        assert {k["livemode"] for k in listed.json()["data"]} == {False}
        assert live_id not in {k["id"] for k in listed.json()["data"]}
        r = client.delete(f"/v1/api_keys/{live_id}", headers=auth(test_key))
        assert r.status_code == 404, r.text
        assert client.get("/v1/webhook_endpoints", headers=auth(live_key)).status_code == 200
