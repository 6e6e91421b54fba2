"""Committed artifacts match their sources; the loader rejects corrupt ones."""

from __future__ import annotations

import json
import shutil

import pytest

import contracts
import contracts.build as build_module
from contracts import ArtifactError, load_artifact
from contracts.build import build, stale_artifacts


def test_committed_artifacts_are_fresh():
    assert stale_artifacts() == []


def test_a_real_compile_reproduces_the_committed_bytecode():
    compiled = {a["contractName"]: a for a in build(write=False)}
    for name in ("TestToken", "PaymentRouter"):
        assert compiled[name]["bytecode"] == load_artifact(name).bytecode


@pytest.fixture
def project_copy(tmp_path, monkeypatch):
    root = build_module.PROJECT_ROOT
    shutil.copytree(
        root / "contracts", tmp_path / "contracts", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(root / "foundry.toml", tmp_path / "foundry.toml")
    (tmp_path / "node_modules").symlink_to(root / "node_modules")
    monkeypatch.setattr(build_module, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(build_module, "SOURCES_DIR", tmp_path / "contracts" / "src")
    monkeypatch.setattr(build_module, "ARTIFACTS_DIR", tmp_path / "contracts" / "artifacts")
    return tmp_path


def test_an_edited_source_makes_its_artifact_stale(project_copy):
    source = project_copy / "contracts" / "src" / "TestToken.sol"
    source.write_text(source.read_text() + "\n// edited\n")
    assert "TestToken" in stale_artifacts()


def test_a_new_source_without_artifact_is_reported(project_copy):
    (project_copy / "contracts" / "src" / "Extra.sol").write_text("pragma solidity ^0.8.24;\n")
    assert any("Extra.sol" in entry for entry in stale_artifacts())


def test_changed_compiler_settings_make_everything_stale(project_copy):
    toml = project_copy / "foundry.toml"
    toml.write_text(toml.read_text().replace("optimizer_runs = ", "optimizer_runs = 1"))
    assert {"PaymentRouter", "TestToken"} <= set(stale_artifacts())


@pytest.mark.parametrize(
    "content", ['{"contractName": "TestTo', "[1, 2]", '{"contractName": "TestToken"}', "\udcff"]
)
def test_a_corrupt_artifact_is_reported_not_raised(tmp_path, content):
    shutil.copytree(contracts.ARTIFACTS_DIR, tmp_path, dirs_exist_ok=True)
    (tmp_path / "TestToken.json").write_text(content, errors="surrogateescape")
    assert "TestToken (corrupt)" in stale_artifacts(tmp_path)
    assert "PaymentRouter" not in stale_artifacts(tmp_path)


def test_an_artifacts_directory_can_be_checked_in_place_of_the_committed_one(tmp_path):
    shutil.copytree(contracts.ARTIFACTS_DIR, tmp_path, dirs_exist_ok=True)
    assert stale_artifacts(tmp_path) == []
    router = tmp_path / "PaymentRouter.json"
    router.write_text(json.dumps({**json.loads(router.read_text()), "sourceHash": "0" * 64}))
    assert stale_artifacts(tmp_path) == ["PaymentRouter"]


class TestLoader:
    @pytest.fixture
    def artifacts_dir(self, tmp_path, monkeypatch):
        monkeypatch.setattr(contracts, "ARTIFACTS_DIR", tmp_path)
        load_artifact.cache_clear()
        yield tmp_path
        load_artifact.cache_clear()

    def test_missing(self, artifacts_dir):
        with pytest.raises(ArtifactError, match="not found"):
            load_artifact("Nope")

    def test_not_json(self, artifacts_dir):
        (artifacts_dir / "Bad.json").write_text("{not json")
        with pytest.raises(ArtifactError, match="corrupt"):
            load_artifact("Bad")

    def test_missing_keys(self, artifacts_dir):
        (artifacts_dir / "Bad.json").write_text(json.dumps({"abi": []}))
        with pytest.raises(ArtifactError, match="missing contractName"):
            load_artifact("Bad")

    def test_bytecode_not_hex(self, artifacts_dir):
        data = {
            "contractName": "Bad",
            "abi": [],
            "bytecode": "0xzz",
            "deployedBytecode": "0x",
            "compiler": "x",
            "sourceHash": "y",
        }
        (artifacts_dir / "Bad.json").write_text(json.dumps(data))
        with pytest.raises(ArtifactError, match="not hex"):
            load_artifact("Bad")
