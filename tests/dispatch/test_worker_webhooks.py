"""``followpay worker`` also delivers the merchants' webhook events, with the secrets' cipher
built from the same master key as everything else (here: ``<home>/master.key``)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path

from sqlmodel import Session, select

import api.dispatch.models  # noqa: F401
import crm.models  # noqa: F401
from api.db import upgrade
from api.runtime import load_master_key, secret_cipher
from api.settings import Settings
from api.webhooks import create_endpoint, enqueue, verify
from api.webhooks.models import WebhookDelivery
from crm import (
    ContactCreate,
    FollowUpPolicyCreate,
    KeyRing,
    SystemClock,
    consent,
    contacts,
    followups,
    make_engine,
    merchants,
)
from crm.followups import policies as followups_policies
from crm.followups.models import FollowUp
from crm.merchants.models import MerchantCreate
from tests.dispatch.test_worker import receiver  # noqa: F401 - the local HTTP receiver fixture

ROOT = Path(__file__).resolve().parents[2]


def _env(home: Path, database: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWPAY_")} | {
        "FOLLOWPAY_HOME": str(home),
        "FOLLOWPAY_DATABASE_URL": database,
        "FOLLOWPAY_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",  # the receiver is on 127.0.0.1
    }


def test_followpay_worker_once_delivers_a_signed_webhook_event(tmp_path, receiver):  # noqa: F811
    url, handler = receiver
    database = f"sqlite:///{tmp_path / 'followpay.sqlite3'}"
    upgrade(database)
    env = _env(tmp_path, database)
    cipher = secret_cipher(Settings(home=tmp_path))  # creates <home>/master.key
    assert cipher.encrypting
    engine = make_engine(database)
    with Session(engine, expire_on_commit=False) as session, session.begin():
        endpoint, secret = create_endpoint(session, "1", url, ["*"], cipher=cipher)
        enqueue(session, "1", "invoice.settled", {"invoice": {"id": "inv_1"}})
    assert endpoint.secret_encrypted.startswith("aesgcm:")

    script = Path(sys.executable).with_name("followpay")
    done = subprocess.run(
        [str(script), "worker", "--once", "--smtp-port", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout.decode().strip().splitlines()[-1])["webhooks"] == 1
    ((headers, body),) = handler.received
    t, v1 = (part.split("=", 1)[1] for part in headers["FollowPay-Signature"].split(","))
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(v1, expected)
    assert json.loads(body)["type"] == "invoice.settled"
    with Session(engine) as session:
        (delivery,) = session.exec(select(WebhookDelivery)).all()
        assert delivery.status == "delivered"
    engine.dispose()


def test_followpay_worker_once_sends_an_sms_followup_to_the_merchants_gateway(
    tmp_path,
    receiver,  # noqa: F811
):
    """The CLI worker has the ``sms`` and ``webhook`` channels: the merchant's endpoint gets
    the signed ``followup.requested`` event with the contact's number."""
    url, handler = receiver
    database = f"sqlite:///{tmp_path / 'followpay.sqlite3'}"
    upgrade(database)
    settings = Settings(home=tmp_path)
    cipher = secret_cipher(settings)
    keyring = KeyRing(load_master_key(settings))
    engine = make_engine(database)
    clock = SystemClock()
    with Session(engine, expire_on_commit=False) as session, session.begin():
        shop = merchants.create_merchant(session, MerchantCreate(name="Tea House"), clock)
        followups_policies.create_policy(
            session,
            shop.id,
            FollowUpPolicyCreate(
                delay_minutes=0,
                channel_order=["sms"],
                window_start_minute=0,
                window_end_minute=24 * 60,  # any hour: the test runs on the real clock
            ),
            actor="owner",
            clock=clock,
        )
        person = contacts.create_contact(
            session, shop.id, ContactCreate(name="Ada", phone="+442071838750"), keyring, clock
        )
        consent.grant(
            session,
            shop.id,
            person.id,
            "service_followup",
            "sms",
            actor="ada",
            clock=clock,
            keyring=keyring,
        )
        followups.schedule_for_payment(
            session, shop.id, person.id, "pay_1", "inv_1", 25_000_000, "tUSD", clock.now(), clock
        )
        _, secret = create_endpoint(
            session, str(shop.id), url, ["followup.requested"], cipher=cipher
        )

    script = Path(sys.executable).with_name("followpay")
    done = subprocess.run(
        [str(script), "worker", "--once", "--smtp-port", "1"],
        cwd=ROOT,
        env=_env(tmp_path, database),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout.decode().strip().splitlines()[-1])["sent:sms"] == 1
    ((headers, body),) = handler.received
    verify(secret, headers["FollowPay-Signature"], body)
    event = json.loads(body)
    assert event["type"] == "followup.requested"
    assert (event["data"]["object"]["channel"], event["data"]["object"]["to"]) == (
        "sms",
        "+442071838750",
    )
    with Session(engine) as session:
        (followup,) = session.exec(select(FollowUp)).all()
        assert (followup.state, followup.channel) == ("sent", "sms")
    engine.dispose()
