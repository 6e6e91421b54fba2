"""Shared fixtures: one chain per backend per session, per-test snapshot/revert.

Under ``CI=true`` a missing anvil or PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.support import missing
from wallet.chain import Chain, ChainConfig, connect
from wallet.errors import AnvilNotFoundError

# Hypothesis's default 200 ms per-example deadline is a timing assertion: on a loaded two-core
# runner it fails correct code. Speed belongs in the benchmarks.
settings.register_profile("followpay", deadline=None)
settings.load_profile("followpay")


@pytest.fixture(scope="session")
def tester_chain() -> Iterator[Chain]:
    with connect(ChainConfig(backend="tester")) as chain:
        yield chain


@pytest.fixture(scope="session")
def anvil_chain() -> Iterator[Chain]:
    try:
        chain = connect(ChainConfig(backend="anvil"))
    except AnvilNotFoundError as exc:
        missing(str(exc))
    with chain:
        yield chain
