"""Field encryption with per-contact data keys (crypto-shredding) and blind indexes.

* The caller passes a :class:`KeyRing` built from a 32-byte master key (from its own config);
  the CRM never reads the environment.
* Each contact gets a random 256-bit data key (DEK). It is stored *wrapped* (AES-256-GCM under a
  key-encryption key derived from the master key, bound to the contact id as associated data).
* Personal fields are AES-256-GCM encrypted under the DEK with associated data naming the field,
  so a ciphertext cannot be moved to another column or contact.
* Lookups (unique e-mail per merchant, wallet address) use an HMAC-SHA256 *blind index* keyed
  with another key derived from the master key, then scoped to the merchant
  (:func:`scope_index`): equal values at two merchants do not show as equal.
* A follow-up's link token is an HMAC under a fourth derived key of its id and creation time
  (:meth:`KeyRing.followup_token`): every attempt to send it carries the same links.
* An invoice's hosted checkout link carries an HMAC of its id under a fifth derived key
  (:meth:`KeyRing.checkout_token`).
* The consent ledger's per-contact head is sealed with HMAC-SHA256 under a third derived key
  (:meth:`KeyRing.consent_head_mac`), never under a data key, so erasure does not unseal it.
* Destroying the wrapped DEK makes every ciphertext of that contact unreadable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from datetime import datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crm.clock import as_utc

__all__ = ["DataKey", "KeyRing", "scope_index"]

_NONCE = 12
_VERSION = b"\x01"
_SCOPE = b"followpay-crm/blind-index/merchant/v2\x00"


def _derive(master: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(master)


class DataKey:
    """A contact's unwrapped data key. Never printed."""

    __slots__ = ("_aead",)

    def __init__(self, raw: bytes) -> None:
        self._aead = AESGCM(raw)

    def encrypt(self, plaintext: str | None, context: str) -> bytes | None:
        if plaintext is None:
            return None
        nonce = os.urandom(_NONCE)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode(), context.encode())

    def decrypt(self, blob: bytes | None, context: str) -> str | None:
        if blob is None:
            return None
        nonce, body = blob[1 : 1 + _NONCE], blob[1 + _NONCE :]
        return self._aead.decrypt(nonce, body, context.encode()).decode()

    def __repr__(self) -> str:
        return "DataKey(<redacted>)"


def scope_index(merchant_id: int, unscoped: str) -> str:
    """The merchant's index of an unscoped HMAC (hex). A plain hash of a keyed value: CRM
    migration 0007 rescoped the indexes stored before it without the master key (it keeps a
    frozen copy of this formula; a test holds the two together)."""
    msg = _SCOPE + str(merchant_id).encode() + b"\x00" + unscoped.encode()
    return hashlib.sha256(msg).hexdigest()


class KeyRing:
    """Master-key holder: wraps data keys and computes blind indexes."""

    __slots__ = (
        "_checkout_key",
        "_consent_head_key",
        "_followup_token_key",
        "_index_key",
        "_wrap",
    )

    def __init__(self, master_key: bytes) -> None:
        if not isinstance(master_key, bytes | bytearray) or len(master_key) < 32:
            raise ValueError("master key must be at least 32 bytes")
        self._wrap = AESGCM(_derive(bytes(master_key), b"followpay-crm/kek/v1"))
        self._index_key = _derive(bytes(master_key), b"followpay-crm/blind-index/v1")
        self._consent_head_key = _derive(bytes(master_key), b"followpay-crm/consent-head-mac/v1")
        self._followup_token_key = _derive(bytes(master_key), b"followpay-crm/followup-token/v1")
        self._checkout_key = _derive(bytes(master_key), b"followpay-api/checkout-link/v1")

    @classmethod
    def generate(cls) -> KeyRing:
        return cls(os.urandom(32))

    def new_data_key(self, contact_id: int) -> tuple[DataKey, bytes]:
        raw = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE)
        wrapped = _VERSION + nonce + self._wrap.encrypt(nonce, raw, self._aad(contact_id))
        return DataKey(raw), wrapped

    def unwrap(self, contact_id: int, wrapped: bytes) -> DataKey:
        nonce, body = wrapped[1 : 1 + _NONCE], wrapped[1 + _NONCE :]
        return DataKey(self._wrap.decrypt(nonce, body, self._aad(contact_id)))

    def blind_index(self, kind: str, value: str, *, merchant_id: int) -> str:
        """HMAC-SHA256 of ``kind``/``value`` under the index key, scoped to one merchant: the
        same e-mail or wallet at two merchants gets unrelated indexes, so a leaked database
        does not link a customer across merchants (every lookup is per merchant anyway)."""
        msg = kind.encode() + b"\x00" + value.encode()
        return scope_index(merchant_id, hmac.new(self._index_key, msg, hashlib.sha256).hexdigest())

    def consent_head_mac(self, message: bytes) -> str:
        """HMAC-SHA256 (hex) of a consent-ledger head (``crm.consent.chain.head_message``)."""
        return hmac.new(self._consent_head_key, message, hashlib.sha256).hexdigest()

    def followup_token(self, followup_id: int, created_at: datetime) -> str:
        """A follow-up's link token: the same on every attempt to send it, so a retry after a
        receiver that acted but answered an error carries the links the customer already
        has. The creation time keeps ids reused by another database (same master key) from
        reusing tokens."""
        msg = f"{followup_id}:{as_utc(created_at).isoformat()}".encode()
        digest = hmac.new(self._followup_token_key, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def checkout_token(self, invoice_id: str) -> str:
        """The capability in an invoice's hosted checkout link: an HMAC (128 bits) of its id,
        so the page opens only from the link the merchant was given, and nothing is stored."""
        digest = hmac.new(self._checkout_key, invoice_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()

    @staticmethod
    def _aad(contact_id: int) -> bytes:
        return f"crm_contact_key:{contact_id}".encode()

    def __repr__(self) -> str:
        return "KeyRing(<redacted>)"
