"""Quiet hours in the contact's own time zone (pure functions).

A window is ``[start, end)`` in local wall-clock minutes. Its edges are instants: a wall time
the clock shows twice (a fall-back overlap) opens at whichever of the two comes first after
the moment asked about, and one the clock skips (a spring-forward gap) is the instant the
clock jumps past it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crm.errors import InvalidTimeZone

__all__ = ["in_window", "next_window_start", "window_bounds", "zone"]

_DAY = 24 * 60


def zone(name: str) -> ZoneInfo:
    """The zone ``name`` names, or :class:`InvalidTimeZone`: a name stored when it was valid
    can stop resolving (tzdata moved the legacy ``US/Eastern``-style names out of Debian's
    default package)."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidTimeZone(f"unknown time zone {name!r}") from None


def _minute(local: datetime) -> int:
    return local.hour * 60 + local.minute


def in_window(at: datetime, tz: str, start_minute: int, end_minute: int) -> bool:
    """True when local time of ``at`` is within [start, end)."""
    return start_minute <= _minute(at.astimezone(zone(tz))) < end_minute


def _instants(day: date, minute: int, tz: ZoneInfo) -> list[datetime]:
    """The UTC instants at which the local clock reads ``minute`` on ``day`` (two in an
    overlap), or, where the clock skips it, the instant it jumps past it."""
    day, minute = day + timedelta(days=minute // _DAY), minute % _DAY
    wall = datetime.combine(day, time(minute // 60, minute % 60))
    shown = sorted(
        {
            utc
            for fold in (0, 1)
            if (utc := wall.replace(tzinfo=tz, fold=fold).astimezone(UTC))
            .astimezone(tz)
            .replace(tzinfo=None)
            == wall
        }
    )
    if shown:
        return shown
    # skipped: the two folds map it to either side of the jump
    before, after = sorted(wall.replace(tzinfo=tz, fold=fold).astimezone(UTC) for fold in (0, 1))
    return [_first(before, after, lambda t: t.astimezone(tz).replace(tzinfo=None) >= wall)]


def _first(low: datetime, high: datetime, reached: Callable[[datetime], bool]) -> datetime:
    """The first whole second in ``(low, high]`` where ``reached`` holds (it holds at
    ``high``, and from its first second on)."""
    lo, hi = int(low.timestamp()), int(high.timestamp())
    while hi - lo > 1:
        middle = (lo + hi) // 2
        if reached(datetime.fromtimestamp(middle, UTC)):
            hi = middle
        else:
            lo = middle
    return datetime.fromtimestamp(hi, UTC)


def next_window_start(at: datetime, tz: str, start_minute: int, end_minute: int) -> datetime:
    """``at`` itself when allowed, else the next local window opening (as UTC)."""
    if in_window(at, tz, start_minute, end_minute):
        return at
    local_zone = zone(tz)
    first = at.astimezone(local_zone).date()
    openings = (
        opening
        for days in range(4)  # a window the clock skips entirely on one day opens the next
        for opening in _instants(first + timedelta(days=days), start_minute, local_zone)
        if opening > at and in_window(opening, tz, start_minute, end_minute)
    )
    opening = next(openings, None)
    if opening is None:
        raise ValueError(f"the window {start_minute}-{end_minute} never opens")
    return _or_when_set_back(at, opening, local_zone, tz, start_minute, end_minute)


def _or_when_set_back(
    since: datetime, edge: datetime, local_zone: ZoneInfo, tz: str, start: int, end: int
) -> datetime:
    """``edge``, or the instant between ``since`` and it when the clock changes, if that
    change alone crosses into or out of the window (a clock set back into it opens it early;
    set back out of it, closes it early)."""
    offset = since.astimezone(local_zone).utcoffset()
    if (edge - timedelta(seconds=1)).astimezone(local_zone).utcoffset() == offset:
        return edge
    change = _first(since, edge, lambda t: t.astimezone(local_zone).utcoffset() != offset)
    inside = in_window(since, tz, start, end)
    return change if in_window(change, tz, start, end) != inside else edge


def window_bounds(
    at: datetime, tz: str, start_minute: int, end_minute: int
) -> tuple[datetime, datetime]:
    """The window ``at`` is in, from ``at``, else the next one: ``(opening, closing)`` as UTC.

    Both ends are local wall-clock times of one day (``end_minute`` 1440 is the next local
    midnight), so a DST change moves them with the contact's clock. A closing time the clock
    shows twice closes at the first one after the opening, and a clock set back to before the
    opening time closes the window when it is set back."""
    opening = next_window_start(at, tz, start_minute, end_minute)
    local_zone = zone(tz)
    day = opening.astimezone(local_zone).date()
    closing = next(c for c in _instants(day, end_minute, local_zone) if c > opening)
    return opening, _or_when_set_back(opening, closing, local_zone, tz, start_minute, end_minute)
