"""Signing, pure and offline: EIP-1559 transactions, EIP-191 messages, EIP-712 typed data.

Nothing here talks to a node. Every transaction is type 2 with an explicit ``chainId``: legacy
(``gasPrice``) and chain-less transactions are refused, because a signature without a chain id
can be replayed on every network.

Helpers build the two typed-data documents payments need — the router's ``PaymentIntent``
(signed by a merchant's operator key) and an ERC-2612 ``Permit`` (signed by the payer) — and
convert between 65-byte signatures and EIP-2098 compact ``(r, vs)`` pairs, which is what the
router takes.

:class:`Signer` binds a :class:`~wallet.secrets.PrivateKey` to an optional
:class:`~wallet.policy.SigningPolicy` checked before every signature.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from eth_account import Account
from eth_account.messages import SignableMessage, encode_defunct, encode_typed_data
from eth_hash.auto import keccak
from eth_keys import keys
from eth_keys.exceptions import BadSignature
from eth_utils.exceptions import ValidationError
from rlp import decode as rlp_decode
from rlp import encode as rlp_encode

from wallet.errors import SigningError
from wallet.secrets import PrivateKey

if TYPE_CHECKING:
    from wallet.policy import SigningPolicy

__all__ = [
    "ROUTER_DOMAIN_NAME",
    "ROUTER_DOMAIN_VERSION",
    "PaymentIntent",
    "SignedTransaction",
    "Signer",
    "decode_transaction",
    "domain_separator",
    "from_compact",
    "payment_intent_digest",
    "payment_intent_struct_hash",
    "payment_intent_typed_data",
    "permit_typed_data",
    "recover_intent_signer",
    "recover_message",
    "recover_typed_data",
    "sign_message",
    "sign_transaction",
    "sign_typed_data",
    "split_signature",
    "to_compact",
]

ROUTER_DOMAIN_NAME = "FollowPay PaymentRouter"
ROUTER_DOMAIN_VERSION = "1"
_SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0
_REQUIRED = ("chainId", "nonce", "gas", "maxFeePerGas", "maxPriorityFeePerGas")
_DOMAIN_TYPE = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]
_INTENT_TYPE = [
    {"name": "merchant", "type": "address"},
    {"name": "token", "type": "address"},
    {"name": "amount", "type": "uint256"},
    {"name": "fee", "type": "uint256"},
    {"name": "invoiceId", "type": "uint256"},
    {"name": "payer", "type": "address"},
    {"name": "deadline", "type": "uint256"},
]
_PERMIT_TYPE = [
    {"name": "owner", "type": "address"},
    {"name": "spender", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "nonce", "type": "uint256"},
    {"name": "deadline", "type": "uint256"},
]
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"


def _checksum(value: str, param: str) -> str:
    from wallet.addresses import parse_address

    return parse_address(value, param=param)


# --- transactions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignedTransaction:
    raw: bytes
    hash: str  # 0x-prefixed
    sender: str
    nonce: int
    chain_id: int
    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    @property
    def raw_hex(self) -> str:
        return "0x" + self.raw.hex()


_INT_FIELDS = ("chainId", "nonce", "maxPriorityFeePerGas", "maxFeePerGas", "gas", "value")
_KNOWN_FIELDS = frozenset((*_INT_FIELDS, "to", "data", "input", "accessList", "type", "from"))


def _whole_numbers(tx: Mapping[str, Any]) -> dict[str, Any]:
    """``tx`` with its number fields as non-negative ints (``0x`` hex strings read), so the
    fast path signs it; anything else is a :class:`SigningError` here, before any library that
    holds the key in its frames can fail on it."""
    out = dict(tx)
    for field in _INT_FIELDS:
        value = out.get(field)
        if value is None:
            continue
        if isinstance(value, str) and value[:2] in ("0x", "0X"):
            try:
                value = int(value, 16)
            except ValueError:
                raise SigningError(f"transaction {field} is not a number") from None
        if type(value) is not int:
            raise SigningError(f"transaction {field} must be an integer")
        if value < 0:
            raise SigningError(f"transaction {field} must not be negative")
        out[field] = value
    return out


def _check_transaction(tx: Mapping[str, Any], chain_id: int | None) -> None:
    if "gasPrice" in tx:
        raise SigningError("legacy (gasPrice) transactions are refused: use EIP-1559 fees")
    tx_type = tx.get("type", 2)
    if tx_type not in (2, "0x2", "0x02"):
        raise SigningError(f"only EIP-1559 (type 2) transactions are signed, not type {tx_type}")
    missing = [field for field in _REQUIRED if tx.get(field) is None]
    if missing:
        raise SigningError(f"transaction is missing {', '.join(missing)}")
    if chain_id is not None and tx["chainId"] != chain_id:
        raise SigningError(f"transaction chainId {tx['chainId']} is not this chain ({chain_id})")
    if tx["maxPriorityFeePerGas"] > tx["maxFeePerGas"]:
        raise SigningError("maxPriorityFeePerGas must not exceed maxFeePerGas")


def _fast_sign(tx: Mapping[str, Any], key: PrivateKey) -> SignedTransaction | None:
    """EIP-1559 encoding + libsecp256k1 directly; ``None`` means "use eth-account".

    Byte-identical to eth-account (tested with hypothesis); about 10x faster because it skips
    eth-account's dict validation and formatter pipeline. Anything unusual (hex-string numbers,
    unknown fields) falls back to eth-account so behaviour never diverges.
    """
    if not _KNOWN_FIELDS.issuperset(tx):
        return None
    ints = []
    for field in _INT_FIELDS:
        value = tx.get(field, 0)
        if type(value) is not int or value < 0:
            return None
        ints.append(value)
    chain_id, nonce, tip, max_fee, gas, value = ints
    to = tx.get("to") or b""
    if isinstance(to, str):
        to = bytes.fromhex(_checksum(to, "to")[2:])
    data = tx.get("data", tx.get("input", b"")) or b""
    if isinstance(data, str):
        try:
            data = bytes.fromhex(data[2:] if data[:2] in ("0x", "0X") else data)
        except ValueError:
            raise SigningError("transaction data is not hex") from None
    access_list = []
    for entry in tx.get("accessList") or ():
        try:
            address = bytes.fromhex(_checksum(entry["address"], "accessList")[2:])
            keys = [bytes.fromhex(k[2:] if k[:2] == "0x" else k) for k in entry["storageKeys"]]
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        access_list.append([address, keys])
    fields = [chain_id, nonce, tip, max_fee, gas, to, value, bytes(data), access_list]
    digest = keccak(b"\x02" + rlp_encode(fields))
    y_parity, r, s = key.sign_digest(digest)
    raw = b"\x02" + rlp_encode([*fields, y_parity, r, s])
    return SignedTransaction(
        raw=raw,
        hash="0x" + keccak(raw).hex(),
        sender=key.address,
        nonce=nonce,
        chain_id=chain_id,
        max_fee_per_gas=max_fee,
        max_priority_fee_per_gas=tip,
    )


def sign_transaction(
    tx: Mapping[str, Any], key: PrivateKey, *, chain_id: int | None = None
) -> SignedTransaction:
    """Sign an EIP-1559 transaction dict (web3 field names). ``chainId`` is mandatory."""
    tx = _whole_numbers(tx)
    _check_transaction(tx, chain_id)
    if len(tx.get("to") or "") not in (0, 20, 42):
        raise SigningError("transaction 'to' must be a 20-byte address")
    fast = _fast_sign(tx, key)
    if fast is not None:
        return fast
    payload = dict(tx)
    payload.setdefault("type", 2)
    payload.pop("from", None)
    to = payload.get("to")
    if to:
        payload["to"] = _checksum(to, "to") if isinstance(to, str) else to
    try:
        signed = Account.sign_transaction(payload, key.reveal())
    except (TypeError, ValueError) as exc:
        # eth-account's message names the bad fields and values; none of them is the key
        raise SigningError(f"transaction is malformed: {exc}") from None
    except Exception as exc:  # any other failure: its frames hold the key, so it stays here
        raise SigningError(f"transaction is malformed ({type(exc).__name__})") from None
    return SignedTransaction(
        raw=bytes(signed.raw_transaction),
        hash="0x" + bytes(signed.hash).hex(),
        sender=key.address,
        nonce=int(tx["nonce"]),
        chain_id=int(tx["chainId"]),
        max_fee_per_gas=int(tx["maxFeePerGas"]),
        max_priority_fee_per_gas=int(tx["maxPriorityFeePerGas"]),
    )


def decode_transaction(raw: bytes) -> dict[str, Any]:
    """The unsigned fields (web3 names) of a signed EIP-1559 transaction: the inverse of
    :func:`sign_transaction` minus the signature, so a journaled one can be re-signed."""
    if raw[:1] != b"\x02":
        raise SigningError("only EIP-1559 (type 2) transactions are decoded")
    try:
        chain_id, nonce, tip, max_fee, gas, to, value, data, access_list, *_sig = rlp_decode(
            raw[1:]
        )
    except Exception:
        raise SigningError("not an RLP-encoded EIP-1559 transaction") from None
    tx: dict[str, Any] = {
        "type": 2,
        "chainId": int.from_bytes(chain_id, "big"),
        "nonce": int.from_bytes(nonce, "big"),
        "maxPriorityFeePerGas": int.from_bytes(tip, "big"),
        "maxFeePerGas": int.from_bytes(max_fee, "big"),
        "gas": int.from_bytes(gas, "big"),
        "value": int.from_bytes(value, "big"),
    }
    if to:
        tx["to"] = _checksum("0x" + bytes(to).hex(), "to")
    if data:
        tx["data"] = "0x" + bytes(data).hex()
    if access_list:
        tx["accessList"] = [
            {"address": _checksum("0x" + bytes(a).hex(), "accessList"),
             "storageKeys": ["0x" + bytes(k).hex() for k in keys]}
            for a, keys in access_list
        ]  # fmt: skip
    return tx


# --- messages and typed data -----------------------------------------------------------------


def sign_message(message: str | bytes, key: PrivateKey) -> bytes:
    """EIP-191 ``personal_sign`` (version ``0x45``); returns the 65-byte ``r || s || v``."""
    encoded = encode_defunct(text=message) if isinstance(message, str) else encode_defunct(message)
    return bytes(Account.sign_message(encoded, key.reveal()).signature)


def recover_message(message: str | bytes, signature: bytes) -> str:
    """The address that signed ``message`` with EIP-191; :class:`SigningError` when the
    signature recovers no key (a wrong length, an invalid ``v``, ``r`` or ``s``)."""
    encoded = encode_defunct(text=message) if isinstance(message, str) else encode_defunct(message)
    return _recover(encoded, signature)


def sign_typed_data(typed_data: Mapping[str, Any], key: PrivateKey) -> bytes:
    """EIP-712 ``eth_signTypedData_v4`` over a full document; returns ``r || s || v``."""
    encoded = encode_typed_data(full_message=dict(typed_data))
    return bytes(Account.sign_message(encoded, key.reveal()).signature)


def recover_typed_data(typed_data: Mapping[str, Any], signature: bytes) -> str:
    encoded = encode_typed_data(full_message=dict(typed_data))
    return _recover(encoded, signature)


#: secp256k1's group order halved: a larger ``s`` is the malleable twin of a valid signature.
_HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0


def _recover(encoded: SignableMessage, signature: bytes) -> str:
    """Refuses, as OpenZeppelin's ``ECDSA.recover`` does, all but 65 bytes and a high ``s``:
    anyone can turn a signature into a second valid one by flipping ``s``, so a check that
    treats signatures as unique (a used-signature list) would take it twice."""
    if len(signature) != 65:
        raise SigningError("a signature has 65 bytes")
    if int.from_bytes(signature[32:64], "big") > _HALF_ORDER:
        raise SigningError("the signature's s is in the upper half (malleable)")
    try:
        return str(Account.recover_message(encoded, signature=signature))
    except (BadSignature, ValidationError, ValueError) as exc:  # no ValueError subclasses
        raise SigningError("the signature recovers no public key") from exc


def split_signature(signature: bytes) -> tuple[int, bytes, bytes]:
    """65-byte ``r || s || v`` → ``(v, r, s)`` with ``v`` in {27, 28}."""
    if len(signature) != 65:
        raise SigningError("a signature has 65 bytes")
    v = signature[64]
    if v < 27:
        v += 27
    return v, signature[:32], signature[32:64]


def to_compact(signature: bytes) -> tuple[bytes, bytes]:
    """EIP-2098: 65-byte signature → ``(r, vs)`` where ``vs = (v - 27) << 255 | s``."""
    v, r, s = split_signature(signature)
    s_int = int.from_bytes(s, "big")
    if s_int > _SECP256K1_HALF_N:
        raise SigningError("signature has a high s value (not canonical)")
    if v not in (27, 28):
        raise SigningError("signature v must be 27 or 28")
    vs = ((v - 27) << 255) | s_int
    return r, vs.to_bytes(32, "big")


def from_compact(r: bytes, vs: bytes) -> tuple[int, bytes, bytes]:
    """EIP-2098 ``(r, vs)`` → ``(v, r, s)``."""
    vs_int = int.from_bytes(vs, "big")
    v = 27 + (vs_int >> 255)
    s = vs_int & ((1 << 255) - 1)
    return v, r, s.to_bytes(32, "big")


# --- payment documents -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PaymentIntent:
    """The router's ``PaymentIntent``; ``payer`` = zero address means "anyone may pay"."""

    merchant: str
    token: str
    amount: int
    fee: int
    invoice_id: int
    payer: str = ZERO_ADDRESS
    deadline: int = 0

    def __post_init__(self) -> None:
        from wallet.amounts import validate_base_units

        for field in ("merchant", "token", "payer"):
            object.__setattr__(self, field, _checksum(getattr(self, field), field))
        validate_base_units(self.amount, param="amount")
        validate_base_units(self.fee, param="fee")
        validate_base_units(self.invoice_id, param="invoice_id")
        validate_base_units(self.deadline, param="deadline")
        if self.fee > self.amount:
            from wallet.errors import AmountError

            raise AmountError("fee must not exceed amount", param="fee")

    def as_tuple(self) -> tuple[str, str, int, int, int, str, int]:
        """ABI order, for ``contract.functions.pay(intent.as_tuple(), r, vs)``."""
        return (
            self.merchant,
            self.token,
            self.amount,
            self.fee,
            self.invoice_id,
            self.payer,
            self.deadline,
        )

    def as_message(self) -> dict[str, Any]:
        return {
            "merchant": self.merchant,
            "token": self.token,
            "amount": self.amount,
            "fee": self.fee,
            "invoiceId": self.invoice_id,
            "payer": self.payer,
            "deadline": self.deadline,
        }


def payment_intent_typed_data(
    intent: PaymentIntent, *, chain_id: int, router: str
) -> dict[str, Any]:
    """The EIP-712 document the merchant's operator signs for ``intent``."""
    return {
        "types": {"EIP712Domain": _DOMAIN_TYPE, "PaymentIntent": _INTENT_TYPE},
        "primaryType": "PaymentIntent",
        "domain": {
            "name": ROUTER_DOMAIN_NAME,
            "version": ROUTER_DOMAIN_VERSION,
            "chainId": chain_id,
            "verifyingContract": _checksum(router, "router"),
        },
        "message": intent.as_message(),
    }


_INTENT_TYPEHASH = keccak(
    b"PaymentIntent(address merchant,address token,uint256 amount,uint256 fee,"
    b"uint256 invoiceId,address payer,uint256 deadline)"
)
_DOMAIN_TYPEHASH = keccak(
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)


def _word(value: int | str) -> bytes:
    if isinstance(value, str):  # a checksummed address (validated by PaymentIntent)
        return bytes(12) + bytes.fromhex(value[2:])
    return value.to_bytes(32, "big")


def domain_separator(name: str, version: str, chain_id: int, contract: str) -> bytes:
    """EIP-712 ``hashStruct(EIP712Domain)`` for (name, version, chainId, verifyingContract)."""
    return keccak(
        _DOMAIN_TYPEHASH
        + keccak(name.encode())
        + keccak(version.encode())
        + _word(chain_id)
        + _word(_checksum(contract, "verifyingContract"))
    )


@lru_cache(maxsize=64)
def _router_domain_separator(chain_id: int, router: str) -> bytes:
    return domain_separator(ROUTER_DOMAIN_NAME, ROUTER_DOMAIN_VERSION, chain_id, router)


def payment_intent_struct_hash(intent: PaymentIntent) -> bytes:
    """EIP-712 ``hashStruct(intent)``: what the router's ``PaymentSettled`` event carries as
    ``intentHash`` (it binds every signed field; the domain is the router itself)."""
    return keccak(_INTENT_TYPEHASH + b"".join(_word(v) for v in intent.as_tuple()))


def recover_intent_signer(
    intent: PaymentIntent, r: bytes, vs: bytes, *, chain_id: int, router: str
) -> str:
    """The address the router recovers from ``intent``'s compact signature (``r``, ``vs``):
    whether the key that signed it is still the merchant's operator. :class:`SigningError`
    when it recovers none (a malformed signature, which the router takes for address 0)."""
    v, r_bytes, s = from_compact(r, vs)
    if int.from_bytes(s, "big") > _HALF_ORDER:  # the router refuses it (malleable)
        raise SigningError("the signature's s is in the upper half (malleable)")
    digest = payment_intent_digest(intent, chain_id=chain_id, router=router)
    try:
        signature = keys.Signature(r_bytes + s + bytes([v - 27]))
        return str(signature.recover_public_key_from_msg_hash(digest).to_checksum_address())
    except (BadSignature, ValidationError, ValueError) as exc:
        raise SigningError("the signature recovers no public key") from exc


def payment_intent_digest(intent: PaymentIntent, *, chain_id: int, router: str) -> bytes:
    """The EIP-712 digest of ``payment_intent_typed_data(intent, ...)``, computed directly.

    The generic encoder (``encode_typed_data``) parses the type strings and walks the document
    on every call (~2 ms here); this is the same hash from one fixed layout, checked against the
    generic encoder by the tests.
    """
    domain = _router_domain_separator(chain_id, router)
    return keccak(b"\x19\x01" + domain + payment_intent_struct_hash(intent))


def permit_typed_data(
    *,
    token_name: str,
    token: str,
    chain_id: int,
    owner: str,
    spender: str,
    value: int,
    nonce: int,
    deadline: int,
    version: str = "1",
) -> dict[str, Any]:
    """The ERC-2612 ``Permit`` document for an OpenZeppelin ``ERC20Permit`` token."""
    return {
        "types": {"EIP712Domain": _DOMAIN_TYPE, "Permit": _PERMIT_TYPE},
        "primaryType": "Permit",
        "domain": {
            "name": token_name,
            "version": version,
            "chainId": chain_id,
            "verifyingContract": _checksum(token, "token"),
        },
        "message": {
            "owner": _checksum(owner, "owner"),
            "spender": _checksum(spender, "spender"),
            "value": value,
            "nonce": nonce,
            "deadline": deadline,
        },
    }


# --- a key plus its policy -------------------------------------------------------------------


class Signer:
    """A key that signs only what its policy allows (no policy: everything well-formed)."""

    __slots__ = ("_key", "address", "policy")

    def __init__(self, key: PrivateKey, policy: SigningPolicy | None = None) -> None:
        self._key = key
        self.address = key.address
        self.policy = policy

    def __repr__(self) -> str:
        return f"Signer(address={self.address!r}, policy={self.policy is not None})"

    def sign_transaction(
        self, tx: Mapping[str, Any], *, chain_id: int | None = None
    ) -> SignedTransaction:
        if self.policy is not None:
            self.policy.check_transaction(tx, signer=self.address)
        return sign_transaction(tx, self._key, chain_id=chain_id)

    def sign_typed_data(self, typed_data: Mapping[str, Any]) -> bytes:
        if self.policy is not None:
            self.policy.check_typed_data(typed_data)
        return sign_typed_data(typed_data, self._key)

    def sign_message(self, message: str | bytes) -> bytes:
        if self.policy is not None:
            self.policy.check_message(message)
        return sign_message(message, self._key)

    def sign_intent(
        self, intent: PaymentIntent, *, chain_id: int, router: str
    ) -> tuple[bytes, bytes]:
        """Sign a payment intent and return the compact ``(r, vs)`` the router takes."""
        if self.policy is not None:
            self.policy.check_typed_data(
                payment_intent_typed_data(intent, chain_id=chain_id, router=router)
            )
        y_parity, r, s = self._key.sign_digest(
            payment_intent_digest(intent, chain_id=chain_id, router=router)
        )
        if s > _SECP256K1_HALF_N:  # libsecp256k1 signs low-s; refuse anything else
            raise SigningError("signature has a high s value (not canonical)")
        return r.to_bytes(32, "big"), ((y_parity << 255) | s).to_bytes(32, "big")
