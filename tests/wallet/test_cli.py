"""``followpay wallet``: scriptable output, one-line errors, nothing written on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import missing
from tests.support import ChainSuite
from tests.wallet.conftest import CAST, FAST_N, PASSWORD, VECTORS, tree
from wallet import cli
from wallet.keys import HDWallet
from wallet.vault import Vault

DEV = "test test test test test test test test test test test junk"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def runner(home, monkeypatch):
    monkeypatch.setenv("FOLLOWPAY_PASSWORD", PASSWORD)
    monkeypatch.setattr(cli, "_vault", lambda: Vault(scrypt_n=FAST_N, allow_weak_kdf=True))
    return CliRunner()


def run(runner, *args, input=None, env=None):
    return runner.invoke(cli.app, list(args), input=input, env=env, catch_exceptions=False)


def one_line_error(result, needle: str) -> None:
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert needle in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""


class TestAddress:
    def test_stdin_prints_exactly_one_address(self, runner):
        result = run(runner, "address", "--mnemonic-stdin", input=DEV + "\n")
        assert result.exit_code == 0
        assert result.stdout == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266\n"

    def test_index_path_and_passphrase(self, runner, monkeypatch):
        monkeypatch.setenv("PP", "TREZOR")
        wallet = HDWallet.from_mnemonic(DEV, "TREZOR")
        result = run(
            runner,
            "address",
            "--mnemonic-stdin",
            "--passphrase-env",
            "PP",
            "--index",
            "3",
            input=DEV,
        )
        assert result.stdout.strip() == wallet.address(3)
        result = run(
            runner,
            "address",
            "--mnemonic-stdin",
            "--passphrase-env",
            "PP",
            "--path",
            "m/44'/60'/1'/0/0",
            input=DEV,
        )
        assert result.stdout.strip() == wallet.address(path="m/44'/60'/1'/0/0")

    def test_from_vault_without_password(self, runner, home):
        assert run(runner, "import", "--name", "w", "--mnemonic-stdin", input=DEV).exit_code == 0
        result = run(
            runner, "address", "--name", "w", "--index", "2", env={"FOLLOWPAY_PASSWORD": None}
        )
        assert result.stdout.strip() == "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"

    def test_custom_path_from_vault_needs_password(self, runner):
        run(runner, "import", "--name", "w", "--mnemonic-stdin", input=DEV)
        result = run(runner, "address", "--name", "w", "--path", "m/44'/60'/0'/0/1")
        assert result.stdout.strip() == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
        bad = run(
            runner, "address", "--name", "w", "--path", "m/1", env={"FOLLOWPAY_PASSWORD": "no"}
        )
        one_line_error(bad, "wrong password")

    @pytest.mark.parametrize(
        ("mnemonic", "needle"),
        [
            (DEV.replace("junk", "junq"), "word 12 is not in the BIP-39"),
            ("test " * 12, "checksum"),
            ("test test test", "has 3"),
            ("", "no mnemonic"),
        ],
    )
    def test_bad_mnemonics(self, runner, mnemonic, needle):
        one_line_error(run(runner, "address", "--mnemonic-stdin", input=mnemonic), needle)

    def test_mnemonic_is_never_an_argument(self, runner):
        one_line_error(run(runner, "address"), "--mnemonic-stdin")

    def test_missing_passphrase_variable(self, runner):
        result = run(
            runner, "address", "--mnemonic-stdin", "--passphrase-env", "NOPE_NOT_SET", input=DEV
        )
        one_line_error(result, "NOPE_NOT_SET")


class TestVaultCommands:
    def test_new_shows_mnemonic_once_on_stderr(self, runner, home):
        result = run(runner, "new", "--name", "fresh", "--words", "24")
        assert result.exit_code == 0
        address = result.stdout.strip()
        assert address.startswith("0x")
        assert len(result.stdout.splitlines()) == 1
        assert "shown once" in result.stderr
        listed = json.loads(run(runner, "list", "--json").stdout)
        assert listed[0]["address"] == address
        # the mnemonic is in the panel and nowhere on disk
        words = [w for w in result.stderr.split() if w.isalpha() and w.islower()]
        raw = (home / "wallets" / "fresh.json").read_text()
        assert not any(
            f"{a} {b} {c}" in raw for a, b, c in zip(words, words[1:], words[2:], strict=False)
        )

    def test_import_refuses_bad_input_and_writes_nothing(self, runner, home):
        before = tree(home)
        one_line_error(
            run(runner, "import", "--name", "x", "--mnemonic-stdin", input="test " * 12), "checksum"
        )
        one_line_error(
            run(runner, "import", "--name", "../x", "--mnemonic-stdin", input=DEV), "wallet name"
        )
        assert tree(home) == before

    def test_import_twice(self, runner, home):
        assert run(runner, "import", "--name", "w", "--mnemonic-stdin", input=DEV).exit_code == 0
        before = tree(home)
        one_line_error(
            run(runner, "import", "--name", "w", "--mnemonic-stdin", input=DEV), "exists"
        )
        assert tree(home) == before

    def test_no_password_source(self, runner, home, monkeypatch):
        monkeypatch.delenv("FOLLOWPAY_PASSWORD")

        def no_tty(path, *args, **kwargs):
            if str(path) == "/dev/tty":
                raise OSError(6, "No such device or address")
            return open(path, *args, **kwargs)

        monkeypatch.setattr(cli, "open", no_tty, raising=False)  # no terminal to prompt on
        result = run(runner, "import", "--name", "w", "--mnemonic-stdin", input=DEV)
        one_line_error(result, "FOLLOWPAY_PASSWORD")
        monkeypatch.undo()
        assert not (home / "wallets" / "w.json").exists()

    def test_list_table(self, runner):
        run(runner, "import", "--name", "w", "--mnemonic-stdin", input=DEV)
        result = run(runner, "list")
        assert "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266" in result.stdout


class TestWatchOnly:
    def test_export_xpub_then_derive(self, runner):
        run(runner, "import", "--name", "w", "--mnemonic-stdin", input=DEV)
        xpub = run(runner, "export-xpub", "--name", "w").stdout.strip()
        assert xpub == HDWallet.from_mnemonic(DEV).account_xpub()
        result = run(runner, "derive", "--xpub", xpub, "--index", "1")
        assert result.stdout == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8\n"
        other = run(runner, "export-xpub", "--name", "w", "--account", "1").stdout.strip()
        assert other == HDWallet.from_mnemonic(DEV).account_xpub(1)

    def test_bulk_csv_stream(self, runner):
        xpub = HDWallet.from_mnemonic(DEV).account_xpub()
        result = run(runner, "derive", "--xpub", xpub, "--start", "10", "--count", "2500")
        lines = result.stdout.splitlines()
        assert lines[0] == "index,path,address"
        assert len(lines) == 2501
        index, path, address = lines[1].split(",")
        assert (index, path, address) == (
            "10",
            "m/44'/60'/0'/0/10",
            HDWallet.from_mnemonic(DEV).address(10),
        )
        assert lines[-1].startswith("2509,")

    def test_a_range_past_the_last_index_writes_nothing(self, runner):
        """The header (and up to 2,000 rows a chunk) went out before the range failed: a
        pipeline read a CSV of a failed command."""
        xpub = HDWallet.from_mnemonic(DEV).account_xpub()
        for start, count in ((2**31 - 1, 2), (2**31 - 3_000, 5_000)):
            span = ["--start", str(start), "--count", str(count)]
            one_line_error(run(runner, "derive", "--xpub", xpub, *span), "goes past it")

    def test_derive_from_vault_name(self, runner):
        run(runner, "import", "--name", "w", "--mnemonic-stdin", input=DEV)
        result = run(runner, "derive", "--name", "w", "--count", "3")
        assert result.stdout.splitlines()[3].endswith("0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC")

    def test_bad_xpub(self, runner):
        one_line_error(
            run(runner, "derive", "--xpub", "xpubnope", "--index", "0"), "extended public key"
        )


class TestKeystoreCommands:
    def test_export_is_cast_compatible(self, runner, tmp_path, monkeypatch):
        if not CAST.exists():
            missing("cast is not installed (npm ci)")
        monkeypatch.setenv("FOLLOWPAY_KEYSTORE_PASSWORD", "ks-pass")
        run(runner, "import", "--name", "w", "--mnemonic-stdin", input=DEV)
        out = tmp_path / "k.json"
        result = run(runner, "export-keystore", "--name", "w", "--index", "4", "--out", str(out))
        assert result.exit_code == 0, result.stderr
        expected = HDWallet.from_mnemonic(DEV).address(4)
        assert result.stdout.strip() == expected
        assert json.loads(out.read_text())["crypto"]["kdfparams"]["n"] == 2**17
        cast = subprocess.run(
            [str(CAST), "wallet", "address", "--keystore", str(out), "--password", "ks-pass"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert cast.stdout.strip() == expected
        one_line_error(
            run(runner, "export-keystore", "--name", "w", "--out", str(out)), "already exists"
        )

    def test_import_cast_keystore(self, runner, tmp_path, monkeypatch, home):
        if not CAST.exists():
            missing("cast is not installed (npm ci)")
        made = subprocess.run(
            [str(CAST), "wallet", "new", str(tmp_path), "--unsafe-password", "ks"],
            capture_output=True,
            text=True,
            check=True,
        )
        address = made.stdout.split("Address:")[1].split()[0]
        (file,) = [p for p in tmp_path.iterdir() if p.is_file()]
        monkeypatch.setenv("FOLLOWPAY_KEYSTORE_PASSWORD", "wrong")
        before = tree(home)
        one_line_error(run(runner, "import-keystore", str(file), "--name", "k"), "wrong password")
        assert tree(home) == before
        monkeypatch.setenv("FOLLOWPAY_KEYSTORE_PASSWORD", "ks")
        result = run(runner, "import-keystore", str(file), "--name", "k")
        assert result.stdout.strip() == address
        assert run(runner, "address", "--name", "k").stdout.strip() == address
        stored = json.loads((home / "keystores" / "k.json").read_text())
        assert stored["crypto"]["kdfparams"]["n"] == FAST_N  # re-encrypted with the vault's cost


class TestSignMessage:
    """``sign-message`` signs stdin with EIP-191, as ``cast wallet verify`` checks it."""

    def test_signature_verifies_with_cast_for_the_index_key(self, runner):
        if not CAST.exists():
            missing("cast is not installed (npm ci)")
        run(runner, "import", "--name", "w", "--mnemonic-stdin", input=DEV)
        text = "FollowPay: link this address\nmerchant: 7"
        result = run(runner, "sign-message", "--name", "w", "--index", "2", input=text + "\n")
        assert result.exit_code == 0, result.stderr
        signature = result.stdout.strip()
        assert len(signature) == 132
        assert signature.startswith("0x")
        address = HDWallet.from_mnemonic(DEV).address(2)

        def verify(message: str, who: str) -> bool:
            """cast's verdict (its exit status is 0 either way: read what it prints)."""
            exact = "0x" + message.encode().hex()  # cast trims text arguments, not hex
            args = [str(CAST), "wallet", "verify", "--address", who, exact, signature]
            done = subprocess.run(args, capture_output=True, text=True)
            return "Validation succeeded" in done.stdout + done.stderr

        assert verify(text, address)
        assert not verify(text + "\n", address)  # one trailing newline is not signed
        assert not verify(text, HDWallet.from_mnemonic(DEV).address(1))

    def test_the_wallets_policy_is_obeyed(self, runner):
        """``send`` and ``pay`` obeyed the wallet's policy; ``sign-message`` signed any text
        with a wallet whose policy forbids messages."""
        from wallet.policy import SigningPolicy

        run(runner, "import", "--name", "w", "--mnemonic-stdin", input=DEV)
        vault = Vault(scrypt_n=FAST_N, allow_weak_kdf=True)
        vault.save_policy("w", SigningPolicy(allow_messages=False))
        refused = run(runner, "sign-message", "--name", "w", input="I owe you 1000 ETH\n")
        one_line_error(refused, "not allowed by the policy")
        assert refused.stdout == ""
        vault.save_policy("w", SigningPolicy(allow_messages=True))
        allowed = run(runner, "sign-message", "--name", "w", input="link this address\n")
        assert allowed.exit_code == 0, allowed.stderr
        assert len(allowed.stdout.strip()) == 132

    def test_refusals(self, runner, monkeypatch):
        run(runner, "import", "--name", "w", "--mnemonic-stdin", input=DEV)
        one_line_error(run(runner, "sign-message", "--name", "w", input="\n"), "nothing to sign")
        one_line_error(run(runner, "sign-message", "--name", "nope", input="x"), "nope")
        monkeypatch.setenv("FOLLOWPAY_PASSWORD", "wrong")
        one_line_error(run(runner, "sign-message", "--name", "w", input="x"), "password")


class CliChainBehaviour(ChainSuite):
    """send / balance / pay through --chain anvil --rpc-url (a real node the CLI can reach)."""

    backend = "anvil"

    @pytest.fixture
    def world(self, chain, tmp_path, runner):
        from tests.wallet.helpers import build_world
        from wallet.nonces import NonceLedger

        run(runner, "import", "--name", "dev", "--mnemonic-stdin", input=DEV)
        ledger = NonceLedger(tmp_path / "nonces.sqlite3")
        return build_world(chain, ledger)

    def chain_args(self, chain):
        return ["--chain", "anvil", "--rpc-url", chain.rpc_url]

    def test_balance_native_and_token(self, runner, chain, world):
        native = run(runner, "balance", "dev", *self.chain_args(chain))
        assert (native.exit_code == 0 and "." in native.stdout) or native.stdout.strip().isdigit()
        token = run(
            runner,
            "balance",
            world.payer.address,
            "--token",
            world.token.address,
            *self.chain_args(chain),
        )
        assert token.stdout.strip() == "1000"

    def test_send_tokens(self, runner, chain, world):
        to = "0x000000000000000000000000000000000000dEaD"
        result = run(
            runner,
            "send",
            "--name",
            "dev",
            "--index",
            "2",
            "--to",
            to,
            "--amount",
            "12.5",
            "--token",
            world.token.address,
            *self.chain_args(chain),
        )
        assert result.exit_code == 0, result.stderr
        assert result.stdout.strip().startswith("0x")
        assert len(result.stdout.strip()) == 66
        assert world.token.balance_of(to) == 12_500_000

    def test_send_ether_to_a_contract_wallet(self, runner, chain, world):
        """A contract recipient (a Safe, a smart account) runs code on receipt: the send had a
        fixed 21,000 gas, so it was mined reverted and its fee lost."""
        # runtime: SSTORE(0, CALLVALUE); STOP — 22,100 gas on receipt of a first payment
        runtime = bytes.fromhex("3460005500")
        init = bytes.fromhex("6005600c60003960056000f3") + runtime
        with chain.lock:
            deployer = chain.w3.eth.accounts[0]
            tx_hash = chain.w3.eth.send_transaction({"from": deployer, "data": init})
            wallet = chain.w3.eth.wait_for_transaction_receipt(tx_hash)["contractAddress"]
        result = run(
            runner,
            "send",
            "--name",
            "dev",
            "--index",
            "2",
            "--to",
            wallet,
            "--amount",
            "0.001",
            *self.chain_args(chain),
        )
        assert result.exit_code == 0, result.stderr
        with chain.lock:
            assert chain.w3.eth.get_balance(wallet) == 10**15
            assert int.from_bytes(chain.w3.eth.get_storage_at(wallet, 0), "big") == 10**15

    @pytest.mark.parametrize(
        ("args", "needle"),
        [
            (["--amount", "1.0000001"], "decimal places"),
            (["--amount", "-1"], "negative"),
            (["--amount", "lots"], "not a decimal"),
            (["--amount", "5000"], "insufficient"),
            (["--to", "0x000000000000000000000000000000000000dead"], "checksum"),
            (["--to", "0x000000000000000000000000000000000000DeaD"], "checksum"),
            (["--to", "0x1234"], "40 hex"),
            (["--chain-id", "1"], "expected 1"),
        ],
    )
    def test_send_refusals(self, runner, chain, world, home, args, needle):
        base = {"--to": "0x000000000000000000000000000000000000dEaD", "--amount": "1"}
        extra = []
        for flag, value in zip(args[::2], args[1::2], strict=True):
            if flag in base:
                base[flag] = value
            else:
                extra += [flag, value]
        before = tree(home)
        nonce = chain.w3.eth.get_transaction_count(world.payer.address)
        result = run(
            runner,
            "send",
            "--name",
            "dev",
            "--index",
            "2",
            "--token",
            world.token.address,
            *[x for kv in base.items() for x in kv],
            *extra,
            *self.chain_args(chain),
        )
        one_line_error(result, needle)
        assert tree(home) == before
        assert chain.w3.eth.get_transaction_count(world.payer.address) == nonce

    def test_wrong_password_sends_nothing(self, runner, chain, world):
        nonce = chain.w3.eth.get_transaction_count(world.payer.address)
        result = run(
            runner,
            "send",
            "--name",
            "dev",
            "--index",
            "2",
            "--to",
            world.merchant.address,
            "--amount",
            "1",
            "--token",
            world.token.address,
            *self.chain_args(chain),
            env={"FOLLOWPAY_PASSWORD": "nope"},
        )
        one_line_error(result, "wrong password")
        assert chain.w3.eth.get_transaction_count(world.payer.address) == nonce

    @pytest.mark.parametrize("mode", ["--permit", "--approve"])
    def test_pay_intent_file(self, runner, chain, world, tmp_path, mode):
        intent = world.intent(900 if mode == "--permit" else 901)
        r, vs = world.router.sign_intent(world.operator, intent)
        doc = {
            "merchant": intent.merchant,
            "token": intent.token,
            "amount": "5",
            "fee": "0.1",
            "invoiceId": intent.invoice_id,
            "payer": intent.payer,
            "deadline": intent.deadline,
            "signature": "0x" + (r + vs).hex(),
        }
        path = tmp_path / "intent.json"
        path.write_text(json.dumps(doc))
        result = run(
            runner,
            "pay",
            "--name",
            "dev",
            "--index",
            "2",
            "--router",
            world.router.address,
            "--intent",
            str(path),
            mode,
            *self.chain_args(chain),
        )
        assert result.exit_code == 0, result.stderr
        assert world.router.is_settled(world.merchant.address, intent.invoice_id)
        again = run(
            runner,
            "pay",
            "--name",
            "dev",
            "--index",
            "2",
            "--router",
            world.router.address,
            "--intent",
            str(path),
            mode,
            *self.chain_args(chain),
        )
        one_line_error(again, "InvoiceAlreadySettled")

    def test_pay_an_invoice_document(self, runner, chain, world, tmp_path):
        """The invoice JSON the API and `followpay invoices` print: base units, {r, vs}."""
        intent = world.intent(902)
        r, vs = world.router.sign_intent(world.operator, intent)
        doc = {
            "id": "inv_0c3f5a6e9b1d2f4a8c7e6d5b",
            "intent": {
                "merchant": intent.merchant,
                "token": intent.token,
                "amount": str(intent.amount),
                "fee": str(intent.fee),
                "invoice_id": str(intent.invoice_id),
                "payer": intent.payer,
                "deadline": intent.deadline,
            },
            "signature": {"r": "0x" + r.hex(), "vs": "0x" + vs.hex()},
        }
        path = tmp_path / "invoice.json"
        args = ["pay", "--name", "dev", "--index", "2", "--router", world.router.address]
        args += ["--intent", str(path), *self.chain_args(chain)]
        path.write_text(json.dumps(doc | {"intent": doc["intent"] | {"amount": "5.0"}}))
        one_line_error(run(runner, *args), "must be base units")
        assert not world.router.is_settled(world.merchant.address, intent.invoice_id)
        # What the document says of itself must allow the payment, as the hosted checkout's
        # does (the CLI read only the intent, and paid invalidated and settled invoices)
        refusals = [
            ({"state": "invalid"}, "invalid, not payable"),
            ({"state": "settled"}, "settled, not payable"),
            ({"state": "expired"}, "expired, not payable"),
            ({"router": world.token.address}, "is for router"),
            ({"chain_id": chain.chain_id + 1}, "is for chain"),
            ({"amount": str(intent.amount // 2)}, "amount"),
        ]
        for extra, message in refusals:
            path.write_text(json.dumps(doc | extra))
            one_line_error(run(runner, *args), message)
            assert not world.router.is_settled(world.merchant.address, intent.invoice_id)
        agreeing = {"state": "new", "router": world.router.address, "chain_id": chain.chain_id}
        path.write_text(json.dumps(doc | agreeing | {"amount": str(intent.amount)}))
        result = run(runner, *args)
        assert result.exit_code == 0, result.stderr
        assert world.router.is_settled(world.merchant.address, intent.invoice_id)


class TestCliOnAnvil(CliChainBehaviour):
    backend = "anvil"


class TestSubprocess:
    def env(self, home):
        return {**os.environ, "FOLLOWPAY_HOME": str(home), "FOLLOWPAY_PASSWORD": PASSWORD}

    def test_address_via_python_m(self, home):
        proc = subprocess.run(
            [sys.executable, "-m", "wallet.cli", "address", "--mnemonic-stdin", "--index", "1"],
            input=VECTORS["bip39_trezor"][0]["mnemonic"],
            capture_output=True,
            text=True,
            env=self.env(home),
            cwd=ROOT,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        expected = HDWallet.from_mnemonic(VECTORS["bip39_trezor"][0]["mnemonic"]).address(1)
        assert proc.stdout == expected + "\n"

    def test_error_has_no_traceback(self, home):
        proc = subprocess.run(
            [sys.executable, "-m", "wallet.cli", "import", "--name", "w", "--mnemonic-stdin"],
            input="zoo " * 12,
            capture_output=True,
            text=True,
            env=self.env(home),
            cwd=ROOT,
            timeout=60,
        )
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1
        assert "Traceback" not in proc.stderr
        assert not home.exists() or tree(home) == {}

    def test_no_terminal_and_no_password_is_one_line(self, home):
        """Without a controlling terminal getpass would warn and read stdin in the clear."""
        env = {k: v for k, v in self.env(home).items() if k != "FOLLOWPAY_PASSWORD"}
        proc = subprocess.run(
            [sys.executable, "-m", "wallet.cli", "import", "--name", "w", "--mnemonic-stdin"],
            input=DEV,
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=60,
            start_new_session=True,  # no controlling terminal: /dev/tty cannot be opened
        )
        assert proc.returncode == 1
        assert proc.stderr == "error: no password: set FOLLOWPAY_PASSWORD or run in a terminal\n"
        assert not home.exists() or tree(home) == {}


class TestCliPolicyOnAnvil(ChainSuite):
    backend = "anvil"

    def test_send_obeys_the_wallet_policy(self, runner, chain, tmp_path):
        from tests.wallet.helpers import build_world
        from wallet.nonces import NonceLedger
        from wallet.policy import SELECTORS, SigningPolicy

        run(runner, "import", "--name", "bot", "--mnemonic-stdin", input=DEV)
        world = build_world(chain, NonceLedger(tmp_path / "n.sqlite3"))
        Vault(scrypt_n=FAST_N, allow_weak_kdf=True).save_policy(
            "bot",
            SigningPolicy(
                allowed_contracts=frozenset({world.token.address}),
                allowed_selectors=frozenset({SELECTORS["transfer"]}),
                max_amounts={world.token.address: 2_000_000},
            ),
        )
        args = ["send", "--name", "bot", "--index", "2", "--token", world.token.address]
        args += ["--to", world.merchant.address, "--chain", "anvil", "--rpc-url", chain.rpc_url]
        ok = run(runner, *args, "--amount", "2")
        assert ok.exit_code == 0, ok.stderr
        nonce = chain.w3.eth.get_transaction_count(world.payer.address)
        one_line_error(run(runner, *args, "--amount", "2.000001"), "policy limit")
        assert chain.w3.eth.get_transaction_count(world.payer.address) == nonce
