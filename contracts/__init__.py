"""Compiled contract artifacts and the loader the Python side uses.

Artifacts are committed JSON (``contracts/artifacts/<Name>.json``) so running on the in-process
chain needs no Node and no compiler. ``followpay contracts build`` regenerates them
(:mod:`contracts.build`); a test fails when one is stale against its sources.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ARTIFACTS_DIR", "Artifact", "ArtifactError", "artifact_names", "load_artifact"]

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
_REQUIRED = ("contractName", "abi", "bytecode", "deployedBytecode", "compiler", "sourceHash")


class ArtifactError(ValueError):
    """A compiled artifact is missing or corrupt. Carries an HTTP status like every error."""

    status_code = 500
    code = "artifact_error"
    type = "api_error"
    param: str | None = None


@dataclass(frozen=True, slots=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    compiler: str
    source_hash: str
    sources: dict[str, str]


def artifact_names() -> list[str]:
    return sorted(p.stem for p in ARTIFACTS_DIR.glob("*.json"))


@functools.cache
def load_artifact(name: str) -> Artifact:
    """Load ``contracts/artifacts/<name>.json``; raise :class:`ArtifactError` if unusable."""
    path = ARTIFACTS_DIR / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(
            f"contract artifact {name!r} not found in {ARTIFACTS_DIR} "
            "(run `followpay contracts build`)"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"contract artifact {path.name} is corrupt: {exc}") from None
    missing = [k for k in _REQUIRED if k not in data] if isinstance(data, dict) else _REQUIRED
    if missing:
        names = ", ".join(missing)
        raise ArtifactError(f"contract artifact {path.name} is corrupt: missing {names}")
    bytecode = str(data["bytecode"])
    if not bytecode.startswith("0x") or len(bytecode) < 4:
        raise ArtifactError(f"contract artifact {path.name} is corrupt: bad bytecode")
    try:
        bytes.fromhex(bytecode[2:])
    except ValueError:
        raise ArtifactError(
            f"contract artifact {path.name} is corrupt: bytecode is not hex"
        ) from None
    return Artifact(
        name=str(data["contractName"]),
        abi=list(data["abi"]),
        bytecode=bytecode,
        deployed_bytecode=str(data["deployedBytecode"]),
        compiler=str(data["compiler"]),
        source_hash=str(data["sourceHash"]),
        sources=dict(data.get("sources", {})),
    )
