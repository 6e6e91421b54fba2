"""A session's worth of wallet operations, successes and failures, leaks nothing.

Logging is captured at DEBUG for every logger (web3 and urllib3 included), stdout/stderr at
the file-descriptor level, and every exception's ``str``/``repr``/args, its formatted
traceback and its whole ``__cause__``/``__context__`` chain. None of it may contain three
consecutive words of the mnemonic, the passphrase, the password or any private key used.
"""

from __future__ import annotations

import logging
import traceback

import pytest
from typer.testing import CliRunner

from tests.wallet.conftest import FAST_N
from wallet import cli
from wallet.errors import WalletError
from wallet.keys import HDWallet, generate_mnemonic, validate_mnemonic
from wallet.keystore import read_keystore, write_keystore
from wallet.nonces import NonceLedger
from wallet.secrets import PrivateKey
from wallet.sender import Sender
from wallet.signing import Signer, sign_transaction
from wallet.vault import Vault

PASSWORD = "hunter2-but-longer"
PASSPHRASE = "orange submarine"


def _exception_texts(exc: BaseException) -> list[str]:
    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        texts.append("".join(traceback.format_exception(current)))
        current = current.__cause__ or current.__context__
    return texts


def test_session_leaks_nothing(caplog, capfd, tmp_path, monkeypatch, tester_chain):
    monkeypatch.setenv("FOLLOWPAY_HOME", str(tmp_path / "home"))
    caplog.set_level(logging.DEBUG)
    log = logging.getLogger("careless.app")
    mnemonic = generate_mnemonic(24)
    words = mnemonic.reveal().split()
    failures: list[BaseException] = []

    def expect_failure(fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            failures.append(exc)
            log.debug("operation failed: %s / %r", exc, exc)
            log.exception("with traceback")
        else:
            pytest.fail(f"{fn.__name__} should have failed")

    vault = Vault(scrypt_n=FAST_N, allow_weak_kdf=True)
    info = vault.create("hot", mnemonic, PASSWORD, passphrase=PASSPHRASE)
    log.debug("created %r from %s with %r", info, mnemonic, mnemonic)
    expect_failure(vault.unlock, "hot", "wrong password")
    expect_failure(vault.create, "hot", mnemonic, PASSWORD)
    unlocked = vault.unlock("hot", PASSWORD)
    wallet: HDWallet = unlocked.hd
    keys = [wallet.private_key(i) for i in range(3)]
    log.debug("wallet %r keys %r %s", wallet, keys, keys[0])
    print(wallet, keys, unlocked)

    broken = words.copy()
    broken[5] = "notaword"
    expect_failure(validate_mnemonic, " ".join(broken))
    swapped = words.copy()
    swapped[0], swapped[1] = swapped[1], swapped[0]
    try:
        validate_mnemonic(" ".join(swapped))
    except WalletError as exc:  # a swap usually breaks the checksum; if it does, scan it
        failures.append(exc)
    expect_failure(validate_mnemonic, " ".join(words[:23]))
    expect_failure(PrivateKey, keys[0].reveal_bytes().reveal().hex()[:-2] + "zz")

    path = tmp_path / "k.json"
    write_keystore(path, keys[1], PASSWORD, scrypt_n=FAST_N, allow_weak_kdf=True)
    expect_failure(read_keystore, path, "not it")
    assert read_keystore(path, PASSWORD) == keys[1]

    tx = {
        "to": keys[2].address,
        "value": 1,
        "gas": 21_000,
        "maxFeePerGas": 10**10,
        "maxPriorityFeePerGas": 10**9,
        "nonce": 0,
        "chainId": tester_chain.chain_id,
    }
    sign_transaction(tx, keys[0])
    expect_failure(sign_transaction, {**tx, "gasPrice": 1}, keys[0])
    expect_failure(sign_transaction, {**tx, "to": "0xnothex"}, keys[0])

    funded = keys[0]
    tester_chain.fund(funded.address, 10**18)
    sender = Sender(tester_chain, Signer(funded), ledger=NonceLedger(tmp_path / "n.sqlite3"))
    sender.transact(keys[1].address, b"", 1)
    expect_failure(sender.send, keys[1].address, b"", 10**30, gas=21_000)
    log.debug("sender %r signer %r", sender, sender.signer)

    runner = CliRunner()
    monkeypatch.setattr(cli, "_vault", lambda: Vault(scrypt_n=FAST_N, allow_weak_kdf=True))
    env = {"FOLLOWPAY_PASSWORD": PASSWORD, "PP": PASSPHRASE}
    outputs = [
        runner.invoke(
            cli.app,
            ["import", "--name", "cli", "--mnemonic-stdin", "--passphrase-env", "PP"],
            input=mnemonic.reveal(),
            env=env,
        ),
        runner.invoke(
            cli.app,
            ["import", "--name", "bad", "--mnemonic-stdin"],
            input=" ".join(swapped[:12]),
            env=env,
        ),
        runner.invoke(
            cli.app,
            ["address", "--mnemonic-stdin", "--index", "2"],
            input=" ".join(broken),
            env=env,
        ),
        runner.invoke(
            cli.app,
            ["address", "--name", "cli", "--path", "m/44'/60'/0'/0/1"],
            env={"FOLLOWPAY_PASSWORD": "wrong"},
        ),
        runner.invoke(
            cli.app,
            ["export-keystore", "--name", "cli", "--out", str(tmp_path / "o.json")],
            env={**env, "FOLLOWPAY_KEYSTORE_PASSWORD": "x"},
        ),
        runner.invoke(cli.app, ["list"], env=env),
    ]
    assert outputs[0].exit_code == 0
    assert outputs[2].exit_code == 1

    captured = capfd.readouterr()
    haystacks = [caplog.text, captured.out, captured.err]
    for result in outputs:
        haystacks += [result.stdout, result.stderr]
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            haystacks += _exception_texts(result.exception)
    for exc in failures:
        haystacks += _exception_texts(exc)
    for record in caplog.records:
        haystacks.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            haystacks += _exception_texts(record.exc_info[1])
    text = "\n".join(h for h in haystacks if h).lower()

    assert len(failures) >= 9
    triples = {" ".join(words[i : i + 3]) for i in range(len(words) - 2)}
    leaked = [t for t in triples if t in " ".join(text.split())]
    assert leaked == [], "mnemonic words leaked"
    leaked_keys = [i for i, key in enumerate(keys) if key.reveal_bytes().reveal().hex() in text]
    assert leaked_keys == [], "private keys leaked (by index)"
    assert (PASSPHRASE in text, PASSWORD in text) == (False, False)
    # and the operations really ran: addresses are visible, secrets are not
    assert keys[0].address.lower() in text


def _rendered_with_locals(exc: BaseException) -> str:
    """What rich (like ``pytest -l`` or Sentry's frame variables) shows of a failure: every
    frame's local variables, for the exception and what it chains to unsuppressed; from the
    frame the test called into (the test's own locals hold the key on purpose)."""
    import io

    from rich.console import Console
    from rich.traceback import Traceback

    out = io.StringIO()
    below_test = exc.__traceback__.tb_next if exc.__traceback__ else None
    trace = Traceback.from_exception(type(exc), exc, below_test, show_locals=True)
    Console(file=out, width=400).print(trace)
    return out.getvalue()


@pytest.mark.parametrize(
    "field",
    [
        {"value": -1},
        {"nonce": -1},
        {"gas": -5},
        {"maxPriorityFeePerGas": -1, "maxFeePerGas": 10},
        {"value": True},
        {"nonce": "0xzz"},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_a_refused_transaction_shows_no_key_among_a_tracebacks_locals(field):
    """A negative number went on to eth-account, whose serializer error (not a TypeError or
    ValueError) escaped with the raw key in its frames' locals."""
    key = HDWallet.from_mnemonic(generate_mnemonic(12)).private_key(0)
    tx = {
        "chainId": 1,
        "nonce": 0,
        "gas": 21_000,
        "maxFeePerGas": 10,
        "maxPriorityFeePerGas": 1,
        "to": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
        "value": 0,
        **field,
    }
    with pytest.raises(WalletError) as caught:
        Signer(key).sign_transaction(tx, chain_id=1)
    text = _rendered_with_locals(caught.value)
    assert "sign_transaction" in text  # the frames were rendered
    assert key.reveal().to_bytes().hex() not in text


def test_a_mistyped_key_is_not_among_a_tracebacks_locals():
    real = HDWallet.from_mnemonic(generate_mnemonic(12)).private_key(0).reveal().to_bytes().hex()
    for typo in (real[:-2] + "zz", real[:-2], "0x" + real + "00"):
        with pytest.raises(WalletError) as caught:
            PrivateKey(typo)
        text = _rendered_with_locals(caught.value)
        assert "__init__" in text  # the frames were rendered
        assert real[:40] not in text


def test_a_tampered_key_file_shows_no_derived_key_among_a_tracebacks_locals(vault):
    """The keystore's address is not under its MAC: an edited one made the owner's unlock
    (right password) fail in the frame holding the derived key, whose first half is the AES
    key of the file's ciphertext."""
    import json

    from wallet.keystore import _kdf

    key = HDWallet.from_mnemonic(generate_mnemonic(12)).private_key(0)
    vault.import_key("hot", key, "pw-hot", scrypt_n=FAST_N, allow_weak_kdf=True)
    path = vault.keystores_dir / "hot.json"
    doc = json.loads(path.read_text())
    doc["address"] = "00" * 20
    path.write_text(json.dumps(doc))
    with pytest.raises(WalletError, match="does not match its key") as caught:
        vault.unlock("hot", "pw-hot")
    text = _rendered_with_locals(caught.value)
    assert "decrypt_keystore" in text  # the frames were rendered
    crypto = doc["crypto"]
    derived = _kdf(crypto["kdf"], crypto["kdfparams"]).derive(b"pw-hot")
    for secret in (derived[:16], derived):
        assert repr(secret)[2:30] not in text
    assert key.reveal().to_bytes().hex()[:40] not in text


def test_a_tampered_vault_header_shows_no_vault_key_among_a_tracebacks_locals(vault):
    """Any edit of an HD vault's header fails its AES-GCM tag under the right password: the
    error was raised in the frame holding the derived AES-256 key."""
    import json

    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    from wallet.vault import _unb64

    mnemonic = generate_mnemonic(12)
    vault.create("shop", mnemonic, "pw-shop")
    path = vault.wallets_dir / "shop.json"
    document = json.loads(path.read_text())
    document["created_at"] += 1
    path.write_text(json.dumps(document))
    with pytest.raises(WalletError, match="wrong password") as caught:
        vault.unlock("shop", "pw-shop")
    text = _rendered_with_locals(caught.value)
    assert "_decrypt" in text
    kdf = document["kdf"]
    key = Scrypt(_unb64(kdf["salt"]), 32, kdf["n"], kdf["r"], kdf["p"]).derive(b"pw-shop")
    assert repr(key)[2:30] not in text
    assert " ".join(mnemonic.reveal().split()[:3]) not in text  # the decrypted phrase


@pytest.mark.parametrize("kind", ["unknown_word", "checksum"])
def test_a_mistyped_mnemonic_is_not_among_a_tracebacks_locals(kind):
    from wallet.errors import InvalidMnemonicError
    from wallet.secrets import SecretStr

    words = generate_mnemonic(12).reveal().split()
    typo = [*words[:-1], "notaword"]
    if kind == "checksum":
        for candidate in ("zoo", "zone", "youth", "wrong", "abandon"):
            try:
                validate_mnemonic(" ".join([*words[:-1], candidate]))
            except InvalidMnemonicError:
                typo = [*words[:-1], candidate]
                break
    with pytest.raises(InvalidMnemonicError) as caught:
        HDWallet.from_mnemonic(SecretStr(" ".join(typo)))
    text = _rendered_with_locals(caught.value)
    assert "validate_mnemonic" in text  # the frames were rendered
    runs = [typo[i : i + 3] for i in range(len(typo) - 2)]
    assert not any(all(f"'{w}'" in text for w in run) for run in runs)


@pytest.mark.parametrize("failure", ["home_not_a_directory", "write_fails"])
def test_a_failed_vault_create_shows_no_mnemonic_among_a_tracebacks_locals(
    tmp_path, monkeypatch, failure
):
    """Creating a vault held the derived key and the plaintext phrase among its own locals
    while it wrote the file: a home it cannot make, a full disk or a wallet of that name made
    meanwhile showed the recovery phrase in any traceback that prints locals."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    import wallet.vault as vault_module
    from wallet.errors import VaultError
    from wallet.secrets import SecretStr

    home = tmp_path / "home"
    if failure == "home_not_a_directory":
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("")
        home = blocker / "home"
    else:

        def full_disk(*args, **kwargs):
            raise VaultError("cannot write the wallet file: No space left on device")

        monkeypatch.setattr(vault_module, "atomic_write", full_disk)
    seen: list[bytes] = []
    derive = Scrypt.derive
    monkeypatch.setattr(
        Scrypt, "derive", lambda self, data: seen.append(derive(self, data)) or seen[-1]
    )
    vault = Vault(home, scrypt_n=FAST_N, allow_weak_kdf=True)
    mnemonic = generate_mnemonic(12)
    with pytest.raises(VaultError) as caught:
        vault.create("hot", mnemonic, "pw-hot", passphrase=SecretStr("extra-word"))
    text = _rendered_with_locals(caught.value)
    assert "create" in text  # the frames were rendered
    assert " ".join(mnemonic.reveal().split()[:3]) not in text
    assert "extra-word" not in text
    for key in seen:
        assert repr(key)[2:30] not in text


@pytest.mark.parametrize("where", ["vault", "keystore", "passphrase"])
def test_a_secret_that_is_not_utf8_is_refused_without_quoting_it(tmp_path, where):
    """A ``FOLLOWPAY_PASSWORD`` with a byte that is not UTF-8 reaches Python as a surrogate
    escape; encoding it raised the codec's own error, which the CLI printed: it names the byte
    (``'\\udcff'``) and its position in the password."""
    from wallet.keystore import encrypt_keystore

    secret = "hunter\udcff2"
    mnemonic = generate_mnemonic(12)
    key = HDWallet.from_mnemonic(mnemonic).private_key(0)
    vault = Vault(tmp_path, scrypt_n=FAST_N, allow_weak_kdf=True)
    uses = {
        "vault": lambda: vault.create("hot", mnemonic, secret),
        "keystore": lambda: encrypt_keystore(key, secret, scrypt_n=FAST_N, allow_weak_kdf=True),
        "passphrase": lambda: HDWallet.from_mnemonic(mnemonic, secret),
    }
    with pytest.raises(WalletError) as caught:
        uses[where]()
    text = f"{caught.value} {caught.value!r} {caught.value.__cause__!r}"
    assert "not valid UTF-8" in text
    for shown in ("\udcff", "dcff", "position", "hunter"):
        assert shown not in text
    assert not (tmp_path / "wallets").exists() or not any((tmp_path / "wallets").iterdir())
