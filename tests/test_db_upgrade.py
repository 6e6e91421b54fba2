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


def _start_upgrade(home: Path, *, master_key: str | None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWPAY_")}
    env["FOLLOWPAY_HOME"] = str(home)
    if master_key is not None:
        env["FOLLOWPAY_MASTER_KEY"] = master_key
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "api.cli"]
    return subprocess.Popen(
        [*command, "db", "upgrade"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _heads() -> tuple[str | None, str | None]:
    from api.db import alembic_config as api_config

    return (
        ScriptDirectory.from_config(alembic_config()).get_current_head(),
        ScriptDirectory.from_config(api_config()).get_current_head(),
    )


def _revisions(conn: sa.Connection) -> tuple[str | None, str | None]:
    return (
        conn.execute(sa.text("SELECT version_num FROM crm_alembic_version")).scalar_one(),
        conn.execute(sa.text("SELECT version_num FROM alembic_version_api")).scalar_one(),
    )


def test_two_upgrades_of_a_new_home_at_once_both_succeed_and_keep_it(tmp_path: Path) -> None:
    """``serve`` and ``db upgrade`` started together: the api chain's statements committed one
    by one on SQLite, so the two ran the same migration and one failed, and its clean-up then
    deleted the database and master.key the other had just made (8 of 20 tries)."""
    for trial in range(3):
        home = tmp_path / f"home{trial}"
        runs = [_start_upgrade(home, master_key=None) for _ in range(2)]
        outcomes = [(p.wait(120), p.stderr.read() if p.stderr else "") for p in runs]
        for run in runs:
            for stream in (run.stdout, run.stderr):
                if stream is not None:
                    stream.close()
        assert [rc for rc, _ in outcomes] == [0, 0], outcomes
        assert sorted(p.name for p in home.iterdir()) == ["followpay.sqlite3", "master.key"]
        assert len(bytes.fromhex((home / "master.key").read_text())) == 32
        engine = make_engine(f"sqlite:///{home / 'followpay.sqlite3'}")
        try:
            with engine.connect() as conn:
                assert _revisions(conn) == _heads()
        finally:
            engine.dispose()


def test_two_upgrades_of_an_empty_postgresql_database_at_once_both_succeed() -> None:
    """Each chain's run holds an advisory lock: the second waits, then finds nothing to do
    (both ran the same CREATE TABLEs, and one failed on pg_type's unique index)."""
    import uuid

    from api.db import make_engine as api_engine
    from tests.support import PG_URL, missing

    schema = f"race_{uuid.uuid4().hex[:12]}"
    admin = api_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        missing(f"PostgreSQL unreachable at {PG_URL}: {type(exc).__name__}")
    url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    code = "import sys; from api.db import upgrade; upgrade(sys.argv[1])"
    try:
        # processes, not threads: Alembic's ``context`` is one per process
        runs = [
            subprocess.Popen(
                [sys.executable, "-c", code, url.render_as_string(hide_password=False)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outcomes = [run.communicate(timeout=120) for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outcomes
        with admin.connect() as conn:
            conn.execute(sa.text(f'SET search_path TO "{schema}"'))
            assert _revisions(conn) == _heads()
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def _followpay(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWPAY_")}
    env.update(FOLLOWPAY_HOME=str(home), FOLLOWPAY_MASTER_KEY=MASTER_KEY)
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "api.cli"]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_command_on_a_database_behind_this_release_says_to_upgrade(tmp_path: Path) -> None:
    """It failed on the first missing column ("no such column: …window_start_minute")."""
    from api.db import alembic_config as api_config

    home = tmp_path / "home"
    assert _upgrade(home).returncode == 0
    url = f"sqlite:///{home / 'followpay.sqlite3'}"
    command.downgrade(api_config(url), "0012")
    result = _followpay(home, "admin", "create-merchant", "Tea House")
    assert result.returncode != 0
    assert "api schema is at revision 0012" in result.stderr
    assert "run `followpay db upgrade`" in result.stderr
    assert _upgrade(home).returncode == 0
    assert _followpay(home, "admin", "create-merchant", "Tea House").returncode == 0


def test_a_database_a_newer_release_migrated_is_named_as_such(tmp_path: Path) -> None:
    """`db upgrade` said "CommandError: Can't locate revision identified by '0099'", naming
    neither chain (both count from 0001) nor the likely cause; it changes nothing."""
    home = tmp_path / "home"
    assert _upgrade(home).returncode == 0
    engine = make_engine(f"sqlite:///{home / 'followpay.sqlite3'}")
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE crm_alembic_version SET version_num = '0099'"))
        for args in (("db", "upgrade"), ("admin", "create-merchant", "Tea House")):
            result = _followpay(home, *args)
            assert result.returncode != 0
            assert "crm schema is at revision 0099, which this release does not know" in (
                result.stderr
            ), result.stderr
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM crm_merchant")).scalar() == 0
            assert _revisions(conn)[0] == "0099"
    finally:
        engine.dispose()


def test_a_new_master_key_is_made_where_hard_links_are_refused(tmp_path: Path, monkeypatch) -> None:
    """The key is written beside its place and linked in; a file system without hard links
    still gets it, created in place."""
    from api.runtime import load_master_key
    from api.settings import get_settings

    def refused(*_args: object) -> None:
        raise PermissionError("no hard links here")

    monkeypatch.setattr(os, "link", refused)
    settings = get_settings(home=tmp_path / "home")
    key = load_master_key(settings)
    assert len(key) == 32
    assert load_master_key(settings) == key
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["master.key"]
