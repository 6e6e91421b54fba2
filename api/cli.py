"""The ``followpay`` command line.

:func:`main` turns every failure into a non-zero exit and a short message on stderr, never a
traceback: usage errors as click prints them (exit 2); domain errors (they carry ``status_code``
and ``code``), invalid ``FOLLOWPAY_*`` settings, an unmigrated database and anything unexpected
as one ``error: …`` line (exit 1). ``FOLLOWPAY_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from pydantic import ValidationError


class DemoChain(StrEnum):
    """The chains the demo starts itself (``rpc`` needs a funded node it cannot assume)."""

    TESTER = "tester"
    ANVIL = "anvil"


__all__ = ["app", "main"]

app = typer.Typer(
    name="followpay",
    help="FollowPay: ERC-20 payments with consent-respecting customer follow-up.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
contracts_app = typer.Typer(help="Compile and check the Solidity artifacts.", no_args_is_help=True)
chain_app = typer.Typer(help="Local chains and deployments.", no_args_is_help=True)
app.add_typer(contracts_app, name="contracts")
app.add_typer(chain_app, name="chain")


def _mount_optional() -> None:
    """Sub-apps owned by the domain packages."""
    from api.commands.admin import app as admin_app
    from api.commands.serve import serve
    from api.commands.settlement import db_app, indexer, invoices_app, worker
    from wallet.cli import app as wallet_app

    app.add_typer(wallet_app, name="wallet")
    app.add_typer(db_app, name="db")
    app.add_typer(invoices_app, name="invoices")
    app.command("indexer")(indexer)
    app.command("worker")(worker)
    app.add_typer(admin_app, name="admin")
    app.command("serve")(serve)


@contracts_app.command("build")
def contracts_build() -> None:
    """Compile contracts/src into contracts/artifacts (via scripts/solc or FOLLOWPAY_SOLC)."""
    from contracts.build import build

    for artifact in build():
        typer.echo(
            f"{artifact['contractName']}\t{artifact['compiler']}\t{artifact['sourceHash'][:12]}"
        )


@contracts_app.command("check")
def contracts_check(
    artifacts: Annotated[
        Path | None,
        typer.Option(
            envvar="FOLLOWPAY_ARTIFACTS_DIR",
            exists=True,
            file_okay=False,
            help="artifacts directory to check (default: contracts/artifacts)",
        ),
    ] = None,
) -> None:
    """Exit non-zero when an artifact is stale against its sources (or corrupt)."""
    from contracts.build import stale_artifacts

    stale = stale_artifacts(artifacts)
    if stale:
        typer.echo(
            "error: stale artifacts: " + ", ".join(stale) + " (run `followpay contracts build`)",
            err=True,
        )
        raise typer.Exit(1)
    typer.echo("artifacts are up to date")


@chain_app.command("up")
def chain_up(
    rpc_url: Annotated[
        str | None,
        typer.Option(
            help="deploy to this chain instead of starting anvil "
            "(default: FOLLOWPAY_RPC_URL unless FOLLOWPAY_CHAIN=tester)"
        ),
    ] = None,
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="port for the anvil this command starts")
    ] = 8545,
    manifest: Annotated[
        Path | None,
        typer.Option(
            help="deployment manifest path (default: FOLLOWPAY_MANIFEST, else one per chain id)"
        ),
    ] = None,
    allow_dev_keys: Annotated[
        bool,
        typer.Option(help="deploy with the public development key to a non-local chain id"),
    ] = False,
) -> None:
    """Start anvil (or use a node), deploy token + router idempotently, write the manifest.

    The node is --rpc-url, else the one FOLLOWPAY_CHAIN/FOLLOWPAY_RPC_URL name (where the
    indexer and worker look), else a new anvil on --port; the manifest goes where they read it.
    With a spawned anvil the command keeps running until Ctrl-C (anvil stops with it).
    """
    from api.settings import get_settings
    from wallet.chain import LOCAL_DEV_CHAIN_IDS, ChainBackend, ChainConfig, connect, dev_accounts
    from wallet.deployment import ensure_deployed

    settings = get_settings()
    if rpc_url:
        config = ChainConfig(backend="rpc", rpc_url=rpc_url, expected_chain_id=settings.chain_id)
    elif settings.rpc_url and settings.chain is not ChainBackend.TESTER:
        config = settings.chain_config()
    else:
        config = ChainConfig(backend="anvil", anvil_port=port)
    spawned = config.rpc_url is None
    with connect(config) as chain:
        if not spawned and chain.chain_id not in LOCAL_DEV_CHAIN_IDS and not allow_dev_keys:
            typer.echo(
                f"error: chain id {chain.chain_id} is not a local dev chain "
                f"({'/'.join(map(str, sorted(LOCAL_DEV_CHAIN_IDS)))}) and `chain up` deploys with "
                "the public development key; pass --allow-dev-keys to do it anyway",
                err=True,
            )
            raise typer.Exit(1)
        path = manifest or settings.manifest_for(chain.chain_id)
        owner = dev_accounts()[0]  # local development deployer
        deployment, created = ensure_deployed(chain, path, owner)
        verb = "deployed" if created else "reused"
        typer.echo(f"{verb}: token {deployment.token}, router {deployment.router}", err=True)
        typer.echo(f"manifest: {path}", err=True)
        typer.echo(json.dumps(deployment.to_json()))
        if spawned:
            typer.echo(
                f"anvil on {chain.rpc_url} (chain id {chain.chain_id}); Ctrl-C stops it", err=True
            )
            _wait_forever()


def _wait_forever() -> None:  # pragma: no cover - interactive
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return


@app.command("demo")
def demo(
    chain: Annotated[
        DemoChain, typer.Option(help="tester (in-process) or anvil (spawned)")
    ] = DemoChain.TESTER,
) -> None:
    """The whole story offline: pay invoices on a local chain, settle, follow up, rate."""
    from api.demo import run_demo

    run_demo(chain.value)


def _is_domain_error(exc: BaseException) -> bool:
    return isinstance(getattr(exc, "status_code", None), int) and hasattr(exc, "code")


_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]*:)[^@\s]+@")


def _one_line(text: str) -> str:
    """Collapse whitespace and hide passwords in URLs (``scheme://user:***@host``)."""
    return _URL_PASSWORD.sub(r"\1***@", " ".join(str(text).split()))


def _settings_problem(exc: ValidationError) -> str:
    """``FOLLOWPAY_CHAIN: Input should be …`` for each invalid setting (never the value)."""
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        loc = error["loc"]
        problems.append(f"FOLLOWPAY_{str(loc[0]).upper()}: {message}" if loc else message)
    return "invalid settings: " + "; ".join(problems)


def _describe(exc: Exception) -> str:
    """The one line :func:`main` prints for an exception a command raised."""
    from pydantic import ValidationError
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, ValidationError):
        if exc.title == "Settings":
            return _settings_problem(exc)
        fields = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"]
            for e in exc.errors()
        )
        return f"invalid {exc.title}: {fields}"
    if isinstance(exc, DBAPIError):
        reason = next(iter(str(exc.orig).strip().splitlines()), "")
        if "no such table" in reason or ("relation" in reason and "does not exist" in reason):
            return f"the database is not migrated ({reason}): run `followpay db upgrade`"
        return f"database error: {type(exc.orig).__name__}: {reason}"
    if _is_domain_error(exc):
        return str(exc)
    detail = f": {exc}" if str(exc) else ""
    return f"{type(exc).__name__}{detail} (rerun with FOLLOWPAY_DEBUG=1 for the traceback)"


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: a non-zero exit and a short stderr message for every failure."""
    _mount_optional()
    try:
        # standalone_mode=False: typer returns the code of a ``typer.Exit`` instead of exiting
        code = app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # click's usage errors (typer vendors click)
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            typer.echo(f"Error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if os.environ.get("FOLLOWPAY_DEBUG") == "1":
            raise
        typer.echo(f"error: {_one_line(_describe(exc))}", err=True)
        sys.exit(1)
    if type(code) is int and code != 0:
        sys.exit(code)


if __name__ == "__main__":
    main()
