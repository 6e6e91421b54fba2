"""Stateful property: whatever happens, nothing is sent without consent, in quiet hours or
twice within the frequency cap, counting deliveries that may have arrived (SQLite, bounded)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlmodel import Session, SQLModel

from crm import KeyRing, MerchantCreate, merchants
from crm.clock import FrozenClock
from crm.consent import service as consent
from crm.contacts import service as contacts
from crm.contacts.models import ContactCreate
from crm.db import make_engine
from crm.enums import Channel
from crm.followups import dispatch as followups_dispatch
from crm.followups import policies as followups_policies
from crm.followups import service as followups
from crm.followups.models import FollowUpPolicyCreate
from crm.models import TABLES

from .conftest import START

KEYRING = KeyRing(b"s" * 32)
PURPOSES = ["service_followup", "marketing"]
CHANNELS = ["email", "sms", "phone"]
ZONES = ["Europe/London", "Asia/Shanghai", "America/Los_Angeles"]
CAP = timedelta(days=30)


class SendRules(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = make_engine("sqlite://")
        SQLModel.metadata.create_all(self.engine, tables=TABLES)
        self.session = Session(self.engine, expire_on_commit=False)
        self.clock = FrozenClock(START)
        m = merchants.create_merchant(self.session, MerchantCreate(name="M"), self.clock)
        self.mid = m.id or 0
        followups_policies.create_policy(
            self.session,
            self.mid,
            FollowUpPolicyCreate(
                delay_minutes=0,
                channel_order=["email", "sms"],
                segment_rules=[{"field": "tier", "equals": "vip", "channels": ["phone"]}],
            ),
            actor="admin",
            clock=self.clock,
        )
        self.contacts: list[tuple[int, str]] = []
        for i, tz in enumerate(ZONES):
            c = contacts.create_contact(
                self.session,
                self.mid,
                ContactCreate(
                    email=f"c{i}@example.com",
                    phone="+14155552671",
                    time_zone=tz,
                    tier="vip" if i == 0 else None,
                ),
                KEYRING,
                self.clock,
            )
            self.contacts.append((c.id or 0, tz))
            if i < 2:  # start with some consent so sends actually happen
                consent.grant(
                    self.session,
                    self.mid,
                    c.id or 0,
                    "service_followup",
                    "email",
                    actor="c",
                    clock=self.clock,
                    keyring=KEYRING,
                )
        self.model: dict[tuple[int, str, str], bool] = {
            (cid, "service_followup", "email"): True for cid, _ in self.contacts[:2]
        }
        self.sent: list[tuple[int, datetime]] = []
        self.payments = 0

    def teardown(self) -> None:
        self.session.close()
        self.engine.dispose()

    contact_ix = st.integers(0, len(ZONES) - 1)

    @property
    def _by_contact(self) -> dict[str, Any]:
        """Who records a consent change in these rules, and with what."""
        return {"actor": "c", "clock": self.clock, "keyring": KEYRING}

    @rule(i=contact_ix, purpose=st.sampled_from(PURPOSES), channel=st.sampled_from(CHANNELS))
    def grant(self, i: int, purpose: str, channel: str) -> None:
        cid = self.contacts[i][0]
        consent.grant(self.session, self.mid, cid, purpose, channel, **self._by_contact)
        self.model[(cid, purpose, channel)] = True

    @rule(
        i=contact_ix,
        purpose=st.sampled_from(PURPOSES),
        channel=st.one_of(st.none(), st.sampled_from(CHANNELS)),
    )
    def withdraw(self, i: int, purpose: str, channel: str | None) -> None:
        cid = self.contacts[i][0]
        consent.withdraw(self.session, self.mid, cid, purpose, channel, **self._by_contact)
        for ch in [c.value for c in Channel] if channel is None else [channel]:
            self.model[(cid, purpose, ch)] = False

    @rule(i=contact_ix, purpose=st.sampled_from(PURPOSES))
    def object_(self, i: int, purpose: str) -> None:
        cid = self.contacts[i][0]
        consent.object_to(self.session, self.mid, cid, purpose, **self._by_contact)
        for ch in Channel:
            self.model[(cid, purpose, ch.value)] = False

    @rule(i=contact_ix)
    def pay(self, i: int) -> None:
        self.payments += 1
        followups.schedule_for_payment(
            self.session,
            self.mid,
            self.contacts[i][0],
            f"p{self.payments}",
            "inv",
            100,
            "USDC",
            self.clock.now(),
            self.clock,
        )

    @rule(minutes=st.one_of(st.integers(1, 12 * 60), st.integers(12 * 60, 60 * 24 * 40)))
    def advance(self, minutes: int) -> None:
        """Time passes and the worker runs."""
        self.clock.advance(minutes=minutes)
        self.dispatch(outcome="delivered")

    @precondition(lambda self: self.payments > 0)
    @rule(outcome=st.sampled_from(["delivered", "refused", "uncertain"]))
    def dispatch(self, outcome: str) -> None:
        """Each prepared message is delivered, refused (retried later) or lost in a way that
        may have delivered it (never resent; counts as sent for the cap)."""
        now = self.clock.now()
        followups.expire_due(self.session, now)
        for fid in followups_dispatch.claim_due(self.session, now, 10, "w"):
            send = followups_dispatch.prepare_send(self.session, fid, now, KEYRING)
            if send is None:
                event("not sent")
                continue
            if outcome == "refused":
                followups_dispatch.mark_failed(self.session, fid, now)
                continue
            tz = dict(self.contacts)[send.contact_id]
            local = now.astimezone(ZoneInfo(tz))
            assert self.model.get((send.contact_id, send.purpose, send.channel)), "no consent"
            assert 8 * 60 <= local.hour * 60 + local.minute < 21 * 60, "quiet hours"
            last = max((t for c, t in self.sent if c == send.contact_id), default=None)
            assert last is None or now - last >= CAP, "frequency cap"
            assert send.address is not None
            if outcome == "uncertain":
                followups_dispatch.mark_failed(self.session, fid, now, retry=False)
            else:
                followups_dispatch.mark_sent(self.session, fid, now)
            self.sent.append((send.contact_id, now))
            event(outcome)

    @invariant()
    def chains_verify(self) -> None:
        for cid, _ in self.contacts:
            assert consent.verify_chain(self.session, cid).ok


SendRules.TestCase.settings = settings(
    max_examples=20, stateful_step_count=25, deadline=None, database=None
)
TestSendRules = SendRules.TestCase
