"""What erasure and export reach on the API side (SQLite and PostgreSQL): stored idempotent
responses, in-app messages, phone tasks, invoices and the audit entries about them."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa
from sqlmodel import Session

from api.db import session_factory, session_scope
from api.dispatch.channels import InAppChannel, Links, Recipient
from api.dispatch.models import InAppMessage
from api.idempotency import ERASED_FINGERPRINT, ERASED_RESPONSE
from crm import FollowUpPolicyCreate, followups
from crm.followups import dispatch as followups_dispatch
from crm.followups import policies as followups_policies
from crm.followups import repository as followups_repo
from crm.followups.dispatch import SendInstruction
from crm.privacy import service as crm_privacy
from tests.api.conftest import auth
from tests.api.test_phone_tasks import _task
from tests.api.test_resources_crm import World, grant, new_contact
from tests.api.test_resources_invoices import create, deployment, world

__all__ = ["deployment", "world"]  # the fixtures

PHONE = "+14155550123"
BASE = "https://pay.example"


def sent_instruction(w: World, contact_id: int) -> SendInstruction:
    """What the worker hands a channel for a new follow-up of tenant A's ``contact_id``."""
    now, merchant_id, ref = w.clock.now(), int(w.a.id), uuid.uuid4().hex[:12]
    with session_scope(session_factory(w.engine)) as s:
        if followups_repo.get_policy(s, merchant_id, "payment_settled") is None:
            policy = FollowUpPolicyCreate(delay_minutes=0, frequency_cap_days=0)
            followups_policies.create_policy(s, merchant_id, policy, actor="test", clock=w.clock)
        (fu,) = followups.schedule_for_payment(
            s, merchant_id, contact_id, f"pay_{ref}", f"inv_{ref}", 100, "USDC", now, w.clock
        )
        fu.state = "queued"
        s.add(fu)
        s.flush()
        instruction = followups_dispatch.prepare_send(s, fu.id or 0, now, w.keyring)
        assert instruction is not None
        followups_dispatch.mark_sent(s, fu.id or 0, now)
        return instruction


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

    def test_a_replay_after_erasure_confirms_no_guess_of_the_contacts_data(
        self, world: World
    ) -> None:
        """The stored fingerprint (an HMAC of the body: name, e-mail, phone) outlived the
        erasure: the right guess replayed the erased answer, a wrong one got 400, for the
        key's 24 hours. Every body now gets the erased answer, and the HMAC is gone."""
        key = world.a.merchant
        email = f"ada+{uuid.uuid4().hex[:8]}@example.com"
        person = {"name": "Ada Lovelace", "email": email, "phone": PHONE, "time_zone": "UTC"}
        created = _post(world, "/v1/contacts", person, key, "create-ada")
        assert created.status_code == 200, created.text
        erased = _post(world, f"/v1/contacts/{created.json()['id']}/erase", {}, key, "erase")
        assert erased.status_code == 200, erased.text
        guesses = [person, {**person, "email": "someone.else@example.com"}]
        answers = [_post(world, "/v1/contacts", body, key, "create-ada") for body in guesses]
        assert {(r.status_code, r.content) for r in answers} == {
            (answers[0].status_code, answers[0].content)
        }
        assert answers[0].json()["error"]["code"] == "contact_erased"
        with world.engine.connect() as conn:
            stored = conn.execute(
                sa.text("SELECT fingerprint FROM api_idempotency_keys WHERE idempotency_key = :k"),
                {"k": "create-ada"},
            ).scalar_one()
        assert stored == ERASED_FINGERPRINT

    def test_a_phone_tasks_completion_replay_forgets_the_contacts_time_zone(
        self, world: World
    ) -> None:
        """Erasure resets the contact's and its tasks' time zone (where someone lives is
        theirs too); the stored answer of a task's completion was not tied to the contact,
        and its replay still named the zone."""
        from api.dispatch.models import PhoneTask

        task = _task(world, world.a.id, after=timedelta(hours=-1), zone="Asia/Kathmandu")
        with Session(world.engine) as s:
            contact_id = s.get(PhoneTask, task).contact_id
        body = {"outcome": "wrong_number"}
        path = f"/v1/phone_tasks/{task}/complete"
        done = _post(world, path, body, world.a.support, "done-1")
        assert "Asia/Kathmandu" in done.text
        erased = _post(world, f"/v1/contacts/{contact_id}/erase", {}, world.a.merchant, "e")
        assert erased.status_code == 200, erased.text
        replay = _post(world, path, body, world.a.support, "done-1")
        assert replay.headers["idempotent-replayed"] == "true"
        assert "Asia/Kathmandu" not in replay.text

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

    def test_a_replay_tells_nothing_about_another_merchants_contact(self, world: World) -> None:
        """Merchant b's request about merchant a's contact id is stored as its 404; its
        replay stays that 404 after a's contact is erased (it used to answer 409
        contact_erased, which let b probe a's contact ids)."""
        c = new_contact(world, world.a, phone=PHONE)
        path, key = f"/v1/contacts/{c['id']}", world.b.merchant
        first = _post(world, path, {"tier": "vip"}, key, "probe")
        assert first.status_code == 404, first.text
        with Session(world.engine) as s, s.begin():
            crm_privacy.erase_contact(s, int(world.a.id), c["id"], actor="t", clock=world.clock)
        again = _post(world, path, {"tier": "vip"}, key, "probe")
        assert (again.status_code, again.headers["idempotent-replayed"]) == (404, "true")
        assert again.content == first.content
        # nor does erasing it through the API rewrite b's stored 404
        erased = _post(world, f"{path}/erase", {}, world.a.merchant, "erase-a")
        assert erased.status_code == 200, erased.text
        third = _post(world, path, {"tier": "vip"}, key, "probe")
        assert (third.status_code, third.content) == (404, first.content)


def _with_history(w: World, tenant_name: str) -> tuple[dict, str, int]:
    """A contact with an in-app message stored before migration 0006 (its token in the body)
    and a call made: ``(contact, that token, task id)``."""
    tenant = getattr(w, tenant_name)
    c = new_contact(w, tenant, phone=PHONE)
    grant(w, tenant, c["id"])
    r = w.client.post(
        f"/v1/contacts/{c['id']}/consents",
        json={"action": "grant", "purpose": "service_followup", "channel": "phone"},
        headers=auth(tenant.merchant),
    )
    assert r.status_code == 200, r.text
    old_token = uuid.uuid4().hex * 2
    with session_scope(session_factory(w.engine)) as s:
        s.add(
            InAppMessage(
                merchant_id=int(tenant.id),
                contact_id=c["id"],
                followup_id=int(uuid.uuid4().int % 2**30),
                subject=f"Old message of {tenant_name}",
                body=f"Rate: {BASE}/v1/public/feedback/{old_token}?rating=5",
                created_at=w.clock.now() - timedelta(days=1),
            )
        )
    task = _task(w, tenant.id, after=timedelta(hours=-1), contact_id=c["id"])
    done = w.client.post(
        f"/v1/phone_tasks/{task}/complete",
        json={"outcome": "wrong_number"},
        headers=auth(tenant.support),
    )
    assert done.json()["state"] == "done", done.text
    return c, old_token, task


class TestExport:
    def test_the_export_holds_the_addresses_the_contact_paid_from_and_was_refunded_to(
        self, world: World
    ) -> None:
        """An intent's payer is usually "anyone": the address the contact really paid from is
        the payment's, kept (pseudonymised) but left out of the export."""
        from tests.api.test_reconciliation import account_address, record_payment

        c = new_contact(world, world.a)
        inv = create(world, world.a.merchant, contact_id=c["id"]).json()
        assert int(inv["intent"]["payer"], 16) == 0
        address = account_address(world, world.a)
        record_payment(world, merchant_address=address, invoice_id=inv["id"])  # payer 0x44…
        other = create(world, world.b.merchant).json()  # another merchant's payment
        record_payment(
            world, merchant_address=account_address(world, world.b), invoice_id=other["id"]
        )
        r = world.client.get(f"/v1/contacts/{c['id']}/export", headers=auth(world.a.merchant))
        assert r.status_code == 200, r.text
        (payment,) = r.json()["data"]["payments"]
        assert (payment["invoice_id"], payment["payer"].lower()) == (inv["id"], "0x" + "44" * 20)
        assert r.json()["data"]["refunds"] == []

    def test_the_export_holds_what_the_api_side_keeps_about_the_contact(self, world: World) -> None:
        c, old_token, task = _with_history(world, "a")
        _, other_old_token, other_task = _with_history(world, "b")
        instruction = sent_instruction(world, c["id"])  # a new message in the inbox
        token, to = instruction.token, Recipient("Shop a", "UTC", world.clock.now())
        with session_scope(session_factory(world.engine)) as s:
            InAppChannel(Links(BASE), world.keyring).send(s, instruction, to)
        h = auth(world.a.merchant)
        invoice = create(world, world.a.merchant, contact_id=c["id"], metadata={"sku": "A1"})
        assert invoice.status_code == 200, invoice.text
        inv = invoice.json()
        mark = world.client.post(
            f"/v1/invoices/{inv['id']}/mark", json={"status": "invalid"}, headers=h
        )
        assert mark.status_code == 200, mark.text
        assert (
            world.client.post(f"/v1/public/feedback/{token}/rate", data={"rating": 1}).status_code
            == 200
        )
        (ticket,) = world.client.get("/v1/tickets", headers=h).json()["data"]
        world.client.post(f"/v1/tickets/{ticket['id']}/respond", headers=auth(world.a.support))

        r = world.client.get(f"/v1/contacts/{c['id']}/export", headers=h)
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        subjects = sorted(m["subject"] for m in data["in_app_messages"])
        assert subjects == ["How was your purchase at Shop a?", "Old message of a"]
        assert all("[REDACTED]" in m["body"] for m in data["in_app_messages"])
        assert [(t["id"], t["state"], t["outcome"]) for t in data["phone_tasks"]] == [
            (task, "done", "wrong_number")
        ]
        assert [(i["id"], i["state"], i["metadata"]) for i in data["invoices"]] == [
            (inv["id"], "invalid", {"sku": "A1"})
        ]
        sent = next(f for f in data["followups"] if f["id"] == instruction.followup_id)
        assert "sent" in [e["to_state"] for e in sent["events"]]
        assert [e["kind"] for e in data["tickets"][0]["events"]] == ["opened", "responded"]
        audit = {(a["object_type"], a["action"]) for a in data["audit_log"]}
        assert {
            ("contact", "contact.created"),
            ("contact", "consent.grant"),
            ("phone_task", "phone_task.complete"),
            ("invoice", "invoice.mark_invalid"),
            ("ticket", "ticket.responded"),
        } <= audit
        assert {a["merchant_id"] for a in data["audit_log"]} == {int(world.a.id)}
        # nothing of another merchant's, no token, no secret
        blob = json.dumps(data)
        assert "Old message of b" not in blob
        assert other_task not in [t["id"] for t in data["phone_tasks"]]
        for secret in (token, old_token, other_old_token, "token_hash", "link_token_enc"):
            assert secret not in blob
        for secret in ("signature", "fp_test_", "fp_live_", "whsec_"):
            assert secret not in blob

    def test_another_merchants_contact_cannot_be_exported(self, world: World) -> None:
        c, _, _ = _with_history(world, "b")
        r = world.client.get(f"/v1/contacts/{c['id']}/export", headers=auth(world.a.merchant))
        assert r.status_code == 404


def test_an_erasure_leaves_no_copy_of_the_data_key_in_sqlites_wal(world: World) -> None:
    """``secure_delete`` zeroes the database file's freed pages only: the write-ahead log kept
    the destroyed wrapped key (and the ciphertexts) until a checkpoint, which anyone with the
    files and the master key could read back. The erasure truncates it once it commits."""
    key = world.a.merchant
    contact = new_contact(world, world.a, name="Zebulon Quattlebaum", phone=PHONE)
    with world.engine.connect() as conn:
        wrapped = conn.execute(
            sa.text("SELECT wrapped_key FROM crm_contact_key WHERE contact_id = :c"),
            {"c": contact["id"]},
        ).scalar_one()
    erased = world.client.post(f"/v1/contacts/{contact['id']}/erase", headers=auth(key))
    assert erased.status_code == 200, erased.text
    with world.engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM crm_contact_key WHERE contact_id = :c"),
                {"c": contact["id"]},
            ).scalar_one()
            == 0
        )
    if world.engine.dialect.name == "sqlite":
        database = Path(str(world.engine.url.database))
        files = [database, database.with_name(database.name + "-wal")]
        blob = b"".join(f.read_bytes() for f in files if f.exists())
        assert bytes(wrapped) not in blob
