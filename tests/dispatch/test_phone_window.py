"""A phone task's calling hours are the merchant's policy window in the contact's local time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

import api.dispatch.models  # noqa: F401
import crm.models  # noqa: F401
from api.dispatch import phone_tasks as calls
from api.dispatch.channels import PhoneChannel, Recipient
from api.dispatch.models import PhoneTask
from api.dispatch.worker import Worker
from api.schemas.dispatch import PhoneTaskOut
from crm import (
    ContactCreate,
    FollowUpPolicyCreate,
    FrozenClock,
    KeyRing,
    consent,
    contacts,
    followups,
    merchants,
)
from crm.followups import dispatch as followups_dispatch
from crm.followups import policies as followups_policies
from crm.followups.models import FollowUp
from crm.merchants.models import MerchantCreate

KEYRING = KeyRing(b"p" * 32)
LONDON = ZoneInfo("Europe/London")
TEN_TO_SIX = (10 * 60, 18 * 60)


def _callable_contact(session: Session, shop_id: int, name: str, clock: FrozenClock) -> int:
    """A London contact who consented to calls about the service."""
    person = contacts.create_contact(
        session,
        shop_id,
        ContactCreate(name=name, phone="+442071838750", time_zone="Europe/London"),
        KEYRING,
        clock,
    )
    assert person.id is not None
    consent.grant(
        session,
        shop_id,
        person.id,
        "service_followup",
        "phone",
        actor=name,
        clock=clock,
        keyring=KEYRING,
    )
    return person.id


def _ten_to_six_task(
    shop_id: int, person: int, followup_id: int, zone: str, opened: datetime, clock: FrozenClock
) -> PhoneTask:
    """An open task with a 10:00-18:00 window, made ``opened`` and closing 8 hours later."""
    return PhoneTask(
        merchant_id=shop_id,
        contact_id=person,
        followup_id=followup_id,
        time_zone=zone,
        call_after=opened,
        call_before=opened + timedelta(hours=8),
        window_start_minute=600,
        window_end_minute=1080,
        created_at=clock.now(),
    )


def _shop(engine, clock, window):
    with Session(engine, expire_on_commit=False) as session, session.begin():
        shop = merchants.create_merchant(session, MerchantCreate(name="Tea House"), clock)
        followups_policies.create_policy(
            session,
            shop.id,
            FollowUpPolicyCreate(
                delay_minutes=0,
                channel_order=["phone"],
                window_start_minute=window[0],
                window_end_minute=window[1],
            ),
            actor="owner",
            clock=clock,
        )
        person_id = _callable_contact(session, shop.id, "Ada", clock)
        followups.schedule_for_payment(
            session, shop.id, person_id, "pay_1", "inv_1", 1, "tUSD", clock.now(), clock
        )
        return shop.id, person_id


def _task_window(engine) -> tuple[str, str]:
    with Session(engine) as session:
        (task,) = session.exec(select(PhoneTask)).all()
    return tuple(  # type: ignore[return-value]
        t.astimezone(LONDON).strftime("%Y-%m-%d %H:%M") for t in (task.call_after, task.call_before)
    )


def test_the_worker_hands_the_phone_channel_the_policys_window(engine):
    clock = FrozenClock(datetime(2026, 6, 1, 11, 0, tzinfo=UTC))  # 12:00 in London
    _shop(engine, clock, TEN_TO_SIX)
    result = Worker(engine, KEYRING, {"phone": PhoneChannel()}, clock).run_once()
    assert result.outcomes == {"sent:phone": 1}
    assert _task_window(engine) == ("2026-06-01 12:00", "2026-06-01 18:00")


@pytest.mark.parametrize(
    ("local_now", "window", "expected"),
    [
        # under MIN_CALL_TIME (30 min) left: the next window
        ("2026-06-01 17:31", TEN_TO_SIX, ("2026-06-02 10:00", "2026-06-02 18:00")),
        ("2026-06-01 17:30", TEN_TO_SIX, ("2026-06-01 17:30", "2026-06-01 18:00")),
        ("2026-06-01 18:00", TEN_TO_SIX, ("2026-06-02 10:00", "2026-06-02 18:00")),
        ("2026-06-01 07:00", TEN_TO_SIX, ("2026-06-01 10:00", "2026-06-01 18:00")),
        # over the spring DST change: local wall-clock hours on the next day
        ("2026-03-28 22:00", TEN_TO_SIX, ("2026-03-29 10:00", "2026-03-29 18:00")),
        # a window open until midnight ends at the next local midnight
        ("2026-10-24 23:30", (20 * 60, 24 * 60), ("2026-10-24 23:30", "2026-10-25 00:00")),
    ],
)
def test_the_call_window_is_the_instructions_window_in_local_time(
    engine, local_now, window, expected
):
    now = datetime.fromisoformat(local_now).replace(tzinfo=LONDON)
    clock = FrozenClock(now.astimezone(UTC))
    shop_id, contact_id = _shop(engine, clock, window)
    instruction = followups_dispatch.SendInstruction(
        followup_id=1,
        merchant_id=shop_id,
        contact_id=contact_id,
        channel="phone",
        purpose="service_followup",
        kind="payment_settled",
        payment_ref="pay_1",
        invoice_ref="inv_1",
        locale=None,
        token_expires_at=clock.now(),
        address="+442071838750",
        token="t",
        window_start_minute=window[0],
        window_end_minute=window[1],
    )
    with Session(engine, expire_on_commit=False) as session, session.begin():
        PhoneChannel().send(session, instruction, Recipient("Tea House", "Europe/London", now))
    assert _task_window(engine) == expected


class TestMissedWindows:
    """A task keeps its daily window: one nobody called in moves to the next (it stayed open
    and never callable again)."""

    def test_a_missed_window_moves_to_the_contacts_next_one(self, engine):
        clock = FrozenClock(datetime(2026, 6, 1, 11, 0, tzinfo=UTC))  # 12:00 in London
        _shop(engine, clock, TEN_TO_SIX)
        worker = Worker(engine, KEYRING, {"phone": PhoneChannel()}, clock)
        assert worker.run_once().outcomes == {"sent:phone": 1}
        clock.advance(hours=5)  # 17:00: still inside the window, nothing moves
        worker.run_once()
        assert _task_window(engine) == ("2026-06-01 12:00", "2026-06-01 18:00")
        clock.advance(hours=2)  # 19:00: the window closed with nobody calling
        worker.run_once()
        assert _task_window(engine) == ("2026-06-02 10:00", "2026-06-02 18:00")
        clock.advance(days=3)  # over several days: the window of the day the round runs
        worker.run_once()
        assert _task_window(engine) == ("2026-06-05 10:00", "2026-06-05 18:00")

    def test_a_task_from_before_its_window_was_kept_takes_its_policys(self, engine):
        """Made at 12:00 in a 10:00-18:00 window, its stored start is 12:00: the next days'
        window is the policy's, not 12:00-18:00."""
        clock = FrozenClock(datetime(2026, 6, 1, 11, 0, tzinfo=UTC))  # 12:00 in London
        _shop(engine, clock, TEN_TO_SIX)
        Worker(engine, KEYRING, {"phone": PhoneChannel()}, clock).run_once()
        with Session(engine) as session, session.begin():
            (task,) = session.exec(select(PhoneTask)).all()
            task.window_start_minute = task.window_end_minute = None  # a row from before 0013
        clock.advance(days=1)
        with Session(engine) as session, session.begin():
            assert calls.roll_windows(session, clock.now()) == 1
        # 12:00 the next day is inside the policy's window: callable from now until 18:00
        assert _task_window(engine) == ("2026-06-02 12:00", "2026-06-02 18:00")
        clock.advance(hours=8)  # 20:00, closed: the next window opens at the policy's 10:00
        with Session(engine) as session, session.begin():
            calls.roll_windows(session, clock.now())
        assert _task_window(engine) == ("2026-06-03 10:00", "2026-06-03 18:00")

    def test_tasks_that_cannot_move_do_not_hold_up_the_others(self, engine):
        """Tasks whose zone no longer resolves stay put, first in line (oldest window): a
        round read ``limit`` of them, moved none, and no other task's window moved again."""
        clock = FrozenClock(datetime(2026, 6, 1, 11, 0, tzinfo=UTC))
        shop_id, person = _shop(engine, clock, TEN_TO_SIX)
        Worker(engine, KEYRING, {"phone": PhoneChannel()}, clock).run_once()
        with Session(engine) as session, session.begin():
            for n in range(3):  # older windows than the real task's, zones gone
                opened = datetime(2026, 5, 1, 9, tzinfo=UTC)
                session.add(_ten_to_six_task(shop_id, person, 10_000 + n, "US/Gone", opened, clock))
        clock.advance(days=1)
        with Session(engine) as session, session.begin():
            assert calls.roll_windows(session, clock.now(), limit=2) == 1
        with Session(engine) as session:
            london = select(PhoneTask).where(PhoneTask.time_zone == "Europe/London")
            (task,) = session.exec(london).all()
        assert (task.call_after, task.call_before) == (
            datetime(2026, 6, 2, 11, tzinfo=UTC),  # now (12:00 in London) until 18:00
            datetime(2026, 6, 2, 17, tzinfo=UTC),
        )

    def test_closed_tasks_stay_where_they_are(self, engine):
        clock = FrozenClock(datetime(2026, 6, 1, 11, 0, tzinfo=UTC))
        _shop(engine, clock, TEN_TO_SIX)
        Worker(engine, KEYRING, {"phone": PhoneChannel()}, clock).run_once()
        with Session(engine) as session, session.begin():
            (task,) = session.exec(select(PhoneTask)).all()
            task.state, task.outcome = "done", "reached"
        clock.advance(days=1)
        with Session(engine) as session, session.begin():
            assert calls.roll_windows(session, clock.now()) == 0
        assert _task_window(engine) == ("2026-06-01 12:00", "2026-06-01 18:00")


class TestTimeZoneChanges:
    def test_open_tasks_follow_a_contact_who_moves(self, engine):
        """The task kept the zone it was made in: moved to Auckland, the contact showed as
        callable from 23:00 to 05:00 there."""
        clock = FrozenClock(datetime(2026, 6, 1, 11, 0, tzinfo=UTC))  # 12:00 in London
        shop_id, person_id = _shop(engine, clock, TEN_TO_SIX)
        Worker(engine, KEYRING, {"phone": PhoneChannel()}, clock).run_once()
        auckland = "Pacific/Auckland"
        with Session(engine, expire_on_commit=False) as session, session.begin():
            contacts.update_contact(
                session,
                shop_id,
                person_id,
                contacts_update(time_zone=auckland),
                KEYRING,
                clock,
                "owner",
            )
            assert calls.retime_for_contact(session, shop_id, person_id, auckland, clock.now()) == 1
        with Session(engine) as session:
            (task,) = session.exec(select(PhoneTask)).all()
        local = ZoneInfo(auckland)
        assert task.time_zone == auckland
        assert task.call_after.astimezone(local).strftime("%H:%M") == "10:00"
        assert task.call_before.astimezone(local).strftime("%H:%M") == "18:00"
        assert task.call_after > clock.now()


def contacts_update(**fields):
    from crm import ContactUpdate

    return ContactUpdate(**fields)


class TestAZoneThatNoLongerResolves:
    """tzdata can drop a stored name (Debian moved ``US/Eastern``-style names to
    tzdata-legacy): the contact's follow-up fails closed, and nobody else's is held up (the
    KeyError stopped the indexer's step and the worker's batch)."""

    def _two_contacts(self, engine, clock):
        with Session(engine, expire_on_commit=False) as session, session.begin():
            shop = merchants.create_merchant(session, MerchantCreate(name="Shop"), clock)
            followups_policies.create_policy(
                session,
                shop.id,
                FollowUpPolicyCreate(
                    delay_minutes=0, frequency_cap_days=0, channel_order=["phone"]
                ),
                actor="owner",
                clock=clock,
            )
            ids = []
            for name in ("lost", "fine"):
                ids.append(_callable_contact(session, shop.id, name, clock))
        return shop.id, ids

    def test_scheduling_and_sending_suppress_only_that_contact(self, engine):
        clock = FrozenClock(datetime(2026, 6, 1, 13, 0, tzinfo=UTC))
        shop_id, (lost, fine) = self._two_contacts(engine, clock)
        _pay(engine, shop_id, lost, clock)
        with Session(engine, expire_on_commit=False) as session, session.begin():
            session.execute(
                sa.text("UPDATE crm_contact SET time_zone = 'US/Gone' WHERE id = :i"), {"i": lost}
            )
        with Session(engine, expire_on_commit=False) as session, session.begin():
            followups.schedule_for_payments(
                session,
                shop_id,
                [
                    followups.SettledPayment(lost, "pay_2", "inv_2", 1, "tUSD", clock.now()),
                    followups.SettledPayment(fine, "pay_3", "inv_3", 1, "tUSD", clock.now()),
                ],
                clock,
            )
        result = Worker(engine, KEYRING, {"phone": PhoneChannel()}, clock).run_once()
        assert result.outcomes == {"sent:phone": 1, "held_or_suppressed": 1}
        with Session(engine) as session:
            states = {
                (f.contact_id, f.payment_ref): (f.state, f.reason)
                for f in session.exec(select(FollowUp)).all()
            }
            (task,) = session.exec(select(PhoneTask)).all()
        assert states == {
            (lost, "pay_1"): ("suppressed", "unknown_time_zone"),
            (lost, "pay_2"): ("suppressed", "unknown_time_zone"),
            (fine, "pay_3"): ("sent", None),
        }
        assert task.contact_id == fine

    def test_its_open_task_is_left_and_never_callable(self, engine):
        clock = FrozenClock(datetime(2026, 6, 1, 13, 0, tzinfo=UTC))
        shop_id, (lost, _fine) = self._two_contacts(engine, clock)
        _pay(engine, shop_id, lost, clock)
        Worker(engine, KEYRING, {"phone": PhoneChannel()}, clock).run_once()
        with Session(engine, expire_on_commit=False) as session, session.begin():
            session.execute(sa.text("UPDATE api_phone_task SET time_zone = 'US/Gone'"))
        clock.advance(days=1)
        with Session(engine, expire_on_commit=False) as session, session.begin():
            assert calls.roll_windows(session, clock.now()) == 0
            (task,) = session.exec(select(PhoneTask)).all()
            assert PhoneTaskOut.of(task, task.call_after).callable_now is False


def _pay(engine, shop_id: int, contact_id: int, clock: FrozenClock) -> None:
    with Session(engine, expire_on_commit=False) as session, session.begin():
        followups.schedule_for_payment(
            session, shop_id, contact_id, "pay_1", "inv_1", 1, "tUSD", clock.now(), clock
        )


def test_the_roll_reads_on_past_a_page_whose_last_task_it_moved(engine):
    """The next page started after the page's last task as moved (its window now in the
    future), so a page with a task it could not move (a zone that no longer resolves) ended
    the round: the tasks after it kept their closed windows."""
    clock = FrozenClock(datetime(2026, 6, 1, 11, 0, tzinfo=UTC))
    shop_id, person = _shop(engine, clock, TEN_TO_SIX)
    with Session(engine) as session, session.begin():
        for n, zone in enumerate(["US/Gone", "Europe/London", "Europe/London"]):
            opened = datetime(2026, 5, 1, 9, n, tzinfo=UTC)
            session.add(_ten_to_six_task(shop_id, person, 20_000 + n, zone, opened, clock))
    with Session(engine) as session, session.begin():
        moved = calls.roll_windows(session, clock.now(), limit=2)
    with Session(engine) as session:
        closed = session.exec(
            select(PhoneTask).where(
                PhoneTask.time_zone == "Europe/London", PhoneTask.call_before <= clock.now()
            )
        ).all()
    assert (moved, closed) == (2, [])


def test_a_contact_moved_out_of_a_zone_that_no_longer_resolves_takes_its_task_along(engine):
    """The task's window minutes are kept, so its old zone is not needed to move it; the old
    zone was resolved first anyway, and the task stayed in a zone nobody can call in."""
    clock = FrozenClock(datetime(2026, 6, 1, 11, 0, tzinfo=UTC))
    shop_id, person = _shop(engine, clock, TEN_TO_SIX)
    with Session(engine) as session, session.begin():
        opened = datetime(2026, 6, 1, 9, tzinfo=UTC)
        session.add(_ten_to_six_task(shop_id, person, 30_000, "US/Gone", opened, clock))
    with Session(engine) as session, session.begin():
        moved = calls.retime_for_contact(session, shop_id, person, "Europe/Berlin", clock.now())
    with Session(engine) as session:
        (task,) = session.exec(select(PhoneTask)).all()
    assert (moved, task.time_zone) == (1, "Europe/Berlin")
    opened = task.call_after.astimezone(ZoneInfo("Europe/Berlin"))
    assert (opened.hour, opened.minute) == (13, 0)  # 11:00 UTC is 13:00 in Berlin: open now
