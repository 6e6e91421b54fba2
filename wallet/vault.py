"""Encrypted wallets on disk under ``$FOLLOWPAY_HOME`` (default ``~/.followpay``).

Layout (directories 0700, files 0600, every write atomic)::

    $FOLLOWPAY_HOME/wallets/NAME.json     HD wallet: mnemonic + passphrase, encrypted
    $FOLLOWPAY_HOME/keystores/NAME.json   single key: keystore v3 (scrypt n=2**17)

An HD vault file is JSON. Its *header* (format, version, name, KDF parameters with salt,
cipher and nonce, and the public part: account xpub, first address, word count) is in clear
so ``list`` needs no password. The secret part — ``{"mnemonic", "passphrase"}`` — is encrypted
with AES-256-GCM under a key from scrypt(password, salt, n ≥ 2**17, r=8, p=1), with the
canonical JSON of the header as associated data: editing any header byte (say, swapping in
an attacker's xpub so deposits go elsewhere) makes decryption fail exactly like a wrong
password — at the next unlock. What reads only the public part (``list``, and the CLI's
``address``/``derive``/``export-xpub``/balance checks without a password) trusts the file as
it is, as any watch-only xpub file must: nothing without the password can tell a swapped
header from the real one. The plaintext never touches the disk.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from wallet.errors import (
    CorruptVaultError,
    InvalidMnemonicError,
    VaultError,
    WalletExistsError,
    WalletNotFoundError,
    WrongPasswordError,
)
from wallet.fsutil import atomic_write, ensure_private_dir, followpay_home
from wallet.keys import DEFAULT_ACCOUNT_PATH, HDWallet, validate_mnemonic
from wallet.keystore import DEFAULT_SCRYPT_N, decrypt_keystore, encrypt_keystore, password_bytes
from wallet.secrets import PrivateKey, SecretStr

if TYPE_CHECKING:
    from wallet.policy import SigningPolicy

__all__ = ["MIN_SCRYPT_N", "UnlockedWallet", "Vault", "WalletInfo"]

FORMAT = "followpay-vault"
VERSION = 1
#: Production floor. Tests may pass a lower ``scrypt_n`` explicitly (``allow_weak_kdf=True``).
MIN_SCRYPT_N = DEFAULT_SCRYPT_N
#: The most scrypt n a new wallet file gets: 2**20 with r = 8 takes 1 GiB, and unlocking runs it
#: before the tag can say the password is wrong.
MAX_SCRYPT_N = 2**20
_MAX_READ_SCRYPT_N = 2**22  # earlier releases created vaults without an upper bound
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # fullmatch: "$" admits a final "\n"


def _check_scrypt_n(scrypt_n: int, allow_weak_kdf: bool) -> None:
    if scrypt_n < MIN_SCRYPT_N and not allow_weak_kdf:
        raise VaultError(f"scrypt n must be at least {MIN_SCRYPT_N}", param="scrypt_n")
    if scrypt_n < 2 or scrypt_n & (scrypt_n - 1) or scrypt_n > MAX_SCRYPT_N:
        raise VaultError(f"scrypt n must be a power of two up to {MAX_SCRYPT_N}", param="scrypt_n")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _aad(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _secret_text(value: str | SecretStr | None) -> str:
    if value is None:
        return ""
    return value.reveal() if isinstance(value, SecretStr) else value


@dataclass(frozen=True, slots=True)
class WalletInfo:
    """What a wallet shows without its password."""

    name: str
    kind: str  # "hd" or "key"
    first_address: str
    xpub: str | None
    words: int | None
    path: Path
    created_at: int


@dataclass(frozen=True, slots=True)
class UnlockedWallet:
    """An opened wallet: an HD root, or a single key. Neither prints its secrets."""

    info: WalletInfo
    hd: HDWallet | None = None
    key: PrivateKey | None = None

    def private_key(self, index: int = 0, *, path: str | None = None) -> PrivateKey:
        if self.hd is not None:
            return self.hd.private_key(path if path is not None else index)
        assert self.key is not None
        if index != 0 or path is not None:
            raise VaultError(f"wallet {self.info.name!r} holds a single key: only index 0 exists")
        return self.key

    def address(self, index: int = 0, *, path: str | None = None) -> str:
        if self.hd is not None:
            return self.hd.address(index, path=path)
        return self.private_key(index, path=path).address


def _unseal(
    kdf: Scrypt, password: str | SecretStr, nonce: bytes, ciphertext: bytes, aad: bytes
) -> dict[str, str] | None:
    """The sealed secret; None for a wrong password or a modified file, {} for garbage. The
    key and the plaintext live only in this frame, which never raises once they exist: a
    traceback that shows locals (rich, Sentry) of the caller's error finds neither."""
    key = kdf.derive(password_bytes(password))
    try:
        plaintext = AESGCM(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        return None
    finally:
        del key
    try:
        secret = json.loads(plaintext)
    except ValueError:
        return {}
    if not isinstance(secret, dict) or not isinstance(secret.get("mnemonic"), str):
        return {}
    return secret


def _seal(
    kdf: Scrypt,
    password: str | SecretStr,
    nonce: bytes,
    secret: dict[str, str],
    aad: bytes,
) -> bytes:
    """The sealed secret (the counterpart of :func:`_unseal`). The key and the plaintext live
    only in this frame: a later error (the home not writable, a full disk, a wallet of that
    name made meanwhile) shows neither among a traceback's locals."""
    key = kdf.derive(password_bytes(password))
    plaintext = json.dumps(secret).encode()
    try:
        return AESGCM(key).encrypt(nonce, plaintext, aad)
    finally:
        del key, plaintext


_ADDRESS_HEX = re.compile(r"[0-9a-fA-F]{40}")


class Vault:
    """The wallets under one ``FOLLOWPAY_HOME``."""

    def __init__(
        self,
        home: str | Path | None = None,
        *,
        scrypt_n: int = DEFAULT_SCRYPT_N,
        allow_weak_kdf: bool = False,
    ) -> None:
        """``scrypt_n`` below 2**17 needs ``allow_weak_kdf`` (tests only)."""
        _check_scrypt_n(scrypt_n, allow_weak_kdf)
        self.home = followpay_home(home)
        self.scrypt_n = scrypt_n
        self.allow_weak_kdf = allow_weak_kdf

    @property
    def wallets_dir(self) -> Path:
        return self.home / "wallets"

    @property
    def keystores_dir(self) -> Path:
        return self.home / "keystores"

    def __repr__(self) -> str:
        return f"Vault(home={str(self.home)!r})"

    # -- naming -----------------------------------------------------------------------------

    @staticmethod
    def check_name(name: str) -> str:
        if not _NAME.fullmatch(name or ""):
            raise VaultError(
                "wallet name must be 1-64 letters, digits, '.', '_' or '-' "
                "and start with a letter or digit",
                param="name",
            )
        return name

    def _hd_path(self, name: str) -> Path:
        return self.wallets_dir / f"{self.check_name(name)}.json"

    def _key_path(self, name: str) -> Path:
        return self.keystores_dir / f"{self.check_name(name)}.json"

    def _refuse_existing(self, name: str) -> None:
        if self._hd_path(name).exists() or self._key_path(name).exists():
            raise WalletExistsError(f"a wallet named {name!r} already exists")

    # -- HD wallets -------------------------------------------------------------------------

    def create(
        self,
        name: str,
        mnemonic: str | SecretStr,
        password: str | SecretStr,
        *,
        passphrase: str | SecretStr | None = None,
        scrypt_n: int | None = None,
        allow_weak_kdf: bool = False,
    ) -> WalletInfo:
        """Encrypt and store an HD wallet. Validates everything before writing anything."""
        self._refuse_existing(name)
        allow_weak_kdf = allow_weak_kdf or self.allow_weak_kdf
        scrypt_n = self.scrypt_n if scrypt_n is None else scrypt_n
        _check_scrypt_n(scrypt_n, allow_weak_kdf)
        if not _secret_text(password):
            raise VaultError("password must not be empty", param="password")
        norm = validate_mnemonic(mnemonic)
        hd = HDWallet.from_mnemonic(norm, passphrase)
        salt, nonce = os.urandom(32), os.urandom(12)
        header: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "name": name,
            "created_at": int(time.time()),
            "kdf": {"name": "scrypt", "n": scrypt_n, "r": 8, "p": 1, "salt": _b64(salt)},
            "cipher": {"name": "aes-256-gcm", "nonce": _b64(nonce)},
            "public": {
                "account_path": DEFAULT_ACCOUNT_PATH,
                "xpub": hd.account_xpub(0),
                "first_address": hd.address(0),
                "words": len(norm.reveal().split(" ")),
            },
        }
        self.ensure_dirs()
        ciphertext = _seal(
            Scrypt(salt=salt, length=32, n=scrypt_n, r=8, p=1),
            password,
            nonce,
            {"mnemonic": norm.reveal(), "passphrase": _secret_text(passphrase)},
            _aad(header),
        )
        document = {**header, "ciphertext": _b64(ciphertext)}
        path = self._hd_path(name)
        atomic_write(path, json.dumps(document, indent=2).encode(), overwrite=False)
        return self._info_from_header(header, path)

    def _load(self, name: str) -> tuple[dict[str, Any], Path]:
        path = self._hd_path(name)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WalletNotFoundError(f"no wallet named {name!r}") from None
        except (OSError, ValueError):
            raise CorruptVaultError(f"wallet file for {name!r} is unreadable") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise CorruptVaultError(f"wallet file for {name!r} is not a FollowPay vault")
        if document.get("version") != VERSION:
            raise CorruptVaultError(f"wallet {name!r} has unsupported version")
        return document, path

    def _info_from_header(self, header: dict[str, Any], path: Path) -> WalletInfo:
        try:
            public = header["public"]
            return WalletInfo(
                name=str(header["name"]),
                kind="hd",
                first_address=str(public["first_address"]),
                xpub=str(public["xpub"]),
                words=int(public["words"]),
                path=path,
                created_at=int(header.get("created_at", 0)),
            )
        except (KeyError, TypeError, ValueError):
            raise CorruptVaultError(f"wallet file {path.name!r} has a malformed header") from None

    def _decrypt(
        self, name: str, password: str | SecretStr
    ) -> tuple[dict[str, Any], Path, dict[str, str]]:
        document, path = self._load(name)
        header = {k: v for k, v in document.items() if k != "ciphertext"}
        try:
            kdf, cipher = header["kdf"], header["cipher"]
            if kdf["name"] != "scrypt" or cipher["name"] != "aes-256-gcm":
                raise CorruptVaultError(f"wallet {name!r} uses an unsupported algorithm")
            n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
            if n < 2 or n & (n - 1) or n > _MAX_READ_SCRYPT_N or r != 8 or p < 1 or p > 16:
                raise CorruptVaultError(f"wallet {name!r} has out-of-range scrypt parameters")
            salt, nonce = _unb64(kdf["salt"]), _unb64(cipher["nonce"])
            ciphertext = _unb64(document["ciphertext"])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CorruptVaultError):
                raise
            raise CorruptVaultError(f"wallet {name!r} has a malformed header") from None
        secret = _unseal(
            Scrypt(salt=salt, length=32, n=n, r=r, p=p), password, nonce, ciphertext, _aad(header)
        )
        if secret is None:
            raise WrongPasswordError(
                f"wrong password for wallet {name!r} (or its file was modified)"
            )
        if not secret:
            raise CorruptVaultError(f"wallet {name!r} decrypted to garbage")
        return header, path, secret

    def _unlock_hd(self, name: str, password: str | SecretStr) -> UnlockedWallet:
        header, path, secret = self._decrypt(name, password)
        try:
            hd = HDWallet.from_mnemonic(secret["mnemonic"], secret.get("passphrase") or None)
        except InvalidMnemonicError:
            raise CorruptVaultError(f"wallet {name!r} decrypted to an invalid mnemonic") from None
        finally:
            secret.clear()
        info = self._info_from_header(header, path)
        if hd.address(0) != info.first_address:
            raise CorruptVaultError(f"wallet {name!r} does not match its stated address")
        return UnlockedWallet(info=info, hd=hd)

    def reveal_mnemonic(self, name: str, password: str | SecretStr) -> tuple[SecretStr, SecretStr]:
        """The stored mnemonic and passphrase, boxed (for an explicit export only)."""
        _, _, secret = self._decrypt(name, password)
        try:
            return SecretStr(secret["mnemonic"]), SecretStr(secret.get("passphrase") or "")
        finally:
            secret.clear()

    # -- single keys ------------------------------------------------------------------------

    def import_key(
        self,
        name: str,
        key: PrivateKey,
        password: str | SecretStr,
        *,
        scrypt_n: int | None = None,
        allow_weak_kdf: bool = False,
    ) -> WalletInfo:
        """Store a single key as keystore v3 (re-encrypted with scrypt n ≥ 2**17)."""
        self._refuse_existing(name)
        allow_weak_kdf = allow_weak_kdf or self.allow_weak_kdf
        scrypt_n = self.scrypt_n if scrypt_n is None else scrypt_n
        _check_scrypt_n(scrypt_n, allow_weak_kdf)
        if not _secret_text(password):
            raise VaultError("password must not be empty", param="password")
        document = encrypt_keystore(key, password, scrypt_n=scrypt_n, allow_weak_kdf=allow_weak_kdf)
        document["x-followpay"] = {"name": name, "created_at": int(time.time())}
        path = self._key_path(name)
        self.ensure_dirs()
        atomic_write(path, json.dumps(document).encode(), overwrite=False)
        return self._key_info(name, document, path)

    def _key_info(self, name: str, document: dict[str, Any], path: Path) -> WalletInfo:
        from wallet.keys import to_checksum_address

        meta = document.get("x-followpay") or {}
        address = str(document.get("address", "")).removeprefix("0x")
        created_at = meta.get("created_at", 0) if isinstance(meta, dict) else None
        if not _ADDRESS_HEX.fullmatch(address) or not isinstance(created_at, int):
            # a hand-placed file: unreadable here (list() skips it) rather than a zero address
            raise CorruptVaultError(f"keystore {name!r} has a malformed address or header")
        return WalletInfo(
            name=name,
            kind="key",
            first_address=to_checksum_address(address),
            xpub=None,
            words=None,
            path=path,
            created_at=created_at,
        )

    def _load_key(self, name: str) -> tuple[dict[str, Any], Path]:
        path = self._key_path(name)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WalletNotFoundError(f"no wallet named {name!r}") from None
        except (OSError, ValueError):
            raise CorruptVaultError(f"keystore for {name!r} is unreadable") from None
        if not isinstance(document, dict):
            raise CorruptVaultError(f"keystore for {name!r} is malformed")
        return document, path

    # -- common -----------------------------------------------------------------------------

    def exists(self, name: str) -> bool:
        return self._hd_path(name).exists() or self._key_path(name).exists()

    def info(self, name: str) -> WalletInfo:
        if self._hd_path(name).exists():
            document, path = self._load(name)
            return self._info_from_header(document, path)
        document, path = self._load_key(name)
        return self._key_info(name, document, path)

    def unlock(self, name: str, password: str | SecretStr) -> UnlockedWallet:
        """Decrypt wallet ``name``. Wrong password → :class:`WrongPasswordError`."""
        if self._hd_path(name).exists():
            return self._unlock_hd(name, password)
        document, path = self._load_key(name)
        key = decrypt_keystore(document, password)
        return UnlockedWallet(info=self._key_info(name, document, path), key=key)

    def list(self) -> list[WalletInfo]:
        """Every wallet, sorted by name; unreadable files are skipped, not fatal."""
        out: list[WalletInfo] = []
        for directory in (self.wallets_dir, self.keystores_dir):
            if not directory.is_dir():
                continue
            for path in directory.glob("*.json"):
                try:
                    out.append(self.info(path.stem))
                except VaultError:
                    continue
        return sorted(out, key=lambda info: info.name)

    def delete(self, name: str) -> None:
        """Remove the wallet and its signing policy (a new wallet of that name must not
        inherit the old one's limits)."""
        for path in (self._hd_path(name), self._key_path(name)):
            if path.exists():
                path.unlink()
                (self.policies_dir / f"{self.check_name(name)}.json").unlink(missing_ok=True)
                return
        raise WalletNotFoundError(f"no wallet named {name!r}")

    # -- signing policies -------------------------------------------------------------------

    @property
    def policies_dir(self) -> Path:
        return self.home / "policies"

    def save_policy(self, name: str, policy: SigningPolicy) -> Path:
        """Attach a signing policy to wallet ``name`` (``$FOLLOWPAY_HOME/policies/NAME.json``)."""
        if not self.exists(name):
            raise WalletNotFoundError(f"no wallet named {name!r}")
        path = self.policies_dir / f"{self.check_name(name)}.json"
        self.ensure_dirs()
        atomic_write(path, json.dumps(policy.to_dict(), indent=2).encode(), overwrite=True)
        return path

    def load_policy(self, name: str) -> SigningPolicy | None:
        """The wallet's signing policy, or ``None`` when it has none."""
        from wallet.policy import SigningPolicy

        path = self.policies_dir / f"{self.check_name(name)}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            raise CorruptVaultError(f"policy file for {name!r} is unreadable") from None
        try:
            return SigningPolicy.from_dict(data)
        except (TypeError, ValueError, AttributeError):
            raise CorruptVaultError(f"policy file for {name!r} is malformed") from None

    def ensure_dirs(self) -> None:
        ensure_private_dir(self.home)
        ensure_private_dir(self.wallets_dir)
        ensure_private_dir(self.keystores_dir)
        ensure_private_dir(self.policies_dir)
