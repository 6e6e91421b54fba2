"""Transaction-level gas of ``PaymentRouter.pay`` against a bare ERC-20 ``transferFrom`` on anvil.

Every figure is the mean receipt ``gasUsed`` (intrinsic 21,000 + calldata + execution - refunds)
over ``payments`` transactions measured in the same run on the same chain:

* baseline: ``token.transferFrom(payer, payout, amount)`` sent by an EOA spender holding a finite
  allowance (so the allowance slot is written, exactly as the router's allowance is);
* ``pay`` without a fee, ``pay`` with a 1 % fee, and ``pay`` of intents bound to the payer.
  Invoice ids are sequential and each row starts on a fresh 256-id bitmap word, so every row pays
  its share of write-backs (the router caches a 64-id window in the merchant record and writes it
  back to the bitmap when the window moves: one zero-to-non-zero and three non-zero writes per 256
  payments). Payer and payout already hold non-zero balances.

Usage::

    python scripts/bench_gas.py [--rpc-url URL] [--payments N]

Without ``--rpc-url`` an anvil is spawned on a free port and killed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import requests
from eth_account import Account
from eth_account.messages import encode_typed_data
from web3 import Web3

from wallet.chain import anvil_binary

ROOT = Path(__file__).resolve().parent.parent
FORGE = ROOT / "node_modules" / ".bin" / "forge"

AMOUNT = 12_345_678  # 12.345678 tUSD (6 decimals)
FEE = 123_456  # 1 %
GAS_LIMIT = 300_000
DEFAULT_PAUSE_BOND = (
    10 * 10**18
)  # the router's constructor argument (wallet.tokens.DEFAULT_PAUSE_BOND)
INTENT_TYPES = {
    "PaymentIntent": [
        {"name": "merchant", "type": "address"},
        {"name": "token", "type": "address"},
        {"name": "amount", "type": "uint256"},
        {"name": "fee", "type": "uint256"},
        {"name": "invoiceId", "type": "uint256"},
        {"name": "payer", "type": "address"},
        {"name": "deadline", "type": "uint256"},
    ]
}
ZERO = "0x0000000000000000000000000000000000000000"


def build() -> None:
    """``forge build`` (incremental), so ``out/`` matches the sources being measured."""
    if FORGE.exists():
        subprocess.run([str(FORGE), "build"], cwd=ROOT, check=True, capture_output=True)


def load_artifact(name: str) -> dict[str, Any]:
    """ABI and creation bytecode of ``name`` from forge's ``out/`` (or ``contracts/artifacts/``)."""
    forge_path = ROOT / "out" / f"{name}.sol" / f"{name}.json"
    if forge_path.exists():
        data = json.loads(forge_path.read_text())
        return {"abi": data["abi"], "bytecode": data["bytecode"]["object"]}
    data = json.loads((ROOT / "contracts" / "artifacts" / f"{name}.json").read_text())
    bytecode = data["bytecode"]
    return {"abi": data["abi"], "bytecode": bytecode.get("object", bytecode)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn_anvil(*extra: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [str(anvil_binary()), "--port", str(port), "--silent", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    w3 = Web3(Web3.HTTPProvider(url))
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError(f"anvil exited with {proc.returncode}")
        with contextlib.suppress(requests.RequestException):  # not listening yet
            if w3.is_connected():
                return proc, url
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("anvil did not become ready")


def compact_signature(signed: Any) -> tuple[bytes, bytes]:
    """(r, vs) of an EIP-2098 compact signature from eth-account's (v, r, s)."""
    vs = signed.s | ((signed.v - 27) << 255)
    return signed.r.to_bytes(32, "big"), vs.to_bytes(32, "big")


class _Bench:
    def __init__(self, w3: Web3) -> None:
        self.w3 = w3
        accounts = w3.eth.accounts
        self.owner, self.payer, self.spender, self.merchant, self.payout, self.treasury = accounts[
            :6
        ]
        self.operator = Account.create()
        token_art = load_artifact("TestToken")
        router_art = load_artifact("PaymentRouter")
        self.token = self._deploy(token_art, self.owner)
        self.router = self._deploy(router_art, self.owner, self.treasury, DEFAULT_PAUSE_BOND)
        self.chain_id = w3.eth.chain_id

        big = 10**18
        for holder in (self.payer, self.payout, self.treasury, self.merchant):
            self._send(self.token.functions.mint(holder, big), self.owner)
        self._send(self.token.functions.approve(self.router.address, big), self.payer)
        self._send(self.token.functions.approve(self.spender, big), self.payer)
        self._send(
            self.router.functions.registerMerchant(self.payout, self.operator.address),
            self.merchant,
        )
        self.deadline = w3.eth.get_block("latest")["timestamp"] + 86_400

    def _deploy(self, art: dict[str, Any], sender: str, *args: Any) -> Any:
        factory = self.w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        tx = factory.constructor(sender, *args).transact({"from": sender})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx)
        return self.w3.eth.contract(address=receipt["contractAddress"], abi=art["abi"])

    def _send(self, call: Any, sender: str) -> int:
        tx = call.transact({"from": sender, "gas": GAS_LIMIT})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx)
        if receipt["status"] != 1:
            raise RuntimeError(f"transaction reverted: {call.fn_name}")
        return int(receipt["gasUsed"])

    def intent(self, invoice_id: int, fee: int, payer: str) -> dict[str, Any]:
        return {
            "merchant": self.merchant,
            "token": self.token.address,
            "amount": AMOUNT,
            "fee": fee,
            "invoiceId": invoice_id,
            "payer": payer,
            "deadline": self.deadline,
        }

    def sign(self, intent: dict[str, Any]) -> tuple[bytes, bytes]:
        message = encode_typed_data(
            domain_data={
                "name": "FollowPay PaymentRouter",
                "version": "1",
                "chainId": self.chain_id,
                "verifyingContract": self.router.address,
            },
            message_types=INTENT_TYPES,
            message_data=intent,
        )
        return compact_signature(Account.sign_message(message, self.operator.key))

    def transfer_from(self, n: int) -> list[int]:
        call = self.token.functions.transferFrom(self.payer, self.payout, AMOUNT)
        return [self._send(call, self.spender) for _ in range(n)]

    def pay(self, first_id: int, n: int, fee: int, payer: str) -> list[int]:
        gas = []
        for invoice_id in range(first_id, first_id + n):
            intent = self.intent(invoice_id, fee, payer)
            r, vs = self.sign(intent)
            args = tuple(intent[k["name"]] for k in INTENT_TYPES["PaymentIntent"])
            gas.append(self._send(self.router.functions.pay(args, r, vs), self.payer))
        return gas


def run(rpc_url: str | None = None, payments: int = 256) -> list[dict[str, Any]]:
    """Measure and return rows ``{"name", "mean_gas", "baseline_gas", "ratio"}``."""
    build()
    proc = None
    if rpc_url is None:
        proc, rpc_url = _spawn_anvil()
    try:
        bench = _Bench(Web3(Web3.HTTPProvider(rpc_url)))
        words = -(-payments // 256)  # each row starts on a fresh bitmap word
        series = {
            "transferFrom (baseline)": bench.transfer_from(payments),
            "pay, no fee": bench.pay(0, payments, 0, ZERO),
            "pay, 1% fee": bench.pay(256 * words, payments, FEE, ZERO),
            "pay, no fee, payer-bound intent": bench.pay(512 * words, payments, 0, bench.payer),
        }
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    baseline = sum(series["transferFrom (baseline)"]) / payments
    return [
        {
            "name": name,
            "mean_gas": round(sum(gas) / len(gas), 1),
            "baseline_gas": round(baseline, 1),
            "ratio": round(sum(gas) / len(gas) / baseline, 4),
        }
        for name, gas in series.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rpc-url", default=None, help="use this node instead of spawning anvil")
    parser.add_argument("--payments", type=int, default=256, help="transactions per series")
    args = parser.parse_args()
    rows = run(args.rpc_url, args.payments)
    print(f"{'series':<34} {'mean gasUsed':>13} {'baseline':>10} {'ratio':>7}")
    for row in rows:
        print(
            f"{row['name']:<34} {row['mean_gas']:>13,.1f} {row['baseline_gas']:>10,.1f}"
            f" {row['ratio']:>6.3f}x"
        )


if __name__ == "__main__":
    main()
