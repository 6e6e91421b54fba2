"""Deploy once, reuse the manifest, redeploy when the chain or the router sources changed."""

from __future__ import annotations

import json
import subprocess

import pytest

from contracts import load_artifact
from tests.support import ChainSuite, missing
from tests.wallet.conftest import CAST
from wallet.chain import Chain
from wallet.deployment import ensure_deployed, read_manifest
from wallet.errors import ChainIdMismatchError, ManifestError
from wallet.tokens import DEFAULT_PAUSE_BOND


class ManifestBehaviour(ChainSuite):
    def test_deploys_once_then_reuses(self, chain: Chain, tmp_path) -> None:
        path = tmp_path / "deployment.json"
        owner = chain.dev_accounts()[0]
        first, created = ensure_deployed(chain, path, owner)
        assert created
        stored = json.loads(path.read_text())
        assert stored["router"] == first.router
        assert stored["router_source"] == load_artifact("PaymentRouter").source_hash
        again, created = ensure_deployed(chain, path, owner)
        assert not created
        assert again == first

    def test_a_router_from_other_sources_is_redeployed(self, chain: Chain, tmp_path) -> None:
        path = tmp_path / "deployment.json"
        owner = chain.dev_accounts()[0]
        first, _ = ensure_deployed(chain, path, owner)
        stale = json.loads(path.read_text()) | {"router_source": "an older build"}
        path.write_text(json.dumps(stale))
        assert read_manifest(path, chain) is None
        fresh, created = ensure_deployed(chain, path, owner)
        assert created
        assert fresh.router != first.router

    def test_wrong_chain_id_is_refused(self, chain: Chain, tmp_path) -> None:
        path = tmp_path / "deployment.json"
        deployment, _ = ensure_deployed(chain, path, chain.dev_accounts()[0])
        path.write_text(json.dumps(deployment.to_json() | {"chain_id": 1}))
        with pytest.raises(ChainIdMismatchError, match="chain id 1"):
            read_manifest(path, chain)

    def test_corrupt_manifest_is_refused(self, chain: Chain, tmp_path) -> None:
        path = tmp_path / "deployment.json"
        path.write_text("{not json")
        with pytest.raises(ManifestError, match="unreadable"):
            read_manifest(path, chain)


class TestManifestOnTester(ManifestBehaviour):
    backend = "tester"


class TestManifestOnAnvil(ManifestBehaviour):
    backend = "anvil"

    def test_cast_reads_the_deployed_router(self, chain: Chain, tmp_path) -> None:
        if not CAST.exists():
            missing("cast is not installed (npm ci)")
        deployment, _ = ensure_deployed(chain, tmp_path / "d.json", chain.dev_accounts()[0])

        def call(signature: str) -> str:
            out = subprocess.run(
                [str(CAST), "call", deployment.router, signature, "--rpc-url", str(chain.rpc_url)],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            )
            return out.stdout.strip()

        assert call("pauseBond()(uint256)").split()[0] == str(DEFAULT_PAUSE_BOND)
        assert call("paused()(bool)") == "false"
        assert call("treasury()(address)").lower() == deployment.treasury.lower()
