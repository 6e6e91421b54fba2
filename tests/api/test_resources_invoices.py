"""/v1/invoices on the in-process tester chain: signed intents, EIP-681, QR, filters, marking,
reconciliation, tenant isolation, roles and exactly-one-invoice under concurrent duplicates."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from xml.etree import ElementTree

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from sqlmodel import Session

from api.db import make_engine
from api.deps import ChainInfo
from api.operators import OperatorKeys
from api.runtime import chain_info_for
from api.settlement.invoices import InvoiceNumbers
from contracts import load_artifact
from tests.api.conftest import auth
from tests.api.test_resources_crm import World, make_world, new_contact
from wallet.chain import Chain
from wallet.deployment import Deployment, deploy_contracts
from wallet.secrets import PrivateKey
from wallet.signing import (
    PaymentIntent,
    Signer,
    from_compact,
    payment_intent_typed_data,
    recover_typed_data,
)

# eth-tester's chain id (131277322940537) overflows the INTEGER chain_id columns of
# api_merchant_account/api_invoice on PostgreSQL; creating invoices only signs (nothing is sent),
# so the intents are bound to anvil's id instead.
CHAIN_ID = 31337


@pytest.fixture(scope="module")
def deployment(tester_chain: Chain) -> Deployment:
    return deploy_contracts(tester_chain, tester_chain.dev_accounts()[0])


@pytest.fixture
def world(make_app, new_key, db, tester_chain: Chain, deployment: Deployment) -> Iterator[World]:
    accounts = tester_chain.dev_accounts()
    operator = accounts[2]
    chain_info = ChainInfo(
        chain_id=CHAIN_ID,
        router=deployment.router,
        token=deployment.token,
        decimals=6,
        head=lambda: int(tester_chain.w3.eth.block_number),
    )
    signers = OperatorKeys({operator.address: Signer(PrivateKey(bytes(operator.key)))})
    for w in make_world(make_app, new_key, db, chain_info=chain_info, signers=signers):
        for tenant in (w.a, w.b):
            r = w.client.post(
                f"/v1/merchants/{tenant.id}/account",
                json={
                    "address": "0x" + os.urandom(20).hex(),
                    "payout": accounts[1].address,
                    "operator": operator.address,
                },
                headers=auth(tenant.merchant),
            )
            assert r.status_code == 200, r.text
            assert r.json()["signer_available"]
        w.chain_info = chain_info  # type: ignore[attr-defined]
        yield w


def subscribe(w: World, key: str, events: list[str]) -> dict:
    """A webhook endpoint of ``key``'s merchant (nothing listens there: deliveries stay queued)."""
    r = w.client.post(
        "/v1/webhook_endpoints",
        json={"url": "http://127.0.0.1:9/hooks", "enabled_events": events},
        headers=auth(key),
    )
    assert r.status_code == 200, r.text
    return r.json()


def create(w: World, key: str, **body: object) -> httpx.Response:
    payload = {"amount": "2500000", "order_id": f"o_{uuid.uuid4().hex[:10]}", **body}
    return w.client.post("/v1/invoices", json=payload, headers=auth(key))


class TestCreate:
    def test_signed_intent_recovers_to_the_operator(
        self, world: World, tester_chain: Chain, deployment: Deployment
    ) -> None:
        c = new_contact(world, world.a)
        r = create(world, world.a.merchant, contact_id=c["id"], metadata={"sku": "A1"})
        assert r.status_code == 200, r.text
        inv = r.json()
        assert inv["amount"] == "2500000"
        assert inv["decimals"] == 6
        assert inv["state"] == "new"
        assert inv["created_at"].endswith("Z")
        assert inv["metadata"] == {"sku": "A1"}
        intent = inv["intent"]
        v, r_, s_ = from_compact(
            bytes.fromhex(inv["signature"]["r"][2:]), bytes.fromhex(inv["signature"]["vs"][2:])
        )
        typed = payment_intent_typed_data(
            PaymentIntent(
                merchant=intent["merchant"],
                token=intent["token"],
                amount=int(intent["amount"]),
                fee=int(intent["fee"]),
                invoice_id=int(intent["invoice_id"]),
                payer=intent["payer"],
                deadline=intent["deadline"],
            ),
            chain_id=CHAIN_ID,
            router=deployment.router,
        )
        signer = recover_typed_data(typed, r_ + s_ + bytes([v]))
        assert signer == tester_chain.dev_accounts()[2].address
        assert inv["payment_uri"] == (
            f"ethereum:{deployment.token}@{CHAIN_ID}/approve"
            f"?address={deployment.router}&uint256=2500000"
        )
        svg = world.client.get(inv["qr_svg_url"], headers=auth(world.a.support))
        assert svg.status_code == 200
        assert svg.headers["content-type"].startswith("image/svg+xml")
        root = ElementTree.fromstring(svg.content)  # a standalone document a browser can show  # noqa: S314 - our own output
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        png = world.client.get(inv["qr_png_url"], headers=auth(world.a.support))
        assert png.content.startswith(b"\x89PNG")
        got = world.client.get(f"/v1/invoices/{inv['id']}", headers=auth(world.a.merchant))
        assert got.json() == inv
        pays = world.client.get(
            f"/v1/invoices/{inv['id']}/payments", headers=auth(world.a.merchant)
        )
        assert pays.json()["data"] == []

    def test_without_a_chain_no_zero_router_uri_and_no_guessed_decimals(self, world: World) -> None:
        """On a server without chain information the invoice says what it does not know:
        no payment URI (it asked wallets to approve the zero address), no router, no decimals
        (18 was guessed), and its QR codes are refused."""
        inv = create(world, world.a.merchant).json()
        world.client.app.state.chain_info = None
        got = world.client.get(f"/v1/invoices/{inv['id']}", headers=auth(world.a.merchant))
        assert got.status_code == 200, got.text
        body = got.json()
        assert (body["payment_uri"], body["router"], body["decimals"]) == (None, None, None)
        assert body["amount"] == inv["amount"]
        for url in (inv["qr_svg_url"], inv["qr_png_url"]):
            qr = world.client.get(url, headers=auth(world.a.merchant))
            assert (qr.status_code, qr.json()["error"]["code"]) == (400, "chain_unavailable")

    def test_one_payable_invoice_per_order(self, world: World) -> None:
        first = create(world, world.a.merchant, order_id="order-7").json()
        r = create(world, world.a.merchant, order_id="order-7")
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "duplicate_order"
        world.client.post(
            f"/v1/invoices/{first['id']}/mark",
            json={"status": "invalid"},
            headers=auth(world.a.merchant),
        )
        assert create(world, world.a.merchant, order_id="order-7").status_code == 200

    def test_bad_input_writes_nothing(self, world: World) -> None:
        h = auth(world.a.merchant)
        cases = [
            ({"amount": "-5", "order_id": "x"}, 422, "amount"),
            ({"amount": "1.5", "order_id": "x"}, 422, "amount"),
            ({"amount": "0", "order_id": "x"}, 400, "amount"),
            ({"amount": str(2**256), "order_id": "x"}, 400, "amount"),
            ({"amount": "10", "fee": "11", "order_id": "x"}, 400, "fee"),
            ({"amount": "10", "order_id": "x", "confirmations": 3}, 422, "confirmations"),
            ({"amount": "10", "order_id": "x", "contact_id": 999999999}, 404, "contact_id"),
            ({"amount": "10", "order_id": "x", "token": "0x" + "ab" * 20}, 400, "token"),
        ]
        for body, status, param in cases:
            r = world.client.post("/v1/invoices", json=body, headers=h)
            assert r.status_code == status, (body, r.text)
            assert r.json()["error"]["param"] == param, body
        assert world.client.get("/v1/invoices", headers=h).json()["data"] == []

    def test_merchant_without_account_or_signer(self, world: World, new_key) -> None:
        r = world.client.post("/v1/merchants", json={"name": "NoKey"}, headers=auth(world.admin))
        mid = r.json()["id"]
        key = new_key("merchant", mid)
        r = create(world, key)
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "merchant_account_missing"
        body = {"address": "0x" + os.urandom(20).hex(), "payout": "0x" + "11" * 20}
        body["operator"] = "0x" + "22" * 20
        r = world.client.post(f"/v1/merchants/{world.a.id}/account", json=body, headers=auth(key))
        assert r.status_code == 404  # another merchant
        r = world.client.post(f"/v1/merchants/{mid}/account", json=body, headers=auth(key))
        assert r.status_code == 200
        assert r.json()["signer_available"] is False
        r = create(world, key)
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "signer_unavailable"
        taken = world.client.get(
            f"/v1/merchants/{world.a.id}/account", headers=auth(world.a.merchant)
        )
        body["address"] = taken.json()["address"]
        r = world.client.post(f"/v1/merchants/{mid}/account", json=body, headers=auth(key))
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "account_address_taken"


class TestOperatorBoundToAMerchant:
    """Anyone may name any operator on the router: a key bound to merchant A
    (``FOLLOWPAY_OPERATORS=A=wallet``) never signs merchant B's intents."""

    def test_only_its_merchant_gets_signed_invoices(
        self, make_app, new_key, db, tester_chain: Chain, deployment: Deployment
    ) -> None:
        operator, payout = tester_chain.dev_accounts()[2], tester_chain.dev_accounts()[1]
        info = ChainInfo(  # no router registrations: accounts are recorded as sent
            chain_id=CHAIN_ID,
            router=deployment.router,
            token=deployment.token,
            decimals=6,
            head=lambda: int(tester_chain.w3.eth.block_number),
        )
        signer = Signer(PrivateKey(bytes(operator.key)))
        worlds = make_world(make_app, new_key, db, chain_info=info, signers=None)
        with contextlib.closing(worlds):
            w = next(worlds)
            w.client.app.state.signers = OperatorKeys(
                {operator.address: signer}, {operator.address: int(w.a.id)}
            )
            available = {}
            for tenant in (w.a, w.b):
                r = w.client.post(
                    f"/v1/merchants/{tenant.id}/account",
                    json={
                        "address": "0x" + os.urandom(20).hex(),
                        "payout": payout.address,
                        "operator": operator.address,
                    },
                    headers=auth(tenant.merchant),
                )
                assert r.status_code == 200, r.text
                available[tenant.id] = r.json()["signer_available"]
            assert available == {w.a.id: True, w.b.id: False}
            assert create(w, w.a.merchant).status_code == 200
            refused = create(w, w.b.merchant)
            assert (refused.status_code, refused.json()["error"]["code"]) == (
                409,
                "signer_unavailable",
            )


class TestAccountMustMatchTheRouter:
    """With the router's registrations at hand (as `followpay serve` has), an account is only
    recorded as the router registers it: nobody claims an address they do not control."""

    def test_unregistered_or_different_registration_is_refused(
        self, make_app, new_key, db, tester_chain: Chain
    ) -> None:
        owner, _merchant, _payout, operator = tester_chain.dev_accounts()[:4]
        fresh = deploy_contracts(tester_chain, owner)
        info = chain_info_for(tester_chain, fresh)
        info = dataclasses.replace(info, chain_id=CHAIN_ID)  # see CHAIN_ID
        signers = OperatorKeys({operator.address: Signer(PrivateKey(bytes(operator.key)))})
        worlds = make_world(make_app, new_key, db, chain_info=info, signers=signers)
        with contextlib.closing(worlds):
            self._check(next(worlds), tester_chain, fresh)

    def _check(self, world: World, tester_chain: Chain, fresh: Deployment) -> None:
        _owner, merchant, payout, operator, other = tester_chain.dev_accounts()[:5]
        path, h = f"/v1/merchants/{world.a.id}/account", auth(world.a.merchant)
        body = {"address": merchant.address, "payout": payout.address, "operator": operator.address}

        r = world.client.post(path, json=body, headers=h)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "account_not_on_chain")
        assert r.json()["error"]["param"] == "address"
        router = tester_chain.w3.eth.contract(
            address=fresh.router, abi=load_artifact("PaymentRouter").abi
        )
        tx = router.functions.registerMerchant(payout.address, operator.address).transact(
            {"from": merchant.address}
        )
        tester_chain.w3.eth.wait_for_transaction_receipt(tx)
        for field, value in (("payout", other.address), ("operator", other.address)):
            r = world.client.post(path, json=body | {field: value}, headers=h)
            assert (r.status_code, r.json()["error"]["param"]) == (409, field), r.text
            assert r.json()["error"]["message"].endswith(f"{field} {body[field]}.")
        assert world.client.get(path, headers=h).status_code == 404  # nothing recorded
        r = world.client.post(path, json=body | {"address": merchant.address.lower()}, headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["signer_available"] is True


def _deliveries(w: World, event_type: str) -> int:
    with w.engine.connect() as conn:
        query = sa.text("SELECT count(*) FROM api_webhook_deliveries WHERE event_type = :t")
        return int(conn.execute(query, {"t": event_type}).scalar_one())


class TestConfigurationCache:
    """Accounts and webhook subscriptions are cached per API process; its own changes apply at
    once."""

    def test_an_endpoint_registered_here_gets_the_next_invoice(self, world: World) -> None:
        assert create(world, world.a.merchant).status_code == 200  # caches "nobody listens"
        r = world.client.post(
            "/v1/webhook_endpoints",
            json={"url": "http://127.0.0.1:9/hooks", "enabled_events": ["invoice.created"]},
            headers=auth(world.a.merchant),
        )
        assert r.status_code == 200, r.text
        assert create(world, world.a.merchant).status_code == 200
        assert _deliveries(world, "invoice.created") == 1
        world.client.delete(
            f"/v1/webhook_endpoints/{r.json()['id']}", headers=auth(world.a.merchant)
        )
        assert create(world, world.a.merchant).status_code == 200
        assert _deliveries(world, "invoice.created") == 1

    def test_a_new_operator_registered_here_signs_the_next_invoice(self, world: World) -> None:
        assert create(world, world.a.merchant).status_code == 200  # caches the account
        account = world.client.get(
            f"/v1/merchants/{world.a.id}/account", headers=auth(world.a.merchant)
        ).json()
        body = {k: account[k] for k in ("address", "payout")} | {"operator": "0x" + "22" * 20}
        r = world.client.post(
            f"/v1/merchants/{world.a.id}/account", json=body, headers=auth(world.a.merchant)
        )
        assert r.status_code == 200
        r = create(world, world.a.merchant)
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "signer_unavailable"

    def test_another_process_change_applies_within_the_ttl(self, world: World) -> None:
        assert create(world, world.a.merchant).status_code == 200
        with world.engine.begin() as conn:  # what another API process's rotation leaves
            conn.execute(
                sa.text("UPDATE api_merchant_account SET operator = :o WHERE merchant_id = :m"),
                {"o": "0x" + "33" * 20, "m": int(world.a.id)},
            )
        # Within the cache's second the old operator's signer is still chosen, and the insert
        # refuses what it signed (stored, it could never be paid: the router checks the
        # signer); after it, no signer for the new operator is configured here.
        deadline = time.monotonic() + 10
        while (r := create(world, world.a.merchant)).json()["error"][
            "code"
        ] != "signer_unavailable":
            assert r.status_code == 409, "a replaced operator's invoice was stored"
            assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (
                "merchant_account_missing",
                "operator",
            )
            assert time.monotonic() < deadline, "the cache kept the replaced operator"
            time.sleep(0.05)


class TestListAndMark:
    def test_filters_and_mark(self, world: World) -> None:
        h = auth(world.a.merchant)
        a = create(world, world.a.merchant, order_id="ord-a").json()
        world.clock.advance(minutes=1)
        b = create(world, world.a.merchant, order_id="ord-b").json()
        r = world.client.get("/v1/invoices", params={"order_id": "ord-a"}, headers=h)
        assert [i["id"] for i in r.json()["data"]] == [a["id"]]
        r = world.client.get("/v1/invoices", params={"created_gte": b["created_at"]}, headers=h)
        assert [i["id"] for i in r.json()["data"]] == [b["id"]]
        r = world.client.get("/v1/invoices", params={"created_lt": b["created_at"]}, headers=h)
        assert [i["id"] for i in r.json()["data"]] == [a["id"]]
        m = world.client.post(
            f"/v1/invoices/{a['id']}/mark", json={"status": "settled"}, headers=h
        ).json()
        assert m["state"] == "settled"
        assert m["status"] == "marked"
        r = world.client.get("/v1/invoices", params={"state": "settled"}, headers=h)
        assert [i["id"] for i in r.json()["data"]] == [a["id"]]
        audit = world.client.get(
            "/v1/audit_log", params={"action": "invoice.mark_settled"}, headers=h
        )
        assert [e["object_id"] for e in audit.json()["data"]] == [a["id"]]
        rec = world.client.get(
            "/v1/reconciliation",
            params={"start": "2000-01-01T00:00:00Z", "end": "2999-01-01T00:00:00Z"},
            headers=h,
        )
        assert {row["invoice_id"] for row in rec.json()["data"]} == {a["id"], b["id"]}
        csv_text = world.client.get(
            "/v1/reconciliation",
            params={
                "format": "csv",
                "start": "2000-01-01T00:00:00Z",
                "end": "2999-01-01T00:00:00Z",
            },
            headers=h,
        )
        assert csv_text.headers["content-type"].startswith("text/csv")
        lines = csv_text.text.strip().splitlines()
        assert lines[0].startswith("invoice_id,order_id")
        assert len(lines) == 3


def _payloads(w: World, event_type: str) -> list[dict]:
    with w.engine.connect() as conn:
        query = sa.text("SELECT payload FROM api_webhook_deliveries WHERE event_type = :t")
        return [json.loads(p) for p in conn.execute(query, {"t": event_type}).scalars()]


class TestMarkDetails:
    def test_marked_events_have_the_indexers_shape(self, world: World) -> None:
        """One shape per event type: staff's invoice.settled was the flat API object, the
        chain's ``{"invoice": {...}}``; a receiver written for one missed the other."""
        h = auth(world.a.merchant)
        subscribe(world, world.a.merchant, ["*"])
        settled, invalid = create(world, world.a.merchant).json(), create(world, world.a.merchant)
        invalid = invalid.json()
        for inv, status in ((settled, "settled"), (invalid, "invalid")):
            r = world.client.post(
                f"/v1/invoices/{inv['id']}/mark", json={"status": status}, headers=h
            )
            assert r.status_code == 200, r.text
        for inv, event in ((settled, "invoice.settled"), (invalid, "invoice.invalid")):
            (payload,) = _payloads(world, event)
            obj = payload["data"]["object"]
            assert set(obj) == {"invoice"}
            assert (obj["invoice"]["id"], obj["invoice"]["status"]) == (inv["id"], "marked")

    def test_an_invalidated_settlement_has_no_settled_at(self, world: World) -> None:
        h = auth(world.a.merchant)
        inv = create(world, world.a.merchant).json()
        mark = f"/v1/invoices/{inv['id']}/mark"
        assert world.client.post(mark, json={"status": "settled"}, headers=h).json()["settled_at"]
        after = world.client.post(mark, json={"status": "invalid"}, headers=h).json()
        assert (after["state"], after["settled_at"]) == ("invalid", None)

    def test_an_erased_contact_gets_no_invoice(self, world: World) -> None:
        h = auth(world.a.merchant)
        c = new_contact(world, world.a)
        assert world.client.post(f"/v1/contacts/{c['id']}/erase", headers=h).status_code == 200
        r = create(world, world.a.merchant, contact_id=c["id"])
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "contact_erased"
        assert world.client.get("/v1/invoices", headers=h).json()["data"] == []


class TestIdsBeyondTheColumns:
    """Ids are INTEGER columns: PostgreSQL refused a larger value in a comparison (a 500)."""

    def test_a_contact_id_beyond_the_column_is_a_validation_error(self, world: World) -> None:
        r = create(world, world.a.merchant, contact_id=2**31)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["param"] == "contact_id"
        r = world.client.get(f"/v1/contacts/{2**31}", headers=auth(world.a.merchant))
        assert r.status_code == 422, r.text

    def test_a_merchant_id_beyond_the_column_is_no_merchant(self, world: World) -> None:
        h = auth(world.admin)
        r = world.client.get("/v1/invoices", params={"merchant_id": "99999999999"}, headers=h)
        assert (r.status_code, r.json()["data"]) == (200, [])
        r = create(world, world.admin, merchant_id="99999999999")
        assert r.status_code == 404, r.text
        assert r.json()["error"]["param"] == "merchant_id"


class TestIsolationAndRoles:
    def test_other_merchant_sees_nothing(self, world: World) -> None:
        inv = create(world, world.a.merchant).json()
        for key in (world.b.merchant, world.b.support):
            h = auth(key)
            for path in ("", "/qr.svg", "/qr.png", "/payments"):
                r = world.client.get(f"/v1/invoices/{inv['id']}{path}", headers=h)
                assert r.status_code == 404, path
            assert world.client.get("/v1/invoices", headers=h).json()["data"] == []
            r = world.client.get("/v1/invoices", params={"merchant_id": world.a.id}, headers=h)
            assert r.json()["data"] == []
        h = auth(world.b.merchant)
        r = world.client.post(
            f"/v1/invoices/{inv['id']}/mark", json={"status": "invalid"}, headers=h
        )
        assert r.status_code == 404
        rec = world.client.get(
            "/v1/reconciliation",
            params={"start": "2000-01-01T00:00:00Z", "end": "2999-01-01T00:00:00Z"},
            headers=h,
        )
        assert rec.json()["data"] == []
        r = world.client.get(f"/v1/invoices/{inv['id']}", headers=auth(world.admin))
        assert r.status_code == 200

    def test_support_reads_but_cannot_create_or_mark(self, world: World) -> None:
        inv = create(world, world.a.merchant).json()
        s = auth(world.a.support)
        assert world.client.get(f"/v1/invoices/{inv['id']}", headers=s).status_code == 200
        assert create(world, world.a.support).status_code == 403
        r = world.client.post(
            f"/v1/invoices/{inv['id']}/mark", json={"status": "invalid"}, headers=s
        )
        assert r.status_code == 403

    def test_admin_must_name_the_merchant(self, world: World) -> None:
        r = create(world, world.admin)
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "merchant_id"
        r = create(world, world.admin, merchant_id=world.b.id)
        assert r.status_code == 200
        assert r.json()["merchant_id"] == world.b.id


def _serve(app) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn died"
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


class TestConcurrentDuplicates:
    @pytest.mark.parametrize("same_key", [True, False])
    def test_exactly_one_invoice(self, world: World, same_key: bool) -> None:
        server, thread, url = _serve(world.client.app)
        order = f"race-{uuid.uuid4().hex[:8]}"
        idem = uuid.uuid4().hex

        def post(i: int) -> httpx.Response:
            headers = auth(
                world.a.merchant, **{"Idempotency-Key": idem if same_key else f"{idem}{i}"}
            )
            with httpx.Client(base_url=url, timeout=30) as c:
                return c.post(
                    "/v1/invoices", json={"amount": "100", "order_id": order}, headers=headers
                )

        try:
            with ThreadPoolExecutor(12) as pool:
                responses = list(pool.map(post, range(12)))
            statuses = sorted(r.status_code for r in responses)
            assert all(s in (200, 409) for s in statuses), [r.text for r in responses]
            created = {r.json()["id"] for r in responses if r.status_code == 200}
            assert len(created) == 1, created
            if same_key:  # a retry after the race replays the one invoice
                r = post(0)
                assert r.status_code == 200
                assert r.json()["id"] in created
                assert r.headers.get("Idempotent-Replayed") == "true"
            listed = world.client.get(
                "/v1/invoices", params={"order_id": order}, headers=auth(world.a.merchant)
            ).json()["data"]
            assert [i["id"] for i in listed] == list(created)
        finally:
            server.should_exit = True
            thread.join(10)


class TestInvoiceNumbers:
    """On-chain numbers: unique across API processes, never holding the account row."""

    @staticmethod
    def _account_id(world: World) -> int:
        with world.engine.connect() as conn:
            query = sa.text("SELECT id FROM api_merchant_account WHERE merchant_id = :m")
            return int(conn.execute(query, {"m": int(world.a.id)}).scalar_one())

    def test_two_processes_never_hand_out_the_same_number(self, world: World) -> None:
        engine, account = world.engine, self._account_id(world)
        first, second = InvoiceNumbers(block=4), InvoiceNumbers(block=4)
        taken: dict[str, list[int]] = {"first": [], "second": []}
        for _ in range(10):
            for name, numbers in (("first", first), ("second", second)):
                with Session(engine) as session, session.begin():
                    taken[name].append(numbers.take(session, engine, account))
        everything = taken["first"] + taken["second"]
        assert len(set(everything)) == len(everything) == 20
        for run in (taken["first"][i : i + 4] for i in range(0, 8, 4)):
            assert run == list(range(run[0], run[0] + 4))  # blocks of 4, consecutive inside

    def test_a_block_must_hold_a_number(self) -> None:
        with pytest.raises(ValueError, match="block"):
            InvoiceNumbers(block=0)

    def test_a_rolled_back_request_and_its_number(self, world: World) -> None:
        engine, account = world.engine, self._account_id(world)
        numbers = InvoiceNumbers()
        with Session(engine) as session:
            lost = numbers.take(session, engine, account)
            session.rollback()
        with Session(engine) as session, session.begin():
            again = numbers.take(session, engine, account)
        assert again == lost + 1  # from the process's block: the rollback does not matter

    def test_the_next_block_is_reserved_ahead_without_stopping_other_creates(
        self, world: World
    ) -> None:
        """A reservation is a commit (an fsync); the create that takes the middle number of a
        block reserves the next one while the others keep taking numbers."""
        engine, account = world.engine, self._account_id(world)
        numbers = InvoiceNumbers(block=4)
        real_reserve = numbers._reserve
        slow, entered = threading.Event(), threading.Event()
        calls: list[int] = []

        def reserve(engine_: sa.Engine, account_id: int) -> int:
            calls.append(account_id)
            if len(calls) == 2:  # the reservation ahead: hold it until the others are done
                entered.set()
                assert slow.wait(10)
            return real_reserve(engine_, account_id)

        numbers._reserve = reserve  # type: ignore[method-assign]

        def take() -> int:
            with Session(engine) as session:
                return numbers.take(session, engine, account)

        first = take()  # reserves [first, first + 4)
        with ThreadPoolExecutor(1) as pool:
            second = pool.submit(take)  # the middle number: reserves the next block ahead
            assert entered.wait(10)
            third, fourth = take(), take()  # from the current block, not waiting
            slow.set()
            assert second.result(10) == first + 1
        assert (third, fourth) == (first + 2, first + 3)
        fifth = take()  # from the spare: no reservation while waiting
        assert len(calls) == 2
        assert fifth > fourth

    def test_a_request_that_already_wrote_never_waits_for_itself(self, world: World) -> None:
        """SQLite has one writer: a request holding it takes its number in its own
        transaction (a side transaction would wait for the request until the busy timeout)."""
        account = self._account_id(world)
        engine = world.engine
        if engine.dialect.name == "sqlite":
            # Same file, same in-process write gate, but a 0.5 s wait: a side transaction that
            # waited for the request holding the write lock raises "database is locked" here
            # instead of sitting out the engine's 30 s.
            engine = make_engine(world.engine.url, connect_args={"timeout": 0.5})
        touch = sa.text("UPDATE api_keys SET name = name WHERE id = :a")  # any write
        nobody = {"a": "key_nobody"}
        numbers = InvoiceNumbers(block=8)
        taken = []
        try:
            for _ in range(2):
                with Session(engine) as session:
                    session.execute(touch, nobody)  # the request writes first
                    taken.append(numbers.take(session, engine, account))
                    session.rollback()
        finally:
            if engine is not world.engine:
                engine.dispose()
        if engine.dialect.name == "sqlite":
            assert taken[1] == taken[0]  # inside the request: rolled back with it
        else:
            assert taken[1] == taken[0] + 1
