"""Per-merchant metrics over [start, end): CSAT, NPS, response rate, SLA hit rate, causes.

Percentages are :class:`~decimal.Decimal` rounded half-up to one decimal; ``None`` when the
denominator is zero (no data is not the same as 0 %).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from sqlmodel import Session

from crm.clock import as_utc
from crm.errors import InvalidRequest
from crm.metrics import repository as repo

__all__ = ["MerchantMetrics", "compute", "percent"]

_TENTH = Decimal("0.1")


def percent(numerator: int, denominator: int) -> Decimal | None:
    if denominator == 0:
        return None
    return (Decimal(numerator) * 100 / Decimal(denominator)).quantize(
        _TENTH, rounding=ROUND_HALF_UP
    )


@dataclass(frozen=True, slots=True)
class MerchantMetrics:
    merchant_id: int
    start: datetime
    end: datetime
    csat: Decimal | None
    nps: Decimal | None
    response_rate: Decimal | None
    sla_hit_rate: Decimal | None
    rating_responses: int
    nps_responses: int
    sent: int
    responded: int
    top_root_causes: list[tuple[str, int]] = field(default_factory=list)
    suppressions: dict[str, int] = field(default_factory=dict)


def compute(
    session: Session,
    merchant_id: int,
    start: datetime,
    end: datetime,
    *,
    now: datetime,
    top: int = 5,
) -> MerchantMetrics:
    """``now``: tickets past their deadline unanswered by then are SLA misses."""
    start, end = as_utc(start), as_utc(end)
    if end <= start:
        raise InvalidRequest("end must be after start", code="invalid_period", param="end")
    ratings, good = repo.rating_counts(session, merchant_id, start, end)
    nps_total, promoters, detractors = repo.nps_counts(session, merchant_id, start, end)
    sent, responded = repo.response_counts(session, merchant_id, start, end)
    hits, misses = repo.sla_counts(session, merchant_id, start, end, as_utc(now))
    causes: Counter[str] = Counter()
    for tags in repo.ticket_tags(session, merchant_id, start, end):
        causes.update(tags or [])
    nps = None
    if nps_total:
        nps = (Decimal(promoters - detractors) * 100 / Decimal(nps_total)).quantize(
            _TENTH, rounding=ROUND_HALF_UP
        )
    return MerchantMetrics(
        merchant_id=merchant_id,
        start=start,
        end=end,
        csat=percent(good, ratings),
        nps=nps,
        response_rate=percent(responded, sent),
        sla_hit_rate=percent(hits, hits + misses),
        rating_responses=ratings,
        nps_responses=nps_total,
        sent=sent,
        responded=responded,
        top_root_causes=sorted(causes.items(), key=lambda kv: (-kv[1], kv[0]))[:top],
        suppressions=repo.suppression_counts(session, merchant_id, start, end),
    )
