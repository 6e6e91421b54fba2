"""How to reach a chain, as plain data: :class:`ChainBackend` and :class:`ChainConfig`.

Kept apart from :mod:`wallet.chain` (which re-exports both) so that settings and command-line
parsing can name a chain without loading web3 and eth-account (~0.7 s of every CLI start).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

__all__ = ["ChainBackend", "ChainConfig"]


class ChainBackend(StrEnum):
    TESTER = "tester"
    ANVIL = "anvil"
    RPC = "rpc"


@dataclass(frozen=True, slots=True)
class ChainConfig:
    """How to reach a chain. ``expected_chain_id`` guards against talking to the wrong network."""

    backend: ChainBackend | str = ChainBackend.TESTER
    rpc_url: str | None = field(default=None, repr=False)  # may carry a provider key
    anvil_path: str | None = None
    expected_chain_id: int | None = None
    anvil_block_time: float | None = None
    anvil_port: int | None = None
    anvil_args: tuple[str, ...] = ()
    startup_timeout: float = 15.0
