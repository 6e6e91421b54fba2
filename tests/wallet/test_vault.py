"""Encrypted HD vaults and imported keys under FOLLOWPAY_HOME."""

from __future__ import annotations

import json
import os

import pytest

from tests.wallet.conftest import PASSWORD, tree
from wallet.errors import (
    CorruptVaultError,
    InvalidMnemonicError,
    VaultError,
    WalletExistsError,
    WalletNotFoundError,
    WrongPasswordError,
)
from wallet.keys import HDWallet
from wallet.secrets import PrivateKey
from wallet.vault import Vault

DEV = "test test test test test test test test test test test junk"


class TestCreateAndUnlock:
    def test_round_trip(self, vault):
        info = vault.create("main", DEV, PASSWORD)
        assert info.first_address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        assert info.xpub == HDWallet.from_mnemonic(DEV).account_xpub(0)
        unlocked = vault.unlock("main", PASSWORD)
        assert unlocked.address(3) == HDWallet.from_mnemonic(DEV).address(3)
        assert unlocked.private_key(1).address == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"

    def test_passphrase_is_stored_encrypted(self, vault):
        vault.create("pp", DEV, PASSWORD, passphrase="TREZOR")
        unlocked = vault.unlock("pp", PASSWORD)
        assert unlocked.address(0) == HDWallet.from_mnemonic(DEV, "TREZOR").address(0)
        mnemonic, passphrase = vault.reveal_mnemonic("pp", PASSWORD)
        assert (mnemonic.reveal(), passphrase.reveal()) == (DEV, "TREZOR")

    def test_file_never_contains_plaintext_and_is_private(self, vault, home):
        info = vault.create("main", DEV, PASSWORD, passphrase="sekrit-pass")
        raw = info.path.read_text()
        assert "test test" not in raw
        assert "junk" not in raw
        assert "sekrit" not in raw
        assert oct(info.path.stat().st_mode & 0o777) == "0o600"
        assert oct(home.stat().st_mode & 0o777) == "0o700"
        assert oct(info.path.parent.stat().st_mode & 0o777) == "0o700"
        doc = json.loads(raw)
        assert doc["kdf"]["name"] == "scrypt"
        assert doc["cipher"]["name"] == "aes-256-gcm"

    def test_wrong_password(self, vault):
        vault.create("main", DEV, PASSWORD)
        with pytest.raises(WrongPasswordError) as info:
            vault.unlock("main", "wrong")
        assert isinstance(info.value, PermissionError)
        assert info.value.status_code == 401

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            (
                ("public", "xpub"),
                "xpub661MyMwAqRbcFtXgS5sYJABqqG9YLmC4Q1Rdap9gSE8NqtwybGhePY2gZ29ESFj",
            ),
            (("public", "first_address"), "0x000000000000000000000000000000000000dEaD"),
            (("name",), "other"),
            (("kdf", "p"), 2),
        ],
    )
    def test_header_is_authenticated(self, vault, field, value):
        info = vault.create("main", DEV, PASSWORD)
        doc = json.loads(info.path.read_text())
        target = doc
        for key in field[:-1]:
            target = target[key]
        target[field[-1]] = value
        info.path.write_text(json.dumps(doc))
        with pytest.raises(WrongPasswordError, match="modified"):
            vault.unlock("main", PASSWORD)

    def test_default_cost_is_2_17(self, home):
        vault = Vault(home)
        info = vault.create("strong", DEV, PASSWORD)
        assert json.loads(info.path.read_text())["kdf"]["n"] == 2**17
        assert vault.unlock("strong", PASSWORD).address(0) == info.first_address

    def test_weak_cost_needs_explicit_opt_in(self, home):
        with pytest.raises(VaultError, match="at least"):
            Vault(home, scrypt_n=2**10)
        with pytest.raises(VaultError, match="at least"):
            Vault(home).create("weak", DEV, PASSWORD, scrypt_n=2**10)
        assert tree(home) == {}


class TestRefusals:
    def test_invalid_mnemonic_writes_nothing(self, vault, home):
        with pytest.raises(InvalidMnemonicError):
            vault.create("bad", "test " * 12, PASSWORD)
        assert tree(home) == {}

    def test_duplicate_name(self, vault):
        vault.create("main", DEV, PASSWORD)
        before = tree(vault.home)
        with pytest.raises(WalletExistsError):
            vault.create("main", DEV, PASSWORD)
        assert tree(vault.home) == before

    @pytest.mark.parametrize(
        "name", ["", "../evil", "a/b", ".hidden", "x" * 65, "spa ce", "main\n", "main\r"]
    )
    def test_bad_names(self, vault, name):
        with pytest.raises(VaultError):
            vault.create(name, DEV, PASSWORD)

    def test_empty_password(self, vault, home):
        with pytest.raises(VaultError, match="empty"):
            vault.create("main", DEV, "")
        assert tree(home) == {}

    @pytest.mark.parametrize("n", [2**21, 2**17 + 1])
    def test_a_scrypt_n_unlock_would_refuse_is_refused_first(self, vault, home, n):
        """A vault created with n above what unlock reads (2**20: 1 GiB) could never be
        opened again."""
        with pytest.raises(VaultError, match="power of two up to"):
            vault.create("main", DEV, PASSWORD, scrypt_n=n)
        assert tree(home) == {}

    def test_missing(self, vault):
        with pytest.raises(WalletNotFoundError):
            vault.unlock("ghost", PASSWORD)

    def test_corrupt_file(self, vault):
        info = vault.create("main", DEV, PASSWORD)
        info.path.write_text("{not json")
        with pytest.raises(CorruptVaultError):
            vault.unlock("main", PASSWORD)
        assert vault.list() == []  # listing skips it instead of failing


class TestKeysAndListing:
    def test_import_key_and_list(self, vault):
        key = PrivateKey("0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
        vault.create("hd", DEV, PASSWORD)
        info = vault.import_key("single", key, PASSWORD)
        assert info.kind == "key"
        assert info.first_address == key.address
        listed = vault.list()
        assert [(i.name, i.kind) for i in listed] == [("hd", "hd"), ("single", "key")]
        unlocked = vault.unlock("single", PASSWORD)
        assert unlocked.private_key(0) == key
        with pytest.raises(VaultError, match="single key"):
            unlocked.private_key(1)
        with pytest.raises(WrongPasswordError):
            vault.unlock("single", "nope")

    def test_names_are_shared_between_kinds(self, vault):
        key = PrivateKey("0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
        vault.create("dup", DEV, PASSWORD)
        with pytest.raises(WalletExistsError):
            vault.import_key("dup", key, PASSWORD)

    def test_home_defaults_from_env(self, home):
        assert Vault().home == home
        os.environ.pop("FOLLOWPAY_HOME")
        assert str(Vault().home).endswith(".followpay")

    def test_delete(self, vault):
        vault.create("gone", DEV, PASSWORD)
        vault.delete("gone")
        assert not vault.exists("gone")
        with pytest.raises(WalletNotFoundError):
            vault.delete("gone")

    def test_a_new_wallet_under_a_deleted_ones_name_inherits_no_policy(self, vault):
        """The policy file outlived its wallet: a new wallet of that name got its limits."""
        from wallet.policy import SigningPolicy

        vault.create("bot", DEV, PASSWORD)
        vault.save_policy("bot", SigningPolicy(allow_messages=True))
        vault.delete("bot")
        vault.create("bot", DEV, PASSWORD)
        assert vault.load_policy("bot") is None

    @pytest.mark.parametrize(
        "change",
        [{"x-followpay": "not an object"}, {"address": "zz"}, {"address": None}],
        ids=["header", "address", "no-address"],
    )
    def test_a_malformed_keystore_file_is_skipped_by_list(self, vault, change):
        """A hand-edited keystore's header crashed the listing (AttributeError) or read as an
        address made of garbage or zeros, which send and pay then used for balance checks."""
        key = PrivateKey("0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
        vault.create("hd", DEV, PASSWORD)
        info = vault.import_key("single", key, PASSWORD)
        document = json.loads(info.path.read_text())
        document.update(change)
        info.path.write_text(json.dumps(document))
        assert [i.name for i in vault.list()] == ["hd"]
        with pytest.raises(CorruptVaultError):
            vault.info("single")


class TestPolicies:
    def test_round_trip_and_absent(self, vault):
        from wallet.policy import SigningPolicy

        vault.create("bot", DEV, PASSWORD)
        assert vault.load_policy("bot") is None
        policy = SigningPolicy(
            allowed_contracts=frozenset({"0x5FbDB2315678afecb367f032d93F642f64180aa3"}),
            max_amounts={"0x5FbDB2315678afecb367f032d93F642f64180aa3": 10},
        )
        path = vault.save_policy("bot", policy)
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert vault.load_policy("bot").to_dict() == policy.to_dict()
        with pytest.raises(WalletNotFoundError):
            vault.save_policy("ghost", policy)
        path.write_text("[1, 2")
        with pytest.raises(CorruptVaultError):
            vault.load_policy("bot")
