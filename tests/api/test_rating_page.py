"""The messages' rating links: a GET confirmation page with the link's rating preselected
(nothing recorded, whoever opens it: a mail scanner, a link preview, the person) whose button
POSTs the choice."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from aiosmtpd.controller import Controller

from api.db import session_factory, session_scope
from api.dispatch.channels import EmailChannel, Links, Recipient
from crm import followups
from crm.followups import repository as followups_repo
from tests.api.conftest import auth, free_port
from tests.api.test_consent_page import _Sink
from tests.api.test_privacy import sent_instruction
from tests.api.test_resources_crm import (
    World,
    grant,
    issue_token,
    new_contact,
    world,  # noqa: F401 - the fixture
)

BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


def _token(w: World) -> str:
    c = new_contact(w, w.a)
    grant(w, w.a, c["id"])
    token, _ = issue_token(w, w.a, c["id"])
    return token


def _dead_token(w: World, case: str) -> str:
    """A rating link that no longer works: ``unknown`` (altered) or ``expired`` (15 days on)."""
    token = _token(w)
    if case == "unknown":
        return token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    w.clock.advance(days=15)
    return token


def _recorded(w: World) -> list:
    return w.client.get("/v1/feedback", headers=auth(w.a.merchant)).json()["data"]


class TestConfirmationPage:
    def test_opening_a_rating_link_preselects_it_and_records_nothing(
        self,
        world: World,  # noqa: F811
    ) -> None:
        token = _token(world)
        for _ in range(3):  # a scanner, a preview, the person
            r = world.client.get(f"/v1/public/feedback/{token}/rate?rating=2", headers=BROWSER)
            assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        checked = re.findall(
            r'<input type="radio" name="rating" value="(\d)" required checked>', r.text
        )
        assert checked == ["2"]
        assert len(re.findall(r'name="rating"', r.text)) == 5
        assert re.search(r'<form method="post">', r.text)
        assert "<script" not in r.text.lower()
        assert token not in r.text
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-store"
        assert world.client.get(f"/v1/public/feedback/{token}").json()["state"] == "pending"
        assert _recorded(world) == []
        assert world.client.get("/v1/tickets", headers=auth(world.a.support)).json()["data"] == []

    def test_its_button_records_the_choice_once_and_answers_a_page(
        self,
        world: World,  # noqa: F811
    ) -> None:
        token = _token(world)
        url = f"/v1/public/feedback/{token}/rate"
        r = world.client.post(url + "?rating=5", data={"rating": "2"}, headers=BROWSER)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/html")
        assert "Your rating: 2 of 5." in r.text
        assert "within 24 h" in r.text  # a low rating opened a ticket
        assert [f["rating"] for f in _recorded(world)] == [2]  # the form's value, not the URL's
        again = world.client.post(url, data={"rating": "5"}, headers=BROWSER)
        assert "Your rating: 2 of 5." in again.text
        page = world.client.get(url + "?rating=5", headers=BROWSER)
        assert "Your rating: 2 of 5." in page.text
        assert 'name="rating"' not in page.text
        assert [f["rating"] for f in _recorded(world)] == [2]
        assert (
            len(world.client.get("/v1/tickets", headers=auth(world.a.support)).json()["data"]) == 1
        )

    @pytest.mark.parametrize(
        "body",
        [
            "",
            "rating=9",
            "rating=two",
            "&".join(f"f{n}=1" for n in range(20)),
            "rating=%C2%B2",  # '²': isdigit() but not int() (a 500)
            "rating=%E2%91%A0",  # '①'
            "rating=1" + "0" * 5000,  # past int()'s digit limit
        ],
    )
    def test_a_bad_form_is_a_422_and_records_nothing(
        self,
        world: World,  # noqa: F811
        body: str,
    ) -> None:
        token = _token(world)
        r = world.client.post(
            f"/v1/public/feedback/{token}/rate",
            content=body,
            headers={**BROWSER, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 422, r.text
        assert _recorded(world) == []

    @pytest.mark.parametrize("case", ["unknown", "expired"])
    def test_a_bad_link_shows_why_as_a_page(
        self,
        world: World,  # noqa: F811
        case: str,
    ) -> None:
        token = _dead_token(world, case)
        r = world.client.get(f"/v1/public/feedback/{token}/rate?rating=1", headers=BROWSER)
        assert r.status_code == (404 if case == "unknown" else 400)
        assert r.headers["content-type"].startswith("text/html")
        assert "This link does not work" in r.text


def _reverse_its_payment(w: World, followup_id: int) -> None:
    """What a reorg does to a sent survey's sale: the purchase is cancelled, the link stays."""
    with session_scope(session_factory(w.engine)) as s:
        followup = followups_repo.get(s, int(w.a.id), followup_id)
        assert followup is not None
        payment_ref = followup.payment_ref
        followups.cancel_for_payment(s, int(w.a.id), payment_ref, "reorg", w.clock)


class TestDeadLinksAnswerPages:
    """The page's button on a link that stopped working answered the browser with raw JSON."""

    @pytest.mark.parametrize("case", ["unknown", "expired"])
    def test_the_button_on_a_bad_link_gets_a_page(
        self,
        world: World,  # noqa: F811
        case: str,
    ) -> None:
        token = _dead_token(world, case)  # expired: the page was opened, then the link expired
        r = world.client.post(
            f"/v1/public/feedback/{token}/rate", data={"rating": "4"}, headers=BROWSER
        )
        assert r.status_code == (404 if case == "unknown" else 400)
        assert r.headers["content-type"].startswith("text/html")
        assert "This link does not work" in r.text
        assert _recorded(world) == []

    def test_a_reversed_sale_offers_no_form_and_its_button_records_nothing(
        self,
        world: World,  # noqa: F811
    ) -> None:
        """The GET page offered the five ratings for a sale a reorg took back; its button then
        answered a JSON 409. Now the page says why, and a POST from a page opened before the
        reorg gets a page too (a script still gets the JSON error)."""
        c = new_contact(world, world.a)
        grant(world, world.a, c["id"])
        token, followup_id = issue_token(world, world.a, c["id"])
        _reverse_its_payment(world, followup_id)
        page = world.client.get(f"/v1/public/feedback/{token}/rate?rating=4", headers=BROWSER)
        assert page.status_code == 409
        assert page.headers["content-type"].startswith("text/html")
        assert 'name="rating"' not in page.text
        assert "reversed" in page.text
        url = f"/v1/public/feedback/{token}/rate"
        r = world.client.post(url, data={"rating": "4"}, headers=BROWSER)
        assert (r.status_code, r.headers["content-type"].split(";")[0]) == (409, "text/html")
        script = world.client.post(url, data={"rating": "4"})
        assert script.json()["error"]["code"] == "feedback_payment_reversed"
        assert _recorded(world) == []


def test_the_emails_rating_links_record_only_when_confirmed(world: World) -> None:  # noqa: F811
    """Every link in the delivered e-mail opened, as a scanner does, records nothing; the page's
    button does."""
    c = new_contact(world, world.a)
    grant(world, world.a, c["id"])
    sink = _Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        channel = EmailChannel("127.0.0.1", controller.port, "f@pay.example", Links("https://p.ex"))
        instruction = sent_instruction(world, c["id"])
        channel.send(None, instruction, Recipient("Acme", "UTC", world.clock.now()))
    finally:
        controller.stop()
    (mail,) = sink.messages
    body = mail.get_payload(decode=True).decode()
    links = [urlsplit(u) for u in re.findall(r"https://p\.ex\S+", body)]
    assert len(links) == 6  # five ratings and "Stop these messages"
    for link in links:
        r = world.client.get(f"{link.path}?{link.query}", headers=BROWSER)
        assert r.status_code == 200
    assert _recorded(world) == []
    assert (
        world.client.get(f"/v1/public/consent/{instruction.token}").json()["consents"][0]["state"]
        == "granted"
    )
    (two,) = [u for u in links if u.query == "rating=2"]
    r = world.client.post(two.path, data={"rating": "2"})
    assert (r.json()["state"], r.json()["rating"]) == ("recorded", 2)
    assert [f["rating"] for f in _recorded(world)] == [2]


def test_a_page_expired_while_open_is_a_400(world: World) -> None:  # noqa: F811
    token = _token(world)
    world.clock.advance(timedelta(days=15))
    r = world.client.post(f"/v1/public/feedback/{token}/rate", data={"rating": "4"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "feedback_token_expired"


@pytest.mark.parametrize("rating", [1, 4])
def test_a_legacy_rating_link_leads_to_the_page_and_records_nothing(
    world: World,  # noqa: F811
    rating: int,
) -> None:
    """Messages sent before the confirmation page linked ``GET /feedback/{token}?rating=N``:
    it sends the browser to the page with the same rating preselected, and records nothing."""
    token = _token(world)
    r = world.client.get(
        f"/v1/public/feedback/{token}?rating={rating}", headers=BROWSER, follow_redirects=False
    )
    assert r.status_code == 303
    assert r.headers["location"] == f"./{token}/rate?rating={rating}"  # relative: keeps a prefix
    page = world.client.get(f"/v1/public/feedback/{token}?rating={rating}", headers=BROWSER)
    assert page.status_code == 200
    checked = re.findall(
        r'<input type="radio" name="rating" value="(\d)" required checked>', page.text
    )
    assert checked == [str(rating)]
    assert _recorded(world) == []
    assert world.client.get(f"/v1/public/feedback/{token}").json()["state"] == "pending"
    bad = world.client.get(f"/v1/public/feedback/{token}?rating=9", follow_redirects=False)
    assert bad.status_code == 422


def test_links_work_under_a_base_url_with_a_trailing_slash(world: World) -> None:  # noqa: F811
    """FOLLOWPAY_PUBLIC_BASE_URL="https://pay.example/" made every rating and unsubscribe
    link "https://pay.example//v1/...": a 404 in every message."""
    from api.settings import Settings

    base = Settings(public_base_url="https://pay.example/").public_base_url
    assert base == "https://pay.example"
    token = _token(world)
    for links in (Links(base), Links("https://pay.example//")):
        for url in (links.rating(token, 4), links.withdraw(token)):
            parts = urlsplit(url)
            assert parts.netloc == "pay.example"
            r = world.client.get(f"{parts.path}?{parts.query}", headers=BROWSER)
            assert r.status_code == 200, url


@pytest.mark.parametrize(
    "value", ["pay.example", "ftp://pay.example", "https://", "https://a/?x=1"]
)
def test_a_public_base_url_that_cannot_carry_links_is_refused(value: str) -> None:
    from pydantic import ValidationError

    from api.settings import Settings

    with pytest.raises(ValidationError, match="public_base_url"):
        Settings(public_base_url=value)
