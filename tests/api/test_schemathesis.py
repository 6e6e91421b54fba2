"""Property-based run of the OpenAPI document against the app (SQLite, real authentication).

Every operation gets generated requests; no response may be a 5xx and every response must match
the documented schema (status codes, bodies, the error shape). Driven with hypothesis directly:
schemathesis's pytest plugin does not support this pytest version.
"""

from __future__ import annotations

import uuid

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient

from api.app import create_app
from api.db import make_engine, session_factory, session_scope, upgrade
from api.keys.service import create_key
from api.settings import get_settings
from tests.api.conftest import TEST_CONFIG


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{home / 'fuzz.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    with session_scope(session_factory(engine)) as s:
        _, key = create_key(s, "m_fuzz", "merchant", False)
    app = create_app(get_settings(home=home), engine=engine, config=TEST_CONFIG)
    yield app, key
    engine.dispose()


def test_every_operation_conforms_to_the_schema(fuzz_app) -> None:
    app, key = fuzz_app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    with TestClient(app) as client:
        for operation in operations:

            @hypothesis.given(case=operation.as_strategy())
            @hypothesis.settings(
                max_examples=20,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            def run(case) -> None:
                if case.method == "POST":  # a reused key with another body is a legitimate 400
                    case.headers = {**(case.headers or {}), "Idempotency-Key": uuid.uuid4().hex}
                response = case.call(session=client, headers={"Authorization": f"Bearer {key}"})
                assert response.status_code < 500, (case.method, case.path, response.text)
                case.validate_response(response)

            run()
