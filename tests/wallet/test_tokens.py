"""TestToken and PaymentRouter bindings on every local backend."""

from __future__ import annotations

import pytest
from eth_account.messages import encode_typed_data

from tests.support import ChainSuite
from tests.wallet.helpers import build_world
from wallet.errors import TransactionRevertedError, UnsupportedOperationError
from wallet.nonces import NonceLedger
from wallet.signing import (
    domain_separator,
    payment_intent_struct_hash,
    payment_intent_typed_data,
)


class TokenBehaviour(ChainSuite):
    @pytest.fixture
    def world(self, chain, tmp_path):
        ledger = NonceLedger(tmp_path / "nonces.sqlite3")
        yield build_world(chain, ledger)
        ledger.close()

    def test_token_metadata_and_balances(self, world):
        assert world.token.decimals() == 6
        assert world.token.token_name() == "FollowPay Test USD"
        assert world.token.balance_of(world.payer.address) == 1_000 * 10**6

    def test_transfer_and_approve(self, world):
        world.token.transfer(world.payer, world.merchant.address, 2_500_000)
        assert world.token.balance_of(world.merchant.address) == 2_500_000
        world.token.approve(world.payer, world.router.address, 77)
        assert world.token.allowance(world.payer.address, world.router.address) == 77

    def test_mint_is_owner_only(self, world):
        with pytest.raises(TransactionRevertedError) as info:
            world.token.mint(world.payer, world.payer.address, 1)
        assert info.value.name == "OwnableUnauthorizedAccount"

    def test_merchant_registration(self, world):
        assert world.router.merchant_of(world.merchant.address) == (
            world.payout,
            world.operator.address,
        )
        with pytest.raises(TransactionRevertedError) as info:
            world.router.register_merchant(
                world.merchant, payout=world.payout, operator=world.operator.address
            )
        assert info.value.name == "MerchantAlreadyRegistered"

    def test_our_intent_digest_equals_the_router_hash(self, world):
        intent = world.intent(7)
        doc = payment_intent_typed_data(
            intent, chain_id=world.chain.chain_id, router=world.router.address
        )
        from eth_hash.auto import keccak

        signable = encode_typed_data(full_message=doc)
        digest = keccak(b"\x19" + signable.version + signable.header + signable.body)
        assert world.router.hash_intent(intent) == digest

    def test_pay_after_approve(self, world):
        intent = world.intent(1)
        r, vs = world.router.sign_intent(world.operator, intent)
        world.token.approve(world.payer, world.router.address, intent.amount)
        receipt = world.router.pay(world.payer, intent, r, vs)
        assert world.router.is_settled(world.merchant.address, 1)
        assert world.token.balance_of(world.payout) == intent.amount - intent.fee
        assert world.token.balance_of(world.treasury) == intent.fee
        (event,) = world.router.settlements(receipt)
        assert event["invoiceId"] == 1
        assert event["payer"] == world.payer.address
        assert event["intentHash"] == payment_intent_struct_hash(intent)
        with pytest.raises(TransactionRevertedError) as info:
            world.router.pay(world.payer, intent, r, vs)
        assert info.value.name == "InvoiceAlreadySettled"

    def test_pay_with_permit_in_one_transaction(self, world):
        intent = world.intent(2)
        r, vs = world.router.sign_intent(world.operator, intent)
        permit = world.token.sign_permit(
            world.payer.signer, world.router.address, intent.amount, 2**40
        )
        start = world.chain.w3.eth.get_transaction_count(world.payer.address)
        world.router.pay_with_permit(world.payer, intent, r, vs, permit)
        assert world.chain.w3.eth.get_transaction_count(world.payer.address) == start + 1
        assert world.router.is_settled(world.merchant.address, 2)

    def test_the_permit_domain_version_is_the_one_the_token_was_built_with(self, world):
        """The token's own DOMAIN_SEPARATOR() decides: OpenZeppelin's "1" here (from its
        EIP-5267 eip712Domain()); a token naming "2" (USDC) gets "2", where the version was
        always "1" and payWithPermit reverted; one whose separator no named version rebuilds
        is refused before anything is signed."""
        token, name = world.token, world.token.token_name()
        assert token.permit_domain_version(name) == "1"
        real = token._answer

        def usdc_like(signature, types):
            if signature in ("eip712Domain()", "version()"):
                return None if signature == "eip712Domain()" else ("2",)
            if signature == "DOMAIN_SEPARATOR()":
                chain_id = world.chain.chain_id
                return (domain_separator(name, "2", chain_id, token.address),)
            return real(signature, types)

        token._answer = usdc_like
        assert token.permit_domain_version(name) == "2"
        token._answer = lambda signature, types: (
            (b"\x01" * 32,) if signature == "DOMAIN_SEPARATOR()" else None
        )
        with pytest.raises(UnsupportedOperationError, match="pay with an approve"):
            token.sign_permit(world.payer.signer, world.router.address, 1, 2**40)
        del token._answer

    def test_forged_intent_is_rejected(self, world):
        intent = world.intent(3)
        r, vs = world.router.sign_intent(world.payer.signer, intent)  # not the operator
        world.token.approve(world.payer, world.router.address, intent.amount)
        with pytest.raises(TransactionRevertedError) as info:
            world.router.pay(world.payer, intent, r, vs)
        assert info.value.name == "InvalidSigner"

    def test_expired_intent(self, world):
        latest = world.chain.w3.eth.get_block("latest")["timestamp"]
        intent = world.intent(4, deadline=latest - 1)
        r, vs = world.router.sign_intent(world.operator, intent)
        world.token.approve(world.payer, world.router.address, intent.amount)
        with pytest.raises(TransactionRevertedError) as info:
            world.router.pay(world.payer, intent, r, vs)
        assert info.value.name == "IntentExpired"

    def test_refund(self, world):
        intent = world.intent(5)
        r, vs = world.router.sign_intent(world.operator, intent)
        world.token.approve(world.payer, world.router.address, intent.amount)
        world.router.pay(world.payer, intent, r, vs)
        world.token.mint(world.owner, world.merchant.address, 10**6)
        world.token.approve(world.merchant, world.router.address, 10**6)
        before = world.token.balance_of(world.payer.address)
        world.router.refund(world.merchant, intent, r, vs, world.payer.address, 400_000)
        assert world.token.balance_of(world.payer.address) == before + 400_000
        assert world.router.refunded_of(world.merchant.address, 5) == 400_000
        with pytest.raises(TransactionRevertedError) as info:
            world.router.refund(world.merchant, intent, r, vs, world.payer.address, 10**7)
        assert info.value.name == "RefundExceedsPayment"

    def test_policy_bound_payer_cannot_overpay(self, world, tmp_path):
        from wallet.errors import PolicyViolationError
        from wallet.policy import SELECTORS, SigningPolicy
        from wallet.sender import Sender
        from wallet.signing import Signer

        policy = SigningPolicy(
            allowed_contracts=frozenset({world.token.address, world.router.address}),
            allowed_selectors=frozenset({SELECTORS["approve"], SELECTORS["pay"]}),
            max_amounts={world.token.address: 1_000_000},
        )
        guarded = Sender(
            world.chain,
            Signer(world.payer.signer._key, policy),
            ledger=NonceLedger(tmp_path / "g.sqlite3"),
        )
        world.token.approve(guarded, world.router.address, 1_000_000)
        before = guarded.nonces.next_nonce
        with pytest.raises(PolicyViolationError):
            world.token.approve(guarded, world.router.address, 10**12)
        with pytest.raises(PolicyViolationError):
            world.token.transfer(guarded, world.merchant.address, 1)
        assert guarded.nonces.next_nonce == before  # refused before a nonce was spent


class TestTokensOnTester(TokenBehaviour):
    backend = "tester"


class TestTokensOnAnvil(TokenBehaviour):
    backend = "anvil"
