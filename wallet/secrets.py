"""Values that must never be printed.

A :class:`Secret` holds a mnemonic, passphrase, password, seed or key and refuses to show it:
``repr``, ``str``, ``format``/f-strings, ``logging`` (which formats with ``%s``/``%r``), rich or
pytest tracebacks with locals (they call ``repr``), and ``pickle``/``copy`` all see a redacted
placeholder or an error. The value comes out only through :meth:`Secret.reveal`, so every place
that touches plaintext is greppable.

:class:`PrivateKey` wraps an ``eth_keys`` private key, whose own ``__repr__`` prints the key hex.
It exposes what signing needs (address, public key, ``sign_msg_hash``) and nothing else.
"""

from __future__ import annotations

import hmac
from typing import Any, Generic, NoReturn, TypeVar

import coincurve
from eth_keys.datatypes import PrivateKey as _EthPrivateKey
from eth_keys.datatypes import PublicKey as _EthPublicKey
from eth_keys.datatypes import Signature as _EthSignature

from wallet.errors import InvalidPrivateKeyError

__all__ = ["REDACTED", "PrivateKey", "Secret", "SecretBytes", "SecretStr"]

REDACTED = "**********"
_T = TypeVar("_T", str, bytes)
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class Secret(Generic[_T]):
    """A redacting box around a ``str`` or ``bytes`` value."""

    __slots__ = ("_value",)
    _value: _T

    def __init__(self, value: _T) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        object.__setattr__(self, "_value", value)

    def reveal(self) -> _T:
        """The plaintext. Every caller of this is a place where a secret is used on purpose."""
        return self._value

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{REDACTED}')"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        a, b = self._value, other._value
        left = a.encode() if isinstance(a, str) else a
        right = b.encode() if isinstance(b, str) else b
        return hmac.compare_digest(left, right)

    __hash__ = None  # type: ignore[assignment]  # equal secrets must not leak through hashing

    def __len__(self) -> int:
        return len(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> NoReturn:
        raise TypeError(f"{type(self).__name__} cannot be pickled")

    def __copy__(self) -> Secret[_T]:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret[_T]:
        return self


class SecretStr(Secret[str]):
    """A mnemonic, passphrase or password."""

    __slots__ = ()


class SecretBytes(Secret[bytes]):
    """A seed or raw key."""

    __slots__ = ()


def _key_bytes(key: object) -> tuple[bytes, str | None]:
    """The key's 32 bytes, or ``b""`` and what is wrong: it never raises, so no traceback
    holds this frame's copies of the input."""
    if isinstance(key, _EthPrivateKey):
        return key.to_bytes(), None
    value = key.reveal() if isinstance(key, Secret) else key
    if isinstance(value, str):
        text = value[2:] if value[:2] in ("0x", "0X") else value
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            return b"", "private key is not valid hex"
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    else:
        return b"", f"private key must be bytes or hex, not {type(value).__name__}"
    if len(raw) != 32:
        return b"", "private key must be 32 bytes"
    if not 0 < int.from_bytes(raw, "big") < _SECP256K1_N:
        return b"", "private key is out of range for secp256k1"
    return raw, None


class PrivateKey:
    """A secp256k1 private key that never prints itself.

    Build it from 32 bytes, a ``0x`` hex string or a :class:`SecretBytes`; bad input raises
    :class:`~wallet.errors.InvalidPrivateKeyError` without echoing it.
    """

    __slots__ = ("_address", "_cc", "_key")
    _key: _EthPrivateKey
    _address: str
    _cc: coincurve.PrivateKey

    def __init__(self, key: bytes | str | SecretBytes | SecretStr | _EthPrivateKey) -> None:
        eth_key = key if isinstance(key, _EthPrivateKey) else None
        raw, problem = _key_bytes(key)
        # A traceback renderer that shows locals (rich, pytest -l, Sentry) must not find a
        # mistyped key, a few characters from the real one, in this frame.
        del key
        if problem is not None:
            raise InvalidPrivateKeyError(problem)
        if eth_key is None:
            eth_key = _EthPrivateKey(raw)
        object.__setattr__(self, "_key", eth_key)
        object.__setattr__(self, "_cc", coincurve.PrivateKey(raw))
        object.__setattr__(self, "_address", eth_key.public_key.to_checksum_address())

    @property
    def address(self) -> str:
        return self._address

    @property
    def public_key(self) -> _EthPublicKey:
        return self._key.public_key

    def sign_msg_hash(self, msg_hash: bytes) -> _EthSignature:
        return self._key.sign_msg_hash(msg_hash)

    def sign_digest(self, digest: bytes) -> tuple[int, int, int]:
        """``(y_parity, r, s)`` over a 32-byte digest: RFC 6979, low-s (libsecp256k1)."""
        sig = self._cc.sign_recoverable(digest, hasher=None)
        return sig[64], int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big")

    def reveal(self) -> _EthPrivateKey:
        """The underlying eth-keys key (its ``repr`` prints the key: keep it local)."""
        return self._key

    def reveal_bytes(self) -> SecretBytes:
        return SecretBytes(self._key.to_bytes())

    def __repr__(self) -> str:
        return f"PrivateKey(address={self._address!r}, key='{REDACTED}')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("PrivateKey is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrivateKey):
            return NotImplemented
        return hmac.compare_digest(self._key.to_bytes(), other._key.to_bytes())

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> NoReturn:
        raise TypeError("PrivateKey cannot be pickled")

    def __copy__(self) -> PrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> PrivateKey:
        return self
