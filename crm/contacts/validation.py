"""Normalisation of contact fields (raise the CRM's own errors, never pydantic's)."""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from crm.errors import InvalidEmail, InvalidPhone, InvalidRequest, InvalidTimeZone
from crm.errors import InvalidWalletAddress as _BadWallet

__all__ = [
    "normalise_email",
    "normalise_phone",
    "normalise_text",
    "normalise_wallet",
    "validate_time_zone",
]

_WALLET = re.compile(r"^0x[0-9a-fA-F]{40}$")


def normalise_email(value: str) -> str:
    try:
        info = validate_email(value.strip(), check_deliverability=False)
    except (EmailNotValidError, AttributeError):
        raise InvalidEmail("malformed e-mail address") from None
    return info.normalized.lower()


def normalise_phone(value: str) -> str:
    raw = value.strip()
    if not raw.startswith("+"):
        raise InvalidPhone("phone number must be in international (E.164) form")
    try:
        number = phonenumbers.parse(raw, None)
    except phonenumbers.NumberParseException:
        raise InvalidPhone("malformed phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("invalid phone number")
    if number.extension:  # E.164 has none: it would be dropped, and the call reach a switchboard
        raise InvalidPhone("phone number must not have an extension (E.164 has none)")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def validate_time_zone(value: str) -> str:
    """An IANA zone name. Names that merely load from the host's zoneinfo directory are not
    enough: ``localtime`` is the host's own zone (a contact's hours would follow the server's
    setting), ``right/…`` zones count leap seconds and ``posix/…`` duplicate real ones."""
    if not value or "\x00" in value or value.startswith(("/", ".")) or ".." in value:
        raise InvalidTimeZone("unknown time zone")
    if value == "localtime" or value.startswith(("posix/", "right/")):
        raise InvalidTimeZone("unknown time zone")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidTimeZone("unknown time zone") from None
    return value


def normalise_wallet(value: str) -> str:
    raw = value.strip()
    if not _WALLET.match(raw):
        raise _BadWallet("wallet address must be 0x followed by 40 hex digits")
    return raw.lower()


def normalise_text(value: str | None, param: str, max_length: int = 200) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if len(text) > max_length:
        raise InvalidRequest(f"{param} is too long", code=f"invalid_{param}", param=param)
    return text or None
