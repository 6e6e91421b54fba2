"""FollowPay wallet layer: HD keys, encrypted vaults and keystores, signing, sending.

Submodules load on first use (``import wallet`` does not import web3): ``wallet.keys``,
``wallet.secrets``, ``wallet.vault``, ``wallet.keystore``, ``wallet.signing``, ``wallet.policy``,
``wallet.amounts``, ``wallet.addresses``, ``wallet.nonces``, ``wallet.fees``, ``wallet.reverts``,
``wallet.rpc``, ``wallet.sender``, ``wallet.tokens``, ``wallet.chain`` (its plain config:
``wallet.chain_config``), ``wallet.cli``. See ``docs/wallet.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from wallet.errors import (
    AmountError,
    AnvilNotFoundError,
    AnvilStartError,
    BroadcastError,
    BroadcastUncertainError,
    ChainError,
    ChainIdMismatchError,
    ChainUnreachableError,
    CorruptVaultError,
    FeeBumpError,
    InsufficientFundsError,
    InvalidAddressError,
    InvalidDerivationPathError,
    InvalidExtendedKeyError,
    InvalidMnemonicError,
    InvalidPrivateKeyError,
    KeyMaterialError,
    KeystoreFormatError,
    ManifestError,
    NonceError,
    PolicyViolationError,
    ReceiptTimeoutError,
    SigningError,
    TransactionError,
    TransactionReplacedError,
    TransactionRevertedError,
    UnknownBackendError,
    UnsupportedOperationError,
    VaultError,
    WalletError,
    WalletExistsError,
    WalletNotFoundError,
    WrongPasswordError,
)

if TYPE_CHECKING:
    from wallet.addresses import parse_address
    from wallet.amounts import format_amount, parse_amount
    from wallet.chain import Chain, connect
    from wallet.chain_config import ChainConfig
    from wallet.fees import Fees, bump_fees, check_replacement
    from wallet.keys import HDWallet, WatchOnlyWallet, generate_mnemonic, validate_mnemonic
    from wallet.keystore import decrypt_keystore, encrypt_keystore, read_keystore, write_keystore
    from wallet.nonces import NonceLedger, NonceManager
    from wallet.policy import SigningPolicy
    from wallet.rpc import send_raw_batch
    from wallet.secrets import PrivateKey, Secret, SecretBytes, SecretStr
    from wallet.sender import Sender
    from wallet.signing import (
        PaymentIntent,
        SignedTransaction,
        Signer,
        payment_intent_typed_data,
        permit_typed_data,
        sign_message,
        sign_transaction,
        sign_typed_data,
    )
    from wallet.tokens import Router, Token, deploy_router, deploy_test_token
    from wallet.vault import Vault

_LAZY: dict[str, str] = {
    "parse_address": "wallet.addresses",
    "format_amount": "wallet.amounts",
    "parse_amount": "wallet.amounts",
    "Chain": "wallet.chain",
    "ChainConfig": "wallet.chain_config",
    "connect": "wallet.chain",
    "Fees": "wallet.fees",
    "bump_fees": "wallet.fees",
    "check_replacement": "wallet.fees",
    "HDWallet": "wallet.keys",
    "WatchOnlyWallet": "wallet.keys",
    "generate_mnemonic": "wallet.keys",
    "validate_mnemonic": "wallet.keys",
    "decrypt_keystore": "wallet.keystore",
    "encrypt_keystore": "wallet.keystore",
    "read_keystore": "wallet.keystore",
    "write_keystore": "wallet.keystore",
    "NonceLedger": "wallet.nonces",
    "NonceManager": "wallet.nonces",
    "SigningPolicy": "wallet.policy",
    "send_raw_batch": "wallet.rpc",
    "PrivateKey": "wallet.secrets",
    "Secret": "wallet.secrets",
    "SecretBytes": "wallet.secrets",
    "SecretStr": "wallet.secrets",
    "Sender": "wallet.sender",
    "PaymentIntent": "wallet.signing",
    "SignedTransaction": "wallet.signing",
    "Signer": "wallet.signing",
    "payment_intent_typed_data": "wallet.signing",
    "permit_typed_data": "wallet.signing",
    "sign_message": "wallet.signing",
    "sign_transaction": "wallet.signing",
    "sign_typed_data": "wallet.signing",
    "Router": "wallet.tokens",
    "Token": "wallet.tokens",
    "deploy_router": "wallet.tokens",
    "deploy_test_token": "wallet.tokens",
    "Vault": "wallet.vault",
}

__all__ = [
    "AmountError",
    "AnvilNotFoundError",
    "AnvilStartError",
    "BroadcastError",
    "BroadcastUncertainError",
    "Chain",
    "ChainConfig",
    "ChainError",
    "ChainIdMismatchError",
    "ChainUnreachableError",
    "CorruptVaultError",
    "FeeBumpError",
    "Fees",
    "HDWallet",
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
    "NonceLedger",
    "NonceManager",
    "PaymentIntent",
    "PolicyViolationError",
    "PrivateKey",
    "ReceiptTimeoutError",
    "Router",
    "Secret",
    "SecretBytes",
    "SecretStr",
    "Sender",
    "SignedTransaction",
    "Signer",
    "SigningError",
    "SigningPolicy",
    "Token",
    "TransactionError",
    "TransactionReplacedError",
    "TransactionRevertedError",
    "UnknownBackendError",
    "UnsupportedOperationError",
    "Vault",
    "VaultError",
    "WalletError",
    "WalletExistsError",
    "WalletNotFoundError",
    "WatchOnlyWallet",
    "WrongPasswordError",
    "bump_fees",
    "check_replacement",
    "connect",
    "decrypt_keystore",
    "deploy_router",
    "deploy_test_token",
    "encrypt_keystore",
    "format_amount",
    "generate_mnemonic",
    "parse_address",
    "parse_amount",
    "payment_intent_typed_data",
    "permit_typed_data",
    "read_keystore",
    "send_raw_batch",
    "sign_message",
    "sign_transaction",
    "sign_typed_data",
    "validate_mnemonic",
    "write_keystore",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'wallet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
