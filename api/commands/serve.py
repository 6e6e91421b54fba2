"""``followpay serve``: the HTTP API under uvicorn (migrations applied first)."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["build_app", "serve"]


def build_app() -> object:
    """The app factory uvicorn calls in every worker (settings from the environment)."""
    from api.app import create_app

    return create_app()


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
) -> None:
    """Serve the API (database: FOLLOWPAY_DATABASE_URL, SQLite in FOLLOWPAY_HOME by default).

    Invoice creation needs operator signers and a chain (``create_app(signers=..., chain_info=
    ...)``); a plain ``serve`` runs every other resource and answers ``POST /v1/invoices`` with
    409 ``signer_unavailable``. Use PostgreSQL for more than one worker.
    """
    import uvicorn

    from api.db import upgrade
    from api.runtime import Runtime
    from api.settings import get_settings

    runtime = Runtime(get_settings())
    url = runtime.settings.resolved_database_url
    runtime.engine.dispose()  # creates the SQLite directory
    upgrade(url)
    uvicorn.run(
        "api.commands.serve:build_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        proxy_headers=False,
    )
