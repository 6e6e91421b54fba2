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
from api.runtime import secret_cipher
from api.settings import Settings
from api.webhooks import create_endpoint, enqueue
from api.webhooks.models import WebhookDelivery
from crm import make_engine
from tests.dispatch.test_worker import receiver  # noqa: F401 - the local HTTP receiver fixture

ROOT = Path(__file__).resolve().parents[2]


def test_followpay_worker_once_delivers_a_signed_webhook_event(tmp_path, receiver):  # noqa: F811
    url, handler = receiver
    database = f"sqlite:///{tmp_path / 'followpay.sqlite3'}"
    upgrade(database)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWPAY_")} | {
        "FOLLOWPAY_HOME": str(tmp_path),
        "FOLLOWPAY_DATABASE_URL": database,
    }
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
