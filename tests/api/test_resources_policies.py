"""/v1/followup_policies: behaviour, bad input, tenant isolation and roles."""

from __future__ import annotations

import pytest

from tests.api.conftest import auth
from tests.api.test_resources_crm import make_world


@pytest.fixture
def world(make_app, new_key, db):
    yield from make_world(make_app, new_key, db)


VIP = {"field": "tier", "equals": "vip", "channels": ["phone"]}


def create(w, key, **body):
    return w.client.post("/v1/followup_policies", json=body, headers=auth(key))


class TestPolicies:
    def test_create_list_get_update(self, world):
        r = create(world, world.a.merchant, delay_minutes=60, segment_rules=[VIP])
        assert r.status_code == 200, r.text
        policy = r.json()
        assert (policy["object"], policy["merchant_id"]) == ("followup_policy", world.a.id)
        assert policy["channel_order"] == ["email"]
        assert policy["window_start_minute"] == 480
        listed = world.client.get("/v1/followup_policies", headers=auth(world.a.support)).json()
        assert [p["id"] for p in listed["data"]] == [policy["id"]]
        r = world.client.post(
            f"/v1/followup_policies/{policy['id']}",
            json={"frequency_cap_days": 7},
            headers=auth(world.a.merchant),
        )
        assert r.status_code == 200, r.text
        assert r.json()["frequency_cap_days"] == 7
        got = world.client.get(
            f"/v1/followup_policies/{policy['id']}", headers=auth(world.a.merchant)
        )
        assert got.json()["frequency_cap_days"] == 7

    def test_a_policy_without_default_channels_is_refused_and_nothing_written(self, world):
        r = create(world, world.a.merchant, channel_order=[], segment_rules=[VIP])
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "policy_missing_default"
        listed = world.client.get("/v1/followup_policies", headers=auth(world.a.merchant))
        assert listed.json()["data"] == []

    def test_unknown_channel_is_refused(self, world):
        r = create(world, world.a.merchant, channel_order=["pigeon"])
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "invalid_request_error"

    def test_second_policy_for_the_same_trigger_conflicts(self, world):
        assert create(world, world.a.merchant).status_code == 200
        assert create(world, world.a.merchant).status_code == 409

    def test_other_merchants_policy_is_a_404_and_listed_nowhere(self, world):
        policy = create(world, world.a.merchant).json()
        for key in (world.b.merchant, world.b.support):
            got = world.client.get(f"/v1/followup_policies/{policy['id']}", headers=auth(key))
            assert got.status_code == 404
            assert world.client.get("/v1/followup_policies", headers=auth(key)).json()["data"] == []
        r = world.client.post(
            f"/v1/followup_policies/{policy['id']}",
            json={"delay_minutes": 1},
            headers=auth(world.b.merchant),
        )
        assert r.status_code == 404

    def test_support_cannot_create_or_change(self, world):
        assert create(world, world.a.support).status_code == 403
