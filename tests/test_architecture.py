"""The import rules of DESIGN §1 and §12, checked on the source."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "wallet": {"crm", "api"},
    "crm": {"wallet", "api", "web3", "eth_account", "eth_tester"},
    "contracts": {"wallet", "crm", "api", "web3"},
}
PROVIDERS = {"HTTPProvider", "EthereumTesterProvider", "WebsocketProvider", "IPCProvider"}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _sources(package: str) -> list[Path]:
    return [p for p in (ROOT / package).rglob("*.py") if "migrations" not in p.parts]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_go_one_way(package):
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in _sources(package)
        for module, _ in _imports(path)
        if module.split(".")[0] in FORBIDDEN[package]
    ]
    assert offenders == []


def test_only_wallet_chain_builds_web3_providers():
    offenders = []
    for package in ("wallet", "crm", "api", "contracts", "scripts"):
        for path in (ROOT / package).rglob("*.py"):
            if path == ROOT / "wallet" / "chain.py":
                continue
            for _module, names in _imports(path):
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n in PROVIDERS]
    assert offenders == []


@pytest.mark.parametrize("package", ["wallet", "crm", "api", "contracts"])
def test_every_module_declares_all(package):
    missing = []
    for path in _sources(package):
        if path.name == "__main__.py":
            continue
        tree = ast.parse(path.read_text())
        names = {
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign | ast.AnnAssign)
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(target, ast.Name)
        }
        has_public = any(
            isinstance(n, ast.FunctionDef | ast.ClassDef) and not n.name.startswith("_")
            for n in tree.body
        )
        if has_public and "__all__" not in names:
            missing.append(str(path.relative_to(ROOT)))
    assert missing == []


def test_the_cli_loads_no_chain_or_database_stack_before_a_command_runs():
    """Every ``followpay`` start builds the whole command tree (``--help``, usage errors and
    every command): with web3, eth-account, SQLAlchemy and Alembic loaded there, each start
    took ~2 s. Command modules import them inside the command that needs them. Building the
    tree also evaluates every command's annotations: a name there that is imported only for
    type checking would break every start."""
    heavy = ("web3", "eth_account", "eth_keys", "sqlalchemy", "sqlmodel", "alembic", "fastapi")
    probe = (
        "import sys\n"
        "import typer\n"
        "from api.cli import _mount_optional, app\n"
        "_mount_optional()\n"
        "typer.main.get_command(app)\n"  # typer reads every command's annotations here
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
