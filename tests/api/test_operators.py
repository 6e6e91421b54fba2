"""Operator signers from the vault: parsing, unlocking, their policy, and ``followpay serve`` on a
real node signing invoices that the router accepts."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from api.db import make_engine, session_factory, session_scope
from api.keys.service import create_key
from api.operators import load_operator_signers, parse_operator_refs
from api.settings import get_settings
from tests.api.conftest import free_port
from tests.support import open_market
from wallet.chain import Chain
from wallet.errors import PolicyViolationError, VaultError, WalletNotFoundError, WrongPasswordError
from wallet.keys import generate_mnemonic
from wallet.policy import SigningPolicy
from wallet.signing import (
    PaymentIntent,
    from_compact,
    payment_intent_typed_data,
    recover_typed_data,
)
from wallet.vault import Vault

ROUTER = "0x" + "11" * 20
TOKEN = "0x" + "22" * 20
PASSWORD = "correct horse battery staple"
SCRIPT = Path(sys.executable).with_name("followpay")


def _vault(home: Path) -> Vault:
    """A vault with HD wallet ``ops`` and single key ``solo`` (weak KDF: tests only)."""
    vault = Vault(home, scrypt_n=2**12, allow_weak_kdf=True)
    vault.create("ops", generate_mnemonic(12), PASSWORD)
    other = Vault(home / "other", scrypt_n=2**12, allow_weak_kdf=True)
    other.create("tmp", generate_mnemonic(12), PASSWORD)
    vault.import_key("solo", other.unlock("tmp", PASSWORD).private_key(0), PASSWORD)
    return vault


class TestParseOperatorRefs:
    def test_names_and_indexes(self):
        refs = parse_operator_refs(" ops, ops:3 ,solo,")
        assert [(r.wallet, r.index) for r in refs] == [("ops", 0), ("ops", 3), ("solo", 0)]

    def test_a_key_bound_to_one_merchant(self):
        refs = parse_operator_refs("42=ops:1, solo")
        assert [(r.wallet, r.index, r.merchant_id) for r in refs] == [
            ("ops", 1, 42),
            ("solo", 0, None),
        ]

    def test_empty_is_none(self):
        assert parse_operator_refs("") == ()

    @pytest.mark.parametrize(
        ("text", "says"),
        [
            ("ops:x", "'ops:x' is not a wallet name or name:index"),
            ("ops:-1", "is not a wallet name or name:index"),
            (":2", "is not a wallet name or name:index"),
            ("../etc", "wallet name must be"),
            ("ops, ops:0", "listed twice"),
            ("1=ops, 2=ops", "listed twice"),
            ("shop=ops", "bound as merchant_id=name"),
            ("=ops", "bound as merchant_id=name"),
        ],
    )
    def test_bad_entries_are_named(self, text, says):
        with pytest.raises(ValueError, match=says):
            parse_operator_refs(text)

    def test_settings_refuse_a_bad_list_when_built(self):
        with pytest.raises(ValueError, match="is not a wallet name"):
            get_settings(operators="ops:x")


class TestLoadOperatorSigners:
    def test_each_ref_yields_its_key(self, tmp_path):
        vault = _vault(tmp_path)
        refs = parse_operator_refs("ops, ops:2, solo")
        signers = load_operator_signers(vault, refs, SecretStr(PASSWORD), ROUTER)
        wallet = vault.unlock("ops", PASSWORD)
        expected = {
            wallet.address(0).lower(),
            wallet.address(2).lower(),
            vault.info("solo").first_address.lower(),
        }
        assert set(signers) == expected
        for address, signer in signers.items():
            assert signer.address.lower() == address

    def test_a_bound_key_signs_for_its_merchant_only(self, tmp_path):
        vault = _vault(tmp_path)
        keys = load_operator_signers(
            vault, parse_operator_refs("7=ops, solo"), SecretStr(PASSWORD), ROUTER
        )
        ops = vault.unlock("ops", PASSWORD).address(0)
        solo = vault.info("solo").first_address
        assert (keys.merchant_of(ops), keys.merchant_of(solo)) == (7, None)
        assert keys.for_merchant(7, ops.upper().replace("0X", "0x")) is keys[ops]
        assert keys.for_merchant(8, ops) is None  # bound to merchant 7
        assert keys.for_merchant(8, solo) is keys[solo]  # unbound: any merchant naming it

    def test_signatures_recover_to_the_operator(self, tmp_path):
        vault = _vault(tmp_path)
        ((address, signer),) = load_operator_signers(
            vault, parse_operator_refs("ops:1"), SecretStr(PASSWORD), ROUTER
        ).items()
        intent = PaymentIntent(
            merchant="0x" + "33" * 20, token=TOKEN, amount=5, fee=0, invoice_id=9, deadline=10**10
        )
        r, vs = signer.sign_intent(intent, chain_id=31337, router=ROUTER)
        typed = payment_intent_typed_data(intent, chain_id=31337, router=ROUTER)
        v, r_, s_ = from_compact(r, vs)
        assert recover_typed_data(typed, r_ + s_ + bytes([v])).lower() == address

    def test_default_policy_signs_intents_for_this_router_only(self, tmp_path):
        vault = _vault(tmp_path)
        (signer,) = load_operator_signers(
            vault, parse_operator_refs("ops"), SecretStr(PASSWORD), ROUTER
        ).values()
        intent = PaymentIntent(
            merchant="0x" + "33" * 20, token=TOKEN, amount=5, fee=0, invoice_id=1, deadline=10**10
        )
        with pytest.raises(PolicyViolationError):
            signer.sign_intent(intent, chain_id=31337, router="0x" + "44" * 20)
        with pytest.raises(PolicyViolationError):
            signer.sign_message("login")
        with pytest.raises(PolicyViolationError):  # no transaction at all, not even to the router
            signer.sign_transaction(
                {
                    "to": ROUTER,
                    "data": "0xa9059cbb" + "00" * 64,
                    "nonce": 0,
                    "gas": 60_000,
                    "maxFeePerGas": 10**9,
                    "maxPriorityFeePerGas": 1,
                    "chainId": 31337,
                    "value": 0,
                }
            )

    def test_a_saved_policy_replaces_the_default(self, tmp_path):
        vault = _vault(tmp_path)
        vault.save_policy(
            "ops", SigningPolicy(allowed_contracts=frozenset({ROUTER}), allow_messages=True)
        )
        (signer,) = load_operator_signers(
            vault, parse_operator_refs("ops"), SecretStr(PASSWORD), ROUTER
        ).values()
        assert len(signer.sign_message("login")) == 65

    def test_wrong_password(self, tmp_path):
        vault = _vault(tmp_path)
        with pytest.raises(WrongPasswordError):
            load_operator_signers(vault, parse_operator_refs("ops"), SecretStr("wrong"), ROUTER)

    def test_missing_password_is_named(self, tmp_path):
        vault = _vault(tmp_path)
        with pytest.raises(VaultError, match="needs FOLLOWPAY_PASSWORD"):
            load_operator_signers(vault, parse_operator_refs("ops"), None, ROUTER)

    def test_missing_wallet(self, tmp_path):
        vault = _vault(tmp_path)
        with pytest.raises(WalletNotFoundError, match="no wallet named 'nope'"):
            load_operator_signers(
                vault, parse_operator_refs("ops, nope"), SecretStr(PASSWORD), ROUTER
            )

    def test_one_key_twice_is_refused(self, tmp_path):
        vault = _vault(tmp_path)
        solo = vault.unlock("solo", PASSWORD).private_key(0)
        vault.import_key("solo2", solo, PASSWORD)
        with pytest.raises(VaultError, match="repeats key"):
            load_operator_signers(
                vault, parse_operator_refs("solo, solo2"), SecretStr(PASSWORD), ROUTER
            )


# -- followpay serve against anvil --------------------------------------------------------------


@pytest.fixture
def node(anvil_chain: Chain) -> Iterator[Chain]:
    snapshot = anvil_chain.snapshot()
    try:
        yield anvil_chain
    finally:
        anvil_chain.revert(snapshot)


def _env(home: Path, chain: Chain, manifest: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWPAY_")}
    assert chain.rpc_url is not None
    env.update(
        FOLLOWPAY_HOME=str(home),
        FOLLOWPAY_CHAIN="rpc",
        FOLLOWPAY_RPC_URL=chain.rpc_url,
        FOLLOWPAY_MANIFEST=str(manifest),
        FOLLOWPAY_MASTER_KEY="cd" * 32,
        **extra,
    )
    return env


def _command() -> list[str]:
    return [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "api.cli"]


class TestServeOnANode:
    """``followpay serve`` (not embedded) with an operator from the vault: the invoice it signs is
    paid on the router, byte for byte as served."""

    def test_serve_signs_invoices_the_router_accepts(self, node, tmp_path):
        market = open_market(node)
        home = tmp_path / "home"
        vault = _vault(home)
        operator = vault.unlock("ops", PASSWORD).address(1)
        # the merchant points its on-chain operator at the vault key
        market.transact(market.router.functions.setOperator(operator), market.merchant)
        manifest = tmp_path / "deployment.json"
        manifest.write_text(json.dumps(market.deployment.to_json()))
        port = free_port()
        env = _env(
            home,
            node,
            manifest,
            FOLLOWPAY_OPERATORS="ops:1",
            FOLLOWPAY_PASSWORD=PASSWORD,
            FOLLOWPAY_API_ROOT_PATH="/pay",  # as behind a proxy that strips /pay
        )
        log = (tmp_path / "serve.log").open("w")
        proc = subprocess.Popen(
            [*_command(), "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            self._wait(proc, base, tmp_path / "serve.log")
            engine = make_engine(f"sqlite:///{home / 'followpay.sqlite3'}")
            with session_scope(session_factory(engine)) as session:
                _, admin = create_key(session, None, "admin", False)
            with httpx.Client(base_url=base, timeout=10) as client:
                assert client.get("/openapi.json").json()["servers"] == [{"url": "/pay"}]
                mid = self._post(client, admin, "/v1/merchants", {"name": "Shop"})["id"]
                with session_scope(session_factory(engine)) as session:
                    _, key = create_key(session, mid, "merchant", False)
                engine.dispose()
                account = self._post(
                    client,
                    key,
                    f"/v1/merchants/{mid}/account",
                    {
                        "address": market.merchant.address,
                        "payout": market.payout.address,
                        "operator": operator,
                    },
                )
                assert account["signer_available"] is True
                invoice = self._post(
                    client, key, "/v1/invoices", {"amount": "2500000", "order_id": "o-1"}
                )
        finally:
            proc.terminate()
            proc.wait(20)
            log.close()
        assert PASSWORD not in (tmp_path / "serve.log").read_text()
        assert invoice["decimals"] == 6  # read from the token on the node
        spec = invoice["intent"]
        intent = PaymentIntent(
            merchant=spec["merchant"],
            token=spec["token"],
            amount=int(spec["amount"]),
            fee=int(spec["fee"]),
            invoice_id=int(spec["invoice_id"]),
            payer=spec["payer"],
            deadline=int(spec["deadline"]),
        )
        r = bytes.fromhex(invoice["signature"]["r"][2:])
        vs = bytes.fromhex(invoice["signature"]["vs"][2:])
        assert market.pay_signed(intent, r, vs, market.payers[0])["status"] == 1
        assert market.router.functions.isSettled(market.merchant.address, intent.invoice_id).call()

        # the shell signs with the same vault key: 1.5 tokens at the token's 6 decimals
        result = subprocess.run(
            [
                *_command(),
                "invoices",
                "create",
                "--merchant",
                str(mid),
                "--amount",
                "1.5",
                "--order",
                "o-2",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        made = json.loads(result.stdout)
        assert made["amount"] == "1500000"
        shell_intent = dataclasses.replace(
            intent, amount=1_500_000, invoice_id=made["number"], deadline=made["deadline"]
        )
        receipt = market.pay_signed(
            shell_intent,
            bytes.fromhex(made["signature_r"][2:]),
            bytes.fromhex(made["signature_vs"][2:]),
            market.payers[1],
        )
        assert receipt["status"] == 1

    def test_a_wrong_password_stops_serve_with_one_line(self, node, tmp_path):
        market = open_market(node)
        home = tmp_path / "home"
        _vault(home)
        manifest = tmp_path / "deployment.json"
        manifest.write_text(json.dumps(market.deployment.to_json()))
        env = _env(home, node, manifest, FOLLOWPAY_OPERATORS="ops", FOLLOWPAY_PASSWORD="wrong")
        result = subprocess.run(
            [*_command(), "serve", "--port", str(free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert lines[-1].startswith("error: "), result.stderr
        assert "password" in lines[-1].lower(), result.stderr

    @staticmethod
    def _wait(proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(base + "/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"serve did not start: {log.read_text()[-2000:]}")

    @staticmethod
    def _post(client: httpx.Client, key: str, path: str, body: dict[str, object]) -> dict:
        r = client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        return r.json()


class TestServeWithoutOperators:
    """A server holding no signing key (a public checkout instance) still reads the chain of
    the deployment in its manifest: checkout pages and payment URIs of invoices issued
    elsewhere need the router and the token's decimals. Without a manifest it serves without
    the chain (those answer that the chain is unavailable)."""

    def _app(self, home: Path, node: Chain, manifest: Path):
        from api.commands.serve import _production_app
        from api.runtime import Runtime

        settings = get_settings(
            home=home,
            chain="rpc",
            rpc_url=node.rpc_url,
            manifest=manifest,
            master_key=SecretStr("cd" * 32),
        )
        return _production_app(Runtime(settings))

    def test_with_a_manifest_the_chain_is_known(self, node, tmp_path):
        market = open_market(node)
        manifest = tmp_path / "deployment.json"
        manifest.write_text(json.dumps(market.deployment.to_json()))
        chain = self._app(tmp_path / "home", node, manifest).state.chain_info
        assert chain is not None
        assert (chain.chain_id, chain.router, chain.token) == (
            node.chain_id,
            market.deployment.router,
            market.deployment.token,
        )
        assert chain.decimals == 6

    def test_without_one_it_serves_without_the_chain(self, node, tmp_path):
        app = self._app(tmp_path / "home", node, tmp_path / "missing.json")
        assert app.state.chain_info is None
