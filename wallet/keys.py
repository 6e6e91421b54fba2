"""HD keys for Ethereum: BIP-39 mnemonics, BIP-32 derivation, BIP-44 paths, watch-only xpubs.

Pure: no network, no disk. bip-utils does the BIP-39 word lists/checksums and the hardened
private derivation; the hot path — addresses from an extended public key — is done here with
coincurve (one HMAC-SHA512 and one point tweak per address) and keccak, which is about twice as
fast as asking bip-utils for each child.

Paths: ``m/44'/60'/0'/0/i`` is the default (MetaMask, ethers, cast). ``'`` or ``h`` mark hardened
steps. :func:`account_path` builds the default path for an account index.

Secrets come back boxed (:class:`~wallet.secrets.SecretStr`, :class:`~wallet.secrets.PrivateKey`)
and error messages never echo mnemonic words or keys.
"""

from __future__ import annotations

import functools
import hmac
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import coincurve
from bip_utils import (
    Bip32KeyError,
    Bip32Secp256k1,
    Bip39Languages,
    Bip39MnemonicDecoder,
    Bip39MnemonicGenerator,
    Bip39SeedGenerator,
    Bip39WordsNum,
    MnemonicChecksumError,
)
from eth_hash.auto import keccak

from wallet.errors import (
    InvalidDerivationPathError,
    InvalidExtendedKeyError,
    InvalidMnemonicError,
    KeyMaterialError,
)
from wallet.secrets import PrivateKey, SecretBytes, SecretStr

__all__ = [
    "DEFAULT_ACCOUNT_PATH",
    "DEFAULT_PATH_PREFIX",
    "HARDENED",
    "HDWallet",
    "WatchOnlyWallet",
    "account_path",
    "address_from_public_key",
    "generate_mnemonic",
    "normalize_mnemonic",
    "parse_path",
    "seed_from_mnemonic",
    "to_checksum_address",
    "validate_mnemonic",
]

HARDENED = 0x80000000
#: Default BIP-44 prefix; the address index is appended (``m/44'/60'/0'/0/i``).
DEFAULT_PATH_PREFIX = "m/44'/60'/0'/0"
#: The BIP-44 *account* node whose xpub is exported for watch-only use.
DEFAULT_ACCOUNT_PATH = "m/44'/60'/0'"
_WORD_COUNTS = {12: Bip39WordsNum.WORDS_NUM_12, 15: Bip39WordsNum.WORDS_NUM_15,
                18: Bip39WordsNum.WORDS_NUM_18, 21: Bip39WordsNum.WORDS_NUM_21,
                24: Bip39WordsNum.WORDS_NUM_24}  # fmt: skip
_STEP = re.compile(r"([0-9]+)(['hH]?)")  # fullmatch; \d admits any script's digits


# --- addresses -------------------------------------------------------------------------------


def to_checksum_address(raw: bytes | str) -> str:
    """EIP-55 checksum encoding of a 20-byte address (bytes or hex)."""
    if isinstance(raw, bytes):
        return _checksum_hex(raw.hex())
    return _checksum_hex(raw[2:].lower() if raw[:2] in ("0x", "0X") else raw.lower())


@functools.lru_cache(maxsize=4096)
def _checksum_hex(hex_addr: str) -> str:
    # a keccak per call; services check the same few addresses (token, router, merchant) often
    digest = keccak(hex_addr.encode("ascii")).hex()
    return "0x" + "".join(
        c.upper() if c > "9" and digest[i] > "7" else c for i, c in enumerate(hex_addr)
    )


def address_from_public_key(public_key: bytes) -> str:
    """Checksum address of a secp256k1 public key (33-byte compressed or 64/65-byte raw)."""
    if len(public_key) == 64:
        raw = public_key
    elif len(public_key) == 65:
        raw = public_key[1:]
    else:
        raw = coincurve.PublicKey(public_key).format(compressed=False)[1:]
    return to_checksum_address(keccak(raw)[12:])


# --- mnemonics -------------------------------------------------------------------------------


def normalize_mnemonic(mnemonic: str | SecretStr) -> SecretStr:
    """NFKD, lower case, single spaces (what BIP-39 hashes)."""
    text = mnemonic.reveal() if isinstance(mnemonic, SecretStr) else mnemonic
    return SecretStr(" ".join(unicodedata.normalize("NFKD", text).lower().split()))


def generate_mnemonic(words: int = 12) -> SecretStr:
    """A fresh English BIP-39 mnemonic of 12, 15, 18, 21 or 24 words (OS randomness)."""
    if words not in _WORD_COUNTS:
        raise InvalidMnemonicError(
            f"a mnemonic has 12, 15, 18, 21 or 24 words, not {words}", param="words"
        )
    return SecretStr(Bip39MnemonicGenerator(Bip39Languages.ENGLISH).FromWordsNumber(
        _WORD_COUNTS[words]).ToStr())  # fmt: skip


def validate_mnemonic(mnemonic: str | SecretStr) -> SecretStr:
    """Normalize and check word count, words and checksum; returns the normalized mnemonic.

    Errors name the *position* of an unknown word, never the word itself.
    """
    norm = normalize_mnemonic(mnemonic)
    problem = _mnemonic_problem(norm)
    if problem is not None:
        raise InvalidMnemonicError(problem)
    return norm


def _mnemonic_problem(norm: SecretStr) -> str | None:
    """What is wrong with a normalized mnemonic, or None. Returns rather than raises: the
    words are this frame's locals, and a traceback that shows locals (rich, Sentry) of the
    caller's error must not print them."""
    words = norm.reveal().split(" ") if norm else []
    if len(words) not in _WORD_COUNTS:
        return f"a mnemonic has 12, 15, 18, 21 or 24 words, this one has {len(words)}"
    wordlist = _english_words()
    for position, word in enumerate(words, start=1):
        if word not in wordlist:
            return f"word {position} is not in the BIP-39 English word list"
    try:
        Bip39MnemonicDecoder(Bip39Languages.ENGLISH).Decode(norm.reveal())
    except MnemonicChecksumError:
        return "mnemonic checksum is invalid (a word is wrong)"
    except ValueError:
        return "mnemonic is not valid BIP-39"
    return None


_WORDS: frozenset[str] | None = None


def _english_words() -> frozenset[str]:
    global _WORDS
    if _WORDS is None:
        from bip_utils.bip.bip39.bip39_mnemonic_utils import Bip39WordsListGetter

        wl = Bip39WordsListGetter().GetByLanguage(Bip39Languages.ENGLISH)
        _WORDS = frozenset(wl.GetWordAtIdx(i) for i in range(wl.Length()))
    return _WORDS


def seed_from_mnemonic(
    mnemonic: str | SecretStr, passphrase: str | SecretStr | None = None
) -> SecretBytes:
    """The 64-byte BIP-39 seed (PBKDF2-HMAC-SHA512, 2048 rounds) after validation."""
    norm = validate_mnemonic(mnemonic)
    pw = passphrase.reveal() if isinstance(passphrase, SecretStr) else (passphrase or "")
    try:
        pw.encode("utf-8")
    except UnicodeEncodeError:  # the codec's error would quote the byte and its position
        raise KeyMaterialError(
            "the passphrase is not valid UTF-8 text", param="passphrase"
        ) from None
    return SecretBytes(Bip39SeedGenerator(norm.reveal()).Generate(pw))


# --- paths -----------------------------------------------------------------------------------


def parse_path(path: str) -> tuple[int, ...]:
    """``"m/44'/60'/0'/0/1"`` → indexes with the hardened bit set where marked."""
    text = path.strip()
    parts = text.split("/")
    if not parts or parts[0] != "m":
        raise InvalidDerivationPathError(f"derivation path must start with 'm/': {path!r}")
    out: list[int] = []
    for part in parts[1:]:
        match = _STEP.fullmatch(part)
        if not match:
            raise InvalidDerivationPathError(f"bad step {part!r} in derivation path {path!r}")
        index = int(match.group(1))
        if index >= HARDENED:
            raise InvalidDerivationPathError(f"step {part!r} is too large in {path!r}")
        out.append(index | HARDENED if match.group(2) else index)
    return tuple(out)


def format_path(indexes: tuple[int, ...]) -> str:
    return "/".join(["m", *(f"{i & ~HARDENED}'" if i & HARDENED else str(i) for i in indexes)])


def account_path(index: int = 0, *, account: int = 0, change: int = 0) -> str:
    """The default Ethereum path ``m/44'/60'/{account}'/{change}/{index}``."""
    for name, value in (("index", index), ("account", account), ("change", change)):
        if not 0 <= value < HARDENED:
            raise InvalidDerivationPathError(f"{name} must be between 0 and 2^31-1", param=name)
    return f"m/44'/60'/{account}'/{change}/{index}"


# --- public derivation (the fast path) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PubNode:
    key: coincurve.PublicKey
    chain_code: bytes

    def child(self, index: int) -> _PubNode:
        if index & HARDENED:
            raise InvalidDerivationPathError("hardened steps need the private key, not an xpub")
        compressed = self.key.format(compressed=True)
        digest = hmac.digest(self.chain_code, compressed + index.to_bytes(4, "big"), "sha512")
        # coincurve rejects an out-of-range tweak or the point at infinity (p < 2^-127): BIP-32
        # says skip to the next index; surfacing an error is the honest equivalent.
        return _PubNode(self.key.add(digest[:32]), digest[32:])

    def address_at(self, index: int) -> str:
        digest = hmac.digest(
            self.chain_code, self.key.format(compressed=True) + index.to_bytes(4, "big"), "sha512"
        )
        child = self.key.add(digest[:32])
        return to_checksum_address(keccak(child.format(compressed=False)[1:])[12:])


class WatchOnlyWallet:
    """Addresses from an extended public key alone (no secrets involved).

    Accepts an account-level xpub (depth 3, ``m/44'/60'/a'``: addresses are ``change/index``
    below it) or a change-level xpub (depth 4, ``m/44'/60'/a'/c``: addresses are ``index``).
    """

    def __init__(self, xpub: str, *, change: int = 0, path: str | None = None) -> None:
        """``path``: where a depth-4 xpub sits, when its maker knows (an :class:`HDWallet`
        does); addresses are then labelled ``path/i`` instead of ``(xpub)/i``."""
        try:
            node = Bip32Secp256k1.FromExtendedKey(xpub.strip())
        except Exception:  # bip-utils raises Base58, Bip32 and Value errors alike
            raise InvalidExtendedKeyError("not a valid BIP-32 extended public key") from None
        if not node.IsPublicOnly():
            raise InvalidExtendedKeyError(
                "this is an extended *private* key: export and share only the xpub"
            )
        self.xpub = xpub.strip()
        self.depth = int(node.Depth())
        base = _PubNode(
            coincurve.PublicKey(node.PublicKey().RawCompressed().ToBytes()),
            node.ChainCode().ToBytes(),
        )
        if self.depth == 3:
            self._node = base.child(change)
            self._prefix = f"m/44'/60'/{int(node.Index()) & ~HARDENED}'/{change}"
        else:
            # depth 4 is the change node; any other depth is used as the direct parent. Only
            # a depth-3 xpub names its account (its own index): below it the path is unknown,
            # so the label says where the address comes from instead of guessing account 0.
            self._node = base
            self._prefix = path if path is not None and self.depth == 4 else "(xpub)"

    def __repr__(self) -> str:
        return f"WatchOnlyWallet(depth={self.depth}, first={self.address(0)!r})"

    def path(self, index: int) -> str:
        """The full path for ``index`` below a depth-3 (account) xpub, assuming the standard
        BIP-44 path; ``(xpub)/index`` below any other."""
        return f"{self._prefix}/{index}"

    def address(self, index: int) -> str:
        if not 0 <= index < HARDENED:
            raise InvalidDerivationPathError("index must be between 0 and 2^31-1", param="index")
        return self._node.address_at(index)

    def addresses(self, start: int = 0, count: int = 1) -> Iterator[tuple[int, str]]:
        if count < 0 or start < 0 or start + count > HARDENED:
            raise InvalidDerivationPathError("index range out of bounds", param="index")
        node = self._node
        for i in range(start, start + count):
            yield i, node.address_at(i)


# --- private derivation ----------------------------------------------------------------------


class HDWallet:
    """A BIP-32 root from a mnemonic (+ optional passphrase). Holds the root key, never prints it.

    >>> w = HDWallet.from_mnemonic("test test test test test test test test test test test junk")
    >>> w.address(0)
    '0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266'
    """

    def __init__(self, root: Bip32Secp256k1) -> None:
        self._root = root

    @classmethod
    def from_mnemonic(
        cls, mnemonic: str | SecretStr, passphrase: str | SecretStr | None = None
    ) -> HDWallet:
        seed = seed_from_mnemonic(mnemonic, passphrase)
        return cls(Bip32Secp256k1.FromSeed(seed.reveal()))

    @classmethod
    def from_seed(cls, seed: bytes | SecretBytes) -> HDWallet:
        raw = seed.reveal() if isinstance(seed, SecretBytes) else seed
        try:
            return cls(Bip32Secp256k1.FromSeed(raw))
        except (Bip32KeyError, ValueError):
            raise InvalidExtendedKeyError("seed cannot produce a BIP-32 root key") from None

    @classmethod
    def from_xprv(cls, xprv: str | SecretStr) -> HDWallet:
        text = xprv.reveal() if isinstance(xprv, SecretStr) else xprv
        try:
            node = Bip32Secp256k1.FromExtendedKey(text.strip())
        except Exception:  # bip-utils raises Base58, Bip32 and Value errors alike
            raise InvalidExtendedKeyError("not a valid BIP-32 extended private key") from None
        if node.IsPublicOnly():
            raise InvalidExtendedKeyError("this is an xpub: it cannot sign")
        return cls(node)

    def __repr__(self) -> str:
        return f"HDWallet(first_address={self.address(0)!r})"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("HDWallet cannot be pickled")

    def _node(self, path: str) -> Bip32Secp256k1:
        indexes = parse_path(path)
        node = self._root
        for index in indexes:
            node = node.ChildKey(index)
        return node

    def private_key(self, path: str | int = 0) -> PrivateKey:
        """The key at ``path`` (or at index ``i`` of the default path)."""
        full = account_path(path) if isinstance(path, int) else path
        return PrivateKey(self._node(full).PrivateKey().Raw().ToBytes())

    def xprv(self, path: str = "m") -> SecretStr:
        return SecretStr(self._node(path).PrivateKey().ToExtended())

    def xpub(self, path: str = DEFAULT_ACCOUNT_PATH) -> str:
        """The extended public key at ``path`` (default: the BIP-44 account node)."""
        return str(self._node(path).PublicKey().ToExtended())

    def account_xpub(self, account: int = 0) -> str:
        return self.xpub(f"m/44'/60'/{account}'")

    @cached_property
    def _default_watch(self) -> WatchOnlyWallet:
        return WatchOnlyWallet(self.xpub(DEFAULT_PATH_PREFIX), path=DEFAULT_PATH_PREFIX)

    def watch_only(self, account: int = 0) -> WatchOnlyWallet:
        if account == 0:
            return self._default_watch
        return WatchOnlyWallet(self.account_xpub(account))

    def address(self, index: int = 0, *, path: str | None = None) -> str:
        """The checksum address at ``path``, or at ``index`` on the default path."""
        if path is None:
            return self._default_watch.address(index)
        node = self._node(path)
        return address_from_public_key(node.PublicKey().RawCompressed().ToBytes())
