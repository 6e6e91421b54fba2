"""One error shape for every 4xx/5xx, and the request transaction rules."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.testclient import TestClient
from pydantic import BaseModel

from api.deps import AfterCommit, CurrentKey, SessionDep
from api.errors import NotFound
from api.keys.models import ApiKeyRecord
from api.routing import ApiRouter
from tests.api.conftest import auth

SECRETISH = "fp_live_" + "S3cr3t" * 8


class DuplicateThing(Exception):
    """Shaped like a crm/wallet domain error: class attributes only, no import of api."""

    status_code = 409
    code = "duplicate_thing"
    type = "conflict_error"
    param = "name"


class ChainDown(Exception):
    status_code = 502
    code = "chain_unavailable"


class Echo(BaseModel):
    n: int


def _router(calls: list[str], kind: type[APIRouter]) -> APIRouter:
    router = kind(prefix="/test")

    @router.get("/boom")
    def boom() -> None:
        raise RuntimeError(f"database password is {SECRETISH}")

    @router.get("/domain")
    def domain() -> None:
        raise DuplicateThing("A thing with this name exists.")

    @router.get("/domain5xx")
    def domain5xx() -> None:
        raise ChainDown(f"rpc at https://user:{SECRETISH}@node failed")

    @router.get("/missing")
    def missing_obj() -> None:
        raise NotFound("No such thing: 'th_1'.", param="id")

    @router.post("/echo")
    def echo(body: Echo) -> Echo:
        return body

    @router.post("/write-then-fail")
    def write_then_fail(session: SessionDep, key: CurrentKey, after: AfterCommit) -> None:
        session.execute(
            sa.update(ApiKeyRecord).where(ApiKeyRecord.id == key.id).values(name="written")
        )
        after.append(lambda: calls.append("after-commit"))
        raise DuplicateThing("nope")

    @router.post("/commit-fails")
    def commit_fails(session: SessionDep, key: CurrentKey, after: AfterCommit) -> dict[str, str]:
        # a second row with the same key_hash: the UNIQUE violation surfaces at commit time
        row = session.get(ApiKeyRecord, key.id)
        assert row is not None
        clone = ApiKeyRecord(**{**row.model_dump(), "id": "key_clone"})
        session.add(clone)
        after.append(lambda: calls.append("after-commit"))
        return {"status": "ok"}

    @router.post("/write-then-bad-result")
    def write_then_bad_result(session: SessionDep, key: CurrentKey) -> Echo:
        session.execute(
            sa.update(ApiKeyRecord).where(ApiKeyRecord.id == key.id).values(name="written")
        )
        return {"n": "not a number"}  # type: ignore[return-value]

    @router.post("/write-ok")
    def write_ok(session: SessionDep, key: CurrentKey, after: AfterCommit) -> dict[str, str]:
        session.execute(
            sa.update(ApiKeyRecord).where(ApiKeyRecord.id == key.id).values(name="committed")
        )
        after.append(lambda: calls.append("after-commit"))
        return {"status": "ok"}

    return router


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture(params=[ApiRouter, APIRouter], ids=["unit_of_work", "plain_router"])
def tclient(request, make_app, calls):
    """Our routers commit inside the endpoint's thread call; a plain FastAPI router's routes
    commit in the session dependency: both must keep the transaction rules."""
    with TestClient(make_app(routers=[_router(calls, request.param)])) as c:
        yield c


def _error(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "code", "message", "param"}
    return body["error"]


class TestErrorShape:
    def test_unknown_route_is_resource_missing(self, client):
        r = client.get("/v1/nope")
        assert r.status_code == 404
        err = _error(r)
        assert (err["type"], err["code"]) == ("invalid_request_error", "resource_missing")
        assert "/v1/nope" in err["message"]

    def test_method_not_allowed(self, client):
        r = client.put("/v1/health")
        assert r.status_code == 405
        assert _error(r)["code"] == "method_not_allowed"
        assert "GET" in r.headers["allow"]

    @pytest.mark.parametrize(
        ("path", "allowed"),
        [
            ("/v1/api_keys", "GET, POST"),
            ("/v1/webhook_endpoints", "GET, POST"),
            ("/v1/webhook_endpoints/we_x", "DELETE, GET, POST"),
        ],
    )
    def test_allow_names_every_method_of_the_path(self, client, path, allowed):
        """Starlette named only the first route whose path matched (Allow: POST, though GET
        works), which misleads clients and CORS tooling."""
        r = client.put(path)
        assert r.status_code == 405
        assert r.headers["allow"] == allowed

    def test_validation_error_names_the_field_path(self, client, new_key):
        key = new_key()
        r = client.post(
            "/v1/webhook_endpoints",
            json={"url": "http://127.0.0.1/x", "enabled_events": [{"bad": 1}]},
            headers=auth(key),
        )
        assert r.status_code == 422
        err = _error(r)
        assert err["type"] == "invalid_request_error"
        assert err["code"] == "parameter_invalid"
        assert err["param"] == "enabled_events[0]"

    def test_missing_field_is_parameter_missing(self, client, new_key):
        r = client.post(
            "/v1/webhook_endpoints", json={"enabled_events": ["*"]}, headers=auth(new_key())
        )
        err = _error(r)
        assert r.status_code == 422
        assert (err["code"], err["param"]) == ("parameter_missing", "url")

    def test_query_validation(self, client, new_key):
        r = client.get("/v1/webhook_endpoints?limit=0", headers=auth(new_key()))
        assert r.status_code == 422
        assert _error(r)["param"] == "limit"

    def test_invalid_json(self, tclient):
        r = tclient.post(
            "/v1/test/echo", content=b'{"n": ', headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 422
        assert _error(r)["code"] == "parameter_invalid"

    def test_unhandled_exception_is_generic_500_and_logged(self, tclient, caplog):
        with caplog.at_level(logging.ERROR, logger="followpay.api"):
            r = tclient.get("/v1/test/boom")
        assert r.status_code == 500
        err = _error(r)
        assert (err["type"], err["code"]) == ("api_error", "api_error")
        assert SECRETISH not in r.text
        assert "Traceback" not in r.text
        assert "RuntimeError" not in r.text
        logged = "\n".join(rec.getMessage() for rec in caplog.records)
        assert "RuntimeError" in logged
        assert "Traceback" in logged
        assert "S3cr3t" not in logged

    def test_duck_typed_domain_error(self, tclient):
        r = tclient.get("/v1/test/domain")
        assert r.status_code == 409
        assert _error(r) == {
            "type": "conflict_error",
            "code": "duplicate_thing",
            "message": "A thing with this name exists.",
            "param": "name",
        }

    def test_domain_5xx_hides_its_message(self, tclient):
        r = tclient.get("/v1/test/domain5xx")
        assert r.status_code == 502
        err = _error(r)
        assert err["code"] == "chain_unavailable"
        assert err["type"] == "api_error"
        assert SECRETISH not in r.text

    def test_api_error(self, tclient):
        r = tclient.get("/v1/test/missing")
        assert r.status_code == 404
        assert _error(r)["param"] == "id"

    def test_unauthenticated(self, client):
        r = client.get("/v1/api_keys")
        assert r.status_code == 401
        assert _error(r)["type"] == "authentication_error"
        assert r.headers["www-authenticate"].startswith("Bearer")


class TestRequestTransaction:
    def test_error_rolls_back_and_skips_after_commit(self, tclient, db, new_key, calls):
        key = new_key()
        r = tclient.post("/v1/test/write-then-fail", headers=auth(key))
        assert r.status_code == 409
        with db.connect() as conn:
            names = conn.execute(sa.text("SELECT name FROM api_keys")).scalars().all()
        assert names == [None]
        assert calls == []

    def test_success_commits_then_runs_after_commit(self, tclient, db, new_key, calls):
        r = tclient.post("/v1/test/write-ok", headers=auth(new_key()))
        assert r.status_code == 200
        with db.connect() as conn:
            names = conn.execute(sa.text("SELECT name FROM api_keys")).scalars().all()
        assert names == ["committed"]
        assert calls == ["after-commit"]

    def test_a_result_that_fails_its_model_is_a_500_and_rolls_back(self, tclient, db, new_key):
        r = tclient.post("/v1/test/write-then-bad-result", headers=auth(new_key()))
        assert r.status_code == 500
        assert _error(r)["code"] == "api_error"
        with db.connect() as conn:
            assert conn.execute(sa.text("SELECT name FROM api_keys")).scalars().all() == [None]

    def test_failed_commit_is_an_error_not_a_200(self, tclient, db, new_key, calls):
        r = tclient.post("/v1/test/commit-fails", headers=auth(new_key()))
        assert r.status_code == 500
        assert _error(r)["code"] == "api_error"
        assert calls == []
        with db.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM api_keys")).scalar() == 1


class TestOpenAPI:
    def test_docs_and_schema_served(self, client):
        assert client.get("/docs").status_code == 200
        schema = client.get("/openapi.json").json()
        assert all(path.startswith("/v1/") for path in schema["paths"])
        create = schema["paths"]["/v1/webhook_endpoints"]["post"]
        assert any(p["name"] == "Idempotency-Key" for p in create["parameters"])
        for status in ("401", "404", "422", "500"):
            ref = create["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ErrorResponse")
        assert "HTTPValidationError" not in schema["components"]["schemas"]

    def test_health(self, client):
        r = client.get("/v1/health")
        assert r.status_code == 200
        assert r.json()["status"] == "ok"


def _key_count(db) -> int:
    with db.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(ApiKeyRecord)).scalar_one())


@pytest.mark.parametrize("name", ['"a\\ud800"', '"\\udc00b"', '"\\ude00\\ud83d"'])
def test_a_lone_surrogate_is_refused_before_anything_is_written(db, client, new_key, name):
    """Valid JSON, not text: PostgreSQL's driver refused it (a 500), and SQLite stored it, so
    every later read of the row failed to render (a 500 each time)."""
    key = new_key("admin", None)
    before = _key_count(db)
    body = ('{"role": "admin", "name": ' + name + "}").encode()
    r = client.post(
        "/v1/api_keys",
        content=body,
        headers={**auth(key), "Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert "surrogate" in r.json()["error"]["message"]
    assert _key_count(db) == before


def test_a_surrogate_pair_is_one_character_and_accepted(client, new_key):
    """``ensure_ascii`` encoders write an emoji as a pair of escapes."""
    body = b'{"role": "admin", "name": "shop \\ud83d\\ude00"}'
    r = client.post(
        "/v1/api_keys",
        content=body,
        headers={**auth(new_key("admin", None)), "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "shop \U0001f600"


class TestRedact:
    @pytest.mark.parametrize(
        ("text", "leak"),
        [
            ("key fp_test_" + "a" * 43 + " failed", "a" * 43),
            ("secret whsec_abcDEF123_-x here", "abcDEF123"),
            ("postgresql://app:hunter2@db/x", "hunter2"),
            ("header Authorization: Bearer tok.en-123", "tok.en-123"),
            ('"GET /v1/public/feedback/Zq9_x-1?rating=5 HTTP/1.1" 200', "Zq9_x-1"),
            ("POST /v1/public/consent/Zq9_x-1/withdraw", "Zq9_x-1"),
            ("GET /v1/public/messages/Zq9_x-1", "Zq9_x-1"),
            ('"GET /v1/public/checkout/inv_7Hq2.Qx7Yk2mZp9LrT3vW8n HTTP/1.1" 200', "Qx7Yk2mZp9"),
            ("rpc https://mainnet.example.io/v3/" + "k" * 32 + " timed out", "k" * 32),
            # the access log prints the raw path: a percent-encoded prefix reaches the route too
            ('"GET /v1/public/%66eedback/Zq9_x-1/rate HTTP/1.1" 200', "Zq9_x-1"),
            ('"POST /v1/public%2Fconsent/Zq9_x-1/withdraw HTTP/1.1" 303', "Zq9_x-1"),
        ],
    )
    def test_masks_known_secret_shapes(self, text, leak):
        from api.errors import redact

        out = redact(text)
        assert leak not in out
        assert "[REDACTED]" in out

    @pytest.mark.parametrize("exc", [RuntimeError("boom"), ChainDown("rpc down")])
    def test_a_5xx_on_a_customer_link_never_logs_its_token(self, exc, caplog):
        """A database or node failure under a public route logs where it happened, masked."""
        from api.errors import render_exception

        token = "T0ken_" + "y" * 30
        with caplog.at_level(logging.ERROR, logger="followpay.api"):
            response = render_exception(
                exc, method="POST", path=f"/v1/public/consent/{token}/withdraw"
            )
        assert response.status_code in (500, 502)
        logged = "\n".join(rec.getMessage() for rec in caplog.records)
        assert "POST /v1/public/consent/[REDACTED]/withdraw" in logged
        assert token not in logged

    def test_the_access_log_never_prints_a_customer_link_token(self, make_app, caplog):
        """uvicorn's access logger, after the app is built: the path's token is masked."""
        import logging

        make_app()
        token = "T0ken_" + "x" * 30
        with caplog.at_level(logging.INFO, logger="uvicorn.access"):
            logging.getLogger("uvicorn.access").info(
                '%s - "%s %s HTTP/%s" %d',
                "127.0.0.1:5000",
                "GET",
                f"/v1/public/feedback/{token}?rating=2",
                "1.1",
                200,
            )
        (record,) = [r for r in caplog.records if r.name == "uvicorn.access"]
        assert token not in record.getMessage()
        assert "/v1/public/feedback/[REDACTED]?rating=2" in record.getMessage()
        # uvicorn's own formatter unpacks record.args: the masked record must still format
        from uvicorn.logging import AccessFormatter

        line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(
            record
        )
        request = "GET /v1/public/feedback/[REDACTED]?rating=2 HTTP/1.1"
        assert line == f'127.0.0.1:5000 - "{request}" 200 OK'


@pytest.mark.parametrize(
    ("path", "param", "value"),
    [
        ("/v1/metrics", "end", "0001-01-02T00:00:00Z"),
        ("/v1/reconciliation", "start", "0001-01-01T00:00:00+01:00"),
        ("/v1/invoices", "created_gte", "0001-01-01T00:00:00+01:00"),
        ("/v1/invoices", "created_lt", "9999-12-31T23:59:59-01:00"),
    ],
)
def test_a_time_out_of_range_is_a_validation_error_not_a_500(client, new_key, path, param, value):
    """Year 1 less a 30-day period, or shifted to UTC, overflowed (a 500)."""
    r = client.get(path, params={param: value}, headers=auth(new_key(merchant_id="1")))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("method", "path", "params", "body"),
    [
        ("GET", "/v1/webhook_endpoints/we_%00", None, None),
        ("GET", "/v1/invoices", {"order_id": "a\x00"}, None),
        ("POST", "/v1/api_keys", None, {"role": "admin", "name": "a\x00"}),
    ],
)
def test_a_nul_character_is_a_client_error_not_a_500(
    db, client, new_key, method, path, params, body
):
    """PostgreSQL refuses NUL in text (psycopg's DataError was a 500); SQLite stored it, so a
    body's NUL is refused before anything is written, on both."""
    key = new_key("admin", None)
    before = _key_count(db)
    r = client.request(method, path, params=params, json=body, headers=auth(key))
    assert r.status_code < 500, r.text
    if db.dialect.name == "postgresql" or body is not None:  # a body's: refused on both
        assert r.status_code == 400, r.text
        assert r.json()["error"]["message"] == "Text may not contain NUL (0x00) characters."
        assert _key_count(db) == before
