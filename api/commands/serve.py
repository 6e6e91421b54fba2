"""``followpay serve``: the HTTP API under uvicorn (migrations applied first)."""

from __future__ import annotations

import logging
import socket
import threading
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["build_app", "serve"]

log = logging.getLogger(__name__)


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything else happens: a port in use used to fail
    only once the embedded chain had been indexed into the home's database, and every later
    start on that home was then refused (an earlier in-process chain)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        return socket.create_server(address, family=family, backlog=2048)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(f"cannot listen on {host}:{port}: {reason}") from None


def _run(
    app: FastAPI, listener: socket.socket, root_path: str, stop: threading.Event | None = None
) -> None:
    """uvicorn in this process, on ``listener``. ``X-Forwarded-For`` is believed from
    ``FOLLOWPAY_API_TRUSTED_PROXIES`` only (the app's own middleware, :mod:`api.app`), never
    from uvicorn's default of 127.0.0.1; ``root_path`` is ``FOLLOWPAY_API_ROOT_PATH``. Once
    ``stop`` is set (a background job died) uvicorn shuts down as on Ctrl-C."""
    import uvicorn

    host, port = listener.getsockname()[:2]
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", proxy_headers=False, root_path=root_path
    )
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"serving on http://{shown}:{port} (Ctrl-C to stop)", err=True)  # uvicorn's
    server = uvicorn.Server(config)
    if stop is not None:

        def exit_when_stopped() -> None:
            stop.wait()
            server.should_exit = True

        threading.Thread(target=exit_when_stopped, name="serve-stop", daemon=True).start()
    server.run(sockets=[listener])  # uvicorn's line is not printed for given sockets


def _own_base_url(host: str, port: int) -> str:
    """Where this server's customer links point when no public base URL is set: the address
    it listens on, an IPv6 one in brackets (``http://::1:8000`` is no URL), and loopback for
    a wildcard (no customer reaches ``0.0.0.0``)."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104 - not a bind
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def _serve_embedded(runtime: Any, url: str, host: str, port: int, listener: Any) -> None:
    """API + indexer + worker + webhook deliveries in one process on the in-process chain."""
    import time

    from api.embedded import EmbeddedStack

    settings = runtime.settings
    explicit = "public_base_url" in settings.model_fields_set
    stack = EmbeddedStack(
        runtime.chain,
        url,
        runtime.keyring,
        runtime.clock,
        settings.public_base_url if explicit else _own_base_url(host, port),  # links reach us
        cipher=runtime.cipher,
    )
    stop = threading.Event()
    from api.dispatch.channels import EMAIL_ATTEMPT_TIMEOUT
    from api.runtime import freeze_startup_heap, stop_on_signals

    threads: list[threading.Thread] = []
    # uvicorn raises the signal it caught again once it has shut down: under our handler it
    # sets ``stop`` instead of killing the process before the worker has finished the
    # delivery in hand (it was then written off as interrupted, never sent)
    with stop_on_signals(stop):
        try:
            # a job that dies sets ``stop``: uvicorn then shuts down (:func:`_run`)
            threads = stack.start_background(stop, interval=settings.indexer_poll_interval)
            typer.echo(
                f"embedded: chain {stack.chain.chain_id}, router {stack.deployment.router}, "
                f"token {stack.deployment.token}; indexer, worker and webhooks running; "
                "POST /v1/test_helpers/merchants/{id}/account gives a merchant a router "
                "account, POST /v1/test_helpers/invoices/{id}/pay pays an invoice (docs/api.md)",
                err=True,
            )
            app = stack.app()
            freeze_startup_heap()
            if not stop.is_set():  # a signal, or a job that died, while starting
                _run(app, listener, settings.api_root_path, stop)
        finally:
            stop.set()
            deadline = time.monotonic() + EMAIL_ATTEMPT_TIMEOUT + 10  # for all of them
            for thread in threads:  # each finishes its step and hands back unsent claims
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
            stack.close()
            runtime.close()
    if stack.failures:
        name, error = stack.failures[0]
        raise RuntimeError(f"the embedded {name} stopped: {type(error).__name__}: {error}")


def _refuse_production_settings(settings: Any) -> None:
    """The default chain (tester) makes ``serve`` the embedded development server: its own
    chain, a development operator that signs for every merchant, test helpers. Settings that
    say a real deployment was meant must not quietly get that."""
    meant = [
        name
        for name, given in (
            ("FOLLOWPAY_RPC_URL", settings.rpc_url),
            ("FOLLOWPAY_OPERATORS", settings.operators),
            (
                "FOLLOWPAY_DATABASE_URL (not SQLite)",
                not settings.resolved_database_url.startswith("sqlite"),
            ),
        )
        if given
    ]
    if meant:
        raise typer.BadParameter(
            f"{', '.join(meant)} set, but FOLLOWPAY_CHAIN is tester (the default): the embedded "
            "development server. Set FOLLOWPAY_CHAIN=rpc (or anvil) to serve a real node",
            param_hint="FOLLOWPAY_CHAIN",
        )


def _production_app(runtime: Any) -> FastAPI:
    """The API for a real node: with ``FOLLOWPAY_OPERATORS`` it signs invoices with those vault
    keys on the deployment in the manifest. Without, ``POST /v1/invoices`` answers 409
    ``signer_unavailable``, and the rest works; with a manifest it still reads the chain, so
    checkout pages, payment URIs and router accounts of invoices issued elsewhere work (a
    checkout-only server holds no key), and without one those say the chain is unavailable."""
    from api.app import create_app
    from api.runtime import chain_info_for
    from wallet.errors import ManifestError

    if runtime.settings.operator_refs:
        return create_app(
            runtime.settings,
            signers=runtime.operator_signers,
            chain_info=chain_info_for(runtime.chain, runtime.deployment),
        )
    try:
        deployment = runtime.deployment
    except ManifestError as exc:
        log.warning("serving without the chain (no deployment manifest): %s", exc)
        return create_app(runtime.settings)
    return create_app(runtime.settings, chain_info=chain_info_for(runtime.chain, deployment))


def build_app() -> FastAPI:
    """The app factory uvicorn calls in every worker (settings from the environment)."""
    from api.runtime import Runtime, freeze_startup_heap
    from api.settings import get_settings

    app = _production_app(Runtime(get_settings()))
    freeze_startup_heap()
    return app


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
) -> None:
    """Serve the API (database: FOLLOWPAY_DATABASE_URL, SQLite in FOLLOWPAY_HOME by default).

    On the embedded default (FOLLOWPAY_CHAIN=tester) one process runs everything: the
    in-process chain with freshly deployed contracts, the API, the indexer, the follow-up
    worker and webhook deliveries. Otherwise it serves the API only; run ``followpay indexer``
    and ``followpay worker`` beside it.

    Invoices are signed by the vault wallets FOLLOWPAY_OPERATORS names (unlocked with
    FOLLOWPAY_PASSWORD) on the deployment in the manifest; without operators every other resource
    works and ``POST /v1/invoices`` answers 409 ``signer_unavailable``. Use PostgreSQL for more
    than one worker.
    """
    import uvicorn

    from api.commands.settlement import report_sealing
    from api.runtime import Runtime
    from api.settings import get_settings

    settings = get_settings()
    if settings.chain.value == "tester":
        _refuse_production_settings(settings)
    # bound before anything is written (the embedded server is one process whatever --workers)
    single = workers == 1 or settings.chain.value == "tester"
    listener = _listen(host, port) if single else None
    try:
        runtime = Runtime(settings)
        report_sealing(runtime.upgrade_database())
        url = runtime.settings.resolved_database_url
        if runtime.settings.chain.value == "tester":
            _serve_embedded(runtime, url, host, port, listener)
            return
        if listener is not None:
            from api.runtime import freeze_startup_heap

            app = _production_app(runtime)  # a wrong password or missing wallet fails here
            freeze_startup_heap()
            _run(app, listener, runtime.settings.api_root_path)
            runtime.close()
            return
    finally:
        if listener is not None:
            listener.close()
    if runtime.settings.operator_refs:
        _ = runtime.operator_signers  # fail once, clearly, before any worker starts
    runtime.close()
    uvicorn.run(
        "api.commands.serve:build_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        proxy_headers=False,
        root_path=runtime.settings.api_root_path,
    )
