"""Sending on real chains: fees, nonces under concurrency, crash recovery, receipts, replacement.

``SenderBehaviour`` runs on every local backend; ``TestAnvilOnly`` covers what needs a mempool
(no-mining mode: replacement, cancellation, timeouts, raw batches, a real kill -9);
``TestLostReplies`` puts a real HTTP proxy (``faults.RpcProxy``) between the sender and anvil to
lose replies, hang up and answer 503.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import ChainSuite, missing
from tests.wallet.faults import RpcProxy
from tests.wallet.helpers import sender, signer
from wallet.chain import ChainConfig, connect
from wallet.errors import (
    AnvilNotFoundError,
    BroadcastError,
    BroadcastUncertainError,
    ChainUnreachableError,
    FeeBumpError,
    InsufficientFundsError,
    NonceError,
    ReceiptTimeoutError,
    TransactionError,
    TransactionReplacedError,
    TransactionRevertedError,
)
from wallet.fees import Fees, bump_fees, check_replacement, suggest_fees
from wallet.nonces import NonceLedger
from wallet.reverts import decode_revert
from wallet.rpc import classify_broadcast, is_nonce_too_low, send_raw_batch
from wallet.sender import STRANGER_BLOCKS, Sender
from wallet.signing import sign_transaction

DEAD = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture
def ledger(tmp_path):
    led = NonceLedger(tmp_path / "nonces.sqlite3")
    yield led
    led.close()


def stuck_after_restart(chain, ledger, index):
    """A transaction journaled with a fee cap far below the base fee before a crash: the
    restarted sender's reconcile finds it stuck. The restarted sender and the journaled hash."""
    s = sender(chain, index, ledger)
    nonce = s.nonces.reserve()
    cheap = {**s.build(DEAD, b"", 555, gas=21_000, fees=Fees(1, 1)), "nonce": nonce}
    signed = s.signer.sign_transaction(cheap, chain_id=s.chain_id)
    s.nonces.record(nonce, signed.hash, signed.raw)  # journaled; fees rose while we were down
    return Sender(chain, s.signer, ledger=ledger), signed.hash


def fail_status_writes(monkeypatch, ledger, status):
    """The journal's writes of ``status`` fail as SQLite's do when locked past its timeout."""
    real = ledger.set_status

    def locked(chain_id, address, tx_hash, new_status):
        if new_status == status:
            raise sqlite3.OperationalError("database is locked")
        return real(chain_id, address, tx_hash, new_status)

    monkeypatch.setattr(ledger, "set_status", locked)


class TestFeeBumpRule:
    def test_bump_is_at_least_ten_percent_on_both(self):
        assert bump_fees(Fees(1000, 100)) == Fees(1100, 110)
        assert bump_fees(Fees(1001, 101)) == Fees(1102, 112)  # rounds up, never under

    def test_bump_respects_market(self):
        assert bump_fees(Fees(1000, 100), Fees(5000, 50)) == Fees(5000, 110)

    @pytest.mark.parametrize(
        ("new", "ok"),
        [
            (Fees(1100, 110), True),
            (Fees(1099, 110), False),  # fee cap +9.9 %
            (Fees(1100, 109), False),  # tip +9 %: geth refuses even with a big fee cap
            (Fees(5000, 100), False),
            (Fees(2000, 200), True),
        ],
    )
    def test_check_replacement(self, new, ok):
        if ok:
            check_replacement(Fees(1000, 100), new)
        else:
            with pytest.raises(FeeBumpError, match="10%"):
                check_replacement(Fees(1000, 100), new)

    @given(st.integers(1, 10**15), st.integers(0, 10**12))
    def test_bumped_fees_always_pass(self, fee, tip):
        old = Fees(max(fee, tip), tip)
        check_replacement(old, bump_fees(old))


class TestNodeAnswers:
    @pytest.mark.parametrize(
        ("answer", "too_low"),
        [
            ("nonce too low: next nonce 5, tx nonce 4", True),  # go-ethereum
            ("Invalid transaction nonce: Expected 1, but got 0", True),  # eth-tester
            ("Invalid transaction nonce: Expected 1, but got 3", False),  # a gap
            ("nonce too high", False),
            ("replacement transaction underpriced", False),
        ],
    )
    def test_nonce_too_low(self, answer, too_low):
        """The nonce the chain already used, however the node words it; eth-tester's wording
        was only read by the sender's refusal path (neither rebroadcast nor reconcile), and
        there a gap (got above expected) counted as a used nonce."""
        assert is_nonce_too_low(ValueError(answer)) is too_low
        assert isinstance(classify_broadcast(ValueError(answer)), NonceError) is too_low


class TestRevertDecoding:
    def test_error_string_and_panic(self):
        data = "0x08c379a0" + (
            "0000000000000000000000000000000000000000000000000000000000000020"
            "0000000000000000000000000000000000000000000000000000000000000004"
            "6e6f706500000000000000000000000000000000000000000000000000000000"
        )
        assert decode_revert(data)[:2] == ("Error", ("nope",))
        panic = "0x4e487b71" + "11".rjust(64, "0")
        name, args, message = decode_revert(panic)
        assert (name, args) == ("Panic", (0x11,))
        assert "overflow" in message

    def test_custom_error_from_artifacts(self):
        # ERC20InsufficientBalance(address,uint256,uint256) from the TestToken ABI
        data = (
            "0xe450d38c"
            + "f39fd6e51aad88f6f4ce6ab8827279cfffb92266".rjust(64, "0")
            + "0".rjust(64, "0")
            + "5".rjust(64, "0")
        )
        name, args, message = decode_revert(data)
        assert name == "ERC20InsufficientBalance"
        assert args == ("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266", 0, 5)
        assert "needed=5" in message

    def test_unknown(self):
        assert decode_revert("0xdeadbeef")[0] is None
        assert "without a reason" in decode_revert("0x")[2]


class SenderBehaviour(ChainSuite):
    def test_fees_follow_base_fee(self, chain):
        base = int(chain.w3.eth.get_block("latest")["baseFeePerGas"])
        fees = suggest_fees(chain)
        assert fees.max_priority_fee_per_gas >= 10**9
        # the next block's base fee moves at most 12.5 % from the latest one
        assert fees.max_fee_per_gas >= 2 * (base * 7 // 8) + fees.max_priority_fee_per_gas, (
            fees,
            base,
        )

    def test_send_and_wait(self, chain, ledger):
        s = sender(chain, 5, ledger)
        start = chain.w3.eth.get_transaction_count(s.address)
        receipt = s.transact(DEAD, b"", 12345)
        assert receipt.status == 1
        assert chain.w3.eth.get_balance(DEAD) >= 12345
        assert chain.w3.eth.get_transaction_count(s.address) == start + 1
        tx = chain.w3.eth.get_transaction(receipt.tx_hash)
        assert tx["type"] == 2
        assert tx["chainId"] == chain.chain_id

    def test_concurrent_threads_get_gap_free_nonces(self, chain, ledger):
        s = sender(chain, 5, ledger)
        start = chain.w3.eth.get_transaction_count(s.address)
        with ThreadPoolExecutor(8) as pool:
            sent = list(pool.map(lambda i: s.send(DEAD, b"", i + 1, gas=21_000), range(40)))
        assert sorted(x.nonce for x in sent) == list(range(start, start + 40))
        for x in sent:
            assert s.wait(x, timeout=30).status == 1
        assert chain.w3.eth.get_transaction_count(s.address) == start + 40

    def test_asyncio_tasks_get_distinct_nonces(self, chain, ledger):
        s = sender(chain, 6, ledger)

        async def main():
            return await asyncio.gather(
                *(s.send_async(DEAD, b"", 1, gas=21_000) for _ in range(10))
            )

        sent = asyncio.run(main())
        assert len({x.nonce for x in sent}) == 10
        for x in sent:
            s.wait(x, timeout=30)

    def test_refused_broadcast_gives_the_nonce_back(self, chain, ledger):
        s = sender(chain, 7, ledger)
        before = s.nonces.next_nonce
        balance = chain.w3.eth.get_balance(s.address)
        with pytest.raises(InsufficientFundsError):
            s.send(DEAD, b"", balance * 2, gas=21_000)  # explicit gas: no estimate, node refuses
        assert s.nonces.next_nonce == before
        assert s.transact(DEAD, b"", 1).status == 1
        assert chain.w3.eth.get_transaction_count(s.address) == before + 1
        assert [
            e.status for e in s.ledger.entries_for_nonce(chain.chain_id, s.address, before)
        ].count("dropped") == 1

    def test_a_journal_write_that_fails_frees_its_nonce(self, chain, ledger):
        """Disk full, or SQLite locked past its timeout: nothing was journaled nor sent, so the
        nonce is free again. It used to stay in flight for good: every later transaction
        queued behind the hole on the node."""
        s = sender(chain, 7, ledger)
        before = s.nonces.next_nonce
        real = s.ledger.record

        def full_disk(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")

        s.ledger.record = full_disk
        with pytest.raises(sqlite3.OperationalError):
            s.send(DEAD, b"", 1, gas=21_000)
        s.ledger.record = real
        assert s.nonces.next_nonce == before
        assert s.transact(DEAD, b"", 1).status == 1
        assert chain.w3.eth.get_transaction_count(s.address) == before + 1

    def test_a_status_write_failing_after_the_broadcast_still_returns_the_transaction(
        self, chain, ledger, monkeypatch
    ):
        """The node took the payment, then marking it 'sent' failed (SQLite locked past its
        timeout, disk full): send() raised as if nothing had been sent, so the caller paid
        again, and the nonce stayed in flight for good. The entry was journaled 'signed'
        before the broadcast: it stays live, and wait() and reconcile settle it."""
        s = sender(chain, 7, ledger)
        start = chain.w3.eth.get_transaction_count(s.address)
        fail_status_writes(monkeypatch, s.ledger, "sent")
        sent = s.send(DEAD, b"", 1, gas=21_000)
        monkeypatch.undo()
        assert sent.nonce == start
        assert [e.status for e in ledger.entries_for_nonce(s.chain_id, s.address, start)] == [
            "signed"
        ]
        assert s.wait(sent, timeout=30).status == 1
        assert s.transact(DEAD, b"", 1).status == 1  # nothing left in flight, no gap
        assert chain.w3.eth.get_transaction_count(s.address) == start + 2

    def test_a_status_write_failing_on_a_refusal_gives_the_nonce_back(
        self, chain, ledger, monkeypatch
    ):
        """The node refused the payment, then marking it 'dropped' failed: the SQLite error
        replaced the node's refusal, and the nonce was never given back (the write came
        first), so the next transaction was signed a nonce higher, behind a hole."""
        s = sender(chain, 7, ledger)
        before = s.nonces.next_nonce
        fail_status_writes(monkeypatch, s.ledger, "dropped")
        balance = chain.w3.eth.get_balance(s.address)
        with pytest.raises(InsufficientFundsError):
            s.send(DEAD, b"", balance * 2, gas=21_000)
        monkeypatch.undo()
        assert s.nonces.next_nonce == before
        assert s.transact(DEAD, b"", 1).status == 1
        assert chain.w3.eth.get_transaction_count(s.address) == before + 1

    def test_estimate_failure_costs_no_nonce(self, chain, ledger):
        from tests.wallet.helpers import build_world

        world = build_world(chain, ledger)
        poor = sender(chain, 8, ledger)
        before = poor.nonces.next_nonce
        with pytest.raises(TransactionRevertedError) as info:
            world.token.transfer(poor, DEAD, 1)
        assert info.value.name == "ERC20InsufficientBalance"
        assert info.value.error_args == (poor.address, 0, 1)
        assert poor.nonces.next_nonce == before

    def test_mined_revert_is_decoded_from_receipt(self, chain, ledger):
        from tests.wallet.helpers import build_world

        world = build_world(chain, ledger)
        poor = sender(chain, 8, ledger)
        data = world.token.encode("transfer", DEAD, 7)
        sent = poor.send(world.token.address, data, gas=100_000)  # skips the estimate
        with pytest.raises(TransactionRevertedError) as info:
            poor.wait(sent, timeout=30)
        assert info.value.name == "ERC20InsufficientBalance"
        assert info.value.tx_hash == sent.hash

    def test_confirmation_depth(self, chain, ledger):
        s = sender(chain, 5, ledger)
        sent = s.send(DEAD, b"", 1, gas=21_000)
        mined_blocks = []

        def mine_instead_of_sleeping(_seconds):
            chain.mine(1)
            mined_blocks.append(1)

        receipt = s.wait(sent, confirmations=3, timeout=30, sleep=mine_instead_of_sleeping)
        assert chain.w3.eth.block_number - receipt.block_number + 1 >= 3
        assert len(mined_blocks) >= 2

    def test_restart_reconciles_with_chain(self, chain, ledger):
        s = sender(chain, 5, ledger)
        s.transact(DEAD, b"", 1)
        again = Sender(chain, s.signer, ledger=ledger)
        report = again.nonces.last_report
        assert report.next_nonce == chain.w3.eth.get_transaction_count(s.address)
        assert report.rebroadcast == ()
        assert report.stuck == ()

    def test_crash_between_sign_and_send_loses_nothing(self, chain, ledger):
        s = sender(chain, 5, ledger)
        tx = s.build(DEAD, b"", 777, gas=21_000)
        nonce = s.nonces.reserve()
        signed = s.signer.sign_transaction({**tx, "nonce": nonce}, chain_id=chain.chain_id)
        s.nonces.record(nonce, signed.hash, signed.raw)
        # ... the process dies here: nothing was broadcast
        restarted = Sender(chain, s.signer, ledger=ledger)
        assert restarted.nonces.last_report.rebroadcast == (signed.hash,)
        receipt = restarted.wait(signed.hash, timeout=30)
        assert receipt.status == 1
        assert restarted.send(DEAD, b"", 1, gas=21_000).nonce == nonce + 1

    def test_rebroadcast_of_a_mined_transaction_is_success(self, chain, ledger):
        """The docs say rebroadcast() takes "nonce too low" as success (the chain used the
        nonce: wait() tells by whom). eth-tester words it "Invalid transaction nonce:
        Expected 1, but got 0", and rebroadcast raised NonceError there."""
        s = sender(chain, 6, ledger)
        sent = s.send(DEAD, b"", 1, gas=21_000)
        chain.mine(1)  # mined, not waited for: its entry is still 'sent'
        s.rebroadcast(sent)
        assert s.wait(sent, timeout=30).status == 1

    def test_wallet_error_messages_are_one_line(self, chain, ledger):
        s = sender(chain, 7, ledger)
        with pytest.raises(InsufficientFundsError) as info:
            s.send(DEAD, b"", 10**40, gas=21_000)
        assert "\n" not in str(info.value)

    def test_nonce_taken_by_a_stranger_leaves_nothing_in_flight(self, chain, ledger):
        s = sender(chain, 5, ledger)
        nonce = s.nonces.next_nonce
        tx = s.build(DEAD, b"", 1, gas=21_000)
        other = sign_transaction({**tx, "nonce": nonce}, signer(chain, 5)._key)
        chain.request("eth_sendRawTransaction", [other.raw_hex])  # another process used it
        chain.mine(1)
        with pytest.raises(NonceError):
            s.send(DEAD, b"", 2, gas=21_000)
        # nothing left in flight: a resync is a full reconcile again, which reads the chain
        s.nonces.resync()
        assert s.nonces.last_report.chain_latest == nonce + 1
        assert s.transact(DEAD, b"", 3).status == 1


class TestSenderOnTester(SenderBehaviour):
    backend = "tester"


class TestSenderOnAnvil(SenderBehaviour):
    backend = "anvil"


class TestAnvilOnly(ChainSuite):
    backend = "anvil"

    @pytest.fixture
    def no_mining(self, chain):
        chain.request("evm_setAutomine", [False])
        try:
            yield chain
        finally:
            chain.request("evm_setAutomine", [True])

    def test_a_gas_limit_over_the_blocks_is_a_refusal_not_a_nonce_gap(self, chain, ledger):
        """anvil words it "intrinsic gas too high -- tx.gas_limit > env.block.gas_limit":
        taken for no answer, the nonce stayed spent and every later transaction waited
        behind it for ever."""
        s = sender(chain, 6, ledger)
        start = s.nonces.next_nonce
        limit = int(chain.w3.eth.get_block("latest")["gasLimit"])
        with pytest.raises(BroadcastError) as info:
            s.send(DEAD, b"", 1, gas=limit + 1)
        assert not isinstance(info.value, BroadcastUncertainError)
        after = s.send(DEAD, b"", 1, gas=21_000)
        assert after.nonce == start
        assert s.wait(after, timeout=10).status == 1

    def test_a_fresh_send_behind_a_pooled_stranger_moves_past_its_nonce(self, no_mining, ledger):
        """Another tool's transaction holds our next nonce in the node's pool with higher
        fees: the node answers "replacement transaction underpriced". That was read as a fee
        bump of ours (FeeBumpError), the nonce was given back, and every later send got the
        same nonce and the same refusal."""
        s = sender(no_mining, 8, ledger)
        nonce = s.nonces.next_nonce
        tx = s.build(DEAD, b"", 1, gas=21_000)
        bid = {k: tx[k] * 3 for k in ("maxFeePerGas", "maxPriorityFeePerGas")}
        stranger = sign_transaction({**tx, **bid, "nonce": nonce}, signer(no_mining, 8)._key)
        no_mining.request("eth_sendRawTransaction", [stranger.raw_hex])
        with pytest.raises(NonceError, match=f"nonce {nonce} is held") as info:
            s.send(DEAD, b"", 2, gas=21_000)
        assert not isinstance(info.value, FeeBumpError)
        assert [e.status for e in ledger.entries_for_nonce(s.chain_id, s.address, nonce)] == [
            "dropped"
        ]
        after = s.send(DEAD, b"", 2, gas=21_000)
        assert after.nonce == nonce + 1
        no_mining.mine(1)
        assert s.wait(after, timeout=10).status == 1

    def test_a_stuck_transaction_replaced_is_no_longer_stuck(self, no_mining, ledger):
        """stuck() returned the original after replace() or cancel() at its nonce (until a
        restart): a second replace() of it would have undercut the first."""
        restarted, stuck_hash = stuck_after_restart(no_mining, ledger, 8)
        (stuck,) = restarted.stuck()
        assert stuck.hash == stuck_hash
        cancel = restarted.cancel(stuck)
        assert restarted.stuck() == []  # in the pool, not mined: the cancel is newer
        no_mining.mine(1)
        assert restarted.wait(cancel, timeout=10).status == 1

    def test_wait_on_a_bare_hash_detects_a_replacement(self, no_mining, ledger):
        """wait() given a hash string (as a restart or an API has it) knew no nonce, so it
        never looked for one of our replacements mined instead, and timed out."""
        s = sender(no_mining, 9, ledger)
        first = s.send(DEAD, b"", 1, gas=21_000)
        second = s.replace(first)
        no_mining.mine(1)
        with pytest.raises(TransactionReplacedError) as info:
            s.wait(first.hash, timeout=2)
        assert info.value.replacement_hash == second.hash

    def test_receipt_timeout(self, no_mining, ledger):
        s = sender(no_mining, 5, ledger)
        sent = s.send(DEAD, b"", 1, gas=21_000)
        with pytest.raises(ReceiptTimeoutError) as info:
            s.wait(sent, timeout=0.2)
        assert info.value.tx_hash == sent.hash

    def test_replacement_with_bumped_fees(self, no_mining, ledger):
        s = sender(no_mining, 5, ledger)
        first = s.send(DEAD, b"", 1, gas=21_000)
        with pytest.raises(FeeBumpError):
            s.replace(
                first,
                fees=Fees(first.fees.max_fee_per_gas + 1, first.fees.max_priority_fee_per_gas),
            )
        second = s.replace(first)
        assert second.nonce == first.nonce
        assert second.hash != first.hash
        assert second.fees.max_priority_fee_per_gas * 10 >= first.fees.max_priority_fee_per_gas * 11
        assert second.fees.max_fee_per_gas * 10 >= first.fees.max_fee_per_gas * 11
        no_mining.mine(1)
        assert s.wait(second, timeout=10).status == 1
        with pytest.raises(TransactionReplacedError) as info:
            s.wait(first, timeout=10)
        assert info.value.replacement_hash == second.hash

    def test_cancel(self, no_mining, ledger):
        s = sender(no_mining, 5, ledger)
        before = no_mining.w3.eth.get_balance(DEAD)
        first = s.send(DEAD, b"", 10**18, gas=21_000)
        cancel = s.cancel(first)
        no_mining.mine(1)
        assert s.wait(cancel, timeout=10).status == 1
        assert no_mining.w3.eth.get_balance(DEAD) == before
        with pytest.raises(TransactionReplacedError):
            s.wait(first, timeout=10)

    def test_replaced_by_a_stranger(self, no_mining, ledger):
        s = sender(no_mining, 5, ledger)
        first = s.send(DEAD, b"", 1, gas=21_000)
        other = sign_transaction(
            {
                **first.tx,
                "nonce": first.nonce,
                "value": 2,
                "maxFeePerGas": first.fees.max_fee_per_gas * 2,
                "maxPriorityFeePerGas": first.fees.max_priority_fee_per_gas * 2,
            },
            signer(no_mining, 5)._key,
        )
        no_mining.request("eth_sendRawTransaction", [other.raw_hex])
        no_mining.mine(1)
        polls: list[int] = []

        def mine_while_waiting(_: float) -> None:
            polls.append(no_mining.w3.eth.block_number)
            no_mining.mine(1)

        with pytest.raises(TransactionReplacedError):
            s.wait(first, timeout=10, sleep=mine_while_waiting)
        # declared only after the head moved STRANGER_BLOCKS past the first sighting
        assert len(polls) == STRANGER_BLOCKS

    def test_a_lagging_receipt_backend_is_not_a_replacement(self, no_mining, ledger, monkeypatch):
        # Behind a load balancer the node counting nonces can be ahead of the one serving
        # receipts: the nonce is used, our receipt not there yet. That is not a replacement.
        s = sender(no_mining, 5, ledger)
        sent = s.send(DEAD, b"", 1, gas=21_000)
        no_mining.mine(1)
        real_receipt = s._receipt
        misses = iter(range(3))

        def lagging(tx_hash: str):
            return None if next(misses, None) is not None else real_receipt(tx_hash)

        monkeypatch.setattr(s, "_receipt", lagging)
        receipt = s.wait(sent, timeout=10, sleep=lambda _: None)
        assert receipt.tx_hash == sent.hash
        assert receipt.status == 1

    def test_raw_batch(self, chain, ledger):
        key = signer(chain, 6)._key
        start = chain.w3.eth.get_transaction_count(key.address)
        fees = suggest_fees(chain)
        raws = [
            sign_transaction(
                {
                    "to": DEAD,
                    "value": 1,
                    "gas": 21_000,
                    "nonce": start + i,
                    "chainId": chain.chain_id,
                    **fees.as_tx_fields(),
                },
                key,
            ).raw
            for i in range(20)
        ]
        results = send_raw_batch(chain.rpc_url, raws)
        assert all(isinstance(r, str) and r.startswith("0x") for r in results)
        for tx_hash in results:
            assert chain.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)["status"] == 1
        assert chain.w3.eth.get_transaction_count(key.address) == start + 20
        # a duplicate comes back as a per-item error, not an exception
        again = send_raw_batch(chain.rpc_url, raws[:1])
        assert isinstance(again[0], dict)

    def test_kill_9_between_sign_and_send(self, chain, tmp_path):
        db = tmp_path / "crash.sqlite3"
        script = textwrap.dedent(
            f"""
            import os
            from wallet.chain import ChainConfig, connect
            from wallet.nonces import NonceLedger
            from wallet.secrets import PrivateKey
            from wallet.sender import Sender
            from wallet.signing import Signer
            chain = connect(ChainConfig(backend="rpc", rpc_url={chain.rpc_url!r}))
            key = PrivateKey({bytes(chain.dev_accounts()[5].key)!r})
            s = Sender(chain, Signer(key), ledger=NonceLedger({str(db)!r}))
            tx = s.build({DEAD!r}, b"", 4242, gas=21000)
            nonce = s.nonces.reserve()
            signed = s.signer.sign_transaction(dict(tx, nonce=nonce), chain_id=chain.chain_id)
            s.nonces.record(nonce, signed.hash, signed.raw)
            print(signed.hash, nonce, flush=True)
            os.kill(os.getpid(), 9)
            """
        )
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == -9, proc.stderr
        tx_hash, nonce = proc.stdout.split()
        s = sender(chain, 5, NonceLedger(db))
        assert s.nonces.last_report.rebroadcast == (tx_hash,)
        assert s.wait(tx_hash, timeout=10).status == 1
        assert s.send(DEAD, b"", 1, gas=21_000).nonce == int(nonce) + 1


class TestAnotherNodeWithTheSameChainId:
    """A journal outlives its node: a transaction signed for one anvil (31337) and never seen
    mined by the journal (sent without waiting) was sent again to the next anvil on 31337, so
    one `wallet send` paid twice across two sessions."""

    def test_a_fresh_anvil_does_not_get_the_last_ones_transactions(self, tmp_path):
        db = tmp_path / "nonces.sqlite3"
        try:
            first = connect(ChainConfig(backend="anvil"))
        except AnvilNotFoundError as exc:
            missing(str(exc))
        with first:
            # A node that has run a while. Two fresh nodes started in the same second have the
            # same genesis hash: nothing tells their chains apart until they differ.
            first.mine(1)
            s = sender(first, 5, NonceLedger(db))
            old = s.send(DEAD, b"", 4242, gas=21_000)  # automined; the journal says "sent"
            s.ledger.close()
        with connect(ChainConfig(backend="anvil")) as second:
            s = sender(second, 5, NonceLedger(db))
            try:
                assert s.nonces.last_report.abandoned == (old.hash,)
                assert s.nonces.last_report.rebroadcast == ()
                assert second.w3.eth.get_balance(DEAD) == 0
                new = s.send(DEAD, b"", 7, gas=21_000)
                assert new.nonce == 0
                assert s.wait(new.hash, timeout=10).status == 1
                assert second.w3.eth.get_balance(DEAD) == 7
            finally:
                s.ledger.close()

    def test_the_in_process_chain_keeps_its_journal_in_memory(self, tester_chain):
        s = Sender(tester_chain, signer(tester_chain, 7))
        try:
            assert str(s.ledger.path) == ":memory:"  # it ends with the chain it is for
        finally:
            s.ledger.close()


_CLAIM = """
import sys
from wallet.errors import AddressInUseError
from wallet.nonces import NonceLedger
try:
    NonceLedger(sys.argv[1]).claim(int(sys.argv[2]), sys.argv[3])
    print("claimed")
except AddressInUseError:
    print("in use")
"""


class TestLostReplies(ChainSuite):
    """Replies lost on the wire are not refusals: nothing is dropped, no nonce is reused."""

    backend = "anvil"

    @pytest.fixture
    def proxy(self, chain):
        proxy = RpcProxy(chain.rpc_url)
        yield proxy
        proxy.close()

    @pytest.fixture
    def via_proxy(self, proxy):
        with connect(ChainConfig(backend="anvil", rpc_url=proxy.url)) as proxied:
            yield proxied

    def statuses(self, s, nonce):
        return [e.status for e in s.ledger.entries_for_nonce(s.chain_id, s.address, nonce)]

    def test_lost_broadcast_reply_is_not_a_refusal(self, chain, proxy, via_proxy, ledger):
        s = sender(via_proxy, 5, ledger)
        before = chain.w3.eth.get_balance(DEAD)
        nonce = s.nonces.next_nonce
        proxy.fail("lost_reply")  # anvil takes the tx, its answer never arrives
        with pytest.raises(BroadcastUncertainError) as info:
            s.send(DEAD, b"", 1_000, gas=21_000)
        lost = info.value
        assert (lost.tx_hash, lost.nonce, lost.sent.hash) == (lost.sent.hash, nonce, lost.tx_hash)
        assert self.statuses(s, nonce) == ["signed"]  # still live, nonce not given back
        s.rebroadcast(lost.sent)  # same bytes: "already known" or already mined, never twice
        assert s.wait(lost.sent, timeout=10).status == 1
        after = s.send(DEAD, b"", 1, gas=21_000)
        assert after.nonce == nonce + 1
        assert s.wait(after, timeout=10).status == 1  # anvil mines after it answers the send
        assert chain.w3.eth.get_balance(DEAD) - before == 1_001

    def test_an_error_answer_that_is_not_a_refusal_keeps_the_nonce(
        self, chain, proxy, via_proxy, ledger
    ):
        """go-ethereum answers -32002 "request timed out" when its handler deadline passes,
        possibly after the transaction entered its pool: that is no refusal, so the nonce is
        not given to the next payment (which would replace this one, or pay twice)."""
        s = sender(via_proxy, 5, ledger)
        nonce = s.nonces.next_nonce
        proxy.fail("timed_out")  # anvil takes it; the answer says it timed out
        with pytest.raises(BroadcastUncertainError) as info:
            s.send(DEAD, b"", 3, gas=21_000)
        assert self.statuses(s, nonce) == ["signed"]
        assert s.wait(info.value.sent, timeout=10).status == 1
        with pytest.raises(TransactionError, match="is mined: not rebroadcast"):
            s.rebroadcast(info.value.sent)  # its nonce is closed: nothing to send again
        assert s.send(DEAD, b"", 1, gas=21_000).nonce == nonce + 1

    def test_unreachable_node_keeps_the_nonce_until_rebroadcast(
        self, chain, proxy, via_proxy, ledger
    ):
        s = sender(via_proxy, 5, ledger)
        nonce = s.nonces.next_nonce
        proxy.fail("unreachable")
        with pytest.raises(BroadcastUncertainError) as info:
            s.send(DEAD, b"", 7, gas=21_000)
        assert chain.w3.eth.get_transaction_count(s.address, "pending") == nonce  # never arrived
        proxy.fail("gateway")
        with pytest.raises(BroadcastUncertainError):
            s.rebroadcast(info.value.sent)
        assert self.statuses(s, nonce) == ["signed"]
        s.rebroadcast(info.value.sent)
        assert s.wait(info.value.sent, timeout=10).status == 1
        assert s.send(DEAD, b"", 1, gas=21_000).nonce == nonce + 1

    def test_wait_settles_a_broadcast_that_never_arrived(self, chain, proxy, via_proxy, ledger):
        """The docs say to settle a BroadcastUncertainError with rebroadcast() or wait(). When
        the request never reached the node, wait() only polled: it timed out, the nonce stayed
        spent, and every later payment queued behind the hole until a restart. It now sends
        the journaled bytes again until the node answers for them."""
        s = sender(via_proxy, 4, ledger)
        nonce = s.nonces.next_nonce
        proxy.fail("unreachable", times=2)  # the send, then wait()'s first rebroadcast
        with pytest.raises(BroadcastUncertainError) as info:
            s.send(DEAD, b"", 7, gas=21_000)
        assert s.wait(info.value.sent, timeout=10, sleep=lambda _: None).status == 1
        later = s.send(DEAD, b"", 1, gas=21_000)
        assert later.nonce == nonce + 1
        assert s.wait(later, timeout=10).status == 1

    def test_wait_never_sends_an_original_its_cancel_superseded(
        self, chain, proxy, via_proxy, ledger, monkeypatch
    ):
        """No answer to a payment, so it was cancelled: waiting on the payment must not send
        it again (it could reach a block before its cancel), as a restart does not."""
        s = sender(via_proxy, 4, ledger)
        proxy.fail("unreachable")
        with pytest.raises(BroadcastUncertainError) as info:
            s.send(DEAD, b"", 7, gas=21_000)
        cancel = s.cancel(info.value.sent)
        sent: list[bytes] = []
        real = s._broadcast_raw

        def recording(raw: bytes) -> None:
            sent.append(raw)
            real(raw)

        monkeypatch.setattr(s, "_broadcast_raw", recording)
        with pytest.raises(TransactionReplacedError) as replaced:
            s.wait(info.value.sent, timeout=10)
        assert replaced.value.replacement_hash == cancel.hash
        assert sent == []

    def test_failed_batch_drops_none_of_its_transactions(self, chain, proxy, via_proxy, ledger):
        s = sender(via_proxy, 6, ledger)
        start = chain.w3.eth.get_transaction_count(s.address)
        proxy.fail("lost_reply", times=1_000)  # every batch is delivered, every reply lost
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(s.send, DEAD, b"", 1, gas=21_000) for _ in range(24)]
        errors = [f.exception() for f in futures]
        assert all(isinstance(e, BroadcastUncertainError) for e in errors), errors
        assert sorted(e.nonce for e in errors) == list(range(start, start + 24))
        assert len(s.nonces.live_entries()) == 24
        proxy.clear()
        for e in errors:
            assert s.wait(e.sent, timeout=30).status == 1
        assert s.send(DEAD, b"", 1, gas=21_000).nonce == start + 24

    def test_crash_then_unreachable_node_at_restart_keeps_the_journaled_tx(
        self, chain, proxy, via_proxy, ledger
    ):
        s = sender(via_proxy, 5, ledger)
        tx = s.build(DEAD, b"", 555, gas=21_000)
        nonce = s.nonces.reserve()
        signed = s.signer.sign_transaction({**tx, "nonce": nonce}, chain_id=s.chain_id)
        s.nonces.record(nonce, signed.hash, signed.raw)  # the process dies before broadcasting
        proxy.fail("unreachable")
        with pytest.raises(ChainUnreachableError, match="journal is unchanged"):
            Sender(via_proxy, s.signer, ledger=ledger)
        assert self.statuses(s, nonce) == ["signed"]
        restarted = Sender(via_proxy, s.signer, ledger=ledger)  # the node is back
        assert restarted.nonces.last_report.rebroadcast == (signed.hash,)
        assert restarted.wait(signed.hash, timeout=10).status == 1
        assert restarted.send(DEAD, b"", 1, gas=21_000).nonce == nonce + 1

    def test_a_sender_that_fails_to_start_closes_its_ledger_and_frees_the_address(
        self, home, proxy, via_proxy, monkeypatch
    ):
        """The node is unreachable while Sender() reconciles, with the ledger the Sender
        opens itself ($FOLLOWPAY_HOME/nonces.sqlite3): no Sender, yet that ledger stayed open
        and its claim on the address held for the process's life, so every other process
        sending from the address got 409 address_in_use."""
        opened: list[NonceLedger] = []

        class Ledger(NonceLedger):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                opened.append(self)

        monkeypatch.setattr("wallet.sender.NonceLedger", Ledger)
        key = signer(via_proxy, 6)
        proxy.fail("unreachable", method="eth_getTransactionCount")
        with pytest.raises(ChainUnreachableError):
            Sender(via_proxy, key)
        (ledger,) = opened
        assert (ledger._db, ledger._claims) == (None, [])  # closed
        elsewhere = subprocess.run(
            [sys.executable, "-c", _CLAIM, str(home / "nonces.sqlite3"), str(via_proxy.chain_id),
             key.address],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert elsewhere.stdout.strip() == "claimed", elsewhere.stderr

    def test_fee_below_base_fee_at_restart_is_stuck_then_replaced(self, chain, ledger):
        """Once its replacement was mined, stuck() went on offering the original (the last
        reconcile's report was all it read): a second replace() of a mined nonce."""
        restarted, stuck_hash = stuck_after_restart(chain, ledger, 5)
        report = restarted.nonces.last_report
        nonce = report.chain_latest
        assert report.stuck == (stuck_hash,)
        assert report.next_nonce == nonce + 1  # the nonce stays held
        assert self.statuses(restarted, nonce) == ["signed"]
        (stuck,) = restarted.stuck()
        assert (stuck.hash, stuck.nonce, stuck.tx["value"], stuck.tx["to"]) == (
            stuck_hash, nonce, 555, DEAD,
        )  # fmt: skip
        replacement = restarted.replace(stuck)
        assert restarted.stuck() == []  # mined (automine), not yet waited for
        assert restarted.wait(replacement, timeout=10).status == 1
        assert chain.w3.eth.get_transaction_count(restarted.address) == nonce + 1
        assert self.statuses(restarted, nonce) == ["dropped", "mined"]  # a nonce is mined once
        assert restarted.stuck() == []
