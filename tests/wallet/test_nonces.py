"""The nonce manager: distinct and gap-free under threads, journaled, reconciled after crashes.

These tests drive :class:`NonceManager` against a small in-memory model of a node (a mempool
that accepts nonces in order), so crash points can be placed exactly.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from wallet.errors import (
    AddressInUseError,
    BroadcastUncertainError,
    ChainUnreachableError,
    NonceError,
)
from wallet.nonces import NonceLedger, NonceManager

ADDR = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


_INSTANCES = itertools.count()


class FakeNode:
    """Mined nonces, a pending pool keyed by nonce, and raw txs it refuses."""

    def __init__(self, mined: int = 0) -> None:
        self.mined = mined
        self.pool: dict[int, bytes] = {}
        self.refuse: set[bytes] = set()
        self.unreachable = False  # no answer at all (a BroadcastFn raises BroadcastUncertainError)
        self.lock = threading.Lock()
        self.instance = next(_INSTANCES)  # no two nodes share a block hash
        self.blocks = [f"0x{self.instance}-0"]

    def grow(self, blocks: int) -> None:
        start = len(self.blocks)
        self.blocks += [f"0x{self.instance}-{n}" for n in range(start, start + blocks)]

    def block_hash(self, number: int | None) -> tuple[int, str] | None:
        if self.unreachable:
            raise ChainUnreachableError("no answer from the node")
        if number is None:
            number = len(self.blocks) - 1
        return (number, self.blocks[number]) if number < len(self.blocks) else None

    def count(self, address: str, block: str) -> int:
        with self.lock:
            if block == "latest":
                return self.mined
            n = self.mined
            while n in self.pool:
                n += 1
            return n

    def broadcast(self, raw: bytes) -> None:
        nonce = int.from_bytes(raw[:4], "big")
        with self.lock:
            if self.unreachable:
                raise BroadcastUncertainError("no answer from the node: connection reset")
            if raw in self.refuse:
                raise ValueError("insufficient funds for gas * price + value")
            if nonce < self.mined:
                raise ValueError("nonce too low")
            if self.pool.get(nonce) == raw:
                raise ValueError("already known")
            self.pool[nonce] = raw

    def mine_all(self) -> None:
        with self.lock:
            while self.mined in self.pool:
                del self.pool[self.mined]
                self.mined += 1


def raw_for(nonce: int, tag: bytes = b"") -> bytes:
    return nonce.to_bytes(4, "big") + tag


@pytest.fixture
def ledger(tmp_path):
    led = NonceLedger(tmp_path / "nonces.sqlite3")
    yield led
    led.close()


def manager(ledger, node, **kw):
    def rebroadcast(raw):
        try:
            node.broadcast(raw)
        except ValueError as exc:
            if "already known" not in str(exc):
                raise

    return NonceManager(ledger, 31337, ADDR, get_count=node.count, broadcast=rebroadcast, **kw)


def send(m: NonceManager, node: FakeNode, tag: bytes = b"") -> int:
    nonce = m.reserve()
    raw = raw_for(nonce, tag)
    m.record(nonce, "0x" + raw.hex(), raw)
    try:
        node.broadcast(raw)
    except ValueError:
        m.release(nonce, "0x" + raw.hex())
        raise
    m.sent(nonce, "0x" + raw.hex())
    return nonce


class TestAllocation:
    def test_starts_at_chain_pending(self, ledger):
        node = FakeNode(mined=5)
        assert manager(ledger, node).reserve() == 5

    def test_threads_get_distinct_gap_free_nonces(self, ledger):
        node = FakeNode()
        m = manager(ledger, node)
        with ThreadPoolExecutor(16) as pool:
            nonces = list(pool.map(lambda _: send(m, node), range(400)))
        assert sorted(nonces) == list(range(400))
        node.mine_all()
        assert node.mined == 400

    def test_release_of_highest_steps_back(self, ledger):
        m = manager(ledger, FakeNode())
        a, b = m.reserve(), m.reserve()
        m.release(b)
        assert m.reserve() == b
        assert a == 0

    def test_release_below_top_is_reused_first(self, ledger):
        node = FakeNode()
        m = manager(ledger, node)
        n0, n1, n2 = m.reserve(), m.reserve(), m.reserve()
        m.release(n1)
        assert m.next_nonce == n1
        assert m.reserve() == n1
        assert m.reserve() == n2 + 1
        assert n0 == 0

    def test_release_folds_free_list_when_top_released(self, ledger):
        m = manager(ledger, FakeNode())
        nonces = [m.reserve() for _ in range(4)]
        m.release(nonces[2])
        m.release(nonces[3])
        assert m.reserve() == 2
        assert m.reserve() == 3
        assert m.reserve() == 4

    def test_failed_broadcast_leaves_no_gap(self, ledger):
        node = FakeNode()
        m = manager(ledger, node)
        send(m, node)
        bad = raw_for(1, b"bad")
        node.refuse.add(bad)
        nonce = m.reserve()
        m.record(nonce, "0xbad", bad)
        with pytest.raises(ValueError, match="insufficient"):
            node.broadcast(bad)
        m.release(nonce, "0xbad")
        assert send(m, node) == 1
        node.mine_all()
        assert node.mined == 2

    @pytest.mark.parametrize("settle", ["sent", "taken", "release"])
    def test_a_failing_status_write_still_settles_the_nonce(self, ledger, monkeypatch, settle):
        """The node has answered, then the journal write fails (SQLite locked past its
        timeout, disk full). The status was written before memory was touched, so the nonce
        stayed in flight for good: a released one was never handed out again (a gap every
        later transaction queued behind), and a resync never became a full reconcile."""
        node = FakeNode()
        m = manager(ledger, node)
        nonce = m.reserve()
        m.record(nonce, "0x00", raw_for(nonce))

        def locked(*args):
            raise sqlite3.OperationalError("database is locked")

        monkeypatch.setattr(ledger, "set_status", locked)
        with pytest.raises(sqlite3.OperationalError):
            getattr(m, settle)(nonce, "0x00")
        monkeypatch.undo()
        assert not m._in_flight
        assert m.reserve() == (nonce if settle == "release" else nonce + 1)

    def test_record_requires_reservation(self, ledger):
        m = manager(ledger, FakeNode())
        with pytest.raises(NonceError):
            m.record(3, "0x03", b"x")


class TestCrashRecovery:
    def test_signed_but_never_broadcast_is_rebroadcast(self, ledger):
        node = FakeNode()
        m = manager(ledger, node)
        send(m, node)
        node.mine_all()
        # crash after journaling nonce 1, before broadcasting it
        nonce = m.reserve()
        raw = raw_for(nonce, b"journaled")
        m.record(nonce, "0x01", raw)
        del m
        restarted = manager(ledger, node)
        report = restarted.last_report
        assert report.rebroadcast == ("0x01",)
        assert node.pool[1] == raw  # the very same signed bytes reached the node
        assert restarted.reserve() == 2  # nonce 1 is not reused

    def test_broadcast_but_not_marked_is_not_reused(self, ledger):
        node = FakeNode()
        m = manager(ledger, node)
        nonce = m.reserve()
        raw = raw_for(nonce, b"x")
        m.record(nonce, "0x00", raw)
        node.broadcast(raw)  # node has it; crash before m.sent()
        node.mine_all()
        restarted = manager(ledger, node)
        assert restarted.last_report.closed == ("0x00",)
        assert restarted.reserve() == 1

    def test_refused_on_rebroadcast_is_stuck_not_dropped(self, ledger):
        node = FakeNode()
        m = manager(ledger, node)
        send(m, node)
        node.mine_all()
        nonce = m.reserve()
        raw = raw_for(nonce, b"doomed")
        m.record(nonce, "0xd00d", raw)
        node.refuse.add(raw)  # e.g. the balance is gone by the time we restart
        restarted = manager(ledger, node)
        assert restarted.last_report.stuck == ("0xd00d",)
        assert [e.tx_hash for e in restarted.live_entries()] == ["0xd00d"]
        assert restarted.reserve() == 2  # held: only the chain frees a journaled nonce

    @pytest.mark.parametrize(
        ("answer", "closed"),
        [("Expected 1, but got 0", True), ("Expected 0, but got 1", False)],
    )
    def test_the_in_process_chains_wording_of_a_used_nonce_closes_the_entry(
        self, ledger, answer, closed
    ):
        """eth-tester says "nonce too low" as "Invalid transaction nonce: Expected 1, but got
        0": a reconcile (behind a count that lags) took it for a refusal and reported a mined
        transaction stuck. Got above expected is a gap, a real refusal: still stuck."""
        m = manager(ledger, FakeNode())
        nonce = m.reserve()
        m.record(nonce, "0x00", raw_for(nonce))
        m.uncertain(nonce)

        def tester(raw):
            raise ValueError(f"Invalid transaction nonce: {answer}")

        restarted = NonceManager(ledger, 31337, ADDR, get_count=lambda a, b: 0, broadcast=tester)
        report = restarted.last_report
        assert (report.closed, report.stuck) == ((("0x00",), ()) if closed else ((), ("0x00",)))

    def test_unreachable_node_aborts_reconcile_with_journal_unchanged(self, ledger):
        node = FakeNode()
        m = manager(ledger, node)
        first = send(m, node)
        second = m.reserve()
        m.record(second, "0x02", raw_for(second, b"journaled"))  # crash before broadcast
        before = m.live_entries()
        node.unreachable = True
        with pytest.raises(ChainUnreachableError, match="journal is unchanged"):
            manager(ledger, node)
        assert m.live_entries() == before
        node.unreachable = False
        restarted = manager(ledger, node)
        assert restarted.last_report.rebroadcast == ("0x" + raw_for(first).hex(), "0x02")
        assert node.pool[second] == raw_for(second, b"journaled")

    def test_refused_sibling_of_an_accepted_replacement_is_not_stuck(self, ledger):
        node = FakeNode()
        m = manager(ledger, node)
        nonce = m.reserve()
        old, new = raw_for(nonce, b"old"), raw_for(nonce, b"new")
        m.record(nonce, "0x0ld", old)
        ledger.record(31337, ADDR, nonce, "0x0e1", new, nonce + 1)  # a replacement
        node.refuse.add(old)  # "replacement transaction underpriced"
        restarted = manager(ledger, node)
        assert restarted.last_report.stuck == ()
        assert restarted.last_report.rebroadcast == ("0x0e1",)
        assert restarted.reserve() == nonce + 1

    @pytest.mark.parametrize("cancel_refused", [False, True])
    def test_a_restart_resends_a_cancel_never_the_payment_it_cancelled(
        self, ledger, cancel_refused
    ):
        """Payment P at nonce N, then its cancel C at N; the process restarts against a node
        that saw neither. Only C goes out again: P used to be sent first (it could reach a
        block before C), and when C was refused (no funds for its fee) P ran anyway."""
        node = FakeNode()
        m = manager(ledger, node)
        nonce = m.reserve()
        payment, cancel = raw_for(nonce, b"pay"), raw_for(nonce, b"cancel")
        m.record(nonce, "0xpay", payment)
        ledger.record(31337, ADDR, nonce, "0xcancel", cancel, nonce + 1)
        if cancel_refused:
            node.refuse.add(cancel)
        sent: list[bytes] = []

        def recording(raw: bytes) -> None:
            sent.append(raw)
            node.broadcast(raw)

        restarted = NonceManager(ledger, 31337, ADDR, get_count=node.count, broadcast=recording)
        assert payment not in sent
        assert sent == [cancel]
        report = restarted.last_report
        if cancel_refused:
            assert (report.rebroadcast, report.stuck) == ((), ("0xcancel",))
        else:
            assert (report.rebroadcast, report.stuck) == (("0xcancel",), ())
            assert node.pool[nonce] == cancel

    def test_unanswered_broadcast_keeps_the_nonce_and_entry(self, ledger):
        node = FakeNode()
        m = manager(ledger, node)
        nonce = m.reserve()
        raw = raw_for(nonce, b"lost")
        m.record(nonce, "0x00", raw)
        m.uncertain(nonce)  # the broadcast got no answer
        assert m.reserve() == nonce + 1
        assert [e.tx_hash for e in m.live_entries()] == ["0x00"]
        m.release(nonce + 1)
        m.resync()  # nothing in flight any more: a full reconcile sends it
        assert m.last_report.rebroadcast == ("0x00",)
        assert node.pool[nonce] == raw

    def test_reserved_but_never_signed_is_reused(self, ledger):
        node = FakeNode()
        m = manager(ledger, node)
        send(m, node)
        for _ in range(3):
            m.reserve()  # crash before signing any of them
        ledger.store_next(31337, ADDR, 4)
        restarted = manager(ledger, node)
        assert restarted.last_report.stored_next == 4
        assert restarted.reserve() == 1

    def test_hole_below_a_live_journaled_tx_is_filled_first(self, ledger):
        node = FakeNode()
        m = manager(ledger, node)
        n0 = m.reserve()
        n1 = m.reserve()
        raw1 = raw_for(n1, b"later")
        m.record(n1, "0x11", raw1)
        node.broadcast(raw1)  # nonce 1 in the pool, nonce 0 never signed: crash
        restarted = manager(ledger, node)
        assert restarted.reserve() == n0  # fill the hole, so nonce 1 can be mined
        assert restarted.reserve() == 2

    def test_journal_survives_a_new_ledger_object(self, tmp_path):
        path = tmp_path / "n.sqlite3"
        node = FakeNode()
        first = NonceLedger(path)
        m = manager(first, node)
        nonce = m.reserve()
        m.record(nonce, "0xaa", raw_for(nonce, b"a"))
        first.close()
        second = NonceLedger(path)
        assert [e.tx_hash for e in second.live(31337, ADDR)] == ["0xaa"]
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        second.close()

    def test_resync_after_external_use(self, ledger):
        node = FakeNode()
        m = manager(ledger, node)
        send(m, node)
        node.mined = 10  # another wallet process used nonces 1..9
        m.resync()
        assert m.reserve() == 10


_HOLDER = """
import signal, sys, time
from wallet.nonces import NonceLedger, NonceManager
ledger = NonceLedger(sys.argv[1])
NonceManager(ledger, 31337, sys.argv[2], get_count=lambda pending: 0, reconcile=False)
print("held", flush=True)
time.sleep(60)
"""


class TestAnotherChainWithTheSameId:
    """A dev node restarted, reset or replaced by a fresh one keeps its chain id: what was
    journaled against the old chain must not run again on the new one."""

    @staticmethod
    def on(ledger, node, **kw):
        return manager(ledger, node, block_hash=node.block_hash, **kw)

    def test_unmined_entries_from_an_old_chain_are_abandoned_not_sent(self, ledger):
        old = FakeNode()
        old.grow(5)
        m = self.on(ledger, old)
        first, second = send(m, old, b"pay"), send(m, old, b"refund")
        fresh = FakeNode()  # nonce 0 again, other blocks
        fresh.grow(5)
        restarted = self.on(ledger, fresh)
        report = restarted.last_report
        assert fresh.pool == {}  # nothing of the old chain's went out
        assert report.abandoned == (
            "0x" + raw_for(first, b"pay").hex(),
            "0x" + raw_for(second, b"refund").hex(),
        )
        assert report.rebroadcast == ()
        assert restarted.live_entries() == []
        assert restarted.reserve() == 0

    def test_the_same_chain_after_a_restart_gets_them_again(self, ledger):
        node = FakeNode()
        node.grow(100)
        m = self.on(ledger, node)
        nonce = send(m, node, b"pay")
        node.pool.clear()  # the node restarted and forgot its pool
        node.grow(3)
        restarted = self.on(ledger, node)
        assert restarted.last_report.rebroadcast == ("0x" + raw_for(nonce, b"pay").hex(),)
        assert restarted.last_report.abandoned == ()
        assert node.pool[nonce] == raw_for(nonce, b"pay")

    def test_a_reorg_of_the_last_blocks_is_still_the_same_chain(self, ledger):
        node = FakeNode()
        node.grow(200)
        m = self.on(ledger, node)
        nonce = send(m, node, b"pay")
        node.pool.clear()
        node.blocks[-5:] = [f"0xreorged-{n}" for n in range(5)]  # the anchor is deeper
        restarted = self.on(ledger, node)
        assert restarted.last_report.rebroadcast == ("0x" + raw_for(nonce, b"pay").hex(),)

    @pytest.mark.parametrize("length", [4, 10, 40])
    def test_a_short_reorg_of_a_young_chain_is_still_the_same_chain(self, ledger, length):
        """A chain shorter than 64 blocks was anchored on its head: a one-block reorg (a dev
        node's anvil_reorg) made a restart abandon a payment still pending on it."""
        node = FakeNode()
        node.grow(length - 1)
        m = self.on(ledger, node)
        nonce = send(m, node, b"pay")
        node.pool.clear()
        node.blocks[-1] = "0xreorged"
        restarted = self.on(ledger, node)
        assert restarted.last_report.abandoned == ()
        assert restarted.last_report.rebroadcast == ("0x" + raw_for(nonce, b"pay").hex(),)

    def test_a_replacement_signed_for_an_old_chain_is_abandoned_too(self, ledger):
        """Replacements (fee bumps, cancels) were journaled without an anchor: on a chain
        started again with the same id the original was abandoned and its bumped copy (the
        same payment) sent."""
        old = FakeNode()
        old.grow(5)
        m = self.on(ledger, old)
        nonce = send(m, old, b"pay")
        bumped = raw_for(nonce, b"pay-bumped")
        m.record_replacement(nonce, "0x" + bumped.hex(), bumped)
        fresh = FakeNode()
        fresh.grow(5)
        restarted = self.on(ledger, fresh)
        assert fresh.pool == {}
        assert "0x" + bumped.hex() in restarted.last_report.abandoned
        assert restarted.last_report.rebroadcast == ()

    def test_a_node_without_the_anchor_header_below_its_head_proves_nothing(self, ledger):
        """A lagging backend or one that pruned old headers answers nothing for a block below
        its head: that is not another chain, so the entry is sent again, not abandoned."""
        node = FakeNode()
        node.grow(100)
        m = self.on(ledger, node)
        nonce = send(m, node, b"pay")
        node.pool.clear()
        node.grow(2)
        real = node.block_hash

        def forgetful(number):
            return real(number) if number is None else None

        restarted = manager(ledger, node, block_hash=forgetful)
        assert restarted.last_report.abandoned == ()
        assert restarted.last_report.rebroadcast == ("0x" + raw_for(nonce, b"pay").hex(),)

    def test_a_node_that_stops_answering_leaves_the_journal_as_it_was(self, ledger):
        old = FakeNode()
        m = self.on(ledger, old)
        send(m, old, b"pay")
        fresh = FakeNode()
        fresh.unreachable = True
        with pytest.raises(ChainUnreachableError):
            manager(ledger, FakeNode(), block_hash=fresh.block_hash)
        assert [e.status for e in ledger.live(31337, ADDR)] == ["sent"]

    def test_a_ledger_from_before_anchors_is_upgraded_and_its_entries_still_sent(self, tmp_path):
        path = tmp_path / "old.sqlite3"
        with sqlite3.connect(path) as conn:
            conn.executescript(
                "CREATE TABLE tx_journal (chain_id INTEGER NOT NULL, address TEXT NOT NULL, "
                "nonce INTEGER NOT NULL, tx_hash TEXT NOT NULL, raw BLOB NOT NULL, "
                "status TEXT NOT NULL, created_at REAL NOT NULL, "
                "PRIMARY KEY (chain_id, address, tx_hash));"
            )
            conn.execute(
                "INSERT INTO tx_journal VALUES (31337, ?, 0, '0xold', ?, 'sent', 0)",
                (ADDR, raw_for(0, b"old")),
            )
        ledger = NonceLedger(path)
        try:
            node = FakeNode()
            restarted = self.on(ledger, node)
            assert restarted.last_report.rebroadcast == ("0xold",)  # no anchor: as before
            assert node.pool[0] == raw_for(0, b"old")
            nonce = send(restarted, node, b"new")
            (entry,) = [e for e in restarted.live_entries() if e.nonce == nonce]
            assert entry.anchor == (0, node.blocks[0])
        finally:
            ledger.close()


def test_one_address_sends_from_one_process_at_a_time(tmp_path):
    """Another process holding the address makes a manager fail instead of handing out the
    nonces that process hands out too; its death (``kill -9``) frees the address, as the
    kernel drops its lock."""
    import os
    import signal
    import subprocess
    import sys

    path = tmp_path / "nonces.sqlite3"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path), ADDR], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        ledger = NonceLedger(path)
        with pytest.raises(AddressInUseError, match="in use by another process"):
            NonceManager(ledger, 31337, ADDR, get_count=lambda pending: 0, reconcile=False)
        other = "0x" + "22" * 20  # another address on the same ledger is free
        NonceManager(ledger, 31337, other, get_count=lambda pending: 0, reconcile=False)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        m = NonceManager(ledger, 31337, ADDR, get_count=lambda pending: 0, reconcile=False)
        assert m.chain_id == 31337
        NonceManager(ledger, 31337, ADDR, get_count=lambda pending: 0, reconcile=False)  # shared
        ledger.close()
    finally:
        holder.kill()
        holder.wait(10)


def address_free(ledger: NonceLedger) -> bool:
    """Whether another process could claim ADDR on this ledger now (a second open file's
    flock conflicts with this process's own, as another process's would)."""
    import fcntl

    with open(ledger._lock_path(31337, ADDR), "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return True


@pytest.mark.skipif(__import__("os").name != "posix", reason="needs flock()")
def test_a_manager_that_fails_to_start_gives_the_address_up(ledger):
    """A manager whose first reconcile raised (node unreachable) was never built, yet its claim
    on the address (counted per process in _CLAIMS) stayed for the life of the process: no
    other process could send from the address. A claim the ledger held already, for a
    manager that did start, stays."""
    node = FakeNode()
    node.unreachable = True
    with pytest.raises(ChainUnreachableError):
        NonceManager(ledger, 31337, ADDR, get_count=node.count, block_hash=node.block_hash)
    assert address_free(ledger)
    node.unreachable = False
    running = manager(ledger, node)
    node.unreachable = True
    with pytest.raises(ChainUnreachableError):
        NonceManager(ledger, 31337, ADDR, get_count=node.count, block_hash=node.block_hash)
    assert not address_free(ledger)
    assert running.reserve() == 0


def test_a_cancel_supersedes_its_payment_when_the_clock_steps_back(ledger, monkeypatch):
    """The newest entry at a nonce (the one a restart sends) was picked by wall-clock time:
    a clock stepped back between a payment and its cancel (NTP, a resumed VM) made a restart
    send the payment again."""
    from wallet import nonces as nonces_module

    node = FakeNode()
    m = manager(ledger, node)
    nonce = m.reserve()
    payment, cancel = raw_for(nonce, b"pay"), raw_for(nonce, b"cancel")
    monkeypatch.setattr(nonces_module.time, "time", lambda: 1_000_000.0)
    m.record(nonce, "0xpay", payment)
    m.uncertain(nonce)
    monkeypatch.setattr(nonces_module.time, "time", lambda: 999_990.0)
    m.record_replacement(nonce, "0xcancel", cancel)
    monkeypatch.undo()
    assert [e.tx_hash for e in ledger.entries_for_nonce(31337, ADDR, nonce)] == [
        "0xpay",
        "0xcancel",
    ]
    sent: list[bytes] = []
    NonceManager(ledger, 31337, ADDR, get_count=node.count, broadcast=lambda raw: sent.append(raw))
    assert sent == [cancel]


def test_reconcile_keeps_the_nonces_other_threads_hold(ledger):
    """A reconcile (a thread settling an uncertain broadcast) while another thread holds a
    reserved nonce it has not yet signed or sent: that nonce is still theirs, and the thread
    can go on to record and send it."""
    node = FakeNode()
    m = manager(ledger, node)
    held = m.reserve()
    m.reconcile()
    other = m.reserve()
    assert other != held
    raw = raw_for(held)
    m.record(held, "0x" + raw.hex(), raw)  # refused as "not reserved" before
    node.broadcast(raw)
    m.sent(held, "0x" + raw.hex())
    m.release(other)
    assert m.reserve() == other  # given back, handed out again, nothing lost or doubled


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork()")
def test_a_forked_child_cannot_send_with_its_parents_address(tmp_path):
    """A child forked from a process holding an address (a preloading server's workers) gets
    neither the parent's claim (a new ledger's manager is refused) nor its manager (which
    refuses to hand out nonces): both would reuse the parent's nonces."""
    import os

    path = tmp_path / "nonces.sqlite3"
    ledger = NonceLedger(path)
    parent = NonceManager(ledger, 31337, ADDR, get_count=lambda a, b: 0)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it could do, then leave without cleanup
        answers = []
        try:
            try:
                NonceManager(NonceLedger(path), 31337, ADDR, get_count=lambda a, b: 0)
                answers.append("new manager claimed")
            except AddressInUseError:
                answers.append("new manager refused")
            try:
                answers.append(f"inherited manager reserved {parent.reserve()}")
            except AddressInUseError:
                answers.append("inherited manager refused")
        finally:
            os.write(write, ";".join(answers).encode())
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as answer:
        reported = answer.read()
    assert reported == "new manager refused;inherited manager refused"
    assert parent.reserve() == 0  # the parent still holds the address and its nonces
    ledger.close()


def test_a_ledger_in_a_directory_of_the_callers_keeps_its_mode(tmp_path):
    """Only ``$FOLLOWPAY_HOME`` is made private: a directory the caller chose may be shared
    (it was set to 0700). The ledger's own files are 0600, its WAL files included."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    ledger = NonceLedger(shared / "nonces.sqlite3")
    NonceManager(ledger, 31337, ADDR, get_count=lambda a, b: 0)  # writes: the WAL exists
    assert shared.stat().st_mode & 0o777 == 0o755
    files = sorted(p.name for p in shared.iterdir() if p.name.startswith("nonces.sqlite3"))
    assert "nonces.sqlite3-wal" in files
    for name in files:
        assert (shared / name).stat().st_mode & 0o077 == 0, name
    ledger.close()
    fresh = tmp_path / "made" / "here"
    NonceLedger(fresh / "nonces.sqlite3").close()
    assert fresh.stat().st_mode & 0o777 == 0o700  # a missing one is made private
