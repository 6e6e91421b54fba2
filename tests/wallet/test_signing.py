"""Pure signing: EIP-1559 only, EIP-191, EIP-712, EIP-2098 compact signatures."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from wallet.errors import AmountError, InvalidAddressError, SigningError
from wallet.secrets import PrivateKey
from wallet.signing import (
    PaymentIntent,
    Signer,
    decode_transaction,
    from_compact,
    payment_intent_digest,
    payment_intent_typed_data,
    permit_typed_data,
    recover_message,
    recover_typed_data,
    sign_message,
    sign_transaction,
    sign_typed_data,
    split_signature,
    to_compact,
)

KEY = PrivateKey("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
EIP2098_KEY = PrivateKey("0x1234567890123456789012345678901234567890123456789012345678901234")
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
ROUTER = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
MERCHANT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def tx(**over):
    base = {
        "to": "0x000000000000000000000000000000000000dEaD",
        "value": 1,
        "gas": 21_000,
        "maxFeePerGas": 3 * 10**9,
        "maxPriorityFeePerGas": 10**9,
        "nonce": 7,
        "chainId": 31337,
        "type": 2,
    }
    base.update(over)
    return base


class TestTransactions:
    def test_same_bytes_as_eth_account(self):
        signed = sign_transaction(tx(), KEY)
        reference = Account.sign_transaction(tx(), "0x" + KEY.reveal_bytes().reveal().hex())
        assert signed.raw == bytes(reference.raw_transaction)
        assert signed.hash == "0x" + bytes(reference.hash).hex()
        assert signed.sender == KEY.address
        assert signed.nonce == 7
        assert signed.chain_id == 31337
        assert signed.raw[0] == 2  # typed envelope 0x02

    def test_recovers_sender(self):
        signed = sign_transaction(tx(data="0xabcdef"), KEY)
        assert Account.recover_transaction(signed.raw) == KEY.address

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"gasPrice": 10**9}, "legacy"),
            ({"type": 0}, "type 2"),
            ({"type": 1}, "type 2"),
            ({"chainId": None}, "chainId"),
            ({"nonce": None}, "nonce"),
            ({"maxPriorityFeePerGas": 4 * 10**9}, "must not exceed"),
        ],
    )
    def test_refusals(self, change, message):
        body = tx(**change)
        if "gasPrice" in change:
            body.pop("maxFeePerGas")
            body.pop("maxPriorityFeePerGas")
        with pytest.raises(SigningError, match=message):
            sign_transaction(body, KEY)

    def test_missing_chain_id_key(self):
        body = tx()
        body.pop("chainId")
        with pytest.raises(SigningError, match="chainId"):
            sign_transaction(body, KEY)

    def test_wrong_chain(self):
        with pytest.raises(SigningError, match="not this chain"):
            sign_transaction(tx(chainId=1), KEY, chain_id=31337)

    @pytest.mark.parametrize(
        "over",
        [
            {},
            {"data": "0xabcdef", "value": 0},
            {"to": None, "data": "0x6000"},  # contract creation
            {"accessList": [{"address": TOKEN, "storageKeys": ["0x" + "11" * 32]}]},
        ],
    )
    def test_decode_inverts_sign(self, over):
        body = {k: v for k, v in tx(**over).items() if v is not None}
        signed = sign_transaction(body, KEY)
        decoded = decode_transaction(signed.raw)
        assert decoded == body
        assert sign_transaction(decoded, KEY).raw == signed.raw  # re-signable byte for byte

    def test_decode_refuses_other_types(self):
        with pytest.raises(SigningError, match="type 2"):
            decode_transaction(b"\x01\xc0")
        with pytest.raises(SigningError, match="RLP"):
            decode_transaction(b"\x02\xff")


class TestMessages:
    def test_eip191_round_trip(self):
        signature = sign_message("hello FollowPay", KEY)
        assert recover_message("hello FollowPay", signature) == KEY.address
        assert recover_message(b"hello FollowPay", signature) == KEY.address

    @pytest.mark.parametrize(
        ("signature", "says"),
        [
            (bytes(65), "recovers no public key"),
            (b"\x01" * 64 + b"\x05", "recovers no public key"),
            (b"\x00" * 64, "65 bytes"),
            (b"", "65 bytes"),  # was an IndexError
            (b"\xff" * 65, "upper half"),
        ],
    )
    def test_a_signature_that_recovers_no_key_is_a_signing_error(self, signature, says):
        with pytest.raises(SigningError, match=says):
            recover_message("hello FollowPay", signature)

    def test_the_malleable_twin_of_a_signature_is_refused(self):
        """(r, n - s, v ^ 1) recovers the same signer: a list of used signatures would take
        it as a new one."""
        signature = sign_message("hello FollowPay", KEY)
        s = int.from_bytes(signature[32:64], "big")
        n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
        twin = signature[:32] + (n - s).to_bytes(32, "big") + bytes([signature[64] ^ 1])
        with pytest.raises(SigningError, match="upper half"):
            recover_message("hello FollowPay", twin)

    @pytest.mark.parametrize(
        ("message", "r", "vs"),
        [
            (
                "Hello World",
                "68a020a209d3d56c46f38cc50a33f704f4a9a10a59377f8dd762ac66910e9b90",
                "7e865ad05c4035ab5792787d4a0297a43617ae897930a6fe4d822b8faea52064",
            ),
            (
                "It's a small(er) world",
                "9328da16089fcba9bececa81663203989f2df5fe1faa6291a45381c81bd17f76",
                "939c6d6b623b42da56557e5e734a43dc83345ddfadec52cbe24d0cc64f550793",
            ),
        ],
    )
    def test_eip2098_spec_vectors(self, message, r, vs):
        signature = sign_message(message, EIP2098_KEY)
        assert to_compact(signature) == (bytes.fromhex(r), bytes.fromhex(vs))
        v, r_bytes, s_bytes = from_compact(bytes.fromhex(r), bytes.fromhex(vs))
        assert r_bytes + s_bytes + bytes([v]) == signature

    @given(st.binary(min_size=1, max_size=64))
    @settings(max_examples=30, deadline=None)
    def test_compact_round_trip(self, payload):
        signature = sign_message(payload, KEY)
        v, r, s = from_compact(*to_compact(signature))
        assert (v, r, s) == split_signature(signature)

    def test_compact_refuses_high_s(self):
        signature = bytearray(sign_message("x", KEY))
        signature[32:64] = (2**256 - 1).to_bytes(32, "big")
        with pytest.raises(SigningError, match="high s"):
            to_compact(bytes(signature))


class TestTypedData:
    def intent(self, **over):
        fields = {
            "merchant": MERCHANT,
            "token": TOKEN,
            "amount": 5_000_000,
            "fee": 100_000,
            "invoice_id": 42,
            "payer": "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
            "deadline": 2**40,
        }
        fields.update(over)
        return PaymentIntent(**fields)

    def test_intent_document_shape(self):
        doc = payment_intent_typed_data(self.intent(), chain_id=31337, router=ROUTER)
        assert doc["domain"] == {
            "name": "FollowPay PaymentRouter",
            "version": "1",
            "chainId": 31337,
            "verifyingContract": ROUTER,
        }
        assert [f["name"] for f in doc["types"]["PaymentIntent"]] == [
            "merchant",
            "token",
            "amount",
            "fee",
            "invoiceId",
            "payer",
            "deadline",
        ]
        signature = sign_typed_data(doc, KEY)
        assert recover_typed_data(doc, signature) == KEY.address

    def test_intent_type_hash_is_the_router_primary_type(self):
        from eth_hash.auto import keccak

        doc = payment_intent_typed_data(self.intent(), chain_id=1, router=ROUTER)
        encoded = encode_typed_data(full_message=doc)
        expected = keccak(
            b"PaymentIntent(address merchant,address token,uint256 amount,uint256 fee,"
            b"uint256 invoiceId,address payer,uint256 deadline)"
        )
        # the struct hash starts with the type hash; recompute it to make sure we used that type
        from eth_account._utils.encode_typed_data.encoding_and_hashing import hash_type

        assert hash_type("PaymentIntent", doc["types"]) == expected
        assert encoded.body != b""

    def test_chain_and_router_are_bound(self):
        a = payment_intent_typed_data(self.intent(), chain_id=1, router=ROUTER)
        b = payment_intent_typed_data(self.intent(), chain_id=2, router=ROUTER)
        sig = sign_typed_data(a, KEY)
        assert recover_typed_data(b, sig) != KEY.address

    def test_intent_validation(self):
        with pytest.raises(AmountError, match="fee"):
            self.intent(fee=6_000_000)
        with pytest.raises(AmountError):
            self.intent(amount=-1)
        with pytest.raises(InvalidAddressError):
            self.intent(merchant="0x1234")
        with pytest.raises(InvalidAddressError, match="checksum"):
            self.intent(token=TOKEN.replace("F", "f", 1))
        spaced = "0x" + "1111 " * 7 + " 1111"  # 42 characters, 32 hex digits
        with pytest.raises(InvalidAddressError, match="non-hex"):
            self.intent(merchant=spaced)  # was a 28-byte word in the signed intent

    @pytest.mark.parametrize("strict", [False, True])
    def test_whitespace_inside_an_address_is_refused(self, strict):
        """bytes.fromhex skips spaces: "0x1111 1111 …" passed, and a transaction was signed
        to a 16-byte ``to``."""
        from wallet.addresses import parse_address

        spaced = "0x" + "1111 " * 7 + " 1111"
        assert len(spaced) == 42
        with pytest.raises(InvalidAddressError):
            parse_address(spaced, strict=strict)
        tx = {"chainId": 1, "nonce": 0, "gas": 21_000, "maxFeePerGas": 10,
              "maxPriorityFeePerGas": 1, "to": spaced, "value": 5}  # fmt: skip
        with pytest.raises(InvalidAddressError):
            sign_transaction(tx, PrivateKey(b"\x01" * 32))

    def test_permit_document(self):
        doc = permit_typed_data(
            token_name="FollowPay Test USD",
            token=TOKEN,
            chain_id=31337,
            owner=KEY.address,
            spender=ROUTER,
            value=10,
            nonce=0,
            deadline=99,
        )
        assert doc["primaryType"] == "Permit"
        assert recover_typed_data(doc, sign_typed_data(doc, KEY)) == KEY.address

    def test_signer_sign_intent_returns_compact(self):
        r, vs = Signer(KEY).sign_intent(self.intent(), chain_id=31337, router=ROUTER)
        assert len(r) == 32
        assert len(vs) == 32
        v, r2, s = from_compact(r, vs)
        doc = payment_intent_typed_data(self.intent(), chain_id=31337, router=ROUTER)
        assert recover_typed_data(doc, r2 + s + bytes([v])) == KEY.address


_uint = st.integers(min_value=0, max_value=2**256 - 1)
_addr = st.binary(min_size=20, max_size=20).map(to_checksum_address)


class TestPaymentIntentDigest:
    """The direct EIP-712 hash must equal the generic encoder's for every intent."""

    @settings(max_examples=150, deadline=None)
    @given(
        merchant=_addr,
        token=_addr,
        amount=_uint,
        fee_share=st.integers(min_value=0, max_value=10_000),
        invoice_id=_uint,
        payer=_addr,
        deadline=_uint,
        chain_id=st.integers(min_value=1, max_value=2**64),
        router=_addr,
    )
    def test_equals_generic_encoder(
        self, merchant, token, amount, fee_share, invoice_id, payer, deadline, chain_id, router
    ):
        intent = PaymentIntent(
            merchant=merchant,
            token=token,
            amount=amount,
            fee=amount * fee_share // 10_000,
            invoice_id=invoice_id,
            payer=payer,
            deadline=deadline,
        )
        from eth_hash.auto import keccak

        signable = encode_typed_data(
            full_message=payment_intent_typed_data(intent, chain_id=chain_id, router=router)
        )
        expected = keccak(b"\x19" + signable.version + signable.header + signable.body)
        assert payment_intent_digest(intent, chain_id=chain_id, router=router) == expected

    def test_sign_intent_matches_the_generic_signature(self):
        intent = TestTypedData().intent()
        r, vs = Signer(KEY).sign_intent(intent, chain_id=31337, router=ROUTER)
        doc = payment_intent_typed_data(intent, chain_id=31337, router=ROUTER)
        # RFC 6979 is deterministic: the generic path must give the very same signature
        assert (r, vs) == to_compact(sign_typed_data(doc, KEY))

    def test_router_is_part_of_the_digest(self):
        intent = TestTypedData().intent()
        other = "0x" + "ab" * 20
        a = payment_intent_digest(intent, chain_id=1, router=ROUTER)
        b = payment_intent_digest(intent, chain_id=1, router=to_checksum_address(other))
        assert a != b


class TestFastPathIsByteIdentical:
    """Our direct RLP + libsecp256k1 path must produce exactly eth-account's bytes."""

    @given(
        chain_id=st.integers(1, 2**64),
        nonce=st.integers(0, 2**64 - 1),
        tip=st.integers(0, 10**12),
        extra=st.integers(0, 10**12),
        gas=st.integers(21_000, 30_000_000),
        value=_uint,
        data=st.binary(max_size=300),
        to=st.one_of(st.none(), _addr),
        access=st.lists(
            st.tuples(_addr, st.lists(st.binary(min_size=32, max_size=32), max_size=3)),
            max_size=3,
        ),
    )
    @settings(max_examples=150, deadline=None)
    def test_random_transactions(self, chain_id, nonce, tip, extra, gas, value, data, to, access):
        body = {
            "chainId": chain_id,
            "nonce": nonce,
            "maxPriorityFeePerGas": tip,
            "maxFeePerGas": tip + extra,
            "gas": gas,
            "value": value,
            "data": data,
            "type": 2,
            "accessList": [
                {"address": a, "storageKeys": ["0x" + k.hex() for k in keys]} for a, keys in access
            ],
        }
        if to is not None:
            body["to"] = to
        ours = sign_transaction(body, KEY)
        reference = Account.sign_transaction(body, "0x" + KEY.reveal_bytes().reveal().hex())
        assert ours.raw == bytes(reference.raw_transaction)
        assert ours.hash == "0x" + bytes(reference.hash).hex()

    def test_hex_strings_fall_back_to_eth_account(self):
        body = tx(value="0x10", data="0xdeadbeef")
        reference = Account.sign_transaction(body, "0x" + KEY.reveal_bytes().reveal().hex())
        assert sign_transaction(body, KEY).raw == bytes(reference.raw_transaction)
