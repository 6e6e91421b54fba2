"""Keystore v3: round trips and interoperability with cast and eth-account, both directions."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from eth_account import Account

from tests.conftest import missing
from tests.wallet.conftest import CAST
from wallet.errors import KeystoreFormatError, WalletExistsError, WrongPasswordError
from wallet.keystore import (
    DEFAULT_SCRYPT_N,
    decrypt_keystore,
    encrypt_keystore,
    keystore_address,
    read_keystore,
    write_keystore,
)
from wallet.secrets import PrivateKey, SecretStr

KEY = PrivateKey("0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
PW = "keystore-pw"


def _cast(*args: str) -> str:
    if not CAST.exists():
        missing("cast is not installed (npm ci)")
    result = subprocess.run([str(CAST), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


class TestRoundTrip:
    def test_scrypt_fast(self):
        doc = encrypt_keystore(KEY, PW, scrypt_n=2**10, allow_weak_kdf=True)
        assert doc["version"] == 3
        assert doc["crypto"]["kdfparams"]["n"] == 2**10
        assert decrypt_keystore(doc, PW) == KEY
        assert decrypt_keystore(json.dumps(doc), SecretStr(PW)) == KEY

    def test_default_is_scrypt_2_17_r8_p1(self):
        doc = encrypt_keystore(KEY, PW)
        params = doc["crypto"]["kdfparams"]
        assert (params["n"], params["r"], params["p"]) == (DEFAULT_SCRYPT_N, 8, 1)
        assert DEFAULT_SCRYPT_N == 2**17
        assert decrypt_keystore(doc, PW) == KEY

    def test_pbkdf2(self):
        doc = encrypt_keystore(KEY, PW, kdf="pbkdf2", pbkdf2_iterations=1000, allow_weak_kdf=True)
        assert decrypt_keystore(doc, PW) == KEY

    @pytest.mark.parametrize(
        "cheap",
        [{"scrypt_n": 2**16}, {"scrypt_n": 2}, {"kdf": "pbkdf2", "pbkdf2_iterations": 1000}],
    )
    def test_a_cheap_kdf_is_refused_and_writes_nothing(self, tmp_path, cheap):
        """The vault held a floor; the keystore writers took n=2 without a word."""
        with pytest.raises(KeystoreFormatError, match="at least"):
            encrypt_keystore(KEY, PW, **cheap)
        target = tmp_path / "key.json"
        with pytest.raises(KeystoreFormatError, match="at least"):
            write_keystore(target, KEY, PW, scrypt_n=cheap.get("scrypt_n", 2))
        assert not target.exists()

    def test_wrong_password(self):
        doc = encrypt_keystore(KEY, PW, scrypt_n=2**10, allow_weak_kdf=True)
        with pytest.raises(WrongPasswordError):
            decrypt_keystore(doc, "nope")

    def test_tampered_ciphertext_is_detected_by_mac(self):
        doc = encrypt_keystore(KEY, PW, scrypt_n=2**10, allow_weak_kdf=True)
        c = doc["crypto"]["ciphertext"]
        doc["crypto"]["ciphertext"] = ("0" if c[0] != "0" else "1") + c[1:]
        with pytest.raises(WrongPasswordError):
            decrypt_keystore(doc, PW)

    @pytest.mark.parametrize(
        "mutate",
        [
            lambda d: d.update(version=1),
            lambda d: d.pop("crypto"),
            lambda d: d["crypto"].update(cipher="aes-256-cbc"),
            lambda d: d["crypto"].update(kdf="argon2"),
            lambda d: d["crypto"]["kdfparams"].update(n=2**30),
            lambda d: d["crypto"]["kdfparams"].update(n=1000),
            lambda d: d["crypto"].update(mac="zz"),
        ],
    )
    def test_malformed(self, mutate):
        doc = encrypt_keystore(KEY, PW, scrypt_n=2**10, allow_weak_kdf=True)
        mutate(doc)
        with pytest.raises(KeystoreFormatError):
            decrypt_keystore(doc, PW)

    def test_not_json(self):
        with pytest.raises(KeystoreFormatError):
            decrypt_keystore("{nope", PW)

    def test_capitalised_crypto_key_accepted(self):
        doc = encrypt_keystore(KEY, PW, scrypt_n=2**10, allow_weak_kdf=True)
        doc["Crypto"] = doc.pop("crypto")
        assert decrypt_keystore(doc, PW) == KEY

    def test_write_is_private_atomic_and_refuses_overwrite(self, tmp_path):
        path = tmp_path / "sub" / "key.json"
        write_keystore(path, KEY, PW, scrypt_n=2**10, allow_weak_kdf=True)
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
        assert keystore_address(path) == KEY.address
        assert read_keystore(path, PW) == KEY
        with pytest.raises(WalletExistsError):
            write_keystore(path, KEY, PW, scrypt_n=2**10, allow_weak_kdf=True)
        assert [p.name for p in path.parent.iterdir()] == ["key.json"]  # no temp files left

    def test_writing_into_an_existing_directory_leaves_its_mode(self, tmp_path):
        """``export-keystore --out ~/k.json`` used to chmod the home directory to 0700."""
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o755)
        shared.chmod(0o755)
        write_keystore(shared / "key.json", KEY, PW, scrypt_n=2**10, allow_weak_kdf=True)
        assert oct(shared.stat().st_mode & 0o777) == "0o755"
        assert oct((shared / "key.json").stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(("n", "r"), [(2**20, 32), (2**19, 32), (2**21, 8)])
def test_a_key_file_asking_scrypt_for_gigabytes_is_refused_before_deriving(n, r):
    """Unlocking an imported file runs its scrypt before the MAC can say anything: n = 2**20
    with r = 32 asked for 4 GiB."""
    doc = encrypt_keystore(KEY, PW, scrypt_n=2**10, allow_weak_kdf=True)
    doc["crypto"]["kdfparams"].update(n=n, r=r)
    with pytest.raises(KeystoreFormatError, match=r"1 GiB|out of range"):
        decrypt_keystore(doc, PW)


class TestEthAccountInterop:
    def test_eth_account_reads_ours(self):
        doc = encrypt_keystore(KEY, PW, scrypt_n=2**10, allow_weak_kdf=True)
        assert Account.decrypt(doc, PW) == KEY.reveal_bytes().reveal()
        doc = encrypt_keystore(KEY, PW, kdf="pbkdf2", pbkdf2_iterations=1000, allow_weak_kdf=True)
        assert Account.decrypt(doc, PW) == KEY.reveal_bytes().reveal()

    @pytest.mark.parametrize("kdf", ["scrypt", "pbkdf2"])
    def test_we_read_eth_account(self, kdf):
        doc = Account.encrypt(KEY.reveal_bytes().reveal(), PW, kdf=kdf, iterations=1024)
        assert decrypt_keystore(doc, PW) == KEY


class TestCastInterop:
    def test_we_read_a_cast_keystore(self, tmp_path):
        out = _cast("wallet", "new", str(tmp_path), "--unsafe-password", PW)
        address = re.search(r"Address:\s+(0x[0-9a-fA-F]{40})", out).group(1)
        (file,) = list(tmp_path.iterdir())
        doc = json.loads(file.read_text())
        assert doc["crypto"]["kdfparams"]["n"] == 8192  # cast's cheap default, accepted
        assert read_keystore(file, PW).address == address
        with pytest.raises(WrongPasswordError):
            read_keystore(file, PW + "x")

    def test_cast_reads_ours_default_cost(self, tmp_path):
        path = tmp_path / "ours.json"
        write_keystore(path, KEY, PW)  # n = 2**17: what users get
        out = _cast("wallet", "address", "--keystore", str(path), "--password", PW)
        assert out.strip() == KEY.address

    def test_cast_decrypts_ours_to_the_same_key(self, tmp_path):
        path = tmp_path / "ours.json"
        write_keystore(path, KEY, PW, scrypt_n=2**12, allow_weak_kdf=True)
        out = _cast(
            "wallet",
            "decrypt-keystore",
            path.name,
            "--keystore-dir",
            str(tmp_path),
            "--unsafe-password",
            PW,
        )
        assert KEY.reveal_bytes().reveal().hex() in out.lower()


@pytest.mark.parametrize("version", ['"x"', "[3]", "true", "{}"])
def test_a_malformed_version_is_a_keystore_format_error(version: str) -> None:
    """A version that is no number escaped as a bare ValueError or TypeError ("unexpected
    TypeError" from the CLI) where every other malformed field is a KeystoreFormatError."""
    with pytest.raises(KeystoreFormatError, match="version 3"):
        decrypt_keystore('{"version": ' + version + ', "crypto": {}}', "pw")


@pytest.mark.parametrize("dklen", [65, 32 * 256])
def test_a_key_file_asking_pbkdf2_for_a_long_key_is_refused_before_deriving(dklen):
    """PBKDF2 runs all its rounds again for every 32 bytes of key: the largest round count
    read with a 1 MiB key would take hours. Only 32 bytes are used; 64 is the most read.
    (The first 32 bytes do not depend on dklen: such a file even opens with its password.)"""
    doc = encrypt_keystore(KEY, PW, kdf="pbkdf2", pbkdf2_iterations=1_000, allow_weak_kdf=True)
    doc["crypto"]["kdfparams"].update(dklen=dklen)  # 1,000 rounds: old code read it at once
    with pytest.raises(KeystoreFormatError, match="dklen"):
        decrypt_keystore(doc, PW)
