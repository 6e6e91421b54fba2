"""Operator signers for invoice intents, unlocked from the wallet vault at start-up.

``FOLLOWPAY_OPERATORS`` names the vault wallets (``followpay wallet create|import-key``) whose keys
sign merchants' payment intents: ``name`` (index 0) or ``name:index`` (an HD child),
comma-separated. ``FOLLOWPAY_PASSWORD`` unlocks them (one password for the listed wallets; never a
command-line argument). A merchant's invoices are signed by the listed key whose address is the
operator registered for its router account; any other merchant gets ``409 signer_unavailable``.

Each signer is bounded by a policy (``wallet.policy``): the wallet's own saved policy when it has
one, else :func:`intent_only_policy` — typed data for this router only, no transaction, no
free-form message — so a compromised API host cannot turn the operator key into a drain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import SecretStr

from wallet.errors import VaultError

if TYPE_CHECKING:  # the vault and signing stacks load only where operators are configured
    from wallet.policy import SigningPolicy
    from wallet.signing import Signer
    from wallet.vault import Vault

__all__ = [
    "OperatorRef",
    "OperatorUnavailableError",
    "intent_only_policy",
    "load_operator_signers",
    "parse_operator_refs",
]


class OperatorUnavailableError(VaultError):
    """No configured operator key signs for the merchant's registered operator."""

    status_code = 409
    code = "signer_unavailable"


@dataclass(frozen=True, slots=True)
class OperatorRef:
    """One ``FOLLOWPAY_OPERATORS`` entry: a vault wallet and the HD index of the key."""

    wallet: str
    index: int = 0


def parse_operator_refs(text: str) -> tuple[OperatorRef, ...]:
    """``"shop, other:3"`` -> two refs. Raises ``ValueError`` naming the bad entry."""
    if not text.strip():
        return ()
    from wallet.vault import Vault

    refs: list[OperatorRef] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, index = entry.partition(":")
        name = name.strip()
        if not name or (sep and not index.strip().isdigit()):
            raise ValueError(f"{entry!r} is not a wallet name or name:index")
        try:
            ref = OperatorRef(Vault.check_name(name), int(index) if sep else 0)
        except VaultError as exc:
            raise ValueError(f"{entry!r}: {exc}") from None
        if ref in refs:
            raise ValueError(f"{entry!r} is listed twice")
        refs.append(ref)
    return tuple(refs)


def intent_only_policy(router: str) -> SigningPolicy:
    """Typed data whose ``verifyingContract`` is ``router``; no transactions, no messages."""
    from wallet.policy import SigningPolicy

    return SigningPolicy(
        allowed_contracts=frozenset({router}),
        allowed_selectors=frozenset(),
        allow_messages=False,
    )


def load_operator_signers(
    vault: Vault, refs: tuple[OperatorRef, ...], password: SecretStr | None, router: str
) -> dict[str, Signer]:
    """Operator address -> its :class:`Signer`. A wrong password, a missing wallet or two refs
    naming one key are errors (start-up fails loudly rather than serving without a signer)."""
    if not refs:
        return {}
    from wallet.secrets import SecretStr as WalletSecret
    from wallet.signing import Signer

    if password is None or not password.get_secret_value():
        raise VaultError("FOLLOWPAY_OPERATORS needs FOLLOWPAY_PASSWORD to unlock the vault")
    secret = WalletSecret(password.get_secret_value())
    signers: dict[str, Signer] = {}
    unlocked = {}
    for ref in refs:
        if ref.wallet not in unlocked:
            unlocked[ref.wallet] = vault.unlock(ref.wallet, secret)
        key = unlocked[ref.wallet].private_key(ref.index)
        if key.address.lower() in signers:
            raise VaultError(f"operator {ref.wallet}:{ref.index} repeats key {key.address}")
        policy = vault.load_policy(ref.wallet) or intent_only_policy(router)
        signers[key.address.lower()] = Signer(key, policy)
    return signers
