"""``followpay db upgrade`` seals the consent heads older releases wrote without the server's key
(migration 0003's backfill, keyless appends) before crm revision 0005 requires a MAC, and says so;
a second run has nothing to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from sqlmodel import Session

from crm import ContactCreate, KeyRing, MerchantCreate, SystemClock, consent, contacts, merchants
from crm.consent.service import SealStatus, verify_chain
from crm.db import alembic_config, current_revision, make_engine

SCRIPT = Path(sys.executable).with_name("followpay")
MASTER_KEY = "ab" * 32


def _upgrade(home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWPAY_")}
    env.update(FOLLOWPAY_HOME=str(home), FOLLOWPAY_MASTER_KEY=MASTER_KEY)
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "api.cli"]
    return subprocess.run(
        [*command, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120
    )


def test_upgrade_seals_unsealed_consent_heads(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    url = f"sqlite:///{home / 'followpay.sqlite3'}"
    command.upgrade(alembic_config(url), "0004")  # a database an older release left
    keyring = KeyRing(bytes.fromhex(MASTER_KEY))
    engine = make_engine(url)
    clock = SystemClock()
    try:
        with Session(engine) as session, session.begin():
            shop = merchants.create_merchant(session, MerchantCreate(name="Shop"), clock)
            ada = contacts.create_contact(
                session,
                shop.id or 0,
                ContactCreate(name="Ada", email="a@example.com"),
                keyring,
                clock,
            )
            ada_id = ada.id or 0
            consent.grant(
                session,
                shop.id or 0,
                ada_id,
                "service_followup",
                "email",
                actor="t",
                clock=clock,
                keyring=keyring,
            )
        with engine.begin() as conn:  # as that release's keyless append left it
            conn.execute(sa.text("UPDATE crm_consent_head SET mac = NULL"))
        with Session(engine) as session:
            before = verify_chain(session, ada_id, keyring=keyring)
        sealed = _upgrade(home)
        again = _upgrade(home)
        with Session(engine) as session:
            after = verify_chain(session, ada_id, keyring=keyring)
    finally:
        engine.dispose()
    assert before.seal is SealStatus.UNSEALED
    assert sealed.returncode == 0, sealed.stderr
    assert "sealed 1 consent ledger heads" in sealed.stderr
    assert again.returncode == 0, again.stderr
    assert "sealed" not in again.stderr
    assert (after.ok, after.seal) == (True, SealStatus.VALID)
    assert current_revision(url) == ScriptDirectory.from_config(alembic_config()).get_current_head()
