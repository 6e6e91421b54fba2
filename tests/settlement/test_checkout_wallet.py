"""The hosted checkout's script pays a real invoice: Node runs ``api/static/checkout.js`` with an
EIP-1193 provider forwarding to anvil (which signs for its dev accounts), from the call data the
page hands it; the indexer then settles the invoice like any payment. A payer-bound invoice
refuses another account before the wallet is asked to send anything."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib.resources import files
from pathlib import Path

import pytest
from sqlmodel import Session

from api.settlement.checkout import checkout_calls
from api.settlement.models import MerchantAccount
from tests.settlement.conftest import MarketSuite
from tests.settlement.test_indexer import indexer_for, new_invoice, open_shop, reload
from tests.support import missing

HARNESS = Path(__file__).with_name("checkout_wallet.cjs")
SCRIPT = Path(str(files("api").joinpath("static/checkout.js")))


def run_wallet(engine, market, invoice, payer: str) -> tuple[int, dict]:
    """Node runs the page's script against anvil as ``payer``: (exit code, its report)."""
    node = shutil.which("node")
    if node is None:
        missing("node not found (Node 20 is a requirement, README)")
    with Session(engine) as session:
        account = session.get(MerchantAccount, invoice.account_id)
        calls = checkout_calls(invoice, account, market.deployment.router)
    data = {
        "chain_id": str(invoice.chain_id),
        "token": invoice.token,
        "router": market.deployment.router,
        "amount": str(invoice.amount),
        "payer": calls.payer,
        "approve_data": calls.approve_data,
        "pay_data": calls.pay_data,
        "confirmations": invoice.confirmations_required,
    }
    done = subprocess.run(
        [node, str(HARNESS), str(SCRIPT), market.chain.rpc_url, payer, json.dumps(data)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


class TestCheckoutWallet(MarketSuite):
    backend = "anvil"

    @pytest.fixture
    def shop(self, engine, market, clock, keyring):
        return open_shop(engine, market, clock, keyring)

    def test_the_page_script_pays_and_the_indexer_settles(self, engine, market, clock, shop):
        invoice = new_invoice(engine, market, shop, clock)
        payer = market.payers[1].address
        token = market.token.functions
        assert token.allowance(payer, market.deployment.router).call() == 0
        code, outcome = run_wallet(engine, market, invoice, payer)
        assert code == 0, outcome
        # the wallet was asked for an approval first (no allowance), then the payment
        sends = [c for c in outcome["calls"] if c == "eth_sendTransaction"]
        assert len(sends) == 2
        receipt = market.chain.w3.eth.get_transaction_receipt(outcome["hash"])
        assert receipt["to"].lower() == market.deployment.router.lower()
        assert receipt["from"].lower() == payer.lower()
        assert indexer_for(engine, market, clock).poll_once().settled == [invoice.id]
        assert reload(engine, invoice.id).paid_amount == invoice.amount

    def test_an_existing_allowance_skips_the_approval(self, engine, market, clock, shop):
        invoice = new_invoice(engine, market, shop, clock)
        payer = market.payers[2]
        market.transact(
            market.token.functions.approve(market.deployment.router, invoice.amount), payer
        )
        code, outcome = run_wallet(engine, market, invoice, payer.address)
        assert code == 0, outcome
        assert outcome["calls"].count("eth_sendTransaction") == 1
        assert indexer_for(engine, market, clock).poll_once().settled == [invoice.id]

    def test_a_payer_bound_invoice_refuses_another_account(self, engine, market, clock, shop):
        bound = market.payers[0].address
        invoice = new_invoice(engine, market, shop, clock, payer=bound)
        code, outcome = run_wallet(engine, market, invoice, market.payers[3].address)
        assert code == 1
        assert outcome["error"] == f"This invoice can only be paid from {bound}."
        assert "eth_sendTransaction" not in outcome["calls"]
        assert indexer_for(engine, market, clock).poll_once().settled == []
