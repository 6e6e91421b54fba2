"""Address parsing: EIP-55 checksums enforced where a typo would lose money."""

from __future__ import annotations

import re

from wallet.errors import InvalidAddressError
from wallet.keys import to_checksum_address

__all__ = ["ZERO_ADDRESS", "parse_address"]

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
_HEX40 = re.compile(r"[0-9a-fA-F]{40}")


def parse_address(value: object, *, param: str = "address", strict: bool = False) -> str:
    """Validate ``value`` and return its checksum form.

    Mixed case must be a correct EIP-55 checksum (a mismatch means a typo). All-lower/upper
    hex carries no checksum: accepted unless ``strict`` (the CLI is strict, like a careful
    human should be when pasting a payee).
    """
    if not isinstance(value, str):
        raise InvalidAddressError(f"{param} must be a string", param=param)
    text = value.strip()
    if len(text) != 42 or text[:2] not in ("0x", "0X"):
        raise InvalidAddressError(f"{param} must be 0x followed by 40 hex digits", param=param)
    body = text[2:]
    if not _HEX40.fullmatch(body):  # bytes.fromhex would skip spaces: a 16-byte "address"
        raise InvalidAddressError(f"{param} contains non-hex characters", param=param)
    checksummed = to_checksum_address(body)
    if body.islower() or body.isupper() or body.isdigit():
        if strict and not body.isdigit() and checksummed[2:] != body:
            raise InvalidAddressError(
                f"{param} is not EIP-55 checksummed; use {checksummed} if that is what you meant",
                param=param,
            )
        return checksummed
    if checksummed != "0x" + body:
        raise InvalidAddressError(
            f"{param} has a wrong EIP-55 checksum (probably a typo)", param=param
        )
    return checksummed
