from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import timedelta

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session, select

from crm import KeyRing, privacy
from crm.audit.models import AuditLog
from crm.clock import FrozenClock
from crm.consent import chain
from crm.consent import service as consent
from crm.consent.models import ConsentEvent, ConsentState
from crm.consent.service import SealStatus
from crm.enums import Channel, Purpose
from crm.errors import ContactErased, ContactNotFound, InvalidChoice, InvalidRequest

from .conftest import MakeContact, count

ACTIONS = st.sampled_from(["grant", "withdraw", "object"])
PURPOSES = st.sampled_from([p.value for p in Purpose])
CHANNELS = st.sampled_from([c.value for c in Channel])


def _step() -> st.SearchStrategy[tuple[str, str, str | None]]:
    return st.tuples(PURPOSES, CHANNELS, ACTIONS).map(
        lambda t: (t[0], t[1] if t[2] == "grant" else (None if t[2] == "object" else t[1]), t[2])
    )


class TestRecord:
    def test_grant_then_may_contact(
        self,
        session: Session,
        make_contact: MakeContact,
        merchant_id: int,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        c = make_contact()
        assert c.id is not None
        kw = {"actor": "c", "clock": clock, "keyring": keyring}
        assert not consent.may_contact(session, c.id, "service_followup", "email")
        consent.grant(session, merchant_id, c.id, "service_followup", "email", **kw)
        assert consent.may_contact(session, c.id, "service_followup", "email")
        assert not consent.may_contact(session, c.id, "service_followup", "sms")
        assert not consent.may_contact(session, c.id, "marketing", "email")

    def test_withdraw_one_call_all_channels(
        self,
        session: Session,
        make_contact: MakeContact,
        merchant_id: int,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        c = make_contact()
        assert c.id is not None
        kw = {"actor": "c", "clock": clock, "keyring": keyring}
        for ch in ("email", "sms", "phone"):
            consent.grant(session, merchant_id, c.id, "marketing", ch, **kw)
        consent.withdraw(session, merchant_id, c.id, "marketing", **kw)
        assert not any(consent.may_contact(session, c.id, "marketing", ch) for ch in Channel)

    def test_objection_blocks_marketing_everywhere_only(
        self,
        session: Session,
        make_contact: MakeContact,
        merchant_id: int,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        c = make_contact()
        assert c.id is not None
        kw = {"actor": "c", "clock": clock, "keyring": keyring}
        consent.grant(session, merchant_id, c.id, "marketing", "email", **kw)
        consent.grant(session, merchant_id, c.id, "service_followup", "email", **kw)
        consent.object_to(session, merchant_id, c.id, **kw)
        assert not any(consent.may_contact(session, c.id, "marketing", ch) for ch in Channel)
        assert consent.may_contact(session, c.id, "service_followup", "email")
        states = {(s.purpose, s.channel): s.state for s in session.exec(select(ConsentState)).all()}
        assert states[("marketing", "webhook")] == "objected"

    @pytest.mark.parametrize(
        ("kwargs", "code"),
        [
            ({"purpose": "spam", "channel": "email", "action": "grant"}, "invalid_purpose"),
            ({"purpose": "marketing", "channel": "pigeon", "action": "grant"}, "invalid_channel"),
            ({"purpose": "marketing", "channel": "email", "action": "maybe"}, "invalid_action"),
            ({"purpose": "marketing", "channel": None, "action": "grant"}, "invalid_channel"),
            # an objection naming a channel used to block that channel only (Art. 21: all)
            ({"purpose": "marketing", "channel": "email", "action": "object"}, "invalid_channel"),
            (
                {
                    "purpose": "marketing",
                    "channel": "email",
                    "action": "grant",
                    "legal_basis": "vibes",
                },
                "invalid_legal_basis",
            ),
        ],
    )
    def test_bad_input_nothing_written(
        self,
        session: Session,
        make_contact: MakeContact,
        merchant_id: int,
        clock: FrozenClock,
        keyring: KeyRing,
        kwargs: dict[str, object],
        code: str,
    ) -> None:
        c = make_contact()
        assert c.id is not None
        before = (count(session, ConsentEvent), count(session, ConsentState))
        with pytest.raises(InvalidRequest) as info:
            consent.record(
                session,
                merchant_id,
                c.id,
                actor="c",
                clock=clock,
                keyring=keyring,
                **kwargs,  # type: ignore[arg-type]
            )
        assert info.value.code == code
        assert (count(session, ConsentEvent), count(session, ConsentState)) == before

    def test_unknown_choice_is_invalid_choice(self) -> None:
        from crm.enums import parse_choice

        with pytest.raises(InvalidChoice):
            parse_choice(Purpose, "nope", "purpose")

    def test_other_merchants_contact(
        self,
        session: Session,
        make_contact: MakeContact,
        merchant_id: int,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        c = make_contact()
        assert c.id is not None
        kw = {"actor": "c", "clock": clock, "keyring": keyring}
        with pytest.raises(ContactNotFound):
            consent.grant(session, merchant_id + 1, c.id, "marketing", "email", **kw)
        assert count(session, ConsentEvent) == 0


class TestVerifyChain:
    def test_chain_links_and_detects_tampering(
        self,
        session: Session,
        make_contact: MakeContact,
        merchant_id: int,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        c = make_contact()
        assert c.id is not None
        kw = {"actor": "c", "clock": clock, "keyring": keyring}
        for _ in range(3):
            consent.grant(session, merchant_id, c.id, "marketing", "email", **kw)
            clock.advance(minutes=1)
            consent.withdraw(session, merchant_id, c.id, "marketing", "email", **kw)
        events = consent.history(session, c.id)
        assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
        assert events[0].prev_hash == chain.GENESIS
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(events))
        assert consent.verify_chain(session, c.id).ok
        # rewrite history behind the service's back: the withdrawal at seq 4 becomes a grant
        session.execute(
            sa.update(ConsentEvent)
            .where(ConsentEvent.contact_id == c.id, ConsentEvent.seq == 4)
            .values(action="grant")
        )
        session.expire_all()
        report = consent.verify_chain(session, c.id)
        assert not report.ok
        assert report.broken_at_seq == 4

    def test_deleting_an_entry_is_detected(
        self,
        session: Session,
        make_contact: MakeContact,
        merchant_id: int,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        c = make_contact()
        assert c.id is not None
        for ch in ("email", "sms", "phone"):
            consent.grant(
                session, merchant_id, c.id, "marketing", ch, actor="c", clock=clock, keyring=keyring
            )
        session.execute(sa.delete(ConsentState))
        session.execute(
            sa.delete(ConsentEvent).where(ConsentEvent.contact_id == c.id, ConsentEvent.seq == 2)
        )
        session.expire_all()
        assert consent.verify_chain(session, c.id).broken_at_seq == 3


class TestFoldProperty:
    @settings(database=None)
    @given(steps=st.lists(_step(), max_size=25))
    def test_fold_is_order_sensitive_last_writer_wins(
        self, steps: list[tuple[str, str | None, str]]
    ) -> None:
        state = chain.fold({"purpose": p, "channel": c, "action": a} for p, c, a in steps)
        # Built from the steps alone: every (purpose, channel) that some step covers (a NULL
        # channel covers all of the purpose's channels) ends in the status of the last such step;
        # pairs no step touched are absent.
        status_of = {"grant": "granted", "withdraw": "withdrawn", "object": "objected"}
        expected: dict[tuple[str, str], str] = {}
        for purpose, channel in itertools.product(
            [p.value for p in Purpose], [c.value for c in Channel]
        ):
            covering = [a for p, c, a in steps if p == purpose and c in (None, channel)]
            if covering:
                expected[(purpose, channel)] = status_of[covering[-1]]
        assert state == expected

    @settings(
        max_examples=15,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(steps=st.lists(_step(), min_size=1, max_size=12))
    def test_projection_equals_fold_of_ledger(
        self,
        session: Session,
        make_contact: MakeContact,
        merchant_id: int,
        clock: FrozenClock,
        keyring: KeyRing,
        steps: list[tuple[str, str | None, str]],
    ) -> None:
        nested = session.begin_nested()
        try:
            c = make_contact()
            assert c.id is not None
            for purpose, channel, action in steps:
                consent.record(
                    session,
                    merchant_id,
                    c.id,
                    purpose=purpose,
                    channel=channel,
                    action=action,
                    actor="prop",
                    clock=clock,
                    keyring=keyring,
                )
                clock.advance(timedelta(seconds=1))
            projection = {
                (s.purpose, s.channel): s.state
                for s in session.exec(
                    select(ConsentState).where(ConsentState.contact_id == c.id)
                ).all()
            }
            assert projection == chain.fold(consent.history(session, c.id))
            assert consent.verify_chain(session, c.id).ok
            report = consent.verify_chain(session, c.id, keyring=keyring)
            assert (report.ok, report.seal) == (True, SealStatus.VALID)
        finally:
            nested.rollback()


# ----------------------------------------------------------------------------- tamper-evidence


@dataclass
class Ledger:
    """marketing/email granted (seq 1), service_followup/email granted (seq 2), then the
    customer withdraws marketing/email (seq 3)."""

    contact_id: int
    ids: dict[int, int]  # seq -> event id


@pytest.fixture
def ledger(
    session: Session,
    make_contact: MakeContact,
    merchant_id: int,
    clock: FrozenClock,
    keyring: KeyRing,
) -> Ledger:
    c = make_contact()
    assert c.id is not None
    kw = {"clock": clock, "keyring": keyring}
    consent.grant(session, merchant_id, c.id, "marketing", "email", actor="staff", **kw)
    consent.grant(session, merchant_id, c.id, "service_followup", "email", actor="staff", **kw)
    consent.withdraw(session, merchant_id, c.id, "marketing", "email", actor="customer", **kw)
    report = consent.verify_chain(session, c.id, keyring=keyring)
    assert (report.ok, report.seal, report.length) == (True, SealStatus.VALID, 3)
    return Ledger(c.id, {e.seq: e.id for e in consent.history(session, c.id)})  # type: ignore[misc]


def _sql(session: Session, sql: str, **params: object) -> None:
    """Write behind the service's back, as someone with database access (but no keys) would."""
    session.execute(sa.text(sql), params)
    session.expire_all()


def _strip_mac(session: Session, contact_id: int) -> None:
    _sql(session, "UPDATE crm_consent_head SET mac = NULL WHERE contact_id = :c", c=contact_id)


def _allow_heads_without_mac(session: Session) -> None:
    """Drop the NOT NULL on ``crm_consent_head.mac`` (inside the test's transaction)."""
    if session.get_bind().dialect.name == "postgresql":
        _sql(session, "ALTER TABLE crm_consent_head ALTER COLUMN mac DROP NOT NULL")
        return
    # SQLite cannot drop a column constraint: rebuild the table as a bare copy of its rows
    _sql(session, "CREATE TABLE crm_consent_head_copy AS SELECT * FROM crm_consent_head")
    _sql(session, "DROP TABLE crm_consent_head")
    _sql(session, "ALTER TABLE crm_consent_head_copy RENAME TO crm_consent_head")


def _undo_withdrawal_in_state(session: Session, led: Ledger) -> None:
    _sql(
        session,
        "UPDATE crm_consent_state SET state = 'granted', event_id = :g"
        " WHERE contact_id = :c AND purpose = 'marketing' AND channel = 'email'",
        g=led.ids[1],
        c=led.contact_id,
    )


def _delete_seq(session: Session, led: Ledger, seq: int) -> None:
    _sql(
        session,
        "DELETE FROM crm_consent_event WHERE contact_id = :c AND seq = :s",
        c=led.contact_id,
        s=seq,
    )


def _rehash(session: Session, contact_id: int) -> None:
    """Renumber and recompute the whole chain, then point the head row at the new last entry:
    everything the hash function allows without the key ring."""
    prev = chain.GENESIS
    for seq, e in enumerate(consent.history(session, contact_id), start=1):
        entry = chain.LedgerEntry(
            contact_id=contact_id,
            seq=seq,
            purpose=e.purpose,
            channel=e.channel,
            action=e.action,
            legal_basis=e.legal_basis,
            policy_version=e.policy_version,
            source=e.source,
            actor=e.actor,
            occurred_at=e.occurred_at,
        )
        new = chain.entry_hash(entry, prev)
        _sql(
            session,
            "UPDATE crm_consent_event SET seq = :s, prev_hash = :p, hash = :h WHERE id = :i",
            s=seq,
            p=prev,
            h=new,
            i=e.id,
        )
        prev = new
    _sql(
        session,
        "UPDATE crm_consent_head SET seq = :s, head_hash = :h WHERE contact_id = :c",
        s=seq,
        h=prev,
        c=contact_id,
    )


class TestVerifyChainTamper:
    """Each edit someone with write access to the database can make is reported (``ok`` is
    False) by a verification holding the key ring."""

    def test_deleting_the_last_event_with_its_state(
        self, session: Session, ledger: Ledger, keyring: KeyRing
    ) -> None:
        _undo_withdrawal_in_state(session, ledger)
        _delete_seq(session, ledger, 3)
        assert consent.may_contact(session, ledger.contact_id, "marketing", "email")
        report = consent.verify_chain(session, ledger.contact_id, keyring=keyring)
        assert (report.ok, report.length, report.broken_at_seq) == (False, 2, None)
        assert (report.seal, report.sealed_seq) == (SealStatus.STALE, 3)
        assert report.state_mismatches == ()  # the attacker made state agree with the rest
        assert "sealed head names seq 3" in report.problems[0]
        # no key ring needed to see this one: the head row still names seq 3
        assert consent.verify_chain(session, ledger.contact_id).seal is SealStatus.STALE

    def test_deleting_the_last_event_and_rewriting_the_head_row(
        self, session: Session, ledger: Ledger, keyring: KeyRing
    ) -> None:
        _undo_withdrawal_in_state(session, ledger)
        _delete_seq(session, ledger, 3)
        _rehash(session, ledger.contact_id)
        report = consent.verify_chain(session, ledger.contact_id, keyring=keyring)
        assert (report.ok, report.broken_at_seq, report.state_mismatches) == (False, None, ())
        assert report.seal is SealStatus.INVALID
        # without the key ring this rewrite is out of reach: the head looks consistent
        assert consent.verify_chain(session, ledger.contact_id).ok

    def test_deleting_a_middle_event(
        self, session: Session, ledger: Ledger, keyring: KeyRing
    ) -> None:
        _sql(
            session,
            "DELETE FROM crm_consent_state WHERE contact_id = :c AND purpose = 'service_followup'",
            c=ledger.contact_id,
        )
        _delete_seq(session, ledger, 2)
        report = consent.verify_chain(session, ledger.contact_id, keyring=keyring)
        assert (report.ok, report.broken_at_seq, report.seal) == (False, 3, SealStatus.VALID)
        _rehash(session, ledger.contact_id)  # renumbered and relinked: the MAC still catches it
        report = consent.verify_chain(session, ledger.contact_id, keyring=keyring)
        assert (report.ok, report.broken_at_seq, report.seal) == (False, None, SealStatus.INVALID)

    def test_editing_an_event(self, session: Session, ledger: Ledger, keyring: KeyRing) -> None:
        _sql(
            session,
            "UPDATE crm_consent_event SET action = 'grant' WHERE id = :i",
            i=ledger.ids[3],
        )
        _sql(
            session,
            "UPDATE crm_consent_state SET state = 'granted' WHERE event_id = :i",
            i=ledger.ids[3],
        )
        report = consent.verify_chain(session, ledger.contact_id, keyring=keyring)
        assert (report.ok, report.broken_at_seq, report.state_mismatches) == (False, 3, ())
        _rehash(session, ledger.contact_id)
        report = consent.verify_chain(session, ledger.contact_id, keyring=keyring)
        assert (report.ok, report.broken_at_seq, report.seal) == (False, None, SealStatus.INVALID)

    def test_rewriting_the_state_row_only(
        self, session: Session, ledger: Ledger, keyring: KeyRing
    ) -> None:
        _sql(
            session,
            "UPDATE crm_consent_state SET state = 'granted' WHERE contact_id = :c"
            " AND purpose = 'marketing' AND channel = 'email'",
            c=ledger.contact_id,
        )
        _sql(
            session,
            "INSERT INTO crm_consent_state (contact_id, purpose, channel, merchant_id, state,"
            " event_id, updated_at) SELECT contact_id, purpose, 'sms', merchant_id, 'granted',"
            " event_id, updated_at FROM crm_consent_state WHERE contact_id = :c"
            " AND purpose = 'marketing' AND channel = 'email'",
            c=ledger.contact_id,
        )
        c, withdrawal = ledger.contact_id, ledger.ids[3]
        expected = (
            consent.StateMismatch(
                c, "marketing", "email", "withdrawn", "granted", withdrawal, withdrawal
            ),
            consent.StateMismatch(c, "marketing", "sms", None, "granted", None, withdrawal),
        )
        keyed = consent.verify_chain(session, c, keyring=keyring)
        assert (keyed.ok, keyed.broken_at_seq, keyed.seal) == (False, None, SealStatus.VALID)
        assert keyed.state_mismatches == expected
        report = consent.verify_chain(session, c)  # the replay needs no key
        assert (report.ok, report.seal, report.state_mismatches) == (
            False,
            SealStatus.UNCHECKED,
            expected,
        )
        assert report.problems[0] == (
            f"contact {c} marketing/email: crm_consent_state has granted (event "
            f"{withdrawal}), the ledger gives withdrawn (event {withdrawal})"
        )

    def test_state_row_pointing_at_another_event(
        self, session: Session, ledger: Ledger, keyring: KeyRing
    ) -> None:
        _sql(
            session,
            "UPDATE crm_consent_state SET event_id = :e WHERE contact_id = :c"
            " AND purpose = 'service_followup'",
            e=ledger.ids[1],
            c=ledger.contact_id,
        )
        [m] = consent.verify_chain(session, ledger.contact_id, keyring=keyring).state_mismatches
        assert (m.purpose, m.channel, m.ledger_event_id, m.stored_event_id) == (
            "service_followup",
            "email",
            ledger.ids[2],
            ledger.ids[1],
        )

    def test_head_mac_of_another_contact(
        self,
        session: Session,
        ledger: Ledger,
        keyring: KeyRing,
        make_contact: MakeContact,
        merchant_id: int,
        clock: FrozenClock,
    ) -> None:
        other = make_contact()
        assert other.id is not None
        for action in ("grant", "withdraw", "grant"):
            consent.record(
                session,
                merchant_id,
                other.id,
                purpose="marketing",
                channel="email",
                action=action,
                actor="staff",
                clock=clock,
                keyring=keyring,
            )
        _sql(
            session,
            "UPDATE crm_consent_head SET mac = (SELECT mac FROM crm_consent_head"
            " WHERE contact_id = :o) WHERE contact_id = :c",
            c=ledger.contact_id,
            o=other.id,
        )
        assert consent.verify_chain(session, ledger.contact_id, keyring=keyring).seal is (
            SealStatus.INVALID
        )
        # the other contact's whole head (same seq 3, its hash and MAC): still not this contact's
        # chain, and a rehashed chain ending in that hash is out of reach
        _sql(
            session,
            "UPDATE crm_consent_head SET"
            " seq = (SELECT seq FROM crm_consent_head WHERE contact_id = :o),"
            " head_hash = (SELECT head_hash FROM crm_consent_head WHERE contact_id = :o),"
            " mac = (SELECT mac FROM crm_consent_head WHERE contact_id = :o)"
            " WHERE contact_id = :c",
            c=ledger.contact_id,
            o=other.id,
        )
        report = consent.verify_chain(session, ledger.contact_id, keyring=keyring)
        assert (report.ok, report.seal) == (False, SealStatus.INVALID)

    def test_deleting_the_head_row(
        self, session: Session, ledger: Ledger, keyring: KeyRing
    ) -> None:
        _sql(session, "DELETE FROM crm_consent_head WHERE contact_id = :c", c=ledger.contact_id)
        for keyring_or_none in (keyring, None):
            report = consent.verify_chain(session, ledger.contact_id, keyring=keyring_or_none)
            assert (report.ok, report.seal) == (False, SealStatus.MISSING)

    def test_another_master_key_does_not_verify(self, session: Session, ledger: Ledger) -> None:
        report = consent.verify_chain(session, ledger.contact_id, keyring=KeyRing(b"x" * 32))
        assert (report.ok, report.seal) == (False, SealStatus.INVALID)


class TestSealOnAppend:
    def test_append_over_an_altered_head_is_flagged_for_good(
        self,
        session: Session,
        ledger: Ledger,
        keyring: KeyRing,
        merchant_id: int,
        clock: FrozenClock,
    ) -> None:
        """A later legitimate append must not launder a truncation into a valid seal."""
        _undo_withdrawal_in_state(session, ledger)
        _delete_seq(session, ledger, 3)
        _rehash(session, ledger.contact_id)
        kw = {"actor": "staff", "clock": clock, "keyring": keyring}
        event = consent.grant(session, merchant_id, ledger.contact_id, "research", "sms", **kw)
        assert event.seq == 3  # the append itself is never refused
        consent.grant(session, merchant_id, ledger.contact_id, "research", "email", **kw)
        report = consent.verify_chain(session, ledger.contact_id, keyring=keyring)
        assert (report.ok, report.seal, report.flagged_seq) == (False, SealStatus.FLAGGED, 3)
        assert report.problems == ["the append of seq 3 found the ledger head altered"]
        # clearing the flag without the key ring breaks the MAC instead
        _sql(
            session,
            "UPDATE crm_consent_head SET flagged_seq = NULL WHERE contact_id = :c",
            c=ledger.contact_id,
        )
        assert consent.verify_chain(session, ledger.contact_id, keyring=keyring).seal is (
            SealStatus.INVALID
        )
        audits = session.exec(
            select(AuditLog).where(AuditLog.action == "consent.head_mismatch")
        ).all()
        assert [(a.object_id, a.detail) for a in audits] == [
            (str(ledger.contact_id), {"seq": 3, "seal": "invalid"})
        ]

    def test_a_state_row_flipped_by_hand_is_flagged_by_the_next_append(
        self,
        session: Session,
        ledger: Ledger,
        keyring: KeyRing,
        merchant_id: int,
        clock: FrozenClock,
    ) -> None:
        """Someone with the database flips the withdrawn row back to granted (messages go out
        again); the customer, still mailed, withdraws again. That append overwrote the row and
        verification then passed: the evidence was gone, nothing flagged or audited."""
        _undo_withdrawal_in_state(session, ledger)
        assert consent.may_contact(session, ledger.contact_id, "marketing", "email")
        event = consent.withdraw(
            session,
            merchant_id,
            ledger.contact_id,
            "marketing",
            "email",
            actor="customer",
            clock=clock,
            keyring=keyring,
        )
        assert not consent.may_contact(session, ledger.contact_id, "marketing", "email")
        report = consent.verify_chain(session, ledger.contact_id, keyring=keyring)
        assert (report.ok, report.seal, report.flagged_seq) == (
            False,
            SealStatus.FLAGGED,
            event.seq,
        )
        audits = session.exec(
            select(AuditLog).where(AuditLog.action == "consent.state_mismatch")
        ).all()
        assert [(a.object_id, a.detail) for a in audits] == [
            (
                str(ledger.contact_id),
                {
                    "seq": event.seq,
                    "rows": [
                        {
                            "purpose": "marketing",
                            "channel": "email",
                            "ledger": "withdrawn",
                            "stored": "granted",
                        }
                    ],
                },
            )
        ]

    def test_the_schema_refuses_a_head_without_a_mac(
        self, session: Session, ledger: Ledger
    ) -> None:
        """Every writer seals (crm migration 0005): stripping a MAC, the first step of a
        downgrade that the next append would re-seal, is refused by the database."""
        with pytest.raises(sa.exc.IntegrityError), session.begin_nested():
            _strip_mac(session, ledger.contact_id)
        assert consent.verify_chain(session, ledger.contact_id).ok

    def test_an_append_over_a_stripped_head_is_flagged(
        self,
        session: Session,
        ledger: Ledger,
        keyring: KeyRing,
        merchant_id: int,
        clock: FrozenClock,
    ) -> None:
        """With the column's constraint dropped too, a truncated ledger under a head without a
        MAC is not sealed as legitimate by the next append: it is flagged and audited."""
        _allow_heads_without_mac(session)
        _undo_withdrawal_in_state(session, ledger)
        _delete_seq(session, ledger, 3)
        _rehash(session, ledger.contact_id)
        _strip_mac(session, ledger.contact_id)
        report = consent.verify_chain(session, ledger.contact_id, keyring=keyring)
        assert (report.ok, report.seal) == (False, SealStatus.UNSEALED)
        event = consent.grant(
            session,
            merchant_id,
            ledger.contact_id,
            "research",
            "sms",
            actor="staff",
            clock=clock,
            keyring=keyring,
        )
        report = consent.verify_chain(session, ledger.contact_id, keyring=keyring)
        assert (report.ok, report.seal, report.flagged_seq) == (
            False,
            SealStatus.FLAGGED,
            event.seq,
        )
        audits = session.exec(
            select(AuditLog).where(AuditLog.action == "consent.head_mismatch")
        ).all()
        assert [(a.object_id, a.detail) for a in audits] == [
            (str(ledger.contact_id), {"seq": event.seq, "seal": "unsealed"})
        ]

    def test_an_append_reads_the_newest_entries_not_the_whole_ledger(
        self,
        session: Session,
        ledger: Ledger,
        keyring: KeyRing,
        merchant_id: int,
        clock: FrozenClock,
    ) -> None:
        """An append replayed the contact's whole ledger under its lock (~105 ms at 3,000
        entries); it reads the last entry and each overwritten row's newest setting entry."""
        kw = {"actor": "customer", "clock": clock, "keyring": keyring}
        for i in range(40):
            consent.grant(session, merchant_id, ledger.contact_id, "service_followup", "sms", **kw)
            if i % 2:
                consent.object_to(session, merchant_id, ledger.contact_id, "marketing", **kw)
        session.expunge_all()
        loaded: list[int] = []

        def on_load(target: ConsentEvent, _context: object) -> None:
            loaded.append(target.seq)

        sa.event.listen(ConsentEvent, "load", on_load)
        try:
            event = consent.withdraw(
                session, merchant_id, ledger.contact_id, "marketing", None, **kw
            )
        finally:
            sa.event.remove(ConsentEvent, "load", on_load)
        assert event.seq == 3 + 40 + 20 + 1
        assert len(loaded) <= 1 + len(Channel)  # the last entry, then one per channel
        report = consent.verify_chain(session, ledger.contact_id, keyring=keyring)
        assert (report.ok, report.flagged_seq) == (True, None)

    def test_may_contact_is_still_one_query(self, session: Session, ledger: Ledger) -> None:
        statements: list[str] = []
        conn = session.connection()
        sa.event.listen(conn, "before_cursor_execute", lambda *a: statements.append(a[2]))
        assert not consent.may_contact(session, ledger.contact_id, "marketing", "email")
        assert len(statements) == 1
        assert "crm_consent_state" in statements[0]


class TestVerifyUntampered:
    def test_grants_withdrawals_objections_and_erasure(
        self,
        session: Session,
        make_contact: MakeContact,
        merchant_id: int,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        c = make_contact()
        assert c.id is not None
        kw = {"actor": "c", "clock": clock, "keyring": keyring}
        for ch in ("email", "sms", "phone"):
            consent.grant(session, merchant_id, c.id, "marketing", ch, **kw)
            consent.grant(session, merchant_id, c.id, "service_followup", ch, **kw)
            clock.advance(minutes=1)
        consent.withdraw(session, merchant_id, c.id, "marketing", "sms", **kw)
        consent.withdraw(session, merchant_id, c.id, "service_followup", **kw)
        consent.object_to(session, merchant_id, c.id, **kw)
        report = consent.verify_chain(session, c.id, keyring=keyring)
        assert (report.ok, report.seal, report.length, report.problems) == (
            True,
            SealStatus.VALID,
            9,
            [],
        )
        privacy.erase_contact(session, merchant_id, c.id, actor="dpo", clock=clock)
        session.expire_all()
        # the ledger and its seal outlive the shredded data key
        report = consent.verify_chain(session, c.id, keyring=keyring)
        assert (report.ok, report.seal, report.length) == (True, SealStatus.VALID, 9)
        with pytest.raises(ContactErased):
            consent.grant(session, merchant_id, c.id, "marketing", "email", **kw)
