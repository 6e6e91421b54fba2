"""Timestamps a request may carry."""

from __future__ import annotations

from datetime import datetime

from pydantic import AfterValidator

__all__ = ["PLAUSIBLE_TIME"]


def _plausible_time(value: datetime | None) -> datetime | None:
    """A time the database can store and a report can shift by its period (year 1 with a
    +01:00 offset overflowed on the way to UTC: a 500)."""
    if value is not None and not 1970 <= value.year <= 9000:
        raise ValueError("must be between the years 1970 and 9000")
    return value


#: ``Annotated[datetime | None, Query(), PLAUSIBLE_TIME]`` (a query parameter) or a body field.
PLAUSIBLE_TIME = AfterValidator(_plausible_time)
