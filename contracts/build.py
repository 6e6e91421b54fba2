"""Compile ``contracts/src`` into the committed JSON artifacts.

The compiler is solc-js behind ``scripts/solc`` (a native ``solc`` when ``FOLLOWPAY_SOLC`` names
one), driven through py-solc-x's ``compile_standard``; optimizer, EVM version and remappings are
read from ``foundry.toml`` so forge and the Python build compile the same way. Each artifact
records a hash of every source file that went into it (OpenZeppelin included), which is what the
staleness check compares.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from contracts import ARTIFACTS_DIR, ArtifactError

__all__ = ["PROJECT_ROOT", "build", "compiler_settings", "solc_binary", "stale_artifacts"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SOURCES_DIR = PROJECT_ROOT / "contracts" / "src"


def solc_binary() -> Path:
    """``FOLLOWPAY_SOLC`` if set, else the solc-js shim in ``scripts/solc``."""
    return Path(os.environ.get("FOLLOWPAY_SOLC") or PROJECT_ROOT / "scripts" / "solc")


def compiler_settings() -> dict[str, Any]:
    """The solc settings, taken from foundry.toml's default profile."""
    profile = tomllib.loads((PROJECT_ROOT / "foundry.toml").read_text())["profile"]["default"]
    settings: dict[str, Any] = {
        "evmVersion": profile.get("evm_version", "cancun"),
        "optimizer": {
            "enabled": bool(profile.get("optimizer", True)),
            "runs": int(profile.get("optimizer_runs", 200)),
        },
        "remappings": list(profile.get("remappings", [])),
        "metadata": {
            "bytecodeHash": profile.get("bytecode_hash", "ipfs"),
            "appendCBOR": bool(profile.get("cbor_metadata", True)),
        },
        "outputSelection": {
            "*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}
        },
    }
    if profile.get("via_ir"):
        settings["viaIR"] = True
    return settings


def _source_files() -> list[Path]:
    return sorted(SOURCES_DIR.rglob("*.sol"))


def _rel(path: Path) -> str:
    return path.resolve().relative_to(PROJECT_ROOT).as_posix()


def _file_hash(rel_path: str) -> str:
    return hashlib.sha256((PROJECT_ROOT / rel_path).read_bytes()).hexdigest()


def _digest(source_hashes: dict[str, str], settings: dict[str, Any], compiler: str) -> str:
    blob = json.dumps(
        {"sources": source_hashes, "settings": settings, "compiler": compiler}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _resolve(import_path: str, remappings: list[str]) -> str:
    for remap in remappings:
        prefix, _, target = remap.partition("=")
        if import_path.startswith(prefix):
            return target + import_path[len(prefix) :]
    return import_path


def build(*, write: bool = True) -> list[dict[str, Any]]:
    """Compile every source; write ``contracts/artifacts/<Name>.json`` unless ``write`` is False."""
    import solcx  # deferred: only the build needs it
    import solcx.wrapper
    from solcx.exceptions import SolcError

    binary = solc_binary()
    if not binary.exists():
        raise ArtifactError(f"Solidity compiler not found at {binary} (run `npm ci`)")
    settings = compiler_settings()
    sources = {_rel(p): {"content": p.read_text()} for p in _source_files()}
    try:
        version = str(solcx.wrapper.get_solc_version(binary, with_commit_hash=True))
        output = solcx.compile_standard(
            {"language": "Solidity", "sources": sources, "settings": settings},
            solc_binary=binary,
            base_path=str(PROJECT_ROOT),
            allow_paths=[str(PROJECT_ROOT)],
        )
    except SolcError as exc:
        raise ArtifactError(f"compilation failed: {exc.message or exc}") from None

    used = sorted(output.get("sources", {}))
    remaps = settings["remappings"]
    hashes = {name: _file_hash(_resolve(name, remaps)) for name in used}
    source_hash = _digest(hashes, settings, version)
    artifacts: list[dict[str, Any]] = []
    for source_name in sources:
        for contract_name, data in output["contracts"].get(source_name, {}).items():
            bytecode = data["evm"]["bytecode"]["object"]
            if not bytecode:  # interfaces and abstract contracts
                continue
            artifacts.append(
                {
                    "contractName": contract_name,
                    "sourceName": source_name,
                    "compiler": version,
                    "settings": {k: v for k, v in settings.items() if k != "outputSelection"},
                    "sourceHash": source_hash,
                    "sources": hashes,
                    "abi": data["abi"],
                    "bytecode": "0x" + bytecode,
                    "deployedBytecode": "0x" + data["evm"]["deployedBytecode"]["object"],
                }
            )
    if write:
        _write_all(artifacts)
    return artifacts


def _write_all(artifacts: list[dict[str, Any]]) -> None:
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    keep = {a["contractName"] for a in artifacts}
    for artifact in artifacts:
        target = ARTIFACTS_DIR / f"{artifact['contractName']}.json"
        fd, tmp = tempfile.mkstemp(dir=ARTIFACTS_DIR, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(artifact, handle, indent=1, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts are public
        os.replace(tmp, target)
    for old in ARTIFACTS_DIR.glob("*.json"):
        if old.stem not in keep:
            old.unlink()


def _read_json_object(path: Path) -> dict[str, Any] | None:
    """The artifact's JSON object, or None when the file is unreadable or not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return data if isinstance(data, dict) else None


def stale_artifacts(artifacts_dir: Path | None = None) -> list[str]:
    """Names of artifacts whose recorded sources, settings or source set no longer match.

    Cheap (hashes only, no compiler run): an artifact is stale when any recorded source file
    changed, when foundry.toml's compiler settings changed, or when a source file under
    ``contracts/src`` was added that no artifact covers. An artifact that is not a JSON object
    with a ``sources`` mapping is reported as ``<name> (corrupt)``. ``artifacts_dir`` defaults to
    ``contracts/artifacts``.
    """
    stale: list[str] = []
    covered: set[str] = set()
    settings = compiler_settings()
    remaps = settings["remappings"]
    for path in sorted((artifacts_dir or ARTIFACTS_DIR).glob("*.json")):
        data = _read_json_object(path)
        recorded = None if data is None else data.get("sources")
        if data is None or not isinstance(recorded, dict):
            stale.append(f"{path.stem} (corrupt)")
            continue
        covered.update(recorded)
        name = str(data.get("contractName", path.stem))
        try:
            current = {source: _file_hash(_resolve(source, remaps)) for source in recorded}
        except (OSError, TypeError):  # a recorded source is gone (or not a path)
            stale.append(name)
            continue
        if _digest(current, settings, data.get("compiler", "")) != data.get("sourceHash"):
            stale.append(name)
    uncovered = [_rel(p) for p in _source_files() if _rel(p) not in covered]
    return stale + [f"(uncompiled source) {name}" for name in uncovered]
