"""``followpay admin``: bootstrap merchants and API keys from the shell.

Only ``create-key`` prints a key, once, on stdout (and nothing else there), so it can be piped
into a secret store: ``followpay admin create-key --merchant 1 --role merchant | vault-put``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from api.keys.roles import ApiRole

__all__ = ["app", "create_key", "create_merchant"]

app = typer.Typer(help="Merchants and API keys (bootstrap).", no_args_is_help=True)


@app.command("create-merchant")
def create_merchant(name: Annotated[str, typer.Argument(help="Display name.")]) -> None:
    """Create a merchant; prints its id."""
    from api.db import session_scope
    from api.runtime import Runtime
    from api.settings import get_settings
    from crm import MerchantCreate, SystemClock, merchants

    runtime = Runtime(get_settings())
    try:
        with session_scope(runtime.engine) as session:
            merchant = merchants.create_merchant(session, MerchantCreate(name=name), SystemClock())
            merchant_id = merchant.id
    finally:
        runtime.close()
    typer.echo(str(merchant_id))


@app.command("create-key")
def create_key(
    role: Annotated[ApiRole, typer.Option(help="admin, merchant or support.")] = ApiRole.MERCHANT,
    merchant: Annotated[
        str | None, typer.Option(help="Merchant id (required for merchant/support keys).")
    ] = None,
    live: Annotated[bool, typer.Option(help="fp_live_ key instead of fp_test_.")] = False,
    name: Annotated[str | None, typer.Option(help="A label for humans.")] = None,
) -> None:
    """Create an API key; prints the key (shown once: store it now)."""
    from api.db import session_scope
    from api.keys import service as keys
    from api.runtime import Runtime
    from api.settings import get_settings
    from crm import merchants

    if (role is ApiRole.ADMIN) != (merchant is None):
        raise typer.BadParameter(
            "admin keys see every merchant: leave --merchant out"
            if merchant is not None
            else f"a {role.value} key needs --merchant ID",
            param_hint="--merchant",
        )
    if merchant is not None and not (merchant.isascii() and merchant.isdigit()):
        raise typer.BadParameter("merchant ids are integers", param_hint="--merchant")
    runtime = Runtime(get_settings())
    try:
        with session_scope(runtime.engine) as session:
            if merchant is not None:
                merchants.get_merchant(session, int(merchant))
            _, plaintext = keys.create_key(session, merchant, role, live, name=name)
    finally:
        runtime.close()
    typer.echo(plaintext)
