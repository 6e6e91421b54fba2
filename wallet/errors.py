"""Wallet-layer exceptions.

Every error carries the HTTP status, a stable snake_case ``code`` and an error ``type`` so the
API renders it in one place; the CLI prints ``str(error)`` as one line. None of them ever holds
secret material in its message or arguments.

    WalletError
    ├── ChainError
    │   ├── UnknownBackendError (ValueError)
    │   ├── ChainUnreachableError (ConnectionError)
    │   ├── AnvilNotFoundError (FileNotFoundError)
    │   ├── AnvilStartError (RuntimeError)
    │   ├── ChainIdMismatchError (ValueError)
    │   └── UnsupportedOperationError (NotImplementedError)
    ├── KeyMaterialError
    │   ├── InvalidMnemonicError (ValueError)
    │   ├── InvalidDerivationPathError (ValueError)
    │   ├── InvalidExtendedKeyError (ValueError)
    │   └── InvalidPrivateKeyError (ValueError)
    ├── VaultError
    │   ├── WrongPasswordError (PermissionError)
    │   ├── WalletNotFoundError (FileNotFoundError)
    │   ├── WalletExistsError (FileExistsError)
    │   ├── CorruptVaultError (ValueError)
    │   └── KeystoreFormatError (ValueError)
    ├── AmountError (ValueError)
    ├── InvalidAddressError (ValueError)
    ├── ManifestError (ValueError)        a deployment manifest that is missing or unusable
    ├── SigningError (ValueError)
    │   └── PolicyViolationError (PermissionError)
    └── TransactionError
        ├── NonceError
        │   └── AddressInUseError           another process sends from the address
        ├── InsufficientFundsError (ValueError)
        ├── FeeBumpError (ValueError)
        ├── TransactionRevertedError      .name / .error_args: the decoded custom error
        ├── ReceiptTimeoutError (TimeoutError)
        ├── TransactionReplacedError      .replacement_hash
        ├── BroadcastError                the node answered with a refusal
        └── BroadcastUncertainError       no answer: the tx may be on the node (.tx_hash)
"""

from __future__ import annotations

__all__ = [
    "AddressInUseError",
    "AmountError",
    "AnvilNotFoundError",
    "AnvilStartError",
    "BroadcastError",
    "BroadcastUncertainError",
    "ChainError",
    "ChainIdMismatchError",
    "ChainUnreachableError",
    "CorruptVaultError",
    "FeeBumpError",
    "InsufficientFundsError",
    "InvalidAddressError",
    "InvalidDerivationPathError",
    "InvalidExtendedKeyError",
    "InvalidMnemonicError",
    "InvalidPrivateKeyError",
    "KeyMaterialError",
    "KeystoreFormatError",
    "ManifestError",
    "NonceError",
    "PolicyViolationError",
    "ReceiptTimeoutError",
    "SigningError",
    "TransactionError",
    "TransactionReplacedError",
    "TransactionRevertedError",
    "UnknownBackendError",
    "UnsupportedOperationError",
    "VaultError",
    "WalletError",
    "WalletExistsError",
    "WalletNotFoundError",
    "WrongPasswordError",
]


class WalletError(Exception):
    """Root of every wallet-layer error."""

    status_code: int = 400
    code: str = "wallet_error"
    type: str = "invalid_request_error"
    param: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        if param is not None:
            self.param = param


class ChainError(WalletError):
    """The chain backend could not do what was asked."""

    status_code = 502
    code = "chain_error"
    type = "api_error"


class UnknownBackendError(ChainError, ValueError):
    status_code = 400
    code = "unknown_chain_backend"
    type = "invalid_request_error"


class ChainUnreachableError(ChainError, ConnectionError):
    code = "chain_unreachable"


class AnvilNotFoundError(ChainError, FileNotFoundError):
    code = "anvil_not_found"


class AnvilStartError(ChainError, RuntimeError):
    code = "anvil_start_failed"


class ChainIdMismatchError(ChainError, ValueError):
    status_code = 409
    code = "chain_id_mismatch"
    type = "invalid_request_error"


class UnsupportedOperationError(ChainError, NotImplementedError):
    status_code = 400
    code = "unsupported_chain_operation"
    type = "invalid_request_error"


# --- keys, secrets, vaults -------------------------------------------------------------------


class KeyMaterialError(WalletError):
    """Base for malformed mnemonics, paths, extended keys and private keys."""

    code = "invalid_key_material"


class InvalidMnemonicError(KeyMaterialError, ValueError):
    code = "invalid_mnemonic"
    param = "mnemonic"


class InvalidDerivationPathError(KeyMaterialError, ValueError):
    code = "invalid_derivation_path"
    param = "path"


class InvalidExtendedKeyError(KeyMaterialError, ValueError):
    code = "invalid_extended_key"
    param = "xpub"


class InvalidPrivateKeyError(KeyMaterialError, ValueError):
    code = "invalid_private_key"
    param = "private_key"


class VaultError(WalletError):
    """A vault or keystore file could not be used."""

    code = "vault_error"


class WrongPasswordError(VaultError, PermissionError):
    status_code = 401
    code = "wrong_password"
    type = "authentication_error"
    param = "password"


class WalletNotFoundError(VaultError, FileNotFoundError):
    status_code = 404
    code = "wallet_not_found"
    param = "name"


class WalletExistsError(VaultError, FileExistsError):
    status_code = 409
    code = "wallet_exists"
    param = "name"


class CorruptVaultError(VaultError, ValueError):
    status_code = 422
    code = "corrupt_vault"


class KeystoreFormatError(VaultError, ValueError):
    status_code = 422
    code = "invalid_keystore"


# --- values ----------------------------------------------------------------------------------


class AmountError(WalletError, ValueError):
    code = "invalid_amount"
    param = "amount"


class InvalidAddressError(WalletError, ValueError):
    code = "invalid_address"
    param = "address"


class ManifestError(WalletError, ValueError):
    code = "manifest_invalid"


# --- signing ---------------------------------------------------------------------------------


class SigningError(WalletError, ValueError):
    """A transaction or message was refused before signing."""

    code = "signing_refused"


class PolicyViolationError(SigningError, PermissionError):
    status_code = 403
    code = "policy_violation"
    type = "permission_error"


# --- sending ---------------------------------------------------------------------------------


class TransactionError(WalletError):
    """Sending or confirming a transaction failed."""

    status_code = 502
    code = "transaction_failed"
    type = "api_error"


class NonceError(TransactionError):
    status_code = 409
    code = "nonce_error"


class AddressInUseError(NonceError):
    """Another process sends from this address with the same nonce ledger: both would hand out
    the same nonces."""

    code = "address_in_use"


class InsufficientFundsError(TransactionError, ValueError):
    status_code = 402
    code = "insufficient_funds"
    type = "invalid_request_error"


class FeeBumpError(TransactionError, ValueError):
    status_code = 400
    code = "fee_bump_too_low"
    type = "invalid_request_error"


class TransactionRevertedError(TransactionError):
    """The EVM reverted; ``name``/``args`` are the decoded custom error (or ``Error(string)``)."""

    status_code = 422
    code = "transaction_reverted"
    type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        name: str | None = None,
        args: tuple[object, ...] = (),
        data: str | None = None,
        tx_hash: str | None = None,
    ) -> None:
        super().__init__(message)
        self.name = name
        self.error_args = tuple(args)
        self.data = data
        self.tx_hash = tx_hash


class ReceiptTimeoutError(TransactionError, TimeoutError):
    status_code = 504
    code = "receipt_timeout"

    def __init__(self, message: str, *, tx_hash: str | None = None) -> None:
        super().__init__(message)
        self.tx_hash = tx_hash


class TransactionReplacedError(TransactionError):
    """Another transaction with the same sender and nonce was mined instead."""

    status_code = 409
    code = "transaction_replaced"

    def __init__(
        self, message: str, *, tx_hash: str | None = None, replacement_hash: str | None = None
    ) -> None:
        super().__init__(message)
        self.tx_hash = tx_hash
        self.replacement_hash = replacement_hash


class BroadcastError(TransactionError):
    """The node refused a raw transaction (message is the node's, it never contains keys)."""

    code = "broadcast_failed"


class BroadcastUncertainError(TransactionError):
    """The node never answered a broadcast (timeout, reset, 5xx), so it may hold the transaction.

    Not a refusal: the transaction stays journaled and its nonce stays spent. Never re-send the
    payment; resolve *this* transaction instead: ``Sender.rebroadcast(error.sent)`` sends the
    same signed bytes again (idempotent), ``Sender.wait(error.sent)`` waits for its receipt.
    ``sent`` is the :class:`~wallet.sender.SentTransaction` (``None`` when unknown).
    """

    status_code = 504
    code = "broadcast_uncertain"

    def __init__(
        self,
        message: str,
        *,
        tx_hash: str | None = None,
        nonce: int | None = None,
        sent: object = None,
    ) -> None:
        super().__init__(message)
        self.tx_hash = tx_hash
        self.nonce = nonce
        self.sent = sent
