"""Cursor pagination: limit bounds, starting_after, has_more, newest first, merchant scoping."""

from __future__ import annotations

from datetime import timedelta

import pytest

from api.db import session_factory, session_scope, utcnow
from api.webhooks import service as webhooks
from tests.api.conftest import auth


@pytest.fixture
def endpoints(db) -> dict[str, list[str]]:
    """25 endpoints for m_a (some sharing a created_at, to exercise the id tie-break), 3 for m_b.
    m_a's are disabled as they are made (the list shows them all; a merchant may have only 16
    enabled ones).

    Returns the expected newest-first id order per merchant.
    """
    base = utcnow() - timedelta(hours=1)
    made: dict[str, list[tuple]] = {"m_a": [], "m_b": []}
    with session_scope(session_factory(db)) as s:
        for i in range(25):
            created = base + timedelta(seconds=i // 3)  # groups of 3 share a timestamp
            e, _ = webhooks.create_endpoint(s, "m_a", "http://127.0.0.1/a", ["*"], now=created)
            webhooks.disable_endpoint(s, e.id, merchant_id="m_a", now=created)
            made["m_a"].append((e.created_at, e.id))
        for i in range(3):
            e, _ = webhooks.create_endpoint(
                s, "m_b", "http://127.0.0.1/b", ["*"], now=base + timedelta(minutes=5, seconds=i)
            )
            made["m_b"].append((e.created_at, e.id))
    _CREATED.update({i: c.timestamp() for rows in made.values() for c, i in rows})
    return {m: [i for _, i in sorted(rows, reverse=True)] for m, rows in made.items()}


_CREATED: dict[str, float] = {}


def _created_of(ids: list[str]) -> list[float]:
    return [_CREATED[i] for i in ids]


def _page(client, key, **params):
    r = client.get("/v1/webhook_endpoints", params=params, headers=auth(key))
    assert r.status_code == 200, r.text
    return r.json()


class TestPagination:
    def test_default_page_is_ten_newest_first(self, client, new_key, endpoints):
        page = _page(client, new_key(merchant_id="m_a"))
        assert page["object"] == "list"
        assert page["url"] == "/v1/webhook_endpoints"
        created = [e["created"] for e in page["data"]]
        assert len(created) == 10
        assert created == sorted(created, reverse=True)
        assert max(created) == int(max(_created_of(endpoints["m_a"])))
        assert page["has_more"] is True

    def test_walk_all_pages(self, client, new_key, endpoints):
        key = new_key(merchant_id="m_a")
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params = {"limit": 7}
            if cursor:
                params["starting_after"] = cursor
            page = _page(client, key, **params)
            pages += 1
            seen += [e["id"] for e in page["data"]]
            if not page["has_more"]:
                break
            cursor = page["data"][-1]["id"]
        # the keyset walk agrees with one big page (whatever the database collation of ids)
        assert seen == [e["id"] for e in _page(client, key, limit=100)["data"]]
        assert sorted(seen) == sorted(endpoints["m_a"])
        assert pages == 4  # 7 + 7 + 7 + 4

    def test_exact_multiple_has_no_phantom_page(self, client, new_key, endpoints):
        key = new_key(merchant_id="m_b")
        page = _page(client, key, limit=3)
        assert {e["id"] for e in page["data"]} == set(endpoints["m_b"])
        assert [e["id"] for e in page["data"]] == endpoints["m_b"]  # distinct timestamps
        assert page["has_more"] is False

    @pytest.mark.parametrize("limit", [0, 101, -1])
    def test_limit_bounds(self, client, new_key, limit):
        r = client.get(f"/v1/webhook_endpoints?limit={limit}", headers=auth(new_key()))
        assert r.status_code == 422
        assert r.json()["error"]["param"] == "limit"

    def test_ending_before_is_refused_not_ignored(self, client, new_key, endpoints):
        """A Stripe client paging backwards got the first page again, for ever."""
        key = new_key(merchant_id="m_a")
        second = _page(client, key, limit=10, starting_after=endpoints["m_a"][9])
        r = client.get(
            "/v1/webhook_endpoints",
            params={"ending_before": second["data"][0]["id"]},
            headers=auth(key),
        )
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "ending_before"

    def test_limit_100_allowed(self, client, new_key, endpoints):
        page = _page(client, new_key(merchant_id="m_a"), limit=100)
        assert len(page["data"]) == 25
        assert page["has_more"] is False

    def test_other_merchants_cursor_is_rejected(self, client, new_key, endpoints):
        r = client.get(
            "/v1/webhook_endpoints",
            params={"starting_after": endpoints["m_b"][0]},
            headers=auth(new_key(merchant_id="m_a")),
        )
        assert r.status_code == 404
        err = r.json()["error"]
        assert (err["code"], err["param"]) == ("resource_missing", "starting_after")

    def test_scoping_and_admin_sees_all(self, client, new_key, endpoints):
        b = _page(client, new_key(merchant_id="m_b"), limit=100)
        assert {e["merchant_id"] for e in b["data"]} == {"m_b"}
        everything = _page(client, new_key("admin", None), limit=100)
        assert len(everything["data"]) == 28


@pytest.mark.parametrize(
    "path",
    [
        "/v1/contacts",
        "/v1/merchants",
        "/v1/feedback",
        "/v1/followups",
        "/v1/audit_log",
        "/v1/payments",
        "/v1/invoices",
        "/v1/webhook_endpoints",
    ],
)
@pytest.mark.parametrize("cursor", ["9" * 20, "9" * 64, "1e3"])  # others fail validation (422)
def test_a_cursor_that_is_no_id_is_a_missing_object_not_a_500(client, new_key, path, cursor):
    """A cursor past BIGINT overflowed SQLite's parameter binding (a 500)."""
    r = client.get(path, params={"starting_after": cursor}, headers=auth(new_key(merchant_id="1")))
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("resource_missing", "starting_after")


def test_a_cursor_that_left_the_filter_still_continues_the_walk(db, endpoints):
    """Page 1 of a filtered list, then its last object leaves the filter (an invoice paid, a
    follow-up sent): page 2 continues after it — looked up without the filter — not a 404."""
    from sqlmodel import col

    from api.errors import NotFound
    from api.pagination import PageParams, paginate
    from api.webhooks import repository
    from api.webhooks.models import WebhookEndpoint

    def enabled_page(session, after=None, cursor_in=None):
        stmt = repository.endpoints_select("m_b").where(col(WebhookEndpoint.enabled))
        rows, more = paginate(
            session,
            stmt,
            created_at=WebhookEndpoint.created_at,
            id=WebhookEndpoint.id,
            page=PageParams(limit=1, starting_after=after),
            cursor_in=cursor_in,
        )
        return [r.id for r in rows], more

    newest, second, third = endpoints["m_b"]
    with session_scope(session_factory(db)) as s:
        assert enabled_page(s) == ([newest], True)
        webhooks.disable_endpoint(s, newest, merchant_id="m_b", now=utcnow())
        with pytest.raises(NotFound):  # looked up under the filter, the cursor is gone
            enabled_page(s, after=newest)
        scoped = repository.endpoints_select("m_b")
        assert enabled_page(s, after=newest, cursor_in=scoped) == ([second], True)
        assert enabled_page(s, after=second, cursor_in=scoped) == ([third], False)
        # the unfiltered scope is still the merchant's: another merchant's id stays a 404
        with pytest.raises(NotFound):
            enabled_page(s, after=endpoints["m_a"][0], cursor_in=scoped)
