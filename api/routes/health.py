"""GET /v1/health: liveness plus a database round trip. No authentication."""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.deps import EngineDep
from api.errors import ApiError
from api.routing import ApiRouter

__all__ = ["router"]

router = ApiRouter(tags=["health"])


class Health(BaseModel):
    object: Literal["health"] = "health"
    status: Literal["ok"] = "ok"
    database: Literal["ok"] = "ok"


class DatabaseUnavailable(ApiError):
    status_code = 503
    type = "api_error"
    code = "database_unavailable"
    message = "The database is unavailable."


@router.get("/health", summary="Health check", response_model=Health)
async def health(engine: EngineDep) -> Health:
    def ping() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    try:
        await run_in_threadpool(ping)
    except sa.exc.SQLAlchemyError as exc:
        raise DatabaseUnavailable() from exc
    return Health()
