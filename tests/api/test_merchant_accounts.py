"""Merchant router accounts: one per merchant and chain, an address that keeps its invoices,
and the owner's reclaim of an address another merchant recorded first (ownership proof, the
squatter's unpaid invoices invalidated, races with invoice creation on both databases)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import sqlalchemy as sa
from eth_account import Account
from eth_account.signers.local import LocalAccount
from sqlmodel import Session

from api.operators import OperatorKeys
from api.runtime import chain_info_for
from api.settlement import account_proof
from api.settlement import invoices as settlement
from api.settlement import repository as repo
from api.settlement.errors import AccountExistsError, MerchantAccountMissingError
from api.settlement.invoices import InvoiceNumbers
from contracts import load_artifact
from tests.api.conftest import auth
from tests.api.test_resources_crm import World, make_world
from tests.api.test_resources_invoices import CHAIN_ID, _deliveries, create, deployment, world
from wallet.chain import Chain, dev_accounts
from wallet.deployment import Deployment, deploy_contracts
from wallet.secrets import PrivateKey
from wallet.signing import Signer, sign_message

__all__ = ["deployment", "world"]  # fixtures shared with test_resources_invoices


class TestAddressReclaim:
    """A merchant that recorded another's exact router registration first gives the address
    back to the merchant that proves control of it, unless invoices were made on it."""

    @pytest.fixture
    def setting(self, make_app, new_key, db, tester_chain: Chain) -> Iterator[tuple]:
        owner, _merchant, payout, operator = tester_chain.dev_accounts()[:4]
        fresh = deploy_contracts(tester_chain, owner)
        body = {"payout": payout.address, "operator": operator.address}
        merchant = _register_fresh(tester_chain, fresh, body)  # accounts outlive a test
        info = dataclasses.replace(chain_info_for(tester_chain, fresh), chain_id=CHAIN_ID)
        signers = OperatorKeys({operator.address: Signer(PrivateKey(bytes(operator.key)))})
        worlds = make_world(make_app, new_key, db, chain_info=info, signers=signers)
        with contextlib.closing(worlds):
            world = next(worlds)
            body["address"] = merchant.address
            squat = world.client.post(
                f"/v1/merchants/{world.b.id}/account", json=body, headers=auth(world.b.merchant)
            )
            assert squat.status_code == 200, squat.text
            yield world, body, PrivateKey(bytes(merchant.key)), fresh

    @staticmethod
    def _proof(world: World, tenant, key: PrivateKey, address: str) -> dict:
        r = world.client.get(
            f"/v1/merchants/{tenant.id}/account/link_message",
            params={"address": address},
            headers=auth(tenant.merchant),
        )
        assert r.status_code == 200, r.text
        doc = r.json()
        return {
            "proof_signature": "0x" + sign_message(doc["message"], key).hex(),
            "proof_valid_until": doc["valid_until"],
        }

    @staticmethod
    def _holder(world: World) -> list[str | None]:
        """Which of a and b the server records the address for."""
        out: list[str | None] = []
        for tenant in (world.a, world.b):
            r = world.client.get(
                f"/v1/merchants/{tenant.id}/account", headers=auth(tenant.merchant)
            )
            out.append(r.json()["address"] if r.status_code == 200 else None)
        return out

    def test_the_owner_reclaims_with_a_proof(self, setting) -> None:
        world, body, key, _fresh = setting
        path, h = f"/v1/merchants/{world.a.id}/account", auth(world.a.merchant)
        r = world.client.post(path, json=body, headers=h)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "account_address_taken")
        assert "link_message" in r.json()["error"]["message"]
        link = world.client.get(
            f"{path}/link_message", params={"address": body["address"]}, headers=h
        ).json()
        assert link["valid_until"] == int(world.clock.now().timestamp()) + 3600
        assert f"merchant: {world.a.id}\n" in link["message"]
        assert f"chain: {CHAIN_ID}\n" in link["message"]

        r = world.client.post(path, json=body | self._proof(world, world.a, key, body["address"]))
        assert r.status_code == 401  # the proof is no key: the caller still authenticates
        r = world.client.post(
            path, json=body | self._proof(world, world.a, key, body["address"]), headers=h
        )
        assert r.status_code == 200, r.text
        assert self._holder(world) == [body["address"], None]
        assert create(world, world.a.merchant).status_code == 200  # invoices sign at once
        for tenant, action in ((world.a, "reclaimed"), (world.b, "released")):
            entries = world.client.get(
                "/v1/audit_log",
                params={"action": f"merchant_account.{action}"},
                headers=auth(tenant.merchant),
            ).json()["data"]
            assert len(entries) == 1, (action, entries)
            assert entries[0]["detail"]["to_merchant"] == int(world.a.id)

    def test_bad_proofs_move_nothing(self, setting) -> None:
        world, body, key, _fresh = setting
        path, h = f"/v1/merchants/{world.a.id}/account", auth(world.a.merchant)
        good = self._proof(world, world.a, key, body["address"])
        now = int(world.clock.now().timestamp())
        for_b = self._proof(world, world.b, key, body["address"])
        by_other = self._proof(world, world.a, PrivateKey(os.urandom(32)), body["address"])
        cases = [
            (by_other, 400, "invalid_ownership_proof", "proof_signature"),
            (for_b, 400, "invalid_ownership_proof", "proof_signature"),  # names merchant b
            (good | {"proof_valid_until": now + 60}, 400, "invalid_ownership_proof", None),
            (good | {"proof_valid_until": now}, 400, "invalid_ownership_proof", None),
            ({"proof_signature": good["proof_signature"]}, 400, "parameter_invalid", None),
            (
                {"proof_signature": "0x" + "00" * 65, "proof_valid_until": now + 60},
                400,
                "invalid_ownership_proof",
                "proof_signature",
            ),
            (good | {"proof_signature": "0xabc"}, 422, None, "proof_signature"),
        ]
        for proof, status, code, param in cases:
            r = world.client.post(path, json=body | proof, headers=h)
            assert r.status_code == status, (proof, r.text)
            error = r.json()["error"]
            assert code is None or error["code"] == code, (proof, error)
            assert param is None or error["param"] == param, (proof, error)
        day = self._proof(world, world.a, key, body["address"])
        world.clock.advance(timedelta(hours=2))
        r = world.client.post(path, json=body | day, headers=h)
        assert (r.status_code, r.json()["error"]["param"]) == (400, "proof_valid_until")
        assert self._holder(world) == [None, body["address"]]

    def test_the_holders_unpaid_invoices_are_invalidated(self, setting) -> None:
        """One invoice must not let a squatter keep the owner's address: it could only ever
        pay the owner's payout, so the move invalidates it and tells its merchant."""
        world, body, key, _fresh = setting
        hook = world.client.post(
            "/v1/webhook_endpoints",
            json={"url": "http://127.0.0.1:9/hooks", "enabled_events": ["invoice.invalid"]},
            headers=auth(world.b.merchant),
        )
        assert hook.status_code == 200, hook.text
        # an expired one too: its intent stays payable for the late window, and a payment
        # then would have settled it (and followed up the squatter's customer) with the
        # money at the owner's payout
        lapsed = create(world, world.b.merchant, expires_in=60).json()
        world.clock.advance(timedelta(seconds=60) + settlement.EXPIRY_GRACE)
        with Session(world.engine) as session, session.begin():
            assert [i.id for i in settlement.expire_due(session, world.clock)] == [lapsed["id"]]
        theirs = create(world, world.b.merchant).json()
        path, h = f"/v1/merchants/{world.a.id}/account", auth(world.a.merchant)
        r = world.client.post(
            path, json=body | self._proof(world, world.a, key, body["address"]), headers=h
        )
        assert r.status_code == 200, r.text
        assert self._holder(world) == [body["address"], None]
        for invoice in (theirs, lapsed):
            shown = world.client.get(
                f"/v1/invoices/{invoice['id']}", headers=auth(world.b.merchant)
            ).json()
            assert (shown["state"], shown["status"]) == ("invalid", "marked")
            entries = world.client.get(
                "/v1/audit_log",
                params={"object_id": invoice["id"]},
                headers=auth(world.b.merchant),
            ).json()["data"]
            assert [e["detail"] for e in entries] == [{"reason": "account_reclaimed"}]
        assert _deliveries(world, "invoice.invalid") == 2
        r = create(world, world.b.merchant)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "merchant_account_missing")
        assert create(world, world.a.merchant).status_code == 200

    def test_an_invoice_from_a_stale_account_cache_is_refused(self, setting, db) -> None:
        """A process that still holds the squatter's account row (the API caches it for a
        second) cannot put an invoice on the moved record."""
        world, body, key, fresh = setting
        with Session(db) as session:
            stale = repo.account_row(session, int(world.b.id), CHAIN_ID)
        r = world.client.post(
            f"/v1/merchants/{world.a.id}/account",
            json=body | self._proof(world, world.a, key, body["address"]),
            headers=auth(world.a.merchant),
        )
        assert r.status_code == 200, r.text
        with (
            Session(db) as session,
            session.begin(),
            pytest.raises(MerchantAccountMissingError, match="changed"),
        ):
            _create_on(session, world, fresh, int(world.b.id), stale)
        with Session(db) as session:
            assert not repo.account_has_invoices(session, stale.id)

    def test_reclaim_and_invoice_create_racing(self, setting, db) -> None:
        """Whichever of the two takes the account row first, no payable invoice of the
        squatter is left on the owner's record (PostgreSQL: row locks; SQLite: one writer)."""
        world, body, _key, fresh = setting
        a_id, b_id = int(world.a.id), int(world.b.id)
        with Session(db) as session:
            stale = repo.account_row(session, b_id, CHAIN_ID)

        def reclaim() -> None:
            with Session(db) as session, session.begin():
                account_proof.reclaim_address(
                    session, a_id, CHAIN_ID, body["address"], actor="test", clock=world.clock
                )

        if db.dialect.name != "postgresql":  # one writer: the two run one after the other
            with Session(db) as session, session.begin():
                made = _create_on(session, world, fresh, b_id, stale)
            reclaim()
        else:
            # the create holds its insert (a key-share lock on the account row) while the
            # reclaim waits for it, then sees and invalidates the invoice
            with ThreadPoolExecutor(1) as pool, Session(db) as session:
                session.begin()
                made = _create_on(session, world, fresh, b_id, stale)
                waiting = pool.submit(reclaim)
                _wait_for_a_lock_wait(db, "api_merchant_account")
                session.commit()
                waiting.result(timeout=60)
        with Session(db) as session:
            invoice = repo.get_invoice(session, b_id, made.id)
            assert invoice is not None
            assert invoice.state == "invalid"
            held = repo.account_row(session, a_id, CHAIN_ID)
            assert held is not None
            assert held.id == stale.id

    def test_an_invoice_create_waiting_on_a_reclaim_is_refused(self, setting, db) -> None:
        world, body, _key, fresh = setting
        a_id, b_id = int(world.a.id), int(world.b.id)
        with Session(db) as session:
            stale = repo.account_row(session, b_id, CHAIN_ID)

        def create_later() -> Exception | None:
            with Session(db) as session, session.begin():
                try:
                    _create_on(session, world, fresh, b_id, stale)
                except MerchantAccountMissingError as exc:
                    return exc
            return None

        with ThreadPoolExecutor(1) as pool, Session(db) as session:
            session.begin()
            account_proof.reclaim_address(
                session, a_id, CHAIN_ID, body["address"], actor="test", clock=world.clock
            )
            if db.dialect.name == "postgresql":  # the create waits on the locked account row
                waiting = pool.submit(create_later)
                _wait_for_a_lock_wait(db, "api_merchant_account")
                session.commit()
            else:  # SQLite's one writer: the create can only come after the commit
                session.commit()
                waiting = pool.submit(create_later)
            refused = waiting.result(timeout=60)
        assert isinstance(refused, MerchantAccountMissingError)
        with Session(db) as session:
            assert not repo.account_has_invoices(session, stale.id)

    def test_only_as_the_first_account_on_the_chain(self, setting, tester_chain: Chain) -> None:
        world, body, key, fresh = setting
        other = _register_fresh(tester_chain, fresh, body)
        path, h = f"/v1/merchants/{world.a.id}/account", auth(world.a.merchant)
        mine = world.client.post(path, json=body | {"address": other.address}, headers=h)
        assert mine.status_code == 200, mine.text
        r = world.client.post(
            path, json=body | self._proof(world, world.a, key, body["address"]), headers=h
        )
        assert (r.status_code, r.json()["error"]["code"]) == (409, "account_address_in_use")
        assert self._holder(world) == [other.address, body["address"]]


class TestRegistration:
    def test_an_account_with_invoices_keeps_its_address(self, world: World) -> None:
        path, h = f"/v1/merchants/{world.a.id}/account", auth(world.a.merchant)
        account = world.client.get(path, headers=h).json()
        assert create(world, world.a.merchant).status_code == 200
        body = {k: account[k] for k in ("address", "payout", "operator")}
        r = world.client.post(path, json=body | {"address": "0x" + os.urandom(20).hex()}, headers=h)
        assert (r.status_code, r.json()["error"]["code"]) == (409, "account_address_in_use")
        assert world.client.get(path, headers=h).json()["address"] == account["address"]
        r = world.client.post(path, json=body | {"payout": "0x" + "ab" * 20}, headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["payout"].lower() == "0x" + "ab" * 20

    def test_one_account_per_merchant_and_chain_even_concurrently(self, world: World, db) -> None:
        r = world.client.post("/v1/merchants", json={"name": "Fresh"}, headers=auth(world.admin))
        merchant_id = int(r.json()["id"])

        def register(session: Session) -> object:
            return settlement.register_account(
                session,
                merchant_id,
                chain_id=CHAIN_ID,
                address="0x" + os.urandom(20).hex(),
                payout="0x" + "11" * 20,
                operator="0x" + "22" * 20,
                clock=world.clock,
            )

        if db.dialect.name == "postgresql":  # two requests, each inside its transaction
            with ThreadPoolExecutor(1) as pool, Session(db) as first:
                first.begin()
                register(first)
                second = pool.submit(lambda: _in_transaction(db, register))
                _wait_for_a_lock_wait(db, "api_merchant_account")
                first.commit()
                outcome = second.result(timeout=60)
            assert isinstance(outcome, AccountExistsError), outcome
        else:  # one writer: the second registration updates the first
            _in_transaction(db, register)
            _in_transaction(db, register)
        with db.connect() as conn:
            count = conn.execute(
                sa.text("SELECT count(*) FROM api_merchant_account WHERE merchant_id = :m"),
                {"m": merchant_id},
            ).scalar_one()
        assert count == 1
        with pytest.raises(sa.exc.IntegrityError), db.begin() as conn:  # the key itself
            conn.execute(
                sa.text(
                    "INSERT INTO api_merchant_account (merchant_id, chain_id, address, payout, "
                    "operator, next_invoice_number, created_at) VALUES (:m, :c, :a, :a, :a, 1, "
                    ":t)"
                ),
                {"m": merchant_id, "c": CHAIN_ID, "a": "0x" + "cd" * 20, "t": world.clock.now()},
            )


def _wait_for_a_lock_wait(db: sa.Engine, statement: str, limit: float = 30.0) -> None:
    """Until a PostgreSQL backend runs ``statement`` waiting on a lock, so the test exercises
    the blocked path it is about; fails after ``limit`` s (a hang guard, not a timing check)."""
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND query LIKE :statement"
    )
    deadline = time.monotonic() + limit
    with db.connect() as conn:
        while time.monotonic() < deadline:
            if conn.execute(query, {"statement": f"%{statement}%"}).scalar_one():
                return
            conn.rollback()
            time.sleep(0.01)
    pytest.fail(f"no backend waited on a lock running {statement!r} within {limit:g} s")


def _in_transaction(db: sa.Engine, work) -> object:  # type: ignore[no-untyped-def]
    """``work(session)`` committed; a domain error it raises is returned."""
    try:
        with Session(db) as session, session.begin():
            return work(session)
    except AccountExistsError as exc:
        return exc


def _create_on(session: Session, world: World, fresh: Deployment, merchant_id: int, account):  # type: ignore[no-untyped-def]
    """An invoice for ``merchant_id`` made with the given (possibly stale) account row."""
    operator = dev_accounts()[3]
    numbers = InvoiceNumbers()
    return settlement.create_invoice(
        session,
        settlement.InvoiceRequest(
            merchant_id=merchant_id,
            token=fresh.token,
            amount=100,
            order_id=f"o-{uuid.uuid4().hex[:8]}",
        ),
        chain_id=CHAIN_ID,
        router=fresh.router,
        signer=Signer(PrivateKey(bytes(operator.key))),
        clock=world.clock,
        allocate=lambda account_id: numbers.take(session, session.get_bind(), account_id),
        account=account,
    )


def _register_fresh(chain: Chain, deployment: Deployment, body: dict) -> LocalAccount:
    """A new funded address that calls ``registerMerchant(payout, operator)`` on the router."""
    account = Account.create()
    chain.fund(account.address, 10**18)
    router = chain.w3.eth.contract(
        address=deployment.router, abi=load_artifact("PaymentRouter").abi
    )
    tx = router.functions.registerMerchant(body["payout"], body["operator"]).build_transaction(
        {"from": account.address, "nonce": 0, "gas": 200_000, "chainId": chain.chain_id}
    )
    sent = chain.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
    assert chain.w3.eth.wait_for_transaction_receipt(sent)["status"] == 1
    return account
