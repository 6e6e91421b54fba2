"""Route collection: everything the API serves lives under ``/v1``."""

from __future__ import annotations

from fastapi import APIRouter

from api.errors import DEFAULT_ERROR_RESPONSES

__all__ = ["api_router", "core_routers"]


def core_routers() -> list[APIRouter]:
    """The routers owned by the HTTP layer (health, API keys, webhooks)."""
    from api.routes import health, keys, webhooks

    return [health.router, keys.router, webhooks.router]


def api_router(*extra: APIRouter) -> APIRouter:
    """One ``/v1`` router with the core routers plus ``extra`` resource routers.

    Every route gets the error schema documented for 400/401/403/404/422/429/500.
    """
    v1 = APIRouter(prefix="/v1", responses=DEFAULT_ERROR_RESPONSES)
    for router in (*core_routers(), *extra):
        v1.include_router(router)
    return v1
