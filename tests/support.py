"""Test helpers importable from any test module (``from tests.support import ChainSuite``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from wallet.chain import Chain

__all__ = ["ChainSuite"]


class ChainSuite:
    """Base for chain-backed test classes; subclass once per backend (``backend = "anvil"``).

    ``chain`` is reverted to its pre-test snapshot after every test.
    """

    backend: str = "tester"

    @pytest.fixture
    def chain(self, request: pytest.FixtureRequest) -> Iterator[Chain]:
        chain: Chain = request.getfixturevalue(f"{self.backend}_chain")
        snapshot = chain.snapshot()
        try:
            yield chain
        finally:
            chain.revert(snapshot)
