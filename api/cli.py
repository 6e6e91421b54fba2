"""The ``followpay`` command line.

Every domain error carries ``status_code`` and ``code``; :func:`main` turns any of them into one
line on stderr and a non-zero exit, so users never see a traceback for bad input.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import click
import typer

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
def contracts_check() -> None:
    """Exit non-zero when an artifact is stale against its sources."""
    from contracts.build import stale_artifacts

    stale = stale_artifacts()
    if stale:
        typer.echo("stale artifacts: " + ", ".join(stale), err=True)
        raise typer.Exit(1)
    typer.echo("artifacts are up to date")


@chain_app.command("up")
def chain_up(
    rpc_url: Annotated[
        str | None, typer.Option(help="deploy to this chain instead of starting anvil")
    ] = None,
    port: Annotated[int, typer.Option(help="port for the anvil this command starts")] = 8545,
    manifest: Annotated[Path | None, typer.Option(help="deployment manifest path")] = None,
) -> None:
    """Start anvil (or use --rpc-url), deploy token + router idempotently, write the manifest.

    With a spawned anvil the command keeps running until Ctrl-C (anvil stops with it).
    """
    from api.settings import get_settings
    from wallet.chain import ChainConfig, connect, dev_accounts
    from wallet.deployment import ensure_deployed

    settings = get_settings()
    if rpc_url:
        config = ChainConfig(backend="rpc", rpc_url=rpc_url, expected_chain_id=settings.chain_id)
    else:
        config = ChainConfig(backend="anvil", anvil_port=port)
    with connect(config) as chain:
        path = manifest or settings.home / f"deployment-{chain.chain_id}.json"
        owner = dev_accounts()[0]  # local development deployer
        deployment, created = ensure_deployed(chain, path, owner)
        verb = "deployed" if created else "reused"
        typer.echo(f"{verb}: token {deployment.token}, router {deployment.router}", err=True)
        typer.echo(f"manifest: {path}", err=True)
        typer.echo(json.dumps(deployment.to_json()))
        if rpc_url is None:
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
    chain: Annotated[str, typer.Option(help="tester (in-process) or anvil")] = "tester",
) -> None:
    """The whole story offline: pay invoices on a local chain, settle, follow up, rate."""
    from api.demo import run_demo

    run_demo(chain)


def _is_domain_error(exc: BaseException) -> bool:
    return isinstance(getattr(exc, "status_code", None), int) and hasattr(exc, "code")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one clear line on stderr for every known failure."""
    _mount_optional()
    try:
        app(args=argv, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        if not _is_domain_error(exc):
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
