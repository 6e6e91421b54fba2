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


class SecretCipher:
    def __init__(self, master_key: bytes | str | None = None) -> None:
        if isinstance(master_key, str):
            master_key = master_key.encode("utf-8")
        self._aead: AESGCM | None = None
        if master_key:
            key = HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=None,
                info=b"followpay-api/webhook-secret/v1",
            ).derive(master_key)
            self._aead = AESGCM(key)

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
        try:
            return self._aead.decrypt(raw[:12], raw[12:], context.encode("utf-8")).decode("utf-8")
        except InvalidTag as exc:
            raise SecretDecryptionError("webhook secret cannot be decrypted") from exc
