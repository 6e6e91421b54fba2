"""Operator signers for invoice intents, unlocked from the wallet vault at start-up.

``FOLLOWPAY_OPERATORS`` names the vault wallets (``followpay wallet create|import-key``) whose keys
sign merchants' payment intents: ``name`` (index 0) or ``name:index`` (an HD child),
comma-separated, each optionally bound to one merchant as ``merchant_id=name[:index]``.
``FOLLOWPAY_PASSWORD`` unlocks them (one password for the listed wallets; never a command-line
argument). A merchant's invoices are signed by the listed key whose address is the operator
registered for its router account, unless that key is bound to another merchant; any other
merchant gets ``409 signer_unavailable``. Anyone may name any operator on the router, so on a
server with several merchants, binding keeps one merchant's key from signing another's intents.

Each signer is bounded by a policy (``wallet.policy``): the wallet's own saved policy when it has
one, else :func:`intent_only_policy` — typed data for this router only, no transaction, no
free-form message — so a compromised API host cannot turn the operator key into a drain.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import SecretStr

from wallet.errors import VaultError

if TYPE_CHECKING:  # the vault and signing stacks load only where operators are configured
    from wallet.policy import SigningPolicy
    from wallet.signing import Signer
    from wallet.vault import Vault

__all__ = [
    "OperatorKeys",
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
    """One ``FOLLOWPAY_OPERATORS`` entry: a vault wallet, the HD index of the key, and the one
    merchant it signs for (None: any merchant whose router account names it)."""

    wallet: str
    index: int = 0
    merchant_id: int | None = None


class OperatorKeys(Mapping[str, "Signer"]):
    """Operator address (any case) -> its signer, with the merchant each bound key signs for."""

    def __init__(
        self,
        signers: Mapping[str, Signer] | None = None,
        merchants: Mapping[str, int] | None = None,
    ) -> None:
        self._signers = {a.lower(): s for a, s in (signers or {}).items()}
        self._merchants = {a.lower(): m for a, m in (merchants or {}).items()}

    def __getitem__(self, address: str) -> Signer:
        return self._signers[address.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._signers)

    def __len__(self) -> int:
        return len(self._signers)

    def merchant_of(self, address: str) -> int | None:
        """The merchant a bound key signs for; None for an unbound or unknown key."""
        return self._merchants.get(address.lower())

    def for_merchant(self, merchant_id: int, operator: str) -> Signer | None:
        """The signer of ``operator`` when it may sign ``merchant_id``'s intents."""
        bound = self.merchant_of(operator)
        if bound is not None and bound != merchant_id:
            return None
        return self._signers.get(operator.lower())


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
        merchant, bound, key = entry.rpartition("=")
        if bound and not merchant.strip().isdigit():
            raise ValueError(f"{entry!r}: a key is bound as merchant_id=name[:index]")
        name, sep, index = key.partition(":")
        name = name.strip()
        if not name or (sep and not index.strip().isdigit()):
            raise ValueError(f"{entry!r} is not a wallet name or name:index")
        try:
            ref = OperatorRef(
                Vault.check_name(name),
                int(index) if sep else 0,
                int(merchant) if bound else None,
            )
        except VaultError as exc:
            raise ValueError(f"{entry!r}: {exc}") from None
        if any((r.wallet, r.index) == (ref.wallet, ref.index) for r in refs):
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
) -> OperatorKeys:
    """Operator address -> its :class:`Signer` (and binding). A wrong password, a missing wallet
    or two refs naming one key are errors (start-up fails loudly rather than serving without a
    signer)."""
    if not refs:
        return OperatorKeys()
    from wallet.secrets import SecretStr as WalletSecret
    from wallet.signing import Signer

    if password is None or not password.get_secret_value():
        raise VaultError("FOLLOWPAY_OPERATORS needs FOLLOWPAY_PASSWORD to unlock the vault")
    secret = WalletSecret(password.get_secret_value())
    signers: dict[str, Signer] = {}
    merchants: dict[str, int] = {}
    unlocked = {}
    for ref in refs:
        if ref.wallet not in unlocked:
            unlocked[ref.wallet] = vault.unlock(ref.wallet, secret)
        key = unlocked[ref.wallet].private_key(ref.index)
        if key.address.lower() in signers:
            raise VaultError(f"operator {ref.wallet}:{ref.index} repeats key {key.address}")
        policy = vault.load_policy(ref.wallet) or intent_only_policy(router)
        signers[key.address.lower()] = Signer(key, policy)
        if ref.merchant_id is not None:
            merchants[key.address.lower()] = ref.merchant_id
    return OperatorKeys(signers, merchants)
