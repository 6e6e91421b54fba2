"""Deploy TestToken + PaymentRouter once per chain and remember where they are.

The manifest (JSON: chain id, addresses, deploy block) makes ``followpay chain up`` idempotent:
a manifest whose chain id matches and whose addresses still hold code is reused; a manifest for
another chain is an error, never silently overwritten.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3

from contracts import load_artifact
from wallet.chain import Chain
from wallet.errors import ChainIdMismatchError, ManifestError, WalletError
from wallet.tokens import DEFAULT_PAUSE_BOND

__all__ = ["Deployment", "deploy_contracts", "ensure_deployed", "read_manifest"]


@dataclass(frozen=True, slots=True)
class Deployment:
    chain_id: int
    token: str
    router: str
    deploy_block: int
    owner: str
    treasury: str
    #: the PaymentRouter artifact's source hash: a manifest from other sources is redeployed
    router_source: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _send(chain: Chain, account: LocalAccount, tx: dict[str, Any]) -> Any:
    w3 = chain.w3
    with chain.lock:
        tx.setdefault("nonce", w3.eth.get_transaction_count(account.address, "pending"))
        tx.setdefault("chainId", chain.chain_id)
        signed = account.sign_transaction(tx)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
    if receipt["status"] != 1:
        raise WalletError(f"deployment transaction {tx_hash.hex()} reverted")
    return receipt


def _deploy(chain: Chain, account: LocalAccount, name: str, *args: Any) -> tuple[str, int]:
    artifact = load_artifact(name)
    factory = chain.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    tx = factory.constructor(*args).build_transaction(
        {"from": account.address, "nonce": chain.w3.eth.get_transaction_count(account.address)}
    )
    receipt = _send(chain, account, dict(tx))
    return Web3.to_checksum_address(receipt["contractAddress"]), int(receipt["blockNumber"])


def deploy_contracts(
    chain: Chain,
    owner: LocalAccount,
    *,
    treasury: str | None = None,
    pause_bond: int = DEFAULT_PAUSE_BOND,
) -> Deployment:
    """Deploy a fresh TestToken and PaymentRouter owned by ``owner``."""
    treasury = Web3.to_checksum_address(treasury or owner.address)
    token, first_block = _deploy(chain, owner, "TestToken", owner.address)
    router, _ = _deploy(chain, owner, "PaymentRouter", owner.address, treasury, pause_bond)
    source = load_artifact("PaymentRouter").source_hash
    return Deployment(chain.chain_id, token, router, first_block, owner.address, treasury, source)


def read_manifest(path: Path, chain: Chain) -> Deployment | None:
    """The manifest at ``path`` if it describes live contracts on ``chain``; None if absent/dead."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        deployment = Deployment(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise ManifestError(f"deployment manifest {path} is unreadable: {exc}") from None
    if deployment.chain_id != chain.chain_id:
        raise ChainIdMismatchError(
            f"manifest {path} is for chain id {deployment.chain_id}, "
            f"but the chain has id {chain.chain_id}"
        )
    if deployment.router_source != load_artifact("PaymentRouter").source_hash:
        return None  # deployed from other sources (e.g. before the router changed): redeploy
    for address in (deployment.token, deployment.router):
        if not chain.w3.eth.get_code(Web3.to_checksum_address(address)):
            return None  # e.g. a restarted anvil: redeploy
    return deployment


def _write_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def ensure_deployed(chain: Chain, manifest: Path, owner: LocalAccount) -> tuple[Deployment, bool]:
    """Reuse the manifest's deployment or deploy and write one. Returns (deployment, created)."""
    existing = read_manifest(manifest, chain)
    if existing is not None:
        return existing, False
    deployment = deploy_contracts(chain, owner)
    _write_atomic(manifest, deployment.to_json())
    return deployment, True
