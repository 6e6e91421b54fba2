"""``followpay wallet …``: HD wallets, keystores, balances, sends and payments from a terminal.

Scriptable: results go to stdout (one address, a CSV stream, a tx hash), everything for humans
(warnings, progress, tables) to stderr. Secrets never come from arguments: mnemonics from stdin
(``--mnemonic-stdin``) or a hidden prompt, passwords from ``FOLLOWPAY_PASSWORD`` (keystore files:
``FOLLOWPAY_KEYSTORE_PASSWORD``) or a hidden prompt, passphrases from a named environment
variable. Every failure is one line on stderr and a non-zero exit code — never a traceback.
"""

from __future__ import annotations

import functools
import getpass
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from wallet.errors import WalletError

if TYPE_CHECKING:  # eth-keys loads only in the wallet commands, not in every `followpay` start
    from wallet.secrets import SecretStr

__all__ = ["app", "main"]

app = typer.Typer(
    name="wallet",
    help="HD wallets, encrypted vaults, keystores, balances, sends and payments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_F = TypeVar("_F", bound=Callable[..., Any])
PASSWORD_ENV = "FOLLOWPAY_PASSWORD"  # noqa: S105 - a variable name
KEYSTORE_PASSWORD_ENV = "FOLLOWPAY_KEYSTORE_PASSWORD"  # noqa: S105


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(message: str, code: int = 1) -> NoReturn:
    text = " ".join(str(message).split())  # exactly one line
    sys.stderr.write(f"error: {text}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def _handled(fn: _F) -> _F:
    """Turn every expected failure into one stderr line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except WalletError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except Exception as exc:
            name = type(exc).__name__
            if name == "ArtifactError" or isinstance(exc, OSError | ValueError):
                _fail(str(exc) or name)
            _fail(f"unexpected {name}; rerun with FOLLOWPAY_DEBUG=1 for details")

    if os.environ.get("FOLLOWPAY_DEBUG") == "1":
        return fn
    return wrapper  # type: ignore[return-value]


# --- secret input ----------------------------------------------------------------------------


def _has_terminal() -> bool:
    """Whether getpass can prompt without echo (else it warns and reads stdin in the clear)."""
    try:
        with open("/dev/tty", "rb"):
            return True
    except OSError:
        return sys.stdin.isatty()


def _password(
    *, confirm: bool = False, env: str = PASSWORD_ENV, what: str = "Password"
) -> SecretStr:
    from wallet.secrets import SecretStr

    value = os.environ.get(env)
    if value is not None:
        if not value:
            _fail(f"{env} is set but empty")
        return SecretStr(value)
    if not _has_terminal():
        _fail(f"no password: set {env} or run in a terminal")
    try:
        first = getpass.getpass(f"{what}: ")
        if confirm and getpass.getpass(f"{what} (again): ") != first:
            _fail("passwords do not match")
    except (EOFError, OSError):
        _fail(f"no password: set {env} or run in a terminal")
    if not first:
        _fail("password must not be empty")
    return SecretStr(first)


def _mnemonic_from_stdin(use_stdin: bool) -> SecretStr:
    from wallet.secrets import SecretStr

    if not use_stdin:
        _fail("pass --mnemonic-stdin and pipe the mnemonic in (it is never an argument)")
    text = getpass.getpass("Mnemonic (hidden): ") if sys.stdin.isatty() else sys.stdin.read()
    if not text.strip():
        _fail("no mnemonic on stdin")
    return SecretStr(text)


def _passphrase(env_var: str | None) -> SecretStr | None:
    from wallet.secrets import SecretStr

    if env_var is None:
        return None
    if env_var not in os.environ:
        _fail(f"passphrase variable {env_var} is not set")
    return SecretStr(os.environ[env_var])


def _vault() -> Any:
    from wallet.vault import Vault

    return Vault()


# --- options ---------------------------------------------------------------------------------

NameOpt = Annotated[str, typer.Option("--name", "-n", help="Wallet name in the vault.")]
IndexOpt = Annotated[
    int, typer.Option("--index", "-i", min=0, help="Address index on m/44'/60'/0'/0/i.")
]
MnemonicStdin = Annotated[
    bool, typer.Option("--mnemonic-stdin", help="Read the mnemonic from standard input.")
]
PassphraseEnv = Annotated[
    str | None,
    typer.Option(
        "--passphrase-env",
        metavar="VAR",
        help="Environment variable holding the BIP-39 passphrase.",
    ),
]
ChainOpt = Annotated[
    str, typer.Option("--chain", help="Chain backend: rpc, anvil (spawned or --rpc-url) or tester.")
]
RpcOpt = Annotated[
    str | None, typer.Option("--rpc-url", envvar="FOLLOWPAY_RPC_URL", help="JSON-RPC endpoint.")
]
ChainIdOpt = Annotated[
    int | None,
    typer.Option("--chain-id", help="Refuse to run unless the node reports this chain id."),
]


def _connect(chain: str, rpc_url: str | None, chain_id: int | None) -> Any:
    from wallet.chain import ChainConfig, connect

    backend = chain
    if backend == "rpc" and not rpc_url:
        _fail("--rpc-url (or FOLLOWPAY_RPC_URL) is required with --chain rpc")
    return connect(ChainConfig(backend=backend, rpc_url=rpc_url, expected_chain_id=chain_id))


# --- commands: keys --------------------------------------------------------------------------


@app.command("new")
@_handled
def new(
    name: NameOpt,
    words: Annotated[int, typer.Option("--words", help="12, 15, 18, 21 or 24.")] = 12,
    passphrase_env: PassphraseEnv = None,
) -> None:
    """Create an HD wallet; shows its mnemonic ONCE (on stderr), prints the first address."""
    from wallet.keys import generate_mnemonic

    vault = _vault()
    vault.check_name(name)
    if vault.exists(name):
        _fail(f"a wallet named {name!r} already exists")
    mnemonic = generate_mnemonic(words)
    passphrase = _passphrase(passphrase_env)
    password = _password(confirm=True)
    info = vault.create(name, mnemonic, password, passphrase=passphrase)
    _err().print(
        Panel(
            mnemonic.reveal(),
            title=f"[bold red]Recovery phrase for {name!r} — shown once[/]",
            subtitle="write it on paper; anyone with these words owns the funds",
            border_style="red",
        )
    )
    typer.echo(info.first_address)


@app.command("import")
@_handled
def import_(
    name: NameOpt,
    mnemonic_stdin: MnemonicStdin = False,
    passphrase_env: PassphraseEnv = None,
) -> None:
    """Import a BIP-39 mnemonic (from stdin) into an encrypted vault; prints the first address."""
    from wallet.keys import validate_mnemonic

    vault = _vault()
    vault.check_name(name)
    if vault.exists(name):
        _fail(f"a wallet named {name!r} already exists")
    mnemonic = validate_mnemonic(_mnemonic_from_stdin(mnemonic_stdin))
    passphrase = _passphrase(passphrase_env)
    password = _password(confirm=True)
    info = vault.create(name, mnemonic, password, passphrase=passphrase)
    typer.echo(info.first_address)


@app.command("list")
@_handled
def list_(as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False) -> None:
    """Wallets in the vault (no password needed)."""
    infos = _vault().list()
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {"name": i.name, "kind": i.kind, "address": i.first_address, "xpub": i.xpub}
                    for i in infos
                ]
            )
        )
        return
    if not infos:
        _err().print("no wallets yet: `followpay wallet new --name NAME`")
        return
    table = Table("name", "kind", "first address", "words")
    for i in infos:
        table.add_row(i.name, i.kind, i.first_address, str(i.words or ""))
    Console(highlight=False).print(table)


@app.command("address")
@_handled
def address(
    mnemonic_stdin: MnemonicStdin = False,
    passphrase_env: PassphraseEnv = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="Wallet name.")] = None,
    path: Annotated[str | None, typer.Option("--path", help="Full derivation path.")] = None,
    index: IndexOpt = 0,
) -> None:
    """Print one checksum address (from stdin mnemonic or a stored wallet) and nothing else."""
    from wallet.keys import HDWallet, WatchOnlyWallet

    if name is not None and mnemonic_stdin:
        _fail("use either --name or --mnemonic-stdin, not both")
    if name is not None:
        vault = _vault()
        info = vault.info(name)
        if path is None and info.xpub:
            typer.echo(WatchOnlyWallet(info.xpub).address(index))  # no password needed
            return
        typer.echo(vault.unlock(name, _password()).address(index, path=path))
        return
    mnemonic = _mnemonic_from_stdin(mnemonic_stdin)
    hd = HDWallet.from_mnemonic(mnemonic, _passphrase(passphrase_env))
    typer.echo(hd.address(index, path=path))


@app.command("export-xpub")
@_handled
def export_xpub(
    name: Annotated[str | None, typer.Option("--name", "-n")] = None,
    mnemonic_stdin: MnemonicStdin = False,
    passphrase_env: PassphraseEnv = None,
    account: Annotated[int, typer.Option("--account", min=0)] = 0,
) -> None:
    """Print the BIP-44 account xpub (m/44'/60'/ACCOUNT') for watch-only servers."""
    from wallet.keys import HDWallet

    if name is not None:
        vault = _vault()
        info = vault.info(name)
        if info.kind != "hd":
            _fail(f"wallet {name!r} is a single key and has no xpub")
        if account == 0 and info.xpub:
            typer.echo(info.xpub)
            return
        unlocked = vault.unlock(name, _password())
        assert unlocked.hd is not None
        typer.echo(unlocked.hd.account_xpub(account))
        return
    hd = HDWallet.from_mnemonic(_mnemonic_from_stdin(mnemonic_stdin), _passphrase(passphrase_env))
    typer.echo(hd.account_xpub(account))


@app.command("derive")
@_handled
def derive(
    xpub: Annotated[
        str | None, typer.Option("--xpub", help="Account (depth 3) or change (depth 4) xpub.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", "-n")] = None,
    index: Annotated[int | None, typer.Option("--index", "-i", min=0)] = None,
    start: Annotated[int, typer.Option("--start", min=0)] = 0,
    count: Annotated[int | None, typer.Option("--count", min=1, max=10_000_000)] = None,
) -> None:
    """Watch-only addresses: one with --index, or a CSV stream (index,path,address) with --count."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from wallet.keys import HARDENED, WatchOnlyWallet

    if (xpub is None) == (name is None):
        _fail("give exactly one of --xpub or --name")
    if name is not None:
        info = _vault().info(name)
        if not info.xpub:
            _fail(f"wallet {name!r} is a single key and has no xpub")
        xpub = info.xpub
    assert xpub is not None
    watch = WatchOnlyWallet(xpub)
    if count is None:
        typer.echo(watch.address(index or 0))
        return
    if index is not None:
        _fail("use --start/--count for ranges, --index for one address")
    if start + count > HARDENED:  # before any output: a failure leaves stdout empty
        _fail(f"indexes stop at {HARDENED - 1}: --start {start} --count {count} goes past it")
    out = sys.stdout
    out.write("index,path,address\n")
    chunk = 2_000
    with Progress(
        TextColumn("deriving"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task("derive", total=count)
        done = 0
        while done < count:
            n = min(chunk, count - done)
            out.write(
                "".join(
                    f"{i},{watch.path(i)},{addr}\n" for i, addr in watch.addresses(start + done, n)
                )
            )
            done += n
            progress.update(task, completed=done)
    out.flush()


# --- commands: keystores ---------------------------------------------------------------------


@app.command("export-keystore")
@_handled
def export_keystore(
    name: NameOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Keystore file to create.")],
    index: IndexOpt = 0,
    path: Annotated[str | None, typer.Option("--path")] = None,
) -> None:
    """Write the key at INDEX as keystore v3 (scrypt n=2^17; cast/geth/ethers read it)."""
    from wallet.keystore import write_keystore
    from wallet.secrets import SecretStr

    if out.exists():
        _fail(f"{str(out)!r} already exists; refusing to overwrite it")
    unlocked = _vault().unlock(name, _password())
    key = unlocked.private_key(index, path=path)
    ks_password = (
        SecretStr(os.environ[KEYSTORE_PASSWORD_ENV])
        if os.environ.get(KEYSTORE_PASSWORD_ENV)
        else _password(confirm=True, env=KEYSTORE_PASSWORD_ENV, what="Keystore password")
    )
    write_keystore(out, key, ks_password)
    typer.echo(key.address)


@app.command("import-keystore")
@_handled
def import_keystore(
    file: Annotated[Path, typer.Argument(help="Keystore v3 JSON (geth, cast, ethers, MetaMask).")],
    name: NameOpt,
) -> None:
    """Import a keystore file (its password: FOLLOWPAY_KEYSTORE_PASSWORD or a prompt)."""
    from wallet.keystore import read_keystore
    from wallet.secrets import SecretStr

    vault = _vault()
    vault.check_name(name)
    if vault.exists(name):
        _fail(f"a wallet named {name!r} already exists")
    ks_password = (
        SecretStr(os.environ[KEYSTORE_PASSWORD_ENV])
        if os.environ.get(KEYSTORE_PASSWORD_ENV)
        else _password(env=KEYSTORE_PASSWORD_ENV, what="Keystore password")
    )
    key = read_keystore(file, ks_password)
    password = _password(confirm=True)
    info = vault.import_key(name, key, password)
    typer.echo(info.first_address)


@app.command("sign-message")
@_handled
def sign_message(name: NameOpt, index: IndexOpt = 0) -> None:
    """EIP-191 ``personal_sign`` of the text on standard input; prints the 65-byte signature.

    The text is signed as read, less one trailing newline (what ``echo`` and ``jq -r`` add), so
    ``jq -r .message | followpay wallet sign-message -n shop`` signs exactly the API's text.
    """
    from wallet.signing import Signer

    raw = sys.stdin.buffer.read()
    text = raw[:-1] if raw.endswith(b"\n") else raw
    if not text:
        _fail("nothing to sign on stdin")
    vault = _vault()
    key = vault.unlock(name, _password()).private_key(index)
    # the wallet's policy, as send and pay obey it (one with allow_messages off refuses)
    typer.echo("0x" + Signer(key, vault.load_policy(name)).sign_message(text).hex())


# --- commands: chain -------------------------------------------------------------------------


def _resolve_account(target: str) -> str:
    from wallet.addresses import parse_address

    if target.startswith(("0x", "0X")):
        return parse_address(target, strict=True)
    return str(_vault().info(target).first_address)


@app.command("balance")
@_handled
def balance(
    account: Annotated[str, typer.Argument(help="Address (EIP-55) or wallet name.")],
    token: Annotated[str | None, typer.Option("--token", help="ERC-20 address.")] = None,
    chain: ChainOpt = "rpc",
    rpc_url: RpcOpt = None,
    chain_id: ChainIdOpt = None,
) -> None:
    """Native balance, or a token balance with --token, as a decimal string."""
    from wallet.addresses import parse_address
    from wallet.amounts import format_amount

    owner = _resolve_account(account)
    token_address = parse_address(token, param="token", strict=True) if token else None
    with _connect(chain, rpc_url, chain_id) as connected:
        if token_address is None:
            with connected.lock:
                wei = int(connected.w3.eth.get_balance(owner))
            typer.echo(format_amount(wei, 18))
            return
        from wallet.tokens import Token

        bound = Token(connected, token_address)
        typer.echo(format_amount(bound.balance_of(owner), bound.decimals()))


def _sender_for(connected: Any, name: str, index: int) -> Any:
    from wallet.sender import Sender
    from wallet.signing import Signer

    vault = _vault()
    key = vault.unlock(name, _password()).private_key(index)
    return Sender(connected, Signer(key, vault.load_policy(name)))


def _address_of(name: str, index: int) -> str:
    """The wallet's address at ``index`` without a password (from its stored xpub)."""
    from wallet.keys import WatchOnlyWallet

    info = _vault().info(name)
    if info.xpub:
        return WatchOnlyWallet(info.xpub).address(index)
    if index != 0:
        _fail(f"wallet {name!r} holds a single key: only index 0 exists")
    return str(info.first_address)


@app.command("send")
@_handled
def send(
    name: NameOpt,
    to: Annotated[str, typer.Option("--to", help="Recipient (EIP-55 checksummed).")],
    amount: Annotated[str, typer.Option("--amount", help="Decimal amount, e.g. 12.50.")],
    token: Annotated[
        str | None, typer.Option("--token", help="ERC-20 address; native if absent.")
    ] = None,
    index: IndexOpt = 0,
    chain: ChainOpt = "rpc",
    rpc_url: RpcOpt = None,
    chain_id: ChainIdOpt = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait")] = True,
) -> None:
    """Send native currency or tokens; prints the transaction hash.

    Everything is validated (address, amount, balance, chain id) before the wallet is unlocked
    and before anything is written or broadcast.
    """
    from wallet.addresses import parse_address
    from wallet.amounts import parse_amount
    from wallet.errors import InsufficientFundsError

    recipient = parse_address(to, param="to", strict=True)
    token_address = parse_address(token, param="token", strict=True) if token else None
    source = _address_of(name, index)
    with _connect(chain, rpc_url, chain_id) as connected:
        if token_address is None:
            value = parse_amount(amount, 18)
            with connected.lock:
                balance = int(connected.w3.eth.get_balance(source))
            if balance < value:
                raise InsufficientFundsError("insufficient funds: balance is lower than the amount")
            sender = _sender_for(connected, name, index)
            sent = sender.send(recipient, b"", value)  # estimated: a contract wallet needs more
        else:
            from wallet.tokens import Token

            bound = Token(connected, token_address)
            units = parse_amount(amount, bound.decimals())
            if bound.balance_of(source) < units:
                raise InsufficientFundsError(
                    "insufficient funds: token balance is lower than the amount"
                )
            sender = _sender_for(connected, name, index)
            sent = bound.transfer(sender, recipient, units, wait=False)
        if wait:
            sender.wait(sent)
        typer.echo(sent.hash)


def _compact_signature(sig_hex: str) -> tuple[bytes, bytes]:
    from wallet.signing import to_compact

    try:
        sig = bytes.fromhex(sig_hex.removeprefix("0x"))
    except ValueError:
        _fail("intent signature is not hex")
    if len(sig) == 65:
        return to_compact(sig)
    if len(sig) != 64:
        _fail("intent signature must be 64 (compact) or 65 bytes")
    return sig[:32], sig[32:]


def _decimal_intent(doc: dict[str, Any], decimals: int) -> tuple[Any, bytes, bytes]:
    """The hand-written format: decimal token amounts, one hex signature."""
    from wallet.addresses import ZERO_ADDRESS, parse_address
    from wallet.amounts import parse_amount
    from wallet.signing import PaymentIntent

    r, vs = _compact_signature(str(doc.get("signature", "")))
    intent = PaymentIntent(
        merchant=parse_address(str(doc.get("merchant")), param="merchant", strict=True),
        token=parse_address(str(doc.get("token")), param="token", strict=True),
        amount=parse_amount(str(doc.get("amount")), decimals),
        fee=parse_amount(str(doc.get("fee", "0")), decimals, param="fee"),
        invoice_id=int(doc.get("invoiceId") or doc.get("invoice_id") or 0),
        payer=parse_address(str(doc.get("payer") or ZERO_ADDRESS), param="payer"),
        deadline=int(doc.get("deadline", 0)),
    )
    return intent, r, vs


def _base_units(value: object, name: str) -> int:
    text = str(value)
    if not (text.isascii() and text.isdigit()):
        _fail(f"invoice intent {name} must be base units (digits), got {text!r}")
    return int(text)


def _invoice_intent(fields: dict[str, Any], signature: object) -> tuple[Any, bytes, bytes]:
    """An invoice document: ``intent`` in base units and ``signature`` as ``{r, vs}``."""
    from wallet.addresses import parse_address
    from wallet.signing import PaymentIntent

    if not isinstance(signature, dict):
        _fail("the invoice has no signature {r, vs}")
    r, vs = _compact_signature(str(signature.get("r", "")) + str(signature.get("vs", ""))[2:])
    intent = PaymentIntent(
        merchant=parse_address(str(fields.get("merchant")), param="merchant"),
        token=parse_address(str(fields.get("token")), param="token"),
        amount=_base_units(fields.get("amount"), "amount"),
        fee=_base_units(fields.get("fee", "0"), "fee"),
        invoice_id=_base_units(fields.get("invoice_id"), "invoice_id"),
        payer=parse_address(str(fields.get("payer")), param="payer"),
        deadline=_base_units(fields.get("deadline"), "deadline"),
    )
    return intent, r, vs


def _check_invoice(doc: dict[str, Any], router: str, chain_id: int) -> None:
    """What an invoice document says about itself must allow this payment, as the hosted
    checkout would: a ``state`` other than ``new`` (staff invalidated it, it was paid, or it
    expired) is not paid, and a ``router``, ``chain_id`` or top-level ``token``/``amount``/
    ``fee`` must agree with the command and the signed intent (what a reader of the file
    sees is what is paid)."""
    intent = doc["intent"]
    state = doc.get("state")
    if state is not None and state != "new":
        _fail(f"the invoice is {state}, not payable (ask the merchant for a new one)")
    if doc.get("router") is not None and str(doc["router"]).lower() != router.lower():
        _fail(f"the invoice is for router {doc['router']}, not {router}")
    if doc.get("chain_id") is not None and str(doc["chain_id"]) != str(chain_id):
        _fail(f"the invoice is for chain {doc['chain_id']}, not {chain_id}")
    for key in ("token", "amount", "fee"):
        if doc.get(key) is not None and str(doc[key]).lower() != str(intent.get(key)).lower():
            _fail(f"the invoice's {key} {doc[key]} is not its signed intent's")


@app.command("pay")
@_handled
def pay(
    name: NameOpt,
    router: Annotated[str, typer.Option("--router")],
    intent_file: Annotated[
        Path,
        typer.Option(
            "--intent",
            help="An invoice as the API or `followpay invoices` prints it, or JSON with "
            "merchant, token, amount, fee, invoiceId, payer, deadline, signature.",
        ),
    ],
    index: IndexOpt = 0,
    permit: Annotated[
        bool, typer.Option("--permit/--approve", help="Pay with an ERC-2612 permit (one tx).")
    ] = True,
    chain: ChainOpt = "rpc",
    rpc_url: RpcOpt = None,
    chain_id: ChainIdOpt = None,
) -> None:
    """Pay a merchant's signed payment intent; prints the transaction hash.

    The file is either an invoice document (its ``intent`` in base units and ``signature``
    ``{r, vs}``, as ``POST /v1/invoices`` and ``followpay invoices create|show`` print it) or a
    flat intent whose amounts are decimal strings in token units (``"12.50"``) and whose
    ``signature`` is the operator's 64-byte compact ``r || vs`` (or 65-byte) hex.
    """
    from wallet.addresses import parse_address
    from wallet.errors import InsufficientFundsError
    from wallet.tokens import Router, Token

    router_address = parse_address(router, param="router", strict=True)
    try:
        doc = json.loads(intent_file.read_text())
    except FileNotFoundError:
        _fail(f"intent file {str(intent_file)!r} does not exist")
    except ValueError:
        _fail("intent file is not valid JSON")
    if not isinstance(doc, dict):
        _fail("intent file must hold a JSON object")
    invoice = isinstance(doc.get("intent"), dict)  # an invoice as the API or `invoices` prints it
    fields = doc["intent"] if invoice else doc
    token_address = parse_address(str(fields.get("token")), param="token", strict=True)
    with _connect(chain, rpc_url, chain_id) as connected:
        bound = Token(connected, token_address)
        if invoice:
            _check_invoice(doc, router_address, connected.chain_id)
            intent, r, vs = _invoice_intent(fields, doc.get("signature"))
        else:
            intent, r, vs = _decimal_intent(doc, bound.decimals())
        if bound.balance_of(_address_of(name, index)) < intent.amount:
            raise InsufficientFundsError(
                "insufficient funds: token balance is lower than the payment amount"
            )
        sender = _sender_for(connected, name, index)
        bound_router = Router(connected, router_address)
        if permit:
            deadline = min(intent.deadline, int(time.time()) + 3600) or int(time.time()) + 3600
            permit_data = bound.sign_permit(sender.signer, router_address, intent.amount, deadline)
            receipt = bound_router.pay_with_permit(sender, intent, r, vs, permit_data)
        else:
            if bound.allowance(sender.address, router_address) < intent.amount:
                bound.approve(sender, router_address, intent.amount)
            receipt = bound_router.pay(sender, intent, r, vs)
        typer.echo(receipt.tx_hash)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
