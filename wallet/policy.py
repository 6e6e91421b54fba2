"""A per-wallet signing policy, so an automated signer cannot be turned into a drain.

A merchant's hot signer (the operator key that signs payment intents, or a payout wallet that
sends refunds) runs unattended. If its host is compromised, the attacker can ask it to sign
anything; the policy bounds what "anything" can be:

* ``allowed_contracts`` — transactions may only call these addresses (no plain ETH sends, no
  contract creation unless ``allow_deploy``); typed data must name one of them as
  ``verifyingContract`` (or be a ``Permit`` on an allowed token for an allowed spender).
* ``allowed_selectors`` — the only 4-byte function selectors a transaction may carry.
* ``max_amounts`` — per token, the largest single amount: ERC-20 ``transfer``/``approve``/
  ``transferFrom`` amounts, the intent amount in router ``pay``/``payWithPermit``/``refund``,
  the permit ``value``, and typed-data ``PaymentIntent.amount``/``Permit.value``. Tokens not in
  the map get a limit of zero when ``max_amounts`` is set. With it set, a call whose amount the
  policy cannot read (``increaseAllowance``, any other selector) needs its selector listed in
  ``allowed_selectors``, and a typed-data ``Permit`` must be ERC-2612's (``owner``,
  ``spender``, ``value``, ``nonce``, ``deadline``): DAI's ``allowed`` permit grants an
  unlimited allowance with no value to check.
* ``max_native_value`` — wei a transaction may carry (default 0).
* ``allow_messages`` — whether free-form EIP-191 messages may be signed.

Violations raise :class:`~wallet.errors.PolicyViolationError` *before* any signature exists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from eth_abi import decode as abi_decode
from eth_hash.auto import keccak

from wallet.addresses import parse_address
from wallet.errors import PolicyViolationError

__all__ = ["SELECTORS", "SigningPolicy", "selector"]


def selector(signature: str) -> str:
    """``"transfer(address,uint256)"`` → ``"0xa9059cbb"``."""
    return "0x" + keccak(signature.encode()).hex()[:8]


_INTENT = "(address,address,uint256,uint256,uint256,address,uint256)"
_PERMIT = "(uint256,uint256,uint8,bytes32,bytes32)"
SELECTORS: dict[str, str] = {
    "transfer": selector("transfer(address,uint256)"),
    "approve": selector("approve(address,uint256)"),
    "transferFrom": selector("transferFrom(address,address,uint256)"),
    "permit": selector("permit(address,address,uint256,uint256,uint8,bytes32,bytes32)"),
    "pay": selector(f"pay({_INTENT},bytes32,bytes32)"),
    "payWithPermit": selector(f"payWithPermit({_INTENT},bytes32,bytes32,{_PERMIT})"),
    "refund": selector(f"refund({_INTENT},bytes32,bytes32,address,uint256)"),
    "registerMerchant": selector("registerMerchant(address,address)"),
    "setPayout": selector("setPayout(address)"),
    "setOperator": selector("setOperator(address)"),
}
#: ERC-2612's ``Permit`` fields, in order: the one permit whose ``value`` bounds what it allows.
_ERC2612_PERMIT = ["owner", "spender", "value", "nonce", "deadline"]
_ARG_TYPES: dict[str, list[str]] = {
    SELECTORS["transfer"]: ["address", "uint256"],
    SELECTORS["approve"]: ["address", "uint256"],
    SELECTORS["transferFrom"]: ["address", "address", "uint256"],
    SELECTORS["permit"]: [
        "address",
        "address",
        "uint256",
        "uint256",
        "uint8",
        "bytes32",
        "bytes32",
    ],
    SELECTORS["pay"]: [_INTENT, "bytes32", "bytes32"],
    SELECTORS["payWithPermit"]: [_INTENT, "bytes32", "bytes32", _PERMIT],
    SELECTORS["refund"]: [_INTENT, "bytes32", "bytes32", "address", "uint256"],
}


def _data_bytes(data: Any) -> bytes:
    if data is None:
        return b""
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    text = str(data)
    return bytes.fromhex(text[2:] if text[:2] in ("0x", "0X") else text)


@dataclass
class SigningPolicy:
    allowed_contracts: frozenset[str] | None = None
    allowed_selectors: frozenset[str] | None = None
    max_amounts: dict[str, int] | None = None
    max_native_value: int = 0
    allow_deploy: bool = False
    allow_messages: bool = False
    _contracts: frozenset[str] = field(init=False, repr=False, default=frozenset())

    def __post_init__(self) -> None:
        if self.allowed_contracts is not None:
            self.allowed_contracts = frozenset(
                parse_address(a, param="allowed_contracts") for a in self.allowed_contracts
            )
        if self.allowed_selectors is not None:
            self.allowed_selectors = frozenset(s.lower() for s in self.allowed_selectors)
        if self.max_amounts is not None:
            self.max_amounts = {
                parse_address(k, param="max_amounts"): int(v) for k, v in self.max_amounts.items()
            }

    # -- (de)serialisation (policies live next to the wallet as JSON) -----------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed_contracts": sorted(self.allowed_contracts)
            if self.allowed_contracts is not None
            else None,
            "allowed_selectors": sorted(self.allowed_selectors)
            if self.allowed_selectors is not None
            else None,
            "max_amounts": {k: str(v) for k, v in self.max_amounts.items()}
            if self.max_amounts is not None
            else None,
            "max_native_value": str(self.max_native_value),
            "allow_deploy": self.allow_deploy,
            "allow_messages": self.allow_messages,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SigningPolicy:
        def maybe_set(value: Any) -> frozenset[str] | None:
            if value is None:
                return None
            if isinstance(value, str | bytes) or not isinstance(value, Iterable):
                raise ValueError("a policy list must be a JSON list")  # "0xabc" is no set
            return frozenset(value)

        def flag(name: str) -> bool:
            value = data.get(name, False)
            if not isinstance(value, bool):  # bool("false") is True: a typo would allow it
                raise ValueError(f"policy field {name} must be true or false")
            return value

        amounts = data.get("max_amounts")
        return cls(
            allowed_contracts=maybe_set(data.get("allowed_contracts")),
            allowed_selectors=maybe_set(data.get("allowed_selectors")),
            max_amounts=None if amounts is None else {k: int(v) for k, v in amounts.items()},
            max_native_value=int(data.get("max_native_value", 0)),
            allow_deploy=flag("allow_deploy"),
            allow_messages=flag("allow_messages"),
        )

    # -- checks -----------------------------------------------------------------------------

    def _check_contract(self, address: str, what: str) -> None:
        if self.allowed_contracts is not None and address not in self.allowed_contracts:
            raise PolicyViolationError(f"{what} {address} is not an allowed contract")

    def _check_amount(self, token: str, amount: int, what: str) -> None:
        if self.max_amounts is None:
            return
        limit = self.max_amounts.get(token, 0)
        if amount > limit:
            raise PolicyViolationError(
                f"{what} of {amount} base units of token {token} exceeds the policy limit {limit}"
            )

    def check_transaction(self, tx: Mapping[str, Any], *, signer: str | None = None) -> None:
        """Raise :class:`PolicyViolationError` unless ``tx`` is allowed. A 0-value transaction
        without data from ``signer`` to itself is always allowed: it moves nothing, and it is
        how a stuck nonce is cancelled."""
        if "input" in tx:  # the signer would sign it as the calldata this check never saw
            raise PolicyViolationError("give the calldata as 'data', not 'input'")
        value = int(tx.get("value", 0) or 0)
        to = tx.get("to")
        data = _data_bytes(tx.get("data"))
        to_self = bool(to) and parse_address(to, param="to").lower() == (signer or "").lower()
        if to_self and not value and not data:
            return
        if value > self.max_native_value:
            raise PolicyViolationError(
                f"transaction value {value} wei exceeds the policy limit {self.max_native_value}"
            )
        if not to:
            if not self.allow_deploy:
                raise PolicyViolationError("contract creation is not allowed by the policy")
            return
        target = parse_address(to, param="to")
        self._check_contract(target, "destination")
        if not data:
            if self.allowed_contracts is not None and value:
                raise PolicyViolationError("plain value transfers are not allowed by the policy")
            return
        sel = "0x" + data[:4].hex()
        if self.allowed_selectors is not None and sel not in self.allowed_selectors:
            raise PolicyViolationError(f"function selector {sel} is not allowed by the policy")
        self._check_call_amounts(target, sel, data[4:])

    def _check_call_amounts(self, target: str, sel: str, args_data: bytes) -> None:
        types = _ARG_TYPES.get(sel)
        if types is None:
            listed = self.allowed_selectors is not None and sel in self.allowed_selectors
            if self.max_amounts is not None and not listed:
                raise PolicyViolationError(
                    f"function selector {sel} may move tokens in amounts the policy cannot "
                    "read; with max_amounts set, list it in allowed_selectors to sign it"
                )
            return
        try:
            args = abi_decode(types, args_data)
        except Exception:
            raise PolicyViolationError(f"call data for {sel} does not decode") from None
        if sel in (SELECTORS["transfer"], SELECTORS["approve"]):
            self._check_amount(target, int(args[1]), "token amount")
        elif sel == SELECTORS["transferFrom"]:
            self._check_amount(target, int(args[2]), "token amount")
        elif sel == SELECTORS["permit"]:
            self._check_amount(target, int(args[2]), "permit value")
        else:
            intent = args[0]
            token = parse_address(intent[1], param="token")
            self._check_amount(token, int(intent[2]), "payment amount")
            if sel == SELECTORS["payWithPermit"]:
                self._check_amount(token, int(args[3][0]), "permit value")
            elif sel == SELECTORS["refund"]:
                self._check_amount(token, int(args[4]), "refund amount")

    def check_typed_data(self, typed_data: Mapping[str, Any]) -> None:
        primary = typed_data.get("primaryType")
        domain = typed_data.get("domain") or {}
        message = typed_data.get("message") or {}
        verifying = domain.get("verifyingContract")
        if primary == "PaymentIntent":
            if not verifying:
                raise PolicyViolationError("payment intent has no verifying contract")
            self._check_contract(parse_address(verifying), "verifying contract")
            token = parse_address(message.get("token", ""), param="token")
            self._check_amount(token, int(message.get("amount", 0)), "payment amount")
        elif primary == "Permit":
            if not verifying:
                raise PolicyViolationError("permit has no verifying contract")
            token = parse_address(verifying)
            fields = [f.get("name") for f in (typed_data.get("types") or {}).get("Permit", [])]
            if self.max_amounts is not None and fields != _ERC2612_PERMIT:
                raise PolicyViolationError(  # DAI's (holder, …, bool allowed): unlimited
                    "only an ERC-2612 permit (owner, spender, value, nonce, deadline) is "
                    "signed under max_amounts"
                )
            self._check_contract(token, "permit token")
            self._check_contract(parse_address(message.get("spender", "")), "permit spender")
            self._check_amount(token, int(message.get("value", 0)), "permit value")
        elif self.allowed_contracts is not None or self.max_amounts is not None:
            raise PolicyViolationError(f"typed data {primary!r} is not allowed by the policy")

    def check_message(self, message: str | bytes) -> None:
        if not self.allow_messages:
            raise PolicyViolationError("signing free-form messages is not allowed by the policy")
