"""Property-based run of the OpenAPI document against the app (SQLite, real authentication).

Every operation gets generated requests; no response may be a 5xx and every response must match
the documented schema (status codes, bodies, the error shape). Driven with hypothesis directly:
schemathesis's pytest plugin does not support this pytest version.
"""

from __future__ import annotations

import os
import uuid

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api.app import create_app
from api.db import make_engine, session_factory, session_scope, upgrade
from api.deps import ChainInfo
from api.keys.service import create_key
from api.operators import OperatorKeys
from api.settings import get_settings
from api.settlement import invoices
from crm import ContactCreate, KeyRing, MerchantCreate, SystemClock, consent, contacts, merchants
from tests.api.conftest import TEST_CONFIG
from wallet.secrets import PrivateKey
from wallet.signing import Signer


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    """A real merchant with a contact, consent, a chain account and an operator signer, so the
    resource routes run their domain code (not only their 404 paths)."""
    home = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{home / 'fuzz.sqlite3'}"
    upgrade(url)
    engine = make_engine(url)
    operator = Signer(PrivateKey(os.urandom(32)))
    chain = ChainInfo(chain_id=31337, router="0x" + "12" * 20, token="0x" + "34" * 20, decimals=6)
    clock = SystemClock()
    keyring = KeyRing(os.urandom(32))
    with session_scope(session_factory(engine)) as s:
        merchant = merchants.create_merchant(s, MerchantCreate(name="Fuzz"), clock)
        mid = merchant.id or 0
        _, key = create_key(s, str(mid), "merchant", False)
        invoices.register_account(
            s,
            mid,
            chain_id=chain.chain_id,
            address="0x" + "56" * 20,
            payout="0x" + "56" * 20,
            operator=operator.address,
            clock=clock,
        )
        contact = contacts.create_contact(
            s, mid, ContactCreate(email="fuzz@example.com"), keyring, clock
        )
        consent.grant(
            s,
            mid,
            contact.id or 0,
            "service_followup",
            "email",
            actor="t",
            clock=clock,
            keyring=keyring,
        )
    app = create_app(
        get_settings(home=home),
        engine=engine,
        config=TEST_CONFIG,
        keyring=keyring,
        signers=OperatorKeys({operator.address: operator}),
        chain_info=chain,
        clock=clock,
    )
    yield app, key
    engine.dispose()


def test_every_operation_conforms_to_the_schema(fuzz_app) -> None:
    app, key = fuzz_app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 40
    calls = {"n": 0}
    with TestClient(app) as client:
        for operation in operations:

            @hypothesis.given(case=operation.as_strategy())
            @hypothesis.settings(
                max_examples=30,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            def run(case) -> None:
                if case.method == "POST":  # a reused key with another body is a legitimate 400
                    case.headers = {**(case.headers or {}), "Idempotency-Key": uuid.uuid4().hex}
                response = case.call(session=client, headers={"Authorization": f"Bearer {key}"})
                calls["n"] += 1
                assert response.status_code < 500, (case.method, case.path, response.text)
                # Domain rules beyond the schema (time zones, e-mail syntax, order uniqueness…)
                # legitimately answer 400/409 to schema-valid input: everything else is checked.
                case.validate_response(response, excluded_checks=[positive_data_acceptance])

            run()
    assert calls["n"] >= 1000, calls
