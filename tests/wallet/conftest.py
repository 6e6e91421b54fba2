"""Wallet-suite fixtures: an isolated FOLLOWPAY_HOME, a fast vault, dev keys, deployed contracts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wallet.chain import DEV_MNEMONIC
from wallet.vault import Vault

VECTORS = json.loads((Path(__file__).parent / "vectors.json").read_text())
CAST = Path(__file__).resolve().parents[2] / "node_modules" / ".bin" / "cast"
FAST_N = 2**10  # scrypt cost for tests; the default 2**17 is exercised by dedicated tests
PASSWORD = "correct horse battery staple"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "fp-home"
    monkeypatch.setenv("FOLLOWPAY_HOME", str(path))
    return path


@pytest.fixture
def vault(home) -> Vault:
    return Vault(home, scrypt_n=FAST_N, allow_weak_kdf=True)


@pytest.fixture
def dev_mnemonic() -> str:
    return DEV_MNEMONIC


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` with its content (to assert "nothing written")."""
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }
