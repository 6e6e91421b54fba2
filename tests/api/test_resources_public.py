"""Customer links without an API key: rating, consent withdrawal, the message; tampered,
expired and reused tokens. The rating link's HTML page: tests/api/test_rating_page.py."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import httpx
import pytest
from sqlmodel import Session, select

from api.db import session_factory, session_scope
from api.dispatch.channels import InAppChannel, Links, render_in_app
from api.dispatch.models import InAppMessage
from api.dispatch.worker import Worker
from api.embedded import serve_in_thread
from api.webhooks.models import WebhookDelivery
from crm import FollowUpPolicyCreate, followups
from crm.feedback.models import Feedback
from crm.feedback.tokens import hash_token
from crm.followups import policies as followups_policies
from crm.followups.models import FollowUp
from tests.api.conftest import auth
from tests.api.test_resources_crm import World, grant, issue_token, new_contact, world

__all__ = ["world"]


def rate(world: World, token: str, rating: int):
    """The rating page's button (its form, url-encoded)."""
    return world.client.post(f"/v1/public/feedback/{token}/rate", data={"rating": rating})


def _emailed(world: World) -> tuple[dict, str]:
    """A contact of tenant A with e-mail consent, and the token of the follow-up sent to it."""
    c = new_contact(world, world.a)
    grant(world, world.a, c["id"])
    token, _ = issue_token(world, world.a, c["id"])
    return c, token


class TestOneClickRating:
    def test_low_rating_opens_ticket_credits_reward_and_is_final(self, world: World) -> None:
        c, token = _emailed(world)
        r = world.client.get(f"/v1/public/feedback/{token}")
        assert r.status_code == 200
        assert r.json()["state"] == "pending"
        r = rate(world, token, 2)
        body = r.json()
        assert r.status_code == 200, r.text
        assert body["state"] == "recorded"
        assert body["rating"] == 2
        assert body["reward_points"] == 10
        assert body["follow_up_within_hours"] == 24
        # a later click (another rating) shows the recorded answer and changes nothing
        again = rate(world, token, 5).json()
        assert again["rating"] == 2
        assert again["submitted_at"] == body["submitted_at"]
        tickets = world.client.get("/v1/tickets", headers=auth(world.a.support)).json()["data"]
        assert [t["contact_id"] for t in tickets] == [c["id"]]
        fb = world.client.get("/v1/feedback", headers=auth(world.a.merchant)).json()["data"]
        assert [(f["rating"], f["ticket_id"]) for f in fb] == [(2, tickets[0]["id"])]

    def test_post_with_nps_and_comment_then_reuse_is_409(self, world: World) -> None:
        _c, token = _emailed(world)
        r = world.client.post(
            f"/v1/public/feedback/{token}", json={"rating": 5, "nps": 10, "comment": "Great"}
        )
        assert r.status_code == 200
        assert r.json()["follow_up_within_hours"] is None
        r = world.client.post(f"/v1/public/feedback/{token}", json={"rating": 1})
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "feedback_token_used"
        fb = world.client.get("/v1/feedback", headers=auth(world.a.merchant)).json()["data"]
        assert [(f["rating"], f["nps"], f["comment"]) for f in fb] == [(5, 10, "Great")]

    def test_tampered_and_expired_tokens(self, world: World) -> None:
        _c, token = _emailed(world)
        tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
        for path in (
            f"/v1/public/feedback/{tampered}",
            f"/v1/public/consent/{tampered}",
            f"/v1/public/messages/{tampered}",
        ):
            r = world.client.get(path)
            assert r.status_code == 404
            assert r.json()["error"]["code"] == "feedback_token_invalid"
        for r in (
            world.client.post(f"/v1/public/consent/{tampered}/withdraw"),
            rate(world, tampered, 1),
        ):
            assert r.status_code == 404
        world.clock.advance(days=15)
        for r in (world.client.get(f"/v1/public/feedback/{token}"), rate(world, token, 1)):
            assert r.status_code == 400
            assert r.json()["error"]["code"] == "feedback_token_expired"
        r = world.client.post(f"/v1/public/feedback/{token}", json={"rating": 1})
        assert r.status_code == 400
        assert world.client.get("/v1/feedback", headers=auth(world.a.merchant)).json()["data"] == []
        # the same e-mail's consent link still works: withdrawing stays easy
        assert world.client.get(f"/v1/public/consent/{token}").status_code == 200

    def test_a_get_never_records(self, world: World) -> None:
        """Mail scanners and link previews open links: ``rating`` on the link's state (the
        one-click GET of old e-mails) leads to the confirmation page and changes nothing."""
        _c, token = _emailed(world)
        r = world.client.get(f"/v1/public/feedback/{token}", params={"rating": 1})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert world.client.get(f"/v1/public/feedback/{token}").json()["state"] == "pending"
        assert world.client.get("/v1/feedback", headers=auth(world.a.merchant)).json()["data"] == []

    def test_bad_rating_writes_nothing(self, world: World) -> None:
        _c, token = _emailed(world)
        for form, code in (({"rating": 9}, "parameter_invalid"), ({}, "parameter_missing")):
            r = world.client.post(f"/v1/public/feedback/{token}/rate", data=form)
            assert r.status_code == 422
            assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (code, "rating")
        assert world.client.get(f"/v1/public/feedback/{token}").json()["state"] == "pending"


class TestChangingAnAnswer:
    """A scanner (or a slip) recorded the one-click rating: the customer corrects it."""

    def test_two_edits_turning_an_answer_negative_announce_its_ticket_once(
        self, world: World, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The route looked for a ticket before the edit locked the answer: two PATCHes at
        once both saw none, one ticket was opened, and both queued ``ticket.opened`` for it
        (two event ids: a receiver deduplicating on the id sees two openings)."""
        from api.routes import public

        hook = world.client.post(
            "/v1/webhook_endpoints",
            json={"url": "http://127.0.0.1:9/h", "enabled_events": ["ticket.opened"]},
            headers=auth(world.a.merchant),
        )
        assert hook.status_code == 200, hook.text
        _, token = _emailed(world)
        assert rate(world, token, 5).status_code == 200
        edit = public.feedback.edit_feedback
        raced: list[int] = []

        def another_patch_commits_first(*args: object, **kwargs: object) -> object:
            if not raced:  # this request has looked; the other one runs and commits now
                raced.append(1)
                other = world.client.patch(f"/v1/public/feedback/{token}", json={"rating": 1})
                assert other.status_code == 200, other.text
            return edit(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(public.feedback, "edit_feedback", another_patch_commits_first)
        r = world.client.patch(f"/v1/public/feedback/{token}", json={"rating": 2})
        assert r.status_code == 200, r.text
        tickets = world.client.get("/v1/tickets", headers=auth(world.a.support)).json()["data"]
        with Session(world.engine) as s:
            events = [d.event_type for d in s.exec(select(WebhookDelivery)).all()]
        assert (len(tickets), events) == (1, ["ticket.opened"])

    def test_the_rating_changes_but_is_not_cleared(self, world: World) -> None:
        """``{"rating": null}`` with an NPS recorded cleared the rating: the answer dropped out
        of CSAT. NPS and the comment may be cleared; the rating only changes."""
        _, token = _emailed(world)
        url = f"/v1/public/feedback/{token}"
        assert world.client.post(url, json={"rating": 4, "nps": 9}).status_code == 200
        refused = world.client.patch(url, json={"rating": None})
        assert refused.status_code == 422, refused.text
        assert world.client.get(url).json()["rating"] == 4
        cleared = world.client.patch(url, json={"nps": None})
        assert cleared.status_code == 200, cleared.text
        assert (cleared.json()["rating"], cleared.json()["nps"]) == (4, None)

    def test_a_recorded_answer_changes_for_14_days_then_freezes(self, world: World) -> None:
        hook = world.client.post(
            "/v1/webhook_endpoints",
            json={"url": "http://127.0.0.1:9/h", "enabled_events": ["feedback.updated", "*"]},
            headers=auth(world.a.merchant),
        )
        assert hook.status_code == 200, hook.text
        c, token = _emailed(world)
        first = rate(world, token, 5).json()
        assert first["editable_until"] is not None
        world.clock.advance(days=13)
        r = world.client.patch(
            f"/v1/public/feedback/{token}", json={"rating": 1, "comment": "It broke"}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["state"], body["rating"], body["reward_points"]) == ("recorded", 1, 10)
        assert body["follow_up_within_hours"] == 24  # turned negative: a ticket with its SLA
        assert body["submitted_at"] == first["submitted_at"]
        tickets = world.client.get("/v1/tickets", headers=auth(world.a.support)).json()["data"]
        assert [t["contact_id"] for t in tickets] == [c["id"]]
        fb = world.client.get("/v1/feedback", headers=auth(world.a.merchant)).json()["data"]
        assert [(f["rating"], f["comment"]) for f in fb] == [(1, "It broke")]
        with Session(world.engine) as s:
            deliveries = s.exec(select(WebhookDelivery)).all()
        events = [d.event_type for d in deliveries]
        assert events.count("feedback.updated") == 1
        assert events.count("ticket.opened") == 1
        (updated,) = [d for d in deliveries if d.event_type == "feedback.updated"]
        sent = json.loads(updated.payload)["data"]["object"]
        assert (sent["id"], sent["rating"], sent["has_comment"]) == (fb[0]["id"], 1, True)
        assert "comment" not in sent
        assert all("It broke" not in d.payload for d in deliveries)  # erasure can reach it
        world.clock.advance(days=1, seconds=1)
        late = world.client.patch(f"/v1/public/feedback/{token}", json={"rating": 4})
        assert late.status_code == 409
        assert late.json()["error"]["code"] == "feedback_frozen"
        assert world.client.get(f"/v1/public/feedback/{token}").json()["rating"] == 1

    def test_bad_edits_change_nothing(self, world: World) -> None:
        _c, token = _emailed(world)
        pending = world.client.patch(f"/v1/public/feedback/{token}", json={"rating": 2})
        assert pending.status_code == 409
        assert pending.json()["error"]["code"] == "feedback_not_submitted"
        assert world.client.get(f"/v1/public/feedback/{token}").json()["state"] == "pending"
        rate(world, token, 4)
        for body, status in (({}, 422), ({"rating": 9}, 422), ({"tags": ["x"]}, 422)):
            r = world.client.patch(f"/v1/public/feedback/{token}", json=body)
            assert r.status_code == status, (body, r.text)
        tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
        r = world.client.patch(f"/v1/public/feedback/{tampered}", json={"rating": 1})
        assert r.status_code == 404
        shown = world.client.get(f"/v1/public/feedback/{token}").json()
        assert (shown["rating"], shown["follow_up_within_hours"]) == (4, None)
        assert world.client.get("/v1/tickets", headers=auth(world.a.support)).json()["data"] == []


class TestConsentLinks:
    def test_one_click_withdraw_everything(self, world: World) -> None:
        c = new_contact(world, world.a)
        grant(world, world.a, c["id"])
        grant(world, world.a, c["id"], "marketing")
        token, _ = issue_token(world, world.a, c["id"])
        mine = world.client.get(f"/v1/public/consent/{token}").json()
        assert {(x["purpose"], x["channel"], x["state"]) for x in mine["consents"]} == {
            ("service_followup", "email", "granted"),
            ("marketing", "email", "granted"),
        }
        r = world.client.post(mine["withdraw_url"])
        assert r.status_code == 200
        assert {x["state"] for x in r.json()["consents"]} == {"withdrawn"}
        history = world.client.get(
            f"/v1/contacts/{c['id']}/consents", headers=auth(world.a.merchant)
        ).json()
        assert history["verification"]["ok"] is True
        assert {e["actor"] for e in history["events"] if e["action"] == "withdraw"} == {
            "customer:link"
        }

    def test_withdraw_url_keeps_the_prefix_a_proxy_stripped(self, world: World) -> None:
        """Served under ``FOLLOWPAY_API_ROOT_PATH=/pay`` (uvicorn's ``root_path``) behind a
        proxy that strips ``/pay``: the URL a customer is told to POST to carries the prefix,
        from every path that answers with it, and the proxied POST withdraws."""
        c = new_contact(world, world.a)
        grant(world, world.a, c["id"])
        token, _ = issue_token(world, world.a, c["id"])
        expected = f"/pay/v1/public/consent/{token}/withdraw"
        with (
            serve_in_thread(world.client.app, root_path="/pay") as base,  # uvicorn, as served
            httpx.Client(base_url=base, timeout=10) as proxied,
        ):
            shown = proxied.get(f"/v1/public/consent/{token}").json()
            assert shown["withdraw_url"] == expected
            r = proxied.post(f"/v1/public/consent/{token}", json={"purpose": "marketing"})
            assert r.json()["withdraw_url"] == expected
            r = proxied.post(shown["withdraw_url"].removeprefix("/pay"))  # the proxy strips it
            assert r.status_code == 200
            assert r.json()["withdraw_url"] == expected
            assert {x["state"] for x in r.json()["consents"]} == {"withdrawn"}
        unprefixed = world.client.get(f"/v1/public/consent/{token}").json()
        assert unprefixed["withdraw_url"] == expected.removeprefix("/pay")

    def test_withdraw_one_purpose(self, world: World) -> None:
        c = new_contact(world, world.a)
        grant(world, world.a, c["id"])
        grant(world, world.a, c["id"], "marketing")
        token, _ = issue_token(world, world.a, c["id"])
        r = world.client.post(f"/v1/public/consent/{token}", json={"purpose": "marketing"})
        states = {(x["purpose"], x["channel"]): x["state"] for x in r.json()["consents"]}
        assert states[("marketing", "email")] == "withdrawn"
        assert states[("service_followup", "email")] == "granted"

    def test_links_expire_eventually(self, world: World) -> None:
        c = new_contact(world, world.a)
        grant(world, world.a, c["id"])
        token, _ = issue_token(world, world.a, c["id"], ttl=timedelta(days=1))
        world.clock.advance(days=400)
        r = world.client.get(f"/v1/public/consent/{token}")
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "feedback_token_expired"

    def test_messages(self, world: World) -> None:
        _c, token = _emailed(world)
        r = world.client.get(f"/v1/public/messages/{token}")
        assert r.status_code == 200
        assert r.json() == {"object": "list", "data": []}

    def test_every_link_answer_is_private(self, world: World) -> None:
        """The URL holds the token and a message's body live rating links: the JSON answers
        and errors must not be cached or leak in a Referer, as the HTML pages already did."""
        c = _in_app_contact(world)
        (token,) = _send_in_app(world, c["id"], 1)
        answers = [
            world.client.get(f"/v1/public/messages/{token}"),
            world.client.get(f"/v1/public/feedback/{token}"),
            world.client.get(f"/v1/public/consent/{token}"),
            world.client.get("/v1/public/feedback/no-such-token"),
            world.client.get(f"/v1/public/feedback/{token}/rate", params={"rating": 4}),
        ]
        assert [r.status_code for r in answers] == [200, 200, 200, 404, 200]
        for r in answers:
            assert r.headers["cache-control"] == "no-store", r.url
            assert r.headers["referrer-policy"] == "no-referrer", r.url
            assert r.headers["x-content-type-options"] == "nosniff", r.url

    def test_an_in_app_followup_is_shown_to_its_link_and_its_link_rates(self, world: World) -> None:
        """The worker's in-app channel stores it; the customer reads it over HTTP with the
        links' token put back, and its link's page records the rating."""
        c = _in_app_contact(world)
        (token,) = _send_in_app(world, c["id"], 1)
        message = _message(world, token)

        world.clock.advance(minutes=5)
        inbox = world.client.get(f"/v1/public/messages/{token}").json()["data"]
        assert [(m["id"], m["subject"]) for m in inbox] == [(message.id, message.subject)]
        assert f"/v1/public/feedback/{token}/rate?rating=4" in inbox[0]["body"]
        first_read = inbox[0]["read_at"]
        assert datetime.fromisoformat(first_read) == world.clock.now()
        world.clock.advance(minutes=5)
        again = world.client.get(f"/v1/public/messages/{token}").json()["data"]
        assert again[0]["read_at"] == first_read  # the first read stays

        link = next(line for line in inbox[0]["body"].splitlines() if "rating=4" in line)
        path = link.split("http://testserver", 1)[1]
        assert world.client.get(path).status_code == 200  # the page: records nothing
        assert world.client.get(f"/v1/public/feedback/{token}").json()["state"] == "pending"
        rated = world.client.post(path.split("?", 1)[0], data={"rating": 4}).json()
        assert (rated["state"], rated["rating"]) == ("recorded", 4)

    def test_a_link_shows_only_its_own_message_never_another_followups_token(
        self, world: World
    ) -> None:
        """One follow-up's token (say, handed to an SMS gateway) used to open the contact's
        whole inbox for over a year, other follow-ups' live rating tokens included."""
        c = _in_app_contact(world)
        first, second = _send_in_app(world, c["id"], 2)
        world.clock.advance(days=200)
        for mine, other in ((first, second), (second, first)):
            r = world.client.get(f"/v1/public/messages/{mine}")
            assert r.status_code == 200, r.text
            (shown,) = r.json()["data"]
            assert shown["id"] == _message(world, mine).id
            assert mine in shown["body"]
            assert other not in r.text


def _in_app_contact(world: World) -> dict:
    c = new_contact(world, world.a)
    r = world.client.post(
        f"/v1/contacts/{c['id']}/consents",
        json={"action": "grant", "purpose": "service_followup", "channel": "in_app"},
        headers=auth(world.a.merchant),
    )
    assert r.status_code == 200, r.text
    return c


def _send_in_app(world: World, contact_id: int, count: int) -> list[str]:
    """``count`` in-app follow-ups of the contact sent by the worker; their links' tokens."""
    merchant_id = int(world.a.id)
    with session_scope(session_factory(world.engine)) as s:
        followups_policies.create_policy(
            s,
            merchant_id,
            FollowUpPolicyCreate(delay_minutes=0, channel_order=["in_app"], frequency_cap_days=0),
            actor="test",
            clock=world.clock,
        )
        for n in range(count):
            followups.schedule_for_payment(
                s,
                merchant_id,
                contact_id,
                f"pay_in{n}",
                f"inv_in{n}",
                100,
                "USDC",
                world.clock.now(),
                world.clock,
            )
    links = Links("http://testserver")
    worker = Worker(
        world.engine, world.keyring, {"in_app": InAppChannel(links, world.keyring)}, world.clock
    )
    worker.run_once()  # the shared database may hold other tests' due follow-ups too
    with Session(world.engine) as s:
        sent = s.exec(select(FollowUp).where(FollowUp.merchant_id == merchant_id)).all()
        assert [(f.state, f.channel) for f in sent] == [("sent", "in_app")] * count
        messages = s.exec(
            select(InAppMessage)
            .where(InAppMessage.merchant_id == merchant_id)
            .order_by(InAppMessage.id)
        ).all()
        bodies = [render_in_app(s, world.keyring, m) for m in messages]
    return [b.split("/v1/public/feedback/", 1)[1].split("/rate?", 1)[0] for b in bodies]


def _message(world: World, token: str) -> InAppMessage:
    with Session(world.engine) as s:
        fb = s.exec(select(Feedback).where(Feedback.token_hash == hash_token(token))).one()
        return s.exec(select(InAppMessage).where(InAppMessage.followup_id == fb.followup_id)).one()
