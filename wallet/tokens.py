"""Bindings for the two contracts payments use: TestToken (ERC-20 + ERC-2612) and PaymentRouter.

Reads go straight to the node; writes go through a :class:`~wallet.sender.Sender` (nonces,
journal, fees, revert decoding). Amounts are integers in base units throughout.
ABIs and bytecode come from :func:`contracts.load_artifact`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_abi.exceptions import DecodingError
from eth_hash.auto import keccak

from wallet.addresses import parse_address
from wallet.amounts import validate_base_units
from wallet.errors import UnsupportedOperationError
from wallet.signing import (
    PaymentIntent,
    Signer,
    domain_separator,
    permit_typed_data,
    split_signature,
)

if TYPE_CHECKING:
    from wallet.chain import Chain
    from wallet.sender import Receipt, Sender

__all__ = [
    "DEFAULT_PAUSE_BOND",
    "PermitData",
    "Router",
    "Token",
    "call_data",
    "deploy",
    "deploy_router",
    "deploy_test_token",
]

#: Wei the router's owner deposits to pause it (see ``PaymentRouter.pause``): 10 ether, sized for
#: local chains. A production deployment picks its own per chain.
DEFAULT_PAUSE_BOND = 10 * 10**18


#: Where a token names its EIP-712 domain version: (function, return types, index of the
#: version in the answer).
_VERSION_SOURCES = (
    (
        "eip712Domain()",
        ["bytes1", "string", "string", "uint256", "address", "bytes32", "uint256[]"],
        2,
    ),
    ("version()", ["string"], 0),
)


def _selector(signature: str) -> str:
    return "0x" + keccak(signature.encode())[:4].hex()


def _artifact(name: str) -> Any:
    from contracts import load_artifact

    return load_artifact(name)


def deploy(sender: Sender, name: str, *args: Any, timeout: float = 60.0) -> str:
    """Deploy artifact ``name`` with constructor ``args``; returns the checksum address."""
    art = _artifact(name)
    factory = sender.chain.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
    data = factory.constructor(*args).data_in_transaction
    receipt = sender.transact(None, data, timeout=timeout)
    assert receipt.contract_address is not None
    return parse_address(receipt.contract_address)


def deploy_test_token(sender: Sender, owner: str | None = None) -> Token:
    address = deploy(sender, "TestToken", owner or sender.address)
    return Token(sender.chain, address)


def deploy_router(
    sender: Sender,
    *,
    owner: str | None = None,
    treasury: str | None = None,
    pause_bond: int = DEFAULT_PAUSE_BOND,
) -> Router:
    validate_base_units(pause_bond, param="pause_bond")
    args = (owner or sender.address, treasury or sender.address, pause_bond)
    return Router(sender.chain, deploy(sender, "PaymentRouter", *args))


@dataclass(frozen=True, slots=True)
class PermitData:
    value: int
    deadline: int
    v: int
    r: bytes
    s: bytes

    def as_tuple(self) -> tuple[int, int, int, bytes, bytes]:
        return (self.value, self.deadline, self.v, self.r, self.s)


@functools.cache
def _encoders(artifact: str) -> dict[str, tuple[str, list[str]]]:
    from wallet.reverts import abi_type

    seen: dict[str, int] = {}
    out: dict[str, tuple[str, list[str]]] = {}
    for item in _artifact(artifact).abi:
        if item.get("type") != "function":
            continue
        name = str(item["name"])
        types = [abi_type(i) for i in item.get("inputs", [])]
        seen[name] = seen.get(name, 0) + 1
        out[name] = (keccak(f"{name}({','.join(types)})".encode()).hex()[:8], types)
    return {name: enc for name, enc in out.items() if seen[name] == 1}


def call_data(artifact: str, fn: str, *args: Any) -> str:
    """Call data for ``fn(*args)`` on a contract of ``artifact`` (eth-abi directly: ~20x faster
    than web3's ``encode_abi``, and no chain needed). ``fn`` must not be overloaded."""
    entry = _encoders(artifact).get(fn)
    if entry is None:
        raise ValueError(f"{artifact} has no single function named {fn!r}")
    selector, types = entry
    return "0x" + selector + abi_encode(types, args).hex()


class _Bound:
    name = ""

    def __init__(self, chain: Chain, address: str) -> None:
        self.chain = chain
        self.address = parse_address(address, param="contract")
        self.contract = chain.w3.eth.contract(
            address=self.address,  # type: ignore[call-overload]
            abi=_artifact(self.name).abi,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self.chain.rpc_url is None:
            with self.chain.lock:
                yield
        else:
            yield

    def _call(self, fn: str, *args: Any) -> Any:
        with self._locked():
            return getattr(self.contract.functions, fn)(*args).call()

    def encode(self, fn: str, *args: Any) -> str:
        """Call data for ``fn(*args)`` (eth-abi directly: ~20x faster than web3's encode_abi)."""
        if fn not in _encoders(self.name):  # overloaded or unknown: let web3 resolve it
            return str(self.contract.encode_abi(fn, args=list(args)))
        return call_data(self.name, fn, *args)

    def _send(self, sender: Sender, fn: str, *args: Any, wait: bool = True) -> Any:
        data = self.encode(fn, *args)
        if wait:
            return sender.transact(self.address, data)
        return sender.send(self.address, data)


class Token(_Bound):
    """An ERC-20 with ERC-2612 permit (TestToken's ABI; works for any such token)."""

    name = "TestToken"

    def decimals(self) -> int:
        return int(self._call("decimals"))

    def symbol(self) -> str:
        return str(self._call("symbol"))

    def token_name(self) -> str:
        return str(self._call("name"))

    def balance_of(self, owner: str) -> int:
        return int(self._call("balanceOf", parse_address(owner, param="owner")))

    def allowance(self, owner: str, spender: str) -> int:
        return int(self._call("allowance", parse_address(owner), parse_address(spender)))

    def permit_nonce(self, owner: str) -> int:
        return int(self._call("nonces", parse_address(owner, param="owner")))

    def transfer(self, sender: Sender, to: str, amount: int, *, wait: bool = True) -> Any:
        validate_base_units(amount)
        return self._send(sender, "transfer", parse_address(to, param="to"), amount, wait=wait)

    def approve(self, sender: Sender, spender: str, amount: int, *, wait: bool = True) -> Any:
        validate_base_units(amount)
        return self._send(
            sender, "approve", parse_address(spender, param="spender"), amount, wait=wait
        )

    def mint(self, sender: Sender, to: str, amount: int, *, wait: bool = True) -> Any:
        validate_base_units(amount)
        return self._send(sender, "mint", parse_address(to, param="to"), amount, wait=wait)

    def _answer(self, signature: str, types: list[str]) -> tuple[Any, ...] | None:
        """A view function outside the artifact's ABI, by raw ``eth_call``; None when the
        token has no such function (reverts, or answers something else)."""
        try:
            return tuple(abi_decode(types, self.chain.call(self.address, _selector(signature))))
        except (UnsupportedOperationError, DecodingError, OverflowError):
            return None

    def permit_domain_version(self, name: str) -> str:
        """The ``version`` of the token's EIP-712 domain (USDC's is "2", OpenZeppelin's "1"):
        ``eip712Domain()`` (EIP-5267), else ``version()``, else "1", taking the one that
        rebuilds the token's ``DOMAIN_SEPARATOR()`` when it has one, so a permit is never
        signed under a domain the token would refuse."""
        candidates: list[str] = []
        for signature, types, index in _VERSION_SOURCES:
            answer = self._answer(signature, types)
            if answer is not None and isinstance(answer[index], str):
                candidates.append(answer[index])
        candidates = list(dict.fromkeys([*candidates, "1"]))
        separator = self._answer("DOMAIN_SEPARATOR()", ["bytes32"])
        if separator is None:
            return candidates[0]
        chain_id = self.chain.chain_id
        for version in candidates:
            if domain_separator(name, version, chain_id, self.address) == separator[0]:
                return version
        raise UnsupportedOperationError(
            f"token {self.address}'s permit domain is not (name, version, chainId, "
            "verifyingContract) with a version it names; pay with an approve instead"
        )

    def sign_permit(
        self, owner: Signer, spender: str, value: int, deadline: int, *, nonce: int | None = None
    ) -> PermitData:
        """The owner's ERC-2612 permit signature, ready for ``payWithPermit``, under the
        token's own domain (:meth:`permit_domain_version`)."""
        validate_base_units(value, param="value")
        name = self.token_name()
        typed = permit_typed_data(
            token_name=name,
            token=self.address,
            chain_id=self.chain.chain_id,
            owner=owner.address,
            spender=spender,
            value=value,
            nonce=self.permit_nonce(owner.address) if nonce is None else nonce,
            deadline=deadline,
            version=self.permit_domain_version(name),
        )
        v, r, s = split_signature(owner.sign_typed_data(typed))
        return PermitData(value, deadline, v, r, s)


class Router(_Bound):
    """The PaymentRouter."""

    name = "PaymentRouter"

    def register_merchant(
        self, merchant: Sender, *, payout: str, operator: str, wait: bool = True
    ) -> Any:
        return self._send(
            merchant, "registerMerchant", parse_address(payout), parse_address(operator), wait=wait
        )

    def merchant_of(self, merchant: str) -> tuple[str, str]:
        payout, operator = self._call("merchantOf", parse_address(merchant))
        return parse_address(payout), parse_address(operator)

    def is_settled(self, merchant: str, invoice_id: int) -> bool:
        return bool(self._call("isSettled", parse_address(merchant), invoice_id))

    def refunded_of(self, merchant: str, invoice_id: int) -> int:
        return int(self._call("refundedOf", parse_address(merchant), invoice_id))

    def treasury(self) -> str:
        return parse_address(self._call("treasury"))

    def hash_intent(self, intent: PaymentIntent) -> bytes:
        return bytes(self._call("hashIntent", intent.as_tuple()))

    def sign_intent(self, operator: Signer, intent: PaymentIntent) -> tuple[bytes, bytes]:
        """The operator's compact EIP-712 signature ``(r, vs)`` over ``intent``."""
        return operator.sign_intent(intent, chain_id=self.chain.chain_id, router=self.address)

    def pay_data(self, intent: PaymentIntent, r: bytes, vs: bytes) -> str:
        return self.encode("pay", intent.as_tuple(), r, vs)

    def pay(
        self, payer: Sender, intent: PaymentIntent, r: bytes, vs: bytes, *, wait: bool = True
    ) -> Any:
        """Pay a signed intent from an existing allowance."""
        return self._send(payer, "pay", intent.as_tuple(), r, vs, wait=wait)

    def pay_with_permit(
        self,
        payer: Sender,
        intent: PaymentIntent,
        r: bytes,
        vs: bytes,
        permit: PermitData,
        *,
        wait: bool = True,
    ) -> Any:
        return self._send(
            payer, "payWithPermit", intent.as_tuple(), r, vs, permit.as_tuple(), wait=wait
        )

    def refund(
        self,
        merchant: Sender,
        intent: PaymentIntent,
        r: bytes,
        vs: bytes,
        to: str,
        amount: int,
        *,
        wait: bool = True,
    ) -> Any:
        validate_base_units(amount)
        return self._send(
            merchant, "refund", intent.as_tuple(), r, vs, parse_address(to), amount, wait=wait
        )

    def settlements(self, receipt: Receipt) -> list[dict[str, Any]]:
        """Decoded ``PaymentSettled`` events in a receipt."""
        event = self.contract.events.PaymentSettled()
        out = []
        for entry in event.process_receipt(dict(receipt.raw), errors=_discard()):
            out.append(dict(entry["args"]))
        return out


def _discard() -> Any:
    from web3.logs import DISCARD

    return DISCARD
