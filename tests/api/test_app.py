"""The factory: the lifespan owns an engine built from settings when none is passed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.app import create_app
from api.db import upgrade
from api.deps import ApiConfig
from api.settings import get_settings
from tests.api.conftest import TEST_CONFIG, auth


def test_lifespan_builds_the_default_sqlite_engine(tmp_path):
    home = tmp_path / "home"
    app = create_app(get_settings(home=home), config=TEST_CONFIG)
    assert app.state.engine is None
    with TestClient(app) as client:
        assert client.get("/v1/health").json()["database"] == "ok"
        assert app.state.engine is not None
    assert (home / "followpay.sqlite3").exists()
    assert app.state.engine is None  # disposed and dropped at shutdown


def test_database_url_from_settings(tmp_path):
    url = f"sqlite:///{tmp_path / 'explicit.sqlite3'}"
    upgrade(url)
    app = create_app(get_settings(home=tmp_path / "unused", database_url=url), config=TEST_CONFIG)
    with TestClient(app) as client:
        r = client.get("/v1/api_keys", headers=auth("fp_test_" + "a" * 43))
    assert r.status_code == 401  # reached the api_keys table of the configured database
    assert not (tmp_path / "unused" / "followpay.sqlite3").exists()


def test_http_limits_come_from_the_environment(tmp_path, monkeypatch):
    """The ``FOLLOWPAY_API_*`` variables docs/operations.md lists reach the running app."""
    monkeypatch.setenv("FOLLOWPAY_API_RATE_LIMIT_PER_SECOND", "0.01")
    monkeypatch.setenv("FOLLOWPAY_API_RATE_LIMIT_BURST", "3")
    monkeypatch.setenv("FOLLOWPAY_API_CORS_ORIGINS", "https://shop.example, https://b.example")
    monkeypatch.setenv("FOLLOWPAY_API_DOCS", "false")
    monkeypatch.setenv("FOLLOWPAY_API_IDEMPOTENCY_TTL_SECONDS", "3600")
    settings = get_settings(home=tmp_path)
    config = ApiConfig.from_settings(settings)
    assert config.cors_origins == ("https://shop.example", "https://b.example")
    assert config.idempotency_ttl == timedelta(hours=1)
    with TestClient(create_app(settings)) as client:
        assert client.get("/docs").status_code == 404  # the burst's first request
        codes = [client.get("/v1/api_keys").status_code for _ in range(3)]
    assert codes == [401, 401, 429]  # the burst of three is spent


def test_a_bad_http_limit_names_its_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FOLLOWPAY_API_MAX_IN_FLIGHT", "0")
    with pytest.raises(ValidationError, match="api_max_in_flight"):
        get_settings(home=tmp_path)
