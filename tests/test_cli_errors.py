"""The installed ``followpay`` script fails with a non-zero exit and a short message, never a
traceback: settings, chain, database, usage and artifact errors, run as real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydantic import ValidationError

from api.cli import _describe, _one_line
from api.settings import get_settings
from contracts import ARTIFACTS_DIR

SCRIPT = Path(sys.executable).with_name("followpay")
UNREACHABLE = "http://127.0.0.1:9"  # discard port: connection refused at once
#: An unreachable RPC URL carrying credentials the way providers do (userinfo, path, query).
KEYED_RPC = "http://alice:s3cretpw@127.0.0.1:9/v3/0123456789abcdef?apikey=zz99"
DEAD = "0x000000000000000000000000000000000000dEaD"


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    code: int = 1
    says: str = ""  # expected in the message


CASES = {
    "bogus_chain": Case(
        ("invoices", "list", "--merchant", "1"),
        {"FOLLOWPAY_CHAIN": "bogus"},
        says="FOLLOWPAY_CHAIN: Input should be 'tester', 'anvil' or 'rpc'",
    ),
    "rpc_without_url": Case(
        ("indexer", "--once"),
        {"FOLLOWPAY_CHAIN": "rpc"},
        says="FOLLOWPAY_CHAIN=rpc needs FOLLOWPAY_RPC_URL",
    ),
    "unreachable_rpc": Case(
        ("indexer", "--once"),
        {"FOLLOWPAY_CHAIN": "rpc", "FOLLOWPAY_RPC_URL": UNREACHABLE},
        says="unreachable",
    ),
    "expiry_out_of_range": Case(
        (
            *("invoices", "create", "--merchant", "1", "--amount", "1", "--order", "o"),
            *("--expires-minutes", "9999999999999999"),
        ),
        code=2,
        says="--expires-minutes",
    ),
    "unmigrated_database": Case(
        ("invoices", "list", "--merchant", "1"), says="run `followpay db upgrade`"
    ),
    "database_password_hidden": Case(
        ("invoices", "list", "--merchant", "1"),
        {"FOLLOWPAY_DATABASE_URL": "postgresql+psycopg://fp:hunter2-secret@127.0.0.1:9/fp"},
        says="database error",
    ),
    "database_password_with_at_sign": Case(
        ("invoices", "list", "--merchant", "1"),
        {"FOLLOWPAY_DATABASE_URL": "postgresql+psycopg://fp:hunter4@tail@127.0.0.1:9/fp"},
        says="FOLLOWPAY_DATABASE_URL: has an '@' in its user name or password: write it as %40",
    ),
    "database_password_with_at_and_colon": Case(  # the rest of it read as a port: ValueError
        ("invoices", "list", "--merchant", "1"),
        {"FOLLOWPAY_DATABASE_URL": "postgresql+psycopg://fp:hunter6@zz:qx7qx@127.0.0.1:9/fp"},
        says="has an '@' in its user name or password",
    ),
    "database_password_with_at_and_slash": Case(  # the rest of it read as the database name
        ("invoices", "list", "--merchant", "1"),
        {"FOLLOWPAY_DATABASE_URL": "postgresql+psycopg://fp:hunter7@zz/qy8qy@127.0.0.1:9/fp"},
        says="has an '@' in its user name or password",
    ),
    "database_url_bad_port": Case(
        ("invoices", "list", "--merchant", "1"),
        {"FOLLOWPAY_DATABASE_URL": "postgresql+psycopg://fp:hunter8@127.0.0.1:nine/fp"},
        says="FOLLOWPAY_DATABASE_URL: is not a database URL",
    ),
    "database_url_unparsable": Case(
        ("invoices", "list", "--merchant", "1"),
        {"FOLLOWPAY_DATABASE_URL": "hunter5-not-a-url"},
        says="FOLLOWPAY_DATABASE_URL: is not a database URL",
    ),
    "unknown_command": Case(("no-such-command",), code=2, says="No such command"),
    "missing_required_option": Case(
        ("invoices", "list"), code=2, says="Missing option '--merchant'"
    ),
    "stale_artifact": Case(
        ("contracts", "check", "--artifacts", "{stale}"), says="stale artifacts: PaymentRouter"
    ),
    "corrupt_artifact": Case(
        ("contracts", "check"), {"FOLLOWPAY_ARTIFACTS_DIR": "{corrupt}"}, says="TestToken (corrupt)"
    ),
    "bad_operators": Case(
        ("invoices", "list", "--merchant", "1"),
        {"FOLLOWPAY_OPERATORS": "ops:x"},
        says="FOLLOWPAY_OPERATORS: 'ops:x' is not a wallet name or name:index",
    ),
    "invoice_without_operator": Case(
        ("invoices", "create", "--merchant", "1", "--amount", "1", "--order", "o-1"),
        code=2,
        says="set FOLLOWPAY_OPERATORS",
    ),
    "indexer_on_the_in_process_chain": Case(
        ("indexer", "--once"), says="the in-process chain (FOLLOWPAY_CHAIN=tester) lives inside"
    ),
    "chain_up_not_http": Case(
        ("chain", "up", "--rpc-url", "ftp://127.0.0.1:9"), says="must be an http(s) URL"
    ),
    "wallet_not_http": Case(
        ("wallet", "balance", DEAD, "--rpc-url", "ws://127.0.0.1:9"), says="must be an http(s) URL"
    ),
    "admin_key_for_a_merchant": Case(
        ("admin", "create-key", "--role", "admin", "--merchant", "1"),
        code=2,
        says="admin keys see every merchant: leave --merchant out",
    ),
    "merchant_key_without_merchant": Case(
        ("admin", "create-key", "--role", "support"),
        code=2,
        says="a support key needs --merchant ID",
    ),
    "demo_on_a_node_it_cannot_fund": Case(
        ("demo", "--chain", "rpc"), code=2, says="'rpc' is not one of 'tester', 'anvil'"
    ),
    "serve_on_a_port_in_use": Case(  # the embedded chain was indexed into the new home
        ("serve", "--port", "{busy_port}"), says="cannot listen on 127.0.0.1:"
    ),
    "serve_port_out_of_range": Case(
        ("serve", "--port", "99999"), code=2, says="less than or equal to 65535"
    ),
    "chain_up_port_out_of_range": Case(
        ("chain", "up", "--port", "0"), code=2, says="greater than or equal to 1"
    ),
    "wallet_unreachable_rpc": Case(
        ("wallet", "balance", DEAD, "--rpc-url", UNREACHABLE), says="unreachable"
    ),
    "worker_lease_too_short": Case(
        ("worker", "--once", "--lease-seconds", "30"), code=2, says="must be 0 or 90 to 86400 s"
    ),
    "worker_lease_not_a_number": Case(
        ("worker", "--once"),
        {"FOLLOWPAY_WORKER_LEASE_SECONDS": "nan"},
        code=2,
        says="must be 0 or 90 to 86400 s",
    ),
    "serve_embedded_with_production_settings": Case(  # it served the dev stack, quietly
        ("serve",),
        {"FOLLOWPAY_OPERATORS": "shop", "FOLLOWPAY_RPC_URL": "https://rpc.example/v3/k"},
        code=2,
        says="but FOLLOWPAY_CHAIN is tester (the default)",
    ),
    "db_upgrade_with_a_bad_master_key": Case(  # it left an empty database file behind
        ("db", "upgrade"), {"FOLLOWPAY_MASTER_KEY": "zz"}, says="FOLLOWPAY_MASTER_KEY must be hex"
    ),
    "worker_on_a_fresh_home": Case(  # it left a master.key behind, and no database
        ("worker", "--once"), says="run `followpay db upgrade` first"
    ),
    "worker_smtp_password_in_clear": Case(
        ("worker", "--once", "--smtp-host", "smtp.example.com", "--smtp-user", "u"),
        {"FOLLOWPAY_SMTP_PASSWORD": "hunter3"},
        code=2,
        says="password in clear",
    ),
    "rpc_key_hidden": Case(
        ("indexer", "--once"),
        {"FOLLOWPAY_CHAIN": "rpc", "FOLLOWPAY_RPC_URL": KEYED_RPC},
        says="chain RPC at http://127.0.0.1:9 is unreachable",
    ),
    "wallet_rpc_key_hidden": Case(
        ("wallet", "balance", DEAD, "--rpc-url", KEYED_RPC),
        says="chain RPC at http://127.0.0.1:9 is unreachable",
    ),
}


def _artifact_copies(root: Path) -> dict[str, str]:
    """Copies of the committed artifacts, one made stale and one corrupt (never in place)."""
    dirs = {}
    for name in ("stale", "corrupt"):
        target = root / name
        shutil.copytree(ARTIFACTS_DIR, target)
        dirs[name] = str(target)
    router = root / "stale" / "PaymentRouter.json"
    data = json.loads(router.read_text())
    data["sourceHash"] = "0" * 64
    router.write_text(json.dumps(data))
    (root / "corrupt" / "TestToken.json").write_text('{"contractName": "TestTo')
    return dirs


def _run(
    case: Case, home: Path, dirs: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWPAY_")}
    env.update(FOLLOWPAY_HOME=str(home), **case.env)
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "api.cli"]
    env.update({k: v.format(**dirs) for k, v in case.env.items()})
    args = [arg.format(**dirs) for arg in case.args]
    result = subprocess.run(
        [*command, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    left = [str(p.relative_to(home)) for p in home.rglob("*")] if home.exists() else []
    return result, sorted(left + (["(the home itself)"] if home.exists() else []))


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[subprocess.CompletedProcess[str], list[str]]]:
    """The cases two at a time (each is a ~2 s interpreter start-up), each with its own home."""
    root = tmp_path_factory.mktemp("cli")
    dirs = _artifact_copies(root)
    with socket.create_server(("127.0.0.1", 0)) as busy, ThreadPoolExecutor(2) as pool:
        dirs["busy_port"] = str(busy.getsockname()[1])
        futures = {
            name: pool.submit(_run, case, root / f"home-{name}", dirs)
            for name, case in CASES.items()
        }
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def results(
    runs: dict[str, tuple[subprocess.CompletedProcess[str], list[str]]],
) -> dict[str, subprocess.CompletedProcess[str]]:
    return {name: result for name, (result, _) in runs.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_fails_with_a_short_message_and_no_traceback(name, results):
    case, result = CASES[name], results[name]
    output = result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == case.code, output
    assert "Traceback" not in output
    assert case.says in result.stderr, output
    if case.code == 2:  # click's usage error: usage, a --help hint, the error
        assert len(lines) <= 3, output
        assert lines[-1].startswith("Error: "), output
    else:
        assert len(lines) == 1, output
        assert lines[0].startswith("error: "), output


@pytest.mark.parametrize("name", list(CASES))
def test_a_failed_command_leaves_its_home_as_it_found_it(name, runs):
    # every home starts absent: bad input must not leave a database, key or wallet behind
    assert runs[name][1] == []


@pytest.mark.parametrize(
    ("name", "password"),
    [
        ("database_password_hidden", "hunter2"),
        ("worker_smtp_password_in_clear", "hunter3"),
        # SQLAlchemy would take "tail@127.0.0.1" for the host and name it in the error
        ("database_password_with_at_sign", "tail"),
        ("database_password_with_at_sign", "hunter4"),
        ("database_url_unparsable", "hunter5"),
        ("database_password_with_at_and_colon", "qx7qx"),
        ("database_password_with_at_and_slash", "qy8qy"),
        ("database_url_bad_port", "hunter8"),
    ],
)
def test_no_password_in_messages(results, name, password):
    result = results[name]
    assert password not in result.stdout + result.stderr


@pytest.mark.parametrize("name", ["rpc_key_hidden", "wallet_rpc_key_hidden"])
def test_no_rpc_credentials_in_messages(results, name):
    output = results[name].stdout + results[name].stderr
    for secret in ("alice", "s3cretpw", "0123456789abcdef", "zz99"):
        assert secret not in output


class TestMessages:
    """The one-line rendering, in process (no start-up cost)."""

    def test_settings_name_the_variable_and_never_the_value(self):
        with pytest.raises(ValidationError) as caught:
            get_settings(rpc_url="ftp://user:pw@x", master_key="not-hex-secret")
        message = _describe(caught.value)
        assert message == "invalid settings: FOLLOWPAY_RPC_URL: must be an http(s) URL"
        # FOLLOWPAY_DEBUG=1 prints the exception itself: it must not echo the values either
        for text in (str(caught.value), repr(caught.value)):
            for secret in ("user:pw", "not-hex-secret"):
                assert secret not in text

    def test_settings_repr_leaves_out_urls_and_secrets(self):
        settings = get_settings(
            database_url="postgresql+psycopg://fp:hunter2@db/fp",
            chain="rpc",
            rpc_url=KEYED_RPC,
            master_key="ab" * 32,
            password="vault-pass",
        )
        text = repr(settings)
        for secret in ("hunter2", "s3cretpw", "0123456789abcdef", "ab" * 32, "vault-pass"):
            assert secret not in text
        assert "chain=<ChainBackend.RPC" in text

    def test_unexpected_errors_name_their_type(self):
        message = _one_line(_describe(RuntimeError("boom\nsecond line")))
        assert message.startswith("RuntimeError: boom second line (rerun with FOLLOWPAY_DEBUG=1")

    def test_passwords_in_urls_are_hidden(self):
        text = _one_line("cannot reach postgresql+psycopg://fp:hunter2@db:5432/fp")
        assert text == "cannot reach postgresql+psycopg://fp:***@db:5432/fp"
