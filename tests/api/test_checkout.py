"""An invoice's hosted checkout page: reached only by its link (an HMAC of the id, no API key),
it carries call data that pays exactly the signed intent, shows a paid or invalid invoice
without a button, and is locked down like the other customer pages. (That its script pays on
a real chain: tests/settlement/test_checkout_wallet.py.)"""

from __future__ import annotations

import json
import re

from eth_abi import decode

from api.operators import OperatorKeys
from tests.api import test_resources_invoices as invoice_suite
from tests.api.conftest import auth
from tests.api.test_resources_crm import World
from wallet.chain import Chain
from wallet.secrets import PrivateKey
from wallet.signing import PaymentIntent, Signer, recover_intent_signer

# the invoice suite's fixtures: a tester-chain deployment and a world whose merchants can sign
deployment = invoice_suite.deployment
world = invoice_suite.world
create = invoice_suite.create

_BLOCK = re.compile(r'<script type="application/json" id="invoice">(.*?)</script>', re.S)


def _open(w: World, url: str):
    path = url.removeprefix("http://127.0.0.1:8000")
    return w.client.get(path)  # no Authorization header: the link is the credential


def _data(html: str) -> dict:
    (blob,) = _BLOCK.findall(html)
    return json.loads(blob)


def test_the_link_opens_a_page_whose_calls_pay_the_signed_intent(world: World) -> None:
    invoice = create(world, world.a.merchant, amount="2500000").json()
    url = invoice["checkout_url"]
    assert url.startswith("http://127.0.0.1:8000/v1/public/checkout/" + invoice["id"] + ".")
    page = _open(world, url)
    assert page.status_code == 200, page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "Acme" in page.text
    assert "2.5 of token" in page.text
    data = _data(page.text)
    assert (data["router"], data["token"], data["amount"]) == (
        invoice["router"],
        invoice["token"],
        "2500000",
    )
    assert data["payer"] is None
    approve = bytes.fromhex(data["approve_data"][2:])
    assert approve[:4].hex() == "095ea7b3"  # approve(address,uint256)
    spender, value = decode(["address", "uint256"], approve[4:])
    assert (spender.lower(), value) == (invoice["router"].lower(), 2_500_000)
    pay = bytes.fromhex(data["pay_data"][2:])
    intent, r, vs = decode(
        ["(address,address,uint256,uint256,uint256,address,uint256)", "bytes32", "bytes32"],
        pay[4:],
    )
    signed = invoice["intent"]
    assert [str(v).lower() for v in intent] == [
        str(v).lower()
        for v in (
            signed["merchant"],
            signed["token"],
            signed["amount"],
            signed["fee"],
            signed["invoice_id"],
            signed["payer"],
            signed["deadline"],
        )
    ]
    assert ("0x" + r.hex(), "0x" + vs.hex()) == (
        invoice["signature"]["r"],
        invoice["signature"]["vs"],
    )
    script = world.client.get("/v1/public/checkout.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "payInvoice" in script.text


def test_an_altered_or_borrowed_link_is_a_404_page(world: World) -> None:
    mine = create(world, world.a.merchant).json()
    other = create(world, world.b.merchant).json()
    token = mine["checkout_url"].rsplit(".", 1)[1]
    for link in (
        f"{mine['id']}.{token[:-1]}{'A' if token[-1] != 'A' else 'B'}",  # one character off
        f"{other['id']}.{token}",  # another invoice's id with this one's token
        f"inv_{'0' * 24}.{token}",
        mine["id"],  # no token at all
    ):
        page = world.client.get(f"/v1/public/checkout/{link}")
        assert page.status_code == 404, link
        assert "does not work" in page.text
        assert 'id="invoice"' not in page.text


def test_an_invoice_that_is_not_payable_shows_its_state_and_no_button(world: World) -> None:
    invoice = create(world, world.a.merchant).json()
    r = world.client.post(
        f"/v1/invoices/{invoice['id']}/mark",
        json={"status": "invalid"},
        headers=auth(world.a.merchant),
    )
    assert r.status_code == 200, r.text
    page = _open(world, invoice["checkout_url"])
    assert page.status_code == 200
    assert "Invoice invalid" in page.text
    assert 'id="pay"' not in page.text
    assert 'id="invoice"' not in page.text
    late = create(world, world.a.merchant).json()
    world.clock.advance(minutes=16)  # past its 15-minute expiry, before the worker sweeps it
    page = _open(world, late["checkout_url"])
    assert 'id="pay"' not in page.text
    assert "Invoice expired" in page.text  # not "Invoice new" over "nothing left to pay"


def test_a_server_without_the_invoices_chain_says_payment_is_unavailable(world: World) -> None:
    """A server started without chain information (or on another chain) neither guesses the
    token's decimals (18: a 6-decimal amount shown 10**12 too small) nor calls an open invoice
    paid: a 503 page, the amount in base units, no button."""
    invoice = create(world, world.a.merchant, amount="2500000").json()
    world.client.app.state.chain_info = None
    page = _open(world, invoice["checkout_url"])
    assert page.status_code == 503
    assert "Payment unavailable" in page.text
    assert "2500000 base units of token" in page.text
    assert "Nothing is left to pay" not in page.text
    assert 'id="pay"' not in page.text


def test_after_an_operator_rotation_the_page_pays_only_what_the_router_takes(
    world: World, tester_chain: Chain
) -> None:
    """A rotated operator invalidates every intent the previous key signed. With the new key
    held here, the open invoice is signed again and its page pays it; with a key this server
    does not hold, the page offered the old signature (the router reverts ``InvalidSigner``,
    after the customer's approve) and now says payment is unavailable."""
    old, new, elsewhere = tester_chain.dev_accounts()[2:5]
    world.client.app.state.signers = OperatorKeys(
        {a.address: Signer(PrivateKey(bytes(a.key))) for a in (old, new)}
    )
    invoice = create(world, world.a.merchant).json()
    account = world.client.get(
        f"/v1/merchants/{world.a.id}/account", headers=auth(world.a.merchant)
    ).json()

    def rotate(operator: str) -> None:
        body = {"address": account["address"], "payout": account["payout"], "operator": operator}
        r = world.client.post(
            f"/v1/merchants/{world.a.id}/account", json=body, headers=auth(world.a.merchant)
        )
        assert r.status_code == 200, r.text

    def page_signer() -> str:
        page = _open(world, invoice["checkout_url"])
        assert page.status_code == 200, page.text
        pay = bytes.fromhex(_data(page.text)["pay_data"][2:])
        fields, r, vs = decode(["(address,address,uint256,uint256,uint256,address,uint256)",
                                "bytes32", "bytes32"], pay[4:])  # fmt: skip
        return recover_intent_signer(
            PaymentIntent(*fields),
            r,
            vs,
            chain_id=invoice_suite.CHAIN_ID,
            router=invoice["router"],
        )

    assert page_signer() == old.address
    rotate(new.address)
    assert page_signer() == new.address
    rotate(elsewhere.address)  # a key this server does not hold
    page = _open(world, invoice["checkout_url"])
    assert page.status_code == 503
    assert "Payment unavailable" in page.text
    assert 'id="pay"' not in page.text


def test_the_listing_carries_the_same_link(world: World) -> None:
    invoice = create(world, world.a.merchant).json()
    listed = world.client.get("/v1/invoices", headers=auth(world.a.merchant)).json()["data"]
    assert [i["checkout_url"] for i in listed if i["id"] == invoice["id"]] == [
        invoice["checkout_url"]
    ]
