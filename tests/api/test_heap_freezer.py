"""The warm-heap freeze: once, after the configured number of served requests, never with 0."""

from __future__ import annotations

import dataclasses
import gc
import threading

import pytest
from fastapi.testclient import TestClient

from api.runtime import WarmHeapFreezer
from tests.api.conftest import TEST_CONFIG


@pytest.fixture
def freezes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts ``gc.freeze()`` calls instead of freezing the test process's heap."""
    calls: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append(1))
    return calls


class TestWarmHeapFreezer:
    def test_freezes_once_at_the_count(self, freezes):
        freezer = WarmHeapFreezer(3)
        freezer.served()
        freezer.served()
        assert freezes == []
        freezer.served()
        assert freezes == [1]
        for _ in range(10):
            freezer.served()
        assert freezes == [1]

    def test_zero_never_freezes(self, freezes):
        freezer = WarmHeapFreezer(0)
        for _ in range(5):
            freezer.served()
        assert freezes == []

    def test_concurrent_requests_freeze_once(self, freezes):
        freezer = WarmHeapFreezer(100)
        start = threading.Barrier(8)

        def serve() -> None:
            start.wait()
            for _ in range(50):
                freezer.served()

        threads = [threading.Thread(target=serve) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert freezes == [1]


class TestAppFreezesAfterServing:
    def test_the_app_freezes_after_its_configured_requests(self, make_app, freezes):
        app = make_app(dataclasses.replace(TEST_CONFIG, freeze_heap_after=4))
        with TestClient(app) as client:
            for _ in range(3):
                assert client.get("/v1/health").status_code == 200
            assert freezes == []
            client.get("/v1/no-such-route")  # an error answer counts as served too
            assert freezes == [1]
            client.get("/v1/health")
            assert freezes == [1]

    def test_negative_count_is_refused_when_configured(self):
        with pytest.raises(ValueError, match="freeze_heap_after must be >= 0"):
            dataclasses.replace(TEST_CONFIG, freeze_heap_after=-1)
