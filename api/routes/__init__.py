"""Route collection: everything the API serves lives under ``/v1``."""

from __future__ import annotations

from fastapi import APIRouter

from api.errors import DEFAULT_ERROR_RESPONSES

__all__ = ["api_router", "core_routers", "resource_routers"]


def core_routers() -> list[APIRouter]:
    """The routers owned by the HTTP layer (health, API keys, webhooks)."""
    from api.routes import health, keys, webhooks

    return [health.router, keys.router, webhooks.router]


def resource_routers() -> list[APIRouter]:
    """The merchant, support and customer resources (issue 6): mounted by default."""
    from api.routes import (
        audit,
        checkout,
        contacts,
        invoices,
        merchants,
        phone_tasks,
        policies,
        public,
        reports,
        support,
    )

    # FastAPI matches routes in order: the busiest (invoice creation, customer links) first.
    return [
        invoices.router,
        public.router,
        checkout.router,
        merchants.router,
        contacts.router,
        policies.router,
        audit.router,
        support.router,
        phone_tasks.router,
        reports.router,
    ]


def api_router(*extra: APIRouter) -> APIRouter:
    """One ``/v1`` router with the core and resource routers plus ``extra`` routers.

    Every route gets the error schema documented for 400/401/403/404/422/429/500. A router
    passed twice is mounted once.
    """
    v1 = APIRouter(prefix="/v1", responses=DEFAULT_ERROR_RESPONSES)
    mounted: list[APIRouter] = []
    for router in (*resource_routers(), *core_routers(), *extra):
        if any(router is seen for seen in mounted):
            continue
        mounted.append(router)
        v1.include_router(router)
    return v1
