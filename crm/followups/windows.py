"""Quiet hours in the contact's own time zone (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

__all__ = ["in_window", "next_window_start", "window_bounds"]


def _minute(local: datetime) -> int:
    return local.hour * 60 + local.minute


def in_window(at: datetime, tz: str, start_minute: int, end_minute: int) -> bool:
    """True when local time of ``at`` is within [start, end)."""
    return start_minute <= _minute(at.astimezone(ZoneInfo(tz))) < end_minute


def next_window_start(at: datetime, tz: str, start_minute: int, end_minute: int) -> datetime:
    """``at`` itself when allowed, else the next local window opening (as UTC)."""
    if in_window(at, tz, start_minute, end_minute):
        return at
    zone = ZoneInfo(tz)
    local = at.astimezone(zone)
    day = local.date()
    if _minute(local) >= start_minute:
        day = day + timedelta(days=1)
    opening = time(start_minute // 60, start_minute % 60)
    for _ in range(3):  # a DST gap can swallow the opening minute: try the next day
        candidate = datetime.combine(day, opening, tzinfo=zone).astimezone(UTC)
        if candidate > at and in_window(candidate, tz, start_minute, end_minute):
            return candidate
        day = day + timedelta(days=1)
    return datetime.combine(day, opening, tzinfo=zone).astimezone(UTC)


def window_bounds(
    at: datetime, tz: str, start_minute: int, end_minute: int
) -> tuple[datetime, datetime]:
    """The window ``at`` is in, from ``at``, else the next one: ``(opening, closing)`` as UTC.

    Both ends are local wall-clock times of one day (``end_minute`` 1440 is the next local
    midnight), so a DST change moves them with the contact's clock."""
    opening = next_window_start(at, tz, start_minute, end_minute)
    zone = ZoneInfo(tz)
    day = opening.astimezone(zone).date() + timedelta(days=end_minute // (24 * 60))
    minute = end_minute % (24 * 60)
    closing = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=zone)
    return opening, closing.astimezone(UTC)
