"""What an API key may do: the three roles (a module of its own so the CLI can offer them
without loading the database stack)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ApiRole"]


class ApiRole(StrEnum):
    ADMIN = "admin"
    MERCHANT = "merchant"
    SUPPORT = "support"
