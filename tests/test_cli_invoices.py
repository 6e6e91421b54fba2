"""``followpay invoices create | show | list`` as real subprocesses of the installed script, on
anvil with an operator key from the vault: metadata, QR files, the same JSON from ``show``,
amounts at each token's own decimals in ``list``, and bad input that writes nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import Session, select

from api.db import make_engine
from api.settlement import invoices
from api.settlement.models import Invoice
from contracts import load_artifact
from crm import ContactCreate, KeyRing, SystemClock, contacts
from tests.support import Market, open_market
from wallet.chain import Chain
from wallet.keys import generate_mnemonic
from wallet.signing import (
    PaymentIntent,
    from_compact,
    payment_intent_typed_data,
    recover_typed_data,
)
from wallet.vault import Vault

SCRIPT = Path(sys.executable).with_name("followpay")
PASSWORD = "correct horse battery staple"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: ``--metadata`` as given, and what the invoice must hold: the first ``=`` splits, the rest of
#: the value is kept as typed (spaces, ``=``, non-ASCII, empty).
METADATA_ARGS = ("ref=A-1", "note=a=b c", "city=Zürich", "empty=")
METADATA = {"ref": "A-1", "note": "a=b c", "city": "Zürich", "empty": ""}
#: 2**64 + 1 base units at 18 decimals: a float prints 18.446744073709552 (or 18.45 at 2 places)
BIG_AMOUNT = "18.446744073709551617"
BIG_UNITS = 2**64 + 1


@dataclass
class Shop:
    chain: Chain
    market: Market
    merchant_id: int
    env: dict[str, str]  # the 6-decimal TestToken deployment
    env18: dict[str, str]  # the same router with an 18-decimal token
    database_url: str
    root: Path

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "api.cli"]
        return subprocess.run(
            [*command, *args],
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = self.run(*args, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def create(self, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        return json.loads(
            self.ok("invoices", "create", "--merchant", str(self.merchant_id), *args, env=env)
        )

    def invoice_count(self) -> int:
        engine = make_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return int(conn.execute(sa.text("SELECT count(*) FROM api_invoice")).scalar_one())
        finally:
            engine.dispose()

    def stored(self, invoice_id: str) -> Invoice:
        engine = make_engine(self.database_url)
        try:
            with Session(engine) as session:
                return session.exec(select(Invoice).where(Invoice.id == invoice_id)).one()
        finally:
            engine.dispose()


def _deploy_18_decimal_token(market: Market) -> str:
    """An OpenZeppelin ERC20 with the default 18 decimals (the re-entrancy mock, never armed)."""
    artifact = load_artifact("ReentrantToken")
    factory = market.chain.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = market.transact(factory.constructor(), market.owner)
    return str(receipt["contractAddress"])


@pytest.fixture(scope="module")
def shop(anvil_chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """A migrated database, a merchant created by the CLI whose router account's operator is
    vault key ``ops`` (``setOperator`` on chain too), and two manifests for one router."""
    chain = anvil_chain
    snapshot = chain.snapshot()
    try:
        market = open_market(chain)
        root = tmp_path_factory.mktemp("cli-invoices")
        home = root / "home"
        vault = Vault(home, scrypt_n=2**12, allow_weak_kdf=True)  # weak KDF: tests only
        vault.create("ops", generate_mnemonic(12), PASSWORD)
        operator = vault.unlock("ops", PASSWORD).address(0)
        market.transact(market.router.functions.setOperator(operator), market.merchant)
        manifest = root / "deployment.json"
        manifest.write_text(json.dumps(market.deployment.to_json()))
        deployment18 = dataclasses.replace(
            market.deployment, token=_deploy_18_decimal_token(market)
        )
        manifest18 = root / "deployment-18.json"
        manifest18.write_text(json.dumps(deployment18.to_json()))
        database_url = f"sqlite:///{root / 'shop.sqlite3'}"
        assert chain.rpc_url is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("FOLLOWPAY_")}
        env.update(
            FOLLOWPAY_HOME=str(home),
            FOLLOWPAY_DATABASE_URL=database_url,
            FOLLOWPAY_CHAIN="rpc",
            FOLLOWPAY_RPC_URL=chain.rpc_url,
            FOLLOWPAY_MANIFEST=str(manifest),
            FOLLOWPAY_MASTER_KEY="cd" * 32,
            FOLLOWPAY_OPERATORS="ops",
            FOLLOWPAY_PASSWORD=PASSWORD,
            COLUMNS="80",  # a narrow table: ids and amounts must still be printed whole
        )
        env18 = {**env, "FOLLOWPAY_MANIFEST": str(manifest18)}
        shop = Shop(chain, market, 0, env, env18, database_url, root)
        shop.ok("db", "upgrade")
        shop.merchant_id = int(shop.ok("admin", "create-merchant", "Shop").strip())
        engine = make_engine(database_url)
        try:
            with Session(engine) as session, session.begin():
                invoices.register_account(
                    session,
                    shop.merchant_id,
                    chain_id=chain.chain_id,
                    address=market.merchant.address,
                    payout=market.payout.address,
                    operator=operator,
                    clock=SystemClock(),
                )
        finally:
            engine.dispose()
        yield shop
    finally:
        chain.revert(snapshot)


@pytest.fixture(scope="module")
def created(shop: Shop) -> dict[str, Any]:
    """One micro-token invoice with metadata and both QR files."""
    metadata = [arg for pair in METADATA_ARGS for arg in ("--metadata", pair)]
    qr = ["--qr", str(shop.root / "pay.svg"), "--qr", str(shop.root / "pay.PNG")]
    return shop.create("--amount", "0.000001", "--order", "o-qr", *metadata, *qr)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _one_usage_error(result: subprocess.CompletedProcess[str], says: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    assert len(lines) <= 3, result.stderr  # usage, a --help hint, the error
    assert lines[-1].startswith("Error: "), result.stderr
    assert says in lines[-1], result.stderr


def _row(table: str, invoice_id: str) -> list[str]:
    """The cells of ``invoice_id``'s row, which must be one line (nothing wrapped or cut)."""
    (line,) = [line for line in table.splitlines() if invoice_id in line]
    return [cell.strip() for cell in line.strip("│ ").split("│")]


class TestCreate:
    def test_prints_the_signed_invoice_with_its_metadata(self, shop, created):
        deployment = shop.market.deployment
        assert created["id"].startswith("inv_")
        assert created["amount"] == "1"  # 0.000001 at TestToken's 6 decimals
        assert created["order_id"] == "o-qr"
        assert created["state"] == "new"
        assert created["token"].lower() == deployment.token.lower()
        assert created["metadata"] == METADATA
        assert created["uri"] == (
            f"ethereum:{created['token']}@{shop.chain.chain_id}/approve"
            f"?address={deployment.router}&uint256=1"
        )

    def test_its_intent_is_the_apis_and_recovers_to_the_operator(self, shop, created):
        intent = created["intent"]
        assert intent["merchant"] == shop.market.merchant.address
        assert (intent["amount"], intent["fee"]) == (created["amount"], "0")
        assert intent["invoice_id"] == str(created["number"])
        typed = payment_intent_typed_data(
            PaymentIntent(
                merchant=intent["merchant"],
                token=intent["token"],
                amount=int(intent["amount"]),
                fee=int(intent["fee"]),
                invoice_id=int(intent["invoice_id"]),
                payer=intent["payer"],
                deadline=intent["deadline"],
            ),
            chain_id=shop.chain.chain_id,
            router=shop.market.deployment.router,
        )
        v, r, s = from_compact(
            bytes.fromhex(created["signature"]["r"][2:]),
            bytes.fromhex(created["signature"]["vs"][2:]),
        )
        recovered = recover_typed_data(typed, r + s + bytes([v]))
        assert recovered == Vault(shop.root / "home").info("ops").first_address

    def test_metadata_is_stored_as_the_api_stores_it(self, shop, created):
        stored = shop.stored(created["id"])
        assert stored.metadata_ == METADATA
        assert all(isinstance(v, str) for v in stored.metadata_.values())

    def test_svg_file_is_the_qr_code_of_the_payment_uri(self, shop, created):
        text = (shop.root / "pay.svg").read_text(encoding="utf-8")
        root = ET.fromstring(text)  # noqa: S314 - a file this test had written
        assert root.tag.rpartition("}")[2] == "svg"
        assert root.find(".//{*}path") is not None or root.find(".//path") is not None
        # the helper behind /v1/invoices/{id}/qr.svg, fed the URI from the JSON: same image
        assert text == invoices.qr_svg(created["uri"])

    def test_png_file_is_the_qr_code_of_the_payment_uri(self, shop, created):
        data = (shop.root / "pay.PNG").read_bytes()  # the suffix is matched case-insensitively
        width, height = _png_size(data)
        assert width == height > 21 * 4  # at least a version-1 symbol at scale 4
        assert data == invoices.qr_png(created["uri"])


class TestContact:
    def test_another_merchants_or_no_contact_is_one_line_and_writes_nothing(self, shop):
        other = int(shop.ok("admin", "create-merchant", "Other").strip())
        engine = make_engine(shop.database_url)
        try:
            with Session(engine) as session, session.begin():
                theirs = contacts.create_contact(
                    session,
                    other,
                    ContactCreate(name="Ada", email="ada@example.com"),
                    KeyRing(bytes.fromhex("cd" * 32)),
                    SystemClock(),
                ).id
        finally:
            engine.dispose()
        before = shop.invoice_count()
        for contact in (str(theirs), "999999"):
            qr = shop.root / f"never-contact-{contact}.svg"
            result = shop.run(
                "invoices",
                "create",
                "--merchant",
                str(shop.merchant_id),
                "--amount",
                "1",
                "--order",
                f"o-contact-{contact}",
                "--contact",
                contact,
                "--qr",
                str(qr),
                env=shop.env,
            )
            assert result.returncode == 1, result.stderr
            assert result.stdout == ""
            assert result.stderr.strip() == f"error: No such contact: '{contact}'."
            assert not qr.exists()
        assert shop.invoice_count() == before


class TestShow:
    def test_returns_the_invoice_create_printed(self, shop, created):
        shown = json.loads(
            shop.ok("invoices", "show", created["id"], "--merchant", str(shop.merchant_id))
        )
        assert shown == created

    def test_an_unknown_invoice_is_one_line_and_writes_nothing(self, shop, created):
        before = shop.invoice_count()
        result = shop.run(
            "invoices", "show", "inv_" + "0" * 24, "--merchant", str(shop.merchant_id)
        )
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1, result.stderr
        assert result.stdout == ""
        assert lines == [f"error: no invoice inv_{'0' * 24}"], result.stderr
        assert shop.invoice_count() == before

    def test_another_merchants_invoice_is_not_shown(self, shop, created):
        result = shop.run(
            "invoices", "show", created["id"], "--merchant", str(shop.merchant_id + 1)
        )
        assert result.returncode == 1, result.stderr
        assert result.stdout == ""
        assert result.stderr.strip() == f"error: no invoice {created['id']}"


class TestList:
    def test_amounts_at_each_tokens_decimals_exactly(self, shop, created):
        grouped = shop.create("--amount", "1234.5", "--order", "o-grouped")
        big = shop.create("--amount", BIG_AMOUNT, "--order", "o-big", env=shop.env18)
        assert big["amount"] == str(BIG_UNITS)
        table = shop.ok("invoices", "list", "--merchant", str(shop.merchant_id))
        rows = {inv["id"]: _row(table, inv["id"]) for inv in (created, grouped, big)}
        assert rows[created["id"]][:4] == [created["id"], "o-qr", "0.000001", "new"]
        assert rows[grouped["id"]][:3] == [grouped["id"], "o-grouped", "1,234.50"]
        assert rows[big["id"]][:3] == [big["id"], "o-big", BIG_AMOUNT]

    def test_an_unknown_state_is_a_usage_error(self, shop):
        result = shop.run(
            "invoices", "list", "--merchant", str(shop.merchant_id), "--state", "paid"
        )
        _one_usage_error(result, "unknown state 'paid'")


USAGE_ERRORS = {
    "no_equals": (("--metadata", "novalue"), "'novalue' is not KEY=VALUE"),
    "empty_key": (("--metadata", "=x"), "keys are 1-40 characters"),
    "long_key": (("--metadata", "k" * 41 + "=x"), "keys are 1-40 characters"),
    "long_value": (("--metadata", "k=" + "v" * 501), "longer than 500 characters"),
    "key_twice": (("--metadata", "k=1", "--metadata", "k=2"), "key 'k' given twice"),
    "too_many": (
        tuple(a for i in range(21) for a in ("--metadata", f"k{i}=v")),
        "at most 20 entries",
    ),
    "qr_suffix": (("--qr", "{root}/pay.gif"), "must end in .svg or .png"),
    "qr_folder": (("--qr", "{root}/missing/pay.svg"), "no folder"),
}


@pytest.mark.parametrize("name", list(USAGE_ERRORS))
def test_bad_create_input_is_a_usage_error_and_writes_nothing(shop, name):
    extra, says = USAGE_ERRORS[name]
    qr = shop.root / f"never-{name}.svg"
    args = [a.format(root=shop.root) for a in extra]
    before = shop.invoice_count()
    result = shop.run(
        "invoices",
        "create",
        "--merchant",
        str(shop.merchant_id),
        "--amount",
        "1",
        "--order",
        f"o-{name}",
        *args,
        *(["--qr", str(qr)] if not name.startswith("qr_") else []),
    )
    _one_usage_error(result, says)
    assert shop.invoice_count() == before
    assert not qr.exists()
    assert not (shop.root / "pay.gif").exists()
    assert not (shop.root / "missing").exists()
