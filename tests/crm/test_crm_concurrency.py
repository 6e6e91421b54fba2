"""Two workers calling ``claim_due`` at once never claim the same follow-up."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from crm import KeyRing, MerchantCreate, merchants
from crm.clock import FrozenClock
from crm.consent import service as consent
from crm.contacts import service as contacts
from crm.contacts.models import ContactCreate
from crm.db import make_engine, session_scope, upgrade
from crm.followups import service as followups
from crm.followups.models import FollowUp, FollowUpEvent, FollowUpPolicyCreate

from .conftest import START, pg_schema_url

N = 120
WORKERS = 4


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def committed_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    if request.param == "sqlite":
        url: str | sa.URL = f"sqlite:///{tmp_path / 'conc.db'}"
        upgrade(url)
        engine = make_engine(url)
        yield engine
        engine.dispose()
        return
    admin: sa.Engine = request.getfixturevalue("pg_admin")
    schema = f"crm_conc_{os.getpid()}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = pg_schema_url(schema)
    upgrade(url)
    engine = make_engine(url, pool_size=WORKERS + 1)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


def _seed(engine: sa.Engine, keyring: KeyRing, clock: FrozenClock) -> set[int]:
    with session_scope(engine) as s:
        m = merchants.create_merchant(s, MerchantCreate(name="Busy"), clock)
        mid = m.id or 0
        followups.create_policy(
            s,
            mid,
            FollowUpPolicyCreate(delay_minutes=0, frequency_cap_days=0, channel_order=["in_app"]),
            actor="admin",
            clock=clock,
        )
        c = contacts.create_contact(s, mid, ContactCreate(time_zone="UTC"), keyring, clock)
        consent.grant(s, mid, c.id or 0, "service_followup", "in_app", actor="c", clock=clock)
        ids: set[int] = set()
        for i in range(N):
            [fu] = followups.schedule_for_payment(
                s, mid, c.id or 0, f"pay-{i}", f"inv-{i}", 100, "USDC", clock.now(), clock
            )
            assert fu.state == "scheduled"
            ids.add(fu.id or 0)
    return ids


def test_claim_due_never_double_claims(committed_engine: sa.Engine, keyring: KeyRing) -> None:
    clock = FrozenClock(START)
    expected = _seed(committed_engine, keyring, clock)
    barrier = threading.Barrier(WORKERS)
    claimed: dict[str, list[int]] = {f"w{i}": [] for i in range(WORKERS)}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            barrier.wait()
            while True:
                with session_scope(committed_engine) as s:
                    got = followups.claim_due(s, clock.now(), 7, name)
                if not got:
                    return
                claimed[name].extend(got)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    flat = [i for ids in claimed.values() for i in ids]
    assert len(flat) == len(set(flat))  # nobody claimed a follow-up twice
    assert set(flat) == expected  # and every due follow-up was claimed
    with session_scope(committed_engine) as s:
        rows = s.exec(select(FollowUp)).all()
        assert {r.state for r in rows} == {"queued"}
        owner = {i: w for w, ids in claimed.items() for i in ids}
        assert all(r.worker_id == owner[r.id or 0] for r in rows)
        queued_events = s.exec(
            select(FollowUpEvent).where(FollowUpEvent.to_state == "queued")
        ).all()
        assert len(queued_events) == N
