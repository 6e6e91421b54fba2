"""Encryption at rest for webhook signing secrets.

With ``FOLLOWPAY_MASTER_KEY`` set, secrets are stored as ``aesgcm:<base64(nonce|ciphertext)>``
under a key derived by HKDF-SHA256 (info ``followpay-api/webhook-secret/v1``), bound to the endpoint
id as associated data. Without a master key they are stored as ``plain:<secret>`` (development
only) and never returned by the API after creation except on rotation.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["SecretCipher", "SecretDecryptionError"]


class SecretDecryptionError(Exception):
    status_code = 500
    code = "secret_unavailable"
    type = "api_error"
    param = None


def _aead_for(master_key: bytes) -> AESGCM:
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"followpay-api/webhook-secret/v1",
    ).derive(master_key)
    return AESGCM(key)


class SecretCipher:
    """``previous``: keys that may have encrypted stored secrets and are only tried to read
    them (see :func:`api.runtime.secret_cipher`); new secrets use ``master_key``."""

    def __init__(
        self, master_key: bytes | str | None = None, *, previous: tuple[bytes, ...] = ()
    ) -> None:
        if isinstance(master_key, str):
            master_key = master_key.encode("utf-8")
        self._aead: AESGCM | None = _aead_for(master_key) if master_key else None
        self._readers = [a for a in (self._aead,) if a is not None]
        self._readers += [_aead_for(k) for k in previous if k and k != master_key]

    def __repr__(self) -> str:
        return f"SecretCipher(encrypting={self._aead is not None})"

    @property
    def encrypting(self) -> bool:
        return self._aead is not None

    def encrypt(self, secret: str, *, context: str) -> str:
        if self._aead is None:
            return "plain:" + secret
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, secret.encode("utf-8"), context.encode("utf-8"))
        return "aesgcm:" + base64.b64encode(nonce + ct).decode("ascii")

    def decrypt(self, stored: str, *, context: str) -> str:
        scheme, _, data = stored.partition(":")
        if scheme == "plain":
            return data
        if scheme != "aesgcm" or self._aead is None:
            raise SecretDecryptionError("webhook secret cannot be decrypted with this master key")
        raw = base64.b64decode(data)
        for aead in self._readers:
            try:
                return aead.decrypt(raw[:12], raw[12:], context.encode("utf-8")).decode("utf-8")
            except InvalidTag:
                continue
        raise SecretDecryptionError("webhook secret cannot be decrypted")
