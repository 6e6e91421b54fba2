"""Helpers for chain-backed wallet tests."""

from __future__ import annotations

from dataclasses import dataclass

from wallet.chain import Chain
from wallet.nonces import NonceLedger
from wallet.secrets import PrivateKey
from wallet.sender import Sender
from wallet.signing import PaymentIntent, Signer
from wallet.tokens import Router, Token, deploy_router, deploy_test_token


def signer(chain: Chain, index: int) -> Signer:
    return Signer(PrivateKey(bytes(chain.dev_accounts()[index].key)))


def sender(chain: Chain, index: int, ledger: NonceLedger) -> Sender:
    return Sender(chain, signer(chain, index), ledger=ledger)


@dataclass
class World:
    chain: Chain
    owner: Sender
    merchant: Sender
    payer: Sender
    operator: Signer
    payout: str
    treasury: str
    token: Token
    router: Router

    def intent(self, invoice_id: int, amount: int = 5_000_000, fee: int = 100_000, **over):
        fields = {
            "merchant": self.merchant.address,
            "token": self.token.address,
            "amount": amount,
            "fee": fee,
            "invoice_id": invoice_id,
            "payer": self.payer.address,
            "deadline": 2**40,
        }
        fields.update(over)
        return PaymentIntent(**fields)


def build_world(chain: Chain, ledger: NonceLedger) -> World:
    owner = sender(chain, 0, ledger)
    merchant = sender(chain, 1, ledger)
    payer = sender(chain, 2, ledger)
    operator = signer(chain, 3)
    accounts = chain.dev_accounts()
    token = deploy_test_token(owner)
    router = deploy_router(owner, treasury=accounts[9].address)
    token.mint(owner, payer.address, 1_000 * 10**6)
    router.register_merchant(merchant, payout=accounts[4].address, operator=operator.address)
    return World(
        chain,
        owner,
        merchant,
        payer,
        operator,
        accounts[4].address,
        accounts[9].address,
        token,
        router,
    )
