"""Web3 Secret Storage (keystore v3) files for single keys, compatible with geth, cast and ethers.

Reading accepts both KDFs the format defines — ``scrypt`` (any ``n``, e.g. cast's 8192) and
``pbkdf2`` with ``hmac-sha256`` — and the old capitalised ``Crypto`` key. Writing uses scrypt with
``n = 2**17, r = 8, p = 1`` (the project's floor) unless a caller lowers it explicitly for tests.
The MAC (``keccak256(dk[16:32] || ciphertext)``) is checked in constant time before decrypting;
a mismatch is :class:`~wallet.errors.WrongPasswordError`.

Implemented on ``cryptography`` (scrypt, PBKDF2, AES-128-CTR) rather than eth-keyfile so the
memory limit of scrypt is handled and the plaintext key never lives outside a
:class:`~wallet.secrets.PrivateKey`.
"""

from __future__ import annotations

import hmac
import json
import os
import uuid
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from eth_hash.auto import keccak

from wallet.errors import KeystoreFormatError, VaultError, WrongPasswordError
from wallet.fsutil import atomic_write
from wallet.secrets import PrivateKey, SecretStr

__all__ = [
    "DEFAULT_SCRYPT_N",
    "MIN_PBKDF2_ITERATIONS",
    "decrypt_keystore",
    "encrypt_keystore",
    "keystore_address",
    "password_bytes",
    "read_keystore",
    "write_keystore",
]

DEFAULT_SCRYPT_N = 2**17
#: The fewest PBKDF2-HMAC-SHA256 rounds a written keystore may use (eth-keyfile's default).
MIN_PBKDF2_ITERATIONS = 262_144
_MAX_SCRYPT_N = 2**20  # refuse files that would take minutes or gigabytes
_MAX_SCRYPT_MEMORY = 2**30  # scrypt needs 128·r·n bytes, before the MAC can say it is wrong
_MAX_PBKDF2_C = 10_000_000


def password_bytes(password: str | SecretStr) -> bytes:
    """The password's UTF-8 bytes, what a KDF reads. Text that has none (a non-UTF-8
    ``FOLLOWPAY_PASSWORD``, which Python reads with surrogate escapes) is refused without
    quoting it: the codec's own error names the offending byte and its position."""
    text = password.reveal() if isinstance(password, SecretStr) else password
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise VaultError("the password is not valid UTF-8 text", param="password") from None


def _kdf(kdf: str, params: dict[str, Any]) -> Scrypt | PBKDF2HMAC:
    """The file's KDF, its parameters checked before any password is at hand (an error here
    shows no secret among a traceback's locals)."""
    try:
        salt = bytes.fromhex(params["salt"])
        dklen = int(params.get("dklen", 32))
        if not 32 <= dklen <= 64:  # PBKDF2's work grows with dklen; 32 bytes are used
            raise KeystoreFormatError("keystore dklen must be from 32 to 64")
        if kdf == "scrypt":
            n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
            if n < 2 or n & (n - 1) or n > _MAX_SCRYPT_N or not 0 < r <= 32 or not 0 < p <= 16:
                raise KeystoreFormatError("keystore scrypt parameters are out of range")
            if 128 * r * n > _MAX_SCRYPT_MEMORY:
                raise KeystoreFormatError("keystore scrypt parameters need more than 1 GiB")
            return Scrypt(salt=salt, length=dklen, n=n, r=r, p=p)
        if kdf == "pbkdf2":
            if params.get("prf", "hmac-sha256") != "hmac-sha256":
                raise KeystoreFormatError("keystore pbkdf2 prf must be hmac-sha256")
            c = int(params["c"])
            if not 0 < c <= _MAX_PBKDF2_C:
                raise KeystoreFormatError("keystore pbkdf2 iteration count is out of range")
            return PBKDF2HMAC(hashes.SHA256(), dklen, salt, c)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, KeystoreFormatError):
            raise
        raise KeystoreFormatError("keystore kdfparams are malformed") from None
    raise KeystoreFormatError(f"unsupported keystore kdf {kdf!r}")


def decrypt_keystore(data: dict[str, Any] | str | bytes, password: str | SecretStr) -> PrivateKey:
    """The key inside a keystore v3 document (dict or JSON text)."""
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError:
            raise KeystoreFormatError("keystore is not valid JSON") from None
    version = data.get("version") if isinstance(data, dict) else None
    if not isinstance(data, dict) or isinstance(version, bool) or str(version) != "3":
        raise KeystoreFormatError("not a version 3 keystore")
    crypto = data.get("crypto") or data.get("Crypto")
    if not isinstance(crypto, dict):
        raise KeystoreFormatError("keystore has no crypto section")
    try:
        cipher = crypto["cipher"]
        iv = bytes.fromhex(crypto["cipherparams"]["iv"])
        ciphertext = bytes.fromhex(crypto["ciphertext"])
        mac = bytes.fromhex(crypto["mac"])
        kdf = str(crypto["kdf"])
        params = dict(crypto["kdfparams"])
    except (KeyError, TypeError, ValueError):
        raise KeystoreFormatError("keystore crypto section is malformed") from None
    if cipher != "aes-128-ctr" or len(iv) != 16:
        raise KeystoreFormatError(f"unsupported keystore cipher {cipher!r}")
    key = _open(_kdf(kdf, params), password, iv, ciphertext, mac)
    if key is None:
        raise WrongPasswordError("wrong password for this keystore")
    stated = data.get("address")
    if stated and str(stated).lower().removeprefix("0x") != key.address[2:].lower():
        raise KeystoreFormatError("keystore address does not match its key")
    return key


def _open(
    kdf: Scrypt | PBKDF2HMAC,
    password: str | SecretStr,
    iv: bytes,
    ciphertext: bytes,
    mac: bytes,
) -> PrivateKey | None:
    """The key, or None for a wrong password. The derived key lives only in this frame, which
    returns rather than raise once it exists: a traceback that shows locals (rich, Sentry)
    of any later error finds no key material (the address is not covered by the MAC)."""
    dk = kdf.derive(password_bytes(password))
    if not hmac.compare_digest(keccak(dk[16:32] + ciphertext), mac):
        return None
    decryptor = Cipher(algorithms.AES(dk[:16]), modes.CTR(iv)).decryptor()
    del dk
    return PrivateKey(decryptor.update(ciphertext) + decryptor.finalize())


def encrypt_keystore(
    key: PrivateKey,
    password: str | SecretStr,
    *,
    scrypt_n: int = DEFAULT_SCRYPT_N,
    kdf: str = "scrypt",
    pbkdf2_iterations: int = MIN_PBKDF2_ITERATIONS,
    allow_weak_kdf: bool = False,
) -> dict[str, Any]:
    """A keystore v3 document for ``key`` (scrypt ``n=2**17, r=8, p=1`` by default). A cheaper
    KDF (scrypt ``n`` below 2**17, PBKDF2 below 262,144 rounds) needs ``allow_weak_kdf``
    (tests): a key file written with one falls to a password guesser many times faster."""
    if not allow_weak_kdf:
        if kdf == "scrypt" and scrypt_n < DEFAULT_SCRYPT_N:
            raise KeystoreFormatError(f"scrypt n must be at least {DEFAULT_SCRYPT_N}")
        if kdf == "pbkdf2" and pbkdf2_iterations < MIN_PBKDF2_ITERATIONS:
            raise KeystoreFormatError(f"PBKDF2 needs at least {MIN_PBKDF2_ITERATIONS} iterations")
    salt = os.urandom(32)
    if kdf == "scrypt":
        params: dict[str, Any] = {"dklen": 32, "n": scrypt_n, "p": 1, "r": 8, "salt": salt.hex()}
    elif kdf == "pbkdf2":
        params = {"c": pbkdf2_iterations, "dklen": 32, "prf": "hmac-sha256", "salt": salt.hex()}
    else:
        raise KeystoreFormatError(f"unsupported keystore kdf {kdf!r}")
    dk = _kdf(kdf, params).derive(password_bytes(password))
    iv = os.urandom(16)
    encryptor = Cipher(algorithms.AES(dk[:16]), modes.CTR(iv)).encryptor()
    ciphertext = encryptor.update(key.reveal().to_bytes()) + encryptor.finalize()
    return {
        "address": key.address[2:].lower(),
        "crypto": {
            "cipher": "aes-128-ctr",
            "cipherparams": {"iv": iv.hex()},
            "ciphertext": ciphertext.hex(),
            "kdf": kdf,
            "kdfparams": params,
            "mac": keccak(dk[16:32] + ciphertext).hex(),
        },
        "id": str(uuid.uuid4()),
        "version": 3,
    }


def read_keystore(path: str | Path, password: str | SecretStr) -> PrivateKey:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeystoreFormatError(f"keystore file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError):
        raise KeystoreFormatError(f"keystore file {str(path)!r} cannot be read") from None
    return decrypt_keystore(text, password)


def keystore_address(path: str | Path) -> str | None:
    """The address a keystore file states in clear (no password needed), if any."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    address = data.get("address") if isinstance(data, dict) else None
    if not address:
        return None
    from wallet.keys import to_checksum_address

    return to_checksum_address(str(address))


def write_keystore(
    path: str | Path,
    key: PrivateKey,
    password: str | SecretStr,
    *,
    scrypt_n: int = DEFAULT_SCRYPT_N,
    overwrite: bool = False,
    allow_weak_kdf: bool = False,
) -> Path:
    """Encrypt ``key`` to ``path`` atomically with mode 0600 (the user's directory keeps its
    own mode: exporting to ``~/k.json`` must not make the home directory 0700)."""
    document = encrypt_keystore(key, password, scrypt_n=scrypt_n, allow_weak_kdf=allow_weak_kdf)
    target = Path(path).expanduser()
    atomic_write(target, json.dumps(document).encode(), overwrite=overwrite, private_dir=False)
    return target
