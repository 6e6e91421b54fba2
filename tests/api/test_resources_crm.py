"""/v1/merchants, /v1/contacts (+ consents, export, erase), /v1/audit_log, follow-ups, feedback,
tickets, metrics: behaviour, tenant isolation and the role matrix, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from api.db import session_factory, session_scope
from crm import (
    FollowUpPolicyCreate,
    FrozenClock,
    KeyRing,
    followups,
)
from crm.followups import dispatch as followups_dispatch
from crm.followups import policies as followups_policies
from crm.followups import repository as followups_repo
from tests.api.conftest import auth


def _noon() -> datetime:
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    return today


@dataclass
class Tenant:
    id: str
    merchant: str  # merchant key
    support: str  # support key


@dataclass
class World:
    client: TestClient
    engine: sa.Engine
    clock: FrozenClock
    keyring: KeyRing
    admin: str
    a: Tenant
    b: Tenant

    def tenant(self, name: str) -> Tenant:
        r = self.client.post("/v1/merchants", json={"name": name}, headers=auth(self.admin))
        assert r.status_code == 200, r.text
        return Tenant(id=r.json()["id"], merchant="", support="")


def make_world(make_app, new_key, db, **app_kwargs) -> Iterator[World]:
    clock = FrozenClock(_noon())
    keyring = KeyRing(os.urandom(32))
    app = make_app(clock=clock, keyring=keyring, **app_kwargs)
    admin = new_key("admin", None)
    with TestClient(app) as client:
        tenants = []
        for name in ("Acme", "Globex"):
            r = client.post("/v1/merchants", json={"name": name}, headers=auth(admin))
            assert r.status_code == 200, r.text
            mid = r.json()["id"]
            tenants.append(Tenant(mid, new_key("merchant", mid), new_key("support", mid)))
        yield World(client, db, clock, keyring, admin, tenants[0], tenants[1])


@pytest.fixture
def world(make_app, new_key, db) -> Iterator[World]:
    yield from make_world(make_app, new_key, db)


def new_contact(w: World, t: Tenant, **extra: object) -> dict:
    body = {
        "name": "Ada Lovelace",
        "email": f"ada+{uuid.uuid4().hex[:8]}@example.com",
        "time_zone": "UTC",
        **extra,
    }
    r = w.client.post("/v1/contacts", json=body, headers=auth(t.merchant))
    assert r.status_code == 200, r.text
    return r.json()


def grant(w: World, t: Tenant, contact_id: int, purpose: str = "service_followup") -> dict:
    r = w.client.post(
        f"/v1/contacts/{contact_id}/consents",
        json={"action": "grant", "purpose": purpose, "channel": "email"},
        headers=auth(t.merchant),
    )
    assert r.status_code == 200, r.text
    return r.json()


def issue_token(
    w: World, t: Tenant, contact_id: int, *, ttl: timedelta = timedelta(days=14)
) -> tuple[str, int]:
    """What the dispatcher does: settle a purchase, claim its follow-up, issue the link token."""
    now = w.clock.now()
    merchant_id = int(t.id)
    with session_scope(session_factory(w.engine)) as s:
        if followups_repo.get_policy(s, merchant_id, "payment_settled") is None:
            followups_policies.create_policy(
                s,
                merchant_id,
                FollowUpPolicyCreate(delay_minutes=0, frequency_cap_days=0, reward_points=10),
                actor="test",
                clock=w.clock,
            )
        ref = uuid.uuid4().hex[:12]
        (fu,) = followups.schedule_for_payment(
            s, merchant_id, contact_id, f"pay_{ref}", f"inv_{ref}", 100, "USDC", now, w.clock
        )
        assert fu.state == "scheduled", fu.reason
        fu.state = "queued"
        s.add(fu)
        s.flush()
        instruction = followups_dispatch.prepare_send(s, fu.id, now, w.keyring, token_ttl=ttl)
        assert instruction is not None
        followups_dispatch.mark_sent(s, fu.id, now)
        return instruction.token, fu.id or 0


def negative_ticket(w: World, t: Tenant) -> tuple[dict, int]:
    contact = new_contact(w, t)
    grant(w, t, contact["id"])
    token, _ = issue_token(w, t, contact["id"])
    r = w.client.post(f"/v1/public/feedback/{token}/rate", data={"rating": 1})
    assert r.status_code == 200, r.text
    tickets = w.client.get("/v1/tickets", headers=auth(t.support)).json()["data"]
    ticket = next(x for x in tickets if x["contact_id"] == contact["id"])
    return contact, ticket["id"]


class TestMerchants:
    def test_admin_creates_lists_and_gets(self, world: World) -> None:
        r = world.client.get("/v1/merchants", params={"limit": 100}, headers=auth(world.admin))
        ids = {m["id"] for m in r.json()["data"]}
        assert {world.a.id, world.b.id} <= ids
        r = world.client.get(f"/v1/merchants/{world.a.id}", headers=auth(world.admin))
        assert r.json()["name"] == "Acme"

    def test_merchant_sees_only_itself(self, world: World) -> None:
        r = world.client.get("/v1/merchants", headers=auth(world.a.merchant))
        assert [m["id"] for m in r.json()["data"]] == [world.a.id]
        r = world.client.get(f"/v1/merchants/{world.b.id}", headers=auth(world.a.merchant))
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "resource_missing"

    def test_only_admin_creates(self, world: World) -> None:
        for key in (world.a.merchant, world.a.support):
            r = world.client.post("/v1/merchants", json={"name": "X"}, headers=auth(key))
            assert r.status_code == 403

    def test_a_name_with_control_characters_is_refused(self, world: World) -> None:
        """The name becomes the follow-up e-mails' From name and subject: a line break there
        made the message unbuildable (and the worker die)."""
        for name in ("Tea\nHouse", "Tea\r\nBcc: x@evil.example", "Tea\tHouse", "Tea\u2028House"):
            r = world.client.post("/v1/merchants", json={"name": name}, headers=auth(world.admin))
            assert r.status_code == 422, (name, r.text)
            error = r.json()["error"]
            assert (error["code"], error["param"]) == ("parameter_invalid", "name")
            assert error["message"] == (
                "Invalid name: must not contain control characters such as line breaks."
            )
        r = world.client.post(
            "/v1/merchants", json={"name": "Tea & Café"}, headers=auth(world.admin)
        )
        assert r.status_code == 200, r.text


class TestContacts:
    def test_create_get_update_and_wallets(self, world: World) -> None:
        c = new_contact(world, world.a, wallet_addresses=["0x" + "ab" * 20])
        assert c["merchant_id"] == world.a.id
        assert c["wallet_addresses"] == ["0x" + "ab" * 20]
        r = world.client.post(
            f"/v1/contacts/{c['id']}", json={"tier": "vip"}, headers=auth(world.a.merchant)
        )
        assert r.status_code == 200
        assert r.json()["tier"] == "vip"
        r = world.client.post(
            f"/v1/contacts/{c['id']}/wallet_addresses",
            json={"address": "0x" + "cd" * 20},
            headers=auth(world.a.merchant),
        )
        assert len(r.json()["wallet_addresses"]) == 2
        r = world.client.get(f"/v1/contacts/{c['id']}", headers=auth(world.a.support))
        assert r.json()["email"] == c["email"]
        # every staff change to the contact is in its audit log (the wallet's was not)
        log = world.client.get(
            "/v1/audit_log",
            params={"object_type": "contact", "object_id": str(c["id"]), "limit": 100},
            headers=auth(world.a.merchant),
        ).json()["data"]
        actions = sorted(e["action"] for e in log)
        assert actions == ["contact.created", "contact.updated", "contact.wallet_added"]
        assert all("cd" * 20 not in str(e["detail"]) for e in log)

    def test_bad_input_has_the_error_shape_and_writes_nothing(self, world: World) -> None:
        before = world.client.get(
            "/v1/contacts", params={"limit": 100}, headers=auth(world.a.merchant)
        ).json()["data"]
        r = world.client.post(
            "/v1/contacts",
            json={"email": "not-an-email", "time_zone": "UTC"},
            headers=auth(world.a.merchant),
        )
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_email"
        assert r.json()["error"]["param"] == "email"
        r = world.client.post(
            "/v1/contacts", json={"time_zone": "Mars/Base"}, headers=auth(world.a.merchant)
        )
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "time_zone"
        r = world.client.post("/v1/contacts", json={"surname": "x"}, headers=auth(world.a.merchant))
        assert r.status_code == 422
        assert set(r.json()["error"]) == {
            "type",
            "code",
            "message",
            "param",
        }
        after = world.client.get(
            "/v1/contacts", params={"limit": 100}, headers=auth(world.a.merchant)
        ).json()["data"]
        assert after == before

    @pytest.mark.parametrize("what", ["email", "wallet"])
    def test_a_duplicate_that_got_past_the_check_is_a_conflict_too(
        self, world: World, monkeypatch: pytest.MonkeyPatch, what: str
    ) -> None:
        """Two creates at once both pass the lookup (the API's SQLite engine reads before it
        locks); the unique index stops the second, which answered a 500."""
        from crm.contacts import repository as contacts_repo

        wallet = "0x000000000000000000000000000000000000dEaD"
        first = new_contact(world, world.a, wallet_addresses=[wallet])
        monkeypatch.setattr(contacts_repo, "email_index_taken", lambda *a, **k: False)
        monkeypatch.setattr(contacts_repo, "wallet_index_taken", lambda *a, **k: False)
        body = (
            {"email": first["email"]}
            if what == "email"
            else {"email": "other@example.com", "wallet_addresses": [wallet]}
        )
        r = world.client.post("/v1/contacts", json=body, headers=auth(world.a.merchant))
        assert r.status_code == 409, r.text
        code = {"email": "contact_email_taken", "wallet": "wallet_address_taken"}[what]
        assert r.json()["error"]["code"] == code

    def test_duplicate_email_is_a_conflict(self, world: World) -> None:
        c = new_contact(world, world.a)
        r = world.client.post(
            "/v1/contacts", json={"email": c["email"]}, headers=auth(world.a.merchant)
        )
        assert r.status_code == 409
        # ...but the same e-mail at another merchant is another person record
        r = world.client.post(
            "/v1/contacts", json={"email": c["email"]}, headers=auth(world.b.merchant)
        )
        assert r.status_code == 200


class TestConsents:
    def test_grant_withdraw_object_and_verified_history(self, world: World) -> None:
        c = new_contact(world, world.a)
        grant(world, world.a, c["id"])
        grant(world, world.a, c["id"], "marketing")
        h = auth(world.a.merchant)
        r = world.client.post(
            f"/v1/contacts/{c['id']}/consents",
            json={"action": "object", "purpose": "marketing"},
            headers=h,
        )
        assert r.status_code == 200
        assert r.json()["legal_basis"] == "legitimate_interest"
        r = world.client.post(
            f"/v1/contacts/{c['id']}/consents",
            json={"action": "withdraw", "purpose": "service_followup", "channel": "email"},
            headers=auth(world.a.support),
        )
        assert r.status_code == 200
        history = world.client.get(f"/v1/contacts/{c['id']}/consents", headers=h).json()
        assert [e["seq"] for e in history["events"]] == [1, 2, 3, 4]
        assert history["events"][0]["prev_hash"] == "0" * 64
        assert history["events"][1]["prev_hash"] == history["events"][0]["hash"]
        assert history["verification"] == {
            "ok": True,
            "length": 4,
            "head_hash": history["events"][-1]["hash"],
            "broken_at_seq": None,
            "seal": "valid",  # appended with the server's key ring
            "problems": [],
        }
        state = {(s["purpose"], s["channel"]): s["state"] for s in history["state"]}
        assert state[("marketing", "sms")] == "objected"
        assert state[("service_followup", "email")] == "withdrawn"

    def test_tampering_is_detected(self, world: World) -> None:
        c = new_contact(world, world.a)
        grant(world, world.a, c["id"])
        grant(world, world.a, c["id"], "marketing")
        with world.engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE crm_consent_event SET purpose = 'research' "
                    "WHERE contact_id = :c AND seq = 1"
                ),
                {"c": c["id"]},
            )
        v = world.client.get(
            f"/v1/contacts/{c['id']}/consents", headers=auth(world.a.merchant)
        ).json()["verification"]
        assert v["ok"] is False
        assert v["broken_at_seq"] == 1

    def test_a_removed_withdrawal_is_detected(self, world: World) -> None:
        """Deleting the last entries (a withdrawal) and putting the state and the head row back
        leaves every remaining hash intact: only the head's MAC under the server's key (the API
        passes its key ring) shows it."""
        c = new_contact(world, world.a)
        grant(world, world.a, c["id"])
        r = world.client.post(
            f"/v1/public/consent/{issue_token(world, world.a, c['id'])[0]}/withdraw",
            headers={"Accept": "application/json"},
        )
        assert r.status_code == 200, r.text
        with world.engine.begin() as conn:
            last = conn.execute(
                sa.text("SELECT max(seq) FROM crm_consent_event WHERE contact_id = :c"),
                {"c": c["id"]},
            ).scalar_one()
            for statement in (  # the state as the grant left it, then the ledger cut back
                "DELETE FROM crm_consent_state WHERE contact_id = :c AND NOT "
                "(purpose = 'service_followup' AND channel = 'email')",
                "UPDATE crm_consent_state SET state = 'granted', event_id = (SELECT id FROM "
                "crm_consent_event WHERE contact_id = :c AND seq = 1) WHERE contact_id = :c",
                "DELETE FROM crm_consent_event WHERE contact_id = :c AND seq >= 2",
                "UPDATE crm_consent_head SET seq = 1, head_hash = (SELECT hash FROM "
                "crm_consent_event WHERE contact_id = :c AND seq = 1) WHERE contact_id = :c",
            ):
                conn.execute(sa.text(statement), {"c": c["id"]})
        v = world.client.get(
            f"/v1/contacts/{c['id']}/consents", headers=auth(world.a.merchant)
        ).json()["verification"]
        assert last >= 2
        assert (v["ok"], v["broken_at_seq"], v["seal"]) == (False, None, "invalid")
        assert v["problems"]

    def test_grant_needs_a_channel_and_support_cannot_grant(self, world: World) -> None:
        c = new_contact(world, world.a)
        r = world.client.post(
            f"/v1/contacts/{c['id']}/consents",
            json={"action": "grant", "purpose": "marketing"},
            headers=auth(world.a.merchant),
        )
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "channel"
        r = world.client.post(
            f"/v1/contacts/{c['id']}/consents",
            json={"action": "grant", "purpose": "marketing", "channel": "email"},
            headers=auth(world.a.support),
        )
        assert r.status_code == 403
        history = world.client.get(
            f"/v1/contacts/{c['id']}/consents", headers=auth(world.a.merchant)
        ).json()
        assert history["events"] == []


class TestPrivacy:
    def test_export_then_erase(self, world: World) -> None:
        c = new_contact(world, world.a)
        grant(world, world.a, c["id"])
        h = auth(world.a.merchant)
        export = world.client.get(f"/v1/contacts/{c['id']}/export", headers=h).json()
        assert export["data"]["contact"]["email"] == c["email"]
        assert len(export["data"]["consent_events"]) == 1
        r = world.client.post(
            f"/v1/contacts/{c['id']}/erase", json={"request_ref": "dsr-1"}, headers=h
        )
        assert r.status_code == 200
        assert r.json()["summary"]["data_key_destroyed"] is True
        again = world.client.post(f"/v1/contacts/{c['id']}/erase", headers=h).json()
        assert again["id"] == r.json()["id"]  # idempotent
        got = world.client.get(f"/v1/contacts/{c['id']}", headers=h).json()
        assert got["erased"] is True
        assert got["email"] is None
        assert got["name"] is None
        assert got["wallet_addresses"] == []
        actions = [
            a["action"]
            for a in world.client.get(
                "/v1/audit_log",
                params={"object_type": "contact", "object_id": str(c["id"])},
                headers=h,
            ).json()["data"]
        ]
        assert "contact.erased" in actions
        assert "contact.exported" in actions
        assert "contact.created" in actions
        assert c["email"] not in str(
            world.client.get("/v1/audit_log", params={"limit": 100}, headers=h).json()
        )

    def test_support_cannot_export_or_erase(self, world: World) -> None:
        c = new_contact(world, world.a)
        h = auth(world.a.support)
        assert world.client.get(f"/v1/contacts/{c['id']}/export", headers=h).status_code == 403
        assert world.client.post(f"/v1/contacts/{c['id']}/erase", headers=h).status_code == 403
        assert world.client.get("/v1/audit_log", headers=h).status_code == 403


class TestSupportQueue:
    def test_erasure_closes_the_contacts_open_tickets(self, world: World) -> None:
        """An erased contact's ticket stayed in the queue, ran out its SLA clock and was
        counted a miss, with nobody left to answer."""
        from api.db import session_factory, session_scope
        from crm.tickets import service as tickets

        contact, ticket_id = negative_ticket(world, world.a)
        _, other = negative_ticket(world, world.a)
        erased = world.client.post(
            f"/v1/contacts/{contact['id']}/erase", headers=auth(world.a.merchant)
        )
        assert erased.status_code == 200, erased.text
        h = auth(world.a.support)
        queue = world.client.get("/v1/tickets", headers=h).json()["data"]
        assert [t["id"] for t in queue] == [other]
        world.clock.advance(hours=25)
        # the worker's SLA sweep (a whole worker round would also take other tests' due
        # follow-ups in this shared database, sealed under their own key rings)
        with session_scope(session_factory(world.engine)) as session:
            tickets.sweep_breaches(session, world.clock.now())
        closed = world.client.get(f"/v1/tickets/{ticket_id}", headers=h).json()
        assert (closed["state"], closed["sla_breached"]) == ("resolved", False)
        assert world.client.get(f"/v1/tickets/{other}", headers=h).json()["sla_breached"] is True

    def test_each_breach_is_announced_once_as_ticket_breached(self, world: World) -> None:
        """``ticket.breached`` was listed as an event and accepted by the outbox, yet nothing
        queued it: neither the worker's SLA sweep nor a late first response."""
        from api.dispatch.worker import Worker

        hook = world.client.post(
            "/v1/webhook_endpoints",
            json={"url": "http://127.0.0.1:9/hooks", "enabled_events": ["ticket.breached"]},
            headers=auth(world.a.merchant),
        )
        assert hook.status_code == 200, hook.text
        _, late = negative_ticket(world, world.a)
        _, swept = negative_ticket(world, world.a)
        world.clock.advance(hours=25)
        h = auth(world.a.support)
        assert world.client.post(f"/v1/tickets/{late}/respond", headers=h).status_code == 200
        worker = Worker(world.engine, world.keyring, {}, world.clock)
        for _ in range(2):
            worker.run_once()
        with world.engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT payload FROM api_webhook_deliveries"
                    " WHERE event_type = 'ticket.breached'"
                )
            ).all()
        breached = sorted(_ticket_id(payload) for (payload,) in rows)
        assert breached == sorted([late, swept])

    def test_queue_is_sorted_by_sla_and_worked_by_support(self, world: World) -> None:
        _, first = negative_ticket(world, world.a)
        world.clock.advance(minutes=5)
        _, second = negative_ticket(world, world.a)
        h = auth(world.a.support)
        queue = world.client.get("/v1/tickets", headers=h).json()["data"]
        ids = [t["id"] for t in queue]
        assert ids.index(first) < ids.index(second)
        dues = [t["due_at"] for t in queue]
        assert dues == sorted(dues)
        page = world.client.get(
            "/v1/tickets", params={"starting_after": first, "limit": 100}, headers=h
        ).json()["data"]
        assert first not in [t["id"] for t in page]
        assert second in [t["id"] for t in page]

        r = world.client.post(
            f"/v1/tickets/{first}/resolve", json={}, headers=h
        )  # no first response yet
        assert r.status_code == 409
        r = world.client.post(
            f"/v1/tickets/{first}/assign", json={"assignee": "agent-7"}, headers=h
        )
        assert r.json()["state"] == "assigned"
        world.clock.advance(hours=25)
        r = world.client.post(f"/v1/tickets/{first}/respond", headers=h)
        assert r.json()["state"] == "responded"
        assert r.json()["sla_breached"] is True
        r = world.client.post(
            f"/v1/tickets/{first}/resolve",
            json={"root_cause_tags": ["late_delivery"]},
            headers=h,
        )
        assert r.json()["state"] == "resolved"
        assert r.json()["root_cause_tags"] == ["late_delivery"]
        resolved = world.client.get("/v1/tickets", params={"state": "resolved"}, headers=h).json()
        assert [t["id"] for t in resolved["data"]] == [first]

        metrics = world.client.get(
            "/v1/metrics",
            params={
                "start": (world.clock.now() - timedelta(days=2)).isoformat(),
                "end": (world.clock.now() + timedelta(days=1)).isoformat(),
            },
            headers=h,
        ).json()
        assert metrics["rating_responses"] == 2
        assert metrics["csat"] == 0.0
        assert metrics["sla_hit_rate"] == 0.0
        assert {"tag": "late_delivery", "count": 1} in metrics["top_root_causes"]

    def test_followups_filter_by_suppression_reason(self, world: World) -> None:
        c = new_contact(world, world.a)  # no consent
        with session_scope(session_factory(world.engine)) as s:
            followups_policies.create_policy(
                s,
                int(world.a.id),
                FollowUpPolicyCreate(delay_minutes=0),
                actor="test",
                clock=world.clock,
            )
            followups.schedule_for_payment(
                s,
                int(world.a.id),
                c["id"],
                "pay_nc",
                "inv_nc",
                1,
                "USDC",
                world.clock.now(),
                world.clock,
            )
        h = auth(world.a.support)
        r = world.client.get(
            "/v1/followups", params={"state": "suppressed", "reason": "no_consent"}, headers=h
        ).json()
        assert [f["contact_id"] for f in r["data"]] == [c["id"]]
        assert r["data"][0]["suppression_reason"] == "no_consent"
        fid = r["data"][0]["id"]
        one = world.client.get(f"/v1/followups/{fid}", headers=h).json()
        assert [(e["from_state"], e["to_state"], e["reason"]) for e in one["events"]] == [
            (None, "suppressed", "no_consent")
        ]
        assert (
            world.client.get(f"/v1/followups/{fid}", headers=auth(world.b.support)).status_code
            == 404
        )
        r = world.client.get("/v1/followups", params={"reason": "quiet_hours"}, headers=h).json()
        assert r["data"] == []
        end = (world.clock.now() + timedelta(hours=1)).isoformat()
        m = world.client.get("/v1/metrics", params={"end": end}, headers=h).json()
        assert m["suppressions"].get("no_consent") == 1


class TestTenantIsolation:
    """Merchant B's keys (and support keys) see nothing of merchant A: 404, empty, zero."""

    def test_every_crm_resource(self, world: World) -> None:
        contact, ticket_id = negative_ticket(world, world.a)
        cid = contact["id"]
        a = auth(world.a.merchant)
        fb = world.client.get("/v1/feedback", headers=a).json()["data"][0]
        fu = world.client.get("/v1/followups", headers=a).json()["data"][0]
        for key in (world.b.merchant, world.b.support):
            h = auth(key)
            for path in (
                f"/v1/contacts/{cid}",
                f"/v1/contacts/{cid}/consents",
                f"/v1/feedback/{fb['id']}",
                f"/v1/followups/{fu['id']}",
                f"/v1/tickets/{ticket_id}",
                f"/v1/merchants/{world.a.id}",
            ):
                r = world.client.get(path, headers=h)
                assert r.status_code == 404, (path, r.text)
                assert r.json()["error"]["code"] == "resource_missing"
            for path in (
                f"/v1/tickets/{ticket_id}/respond",
                f"/v1/contacts/{cid}/consents",
            ):
                body = {"action": "withdraw", "purpose": "marketing"}
                r = world.client.post(path, json=body, headers=h)
                assert r.status_code == 404, (path, r.text)
            r = world.client.post(
                f"/v1/tickets/{ticket_id}/assign", json={"assignee": "x"}, headers=h
            )
            assert r.status_code == 404
            for path in ("/v1/contacts", "/v1/feedback", "/v1/followups", "/v1/tickets"):
                assert world.client.get(path, headers=h).json()["data"] == [], path
                r = world.client.get(path, params={"merchant_id": world.a.id}, headers=h)
                assert r.json()["data"] == [], path
            r = world.client.get("/v1/contacts", params={"starting_after": cid}, headers=h)
            assert r.status_code == 404
            assert r.json()["error"]["param"] == "starting_after"
            m = world.client.get("/v1/metrics", headers=h).json()
            assert m["rating_responses"] == 0
            assert m["sent"] == 0
            assert m["suppressions"] == {}
        h = auth(world.b.merchant)
        for path in (f"/v1/contacts/{cid}/export", f"/v1/contacts/{cid}/erase"):
            method = world.client.get if path.endswith("export") else world.client.post
            assert method(path, headers=h).status_code == 404
        assert world.client.get("/v1/audit_log", params={"limit": 100}, headers=h).json()[
            "data"
        ] == [] or all(
            e["merchant_id"] == world.b.id
            for e in world.client.get("/v1/audit_log", params={"limit": 100}, headers=h).json()[
                "data"
            ]
        )
        # the admin sees both
        r = world.client.get(f"/v1/contacts/{cid}", headers=auth(world.admin))
        assert r.status_code == 200

    def test_role_matrix(self, world: World) -> None:
        c = new_contact(world, world.a)
        s = auth(world.a.support)
        allowed = [
            ("GET", "/v1/contacts"),
            ("GET", f"/v1/contacts/{c['id']}"),
            ("GET", "/v1/feedback"),
            ("GET", "/v1/tickets"),
            ("GET", "/v1/followups"),
            ("GET", "/v1/metrics"),
        ]
        for method, path in allowed:
            assert world.client.request(method, path, headers=s).status_code == 200, path
        forbidden = [
            ("POST", "/v1/contacts", {"name": "x"}),
            ("POST", f"/v1/contacts/{c['id']}", {"tier": "x"}),
            ("GET", f"/v1/contacts/{c['id']}/export", None),
            ("POST", f"/v1/contacts/{c['id']}/erase", None),
            ("POST", "/v1/invoices", {"amount": "1", "order_id": "o"}),
            ("POST", "/v1/api_keys", {"role": "support"}),
            ("GET", "/v1/reconciliation", None),
            ("GET", "/v1/audit_log", None),
            ("POST", "/v1/merchants", {"name": "x"}),
        ]
        for method, path, body in forbidden:
            r = world.client.request(method, path, json=body, headers=s)
            assert r.status_code == 403, (path, r.text)
            assert r.json()["error"]["type"] == "permission_error"
        r = world.client.post("/v1/contacts", json={"name": "x"}, headers=auth(world.admin))
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "merchant_id"
        r = world.client.post(
            "/v1/contacts",
            json={"name": "x", "merchant_id": world.b.id},
            headers=auth(world.a.merchant),
        )
        assert r.status_code == 403


def _ticket_id(payload: str) -> int:
    import json

    return int(json.loads(payload)["data"]["object"]["id"])


def test_an_admins_webhook_endpoint_names_an_existing_merchant(world: World) -> None:
    """An admin naming a merchant that does not exist ("999"), or spelling one with a leading
    zero ("01"), got an endpoint that never received anything: events are queued under the
    merchant's own id. The first is a 404, the second is stored under that id."""
    body = {"url": "http://127.0.0.1:9/h", "enabled_events": ["*"]}
    missing = world.client.post(
        "/v1/webhook_endpoints", json=body | {"merchant_id": "999"}, headers=auth(world.admin)
    )
    assert missing.status_code == 404, missing.text
    spelled = world.client.post(
        "/v1/webhook_endpoints",
        json=body | {"merchant_id": "0" + world.a.id},
        headers=auth(world.admin),
    )
    assert spelled.status_code == 200, spelled.text
    assert spelled.json()["merchant_id"] == world.a.id
    listed = world.client.get("/v1/webhook_endpoints", headers=auth(world.a.merchant)).json()
    assert [e["id"] for e in listed["data"]] == [spelled.json()["id"]]


def test_an_admins_report_names_an_existing_merchant(world: World) -> None:
    """A mistyped merchant id ("abc", "999") answered an admin with an empty report, as if
    the merchant had no invoices and no feedback; a 404 says the id is wrong."""
    for merchant_id in ("abc", "999"):
        r = world.client.get(f"/v1/metrics?merchant_id={merchant_id}", headers=auth(world.admin))
        assert r.status_code == 404, (merchant_id, r.text)
    r = world.client.get("/v1/reconciliation?merchant_id=999&format=csv", headers=auth(world.admin))
    assert r.status_code == 404, r.text
    ok = world.client.get(f"/v1/metrics?merchant_id={world.a.id}", headers=auth(world.admin))
    assert (ok.status_code, ok.json()["merchant_id"]) == (200, world.a.id)
