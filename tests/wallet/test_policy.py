"""The signing policy stops a compromised automated signer from draining funds."""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_account import Account
from hexbytes import HexBytes

from wallet.errors import PolicyViolationError
from wallet.policy import SELECTORS, SigningPolicy, selector
from wallet.secrets import PrivateKey
from wallet.signing import (
    PaymentIntent,
    Signer,
    decode_transaction,
    payment_intent_typed_data,
    permit_typed_data,
)

KEY = PrivateKey("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
OTHER_TOKEN = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"
ROUTER = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
ATTACKER = "0x000000000000000000000000000000000000bad0"
INTENT_T = "(address,address,uint256,uint256,uint256,address,uint256)"


def call(sel: str, types: list[str], args: list) -> str:
    return sel + encode(types, args).hex()


def tx(to, data="0x", value=0):
    return {
        "to": to,
        "data": data,
        "value": value,
        "gas": 100_000,
        "maxFeePerGas": 2,
        "maxPriorityFeePerGas": 1,
        "nonce": 0,
        "chainId": 31337,
        "type": 2,
    }


@pytest.fixture
def policy():
    return SigningPolicy(
        allowed_contracts=frozenset({TOKEN, ROUTER}),
        allowed_selectors=frozenset(
            {
                SELECTORS["approve"],
                SELECTORS["pay"],
                SELECTORS["payWithPermit"],
                SELECTORS["refund"],
            }
        ),
        max_amounts={TOKEN: 1_000_000},
    )


def intent(amount, token=TOKEN):
    return (ROUTER, token, amount, 0, 1, "0x" + "00" * 20, 2**40)


def permit(spender, value):
    """An ERC-2612 permit of TOKEN for ``spender``, as typed data."""
    return permit_typed_data(
        token_name="T",
        token=TOKEN,
        chain_id=1,
        owner=KEY.address,
        spender=spender,
        value=value,
        nonce=0,
        deadline=1,
    )


def assert_signed_by_key(signed, *, to, data="0x", value=0):
    """The raw transaction recovers to KEY's address and carries what was asked."""
    assert Account.recover_transaction(signed.raw) == Signer(KEY).address
    fields = decode_transaction(signed.raw)
    assert fields["to"].lower() == to.lower()
    assert fields["value"] == value
    assert HexBytes(fields.get("data", "0x")) == HexBytes(data)


class TestTransactions:
    def test_selectors(self):
        assert selector("transfer(address,uint256)") == "0xa9059cbb"
        assert SELECTORS["approve"] == "0x095ea7b3"

    def test_allowed_approve_within_limit(self, policy):
        data = call(SELECTORS["approve"], ["address", "uint256"], [ROUTER, 1_000_000])
        signed = Signer(KEY, policy).sign_transaction(tx(TOKEN, data))
        assert_signed_by_key(signed, to=TOKEN, data=data)

    def test_approve_over_limit(self, policy):
        data = call(SELECTORS["approve"], ["address", "uint256"], [ATTACKER, 2**256 - 1])
        with pytest.raises(PolicyViolationError, match="exceeds"):
            Signer(KEY, policy).sign_transaction(tx(TOKEN, data))

    def test_transfer_selector_not_allowed(self, policy):
        data = call(SELECTORS["transfer"], ["address", "uint256"], [ATTACKER, 1])
        with pytest.raises(PolicyViolationError, match="selector"):
            Signer(KEY, policy).sign_transaction(tx(TOKEN, data))

    def test_unknown_contract(self, policy):
        with pytest.raises(PolicyViolationError, match="not an allowed contract"):
            Signer(KEY, policy).sign_transaction(tx(ATTACKER))

    def test_calldata_given_as_input_is_refused(self, policy):
        """The check read ``data`` while the signer signs ``input`` when ``data`` is absent:
        an unlimited approve to an attacker passed as having no calldata."""
        body = tx(TOKEN)
        body.pop("data")
        body["input"] = call(SELECTORS["approve"], ["address", "uint256"], [ATTACKER, 2**256 - 1])
        with pytest.raises(PolicyViolationError, match="'data', not 'input'"):
            Signer(KEY, policy).sign_transaction(body)

    def test_native_value(self, policy):
        with pytest.raises(PolicyViolationError, match="wei"):
            Signer(KEY, policy).sign_transaction(tx(ROUTER, value=1))

    def test_a_cancel_passes_a_contracts_only_policy(self, policy):
        """A 0-value self-transfer moves nothing and is how a stuck nonce is cancelled: a
        policy-bound hot signer could not cancel at all."""
        signer = Signer(KEY, policy)
        assert_signed_by_key(signer.sign_transaction(tx(signer.address)), to=signer.address)
        for body in (tx(signer.address, value=1), tx(ATTACKER)):
            with pytest.raises(PolicyViolationError):
                signer.sign_transaction(body)
        with pytest.raises(PolicyViolationError):  # a call to itself is not a cancel
            signer.sign_transaction(tx(signer.address, data="0x" + SELECTORS["approve"][2:]))

    def test_deploy(self, policy):
        body = tx(None)
        body.pop("to")
        with pytest.raises(PolicyViolationError, match="creation"):
            Signer(KEY, policy).sign_transaction(body)

    def test_pay_amount_decoded(self, policy):
        ok = call(
            SELECTORS["pay"], [INTENT_T, "bytes32", "bytes32"], [intent(10), b"r" * 32, b"s" * 32]
        )
        Signer(KEY, policy).sign_transaction(tx(ROUTER, ok))
        big = call(
            SELECTORS["pay"],
            [INTENT_T, "bytes32", "bytes32"],
            [intent(10**9), b"r" * 32, b"s" * 32],
        )
        with pytest.raises(PolicyViolationError, match="payment amount"):
            Signer(KEY, policy).sign_transaction(tx(ROUTER, big))

    def test_pay_in_unlisted_token_has_zero_limit(self, policy):
        data = call(
            SELECTORS["pay"],
            [INTENT_T, "bytes32", "bytes32"],
            [intent(1, OTHER_TOKEN), b"r" * 32, b"s" * 32],
        )
        with pytest.raises(PolicyViolationError, match="exceeds"):
            Signer(KEY, policy).sign_transaction(tx(ROUTER, data))

    def test_pay_with_permit_checks_permit_value(self, policy):
        permit_t = "(uint256,uint256,uint8,bytes32,bytes32)"
        data = call(
            SELECTORS["payWithPermit"],
            [INTENT_T, "bytes32", "bytes32", permit_t],
            [intent(10), b"r" * 32, b"s" * 32, (2**255, 0, 27, b"r" * 32, b"s" * 32)],
        )
        with pytest.raises(PolicyViolationError, match="permit value"):
            Signer(KEY, policy).sign_transaction(tx(ROUTER, data))

    def test_refund_amount(self, policy):
        data = call(
            SELECTORS["refund"],
            [INTENT_T, "bytes32", "bytes32", "address", "uint256"],
            [intent(10), b"r" * 32, b"s" * 32, ATTACKER, 10**12],
        )
        with pytest.raises(PolicyViolationError, match="refund amount"):
            Signer(KEY, policy).sign_transaction(tx(ROUTER, data))

    def test_garbage_calldata_refused(self, policy):
        with pytest.raises(PolicyViolationError, match="decode"):
            Signer(KEY, policy).sign_transaction(tx(TOKEN, SELECTORS["approve"] + "00"))

    def test_a_call_whose_amount_it_cannot_read_needs_its_selector_listed(self):
        """``increaseAllowance(spender, 10**30)`` is an approve by another name: under
        ``max_amounts`` with no selector list it was signed unchecked. Listed on purpose
        (the operator allowed it), it is signed."""
        raise_allowance = selector("increaseAllowance(address,uint256)")
        data = call(raise_allowance, ["address", "uint256"], [ATTACKER, 10**30])
        limited = SigningPolicy(max_amounts={TOKEN: 1_000_000})
        with pytest.raises(PolicyViolationError, match="cannot read"):
            Signer(KEY, limited).sign_transaction(tx(TOKEN, data))
        listed = SigningPolicy(
            max_amounts={TOKEN: 1_000_000}, allowed_selectors=frozenset({raise_allowance})
        )
        assert_signed_by_key(
            Signer(KEY, listed).sign_transaction(tx(TOKEN, data)), to=TOKEN, data=data
        )

    def test_no_policy_signs_anything(self):
        signed = Signer(KEY).sign_transaction(tx(ATTACKER, value=10**18))
        assert_signed_by_key(signed, to=ATTACKER, value=10**18)


class TestTypedDataAndMessages:
    def test_intent_limits(self, policy):
        signer = Signer(KEY, policy)
        small = PaymentIntent(ROUTER, TOKEN, 10, 0, 1, deadline=2**40)
        signer.sign_typed_data(payment_intent_typed_data(small, chain_id=1, router=ROUTER))
        big = PaymentIntent(ROUTER, TOKEN, 10**7, 0, 1, deadline=2**40)
        with pytest.raises(PolicyViolationError, match="exceeds"):
            signer.sign_intent(big, chain_id=1, router=ROUTER)
        with pytest.raises(PolicyViolationError, match="verifying contract"):
            signer.sign_intent(small, chain_id=1, router=OTHER_TOKEN)

    def test_permit_limits(self, policy):
        signer = Signer(KEY, policy)

        signer.sign_typed_data(permit(ROUTER, 5))
        with pytest.raises(PolicyViolationError, match="spender"):
            signer.sign_typed_data(permit("0x000000000000000000000000000000000000bad0", 5))
        with pytest.raises(PolicyViolationError, match="permit value"):
            signer.sign_typed_data(permit(ROUTER, 2**256 - 1))

    def test_a_dai_style_permit_is_refused_under_amount_limits(self, policy):
        """DAI's permit (holder, spender, nonce, expiry, bool allowed) has no value: it grants
        an unlimited allowance, and the limit read its missing value as 0."""
        dai_permit = permit(ROUTER, 0)
        dai_permit["types"]["Permit"] = [
            {"name": "holder", "type": "address"},
            {"name": "spender", "type": "address"},
            {"name": "nonce", "type": "uint256"},
            {"name": "expiry", "type": "uint256"},
            {"name": "allowed", "type": "bool"},
        ]
        dai_permit["message"] = {
            "holder": KEY.address,
            "spender": ROUTER,
            "nonce": 0,
            "expiry": 0,
            "allowed": True,
        }
        with pytest.raises(PolicyViolationError, match="ERC-2612"):
            Signer(KEY, policy).sign_typed_data(dai_permit)

    def test_other_typed_data_and_messages(self, policy):
        signer = Signer(KEY, policy)
        with pytest.raises(PolicyViolationError, match="not allowed"):
            signer.sign_typed_data(
                {"primaryType": "Mail", "domain": {}, "message": {}, "types": {}}
            )
        with pytest.raises(PolicyViolationError, match="messages"):
            signer.sign_message("gm")

    @pytest.mark.parametrize(
        "field",
        [
            {"allow_messages": "false"},
            {"allow_deploy": "no"},
            {"allow_messages": 1},
            {"allowed_contracts": TOKEN},
            {"allowed_selectors": SELECTORS["approve"]},
        ],
        ids=lambda f: ",".join(f"{k}={v!r}" for k, v in f.items()),
    )
    def test_a_hand_written_policy_field_of_the_wrong_type_is_refused(self, field):
        """``bool("false")`` is True: a hand-edited ``"false"`` allowed what it meant to
        forbid. A string where a list belongs became a set of its characters."""
        with pytest.raises(ValueError, match=r"true or false|JSON list"):
            SigningPolicy.from_dict(field)

    def test_round_trips_through_json(self, policy):
        again = SigningPolicy.from_dict(policy.to_dict())
        assert again.to_dict() == policy.to_dict()
        assert again.max_amounts == {TOKEN: 1_000_000}
