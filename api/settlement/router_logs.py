"""The PaymentRouter as the node returns it: its event topics, the selectors of its ``pay``
calls (an unmatched payment's terms are read from its calldata), and its logs, decoded into
:class:`RouterLog`. Nothing here talks to the node or the database."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from eth_utils import keccak, to_checksum_address

from wallet.addresses import ZERO_ADDRESS

__all__ = ["PAY_SELECTORS", "REFUNDED_TOPIC", "SETTLED_TOPIC", "RouterLog", "checksum_address"]

SETTLED_TOPIC = "0x" + keccak(text="PaymentSettled(address,uint256,address,bytes32)").hex()
REFUNDED_TOPIC = (
    "0x" + keccak(text="PaymentRefunded(address,uint256,address,address,uint256,uint256)").hex()
)
_INTENT = "(address,address,uint256,uint256,uint256,address,uint256)"
PAY_SELECTORS = frozenset(
    "0x" + keccak(text=signature).hex()[:8]
    for signature in (
        f"pay({_INTENT},bytes32,bytes32)",
        f"payWithPermit({_INTENT},bytes32,bytes32,(uint256,uint256,uint8,bytes32,bytes32))",
    )
)


@functools.lru_cache(maxsize=4096)
def checksum_address(address: str) -> str:
    """Checksumming costs a keccak; a range's logs repeat a few addresses thousands of times."""
    return to_checksum_address(address)


def _topic_address(topic: str) -> str:
    """The address in a 32-byte topic, as the node's hex string (``0x`` + 64 digits)."""
    return checksum_address("0x" + topic[-40:].lower())


@dataclass(frozen=True, slots=True)
class RouterLog:
    """One router log, decoded from the node's hex strings. Both events index merchant,
    invoiceId and payer|to. ``PaymentSettled`` data is the intent's EIP-712 struct hash;
    ``PaymentRefunded`` data is token, amount and ``total``, the router's running total of
    refunds for the invoice number (in every token: the router keeps one per number)."""

    topic: str
    tx_hash: str
    log_index: int
    block_number: int
    block_hash: str
    merchant: str
    number: int
    third: str
    intent_hash: str = ""
    token: str = ZERO_ADDRESS
    amount: int = 0
    total: int = 0

    @classmethod
    def from_rpc(cls, entry: dict[str, Any]) -> RouterLog:
        topics, data = entry["topics"], entry["data"]
        common = {
            "topic": topics[0],
            "tx_hash": entry["transactionHash"],
            "log_index": int(entry["logIndex"], 16),
            "block_number": int(entry["blockNumber"], 16),
            "block_hash": entry["blockHash"],
            "merchant": _topic_address(topics[1]),
            "number": int(topics[2], 16),
            "third": _topic_address(topics[3]),
        }
        if topics[0] == SETTLED_TOPIC:
            return cls(**common, intent_hash="0x" + data[2:66].lower())
        return cls(
            **common,
            token=checksum_address("0x" + data[26:66].lower()),
            amount=int(data[66:130], 16),
            total=int(data[130:194], 16),
        )
