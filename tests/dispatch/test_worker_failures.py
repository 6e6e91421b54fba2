"""A channel that raises ends that follow-up's attempt, never the worker or its batch, on both
databases (the in-process channels' savepoint is what PostgreSQL and SQLite must both keep)."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlmodel import Session, SQLModel, select

import api.dispatch.models  # noqa: F401
import crm.models  # noqa: F401
from api.dispatch.channels import (
    DeliveryError,
    DeliveryRefused,
    EmailChannel,
    InAppChannel,
    PhoneChannel,
)
from api.dispatch.models import InAppMessage, PhoneTask
from api.dispatch.worker import PREPARE_SLACK, Worker
from crm import FrozenClock, make_engine
from crm.feedback.models import Feedback
from crm.followups import dispatch as followups_dispatch
from crm.followups.models import FollowUp, FollowUpEvent
from tests.dispatch.test_worker import (  # noqa: F401 - smtp: the fixture
    KEYRING,
    LINKS,
    shop_with,
    smtp,
)
from tests.support import migrated_pg_schema


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'w.sqlite3'}")
        SQLModel.metadata.create_all(engine)
        yield engine
        engine.dispose()
        return
    with migrated_pg_schema(f"dispatch_fail_{os.getpid()}") as engine:
        yield engine


@pytest.fixture
def clock():
    return FrozenClock(datetime(2026, 6, 1, 11, 0, tzinfo=UTC))  # 12:00 in London


def due(engine, clock, channel: str, count: int) -> list[int]:
    """``count`` follow-ups due now on ``channel`` (contacts ``c0@…``, ``c1@…``), in id order."""
    for n in range(count):
        shop_with(engine, clock, channel=channel, phone="+442071838750", email=f"c{n}@example.com")
    with Session(engine) as session:
        return [f.id for f in session.exec(select(FollowUp).order_by(FollowUp.id))]


class FailFirst:
    """Wraps a real channel: the first send does the channel's work (an in-process channel
    writes its row), then raises ``exc``; later sends are the channel's own."""

    def __init__(self, inner, exc: Exception) -> None:
        self.inner, self.exc, self.name, self.failed = inner, exc, inner.name, False

    def send(self, session, instruction, to):
        if self.failed:
            return self.inner.send(session, instruction, to)
        self.failed = True
        if session is not None:
            self.inner.send(session, instruction, to)
            session.flush()
        raise self.exc


def state(engine, followup_id):
    with Session(engine) as session:
        fu = session.get(FollowUp, followup_id)
        last = session.exec(
            select(FollowUpEvent)
            .where(FollowUpEvent.followup_id == followup_id)
            .order_by(sa.desc(FollowUpEvent.id))
        ).first()
        return fu.state, fu.reason, last.detail


def live_token(engine, followup_id) -> bool:
    with Session(engine) as session:
        row = session.exec(select(Feedback).where(Feedback.followup_id == followup_id)).first()
        return row is not None and row.token_hash is not None


@pytest.mark.parametrize(
    ("name", "make", "table"),
    [
        ("in_app", lambda: InAppChannel(LINKS, KEYRING), InAppMessage),
        ("phone", PhoneChannel, PhoneTask),
    ],
)
@pytest.mark.parametrize(
    "exc", [DeliveryError("gateway said no"), KeyError("c0@example.com")], ids=["refusal", "bug"]
)
def test_an_in_process_channel_that_raises_keeps_the_prepare_and_retries(
    engine, clock, caplog, name, make, table, exc
):
    """Its row is rolled back with its savepoint, the claim's prepare is kept and recorded as a
    retry (nothing was delivered), and the next follow-up of the batch is sent. It used to
    propagate and roll the prepare back too: the same follow-up crashed every worker run."""
    first, second = due(engine, clock, name, 2)
    channel = FailFirst(make(), exc)
    with caplog.at_level(logging.WARNING, logger="api.dispatch.worker"):
        result = Worker(engine, KEYRING, {name: channel}, clock).run_once()
    assert result.outcomes == {"retry": 1, f"sent:{name}": 1}
    fu_state, _, detail = state(engine, first)
    assert fu_state == "scheduled"
    expected = (
        "gateway said no" if isinstance(exc, DeliveryError) else f"not sent, {name}: KeyError"
    )
    assert detail == expected
    assert not live_token(engine, first)  # a sure failure: its link is revoked
    assert state(engine, second)[0] == "sent"
    assert "c0@example.com" not in caplog.text  # no personal data in the log
    with Session(engine) as session:
        assert [r.followup_id for r in session.exec(select(table))] == [second]

    clock.advance(timedelta(hours=1))  # past the backoff: the retry sends it once
    assert Worker(engine, KEYRING, {name: make()}, clock).run_once().outcomes == {f"sent:{name}": 1}
    with Session(engine) as session:
        assert sorted(r.followup_id for r in session.exec(select(table))) == [first, second]
    assert state(engine, first)[0] == "sent"


def test_an_unexpected_exception_after_the_message_left_is_never_resent(
    engine,
    clock,
    caplog,
    smtp,  # noqa: F811
):
    """From a channel that leaves the process nothing but a DeliveryError says whether the
    message arrived: it ends failed/delivery_uncertain (at most once), its link still works,
    and the rest of the batch goes out over SMTP."""
    controller, sink = smtp
    first, second = due(engine, clock, "email", 2)
    real = EmailChannel("127.0.0.1", controller.port, "f@tea.example", LINKS)
    channel = FailFirst(real, ValueError("c0@example.com is odd"))
    with caplog.at_level(logging.WARNING, logger="api.dispatch.worker"):
        result = Worker(engine, KEYRING, {"email": channel}, clock).run_once()
    assert result.outcomes == {"uncertain": 1, "sent:email": 1}
    assert state(engine, first) == (
        "failed",
        "delivery_uncertain",
        "email: ValueError in the channel",
    )
    assert live_token(engine, first)
    assert [m["To"] for m in sink.messages] == ["c1@example.com"]
    assert state(engine, second)[0] == "sent"
    assert "c0@example.com" not in caplog.text
    clock.advance(timedelta(days=1))
    assert Worker(engine, KEYRING, {"email": real}, clock).run_once().claimed == 0


class Unbuildable:
    """A channel whose message cannot be built from the follow-up's data, as the e-mail channel
    raises it (``email: message not built``) before it connects anywhere."""

    name = "email"

    def __init__(self) -> None:
        self.calls = 0

    def send(self, session, instruction, to):
        self.calls += 1
        raise DeliveryRefused("email: message not built (UnicodeEncodeError)")


def test_a_message_that_cannot_be_built_fails_at_once(engine, clock):
    """No backoff can build it: the follow-up fails on its first attempt with its link revoked,
    instead of being claimed, prepared and refused five times over a day."""
    (only,) = due(engine, clock, "email", 1)
    channel = Unbuildable()
    assert Worker(engine, KEYRING, {"email": channel}, clock).run_once().outcomes == {"failed": 1}
    fu_state, reason, detail = state(engine, only)
    assert (fu_state, reason) == ("failed", "undeliverable")
    assert detail == "email: message not built (UnicodeEncodeError)"
    assert not live_token(engine, only)
    clock.advance(timedelta(days=2))
    assert Worker(engine, KEYRING, {"email": channel}, clock).run_once().claimed == 0
    assert channel.calls == 1


def test_a_prepare_that_commits_too_late_is_not_sent(engine, clock, smtp, monkeypatch):  # noqa: F811
    """The lease is counted from the renewal's clock, read before the prepare waited for its
    locks. A prepare that committed more than PREPARE_SLACK later leaves too little of the
    lease for a delivery: nothing is sent, its link is revoked, and it is retried; the next
    follow-up of the batch goes out as usual."""
    controller, sink = smtp
    first, second = due(engine, clock, "email", 2)
    real = followups_dispatch.prepare_send

    def slow_for_the_first(session, followup_id, now, keyring, **kwargs):
        made = real(session, followup_id, now, keyring, **kwargs)
        if followup_id == first:
            clock.advance(PREPARE_SLACK + timedelta(seconds=1))
        return made

    monkeypatch.setattr(followups_dispatch, "prepare_send", slow_for_the_first)
    email = EmailChannel("127.0.0.1", controller.port, "f@tea.example", LINKS)
    result = Worker(engine, KEYRING, {"email": email}, clock).run_once()
    assert result.outcomes == {"retry": 1, "sent:email": 1}
    assert [m["To"] for m in sink.messages] == ["c1@example.com"]
    assert state(engine, first) == (
        "scheduled",
        None,
        "not sent: the claim's renewal took too long to commit",
    )
    assert not live_token(engine, first)
    assert state(engine, second)[0] == "sent"


def test_renewed_claims_outlive_their_first_lease_and_only_their_holder_renews(engine, clock):
    ids = due(engine, clock, "email", 2)
    lease = timedelta(minutes=2)
    with Session(engine) as session, session.begin():
        assert followups_dispatch.claim_due(session, clock.now(), 5, "w1") == ids
    clock.advance(timedelta(seconds=100))
    with Session(engine) as session, session.begin():
        assert followups_dispatch.renew_claims(session, ids, clock.now(), worker_id="w2") == 0
        assert followups_dispatch.renew_claims(session, ids, clock.now(), worker_id="w1") == 2
    clock.advance(timedelta(seconds=100))  # 200 s after the claim, 100 s after the renewal
    with Session(engine) as session, session.begin():
        assert followups_dispatch.recover_stale(session, clock.now(), lease) == {
            "rescheduled": [],
            "interrupted": [],
        }
    clock.advance(timedelta(seconds=21))
    with Session(engine) as session, session.begin():
        assert followups_dispatch.recover_stale(session, clock.now(), lease) == {
            "rescheduled": ids,
            "interrupted": [],
        }
