"""EIP-1559 fee suggestion and geth's replacement rule.

* :func:`suggest_fees`: ``eth_feeHistory`` → ``maxFeePerGas = 2 x next base fee + tip`` where the
  tip is the median 50th-percentile reward of recent blocks (floored at ``min_tip``). A node
  without a working fee history falls back to the latest block's base fee.
* Replacement: :func:`bump_fees` implements geth's rule — *both* fee fields at least +10 % — and
  :func:`check_replacement` enforces it (anvil would accept less; mainnet nodes will not).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wallet.errors import FeeBumpError
from wallet.rpc import as_int

if TYPE_CHECKING:
    from wallet.chain import Chain

__all__ = [
    "GWEI",
    "REPLACEMENT_BUMP_PERCENT",
    "Fees",
    "bump_fees",
    "check_replacement",
    "suggest_fees",
]

GWEI = 10**9
REPLACEMENT_BUMP_PERCENT = 10


@dataclass(frozen=True, slots=True)
class Fees:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    def as_tx_fields(self) -> dict[str, int]:
        return {
            "maxFeePerGas": self.max_fee_per_gas,
            "maxPriorityFeePerGas": self.max_priority_fee_per_gas,
        }


def suggest_fees(chain: Chain, *, min_tip: int = GWEI, blocks: int = 5) -> Fees:
    """EIP-1559 fees: ``maxFee = 2 x baseFee(next block) + tip``."""
    base_fee: int | None = None
    tip = min_tip
    try:
        history = chain.request("eth_feeHistory", [hex(blocks), "latest", [50]])
        base_fees = history.get("baseFeePerGas") or []
        if base_fees:
            base_fee = as_int(base_fees[-1])  # the last entry is the *next* block's base fee
        rewards = [as_int(r[0]) for r in history.get("reward") or [] if r]
        if rewards:
            tip = max(min_tip, int(statistics.median(rewards)))
    except Exception:  # eth-tester's feeHistory is broken; the block below suffices
        base_fee = None
    with chain.lock:
        block = chain.w3.eth.get_block("latest")
    latest = int(block.get("baseFeePerGas", 0) or 0)
    # The next base fee is within 12.5 % of the latest block's. anvil keeps serving pre-revert
    # fee history after evm_revert, so the block itself is the floor we trust.
    floor = latest - latest // 8
    base_fee = floor if base_fee is None else max(base_fee, floor)
    return Fees(2 * base_fee + tip, tip)


def _at_least_bumped(old: int, percent: int) -> int:
    # ceil(old * (100 + percent) / 100), integer arithmetic only
    return -(-old * (100 + percent) // 100)


def bump_fees(
    old: Fees, market: Fees | None = None, *, percent: int = REPLACEMENT_BUMP_PERCENT
) -> Fees:
    """Fees for a replacement: ≥ ``percent`` % more on *both* fields, and never below market."""
    tip = _at_least_bumped(old.max_priority_fee_per_gas, percent)
    fee = _at_least_bumped(old.max_fee_per_gas, percent)
    if market is not None:
        tip = max(tip, market.max_priority_fee_per_gas)
        fee = max(fee, market.max_fee_per_gas)
    return Fees(max(fee, tip), tip)


def check_replacement(old: Fees, new: Fees, *, percent: int = REPLACEMENT_BUMP_PERCENT) -> None:
    """geth's txpool rule: a replacement must raise both fee caps by at least ``percent`` %."""
    need_fee = _at_least_bumped(old.max_fee_per_gas, percent)
    need_tip = _at_least_bumped(old.max_priority_fee_per_gas, percent)
    if new.max_fee_per_gas < need_fee or new.max_priority_fee_per_gas < need_tip:
        raise FeeBumpError(
            f"replacement underpriced: need maxFeePerGas ≥ {need_fee} and "
            f"maxPriorityFeePerGas ≥ {need_tip} (+{percent}% on both)"
        )
