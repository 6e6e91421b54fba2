"""/v1/phone_tasks: the phone channel's call queue as support agents work it, and how the
contact's withdrawal, objection or erasure closes its open calls."""

from __future__ import annotations

import itertools
import os
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session, select

from api.dispatch.models import PhoneTask
from crm import ContactCreate, consent, contacts
from crm.followups.models import FollowUp
from crm.privacy import service as crm_privacy
from tests.api.conftest import auth
from tests.api.test_resources_crm import (
    World,
    grant,
    issue_token,
    new_contact,
    world,  # noqa: F401 - the fixture
)

_REFS = itertools.count(int.from_bytes(os.urandom(3), "big") << 7)


def _task(
    w: World,
    merchant_id: str,
    *,
    after: timedelta,
    zone: str = "Europe/London",
    contact_id: int | None = None,
    purpose: str = "service_followup",
) -> int:
    """A task as the phone channel writes it for a sent follow-up: a 13-hour window starting
    ``after`` from now. Without ``contact_id``: for a new contact who consented to the call."""
    start, now, mid, ref = w.clock.now() + after, w.clock.now(), int(merchant_id), next(_REFS)
    with Session(w.engine, expire_on_commit=False) as s, s.begin():
        if contact_id is None:
            person = ContactCreate(name="Ada", phone="+14155550123", time_zone=zone)
            contact_id = contacts.create_contact(s, mid, person, w.keyring, w.clock).id or 0
            consent.grant(
                s, mid, contact_id, purpose, "phone", actor="test", clock=w.clock, keyring=w.keyring
            )
        followup = FollowUp(
            merchant_id=mid,
            contact_id=contact_id,
            kind="payment_settled",
            purpose=purpose,
            payment_ref=f"pay_{ref}",
            invoice_ref=f"inv_{ref}",
            channel="phone",
            channels=["phone"],
            state="sent",
            due_at=now,
            expires_at=now + timedelta(days=28),
            sent_at=now,
            created_at=now,
            updated_at=now,
        )
        s.add(followup)
        s.flush()
        task = PhoneTask(
            merchant_id=mid,
            contact_id=contact_id,
            followup_id=followup.id or 0,
            time_zone=zone,
            call_after=start,
            call_before=start + timedelta(hours=13),
            created_at=now,
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


# ------------------------------------------------- consent gone: the contact's calls close


def _consenting(w: World, *purposes: str) -> int:
    """A contact of tenant A who consented to e-mails and calls about ``purposes``."""
    c = new_contact(w, w.a, phone="+14155550123")
    for purpose in purposes:
        grant(w, w.a, c["id"], purpose)
        r = w.client.post(
            f"/v1/contacts/{c['id']}/consents",
            json={"action": "grant", "purpose": purpose, "channel": "phone"},
            headers=auth(w.a.merchant),
        )
        assert r.status_code == 200, r.text
    return int(c["id"])


def _stored(w: World, task_id: int) -> tuple[str, str | None, str | None]:
    with Session(w.engine) as s:
        task = s.exec(select(PhoneTask).where(PhoneTask.id == task_id)).one()
    return task.state, task.outcome, task.completed_by


def _zone(w: World, task_id: int) -> str:
    with Session(w.engine) as s:
        return s.exec(select(PhoneTask.time_zone).where(PhoneTask.id == task_id)).one()


def _listed(w: World, state: str = "open") -> dict[int, dict]:
    page = w.client.get(
        "/v1/phone_tasks", params={"state": state, "limit": 100}, headers=auth(w.a.support)
    ).json()
    return {t["id"]: t for t in page["data"]}


def _audit(w: World, task_id: int) -> list[tuple[str, dict]]:
    entries = w.client.get(
        "/v1/audit_log",
        params={"object_type": "phone_task", "object_id": str(task_id)},
        headers=auth(w.a.merchant),
    ).json()["data"]
    return [(a["action"], a["detail"]) for a in entries]


WITHDRAWALS = [
    ("merchant", {"action": "withdraw", "purpose": "service_followup", "channel": "phone"}),
    ("support", {"action": "withdraw", "purpose": "service_followup"}),
    ("merchant", {"action": "object", "purpose": "service_followup"}),
]


@pytest.mark.parametrize(("role", "body"), WITHDRAWALS, ids=["phone", "all_channels", "object"])
def test_a_withdrawal_through_the_api_cancels_the_contacts_open_calls(
    world: World,  # noqa: F811
    role: str,
    body: dict,
) -> None:
    contact_id = _consenting(world, "service_followup")
    task = _task(world, world.a.id, after=timedelta(hours=-1), contact_id=contact_id)
    later = _task(world, world.a.id, after=timedelta(hours=5), contact_id=contact_id)
    someone_else = _task(world, world.a.id, after=timedelta(hours=-1))
    r = world.client.post(
        f"/v1/contacts/{contact_id}/consents", json=body, headers=auth(getattr(world.a, role))
    )
    assert r.status_code == 200, r.text
    for closed in (task, later):
        state, outcome, by = _stored(world, closed)
        assert (state, outcome) == ("cancelled", "no_consent")
        assert str(by).startswith("api_key:")
        assert _audit(world, closed) == [("phone_task.cancel", {"reason": "no_consent"})]
    assert list(_listed(world)) == [someone_else]
    cancelled = _listed(world, "cancelled")
    assert sorted(cancelled) == sorted([task, later])
    assert {(t["outcome"], t["callable_now"]) for t in cancelled.values()} == {
        ("no_consent", False)
    }


@pytest.mark.parametrize(
    ("suffix", "body"),
    [("/withdraw", None), ("", {"purpose": "service_followup", "channel": "phone"})],
    ids=["one_click_everything", "phone_only"],
)
def test_a_withdrawal_by_the_customers_link_cancels_the_open_calls(
    world: World,  # noqa: F811
    suffix: str,
    body: dict | None,
) -> None:
    contact_id = _consenting(world, "service_followup")
    token, _ = issue_token(world, world.a, contact_id)
    task = _task(world, world.a.id, after=timedelta(hours=-1), contact_id=contact_id)
    assert _listed(world)[task]["callable_now"] is True
    r = world.client.post(f"/v1/public/consent/{token}{suffix}", json=body)
    assert r.status_code == 200, r.text
    assert _stored(world, task) == ("cancelled", "no_consent", "customer:link")
    assert _listed(world) == {}


def test_erasure_cancels_the_open_calls_and_keeps_the_made_ones(world: World) -> None:  # noqa: F811
    contact_id = _consenting(world, "service_followup")
    made = _task(world, world.a.id, after=timedelta(hours=-1), contact_id=contact_id)
    r = world.client.post(
        f"/v1/phone_tasks/{made}/complete",
        json={"outcome": "reached"},
        headers=auth(world.a.support),
    )
    assert r.status_code == 200, r.text
    pending = _task(world, world.a.id, after=timedelta(hours=-1), contact_id=contact_id)
    other = _task(world, world.a.id, after=timedelta(hours=-1))  # another contact's
    r = world.client.post(f"/v1/contacts/{contact_id}/erase", headers=auth(world.a.merchant))
    assert r.status_code == 200, r.text
    assert _stored(world, pending)[:2] == ("cancelled", "erased")
    assert _stored(world, made)[:2] == ("done", "reached")
    assert _audit(world, pending) == [("phone_task.cancel", {"reason": "erased"})]
    # where the contact lives goes with the rest (the contact's own zone becomes UTC too)
    shown = _listed(world, "cancelled") | _listed(world, "done")
    assert (shown[made]["time_zone"], shown[pending]["time_zone"]) == ("UTC", "UTC")
    assert _zone(world, other) == "Europe/London"


def test_consent_about_another_channel_or_purpose_leaves_the_call(world: World) -> None:  # noqa: F811
    contact_id = _consenting(world, "service_followup", "marketing")
    survey = _task(world, world.a.id, after=timedelta(hours=-1), contact_id=contact_id)
    offer = _task(
        world, world.a.id, after=timedelta(hours=-1), contact_id=contact_id, purpose="marketing"
    )
    h = auth(world.a.merchant)
    url = f"/v1/contacts/{contact_id}/consents"
    withdraw_email = {"action": "withdraw", "purpose": "service_followup", "channel": "email"}
    assert world.client.post(url, json=withdraw_email, headers=h).status_code == 200
    assert {i: t["callable_now"] for i, t in _listed(world).items()} == {survey: True, offer: True}
    # an objection to marketing ends the marketing call at once, not the survey's
    objection = {"action": "object", "purpose": "marketing"}
    assert world.client.post(url, json=objection, headers=h).status_code == 200
    assert _stored(world, offer)[:2] == ("cancelled", "no_consent")
    assert _stored(world, survey) == ("open", None, None)
    assert _listed(world)[survey]["callable_now"] is True


@pytest.mark.parametrize("gone", ["no_consent", "erased"])
def test_a_call_whose_consent_went_unseen_is_never_callable_and_cannot_be_made(
    world: World,  # noqa: F811
    gone: str,
) -> None:
    """Defence in depth: consent changed without the API's cancellation (a task the worker
    wrote while a withdrawal committed, another process calling the CRM)."""
    task = _task(world, world.a.id, after=timedelta(hours=-1))
    h = auth(world.a.support)
    contact_id = world.client.get(f"/v1/phone_tasks/{task}", headers=h).json()["contact_id"]
    mid = int(world.a.id)
    with Session(world.engine) as s, s.begin():
        if gone == "erased":
            crm_privacy.erase_contact(s, mid, contact_id, actor="test", clock=world.clock)
        else:
            consent.withdraw(
                s,
                mid,
                contact_id,
                "service_followup",
                actor="t",
                clock=world.clock,
                keyring=world.keyring,
            )
    listed = _listed(world)[task]
    one = world.client.get(f"/v1/phone_tasks/{task}", headers=h).json()
    for view in (listed, one):
        assert (view["state"], view["blocked_reason"], view["callable_now"]) == (
            "open",
            gone,
            False,
        )
    r = world.client.post(
        f"/v1/phone_tasks/{task}/complete", json={"outcome": "reached"}, headers=h
    )
    assert r.status_code == 200, r.text
    assert (r.json()["state"], r.json()["outcome"]) == ("cancelled", gone)
    assert _audit(world, task) == [
        ("phone_task.cancel", {"reason": gone, "reported_outcome": "reached"})
    ]
    again = world.client.post(
        f"/v1/phone_tasks/{task}/complete", json={"outcome": "reached"}, headers=h
    )
    assert (again.status_code, again.json()["error"]["code"]) == (409, "phone_task_closed")


def test_a_task_without_its_followup_is_not_callable(world: World) -> None:  # noqa: F811
    """Fails closed: nothing proves consent for a task whose follow-up is not there."""
    task = _task(world, world.a.id, after=timedelta(hours=-1))
    with Session(world.engine) as s, s.begin():
        stored = s.exec(select(PhoneTask).where(PhoneTask.id == task)).one()
        stored.followup_id = 2**31 - 1
        s.add(stored)
    view = _listed(world)[task]
    assert (view["blocked_reason"], view["callable_now"]) == ("no_consent", False)


def test_a_contact_moving_to_another_zone_moves_its_open_calls(world: World) -> None:  # noqa: F811
    """The task kept the old zone: an agent saw a contact in Auckland as callable at night."""
    task_id = _task(world, world.a.id, after=timedelta(hours=1), zone="Europe/London")
    with Session(world.engine, expire_on_commit=False) as s, s.begin():
        task = s.exec(select(PhoneTask).where(PhoneTask.id == task_id)).one()
        task.window_start_minute, task.window_end_minute = 10 * 60, 18 * 60  # as the channel
        s.add(task)
        contact_id = task.contact_id
    r = world.client.post(
        f"/v1/contacts/{contact_id}",
        json={"time_zone": "Pacific/Auckland"},
        headers=auth(world.a.merchant),
    )
    assert r.status_code == 200, r.text
    listed = _listed(world)[task_id]
    assert listed["time_zone"] == "Pacific/Auckland"
    assert _zone(world, task_id) == "Pacific/Auckland"
    start, end = (listed["local_window"].split("-")[i] for i in (0, 1))
    assert (start, end) == ("10:00", "18:00"), listed["local_window"]


def test_two_completions_at_once_record_one_outcome(
    world: World,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two agents close the same call at once. On SQLite the task was read before the write
    lock (``FOR UPDATE`` does nothing there): both saw it open, both answered 200, and the
    later write replaced the earlier outcome. Now the second waits for the first and is told
    the call is closed. (The first waits up to 2 s for the second to finish: it never does
    while it waits for the first's lock.)"""
    import threading

    from api.db import session_factory, session_scope
    from api.dispatch import phone_tasks
    from api.dispatch.phone_tasks import PhoneTaskClosed

    task = _task(world, world.a.id, after=timedelta(hours=-1))
    mid = int(world.a.id)
    first_read, second_done = threading.Event(), threading.Event()
    real_blocked = phone_tasks.blocked_reasons

    def blocked_then_wait(session, tasks):
        reasons = real_blocked(session, tasks)
        if not first_read.is_set():
            first_read.set()
            second_done.wait(2.0)
        return reasons

    monkeypatch.setattr(phone_tasks, "blocked_reasons", blocked_then_wait)
    outcomes: dict[str, object] = {}

    def close(name: str, outcome: str) -> None:
        if name == "second":
            assert first_read.wait(30)
        try:
            with session_scope(session_factory(world.engine)) as s:
                phone_tasks.complete(s, mid, task, outcome=outcome, actor=name, clock=world.clock)
            outcomes[name] = outcome
        except PhoneTaskClosed as closed:
            outcomes[name] = closed
        finally:
            if name == "second":
                second_done.set()

    threads = [
        threading.Thread(target=close, args=("first", "reached")),
        threading.Thread(target=close, args=("second", "no_answer")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes["first"] == "reached"
    assert isinstance(outcomes["second"], PhoneTaskClosed)
    assert _stored(world, task)[:2] == ("done", "reached")
