"""/v1/metrics (CSAT, NPS, response and SLA rates), /v1/reconciliation (CSV or JSON) and
/v1/payments (every on-chain payment, including those no invoice matched)."""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import Query, Request
from fastapi.responses import Response
from sqlmodel import Session

from api import queries
from api.deps import ChainInfoDep, ClockDep, SessionDep
from api.errors import InvalidRequest
from api.keys.service import AuthenticatedKey
from api.pagination import ListResponse, PageDep, paginate
from api.routes._common import (
    PLAUSIBLE_TIME,
    Manager,
    Staff,
    merchant_scope,
    token_decimals,
    visible_merchant,
)
from api.routing import ApiRouter
from api.schemas.crm import MetricsOut, Reconciliation, ReconciliationRow, RootCause
from api.schemas.invoices import PaymentOut
from api.settlement import repository as settlement_repo
from api.settlement.models import Payment, PaymentState
from crm import metrics
from crm.clock import as_utc
from crm.followups.models import FollowUp

__all__ = ["router"]

router = ApiRouter()

MerchantFilter = Annotated[
    str | None,
    Query(min_length=1, max_length=20, description="The merchant (required for admin keys)."),
]
DEFAULT_PERIOD = timedelta(days=30)
MAX_ROWS = 10_000


def _period(
    start: datetime | None, end: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    for name, value in (("start", start), ("end", end)):
        if value is not None and value.tzinfo is None:
            raise InvalidRequest("Give a time zone (e.g. a trailing Z).", param=name)
    end = as_utc(end) if end is not None else now
    start = as_utc(start) if start is not None else end - DEFAULT_PERIOD
    if end <= start:
        raise InvalidRequest("end must be after start.", param="end")
    return start, end


_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")
# Where a spreadsheet may start a cell: the value's start, and, for a reader whose list
# separator is ';' or a tab (a ',' file's quotes do not hold there), after those and line
# breaks, past any quote marks. A formula trigger there gets a ' in front.
_CELL_START_TRIGGER = re.compile(r'(?:^|(?<=[;\t\r\n]))("*)(?=[=+\-@\t\r])')


def _cell(value: object) -> object:
    """CSV cell; text that a spreadsheet would run as a formula is quoted with a leading ',
    wherever a cell can begin in a comma, semicolon or tab reader (the JSON report keeps the
    exact text). A plain number is not (a negative net amount, after a full refund of an
    invoice with a fee, must stay a number for the sums of an accounting import)."""
    if value is None:
        return ""
    if isinstance(value, str) and not _NUMBER.fullmatch(value):
        return _CELL_START_TRIGGER.sub(r"\1'", value)
    return value


def _one_merchant(session: Session, caller: AuthenticatedKey, merchant_id: str | None) -> int:
    """The report's merchant. An admin names one that exists (a mistyped id answered an empty
    report, as if the merchant had no invoices and no feedback: now a 404)."""
    scope = merchant_scope(caller, merchant_id)
    if scope is None:
        raise InvalidRequest(
            "Admin keys must name the merchant.", param="merchant_id", code="parameter_missing"
        )
    if caller.is_admin:
        assert merchant_id is not None
        visible_merchant(session, caller, merchant_id)
    return scope


@router.get(
    "/metrics",
    response_model=MetricsOut,
    tags=["metrics"],
    summary="Follow-up metrics over a period",
    description="Over `[start, end)` (default: the last 30 days): CSAT % = (4s + 5s) / ratings; "
    "NPS = % promoters (9-10) minus % detractors (0-6); response rate; SLA hit rate (tickets "
    "answered within 24 h); top root causes; suppressions by reason. `null` when there is no "
    "data (not 0 %).",
)
def get_metrics(
    session: SessionDep,
    caller: Staff,
    clock: ClockDep,
    start: Annotated[
        datetime | None, Query(description="ISO-8601, inclusive."), PLAUSIBLE_TIME
    ] = None,
    end: Annotated[
        datetime | None, Query(description="ISO-8601, exclusive."), PLAUSIBLE_TIME
    ] = None,
    merchant_id: MerchantFilter = None,
) -> MetricsOut:
    start, end = _period(start, end, clock.now())
    merchant = _one_merchant(session, caller, merchant_id)
    m = metrics.compute(session, merchant, start, end, now=clock.now())

    def pct(value: object) -> float | None:
        return None if value is None else float(str(value))

    return MetricsOut(
        merchant_id=str(merchant),
        start=m.start,
        end=m.end,
        csat=pct(m.csat),
        nps=pct(m.nps),
        response_rate=pct(m.response_rate),
        sla_hit_rate=pct(m.sla_hit_rate),
        rating_responses=m.rating_responses,
        nps_responses=m.nps_responses,
        sent=m.sent,
        responded=m.responded,
        top_root_causes=[RootCause(tag=t, count=n) for t, n in m.top_root_causes],
        suppressions=dict(m.suppressions),
    )


@router.get(
    "/reconciliation",
    tags=["reconciliation"],
    summary="Invoice ↔ payment ↔ contact ↔ feedback, for accounting",
    description="One row per invoice created in `[start, end)` (default: the last 30 days), "
    "oldest first, with its confirmed payment (if any), the router's fee on its payments and "
    "the net (`paid_amount - fee - refunded_amount`), contact, follow-up and feedback. "
    "`format=csv` returns `text/csv` with the same columns. At most 10,000 rows "
    "(`truncated: true` / header `FollowPay-Truncated: true` beyond). Payments no invoice "
    "matched are listed by `GET /v1/payments?matched=false`.",
    response_model=Reconciliation,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
def reconciliation(
    session: SessionDep,
    caller: Manager,
    clock: ClockDep,
    chain: ChainInfoDep,
    format: Annotated[Literal["json", "csv"], Query(description="json or csv.")] = "json",
    start: Annotated[datetime | None, Query(), PLAUSIBLE_TIME] = None,
    end: Annotated[datetime | None, Query(), PLAUSIBLE_TIME] = None,
    merchant_id: MerchantFilter = None,
) -> Response:
    start, end = _period(start, end, clock.now())
    merchant = _one_merchant(session, caller, merchant_id)
    invoices = list(settlement_repo.invoices_window(session, merchant, start, end, MAX_ROWS + 1))
    truncated = len(invoices) > MAX_ROWS
    invoices = invoices[:MAX_ROWS]
    ids = [inv.id for inv in invoices]
    payments: dict[str, object] = {}
    for p in settlement_repo.payments_for_invoices(session, ids):
        if p.invoice_id is not None and p.state == PaymentState.CONFIRMED:
            payments.setdefault(p.invoice_id, p)
    followups: dict[str, FollowUp] = {}
    for f in queries.followups_for_invoices(session, merchant, ids):
        # the sale's survey: a follow-up cancelled by a reorg gives way to the one the
        # payment got when it was mined again
        kept = followups.get(f.invoice_ref)
        if kept is None or (kept.state == "cancelled" and f.state != "cancelled"):
            followups[f.invoice_ref] = f
    feedback = {
        fb.followup_id: fb
        for fb in queries.feedback_for_followups(
            session, [f.id for f in followups.values() if f.id is not None]
        )
    }
    rows: list[ReconciliationRow] = []
    for inv in invoices:
        pay = payments.get(inv.id)
        fu = followups.get(inv.id)
        fb = feedback.get(fu.id) if fu is not None and fu.id is not None else None
        # Every live payment matched to an invoice carries its exact terms, so its fees are
        # the invoice's fee per amount paid: read off the same row as paid_amount. Summed from
        # the payments (a second statement), a settlement or a reorg the indexer committed
        # between the two reads on PostgreSQL left a row whose figures did not add up.
        fee = inv.fee * (inv.paid_amount // inv.amount) if inv.amount else 0
        rows.append(
            ReconciliationRow(
                invoice_id=inv.id,
                order_id=inv.order_id,
                merchant_id=str(inv.merchant_id),
                invoice_state=str(inv.state),
                invoice_status=str(inv.status),
                token=inv.token,
                decimals=token_decimals(chain, inv.token),
                amount=str(inv.amount),
                paid_amount=str(inv.paid_amount),
                refunded_amount=str(inv.refunded_amount),
                fee=str(fee),
                net_amount=str(inv.paid_amount - fee - inv.refunded_amount),
                created_at=inv.created_at,
                settled_at=inv.settled_at,
                tx_hash=getattr(pay, "tx_hash", None),
                block_number=getattr(pay, "block_number", None),
                log_index=getattr(pay, "log_index", None),
                payment_state=None if pay is None else str(getattr(pay, "state", "")),
                contact_id=inv.contact_id,
                followup_id=None if fu is None else fu.id,
                followup_state=None if fu is None else fu.state,
                feedback_id=None if fb is None else fb.id,
                rating=None if fb is None else fb.rating,
                nps=None if fb is None else fb.nps,
            )
        )
    if format == "csv":
        buffer = io.StringIO()
        columns = list(ReconciliationRow.model_fields)
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\r\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.model_dump(mode="json").items()})
        headers = {
            "Content-Disposition": 'attachment; filename="reconciliation.csv"',
            "FollowPay-Truncated": "true" if truncated else "false",
        }
        return Response(buffer.getvalue(), media_type="text/csv", headers=headers)
    report = Reconciliation(start=start, end=end, truncated=truncated, data=rows)
    return Response(report.model_dump_json(), media_type="application/json")


@router.get(
    "/payments",
    response_model=ListResponse[PaymentOut],
    tags=["reconciliation"],
    summary="On-chain payments, including those no invoice matched",
    description="Every `PaymentSettled` log to the merchant's router account, newest first "
    "(cursor pagination), reorged ones included (`state: reorged`). `matched=false`: the "
    "payments no invoice records (its number is unknown, or its terms are not the ones signed): "
    "the money reached the payout address all the same; refund it or account for it by hand. "
    "`matched=true`: those of invoices. An unmatched payment belongs to the merchant that holds "
    "the receiving address now; each is also announced as `payment.unmatched`. Logs to an "
    "address no merchant had recorded as a router account when they were indexed are not kept.",
)
def list_payments(
    request: Request,
    session: SessionDep,
    caller: Staff,
    page: PageDep,
    chain: ChainInfoDep,
    matched: Annotated[
        bool | None, Query(description="false: only unmatched; true: only invoices'.")
    ] = None,
    merchant_id: Annotated[
        str | None, Query(min_length=1, max_length=20, description="Admins: one merchant.")
    ] = None,
) -> ListResponse[PaymentOut]:
    stmt = settlement_repo.payments_select(merchant_scope(caller, merchant_id), matched=matched)
    rows, has_more = paginate(
        session,
        stmt,
        created_at=Payment.seen_at,
        id=Payment.id,
        page=page,
        cursor_in=settlement_repo.payments_select(merchant_scope(caller, merchant_id)),
    )
    head = None
    if rows and chain is not None and chain.head is not None:
        try:
            head = chain.head()
        except Exception:  # the chain is optional here: evidence without depth
            head = None
    return ListResponse[PaymentOut](
        data=[PaymentOut.of(p, head=head, gas_used=None) for p in rows],
        has_more=has_more,
        url=request.url.path,
    )
