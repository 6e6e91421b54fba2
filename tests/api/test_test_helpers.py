"""/v1/test_helpers on the embedded stack: a developer on ``followpay serve`` gives a merchant a
router account and pays invoices on the in-process chain, which the embedded indexer settles;
a server on a real node has no such routes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.db import session_factory, session_scope
from api.db import upgrade as upgrade_database
from api.embedded import EmbeddedStack
from api.keys.service import create_key
from api.settings import get_settings
from crm import KeyRing, SystemClock
from tests.api.conftest import auth, serve_app
from wallet.chain import Chain, ChainConfig, connect
from wallet.tokens import Token


@pytest.fixture(scope="module")
def chain() -> Iterator[Chain]:
    with connect(ChainConfig(backend="tester")) as tester:
        yield tester


@pytest.fixture
def stack(chain: Chain, tmp_path: Path) -> Iterator[EmbeddedStack]:
    url = f"sqlite:///{tmp_path / 'embedded.sqlite3'}"
    upgrade_database(url)
    snapshot = chain.snapshot()
    embedded = EmbeddedStack(chain, url, KeyRing.generate(), SystemClock(), "http://127.0.0.1:8000")
    try:
        yield embedded
    finally:
        embedded.close()
        chain.revert(snapshot)


def _keys(stack: EmbeddedStack, client: TestClient) -> tuple[str, str, str]:
    """A merchant with its key, and another merchant's key."""
    with session_scope(session_factory(stack.api_engine)) as session:
        _, admin = create_key(session, None, "admin", False, name="test")
    found = []
    for name in ("Tea House", "Other"):
        merchant = client.post("/v1/merchants", json={"name": name}, headers=auth(admin))
        mid = merchant.json()["id"]
        key = client.post(
            "/v1/api_keys", json={"role": "merchant", "merchant_id": mid}, headers=auth(admin)
        ).json()["secret"]
        found += [mid, key]
    return found[0], found[1], found[3]


def _open_invoice(
    stack: EmbeddedStack, client: TestClient, amount: int
) -> tuple[dict[str, str], dict[str, Any]]:
    """A merchant with a sandbox account and one new invoice: (its key's headers, invoice)."""
    mid, key, _ = _keys(stack, client)
    h = auth(key)
    client.post(f"/v1/test_helpers/merchants/{mid}/account", headers=h)
    invoice = client.post(
        "/v1/invoices", json={"amount": str(amount), "order_id": "o-1"}, headers=h
    ).json()
    return h, invoice


class TestOnTheEmbeddedStack:
    def test_account_then_invoices_paid_both_ways_and_settled(self, stack: EmbeddedStack):
        with TestClient(stack.app()) as client:
            mid, key, other = _keys(stack, client)
            h = auth(key)
            r = client.post(f"/v1/test_helpers/merchants/{mid}/account", headers=auth(other))
            assert r.status_code == 404  # another merchant's
            r = client.post(f"/v1/test_helpers/merchants/{mid}/account", headers=h)
            assert r.status_code == 200, r.text
            assert r.json()["signer_available"] is True
            r = client.post(f"/v1/test_helpers/merchants/{mid}/account", headers=h)
            assert (r.status_code, r.json()["error"]["code"]) == (409, "account_exists")

            contact = client.post(
                "/v1/contacts",
                json={"name": "Ada", "email": "ada@example.com", "time_zone": "UTC"},
                headers=h,
            ).json()
            client.post(
                f"/v1/contacts/{contact['id']}/consents",
                json={"action": "grant", "purpose": "service_followup", "channel": "email"},
                headers=h,
            )
            assert client.post("/v1/followup_policies", json={}, headers=h).status_code == 200
            paid = {}
            for method, customer in (("permit", 4), ("approve", 9)):
                invoice = client.post(
                    "/v1/invoices",
                    json={
                        "amount": "12500000",
                        "order_id": f"o-{method}",
                        "contact_id": contact["id"],
                    },
                    headers=h,
                ).json()
                path = f"/v1/test_helpers/invoices/{invoice['id']}/pay"
                assert client.post(path, json={}, headers=auth(other)).status_code == 404
                r = client.post(path, json={"method": method, "customer": customer}, headers=h)
                assert r.status_code == 200, r.text
                paid[invoice["id"]] = r.json()
                assert r.json()["payer"] == stack.chain.dev_accounts()[customer].address

            settled = stack.indexer().poll_once().settled
            assert sorted(settled) == sorted(paid)
            for invoice_id in paid:
                shown = client.get(f"/v1/invoices/{invoice_id}", headers=h).json()
                assert shown["state"] == "settled"
                r = client.post(f"/v1/test_helpers/invoices/{invoice_id}/pay", headers=h)
                assert (r.status_code, r.json()["error"]["code"]) == (
                    409,
                    "invoice_state_invalid",
                )
            followups = client.get("/v1/followups", headers=h).json()["data"]
            assert len(followups) == 2
            token = Token(stack.chain, stack.deployment.token)
            payout = stack.chain.dev_accounts()[3].address
            assert token.balance_of(payout) == 2 * 12_500_000

    def test_paying_twice_before_the_indexer_runs_is_a_conflict(self, stack: EmbeddedStack):
        # The invoice is still `new` until the indexer settles it: the second pay must be
        # refused like a settled invoice's, not surface the router's revert as a 422.
        with TestClient(stack.app()) as client:
            h, invoice = _open_invoice(stack, client, 700)
            path = f"/v1/test_helpers/invoices/{invoice['id']}/pay"
            assert client.post(path, json={"customer": 4}, headers=h).status_code == 200
            r = client.post(path, json={"customer": 5}, headers=h)
            assert r.status_code == 409, r.text
            assert r.json()["error"]["code"] == "invoice_state_invalid"
            assert stack.indexer().poll_once().settled == [invoice["id"]]
            token = Token(stack.chain, stack.deployment.token)
            assert token.balance_of(stack.chain.dev_accounts()[3].address) == 700

    def test_bad_input_is_refused_and_pays_nothing(self, stack: EmbeddedStack):
        with TestClient(stack.app()) as client:
            h, invoice = _open_invoice(stack, client, 1)
            path = f"/v1/test_helpers/invoices/{invoice['id']}/pay"
            for body, param in (
                ({"customer": 3}, "customer"),  # the payout account, not a customer
                ({"customer": 10}, "customer"),
                ({"method": "wire"}, "method"),
            ):
                r = client.post(path, json=body, headers=h)
                assert (r.status_code, r.json()["error"]["param"]) == (422, param), body
            assert client.post("/v1/test_helpers/invoices/inv_nope/pay", headers=h).status_code == (
                404
            )
            assert stack.indexer().poll_once().settled == []


def test_a_server_on_a_real_node_has_no_test_helpers(tmp_path: Path) -> None:
    with TestClient(create_app(get_settings(home=tmp_path))) as client:
        r = client.post("/v1/test_helpers/invoices/inv_1/pay", headers=auth("fp_test_x"))
    assert (r.status_code, r.json()["error"]["code"]) == (404, "resource_missing")


def test_a_live_key_gets_no_test_helpers(stack: EmbeddedStack) -> None:
    with TestClient(stack.app()) as client:
        with session_scope(session_factory(stack.api_engine)) as session:
            mid = _keys(stack, client)[0]
            _, live = create_key(session, mid, "merchant", True)
        r = client.post(f"/v1/test_helpers/merchants/{mid}/account", headers=auth(live))
        assert (r.status_code, r.json()["error"]["param"]) == (403, "livemode")


def test_a_restart_on_the_same_database_is_refused_not_rolled_back(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    """``followpay serve`` makes a new in-process chain at every start, with the same chain id
    and contract addresses: on a database that indexed the last one, the indexer found every
    stored block replaced and rolled back every payment (settled invoices back to new,
    invoice.reorged sent), and the merchants' accounts were unknown to the new router."""
    from api.embedded import EarlierChainError

    assert stack.indexer().poll_once().to_block > 0  # the first server indexed its chain
    url = f"sqlite:///{tmp_path / 'embedded.sqlite3'}"
    with connect(ChainConfig()) as restarted, pytest.raises(EarlierChainError, match="earlier"):
        EmbeddedStack(restarted, url, KeyRing.generate(), SystemClock(), "http://127.0.0.1:8000")
    with connect(ChainConfig()) as fresh:  # a new home's database starts clean
        clean = tmp_path / "new-home.sqlite3"
        upgrade_database(f"sqlite:///{clean}")
        EmbeddedStack(
            fresh, f"sqlite:///{clean}", KeyRing.generate(), SystemClock(), "http://x"
        ).close()


def test_concurrent_registrations_of_one_merchant_register_on_chain_once(
    stack: EmbeddedStack, chain: Chain
) -> None:
    """Four requests with one Idempotency-Key (a client retrying) got one answer, but each
    funded and registered its own address before any committed: three stayed on chain."""
    app = stack.app()
    with TestClient(app) as client:
        mid, key, _ = _keys(stack, client)
    before = chain.w3.eth.block_number
    with serve_app(app) as base:
        barrier = threading.Barrier(4)

        def register(_: int) -> httpx.Response:
            with httpx.Client(base_url=base, timeout=60) as http:
                barrier.wait(timeout=30)
                return http.post(
                    f"/v1/test_helpers/merchants/{mid}/account",
                    headers=auth(key, **{"Idempotency-Key": "register-once"}),
                )

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(register, range(4)))
    assert {r.status_code for r in answers} == {200}
    assert len({r.content for r in answers}) == 1
    assert chain.w3.eth.block_number - before == 2  # one funding, one registerMerchant
