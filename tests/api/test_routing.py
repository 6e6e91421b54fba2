"""``ApiRouter``: a request's database work, rendering and commit are one thread-pool call."""

from __future__ import annotations

import inspect

import anyio.to_thread
import pytest
from fastapi.routing import APIRoute

from api.routes import core_routers, resource_routers
from api.routing import UNIT_OF_WORK, ApiRouter
from tests.api.conftest import auth

BODY = {"url": "http://127.0.0.1:9/hooks", "enabled_events": ["invoice.settled"]}


def test_every_sync_route_of_the_api_is_a_unit_of_work():
    routes = 0
    for router in (*resource_routers(), *core_routers()):
        assert isinstance(router, ApiRouter), router
        for route in router.routes:
            assert isinstance(route, APIRoute)
            routes += 1
            if not inspect.iscoroutinefunction(route.endpoint):
                assert getattr(route.endpoint, UNIT_OF_WORK, False), route.path
    assert routes > 40


@pytest.fixture
def thread_calls(monkeypatch) -> list[str]:
    """Names of the functions the app hands to the thread pool."""
    calls: list[str] = []
    real = anyio.to_thread.run_sync

    async def counting(func, *args, **kwargs):
        calls.append(getattr(func, "__name__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return calls


class TestOneThreadPoolCall:
    def test_an_idempotent_create_with_a_known_key(self, client, new_key, thread_calls):
        key = new_key()
        assert client.get("/v1/webhook_endpoints", headers=auth(key)).status_code == 200
        thread_calls.clear()  # the key is now cached
        r = client.post(
            "/v1/webhook_endpoints", json=BODY, headers=auth(key, **{"Idempotency-Key": "one"})
        )
        assert r.status_code == 200
        assert len(thread_calls) == 1, thread_calls
        replay = client.post(
            "/v1/webhook_endpoints", json=BODY, headers=auth(key, **{"Idempotency-Key": "one"})
        )
        assert replay.headers["idempotent-replayed"] == "true"

    def test_a_list_with_a_known_key(self, client, new_key, thread_calls):
        key = new_key()
        client.get("/v1/webhook_endpoints", headers=auth(key))
        thread_calls.clear()
        assert client.get("/v1/webhook_endpoints", headers=auth(key)).status_code == 200
        assert len(thread_calls) == 1, thread_calls

    def test_an_unknown_key_costs_one_look_up(self, client, new_key, thread_calls):
        key = new_key()
        assert client.get("/v1/webhook_endpoints", headers=auth(key)).status_code == 200
        assert len(thread_calls) == 2, thread_calls  # the key look-up, then the route
