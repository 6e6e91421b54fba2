"""Invoices paid on a real chain, indexed, settled, followed up — and rolled back on reorgs."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlmodel import Session, func, select

from api.settlement import invoices
from api.settlement.errors import (
    DuplicateOrderError,
    InvoiceRequestError,
    InvoiceStateError,
    ReorgTooDeepError,
)
from api.settlement.indexer import Indexer
from api.settlement.models import (
    IndexerCursor,
    Invoice,
    InvoiceState,
    InvoiceStatus,
    Payment,
    PaymentState,
    Refund,
)
from crm import ContactCreate, FollowUpPolicyCreate, consent, contacts, merchants
from crm.followups import policies as followups_policies
from crm.followups.models import FollowUp, Purchase
from crm.merchants.models import MerchantCreate
from tests.settlement.conftest import MarketSuite
from wallet.errors import ChainError, ChainUnreachableError, UnsupportedOperationError
from wallet.secrets import PrivateKey
from wallet.signing import Signer

AMOUNT = 25_000_000  # 25 tUSD


@dataclass
class Shop:
    merchant_id: int
    contact_id: int
    signer: Signer


def open_shop(engine, market, clock, keyring) -> Shop:
    with Session(engine) as session, session.begin():
        merchant = merchants.create_merchant(session, MerchantCreate(name="Tea House"), clock)
        contact = contacts.create_contact(
            session,
            merchant.id,
            ContactCreate(name="Ada", email="ada@example.com", time_zone="Europe/London"),
            keyring,
            clock,
        )
        consent.grant(
            session,
            merchant.id,
            contact.id,
            "service_followup",
            "email",
            actor="ada",
            clock=clock,
            keyring=keyring,
        )
        followups_policies.create_policy(
            session, merchant.id, FollowUpPolicyCreate(delay_minutes=60), actor="owner", clock=clock
        )
        invoices.register_account(
            session,
            merchant.id,
            chain_id=market.chain.chain_id,
            address=market.merchant.address,
            payout=market.payout.address,
            operator=market.operator.address,
            clock=clock,
        )
        return Shop(merchant.id, contact.id, Signer(PrivateKey(bytes(market.operator.key))))


def new_invoice(
    engine,
    market,
    shop,
    clock,
    *,
    order="order-1",
    confirmations=1,
    expires=None,
    amount=AMOUNT,
    payer=None,
):
    request = invoices.InvoiceRequest(
        merchant_id=shop.merchant_id,
        token=market.deployment.token,
        amount=amount,
        order_id=order,
        contact_id=shop.contact_id,
        payer=payer,
        confirmations=confirmations,
        expires_in=expires or timedelta(minutes=15),
    )
    with Session(engine, expire_on_commit=False) as session, session.begin():
        return invoices.create_invoice(
            session,
            request,
            chain_id=market.chain.chain_id,
            router=market.deployment.router,
            signer=shop.signer,
            clock=clock,
        )


def pay(engine, market, invoice, payer=None):
    with Session(engine) as session:
        account = session.get(invoices.MerchantAccount, invoice.account_id)
        intent = invoices.intent_of(invoice, account)
    r, vs = bytes.fromhex(invoice.signature_r[2:]), bytes.fromhex(invoice.signature_vs[2:])
    return market.pay_signed(intent, r, vs, payer or market.payers[0])


def indexer_for(engine, market, clock, **options) -> Indexer:
    return Indexer(
        market.chain,
        engine,
        market.deployment.router,
        start_block=market.deployment.deploy_block,
        clock=clock,
        **options,
    )


def reload(engine, invoice_id) -> Invoice:
    with Session(engine, expire_on_commit=False) as session:
        return session.get(Invoice, invoice_id)


def followups_of(engine, merchant_id) -> list[FollowUp]:
    with Session(engine, expire_on_commit=False) as session:
        return list(session.exec(select(FollowUp).where(FollowUp.merchant_id == merchant_id)))


class IndexerBehaviour(MarketSuite):
    @pytest.fixture
    def shop(self, engine, market, clock, keyring) -> Shop:
        return open_shop(engine, market, clock, keyring)

    def test_paid_invoice_settles_once_and_schedules_its_followup(
        self, engine, market, clock, shop
    ):
        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        result = indexer.poll_once()
        assert result.settled == [invoice.id]
        settled = reload(engine, invoice.id)
        assert (settled.state, settled.status, settled.paid_amount) == ("settled", "none", AMOUNT)
        scheduled = followups_of(engine, shop.merchant_id)
        assert [f.state for f in scheduled] == ["scheduled"]
        assert scheduled[0].invoice_ref == invoice.id
        # polling again (or after a crash that lost the checkpoint) changes nothing
        assert indexer.poll_once().payments == 0
        with Session(engine) as session:
            cursor = session.exec(select(api_cursor())).one()
            cursor.last_block = market.deployment.deploy_block - 1
            session.add(cursor)
            session.commit()
        replay = indexer.poll_once()
        assert replay.payments == 0
        assert replay.settled == []
        with Session(engine) as session:
            assert session.exec(select(func.count()).select_from(Payment)).one() == 1
        assert len(followups_of(engine, shop.merchant_id)) == 1

    def test_a_step_runs_with_the_cyclic_collector_paused(
        self, engine, market, clock, shop, monkeypatch
    ):
        """A catch-up step's rows are acyclic: collecting during it only walks them again."""
        pay(engine, market, new_invoice(engine, market, shop, clock))
        indexer = indexer_for(engine, market, clock)
        real, seen = indexer._step, []
        monkeypatch.setattr(indexer, "_step", lambda: seen.append(gc.isenabled()) or real())
        assert gc.isenabled()
        assert indexer.poll_once().payments == 1
        assert seen == [False]
        assert gc.isenabled()

    def test_purchase_is_recorded_in_the_tokens_symbol(self, engine, market, clock, shop):
        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        indexer_for(engine, market, clock).poll_once()
        with Session(engine) as session:
            purchase = session.exec(select(Purchase)).one()
        assert (purchase.currency, purchase.amount_minor) == ("TUSD", AMOUNT)

    def test_uint256_amounts_beyond_64_bits_are_stored_and_settled_exactly(
        self, engine, market, clock, shop
    ):
        """An amount no 64-bit integer or float holds (2**200 + 1; 10 tokens of an 18-decimal
        ERC-20 already exceed 2**63) survives the invoice, the payment row, the settlement and
        the CRM's purchase digit for digit: NUMERIC(78,0) on PostgreSQL, a decimal string on
        SQLite. (Purchases were BIGINT: such an amount failed every step from then on.)"""
        big, edge = 2**200 + 1, 2**63 - 1
        market.transact(
            market.token.functions.mint(market.payers[0].address, big + edge), market.owner
        )
        large = new_invoice(engine, market, shop, clock, order="large", amount=big)
        fits = new_invoice(engine, market, shop, clock, order="fits", amount=edge)
        pay(engine, market, large)
        pay(engine, market, fits)
        result = indexer_for(engine, market, clock).poll_once()
        assert sorted(result.settled) == sorted([large.id, fits.id])
        for invoice, amount in ((large, big), (fits, edge)):
            settled = reload(engine, invoice.id)
            assert (settled.state, settled.amount, settled.paid_amount) == (
                "settled",
                amount,
                amount,
            )
        table = Payment.__table__  # type: ignore[attr-defined]
        payments = table.c
        with Session(engine) as session:
            stored = session.exec(select(Payment).where(Payment.invoice_id == large.id)).one()
            raw = session.execute(
                sa.select(sa.literal_column("amount"))
                .select_from(table)
                .where(payments.invoice_id == large.id)
            ).scalar_one()
            # the database compares exactly, not through a float (as a double, 2**200 + 1
            # equals 2**200)
            exact = sa.select(func.count()).where(
                payments.amount == sa.cast(str(big), payments.amount.type)
            )
            assert session.execute(exact).scalar_one() == 1
            near = sa.select(func.count()).where(
                payments.amount == sa.cast(str(big - 1), payments.amount.type)
            )
            assert session.execute(near).scalar_one() == 0
            purchases = session.exec(select(Purchase)).all()
        assert (stored.state, stored.amount) == (PaymentState.CONFIRMED, big)
        assert raw == (Decimal(big) if engine.dialect.name == "postgresql" else str(big))
        assert sorted((p.invoice_ref, p.amount_minor) for p in purchases) == sorted(
            [(large.id, big), (fits.id, edge)]
        )
        followed = {f.invoice_ref for f in followups_of(engine, shop.merchant_id)}
        assert followed == {large.id, fits.id}

    def test_a_contract_without_symbol_is_named_token(self, engine, market, clock):
        indexer = indexer_for(engine, market, clock)
        assert indexer._symbol(market.deployment.router) == "TOKEN"  # reverts
        assert indexer._symbol(market.payers[0].address) == "TOKEN"  # no code: empty answer

    def test_a_symbol_lookup_on_a_node_that_is_away_is_not_cached(
        self, engine, market, clock, monkeypatch
    ):
        indexer = indexer_for(engine, market, clock)
        token = market.deployment.token

        def away(to, data):
            raise ChainUnreachableError("node restarting")

        with monkeypatch.context() as patched:
            patched.setattr(market.chain, "call", away)
            with pytest.raises(ChainUnreachableError):
                indexer._symbol(token)
        assert indexer._symbol(token) == "tUSD"

    def test_a_node_that_refuses_wide_log_ranges_is_read_in_narrower_ones(
        self, engine, market, clock, shop, monkeypatch
    ):
        """Providers cap eth_getLogs (blocks or results per call): the indexer asked for the
        same refused range for ever, so nothing settled and nothing expired."""
        invoice = new_invoice(engine, market, shop, clock)
        market.chain.mine(120)
        pay(engine, market, invoice)
        real = market.chain.raw_logs
        answered: list[tuple[int, int]] = []
        refused: list[tuple[int, int]] = []

        def capped(address, start, end, topics):
            if end - start + 1 > 50:
                refused.append((start, end))
                raise UnsupportedOperationError("eth_getLogs failed: max block range is 50")
            answered.append((start, end))
            return real(address, start, end, topics)

        monkeypatch.setattr(market.chain, "raw_logs", capped)
        indexer = indexer_for(engine, market, clock, batch_blocks=400)
        for _ in range(20):  # bounded: a few steps of at most 50 blocks
            if indexer.poll_once().caught_up:
                break
        assert reload(engine, invoice.id).state == "settled"
        # every block read once, in order, none skipped
        covered = [n for start, end in answered for n in range(start, end + 1)]
        assert covered == list(range(market.deployment.deploy_block, market.chain.head() + 1))
        assert len(refused) <= 3  # narrowed once, and never widened back past the cap

    def test_other_errors_fail_the_step_and_a_narrowed_range_widens_again(
        self, engine, market, clock, monkeypatch
    ):
        """Only a range refused as too wide narrows it (any error answer did, for good: a
        node's hiccup left the indexer reading one block a step); after a run of answered
        ranges it doubles back toward the configured width."""
        real = market.chain.raw_logs
        widths: list[int] = []
        trouble = {"cap": 10, "hiccup": False}

        def flaky(address, start, end, topics):
            if trouble["hiccup"]:
                trouble["hiccup"] = False
                raise UnsupportedOperationError("eth_getLogs failed: header not found")
            if end - start + 1 > trouble["cap"]:
                raise UnsupportedOperationError("eth_getLogs failed: block range too wide")
            widths.append(end - start + 1)
            return real(address, start, end, topics)

        monkeypatch.setattr(market.chain, "raw_logs", flaky)
        indexer = indexer_for(engine, market, clock, batch_blocks=40)
        market.chain.mine(200)
        indexer.poll_once()
        assert widths == [10]  # 40, 20 refused; 10 answered
        trouble["hiccup"] = True
        with pytest.raises(UnsupportedOperationError, match="header not found"):
            indexer.poll_once()
        indexer.poll_once()
        assert widths[-1] == 10  # the hiccup did not narrow it
        trouble["cap"] = 40  # the provider lifts its cap
        for _ in range(20):
            indexer.poll_once()
        assert max(widths) == 20  # doubled after 16 answered ranges, one step at a time

    def test_a_node_that_refuses_a_single_block_fails_the_step(
        self, engine, market, clock, monkeypatch
    ):
        def refusing(address, start, end, topics):
            raise UnsupportedOperationError("eth_getLogs failed: internal error")

        monkeypatch.setattr(market.chain, "raw_logs", refusing)
        indexer = indexer_for(engine, market, clock)
        with pytest.raises(UnsupportedOperationError):
            indexer.poll_once()

    def test_data_the_crm_refuses_never_holds_up_a_settlement(
        self, engine, market, clock, shop, monkeypatch, caplog
    ):
        """A follow-up batch the CRM's tables refuse is logged and dropped; failing the step
        instead would fail it on every retry and stop every later settlement."""
        import api.settlement.indexer as indexer_module

        def refused(*args, **kwargs):
            raise sa.exc.DataError("INSERT INTO crm_purchase", {}, Exception("out of range"))

        first = new_invoice(engine, market, shop, clock, order="refused")
        pay(engine, market, first)
        with monkeypatch.context() as patched, caplog.at_level(logging.ERROR):
            patched.setattr(indexer_module.followups, "schedule_for_payments", refused)
            assert indexer_for(engine, market, clock).poll_once().settled == [first.id]
        assert reload(engine, first.id).state == InvoiceState.SETTLED
        assert followups_of(engine, shop.merchant_id) == []
        assert any("DataError" in r.getMessage() for r in caplog.records)
        later = new_invoice(engine, market, shop, clock, order="later")
        pay(engine, market, later)
        assert indexer_for(engine, market, clock).poll_once().settled == [later.id]
        assert [f.invoice_ref for f in followups_of(engine, shop.merchant_id)] == [later.id]

    @pytest.mark.parametrize("confirmations", [1, 2])
    def test_invoices_changed_under_the_step_twice_still_settle_on_the_last_pass(
        self, engine, market, clock, shop, monkeypatch, confirmations
    ):
        """Both write-backs (the range's, and the confirmations') re-apply to invoices another
        transaction changed. When the last allowed pass writes everything, the step succeeds:
        it used to raise "kept changing" after a pass that had succeeded."""
        import api.settlement.indexer as indexer_module

        real = indexer_module.repo.update_invoice_rows
        passes = []

        def changed_twice(session, rows):
            rows = list(rows)
            if not rows:
                return {}
            passes.append(len(rows))
            if len(passes) <= 2:  # as if staff touched each row before the write, twice
                ids = [r.id for r in rows]
                return indexer_module.repo.invoice_rows_by_id(session, ids, lock=True)
            return real(session, rows)

        invoice = new_invoice(engine, market, shop, clock, confirmations=confirmations)
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        if confirmations == 2:
            assert indexer.poll_once().settled == []
            market.chain.mine(1)
        with monkeypatch.context() as patched:
            patched.setattr(indexer_module.repo, "update_invoice_rows", changed_twice)
            assert indexer.poll_once().settled == [invoice.id]
        assert passes[:3] == [1, 1, 1]
        assert reload(engine, invoice.id).state == InvoiceState.SETTLED
        assert len(followups_of(engine, shop.merchant_id)) == 1

    def test_a_database_that_is_away_fails_the_whole_step(
        self, engine, market, clock, shop, monkeypatch
    ):
        import api.settlement.indexer as indexer_module

        def away(*args, **kwargs):
            raise sa.exc.OperationalError("INSERT", {}, Exception("server closed the connection"))

        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        with monkeypatch.context() as patched:
            patched.setattr(indexer_module.followups, "schedule_for_payments", away)
            with pytest.raises(sa.exc.OperationalError):
                indexer_for(engine, market, clock).poll_once()
        assert reload(engine, invoice.id).state == InvoiceState.NEW  # nothing half-written
        assert indexer_for(engine, market, clock).poll_once().settled == [invoice.id]
        assert len(followups_of(engine, shop.merchant_id)) == 1

    def test_indexers_starting_together_on_an_empty_database_share_one_checkpoint(
        self, engine, market, clock, shop
    ):
        """Four indexers take their first step at once: one creates the checkpoint and the
        others wait for it instead of failing on its unique (chain, router)."""
        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        indexers = [indexer_for(engine, market, clock) for _ in range(4)]
        barrier = threading.Barrier(len(indexers))
        errors: list[BaseException] = []

        def first_step(indexer: Indexer) -> None:
            barrier.wait(10)
            try:
                indexer.poll_once()
            except BaseException as error:  # collected for the assertion below
                errors.append(error)

        threads = [threading.Thread(target=first_step, args=(i,)) for i in indexers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == []
        with Session(engine) as session:
            assert session.exec(select(func.count()).select_from(IndexerCursor)).one() == 1
            assert session.exec(select(func.count()).select_from(Payment)).one() == 1
        assert reload(engine, invoice.id).state == InvoiceState.SETTLED

    def test_waits_for_the_confirmation_depth(self, engine, market, clock, shop):
        invoice = new_invoice(engine, market, shop, clock, confirmations=2)
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        assert reload(engine, invoice.id).state == InvoiceState.PROCESSING
        assert followups_of(engine, shop.merchant_id) == []
        market.chain.mine(1)
        indexer.poll_once()
        assert reload(engine, invoice.id).state == InvoiceState.SETTLED

    def test_reorg_above_confirmation_depth_rolls_back_and_cancels_followups(
        self, engine, market, clock, shop
    ):
        invoice = new_invoice(engine, market, shop, clock)
        fork = market.chain.snapshot()
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        assert reload(engine, invoice.id).state == InvoiceState.SETTLED
        market.chain.revert(fork)  # the payment's blocks leave the canonical chain
        market.chain.mine(4)
        result = indexer.poll_once()
        assert result.reorged_to is not None
        rolled = reload(engine, invoice.id)
        assert (rolled.state, rolled.paid_amount, rolled.settled_at) == ("new", 0, None)
        assert [f.state for f in followups_of(engine, shop.merchant_id)] == ["cancelled"]
        with Session(engine) as session:
            assert session.exec(select(Payment.state)).all() == [PaymentState.REORGED]
        # the customer pays again on the new chain: settles again, new follow-up
        pay(engine, market, invoice)
        indexer.poll_once()
        assert reload(engine, invoice.id).state == InvoiceState.SETTLED
        states = sorted(f.state for f in followups_of(engine, shop.merchant_id))
        assert states == ["cancelled", "scheduled"]

    def test_reorg_below_confirmation_depth_never_settles(self, engine, market, clock, shop):
        invoice = new_invoice(engine, market, shop, clock, confirmations=6)
        fork = market.chain.snapshot()
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        assert reload(engine, invoice.id).state == InvoiceState.PROCESSING
        market.chain.revert(fork)
        market.chain.mine(8)
        indexer.poll_once()
        assert reload(engine, invoice.id).state == InvoiceState.NEW
        assert followups_of(engine, shop.merchant_id) == []

    def test_a_reorg_that_orphans_a_payment_just_read_is_caught_next_step(
        self, engine, market, clock, shop
    ):
        """A reorg right after a step read its logs: the payment settled from the old chain
        is rolled back by the next step, which finds the range end's hash replaced."""
        invoice = new_invoice(engine, market, shop, clock)
        fork = market.chain.snapshot()
        pay(engine, market, invoice)
        market.chain.mine(2)
        indexer = indexer_for(engine, market, clock)
        with _reorg_after_reading_logs(market.chain, fork, rebuild=lambda: market.chain.mine(6)):
            assert indexer.poll_once().settled == [invoice.id]
        result = indexer.poll_once()
        assert result.reorged_to is not None
        rolled = reload(engine, invoice.id)
        assert (rolled.state, rolled.paid_amount) == ("new", 0)
        assert [f.state for f in followups_of(engine, shop.merchant_id)] == ["cancelled"]

    def test_a_payment_a_reorg_brings_in_while_the_logs_are_read_is_settled_next_step(
        self, engine, market, clock, shop
    ):
        """The range end's hash is read before the logs. A reorg right after the (old,
        empty) logs were read, whose new chain pays the invoice inside the range, leaves the
        old end hash stored: the next step finds it replaced and reads the range again.
        With the hash read after the logs, the new chain's hash vouched for the old chain's
        empty logs and the payment was skipped for good."""
        invoice = new_invoice(engine, market, shop, clock)
        fork = market.chain.snapshot()
        market.chain.mine(3)  # the old chain: nothing paid

        with Session(engine) as session:  # read now: the step holds SQLite's writer
            intent = invoices.intent_of(
                invoice, session.get(invoices.MerchantAccount, invoice.account_id)
            )
        r, vs = bytes.fromhex(invoice.signature_r[2:]), bytes.fromhex(invoice.signature_vs[2:])

        def new_chain() -> None:
            market.pay_signed(intent, r, vs, market.payers[0])
            market.chain.mine(2)

        indexer = indexer_for(engine, market, clock)
        with _reorg_after_reading_logs(market.chain, fork, rebuild=new_chain):
            assert indexer.poll_once().settled == []
        result = indexer.poll_once()
        assert result.reorged_to is not None
        assert result.settled == [invoice.id]
        assert [f.state for f in followups_of(engine, shop.merchant_id)] == ["scheduled"]

    def test_a_reorg_while_the_logs_are_asked_for_rolls_back_an_earlier_orphaned_payment(
        self, engine, market, clock, shop
    ):
        """The chain reorgs below the step's last block after the step matched its stored
        hashes and before eth_getLogs answers: the logs come from the new chain (B paid at
        N+1'), the range end's hash from the old. Taken as they were, the next step found the
        end replaced, N+1 matching, and took N+1 for the fork: A's orphaned payment at N,
        below it, stayed settled. The block the step reads on from is checked again after
        the logs, and the step runs again on the new chain."""
        first = new_invoice(engine, market, shop, clock, order="A")
        second = new_invoice(engine, market, shop, clock, order="B")
        intent, r, vs = _signed(engine, second)
        fork = market.chain.snapshot()
        pay(engine, market, first)  # block N
        indexer = indexer_for(engine, market, clock)
        assert indexer.poll_once().settled == [first.id]
        market.chain.mine(3)

        def new_chain() -> None:
            market.chain.mine(1)
            market.pay_signed(intent, r, vs, market.payers[1])
            market.chain.mine(2)

        with _reorg_before_reading_logs(market.chain, fork, rebuild=new_chain):
            result = indexer.poll_once()
        assert result.reorged_to is not None
        assert result.settled == [second.id]
        rolled = reload(engine, first.id)
        assert (rolled.state, rolled.paid_amount) == ("new", 0)
        with Session(engine) as session:
            states = {p.invoice_id: p.state for p in session.exec(select(Payment))}
        assert states == {first.id: PaymentState.REORGED, second.id: PaymentState.CONFIRMED}
        assert [f.state for f in followups_of(engine, shop.merchant_id)] == [
            "cancelled",
            "scheduled",
        ]

    def test_a_reorg_while_catching_up_below_the_head_is_not_missed(
        self, engine, market, clock, shop
    ):
        """The same race in a range that ends below the head: the range end's hash came from
        the new chain as well, every stored hash matched from then on, and the reorg was
        never seen."""
        first = new_invoice(engine, market, shop, clock, order="A")
        fork = market.chain.snapshot()
        pay(engine, market, first)
        indexer = indexer_for(engine, market, clock)
        assert indexer.poll_once().settled == [first.id]
        market.chain.mine(3)
        indexer.batch_blocks = 2  # the next range ends below the head
        with _reorg_before_reading_logs(market.chain, fork, rebuild=lambda: market.chain.mine(4)):
            assert indexer.poll_once().reorged_to is not None
        assert reload(engine, first.id).state == InvoiceState.NEW
        assert [f.state for f in followups_of(engine, shop.merchant_id)] == ["cancelled"]

    def test_a_block_rolled_back_then_canonical_again_settles_its_payment_again(
        self, engine, market, clock, shop
    ):
        """A node that reports a head one block lower for one step (a fork that flips back,
        or a load balancer's lagging backend) makes the indexer roll the payment's block
        back. When the same block, same hash, is the head again, the payment settles again
        with a new follow-up: its rolled-back row does not pass for the log being applied."""
        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        assert indexer.poll_once().settled == [invoice.id]
        chain = market.chain
        real = chain.head_and_block_hashes

        def lower_head(numbers):
            (head, _), _ = real(numbers)
            hash_below = chain.block_header(head - 1)[0]
            return (head - 1, hash_below), [
                chain.block_header(n)[0] if n < head else None for n in numbers
            ]

        chain.head_and_block_hashes = lower_head  # type: ignore[method-assign]
        try:
            assert indexer.poll_once().reorged_to is not None
        finally:
            del chain.head_and_block_hashes
        assert reload(engine, invoice.id).state == InvoiceState.NEW
        result = indexer.poll_once()
        assert result.settled == [invoice.id]
        settled = reload(engine, invoice.id)
        assert (settled.state, settled.paid_amount) == (InvoiceState.SETTLED, AMOUNT)
        states = sorted(f.state for f in followups_of(engine, shop.merchant_id))
        assert states == ["cancelled", "scheduled"]
        with Session(engine) as session:
            rows = session.exec(select(Payment.state, Payment.block_hash)).all()
        assert sorted(state for state, _ in rows) == [PaymentState.CONFIRMED, PaymentState.REORGED]
        assert len({block_hash for _, block_hash in rows}) == 1  # the same log, twice

    def test_a_node_answer_missing_a_block_below_its_head_is_retried_not_taken_for_a_reorg(
        self, engine, market, clock, shop
    ):
        """A node that answers from two states (head N, yet no block below N) must not make
        the indexer roll settled payments back: the step fails as transient and the next one
        finds nothing to undo."""
        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        market.chain.mine(2)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        chain = market.chain
        real = chain.head_and_block_hashes

        def gap(numbers):
            head, hashes = real(numbers)
            return head, [None, *hashes[1:]]

        chain.head_and_block_hashes = gap  # type: ignore[method-assign]
        try:
            with pytest.raises(ChainError, match="no block"):
                indexer.poll_once()
        finally:
            del chain.head_and_block_hashes
        assert indexer.poll_once().reorged_to is None
        assert reload(engine, invoice.id).state == InvoiceState.SETTLED
        assert [f.state for f in followups_of(engine, shop.merchant_id)] == ["scheduled"]

    def test_a_reorg_deeper_than_the_window_stops_the_indexer_and_changes_nothing(
        self, engine, market, clock, shop
    ):
        invoice = new_invoice(engine, market, shop, clock)
        fork = market.chain.snapshot()
        pay(engine, market, invoice)
        market.chain.mine(4)
        indexer = indexer_for(engine, market, clock)
        indexer.reorg_window = 2  # keeps only the last blocks: the payment's is pruned
        indexer.poll_once()
        market.chain.revert(fork)
        market.chain.mine(10)
        with pytest.raises(ReorgTooDeepError, match="deeper than the 2-block window"):
            indexer.poll_once()
        assert reload(engine, invoice.id).state == InvoiceState.SETTLED  # step rolled back

    @pytest.mark.parametrize("shorter_by", [0, 3])
    def test_a_reorg_deeper_than_the_window_to_no_greater_height_stops_the_indexer(
        self, engine, market, clock, shop, shorter_by
    ):
        """The new chain is no longer than the old, so every block in the window is replaced
        but none lies under the head's window: the block kept from under the window (the
        anchor, here the payment's) is replaced too, which stops the indexer. Without the
        anchor it rewound to the window's floor and left the payment settled."""
        invoice = new_invoice(engine, market, shop, clock)
        fork = market.chain.snapshot()
        pay(engine, market, invoice)
        market.chain.mine(4)
        indexer = indexer_for(engine, market, clock)
        indexer.reorg_window = 2
        indexer.poll_once()
        head = market.chain.head()
        market.chain.revert(fork)
        market.chain.mine(head - shorter_by - market.chain.head())  # other blocks
        assert market.chain.head() == head - shorter_by
        with pytest.raises(ReorgTooDeepError, match="deeper than the 2-block window"):
            indexer.poll_once()
        assert reload(engine, invoice.id).state == InvoiceState.SETTLED  # step rolled back

    def test_an_invoice_is_announced_expired_only_after_the_grace(
        self, engine, market, clock, shop
    ):
        """Within :data:`EXPIRY_GRACE` of its expiry an invoice stays ``new`` in a caught-up
        step: a payment stamped on time may still be on its way to the node."""
        invoice = new_invoice(engine, market, shop, clock, expires=timedelta(minutes=1))
        indexer = indexer_for(engine, market, clock)
        clock.advance(timedelta(minutes=1) + invoices.EXPIRY_GRACE - timedelta(seconds=1))
        assert indexer.poll_once().caught_up
        assert reload(engine, invoice.id).state == InvoiceState.NEW
        clock.advance(timedelta(seconds=2))
        indexer.poll_once()
        assert reload(engine, invoice.id).state == InvoiceState.EXPIRED

    def test_payment_after_expiry_settles_as_paid_late(self, engine, market, clock, shop):
        invoice = new_invoice(engine, market, shop, clock, expires=timedelta(minutes=1))
        clock.advance(timedelta(minutes=5))
        market.chain.increase_time(int((clock.now() - invoice.created_at).total_seconds()) + 600)
        with Session(engine) as session, session.begin():
            assert [i.id for i in invoices.expire_due(session, clock)] == [invoice.id]
        pay(engine, market, invoice)
        indexer_for(engine, market, clock).poll_once()
        late = reload(engine, invoice.id)
        assert (late.state, late.status) == (InvoiceState.SETTLED, InvoiceStatus.PAID_LATE)

    def test_late_payment_of_a_reopened_order_is_held_not_settled(
        self, engine, market, clock, shop
    ):
        """Invoice A expires, the order gets invoice B, the customer still pays A (its signed
        intent outlives the expiry): A records the money and is held (webhook
        ``invoice.payment_held``) instead of settling beside B — which stopped the indexer
        on the open-order unique index before. B still settles on its own payment."""
        first = new_invoice(engine, market, shop, clock, expires=timedelta(minutes=1))
        clock.advance(timedelta(minutes=5))
        market.chain.increase_time(int((clock.now() - first.created_at).total_seconds()) + 600)
        with Session(engine) as session, session.begin():
            invoices.expire_due(session, clock)
        second = new_invoice(engine, market, shop, clock)
        pay(engine, market, first)
        indexer = indexer_for(engine, market, clock)
        result = indexer.poll_once()
        assert (result.payments, result.settled) == (1, [])
        held = reload(engine, first.id)
        assert (held.state, held.status, held.paid_amount) == ("expired", "paid_late", AMOUNT)
        assert followups_of(engine, shop.merchant_id) == []
        with (
            Session(engine) as session,
            session.begin(),
            pytest.raises(InvoiceStateError, match="another open invoice"),
        ):
            invoices.mark_invoice(
                session, shop.merchant_id, first.id, settle=True, actor="staff", clock=clock
            )
        pay(engine, market, second)
        assert indexer.poll_once().settled == [second.id]
        assert reload(engine, first.id).state == InvoiceState.EXPIRED

    def test_a_new_invoice_for_the_order_opened_during_the_step_is_not_fatal(
        self, engine, market, clock, shop, monkeypatch
    ):
        """The step has read that expired invoice A's order has no open invoice when the
        merchant opens B for it. PostgreSQL: B commits at once and the step's reopening of A
        fails on the open-order unique index; the step runs again, sees B and holds A's
        payment (before, the IntegrityError ended the indexer). SQLite: B waits for the
        step's write lock, A settles first, and B is refused as a duplicate order."""
        first = new_invoice(engine, market, shop, clock, expires=timedelta(minutes=1))
        clock.advance(timedelta(minutes=5))
        market.chain.increase_time(int((clock.now() - first.created_at).total_seconds()) + 600)
        with Session(engine) as session, session.begin():
            invoices.expire_due(session, clock)
        pay(engine, market, first)
        from api.settlement import repository

        real_check = repository.open_invoice_for_order
        opened: list[object] = []
        main = threading.current_thread()

        def open_second() -> None:
            try:
                opened.append(new_invoice(engine, market, shop, clock))
            except DuplicateOrderError as refused:
                opened.append(refused)

        def racing_check(*args, **kwargs):
            found = real_check(*args, **kwargs)
            if threading.current_thread() is main and not opened:
                opener = threading.Thread(target=open_second)
                opener.start()
                if engine.dialect.name == "postgresql":
                    opener.join(10)  # B commits while the step runs
                racers.append(opener)
            return found

        racers: list[threading.Thread] = []
        monkeypatch.setattr(repository, "open_invoice_for_order", racing_check)
        result = indexer_for(engine, market, clock).poll_once()
        for racer in racers:
            racer.join(30)
        a = reload(engine, first.id)
        assert result.payments == 1
        if engine.dialect.name == "postgresql":
            assert (a.state, a.status, a.paid_amount) == ("expired", "paid_late", AMOUNT)
            assert isinstance(opened[0], Invoice)
        else:
            assert (a.state, a.paid_amount) == ("settled", AMOUNT)
            assert isinstance(opened[0], DuplicateOrderError)

    def test_payment_of_an_invalidated_invoice_is_held(self, engine, market, clock, shop):
        """Staff invalidated the invoice; the customer pays it anyway. The chain's money is
        recorded but never overrides the staff decision: no settlement, no follow-up, and
        the payment's confirmation (depth 2) later does not settle it either."""
        invoice = new_invoice(engine, market, shop, clock, confirmations=2)
        with Session(engine) as session, session.begin():
            invoices.mark_invoice(
                session, shop.merchant_id, invoice.id, settle=False, actor="staff", clock=clock
            )
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        market.chain.mine(2)
        assert indexer.poll_once().settled == []
        held = reload(engine, invoice.id)
        assert (held.state, held.status, held.paid_amount) == ("invalid", "marked", AMOUNT)
        assert followups_of(engine, shop.merchant_id) == []
        with Session(engine) as session:
            assert session.exec(select(Payment.state)).all() == [PaymentState.CONFIRMED]

    def test_invoices_do_not_expire_while_the_indexer_is_behind(self, engine, market, clock, shop):
        """Behind the head, an invoice's payment may sit in the blocks still to read: it is
        judged by its block once read, not expired on the wall clock meanwhile."""
        invoice = new_invoice(engine, market, shop, clock, expires=timedelta(minutes=1))
        pay(engine, market, invoice)
        market.chain.mine(3)
        clock.advance(timedelta(minutes=5))  # the indexer comes back after the expiry
        indexer = indexer_for(engine, market, clock)
        indexer.batch_blocks = 1
        first = indexer.poll_once()
        assert not first.caught_up
        assert reload(engine, invoice.id).state == InvoiceState.NEW
        for _ in range(50):
            if indexer.poll_once().caught_up:
                break
        settled = reload(engine, invoice.id)
        assert (settled.state, settled.status) == (InvoiceState.SETTLED, InvoiceStatus.NONE)

    def test_partial_refund_updates_the_invoice(self, engine, market, clock, shop):
        invoice = new_invoice(engine, market, shop, clock)
        receipt = pay(engine, market, invoice)
        assert receipt["status"] == 1
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        self._refund(engine, market, invoice, 5_000_000)
        indexer.poll_once()
        refunded = reload(engine, invoice.id)
        assert (refunded.refunded_amount, refunded.status) == (5_000_000, "partially_refunded")

    def test_logs_a_node_returns_out_of_order_are_applied_in_chain_order(
        self, engine, market, clock, shop, monkeypatch
    ):
        """A refund read before its payment in one answer was applied against nothing paid
        (capped at 0) and lost."""
        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        self._refund(engine, market, invoice, 5_000_000)
        raw_logs = market.chain.raw_logs
        monkeypatch.setattr(
            market.chain, "raw_logs", lambda *a, **k: list(reversed(raw_logs(*a, **k)))
        )
        indexer_for(engine, market, clock).poll_once()
        refunded = reload(engine, invoice.id)
        assert (refunded.refunded_amount, refunded.status) == (5_000_000, "partially_refunded")

    def test_refund_and_late_payment_statuses_follow_one_precedence(
        self, engine, market, clock, shop
    ):
        """A late payment and its partial refund read in one range: the refund's status wins
        (it was overwritten by ``paid_late`` before). The refund reorged away: ``paid_late``
        again, not ``none``."""
        invoice = new_invoice(engine, market, shop, clock, expires=timedelta(minutes=1))
        clock.advance(timedelta(minutes=5))
        market.chain.increase_time(int((clock.now() - invoice.created_at).total_seconds()) + 600)
        pay(engine, market, invoice)
        before_refund = market.chain.snapshot()
        self._refund(engine, market, invoice, 5_000_000)
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()  # payment and refund in one range
        both = reload(engine, invoice.id)
        assert (both.state, both.status, both.refunded_amount) == (
            "settled",
            "partially_refunded",
            5_000_000,
        )
        market.chain.revert(before_refund)
        market.chain.mine(4)
        assert indexer.poll_once().reorged_to is not None
        late = reload(engine, invoice.id)
        assert (late.state, late.status, late.refunded_amount) == ("settled", "paid_late", 0)

    @staticmethod
    def _refund(engine, market, invoice, amount):
        with Session(engine) as session:
            account = session.get(invoices.MerchantAccount, invoice.account_id)
            intent = invoices.intent_of(invoice, account)
        r, vs = bytes.fromhex(invoice.signature_r[2:]), bytes.fromhex(invoice.signature_vs[2:])
        market.transact(
            market.token.functions.approve(market.deployment.router, amount), market.merchant
        )
        market.transact(market.token.functions.mint(market.merchant.address, amount), market.owner)
        market.transact(
            market.router.functions.refund(
                intent.as_tuple(), r, vs, market.payers[0].address, amount
            ),
            market.merchant,
        )

    @pytest.mark.parametrize("number", [2**63, 2**255])
    def test_an_invoice_number_beyond_a_bigint_does_not_stop_the_indexer(
        self, engine, market, clock, shop, number
    ):
        """The router settles any uint256 invoice id a merchant's operator signs: one beyond a
        BIGINT failed the lookup (SQLite) or the insert (PostgreSQL) of every step over its
        block, and no merchant's invoice settled again. It is an unmatched payment, and its
        refund an unmatched refund."""
        from wallet.signing import (
            PaymentIntent,
            payment_intent_typed_data,
            sign_typed_data,
            to_compact,
        )

        intent = PaymentIntent(
            merchant=market.merchant.address,
            token=market.deployment.token,
            amount=7,
            fee=0,
            invoice_id=number,
            deadline=2**40,
        )
        market.pay(intent, market.payers[1])
        typed = payment_intent_typed_data(
            intent, chain_id=market.chain.chain_id, router=market.deployment.router
        )
        r, vs = to_compact(sign_typed_data(typed, PrivateKey(bytes(market.operator.key))))
        market.transact(
            market.token.functions.approve(market.deployment.router, 7), market.merchant
        )
        market.transact(market.token.functions.mint(market.merchant.address, 7), market.owner)
        market.transact(
            market.router.functions.refund(intent.as_tuple(), r, vs, market.payers[1].address, 7),
            market.merchant,
        )
        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        result = indexer_for(engine, market, clock).poll_once()
        assert result.settled == [invoice.id]
        with Session(engine) as session:
            stray = session.exec(select(Payment).where(Payment.invoice_id.is_(None))).one()  # type: ignore[union-attr]
            refund = session.exec(select(Refund)).one()
        assert (stray.invoice_number, stray.amount) == (number, 7)
        assert refund.invoice_id is None

    def test_payment_of_another_signed_intent_stays_unmatched(self, engine, market, clock, shop):
        """The event's intent hash binds every signed field: a payment of the same invoice
        number under other terms (here: a stored invoice whose terms differ from what was
        signed and paid) settles nothing, and its terms are read from the transaction."""
        invoice = new_invoice(engine, market, shop, clock)
        with Session(engine) as session, session.begin():
            stored = session.get(Invoice, invoice.id)
            assert stored is not None
            assert stored.intent_hash is not None
            stored.intent_hash = "0x" + "ab" * 32
            session.add(stored)
        pay(engine, market, invoice)
        result = indexer_for(engine, market, clock).poll_once()
        assert result.payments == 1
        assert result.settled == []
        assert reload(engine, invoice.id).state == InvoiceState.NEW
        with Session(engine) as session:
            payment = session.exec(select(Payment)).one()
        assert payment.invoice_id is None
        assert (payment.token, payment.amount, payment.fee) == (
            market.deployment.token,
            AMOUNT,
            invoice.fee,
        )
        assert followups_of(engine, shop.merchant_id) == []

    def test_following_the_head_steps_on_new_blocks_and_idles_cheaply(
        self, engine, market, clock, shop
    ):
        """Caught up, the indexer only asks the node for its head; a new block (here: a
        payment) triggers a full step within a poll interval or two."""
        indexer = indexer_for(engine, market, clock)
        steps: list[int] = []
        real_poll = indexer.poll_once

        def counting_poll():
            result = real_poll()
            steps.append(result.to_block)
            return result

        indexer.poll_once = counting_poll  # type: ignore[method-assign]
        chain = market.chain
        real_head = chain.latest_block
        head_checks: list[int] = []

        def counting_head():
            head = real_head()
            head_checks.append(head[0])
            return head

        chain.latest_block = counting_head  # type: ignore[method-assign]
        try:
            with _following(indexer, poll_interval=0.02):
                _wait_for(lambda: bool(steps) and steps[-1] >= market.chain.head())
                idle, checked = len(steps), len(head_checks)
                # however slowly the thread is scheduled, it has looked at the head 15 times
                _wait_for(lambda: len(head_checks) >= checked + 15)
                assert len(steps) == idle  # no full step without a new block
                invoice = new_invoice(engine, market, shop, clock)
                pay(engine, market, invoice)
                _wait_for(lambda: reload(engine, invoice.id).state == InvoiceState.SETTLED)
                assert len(steps) > idle
        finally:
            del chain.latest_block

    def test_a_node_that_is_away_for_a_while_is_waited_for_not_fatal(
        self, engine, market, clock, shop, caplog
    ):
        """The node drops two range reads: the loop logs each, backs off and settles the
        invoice once the node answers again."""
        invoice = new_invoice(engine, market, shop, clock)
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        chain = market.chain
        real_logs = chain.raw_logs
        failures = [ChainUnreachableError("node restarting"), OSError("connection refused")]

        def flaky(*args):
            if failures:
                raise failures.pop(0)
            return real_logs(*args)

        chain.raw_logs = flaky  # type: ignore[method-assign]
        try:
            with caplog.at_level(logging.ERROR), _following(indexer, poll_interval=0.01):
                _wait_for(lambda: reload(engine, invoice.id).state == InvoiceState.SETTLED)
        finally:
            del chain.raw_logs
        retried = [
            r.getMessage() for r in caplog.records if "indexer step failed" in r.getMessage()
        ]
        assert len(retried) == 2
        assert "ChainUnreachableError: node restarting" in retried[0]

    def test_a_reorg_deeper_than_the_window_ends_the_loop(self, engine, market, clock, shop):
        invoice = new_invoice(engine, market, shop, clock)
        fork = market.chain.snapshot()
        pay(engine, market, invoice)
        market.chain.mine(4)
        indexer = indexer_for(engine, market, clock)
        indexer.reorg_window = 2
        indexer.poll_once()
        market.chain.revert(fork)
        market.chain.mine(10)
        with pytest.raises(ReorgTooDeepError):
            indexer.run(threading.Event(), poll_interval=0.01)

    def test_a_block_that_lands_during_a_step_is_taken_one_interval_after_that_step(
        self, engine, market, clock, shop
    ):
        """A payment mined while a step runs (after it read the head) is settled by the next
        step, which starts one poll interval after the previous one began: no head check, no
        idle wait (60 s here), and never sooner, so blocks that stream in faster than the
        interval share a step instead of costing one each."""
        indexer = indexer_for(engine, market, clock)
        invoice = new_invoice(engine, market, shop, clock)
        real_poll = indexer.poll_once
        paid = threading.Event()
        now = [1000.0]  # the loop's clock: it moves only when a step says so
        began: list[float] = []
        waits: list[tuple[float | None, bool]] = []  # (timeout asked for, after the payment?)

        def paying_poll():
            began.append(now[0])
            result = real_poll()
            if result.caught_up and not paid.is_set():
                pay(engine, market, invoice)  # a new block after this step's head
                now[0] += 0.1  # this step took 0.1 s on the loop's clock
                paid.set()
            return result

        class RecordingStop(threading.Event):
            def wait(self, timeout: float | None = None) -> bool:
                waits.append((timeout, paid.is_set()))
                return super().wait(timeout)

        indexer.poll_once = paying_poll  # type: ignore[method-assign]
        with _following(indexer, poll_interval=0.4, stop=RecordingStop(), monotonic=lambda: now[0]):
            _wait_for(lambda: reload(engine, invoice.id).state == InvoiceState.SETTLED)
        assert paid.is_set()
        # the first wait after the paying step: the rest of that step's interval, not a
        # full poll interval (an idle wait) and not nothing (a step per block)
        after_payment = [timeout for timeout, late in waits if late]
        assert after_payment[0] == pytest.approx(0.3)
        assert len(began) >= 2


@contextlib.contextmanager
def _reorg_around_logs(chain, fork, *, rebuild, before: bool) -> Iterator[None]:
    """The chain reverts to ``fork`` and ``rebuild()`` makes a new chain once, around the
    first ``raw_logs`` call: before it is answered, or right after."""
    real_logs = chain.raw_logs
    done: list[bool] = []

    def racing(*args):
        logs = None if before else real_logs(*args)
        if not done:
            done.append(True)
            chain.revert(fork)
            rebuild()
        return real_logs(*args) if before else logs

    chain.raw_logs = racing
    try:
        yield
    finally:
        del chain.raw_logs
    assert done


def _reorg_after_reading_logs(chain, fork, *, rebuild):
    return _reorg_around_logs(chain, fork, rebuild=rebuild, before=False)


def _reorg_before_reading_logs(chain, fork, *, rebuild):
    return _reorg_around_logs(chain, fork, rebuild=rebuild, before=True)


def _signed(engine, invoice):
    """The invoice's intent and signature, for paying it from a test's new chain."""
    with Session(engine) as session:
        account = session.get(invoices.MerchantAccount, invoice.account_id)
        intent = invoices.intent_of(invoice, account)
    r, vs = bytes.fromhex(invoice.signature_r[2:]), bytes.fromhex(invoice.signature_vs[2:])
    return intent, r, vs


@contextlib.contextmanager
def _following(
    indexer: Indexer,
    *,
    poll_interval: float,
    stop: threading.Event | None = None,
    **run_options,
) -> Iterator[None]:
    """``indexer.run`` in a thread (a full step at most every 60 s when idle), stopped and
    joined afterwards; the thread must end."""
    stop = stop if stop is not None else threading.Event()
    thread = threading.Thread(
        target=indexer.run,
        args=(stop,),
        kwargs={"poll_interval": poll_interval, "idle_step": 60, **run_options},
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class TestIndexerOnTester(IndexerBehaviour):
    backend = "tester"


class TestIndexerOnAnvil(IndexerBehaviour):
    backend = "anvil"


def api_cursor():
    from api.settlement.models import IndexerCursor

    return IndexerCursor


class TestCreateInvoice(MarketSuite):
    @pytest.fixture
    def shop(self, engine, market, clock, keyring) -> Shop:
        return open_shop(engine, market, clock, keyring)

    def test_signed_intent_verifies_on_chain_and_uri_names_the_chain(
        self, engine, market, clock, shop
    ):
        invoice = new_invoice(engine, market, shop, clock)
        uri = invoices.eip681_uri(invoice, market.deployment.router)
        assert uri.startswith(f"ethereum:{market.deployment.token}@{market.chain.chain_id}/approve")
        assert f"uint256={AMOUNT}" in uri
        assert invoices.qr_svg(uri).startswith("<svg")
        assert invoices.qr_png(uri)[:8] == b"\x89PNG\r\n\x1a\n"
        pay(engine, market, invoice)
        assert market.router.functions.isSettled(market.merchant.address, invoice.number).call()

    def test_numbers_are_sequential_per_merchant(self, engine, market, clock, shop):
        first = new_invoice(engine, market, shop, clock, order="a")
        second = new_invoice(engine, market, shop, clock, order="b")
        assert second.number == first.number + 1

    def test_same_order_twice_is_refused_until_the_first_is_invalid(
        self, engine, market, clock, shop
    ):
        first = new_invoice(engine, market, shop, clock)
        with pytest.raises(DuplicateOrderError):
            new_invoice(engine, market, shop, clock)
        with Session(engine) as session, session.begin():
            invoices.mark_invoice(
                session, shop.merchant_id, first.id, settle=False, actor="staff:1", clock=clock
            )
        assert new_invoice(engine, market, shop, clock).id != first.id

    @pytest.mark.parametrize(
        ("change", "param"),
        [
            ({"amount": 0}, "amount"),
            ({"amount": 2**256}, "amount"),
            ({"fee": AMOUNT + 1}, "fee"),
            ({"confirmations": 3}, "confirmations"),
            ({"token": "0x1234"}, "token"),
            ({"expires_in": timedelta(seconds=5)}, "expires_in"),
            ({"order_id": ""}, "order_id"),
        ],
    )
    def test_bad_input_is_refused_and_writes_nothing(
        self, engine, market, clock, shop, change, param
    ):
        base = {
            "merchant_id": shop.merchant_id,
            "token": market.deployment.token,
            "amount": AMOUNT,
            "order_id": "o",
        }
        request = invoices.InvoiceRequest(**{**base, **change})
        with Session(engine) as session:
            with pytest.raises(InvoiceRequestError) as info:
                invoices.create_invoice(
                    session,
                    request,
                    chain_id=market.chain.chain_id,
                    router=market.deployment.router,
                    signer=shop.signer,
                    clock=clock,
                )
            session.rollback()
            assert info.value.param == param
            assert session.exec(select(func.count()).select_from(Invoice)).one() == 0
            account = session.get(invoices.MerchantAccount, 1)
            assert account.next_invoice_number == 1


class TestInvoiceWebhooks(MarketSuite):
    @pytest.fixture
    def shop(self, engine, market, clock, keyring) -> Shop:
        return open_shop(engine, market, clock, keyring)

    def test_settlement_queues_signed_events_with_chain_evidence(self, engine, market, clock, shop):
        from api.webhooks import create_endpoint
        from api.webhooks.models import WebhookDelivery

        with Session(engine) as session, session.begin():
            create_endpoint(
                session,
                str(shop.merchant_id),
                "https://shop.example/hooks",
                ["invoice.processing", "invoice.settled", "invoice.expired"],
            )
        invoice = new_invoice(engine, market, shop, clock)
        receipt = pay(engine, market, invoice)
        indexer_for(engine, market, clock).poll_once()
        with Session(engine) as session:
            deliveries = session.exec(select(WebhookDelivery)).all()
        by_type = {d.event_type: json.loads(d.payload) for d in deliveries}
        assert set(by_type) == {"invoice.processing", "invoice.settled"}
        settled = by_type["invoice.settled"]["data"]["object"]
        assert settled["invoice"]["id"] == invoice.id
        assert settled["invoice"]["state"] == "settled"
        evidence = settled["chain_evidence"]
        assert evidence["tx_hash"] == "0x" + bytes(receipt["transactionHash"]).hex()
        assert evidence["block_number"] == receipt["blockNumber"]

    def test_a_held_payment_is_announced_to_subscribers(self, engine, market, clock, shop):
        """A merchant listening to every event hears of a payment for an invalidated invoice
        (the event once failed the whole step: it was missing from the known event types)."""
        from api.webhooks import create_endpoint
        from api.webhooks.models import WebhookDelivery

        with Session(engine) as session, session.begin():
            create_endpoint(session, str(shop.merchant_id), "https://s.example/h", ["*"])
        held = new_invoice(engine, market, shop, clock, order="held")
        with Session(engine) as session, session.begin():
            invoices.mark_invoice(
                session, shop.merchant_id, held.id, settle=False, actor="staff", clock=clock
            )
        paid = new_invoice(engine, market, shop, clock, order="paid")
        pay(engine, market, held)
        pay(engine, market, paid)
        result = indexer_for(engine, market, clock).poll_once()
        assert result.settled == [paid.id]
        with Session(engine) as session:
            deliveries = session.exec(select(WebhookDelivery)).all()
        by_type = {d.event_type: json.loads(d.payload)["data"]["object"] for d in deliveries}
        assert set(by_type) >= {"invoice.payment_held", "invoice.settled"}
        event = by_type["invoice.payment_held"]
        assert (event["invoice"]["id"], event["invoice"]["state"]) == (held.id, "invalid")
        assert event["chain_evidence"]["amount"] == str(AMOUNT)

    def test_expiry_is_announced_once(self, engine, market, clock, shop):
        from api.webhooks import create_endpoint
        from api.webhooks.models import WebhookDelivery

        with Session(engine) as session, session.begin():
            create_endpoint(
                session, str(shop.merchant_id), "https://s.example/h", ["invoice.expired"]
            )
        new_invoice(engine, market, shop, clock, expires=timedelta(minutes=1))
        clock.advance(timedelta(minutes=2))
        indexer = indexer_for(engine, market, clock)
        indexer.poll_once()
        indexer.poll_once()
        with Session(engine) as session:
            types = [d.event_type for d in session.exec(select(WebhookDelivery))]
        assert types == ["invoice.expired"]

    @pytest.mark.parametrize("after", [timedelta(minutes=5), timedelta(seconds=70)])
    def test_a_payment_reorged_away_after_expiry_announces_the_expiry(
        self, engine, market, clock, shop, after
    ):
        """The roll-back closed a paid invoice past its expiry straight away, with no
        ``invoice.expired``: expiry only announces ``new`` invoices, so a merchant waiting for
        it to release the order's stock never heard. Within the grace it reopens, as an
        unpaid invoice would stay open, and expires with the announcement after it."""
        from api.webhooks import create_endpoint
        from api.webhooks.models import WebhookDelivery

        with Session(engine) as session, session.begin():
            create_endpoint(session, str(shop.merchant_id), "https://s.example/h", ["*"])
        invoice = new_invoice(engine, market, shop, clock, expires=timedelta(minutes=1))
        fork = market.chain.snapshot()
        pay(engine, market, invoice)
        indexer = indexer_for(engine, market, clock)
        assert indexer.poll_once().settled == [invoice.id]
        clock.advance(after)
        market.chain.revert(fork)
        market.chain.mine(3)
        assert indexer.poll_once().reorged_to is not None
        reopened = after < timedelta(minutes=1) + invoices.EXPIRY_GRACE
        assert reload(engine, invoice.id).state == ("new" if reopened else "expired")
        clock.advance(timedelta(minutes=1))
        indexer.poll_once()
        indexer.poll_once()
        assert reload(engine, invoice.id).state == "expired"
        with Session(engine) as session:
            types = [d.event_type for d in session.exec(select(WebhookDelivery))]
        assert types[-2:] == ["invoice.reorged", "invoice.expired"]
        assert types.count("invoice.expired") == 1


class TestTwoRoutersOnOneChain(MarketSuite):
    """Two routers indexed into one database (an upgraded router beside the old one)."""

    backend = "tester"

    def test_a_reorg_one_router_sees_leaves_the_other_routers_payment(
        self, engine, market, clock, keyring
    ):
        """A roll-back undid every payment of the chain above its own fork point, which its
        own stored blocks alone decide: the other router's settled payment, still on the
        chain, was marked reorged, and its cursor (past that block) never read it again."""
        from tests.support import open_market

        shop = open_shop(engine, market, clock, keyring)  # the same merchant address on both
        new_router = open_market(market.chain)
        old_indexer = indexer_for(engine, market, clock)
        new_indexer = indexer_for(engine, new_router, clock)
        old_indexer.poll_once()  # the old router's range ends below the payment
        invoice = new_invoice(engine, new_router, shop, clock)
        pay(engine, new_router, invoice)
        assert new_indexer.poll_once().settled == [invoice.id]
        fork = market.chain.snapshot()  # the payment's block stays canonical
        market.chain.mine(3)
        old_indexer.poll_once()
        new_indexer.poll_once()
        market.chain.revert(fork)  # a short reorg of the blocks above it only
        market.chain.mine(5)
        assert old_indexer.poll_once().reorged_to is not None
        new_indexer.poll_once()
        new_indexer.poll_once()
        with Session(engine) as session:
            states = session.exec(select(Payment.state)).all()
        assert states == [PaymentState.CONFIRMED]
        assert reload(engine, invoice.id).state == InvoiceState.SETTLED

    @pytest.fixture
    def two_routers(self, engine, market, clock, keyring):
        """One merchant on both routers of the chain, and an indexer for each."""
        from tests.support import open_market

        shop = open_shop(engine, market, clock, keyring)
        new_router = open_market(market.chain)
        return (
            shop,
            new_router,
            indexer_for(engine, market, clock),
            indexer_for(engine, new_router, clock),
        )

    def test_one_router_never_confirms_the_others_orphaned_pending_payment(
        self, engine, market, clock, two_routers
    ):
        """Pending payments were confirmed per chain: the old router's indexer settled the
        new router's payment by block number alone, after a reorg that only the new router's
        cursor can notice had dropped it (purchase, follow-up and webhook on nothing)."""
        shop, new_router, old_indexer, new_indexer = two_routers
        old_indexer.poll_once()
        invoice = new_invoice(engine, new_router, shop, clock, confirmations=6)
        fork = market.chain.snapshot()
        pay(engine, new_router, invoice)
        assert new_indexer.poll_once().payments == 1  # pending, 1 of 6
        market.chain.revert(fork)
        market.chain.mine(10)
        old_indexer.poll_once()  # the new router's indexer is down
        assert reload(engine, invoice.id).state == InvoiceState.PROCESSING
        assert followups_of(engine, shop.merchant_id) == []
        assert new_indexer.poll_once().reorged_to is not None
        assert reload(engine, invoice.id).state == InvoiceState.NEW

    def test_a_lower_head_one_router_sees_leaves_the_others_payment(
        self, engine, market, clock, two_routers
    ):
        """The old router's node reports a head one block lower for one step: it rolled back
        every payment in a block it had stored, the new router's too (its range end was
        that block), and the new router's own stored blocks still matched: it never read the
        payment again, and its paid invoice stayed ``new``."""
        shop, new_router, old_indexer, new_indexer = two_routers
        invoice = new_invoice(engine, new_router, shop, clock)
        pay(engine, new_router, invoice)
        old_indexer.poll_once()  # its range ends at the payment's block
        assert new_indexer.poll_once().settled == [invoice.id]
        chain = market.chain
        real = chain.head_and_block_hashes

        def lower_head(numbers):
            (head, _), _ = real(numbers)
            below = [chain.block_header(n)[0] if n < head else None for n in numbers]
            return (head - 1, chain.block_header(head - 1)[0]), below

        chain.head_and_block_hashes = lower_head
        try:
            assert old_indexer.poll_once().reorged_to is not None
        finally:
            del chain.head_and_block_hashes
        for _ in range(2):
            old_indexer.poll_once()
            new_indexer.poll_once()
        with Session(engine) as session:
            assert session.exec(select(Payment.state)).all() == [PaymentState.CONFIRMED]
        assert reload(engine, invoice.id).state == InvoiceState.SETTLED
