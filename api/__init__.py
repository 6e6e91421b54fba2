"""FollowPay HTTP API: app factory, dependencies, errors, keys, idempotency, webhooks.

Import-light: ``import api`` builds nothing; ``api.create_app`` is resolved lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["create_app"]

if TYPE_CHECKING:
    from api.app import create_app


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from api.app import create_app

        return create_app
    raise AttributeError(f"module 'api' has no attribute {name!r}")
