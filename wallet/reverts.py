"""Revert decoding: revert data → :class:`~wallet.errors.TransactionRevertedError`.

Decodes ``Error(string)``, ``Panic(uint256)`` and the custom errors of the known ABIs (TestToken,
PaymentRouter, OpenZeppelin errors they include, plus any ABI the caller passes), from whatever
web3, eth-tester or anvil raised.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from eth_abi import decode as abi_decode
from eth_hash.auto import keccak

from wallet.errors import TransactionRevertedError

__all__ = ["abi_type", "decode_revert", "errors_from_abi", "revert_data_of", "reverted"]

log = logging.getLogger(__name__)

_PANIC_CODES = {
    0x01: "assertion failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division by zero",
    0x21: "invalid enum value",
    0x31: "pop on empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory",
    0x51: "call to an uninitialised function",
}


def abi_type(param: Mapping[str, Any]) -> str:
    kind = str(param["type"])
    if kind.startswith("tuple"):
        inner = ",".join(abi_type(c) for c in param.get("components", []))
        return f"({inner}){kind[5:]}"
    return kind


@functools.cache
def _known_errors() -> dict[bytes, tuple[str, tuple[str, ...], tuple[str, ...]]]:
    table: dict[bytes, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}
    try:
        from contracts import load_artifact
    except ImportError:  # pragma: no cover - contracts package always ships with wallet
        return table
    for name in ("TestToken", "PaymentRouter"):
        try:
            abi = load_artifact(name).abi
        except Exception:  # a missing artifact just means fewer decodable names
            log.debug("no ABI for %s: its custom errors will not be decoded", name)
        else:
            table.update(errors_from_abi(abi))
    return table


def errors_from_abi(
    abi: Sequence[Mapping[str, Any]],
) -> dict[bytes, tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """``selector → (name, arg types, arg names)`` for every ``error`` in ``abi``."""
    out: dict[bytes, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}
    for item in abi:
        if item.get("type") != "error":
            continue
        types = tuple(abi_type(i) for i in item.get("inputs", []))
        names = tuple(str(i.get("name", "")) for i in item.get("inputs", []))
        signature = f"{item['name']}({','.join(types)})"
        out[keccak(signature.encode())[:4]] = (str(item["name"]), types, names)
    return out


def decode_revert(
    data: bytes | str | None, extra_abi: Sequence[Mapping[str, Any]] | None = None
) -> tuple[str | None, tuple[Any, ...], str]:
    """Revert data → ``(error name, args, human message)``; unknown data keeps the selector."""
    if isinstance(data, str):
        text = data[2:] if data[:2] in ("0x", "0X") else data
        try:
            data = bytes.fromhex(text)
        except ValueError:
            return None, (), f"reverted: {text[:200]}"
    if not data:
        return None, (), "reverted without a reason"
    sel, body = data[:4], data[4:]
    if sel == bytes.fromhex("08c379a0"):
        with contextlib.suppress(Exception):
            (reason,) = abi_decode(["string"], body)
            return "Error", (reason,), f"reverted: {reason}"
    if sel == bytes.fromhex("4e487b71"):
        with contextlib.suppress(Exception):
            (code,) = abi_decode(["uint256"], body)
            text = _PANIC_CODES.get(int(code), f"code 0x{int(code):x}")
            return "Panic", (int(code),), f"panicked: {text}"
    table = dict(_known_errors())
    if extra_abi:
        table.update(errors_from_abi(extra_abi))
    known = table.get(sel)
    if known is not None:
        name, types, names = known
        try:
            decoded = abi_decode(list(types), body)
        except Exception:
            return name, (), f"reverted with {name} (undecodable arguments)"
        args = tuple(
            _checksummed(v) if t == "address" else v for t, v in zip(types, decoded, strict=True)
        )
        shown = ", ".join(
            f"{n}={_show(v)}" if n else _show(v) for n, v in zip(names, args, strict=True)
        )
        return name, args, f"reverted with {name}({shown})"
    return None, (), f"reverted with unknown error 0x{sel.hex()}"


def _checksummed(value: Any) -> Any:
    from wallet.keys import to_checksum_address

    return to_checksum_address(value) if isinstance(value, str) else value


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        from wallet.keys import to_checksum_address

        return to_checksum_address(value)
    return str(value)


def revert_data_of(exc: BaseException) -> str | None:
    """Pull revert data out of whatever web3 / eth-tester / anvil raised."""
    data = getattr(exc, "data", None)
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        return data
    if isinstance(data, bytes):
        return "0x" + data.hex()
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, bytes):
            return "0x" + arg.hex()
        if isinstance(arg, str) and arg.startswith("0x") and len(arg) >= 10:
            return arg
        if isinstance(arg, dict) and isinstance(arg.get("data"), str):
            return str(arg["data"])
        if isinstance(arg, str) and ("reverted: b'" in arg or 'reverted: b"' in arg):
            # eth-tester puts the repr of the revert bytes in its message
            literal = arg.split("reverted: ", 1)[1]
            with contextlib.suppress(ValueError, SyntaxError):
                value = ast.literal_eval(literal)
                if isinstance(value, bytes):
                    return "0x" + value.hex()
    return None


def reverted(exc: BaseException, tx_hash: str | None = None) -> TransactionRevertedError | None:
    """The decoded revert ``exc`` reports, or ``None`` when ``exc`` is not a revert."""
    data = revert_data_of(exc)
    text = str(exc)
    if data is None and "revert" not in text.lower():
        return None
    if data is None:
        return TransactionRevertedError(text[:300], tx_hash=tx_hash)
    name, args, message = decode_revert(data)
    return TransactionRevertedError(message, name=name, args=args, data=data, tx_hash=tx_hash)
