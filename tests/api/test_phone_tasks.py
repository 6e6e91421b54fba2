"""/v1/phone_tasks: the phone channel's call queue as support agents work it."""

from __future__ import annotations

import itertools
import os
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlmodel import Session, select

from api.dispatch.models import PhoneTask
from tests.api.conftest import auth
from tests.api.test_resources_crm import World, world  # noqa: F401 - the fixture

_FOLLOWUPS = itertools.count(int.from_bytes(os.urandom(3), "big") << 7)  # an INTEGER column


def _task(w: World, merchant_id: str, *, after: timedelta, zone: str = "Europe/London") -> int:
    """A task as the phone channel writes it: a 13-hour window starting ``after`` from now."""
    start = w.clock.now() + after
    with Session(w.engine, expire_on_commit=False) as s, s.begin():
        task = PhoneTask(
            merchant_id=int(merchant_id),
            contact_id=1,
            followup_id=next(_FOLLOWUPS),
            time_zone=zone,
            call_after=start,
            call_before=start + timedelta(hours=13),
            created_at=w.clock.now(),
        )
        s.add(task)
    return task.id or 0


def test_the_queue_lists_open_calls_earliest_first_and_pages(world: World) -> None:  # noqa: F811
    later = _task(world, world.a.id, after=timedelta(hours=5))
    now = _task(world, world.a.id, after=timedelta(hours=-1))
    soon = _task(world, world.a.id, after=timedelta(hours=1))
    _task(world, world.b.id, after=timedelta(hours=-2))  # another merchant's
    h = auth(world.a.support)
    first = world.client.get("/v1/phone_tasks", params={"limit": 2}, headers=h).json()
    assert [t["id"] for t in first["data"]] == [now, soon]
    assert first["has_more"] is True
    assert [t["callable_now"] for t in first["data"]] == [True, False]
    rest = world.client.get(
        "/v1/phone_tasks", params={"limit": 2, "starting_after": soon}, headers=h
    ).json()
    assert [t["id"] for t in rest["data"]] == [later]
    assert rest["has_more"] is False
    one = world.client.get(f"/v1/phone_tasks/{now}", headers=h).json()
    zone = ZoneInfo("Europe/London")
    start = datetime.fromisoformat(one["call_after"]).astimezone(zone)
    end = datetime.fromisoformat(one["call_before"]).astimezone(zone)
    assert one["local_window"] == f"{start:%H:%M}-{end:%H:%M}"
    assert (one["state"], one["outcome"], one["time_zone"]) == ("open", None, "Europe/London")


def test_completing_a_call_records_its_outcome_once(world: World) -> None:  # noqa: F811
    task = _task(world, world.a.id, after=timedelta(hours=-1))
    h = auth(world.a.support)
    done = world.client.post(
        f"/v1/phone_tasks/{task}/complete", json={"outcome": "reached"}, headers=h
    )
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["state"], body["outcome"], body["callable_now"]) == ("done", "reached", False)
    assert body["completed_by"].startswith("api_key:")
    assert datetime.fromisoformat(body["completed_at"]) == world.clock.now()
    again = world.client.post(
        f"/v1/phone_tasks/{task}/complete", json={"outcome": "no_answer"}, headers=h
    )
    assert (again.status_code, again.json()["error"]["code"]) == (409, "phone_task_closed")
    assert world.client.get("/v1/phone_tasks", headers=h).json()["data"] == []
    closed = world.client.get("/v1/phone_tasks", params={"state": "done"}, headers=h).json()
    assert [(t["id"], t["outcome"]) for t in closed["data"]] == [(task, "reached")]
    audit = world.client.get(
        "/v1/audit_log",
        params={"object_type": "phone_task", "object_id": str(task)},
        headers=auth(world.a.merchant),
    ).json()["data"]
    assert [a["action"] for a in audit] == ["phone_task.complete"]


def test_bad_outcomes_and_other_merchants_change_nothing(world: World) -> None:  # noqa: F811
    task = _task(world, world.a.id, after=timedelta(hours=-1))
    bad = world.client.post(
        f"/v1/phone_tasks/{task}/complete",
        json={"outcome": "hung_up_angrily"},
        headers=auth(world.a.support),
    )
    assert (bad.status_code, bad.json()["error"]["param"]) == (422, "outcome")
    for path in (f"/v1/phone_tasks/{task}", f"/v1/phone_tasks/{task}/complete"):
        method = world.client.post if path.endswith("complete") else world.client.get
        kwargs = {"json": {"outcome": "reached"}} if path.endswith("complete") else {}
        r = method(path, headers=auth(world.b.support), **kwargs)
        assert r.status_code == 404, path
    with Session(world.engine) as s:
        stored = s.exec(select(PhoneTask).where(PhoneTask.id == task)).one()
    assert (stored.state, stored.outcome, stored.completed_by) == ("open", None, None)
