"""The "Stop these messages" link: one click for a person (a GET confirmation page whose
button POSTs), nothing for a prefetching mail scanner, and the RFC 8058 one-click POST that
mail clients send from the e-mail's List-Unsubscribe headers."""

from __future__ import annotations

import re
from datetime import timedelta
from email import message_from_bytes
from urllib.parse import urlsplit

import pytest
from aiosmtpd.controller import Controller

from api.dispatch.channels import EmailChannel, Links, Recipient
from tests.api.conftest import auth, free_port
from tests.api.test_privacy import sent_instruction
from tests.api.test_resources_crm import (
    World,
    grant,
    issue_token,
    new_contact,
    world,  # noqa: F401 - the fixture
)

BASE = "https://pay.example"


def _customer(w: World) -> tuple[dict, str]:
    """A contact of tenant A with service and marketing e-mail consent, and a link token."""
    c = new_contact(w, w.a)
    grant(w, w.a, c["id"])
    grant(w, w.a, c["id"], "marketing")
    token, _ = issue_token(w, w.a, c["id"])
    return c, token


def _states(w: World, contact_id: int) -> dict[tuple[str, str], str]:
    r = w.client.get(f"/v1/contacts/{contact_id}/consents", headers=auth(w.a.merchant))
    return {(s["purpose"], s["channel"]): s["state"] for s in r.json()["state"]}


def _ledger_length(w: World, contact_id: int) -> int:
    r = w.client.get(f"/v1/contacts/{contact_id}/consents", headers=auth(w.a.merchant))
    return len(r.json()["events"])


class TestConfirmationPage:
    def test_opening_the_link_shows_a_form_and_withdraws_nothing(
        self,
        world: World,  # noqa: F811
    ) -> None:
        c, token = _customer(world)
        before = _ledger_length(world, c["id"])
        for _ in range(3):  # a scanner, a preview, the person
            r = world.client.get(f"/v1/public/consent/{token}/withdraw")
            assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        page = r.text
        assert re.search(r'<form method="post">\s*<button type="submit">', page)
        assert "<script" not in page.lower()
        assert "email: granted" in page
        for personal in (c["name"], c["email"], token):
            assert personal not in page
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-store"
        assert _ledger_length(world, c["id"]) == before
        assert set(_states(world, c["id"]).values()) == {"granted"}

    def test_its_button_withdraws_everything_and_answers_a_page(
        self,
        world: World,  # noqa: F811
    ) -> None:
        c, token = _customer(world)
        r = world.client.post(  # what the browser sends for the form
            f"/v1/public/consent/{token}/withdraw",
            content=b"",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "text/html,application/xhtml+xml,*/*;q=0.8",
            },
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/html")
        assert "no more messages" in r.text
        assert "email: withdrawn" in r.text
        assert set(_states(world, c["id"]).values()) == {"withdrawn"}

    @pytest.mark.parametrize("case", ["unknown", "expired"])
    def test_a_bad_link_shows_why_as_a_page(
        self,
        world: World,  # noqa: F811
        case: str,
    ) -> None:
        c = new_contact(world, world.a)
        grant(world, world.a, c["id"])
        token, _ = issue_token(world, world.a, c["id"], ttl=timedelta(days=-400))
        if case == "unknown":
            token = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
        r = world.client.get(f"/v1/public/consent/{token}/withdraw")
        assert r.status_code == (404 if case == "unknown" else 400)
        assert r.headers["content-type"].startswith("text/html")
        assert "This link does not work" in r.text

    @pytest.mark.parametrize("case", ["unknown", "expired"])
    def test_the_button_on_a_dead_link_answers_a_page_too(
        self,
        world: World,  # noqa: F811
        case: str,
    ) -> None:
        """The link died between the confirmation page and the click (expired, or the contact
        erased): the person still gets a page, not raw JSON."""
        c = new_contact(world, world.a)
        grant(world, world.a, c["id"])
        token, _ = issue_token(world, world.a, c["id"], ttl=timedelta(days=-400))
        if case == "unknown":
            token = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
        r = world.client.post(
            f"/v1/public/consent/{token}/withdraw", headers={"Accept": "text/html"}
        )
        assert r.status_code == (404 if case == "unknown" else 400)
        assert r.headers["content-type"].startswith("text/html")
        assert "This link does not work" in r.text
        api = world.client.post(f"/v1/public/consent/{token}/withdraw")  # a mail client
        assert api.headers["content-type"].startswith("application/json")


class TestRepeatedWithdrawals:
    def test_withdrawing_again_appends_nothing_and_tells_the_merchant_nothing(
        self,
        world: World,  # noqa: F811
    ) -> None:
        """A forwarded e-mail, or a mail provider retrying the one-click POST, must not grow
        the ledger (each append replays it, and holds the contact's lock) or send webhooks."""
        c, token = _customer(world)
        url = f"/v1/public/consent/{token}/withdraw"
        assert world.client.post(url).status_code == 200
        after_first = _ledger_length(world, c["id"])
        states = _states(world, c["id"])
        for _ in range(5):
            assert world.client.post(url).status_code == 200
            one = {"purpose": "marketing", "channel": "email"}
            assert world.client.post(f"/v1/public/consent/{token}", json=one).status_code == 200
        assert _ledger_length(world, c["id"]) == after_first
        assert _states(world, c["id"]) == states
        grant(world, world.a, c["id"])  # granted again: the next withdrawal counts
        assert world.client.post(url).status_code == 200
        assert _ledger_length(world, c["id"]) == after_first + 2
        assert set(_states(world, c["id"]).values()) == {"withdrawn"}


class _Sink:
    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


def test_the_emails_unsubscribe_headers_work_in_one_click(world: World) -> None:  # noqa: F811
    c = new_contact(world, world.a)
    grant(world, world.a, c["id"])
    sink = _Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        channel = EmailChannel("127.0.0.1", controller.port, "followup@pay.example", Links(BASE))
        instruction = sent_instruction(world, c["id"])
        channel.send(None, instruction, Recipient("Acme", "UTC", world.clock.now()))
    finally:
        controller.stop()
    (mail,) = sink.messages
    body = mail.get_payload(decode=True).decode()
    (stop_link,) = re.findall(r"Stop these messages: (\S+)", body)
    assert mail["List-Unsubscribe"] == f"<{stop_link}>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = urlsplit(stop_link)
    assert (url.scheme, url.netloc) == ("https", "pay.example")
    # a person (or a scanner) opening the body's link gets the page, not a 405
    page = world.client.get(url.path)
    assert (page.status_code, page.headers["content-type"][:9]) == (200, "text/html")
    assert set(_states(world, c["id"]).values()) == {"granted"}
    # the mail client's RFC 8058 POST withdraws
    r = world.client.post(
        url.path,
        content=mail["List-Unsubscribe-Post"].encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200, r.text
    assert {x["state"] for x in r.json()["consents"]} == {"withdrawn"}
    assert set(_states(world, c["id"]).values()) == {"withdrawn"}
