"""``followpay db | indexer | worker | invoices`` — the settlement engine from the shell."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column, Table

from api.dispatch.smtp import SmtpSecurity

if TYPE_CHECKING:  # the database and chain stacks load in the command that runs, not at start-up
    from sqlmodel import Session

    from api.runtime import Runtime
    from api.settlement.models import Invoice
    from crm.consent.service import HeadsSealed

__all__ = ["db_app", "indexer", "invoices_app", "report_sealing", "worker"]

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
invoices_app = typer.Typer(help="Create, show and list invoices.", no_args_is_help=True)
_err = Console(stderr=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the CRM and API migrations to FOLLOWPAY_DATABASE_URL (SQLite by default)."""
    runtime = _runtime()
    sealed = runtime.upgrade_database()  # the CRM chain first, then the API chain
    typer.echo("database is at head", err=True)
    report_sealing(sealed)


def report_sealing(outcome: HeadsSealed) -> None:
    """What sealing the consent heads found, on stderr (nothing when there was nothing)."""
    if outcome.sealed:
        typer.echo(f"sealed {outcome.sealed} consent ledger heads", err=True)
    if outcome.stale_contact_ids:
        named = ", ".join(map(str, outcome.stale_contact_ids[:20]))
        typer.echo(
            f"warning: the consent ledgers of contacts {named} no longer end where their head "
            "says: entries were removed or rewritten before the heads were sealed (GET "
            "/v1/contacts/{id}/consents; their next consent change is flagged)",
            err=True,
        )


def _runtime() -> Runtime:
    from api.runtime import Runtime
    from api.settings import get_settings

    return Runtime(get_settings())


def indexer(
    once: Annotated[bool, typer.Option(help="one step, then exit")] = False,
    from_block: Annotated[
        int | None, typer.Option(help="first block (default: the router's deploy block)")
    ] = None,
) -> None:
    """Follow the router: settle invoices, roll back reorgs, schedule follow-ups."""
    runtime = _runtime()
    deployment = runtime.deployment  # a missing deployment fails before the indexer's imports

    from api.runtime import freeze_startup_heap, stop_on_signals
    from api.settlement.indexer import Indexer
    from api.settlement.step_state import PollResult

    engine = Indexer(
        runtime.chain,
        runtime.engine,
        deployment.router,
        start_block=from_block if from_block is not None else deployment.deploy_block,
        clock=runtime.clock,
        batch_blocks=runtime.settings.indexer_batch_blocks,
    )
    if once:
        result = engine.poll_once()
        typer.echo(json.dumps({"to_block": result.to_block, "settled": result.settled}))
        return
    stop = threading.Event()
    with Progress(
        TextColumn("catching up"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeRemainingColumn(),
        console=_err,
        transient=True,
    ) as progress:
        task = progress.add_task("starting", total=None)

        def report(result: PollResult) -> None:
            progress.update(
                task,
                total=result.head,
                completed=result.to_block,
                description=f"block {result.to_block:,}/{result.head:,}",
            )

        freeze_startup_heap()
        try:
            with stop_on_signals(stop):
                engine.run(
                    stop, poll_interval=runtime.settings.indexer_poll_interval, progress=report
                )
        except KeyboardInterrupt:  # a second signal
            stop.set()
    runtime.close()


def worker(
    once: Annotated[bool, typer.Option(help="one batch, then exit")] = False,
    smtp_host: Annotated[str, typer.Option(envvar="FOLLOWPAY_SMTP_HOST")] = "127.0.0.1",
    smtp_port: Annotated[int, typer.Option(envvar="FOLLOWPAY_SMTP_PORT")] = 25,
    sender: Annotated[str, typer.Option(envvar="FOLLOWPAY_MAIL_FROM")] = "followup@localhost",
    smtp_security: Annotated[
        SmtpSecurity,
        typer.Option(
            envvar="FOLLOWPAY_SMTP_SECURITY",
            help="none (a local relay), starttls (submission, usually port 587; required "
            "once asked for) or tls (implicit, usually port 465); certificates are verified",
        ),
    ] = SmtpSecurity.NONE,
    smtp_user: Annotated[
        str | None,
        typer.Option(
            envvar="FOLLOWPAY_SMTP_USER",
            help="SMTP AUTH user; the password comes from FOLLOWPAY_SMTP_PASSWORD only",
        ),
    ] = None,
    smtp_ca_file: Annotated[
        Path | None,
        typer.Option(envvar="FOLLOWPAY_SMTP_CA_FILE", help="CA bundle for a private relay"),
    ] = None,
    worker_id: Annotated[
        str | None,
        typer.Option(
            help="how claims and logs name this worker (the host name by default); the process "
            "id and a random suffix are added, so copies started alike never share an id"
        ),
    ] = None,
    lease_seconds: Annotated[
        float | None,
        typer.Option(
            envvar="FOLLOWPAY_WORKER_LEASE_SECONDS",
            help="claims older than this from a dead worker are recovered (never resent); "
            "default 120, at least 90, or 0 once every other worker is stopped",
            show_default=False,
        ),
    ] = None,
    webhooks: Annotated[
        bool, typer.Option(help="also deliver the merchants' webhook events (signed, retried)")
    ] = True,
) -> None:
    """Send due follow-ups (consent re-checked at send time) and deliver merchant webhooks."""
    from api.db import session_factory
    from api.dispatch.channels import (
        EmailChannel,
        InAppChannel,
        Links,
        PhoneChannel,
        WebhookChannel,
    )
    from api.dispatch.worker import MIN_LEASE, Channel, Worker, default_worker_id
    from api.runtime import freeze_startup_heap, stop_on_signals
    from api.webhooks import TargetPolicy, deliver_due, run_delivery_worker
    from crm.followups.dispatch import DEFAULT_LEASE

    lease = DEFAULT_LEASE if lease_seconds is None else _lease(lease_seconds, MIN_LEASE)
    runtime = _runtime()
    links = Links(runtime.settings.public_base_url)
    targets = TargetPolicy(allow_private=runtime.settings.webhook_allow_private_targets)
    try:
        email = EmailChannel(
            smtp_host,
            smtp_port,
            sender,
            links,
            security=smtp_security,
            username=smtp_user,
            password=runtime.settings.smtp_password,
            ca_file=smtp_ca_file,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    channels: dict[str, Channel] = {
        "email": email,
        "in_app": InAppChannel(links, runtime.keyring),
        "phone": PhoneChannel(),
        "webhook": WebhookChannel(runtime.engine, runtime.cipher, links, targets=targets),
        "sms": WebhookChannel(runtime.engine, runtime.cipher, links, name="sms", targets=targets),
    }
    job = Worker(
        runtime.engine,
        runtime.keyring,
        channels,
        runtime.clock,
        worker_id=default_worker_id(worker_id),
        lease=lease,
    )
    sessions = session_factory(runtime.engine)
    if once:
        result = job.run_once()
        delivered = (
            deliver_due(sessions, cipher=runtime.cipher, targets=targets) if webhooks else []
        )
        summary = {"claimed": result.claimed, **result.outcomes, "webhooks": len(delivered)}
        typer.echo(json.dumps(summary))
        return
    stop = threading.Event()
    interval = runtime.settings.indexer_poll_interval
    threads = []
    if webhooks:
        threads.append(
            threading.Thread(
                target=run_delivery_worker,
                args=(sessions, stop),
                kwargs={"interval": interval, "cipher": runtime.cipher, "targets": targets},
                name="webhooks",
                daemon=True,
            )
        )
    freeze_startup_heap()
    try:
        with stop_on_signals(stop):
            for thread in threads:
                thread.start()
            job.run(stop, poll_interval=interval)
    except KeyboardInterrupt:  # a second signal
        stop.set()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=20)  # a delivery in flight finishes (15 s deadline an attempt)
    runtime.close()


def _lease(seconds: float, shortest: timedelta) -> timedelta:
    """``--lease-seconds``: 0 (recover every claim now, every other worker stopped) or at least
    ``shortest`` (a live worker's attempt must fit in it)."""
    if seconds == 0:
        return timedelta(0)
    if not shortest.total_seconds() <= seconds <= 86_400:  # also refuses nan and inf
        raise typer.BadParameter(
            f"must be 0 or {shortest.total_seconds():g} to 86400 s: a live worker's attempt "
            f"takes up to {shortest.total_seconds():g} s; 0 recovers every claim at once "
            "(only with every other worker stopped)",
            param_hint="--lease-seconds",
        )
    return timedelta(seconds=seconds)


#: The API's limits on invoice metadata (``InvoiceCreateBody.metadata``), applied before anything
#: is written so the shell cannot store what the API would refuse.
_METADATA_ENTRIES, _METADATA_KEY, _METADATA_VALUE = 20, 40, 500
_QR_KINDS = (".svg", ".png")


def _metadata(pairs: Iterable[str]) -> dict[str, str]:
    """``--metadata KEY=VALUE`` (repeatable) as the API stores it: a ``str -> str`` dict.

    The first ``=`` splits key from value (a value may hold more); an empty value is kept as
    ``""``. A missing ``=``, an empty or over-long key, an over-long value, a key given twice or
    more than 20 entries is a usage error.
    """
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--metadata")
        if not 1 <= len(key) <= _METADATA_KEY:
            raise typer.BadParameter(
                f"keys are 1-{_METADATA_KEY} characters (got {len(key)})", param_hint="--metadata"
            )
        if len(value) > _METADATA_VALUE:
            raise typer.BadParameter(
                f"the value of {key!r} is longer than {_METADATA_VALUE} characters",
                param_hint="--metadata",
            )
        if key in metadata:
            raise typer.BadParameter(f"key {key!r} given twice", param_hint="--metadata")
        metadata[key] = value
    if len(metadata) > _METADATA_ENTRIES:
        raise typer.BadParameter(
            f"at most {_METADATA_ENTRIES} entries (got {len(metadata)})", param_hint="--metadata"
        )
    return metadata


def _qr_targets(paths: Iterable[Path]) -> list[Path]:
    """Check every ``--qr`` path before the invoice exists: a known suffix, an existing folder."""
    targets = []
    for path in paths:
        if path.suffix.lower() not in _QR_KINDS:
            raise typer.BadParameter(f"{str(path)!r} must end in .svg or .png", param_hint="--qr")
        if not path.parent.is_dir():
            raise typer.BadParameter(f"no folder {str(path.parent)!r}", param_hint="--qr")
        if path.is_dir():
            raise typer.BadParameter(f"{str(path)!r} is a folder", param_hint="--qr")
        targets.append(path)
    return targets


def _write_qr_codes(targets: list[Path], uri: str, written: list[Path]) -> None:
    """The payment URI's QR code at each target, drawn by the helpers behind the API's
    ``/v1/invoices/{id}/qr.svg|qr.png``. Each file is written beside its target and renamed
    over it (no half-written image), then listed in ``written``."""
    from api.settlement.invoices import qr_png, qr_svg

    for path in targets:
        image = qr_svg(uri).encode() if path.suffix.lower() == ".svg" else qr_png(uri)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(image)
            os.chmod(tmp, 0o644)  # an image, not a secret (mkstemp makes it 0600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(path)


@invoices_app.command("create")
def invoices_create(
    merchant: Annotated[int, typer.Option(help="CRM merchant id")],
    amount: Annotated[str, typer.Option(help="decimal amount, e.g. 12.50")],
    order: Annotated[str, typer.Option(help="the merchant's order id")],
    contact: Annotated[int | None, typer.Option(help="CRM contact id to follow up")] = None,
    confirmations: Annotated[int, typer.Option(help="0, 1, 2 or 6")] = 1,
    expires_minutes: Annotated[
        int, typer.Option(min=1, max=7 * 24 * 60, help="expiry in minutes (up to 7 days)")
    ] = 15,
    metadata: Annotated[
        list[str] | None,
        typer.Option(
            "--metadata",
            metavar="KEY=VALUE",
            help="store KEY=VALUE in the invoice's metadata (repeatable; the API's limits)",
        ),
    ] = None,
    qr: Annotated[
        list[Path] | None,
        typer.Option(
            "--qr",
            metavar="PATH",
            help="write the payment URI's QR code to PATH, SVG or PNG by suffix (repeatable)",
            dir_okay=False,
        ),
    ] = None,
    dev_operator: Annotated[
        bool,
        typer.Option(
            help="sign with the local dev operator (anvil or another dev chain, id 31337/1337)"
        ),
    ] = False,
) -> None:
    """Create an invoice: signed intent, invoice id, EIP-681 URI (JSON on stdout).

    The intent is signed by the FOLLOWPAY_OPERATORS key registered as the merchant's operator
    (vault unlocked with FOLLOWPAY_PASSWORD), or with --dev-operator by the public development
    key on a local chain. Each --qr file is written before the invoice is committed: a file
    that cannot be written leaves no invoice, and a failed commit removes the files.
    """
    from sqlmodel import Session

    from api.settlement import invoices
    from wallet.amounts import parse_amount
    from wallet.chain import LOCAL_DEV_CHAIN_IDS, dev_accounts
    from wallet.secrets import PrivateKey
    from wallet.signing import Signer
    from wallet.tokens import Token

    extra = _metadata(metadata or ())  # usage errors before the chain or the database
    targets = _qr_targets(qr or ())
    runtime = _runtime()
    if dev_operator:
        if not (runtime.chain.is_local or runtime.chain.chain_id in LOCAL_DEV_CHAIN_IDS):
            raise typer.BadParameter(
                "--dev-operator signs with the public development key: only on the tester or "
                f"anvil backends or a chain id in {sorted(LOCAL_DEV_CHAIN_IDS)}"
            )
        signer = Signer(PrivateKey(bytes(dev_accounts()[2].key)))
    else:
        if not runtime.settings.operator_refs:
            raise typer.BadParameter(
                "set FOLLOWPAY_OPERATORS (vault wallets that sign intents) or pass --dev-operator"
            )
        with Session(runtime.engine) as session:
            operator = invoices.operator_of(session, merchant, runtime.chain.chain_id)
        signer = runtime.signer_for(merchant, operator)
    deployment = runtime.deployment
    request = invoices.InvoiceRequest(
        merchant_id=merchant,
        token=deployment.token,
        amount=parse_amount(amount, Token(runtime.chain, deployment.token).decimals()),
        order_id=order,
        contact_id=contact,
        confirmations=confirmations,
        expires_in=timedelta(minutes=expires_minutes),
        metadata=extra,
    )
    written: list[Path] = []
    try:
        with Session(runtime.engine, expire_on_commit=False) as session, session.begin():
            invoice = invoices.create_invoice(
                session,
                request,
                chain_id=runtime.chain.chain_id,
                router=deployment.router,
                signer=signer,
                clock=runtime.clock,
            )
            output = _invoice_json(session, invoice, deployment.router)
            _write_qr_codes(targets, str(output["uri"]), written)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    typer.echo(json.dumps(output))
    runtime.close()


def _invoice_json(session: Session, invoice: Invoice, router: str) -> dict[str, object]:
    """The invoice as JSON; its ``intent`` and ``signature`` are the API's, so the document
    is what ``followpay wallet pay --intent`` reads."""
    from api.settlement import repository as repo
    from api.settlement.invoices import eip681_uri, intent_of

    data = {
        k: getattr(invoice, k)
        for k in (
            "id",
            "number",
            "order_id",
            "state",
            "status",
            "token",
            "payer",
            "deadline",
            "signature_r",
            "signature_vs",
            "confirmations_required",
        )
    }
    data["amount"] = str(invoice.amount)
    data["paid_amount"] = str(invoice.paid_amount)
    data["expires_at"] = invoice.expires_at.isoformat()
    data["metadata"] = dict(invoice.metadata_ or {})
    data["uri"] = eip681_uri(invoice, router)  # type: ignore[arg-type]
    account = repo.get_account(session, invoice.account_id)
    if account is not None:
        intent = intent_of(invoice, account)
        data["intent"] = {
            "merchant": intent.merchant,
            "token": intent.token,
            "amount": str(intent.amount),
            "fee": str(intent.fee),
            "invoice_id": str(intent.invoice_id),
            "payer": intent.payer,
            "deadline": intent.deadline,
        }
        data["signature"] = {"r": invoice.signature_r, "vs": invoice.signature_vs}
    return data


@invoices_app.command("show")
def invoices_show(
    invoice_id: str, merchant: Annotated[int, typer.Option(help="CRM merchant id")]
) -> None:
    """One invoice as JSON."""
    from sqlmodel import Session

    from api.settlement import invoices

    runtime = _runtime()
    with Session(runtime.engine) as session:
        invoice = invoices.get_invoice(session, merchant, invoice_id)
        typer.echo(json.dumps(_invoice_json(session, invoice, runtime.deployment.router)))
    runtime.close()


def _display_amount(value: int, decimals: int | None) -> str:
    """Base units as tokens, exactly (integer maths): ``1_500_000`` at 6 decimals is
    ``"1.50"``, at least two decimals and every significant one, thousands grouped. Without
    known decimals the base units themselves, labelled."""
    from wallet.amounts import format_amount

    if decimals is None:
        return f"{value:,} base units"
    whole, _, frac = format_amount(value, decimals, min_decimals=2).partition(".")
    return f"{int(whole):,}" + (f".{frac}" if frac else "")


def _token_decimals(runtime: Runtime, tokens: set[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """Each (chain id, token) read once from the configured chain; tokens of other chains, or
    addresses that answer no ``decimals()``, are left out (shown in base units)."""
    from web3.exceptions import Web3Exception

    from wallet.tokens import Token

    known: dict[tuple[int, str], int] = {}
    for chain_id, token in tokens:
        if chain_id != runtime.chain.chain_id:
            continue
        try:
            known[(chain_id, token)] = Token(runtime.chain, token).decimals()
        except Web3Exception:  # no contract there (e.g. a restarted local chain)
            continue
    return known


@invoices_app.command("list")
def invoices_list(
    merchant: Annotated[int, typer.Option(help="CRM merchant id")],
    state: Annotated[str | None, typer.Option(help="invoice state")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 20,
) -> None:
    """Newest invoices first, as a table; amounts in tokens at each token's decimals (read
    from the chain; base units for invoices of another chain)."""
    from sqlmodel import Session

    from api.settlement import repository
    from api.settlement.models import InvoiceState

    runtime = _runtime()
    try:
        wanted = InvoiceState(state) if state else None
    except ValueError:
        raise typer.BadParameter(f"unknown state {state!r}", param_hint="--state") from None
    with Session(runtime.engine) as session:
        rows = list(repository.list_invoices(session, merchant, state=wanted, limit=limit))
    # the chain only when there is something to show: the database answers first
    decimals = _token_decimals(runtime, {(i.chain_id, i.token) for i in rows}) if rows else {}
    table = Table(
        "id",
        "order",
        Column("amount", justify="right"),
        "state",
        "status",
        "created (UTC)",
    )
    for inv in rows:
        table.add_row(
            inv.id,
            inv.order_id,
            _display_amount(inv.amount, decimals.get((inv.chain_id, inv.token))),
            inv.state,
            inv.status,
            f"{inv.created_at:%Y-%m-%d %H:%M}",
        )
    console = Console()
    # never cut an id or an amount to fit: widen to the table's natural width instead
    natural = Measurement.get(console, console.options.update_width(10**4), table).maximum
    if natural > console.width:
        console = Console(width=natural)
    console.print(table)
    runtime.close()
