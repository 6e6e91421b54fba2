"""Decimal strings ⇄ integer base units, with no floats anywhere.

``parse_amount("12.5", 6) == 12_500_000``; ``format_amount(12_500_000, 6) == "12.5"``.
Rejected with :class:`~wallet.errors.AmountError`: more fractional digits than the token has,
negatives, exponents, NaN/infinity, empty or non-numeric text, and anything above ``2**256 - 1``.
"""

from __future__ import annotations

import re

from wallet.errors import AmountError

__all__ = ["MAX_UINT256", "format_amount", "parse_amount", "validate_base_units"]

MAX_UINT256 = 2**256 - 1
_DECIMAL = re.compile(r"^(\d+)?(?:\.(\d*))?$")
_UINT256_DIGITS = len(str(MAX_UINT256))  # 78


def validate_base_units(value: int, *, param: str = "amount") -> int:
    """Check an integer amount is a uint256 (``bool`` is refused even though it is an ``int``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise AmountError(f"{param} must be an integer number of base units", param=param)
    if value < 0:
        raise AmountError(f"{param} must not be negative", param=param)
    if value > MAX_UINT256:
        raise AmountError(f"{param} does not fit in uint256", param=param)
    return value


def parse_amount(text: str, decimals: int, *, param: str = "amount") -> int:
    """``"1.5"`` with 6 decimals → ``1_500_000``. Underscores and thousands separators refused."""
    if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 77:
        raise AmountError("token decimals must be an integer between 0 and 77", param="decimals")
    if not isinstance(text, str):
        raise AmountError(f"{param} must be a decimal string like '12.50'", param=param)
    stripped = text.strip()
    if stripped.startswith("-"):
        raise AmountError(f"{param} must not be negative", param=param)
    if stripped.startswith("+"):
        stripped = stripped[1:]
    match = _DECIMAL.match(stripped) if stripped.isascii() else None
    if not match or not (match.group(1) or match.group(2)):
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise AmountError(f"{param} {shown!r} is not a decimal number", param=param)
    whole, frac = (match.group(1) or "0").lstrip("0"), (match.group(2) or "").rstrip("0")
    if len(whole) > _UINT256_DIGITS:  # before int(): Python refuses strings past 4,300 digits
        raise AmountError(f"{param} does not fit in uint256", param=param)
    if len(frac) > decimals:
        raise AmountError(
            f"{param} has {len(frac)} decimal places but the token has only {decimals}",
            param=param,
        )
    value = int(whole or "0") * 10**decimals + (int(frac.ljust(decimals, "0")) if frac else 0)
    if value > MAX_UINT256:
        raise AmountError(f"{param} does not fit in uint256", param=param)
    return value


def format_amount(value: int, decimals: int, *, min_decimals: int = 0) -> str:
    """``1_500_000`` with 6 decimals → ``"1.5"`` (exact; trailing zeros trimmed)."""
    validate_base_units(value)
    if decimals == 0:
        return str(value)
    whole, frac = divmod(value, 10**decimals)
    digits = str(frac).rjust(decimals, "0").rstrip("0")
    digits = digits.ljust(min(min_decimals, decimals), "0")
    return f"{whole}.{digits}" if digits else str(whole)
