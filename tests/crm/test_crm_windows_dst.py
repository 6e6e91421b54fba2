"""Send windows across DST changes: each edge is the instant the contact's clock reaches it.

The brute force below walks the clock minute by minute; the functions under test must agree
with it around real transitions (fall-back overlaps, spring-forward gaps, 30-minute DST,
midnight changes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crm.errors import InvalidTimeZone
from crm.followups.windows import in_window, next_window_start, window_bounds

CHICAGO = "America/Chicago"

#: (zone, a day with a transition): both directions, a 30-minute change, midnight changes
TRANSITIONS = [
    ("America/Chicago", datetime(2025, 3, 9, tzinfo=UTC)),
    ("America/Chicago", datetime(2025, 11, 2, tzinfo=UTC)),
    ("Europe/London", datetime(2025, 3, 30, tzinfo=UTC)),
    ("Europe/London", datetime(2025, 10, 26, tzinfo=UTC)),
    ("Australia/Lord_Howe", datetime(2025, 4, 5, 14, tzinfo=UTC)),
    ("Australia/Lord_Howe", datetime(2025, 10, 4, 15, tzinfo=UTC)),
    ("America/Havana", datetime(2025, 3, 9, 5, tzinfo=UTC)),
    ("America/Havana", datetime(2025, 11, 2, 5, tzinfo=UTC)),
    ("America/Asuncion", datetime(2024, 3, 24, 3, tzinfo=UTC)),
    ("America/Asuncion", datetime(2024, 10, 6, 4, tzinfo=UTC)),
]


def _first_open_minute(at: datetime, tz: str, start: int, end: int) -> datetime:
    if in_window(at, tz, start, end):
        return at
    t = at.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(5 * 24 * 60):
        if in_window(t, tz, start, end):
            return t
        t += timedelta(minutes=1)
    raise AssertionError("no opening within five days")


def _first_closed_minute(opening: datetime, tz: str, start: int, end: int) -> datetime:
    t = opening.replace(second=0, microsecond=0) + timedelta(minutes=1)
    for _ in range(26 * 60):
        if not in_window(t, tz, start, end):
            return t
        t += timedelta(minutes=1)
    raise AssertionError("no closing within 26 hours")


class TestExamples:
    def test_a_second_pass_of_an_overlap_opens_the_same_night(self) -> None:
        at = datetime(2025, 11, 2, 7, 10, tzinfo=UTC)  # 01:10 CST, the second 01:xx
        assert next_window_start(at, CHICAGO, 90, 210) == datetime(2025, 11, 2, 7, 30, tzinfo=UTC)

    def test_an_opening_the_clock_skips_opens_when_it_jumps(self) -> None:
        at = datetime(2025, 3, 9, 6, 0, tzinfo=UTC)  # 00:00 CST; 02:30 never shows that night
        assert next_window_start(at, CHICAGO, 150, 210) == datetime(2025, 3, 9, 8, 0, tzinfo=UTC)

    def test_a_closing_the_clock_skips_closes_when_it_jumps(self) -> None:
        at = datetime(2025, 3, 9, 7, 0, tzinfo=UTC)  # 01:00 CST, window 01:00-02:30
        assert window_bounds(at, CHICAGO, 60, 150) == (at, datetime(2025, 3, 9, 8, 0, tzinfo=UTC))

    def test_a_window_the_clock_skips_entirely_opens_the_next_day(self) -> None:
        at = datetime(2025, 3, 9, 6, 0, tzinfo=UTC)  # window 02:10-02:50 does not exist today
        assert next_window_start(at, CHICAGO, 130, 170) == datetime(2025, 3, 10, 7, 10, tzinfo=UTC)

    def test_a_zone_that_no_longer_resolves_is_an_invalid_time_zone(self) -> None:
        with pytest.raises(InvalidTimeZone):
            next_window_start(datetime(2025, 1, 1, tzinfo=UTC), "US/Nowhere", 60, 120)


@settings(max_examples=300, deadline=None)
@given(
    place=st.sampled_from(TRANSITIONS),
    minutes=st.integers(-36 * 60, 36 * 60),
    window=st.tuples(st.integers(0, 1439), st.integers(1, 1440)).filter(lambda w: w[0] < w[1]),
)
def test_edges_are_where_the_clock_crosses_them(place, minutes, window) -> None:
    tz, day = place
    at = day + timedelta(minutes=minutes)
    start, end = window
    opening, closing = window_bounds(at, tz, start, end)
    assert opening == _first_open_minute(at, tz, start, end)
    if end < 24 * 60:  # one ending at midnight ends with its day (the next may go on)
        assert closing == _first_closed_minute(opening, tz, start, end)
