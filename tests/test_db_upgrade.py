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


def test_a_missing_master_key_is_not_replaced_under_encrypted_data(tmp_path: Path) -> None:
    """A home whose master.key went missing (a volume not mounted, a restore without it) got a
    new key from the next command: every contact unreadable, and new data written under a key
    that restoring the old one would break."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWPAY_")}
    env["FOLLOWPAY_HOME"] = str(home)
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "api.cli"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args], env=env, capture_output=True, text=True, timeout=120
        )

    assert run("db", "upgrade").returncode == 0  # makes the database and its key
    key_file = home / "master.key"
    keyring = KeyRing(bytes.fromhex(key_file.read_text().strip()))
    engine = make_engine(f"sqlite:///{home / 'followpay.sqlite3'}")
    try:
        with Session(engine) as s, s.begin():
            m = merchants.create_merchant(s, MerchantCreate(name="M"), SystemClock())
            contacts.create_contact(
                s, m.id or 0, ContactCreate(email="a@example.com"), keyring, SystemClock()
            )
    finally:
        engine.dispose()
    key_file.unlink()
    for args in (("worker", "--once"), ("db", "upgrade")):
        result = run(*args)
        assert result.returncode == 1, result.stderr
        assert "master.key is missing" in result.stderr
        assert not key_file.exists()


def test_a_new_home_and_its_database_are_the_owners_only(tmp_path: Path) -> None:
    """Invoices, payer addresses and audit entries are stored in clear: a plain mkdir and
    SQLite made the home 0755 and the database 0644 under the usual umask (master.key was
    0600 in a world-readable directory)."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWPAY_")}
    env["FOLLOWPAY_HOME"] = str(home)
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "api.cli"]
    result = subprocess.run(
        [*command, "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.umask(0o022),  # the usual umask, in the child only
    )
    assert result.returncode == 0, result.stderr
    modes = {p.name: p.stat().st_mode & 0o777 for p in (home, *home.iterdir())}
    assert modes == {"home": 0o700, "followpay.sqlite3": 0o600, "master.key": 0o600}, modes
