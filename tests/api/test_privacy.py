"""What erasure reaches on the API side (SQLite and PostgreSQL): stored idempotent responses."""

from __future__ import annotations

import uuid

import httpx
import sqlalchemy as sa
from sqlmodel import Session

from api.idempotency import ERASED_RESPONSE
from crm.privacy import service as crm_privacy
from tests.api.conftest import auth
from tests.api.test_resources_crm import World, new_contact
from tests.api.test_resources_invoices import deployment, world

__all__ = ["deployment", "world"]  # the fixtures

PHONE = "+14155550123"


def _post(w: World, path: str, body: dict, key: str, idem: str) -> httpx.Response:
    return w.client.post(path, json=body, headers=auth(key, **{"Idempotency-Key": idem}))


def _stored_for(w: World, contact_id: int) -> list[tuple[int, bytes]]:
    with w.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT response_status, response_body FROM api_idempotency_keys"
                " WHERE contact_id = :c"
            ),
            {"c": contact_id},
        )
        return [(int(status), bytes(body)) for status, body in rows]


class TestReplayAfterErasure:
    def test_no_replay_returns_an_erased_contacts_data(self, world: World) -> None:
        key, cid_path = world.a.merchant, "/v1/contacts"
        email = f"ada+{uuid.uuid4().hex[:8]}@example.com"
        person = {"name": "Ada Lovelace", "email": email, "phone": PHONE, "time_zone": "UTC"}
        created = _post(world, cid_path, person, key, "create")
        assert created.status_code == 200, created.text
        cid = created.json()["id"]
        wallet = {"address": "0x" + "ab" * 20}
        consent = {"action": "grant", "purpose": "marketing", "channel": "email"}
        requests = [
            (cid_path, person, "create"),
            (f"{cid_path}/{cid}", {"tier": "vip"}, "update"),
            (f"{cid_path}/{cid}/wallet_addresses", wallet, "wallet"),
            (f"{cid_path}/{cid}/consents", consent, "consent"),
        ]
        for path, body, idem in requests[1:]:
            assert _post(world, path, body, key, idem).status_code == 200
        other = new_contact(world, world.a, name="Grace Hopper")
        kept = _post(world, f"{cid_path}/{other['id']}", {"tier": "gold"}, key, "other")
        erased = _post(world, f"{cid_path}/{cid}/erase", {}, key, "erase")
        assert erased.status_code == 200, erased.text
        listed = {"limit": 100}
        before = len(world.client.get(cid_path, params=listed, headers=auth(key)).json()["data"])

        for path, body, idem in requests:
            r = _post(world, path, body, key, idem)
            assert (r.status_code, r.headers["idempotent-replayed"]) == (409, "true"), idem
            assert r.json()["error"]["code"] == "contact_erased"
            for personal in ("Ada", email, PHONE, "abab"):
                assert personal not in r.text
        # the create was not run again, another contact's answer and the erasure's replay
        after = len(world.client.get(cid_path, params=listed, headers=auth(key)).json()["data"])
        assert after == before
        assert _post(
            world, f"{cid_path}/{other['id']}", {"tier": "gold"}, key, "other"
        ).content == (kept.content)
        again = _post(world, f"{cid_path}/{cid}/erase", {}, key, "erase")
        assert (again.status_code, again.content) == (200, erased.content)
        # at rest: the sealed responses are gone, not merely hidden
        status, _, body = ERASED_RESPONSE
        assert _stored_for(world, cid) == [(status, body)] * len(requests)

    def test_a_response_the_erasure_did_not_see_is_not_replayed(self, world: World) -> None:
        """A request that raced the erasure, or an erasure run through the CRM alone."""
        c = new_contact(world, world.a, phone=PHONE)
        first = _post(world, f"/v1/contacts/{c['id']}", {"tier": "vip"}, world.a.merchant, "k")
        assert first.json()["phone"] == PHONE
        with Session(world.engine) as s, s.begin():
            crm_privacy.erase_contact(s, int(world.a.id), c["id"], actor="t", clock=world.clock)
        r = _post(world, f"/v1/contacts/{c['id']}", {"tier": "vip"}, world.a.merchant, "k")
        assert (r.status_code, r.json()["error"]["code"]) == (409, "contact_erased")
        assert PHONE not in r.text
