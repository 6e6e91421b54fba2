"""The factory: the lifespan owns an engine built from settings when none is passed."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.app import create_app
from api.db import upgrade
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
