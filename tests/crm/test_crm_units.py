"""Pure units: errors, clock, crypto, windows, tags, rewards idempotency, audit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.exceptions import InvalidTag
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlmodel import Session

from crm import KeyRing
from crm.clock import Clock, FrozenClock, SystemClock
from crm.errors import CRMError, InvalidEmail, NotFound
from crm.followups.windows import in_window, next_window_start
from crm.rewards import service as rewards
from crm.rewards.models import RewardEntry
from crm.tags import normalise_tags

from .conftest import MakeContact, count
from .helpers import sent_followup


class TestErrors:
    def test_shape(self) -> None:
        err = InvalidEmail("malformed e-mail address")
        assert isinstance(err, CRMError)
        assert isinstance(err, ValueError)
        assert err.to_dict() == {
            "error": {
                "type": "invalid_request_error",
                "code": "invalid_email",
                "message": "malformed e-mail address",
                "param": "email",
            }
        }
        assert issubclass(NotFound, LookupError)
        assert NotFound.status_code == 404


class TestClock:
    def test_frozen_and_system(self) -> None:
        c = FrozenClock(datetime(2026, 1, 1, tzinfo=UTC))
        c.advance(hours=2)
        assert c.now() == datetime(2026, 1, 1, 2, tzinfo=UTC)
        assert isinstance(c, Clock)
        assert isinstance(SystemClock(), Clock)
        assert SystemClock().now().tzinfo is not None


class TestKeyRing:
    def test_roundtrip_and_binding(self) -> None:
        kr = KeyRing(b"m" * 32)
        key, wrapped = kr.new_data_key(7)
        blob = key.encrypt("secret", "crm_contact.name:7")
        assert kr.unwrap(7, wrapped).decrypt(blob, "crm_contact.name:7") == "secret"
        with pytest.raises(InvalidTag):
            kr.unwrap(8, wrapped)  # wrapped key bound to its contact
        with pytest.raises(InvalidTag):
            key.decrypt(blob, "crm_contact.email:7")  # ciphertext bound to its column
        with pytest.raises(InvalidTag):
            KeyRing(b"x" * 32).unwrap(7, wrapped)  # other master key
        assert "m" * 8 not in repr(kr)
        assert repr(key) == "DataKey(<redacted>)"

    def test_blind_index_keyed_and_scoped_to_the_merchant(self) -> None:
        a, b = KeyRing(b"a" * 32), KeyRing(b"b" * 32)
        index = a.blind_index("email", "x@y.z", merchant_id=1)
        assert index == a.blind_index("email", "x@y.z", merchant_id=1)
        assert index != b.blind_index("email", "x@y.z", merchant_id=1)
        assert index != a.blind_index("wallet", "x@y.z", merchant_id=1)
        # one customer at two merchants: nothing in the database links the two rows
        assert index != a.blind_index("email", "x@y.z", merchant_id=2)
        assert a.blind_index("email", "x@y.z", merchant_id=12) != a.blind_index(
            "email", "x@y.z", merchant_id=1
        )

    def test_short_master_key_rejected(self) -> None:
        with pytest.raises(ValueError, match="32 bytes"):
            KeyRing(b"short")


class TestWindows:
    @settings(database=None)
    @given(
        at=st.datetimes(
            min_value=datetime(2020, 1, 1), max_value=datetime(2035, 1, 1), timezones=st.just(UTC)
        ),
        tz=st.sampled_from(
            [
                "UTC",
                "Europe/London",
                "America/New_York",
                "Asia/Shanghai",
                "Australia/Lord_Howe",
                "Asia/Kathmandu",
            ]
        ),
        start=st.integers(0, 23 * 60),
        length=st.integers(1, 12 * 60),
    )
    def test_next_start_is_allowed_soon_and_not_before(
        self, at: datetime, tz: str, start: int, length: int
    ) -> None:
        end = min(start + length, 24 * 60)
        nxt = next_window_start(at, tz, start, end)
        assert nxt >= at
        assert nxt - at <= timedelta(hours=49)
        assert in_window(nxt, tz, start, end)

    def test_dst_spring_forward_london(self) -> None:
        # 2026-03-29 01:00 UTC clocks go 01:00 -> 02:00 local; window opens 08:00 BST = 07:00 UTC
        at = datetime(2026, 3, 28, 22, 0, tzinfo=UTC)
        assert next_window_start(at, "Europe/London", 480, 1260) == datetime(
            2026, 3, 29, 7, 0, tzinfo=UTC
        )


class TestTags:
    def test_normalise(self) -> None:
        assert normalise_tags([" Late ", "late", "broken-item"]) == ["late", "broken-item"]
        with pytest.raises(ValueError, match="slugs"):
            normalise_tags(["has space"])
        with pytest.raises(ValueError, match="list"):
            normalise_tags("late")  # type: ignore[arg-type]


class TestGrantForResponse:
    def test_idempotent_per_followup(
        self,
        session: Session,
        merchant_id: int,
        make_contact: MakeContact,
        clock: FrozenClock,
        keyring: KeyRing,
    ) -> None:
        c = make_contact()
        fu, _ = sent_followup(session, merchant_id, c, clock, keyring)
        kw = {
            "merchant_id": merchant_id,
            "contact_id": c.id or 0,
            "followup_id": fu.id or 0,
            "now": clock.now(),
        }
        first = rewards.grant_for_response(session, points=10, **kw)  # type: ignore[arg-type]
        second = rewards.grant_for_response(session, points=99, **kw)  # type: ignore[arg-type]
        assert first.id == second.id
        assert count(session, RewardEntry) == 1
        assert rewards.balance(session, merchant_id, c.id or 0) == 10
