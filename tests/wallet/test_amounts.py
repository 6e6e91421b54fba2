"""Decimal strings ⇄ base units: exact, no floats, clear refusals."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wallet.amounts import MAX_UINT256, format_amount, parse_amount, validate_base_units
from wallet.errors import AmountError


class TestParseAmount:
    @pytest.mark.parametrize(
        ("text", "decimals", "expected"),
        [
            ("1", 6, 1_000_000),
            ("12.5", 6, 12_500_000),
            ("0.000001", 6, 1),
            (".5", 6, 500_000),
            ("5.", 6, 5_000_000),
            ("  7.250000 ", 6, 7_250_000),
            ("+3", 0, 3),
            ("0", 18, 0),
            ("1.000000000000000001", 18, 10**18 + 1),
        ],
    )
    def test_valid(self, text, decimals, expected):
        assert parse_amount(text, decimals) == expected

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("1.0000001", "decimal places"),
            ("-1", "negative"),
            ("abc", "not a decimal"),
            ("", "not a decimal"),
            (".", "not a decimal"),
            ("1e6", "not a decimal"),
            ("NaN", "not a decimal"),
            ("inf", "not a decimal"),
            ("1,000", "not a decimal"),
            ("1_000", "not a decimal"),
            ("١٢", "not a decimal"),  # Arabic-Indic digits are digits to Python, not to us
            ("0x10", "not a decimal"),
        ],
    )
    def test_invalid(self, text, message):
        with pytest.raises(AmountError, match=message):
            parse_amount(text, 6)

    def test_overflow(self):
        with pytest.raises(AmountError, match="uint256"):
            parse_amount(str(MAX_UINT256 + 1), 0)
        assert parse_amount(str(MAX_UINT256), 0) == MAX_UINT256
        with pytest.raises(AmountError, match="uint256"):
            parse_amount(str(MAX_UINT256 // 10**6 + 1), 6)
        # past Python's 4,300-digit int() limit: still an AmountError, not a bare ValueError
        with pytest.raises(AmountError, match="uint256"):
            parse_amount("9" * 5000, 6)
        assert parse_amount("0" * 5000 + "1.5", 6) == 1_500_000  # leading zeros are no digits

    def test_refuses_non_strings_and_bad_decimals(self):
        with pytest.raises(AmountError):
            parse_amount(1.5, 6)  # type: ignore[arg-type]
        with pytest.raises(AmountError, match="decimals"):
            parse_amount("1", -1)

    def test_is_an_amount_error_and_value_error(self):
        with pytest.raises(ValueError, match="negative") as info:
            parse_amount("-0.1", 6)
        assert info.value.param == "amount"
        assert info.value.status_code == 400


class TestFormatAmount:
    @pytest.mark.parametrize(
        ("value", "decimals", "text"),
        [(0, 6, "0"), (1, 6, "0.000001"), (12_500_000, 6, "12.5"), (10**18, 18, "1"), (5, 0, "5")],
    )
    def test_examples(self, value, decimals, text):
        assert format_amount(value, decimals) == text

    def test_min_decimals(self):
        assert format_amount(12_500_000, 6, min_decimals=2) == "12.50"

    def test_refuses_negative_and_bool(self):
        with pytest.raises(AmountError):
            format_amount(-1, 6)
        with pytest.raises(AmountError):
            validate_base_units(True)


@given(st.integers(min_value=0, max_value=MAX_UINT256), st.integers(min_value=0, max_value=30))
def test_round_trip(value, decimals):
    assert parse_amount(format_amount(value, decimals), decimals) == value


@given(st.decimals(min_value=0, max_value=10**12, places=6, allow_nan=False, allow_infinity=False))
def test_agrees_with_decimal(amount: Decimal):
    assert parse_amount(str(amount), 6) == int(amount * 10**6)


@given(st.text(max_size=20))
def test_never_crashes_on_text(text):
    try:
        value = parse_amount(text, 6)
    except AmountError:
        return
    assert 0 <= value <= MAX_UINT256
