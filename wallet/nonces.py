"""A nonce manager that survives threads, asyncio tasks and crashes.

ethers, viem, alloy and web3.py keep the next nonce in memory (or ask the node every time): two
workers race, a failed broadcast leaves a gap that blocks every later transaction, and a crash
between signing and sending forgets a transaction the node may or may not have seen. Here:

* **Distinct, gap-free nonces under concurrency.** :meth:`NonceManager.reserve` hands out
  nonces under a lock. A nonce whose broadcast the node *refused* (a JSON-RPC error answer) is
  *given back*: if it is the highest reserved the counter steps back; otherwise it goes to a
  free list and the next :meth:`reserve` takes it first, so the hole is filled by the next
  transaction instead of stalling every later one. A broadcast that got *no answer* (timeout,
  reset) is not a refusal: the node may hold the transaction, so its journal entry stays live
  and its nonce stays spent (:meth:`NonceManager.uncertain`).
* **A write-ahead journal.** Every signed transaction is committed to SQLite (WAL) *before* it
  is broadcast, together with the next nonce.
* **Reconciliation at start** (:meth:`NonceManager.reconcile`): journaled transactions whose
  nonce the chain has already used are closed; those journaled against another chain with the
  same chain id (a restarted or reset dev node, a fresh anvil on 31337) are *abandoned*: each
  entry names a block the chain had when it was signed (its *anchor*, a block ``ANCHOR_DEPTH``
  below the head, or the head itself on a short chain), and a chain without that block at that
  height is not the one it was meant for, so sending it there would repeat an old payment on a
  new chain. Of the others, the newest per nonce (a
  replacement or cancel supersedes its original) is rebroadcast byte for byte in nonce order
  ("already known" is fine, "nonce too low" closes them). Only the chain closes an
  entry: one the node refuses (fee below the base fee, full pool, no funds) stays live and its
  nonce held — it is reported as ``stuck``, to be replaced at the same nonce
  (``Sender.stuck()`` + ``Sender.replace``/``cancel``). If the node does not answer at all,
  reconcile raises :class:`~wallet.errors.ChainUnreachableError` with the journal untouched.
  The next nonce becomes ``max(chain pending count, highest live journaled nonce + 1)``: nonces
  reserved but never signed before a crash are simply reused, because nobody ever saw them.

One ledger file may be shared by several managers (one per ``(chain_id, address)``) and by
several processes (SQLite's own locking), but one address sends from one process at a time: a
manager holds an exclusive OS lock on ``<ledger>.<chain>-<address>.lock`` (``flock``, released by
the kernel when the process dies, ``kill -9`` included) for as long as its ledger is open, and a
second process's manager for the address fails with
:class:`~wallet.errors.AddressInUseError` instead of handing out the same nonces. Managers in
one process share the claim, not the counter: one process keeps one manager per address (a
:class:`~wallet.sender.Sender` and the API's cache of them do).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if os.name == "posix":
    import fcntl
else:  # no flock: the one-process-per-address rule is then the operator's
    fcntl = None  # type: ignore[assignment]

from wallet.errors import (
    AddressInUseError,
    BroadcastUncertainError,
    ChainUnreachableError,
    NonceError,
    VaultError,
)
from wallet.fsutil import ensure_private_dir, followpay_home
from wallet.rpc import is_nonce_too_low

__all__ = ["JournalEntry", "NonceLedger", "NonceManager", "ReconcileReport"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nonce_accounts (
    chain_id INTEGER NOT NULL,
    address TEXT NOT NULL,
    next_nonce INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (chain_id, address)
);
CREATE TABLE IF NOT EXISTS tx_journal (
    chain_id INTEGER NOT NULL,
    address TEXT NOT NULL,
    nonce INTEGER NOT NULL,
    tx_hash TEXT NOT NULL,
    raw BLOB NOT NULL,
    status TEXT NOT NULL,            -- signed | sent | mined | dropped
    created_at REAL NOT NULL,
    anchor_block INTEGER,            -- a block the chain had when this was signed, and its
    anchor_hash TEXT,                -- hash (NULL in ledgers written before anchors)
    PRIMARY KEY (chain_id, address, tx_hash)
);
CREATE INDEX IF NOT EXISTS tx_journal_live ON tx_journal (chain_id, address, status, nonce);
"""
_LIVE = ("signed", "sent")
#: How far below the head an entry's anchor block sits (deep enough that no reorg replaces it);
#: a chain shorter than twice this is anchored half-way down, never on genesis past block 1
#: (a short reorg of a young dev chain keeps the anchor; a chain started again is shorter or
#: differs there, while two dev nodes started in the same second share a genesis hash).
ANCHOR_DEPTH = 32


def anchor_height(head: int) -> int:
    return head - min(ANCHOR_DEPTH, head // 2)


@dataclass(frozen=True, slots=True)
class JournalEntry:
    nonce: int
    tx_hash: str
    raw: bytes
    status: str
    anchor: tuple[int, str] | None = None


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """What :meth:`NonceManager.reconcile` did; the tuples hold transaction hashes.

    ``stuck``: journaled transactions the node refused at a nonce nothing else of ours covers.
    They stay live and keep their nonce (every later transaction waits behind them): replace
    or cancel them at the same nonce. ``abandoned``: journaled against another chain with this
    chain id (their anchor block is not on this one); dropped, never sent here.
    """

    chain_latest: int
    chain_pending: int
    stored_next: int | None
    next_nonce: int
    rebroadcast: tuple[str, ...]
    closed: tuple[str, ...]
    stuck: tuple[str, ...]
    abandoned: tuple[str, ...] = ()


class NonceLedger:
    """The SQLite file behind one or more :class:`NonceManager` s.

    Default location: ``$FOLLOWPAY_HOME/nonces.sqlite3``. A connection per thread.

    Durability: WAL with ``synchronous=NORMAL`` by default — every committed journal row survives
    a crash or ``kill -9`` of this process (the WAL is in the OS page cache), at ~0.1 ms per
    write. ``power_safe=True`` switches to ``synchronous=FULL`` (an fsync per commit, ~2 ms) for
    hosts where losing the last transactions on power failure matters.
    """

    def __init__(self, path: str | Path | None = None, *, power_safe: bool = False) -> None:
        if path is None:
            path = followpay_home() / "nonces.sqlite3"
        self.path = Path(path)
        self._synchronous = "FULL" if power_safe else "NORMAL"
        self._claims: list[Path] = []
        if str(self.path) != ":memory:":
            _prepare_file(self.path, home=path is None)
        self._db: _Database | None = None
        conn = self._conn()
        conn.executescript(_SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(tx_journal)").fetchall()}
        if "anchor_block" not in columns:  # a ledger from before anchors
            conn.executescript(
                "ALTER TABLE tx_journal ADD COLUMN anchor_block INTEGER;"
                "ALTER TABLE tx_journal ADD COLUMN anchor_hash TEXT;"
            )

    def __repr__(self) -> str:
        return f"NonceLedger({str(self.path)!r})"

    def _conn(self) -> _Database:
        # One connection shared by this process's threads behind a lock: SQLite's own
        # cross-connection locking busy-waits with sleeps, which stalls concurrent senders.
        if self._db is None:
            conn = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            if str(self.path) != ":memory:":
                self.path.chmod(0o600)
            self._db = _Database(conn)
        return self._db

    def close(self) -> None:
        for lock in self._claims:
            _unclaim(lock)
        self._claims.clear()
        if self._db is not None:
            self._db.close()
            self._db = None

    def claim(self, chain_id: int, address: str) -> bool:
        """Hold ``address`` on ``chain_id`` for this process until :meth:`close` (see the
        module docstring); raises :class:`AddressInUseError` if another process holds it.
        True if this call took the claim (False: this ledger held it already, or in memory)."""
        if str(self.path) == ":memory:":
            return False
        lock = self._lock_path(chain_id, address)
        if lock in self._claims:
            return False
        _claim(lock, f"address {address} on chain {chain_id}")
        self._claims.append(lock)
        return True

    def unclaim(self, chain_id: int, address: str) -> None:
        """Give up this ledger's claim on ``address`` before :meth:`close` (a manager that
        failed to start)."""
        lock = self._lock_path(chain_id, address)
        if lock in self._claims:
            self._claims.remove(lock)
            _unclaim(lock)

    def _lock_path(self, chain_id: int, address: str) -> Path:
        return self.path.with_name(f"{self.path.name}.{chain_id}-{address.lower()}.lock")

    # -- accounts ---------------------------------------------------------------------------

    def stored_next(self, chain_id: int, address: str) -> int | None:
        row = (
            self._conn()
            .execute(
                "SELECT next_nonce FROM nonce_accounts WHERE chain_id=? AND address=?",
                (chain_id, address),
            )
            .fetchone()
        )
        return None if row is None else int(row[0])

    def store_next(self, chain_id: int, address: str, next_nonce: int) -> None:
        self._conn().execute(
            "INSERT INTO nonce_accounts (chain_id, address, next_nonce, updated_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (chain_id, address) DO UPDATE SET "
            "next_nonce=excluded.next_nonce, updated_at=excluded.updated_at",
            (chain_id, address, next_nonce, time.time()),
        )

    # -- journal ----------------------------------------------------------------------------

    def record(
        self,
        chain_id: int,
        address: str,
        nonce: int,
        tx_hash: str,
        raw: bytes,
        next_nonce: int,
        anchor: tuple[int, str] | None = None,
    ) -> None:
        """Journal a signed transaction (and the next nonce) durably, in one transaction."""
        conn = self._conn()
        now = time.time()
        block, block_hash = anchor if anchor is not None else (None, None)
        with _transaction(conn):
            conn.execute(
                "INSERT OR REPLACE INTO tx_journal (chain_id, address, nonce, tx_hash, raw, "
                "status, created_at, anchor_block, anchor_hash) "
                "VALUES (?, ?, ?, ?, ?, 'signed', ?, ?, ?)",
                (chain_id, address, nonce, tx_hash, raw, now, block, block_hash),
            )
            conn.execute(
                "INSERT INTO nonce_accounts (chain_id, address, next_nonce, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (chain_id, address) DO UPDATE SET "
                "next_nonce=max(next_nonce, excluded.next_nonce), updated_at=excluded.updated_at",
                (chain_id, address, next_nonce, now),
            )

    def set_status(self, chain_id: int, address: str, tx_hash: str, status: str) -> None:
        self._conn().execute(
            "UPDATE tx_journal SET status=? WHERE chain_id=? AND address=? AND tx_hash=?",
            (status, chain_id, address, tx_hash),
        )

    def set_mined(self, chain_id: int, address: str, tx_hash: str) -> None:
        """Mark ``tx_hash`` mined and its live siblings at the same nonce (an original and its
        replacements) dropped: a nonce is mined once."""
        conn = self._conn()
        with _transaction(conn):
            conn.execute(
                "UPDATE tx_journal SET status='mined' WHERE chain_id=? AND address=? AND tx_hash=?",
                (chain_id, address, tx_hash),
            )
            conn.execute(
                "UPDATE tx_journal SET status='dropped' WHERE chain_id=? AND address=? "
                "AND status IN ('signed','sent') AND nonce IN (SELECT nonce FROM tx_journal "
                "WHERE chain_id=? AND address=? AND tx_hash=?)",
                (chain_id, address, chain_id, address, tx_hash),
            )

    def close_below(self, chain_id: int, address: str, nonce: int) -> list[str]:
        """Mark every live entry with a nonce below ``nonce`` as mined (the chain used it)."""
        conn = self._conn()
        rows = conn.execute(
            "SELECT tx_hash FROM tx_journal WHERE chain_id=? AND address=? AND nonce<? "
            "AND status IN ('signed','sent')",
            (chain_id, address, nonce),
        ).fetchall()
        conn.execute(
            "UPDATE tx_journal SET status='mined' WHERE chain_id=? AND address=? AND nonce<? "
            "AND status IN ('signed','sent')",
            (chain_id, address, nonce),
        )
        return [r[0] for r in rows]

    def live(self, chain_id: int, address: str) -> list[JournalEntry]:
        rows = (
            self._conn()
            .execute(
                "SELECT nonce, tx_hash, raw, status, anchor_block, anchor_hash FROM tx_journal "
                "WHERE chain_id=? AND address=? AND status IN ('signed','sent') "
                "ORDER BY nonce, rowid",  # insertion order: the wall clock may step back
                (chain_id, address),
            )
            .fetchall()
        )
        return [
            JournalEntry(int(n), str(h), bytes(r), str(s), None if b is None else (int(b), str(bh)))
            for n, h, r, s, b, bh in rows
        ]

    def entry(self, chain_id: int, address: str, tx_hash: str) -> JournalEntry | None:
        row = (
            self._conn()
            .execute(
                "SELECT nonce, tx_hash, raw, status FROM tx_journal WHERE chain_id=? AND address=? "
                "AND tx_hash=?",
                (chain_id, address, tx_hash),
            )
            .fetchone()
        )
        return (
            None
            if row is None
            else JournalEntry(int(row[0]), str(row[1]), bytes(row[2]), str(row[3]))
        )

    def entries_for_nonce(self, chain_id: int, address: str, nonce: int) -> list[JournalEntry]:
        rows = (
            self._conn()
            .execute(
                "SELECT nonce, tx_hash, raw, status FROM tx_journal WHERE chain_id=? AND address=? "
                "AND nonce=? ORDER BY rowid",
                (chain_id, address, nonce),
            )
            .fetchall()
        )
        return [JournalEntry(int(n), str(h), bytes(r), str(s)) for n, h, r, s in rows]

    def prune(self, chain_id: int, address: str, *, keep_seconds: float = 7 * 86400) -> int:
        cursor = self._conn().execute(
            "DELETE FROM tx_journal WHERE chain_id=? AND address=? AND status IN "
            "('mined','dropped') AND created_at<?",
            (chain_id, address, time.time() - keep_seconds),
        )
        return int(cursor.rowcount)


def _prepare_file(path: Path, *, home: bool) -> None:
    """The ledger's directory and file. ``$FOLLOWPAY_HOME`` is made (or tightened to) 0700; a
    directory the caller chose is created 0700 when missing and otherwise left as it is (it
    may be shared). The file is created 0600 before SQLite opens it, so its ``-wal`` and
    ``-shm`` files, which SQLite gives the database's mode, are private too."""
    if home:
        ensure_private_dir(path.parent)
    else:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise VaultError(
                f"cannot create directory {str(path.parent)!r}: {exc.strerror}"
            ) from None
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


#: Lock files this process holds: path -> (open file, how many ledgers claimed it).
_CLAIMS: dict[Path, tuple[Any, int]] = {}
_CLAIMS_LOCK = threading.Lock()


def _forget_claims_after_fork() -> None:
    """A forked child holds none of its parent's claims: its copies of the lock files' handles
    share the parent's locks, and counted as held they let the child send with the parent's
    addresses (both would hand out the same nonces). Closing the copies leaves the parent's
    locks in place, so a claim in the child is refused while the parent holds it."""
    global _CLAIMS_LOCK
    _CLAIMS_LOCK = threading.Lock()  # another thread may have held it at the fork
    for handle, _ in _CLAIMS.values():
        with contextlib.suppress(OSError):
            handle.close()
    _CLAIMS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_claims_after_fork)


def _claim(lock: Path, what: str) -> None:
    with _CLAIMS_LOCK:
        held = _CLAIMS.get(lock)
        if held is not None:
            _CLAIMS[lock] = (held[0], held[1] + 1)
            return
        handle = open(lock, "a+")  # noqa: SIM115 - held until the last claim is released
        try:
            lock.chmod(0o600)
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AddressInUseError(
                f"{what} is in use by another process sending with this nonce ledger; stop it "
                "first (two senders would reuse each other's nonces)"
            ) from None
        except BaseException:
            handle.close()
            raise
        _CLAIMS[lock] = (handle, 1)


def _unclaim(lock: Path) -> None:
    with _CLAIMS_LOCK:
        held = _CLAIMS.get(lock)
        if held is None:
            return
        if held[1] > 1:
            _CLAIMS[lock] = (held[0], held[1] - 1)
            return
        del _CLAIMS[lock]
        held[0].close()  # releases the flock


class _Result:
    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Any]:
        return self.rows


class _Database:
    """A sqlite3 connection behind a re-entrant lock (statements and transactions)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.lock = threading.RLock()

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> _Result:
        with self.lock:
            cursor = self.conn.execute(sql, params)
            return _Result(cursor.fetchall(), cursor.rowcount)

    def executescript(self, script: str) -> None:
        with self.lock:
            self.conn.executescript(script)

    def close(self) -> None:
        with self.lock:
            self.conn.close()


class _transaction:
    def __init__(self, db: _Database) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.db.lock.release()
            raise

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.db.lock.release()


#: ``(address, block) -> transaction count``; ``block`` is ``"latest"`` or ``"pending"``.
CountFn = Callable[[str, str], int]
#: Broadcast a raw transaction; returns nothing, raises on refusal. ``"already known"`` must not
#: raise (the sender maps it to success); no answer at all must raise
#: :class:`~wallet.errors.BroadcastUncertainError`.
BroadcastFn = Callable[[bytes], None]
#: ``None -> (number, hash)`` of the head; ``number -> (number, hash)``, or None past the head.
BlockHashFn = Callable[[int | None], tuple[int, str] | None]


class NonceManager:
    """Nonces for one ``(chain_id, address)``; thread-safe; persisted in a :class:`NonceLedger`."""

    def __init__(
        self,
        ledger: NonceLedger,
        chain_id: int,
        address: str,
        *,
        get_count: CountFn,
        broadcast: BroadcastFn | None = None,
        block_hash: BlockHashFn | None = None,
        reconcile: bool = True,
    ) -> None:
        self.ledger = ledger
        self.chain_id = chain_id
        self.address = address
        self._get_count = get_count
        self._broadcast = broadcast
        self._block_hash = block_hash
        self._anchor: tuple[int, str] | None = None  # written with every journal entry
        self._lock = threading.Lock()
        self._next = 0
        self._free: list[int] = []  # min-heap of given-back nonces below _next
        self._in_flight: set[int] = set()
        self._ready = False
        self._pid = os.getpid()  # a forked child must not go on with the parent's nonces
        self.last_report: ReconcileReport | None = None
        claimed = ledger.claim(chain_id, address)
        if reconcile:
            try:
                self.reconcile()
            except BaseException:  # no manager: the address is not held for one
                if claimed:
                    ledger.unclaim(chain_id, address)
                raise

    def __repr__(self) -> str:
        return f"NonceManager(chain_id={self.chain_id}, address={self.address!r})"

    # -- start-up / resync ------------------------------------------------------------------

    def reconcile(self) -> ReconcileReport:
        """Bring memory, journal and chain into agreement (see the module docstring)."""
        with self._lock:
            return self._reconcile_locked()

    def _reconcile_locked(self) -> ReconcileReport:
        cid, addr = self.chain_id, self.address
        latest = self._get_count(addr, "latest")
        stored = self.ledger.stored_next(cid, addr)
        # Ask the node about every entry before writing anything: if it stops answering
        # half-way, the journal and this manager are left exactly as they were.
        answers: list[tuple[JournalEntry, Exception | None]] = []
        head = self._block_hash(None) if self._block_hash is not None else None
        anchor = self._anchor_below(head)
        entries = self.ledger.live(cid, addr)
        foreign = self._foreign(entries, latest, head)
        entries = [entry for entry in entries if entry.tx_hash not in foreign]
        # Per nonce only the newest entry goes out again: it superseded the older ones (a
        # replacement, a cancel). Sent first, an original could reach a block before its
        # cancel, and it would run though the user cancelled it.
        newest = {entry.nonce: entry for entry in entries}
        for entry in entries:
            if entry.nonce < latest or self._broadcast is None:
                answers.append((entry, None))
                continue
            if newest[entry.nonce] is not entry:
                continue  # superseded: kept in the journal until the chain closes its nonce
            try:
                self._broadcast(entry.raw)
            except BroadcastUncertainError as exc:
                raise ChainUnreachableError(
                    f"nonce reconcile aborted: no answer from the node while rebroadcasting the "
                    f"journaled transaction at nonce {entry.nonce}; the journal is unchanged, "
                    "retry when the node is reachable"
                ) from exc
            except Exception as exc:  # the node answered with a refusal
                answers.append((entry, exc))
            else:
                answers.append((entry, None))
        closed = self.ledger.close_below(cid, addr, latest)
        for tx_hash in foreign:
            self.ledger.set_status(cid, addr, tx_hash, "dropped")
        rebroadcast: list[str] = []
        accepted: set[int] = set()
        refused: dict[int, list[str]] = {}
        for entry, refusal in answers:
            if entry.nonce < latest:
                continue  # closed above
            if refusal is None:
                if self._broadcast is not None:
                    self.ledger.set_status(cid, addr, entry.tx_hash, "sent")
                    rebroadcast.append(entry.tx_hash)
                accepted.add(entry.nonce)
            elif is_nonce_too_low(refusal):
                self.ledger.set_status(cid, addr, entry.tx_hash, "mined")
                closed.append(entry.tx_hash)
            else:
                # Refused now, yet maybe held by another node, or valid once fees fall or funds
                # arrive: keep it and its nonce; only the chain closes a journaled transaction.
                log.warning(
                    "journaled tx %s at nonce %s refused on rebroadcast: %s",
                    entry.tx_hash, entry.nonce, str(refusal)[:200],
                )  # fmt: skip
                refused.setdefault(entry.nonce, []).append(entry.tx_hash)
        # a refused sibling of an accepted replacement is expected, not stuck
        stuck = [h for n, hashes in sorted(refused.items()) if n not in accepted for h in hashes]
        # nonces other threads reserved and have not settled yet stay theirs
        live_nonces = accepted | set(refused) | self._in_flight
        pending = self._get_count(addr, "pending")
        top = max(live_nonces, default=-1) + 1
        self._next = max(pending, latest, top)
        # holes below the top that no live transaction covers are handed out first
        self._free = sorted(n for n in range(max(pending, latest), top) if n not in live_nonces)
        heapq.heapify(self._free)
        self.ledger.store_next(cid, addr, self._next)
        self._anchor = anchor
        self._ready = True
        report = ReconcileReport(
            chain_latest=latest,
            chain_pending=pending,
            stored_next=stored,
            next_nonce=self._next,
            rebroadcast=tuple(rebroadcast),
            closed=tuple(closed),
            stuck=tuple(stuck),
            abandoned=tuple(foreign),
        )
        self.last_report = report
        if foreign:
            log.warning(
                "%d journaled tx(s) for %s abandoned: signed on another chain with chain id %s "
                "(their anchor block is not on this one)",
                len(foreign), addr, cid,
            )  # fmt: skip
        if stuck:
            log.warning(
                "%d journaled tx(s) stuck for %s: replace or cancel them at the same nonce",
                len(stuck), addr,
            )  # fmt: skip
        log.debug(
            "nonce reconcile chain=%s address=%s latest=%s pending=%s stored=%s next=%s "
            "rebroadcast=%d stuck=%d",
            cid, addr, latest, pending, stored, self._next, len(rebroadcast), len(stuck),
        )  # fmt: skip
        return report

    def _anchor_below(self, head: tuple[int, str] | None) -> tuple[int, str] | None:
        if head is None or self._block_hash is None:
            return None
        height = anchor_height(head[0])
        return head if height == head[0] else self._block_hash(height)

    def _foreign(
        self, entries: list[JournalEntry], latest: int, head: tuple[int, str] | None
    ) -> list[str]:
        """Hashes of the live entries at unused nonces signed for another chain: this one is
        shorter than their anchor block's height, or has another block there. A node that
        has no answer for a height at or below its head (a lagging backend, pruned headers)
        proves nothing: those entries stay."""
        if self._block_hash is None or head is None:
            return []
        hashes: dict[int, str | None] = {}
        foreign: list[str] = []
        for entry in entries:
            if entry.anchor is None or entry.nonce < latest:
                continue
            number, expected = entry.anchor
            if number > head[0]:
                foreign.append(entry.tx_hash)
                continue
            if number not in hashes:
                found = self._block_hash(number)
                hashes[number] = None if found is None else found[1]
            if hashes[number] is not None and hashes[number] != expected:
                foreign.append(entry.tx_hash)
        return foreign

    def resync(self) -> None:
        """After a "nonce too low": trust the chain again (only when nothing is in flight)."""
        with self._lock:
            if self._in_flight:
                chain_pending = self._get_count(self.address, "pending")
                if chain_pending > self._next:
                    # someone else used our nonces: jump ahead, forget holes below
                    self._next = chain_pending
                    self._free = [n for n in self._free if n >= chain_pending]
                    heapq.heapify(self._free)
                return
            self._reconcile_locked()

    # -- allocation -------------------------------------------------------------------------

    @property
    def next_nonce(self) -> int:
        with self._lock:
            return self._free[0] if self._free else self._next

    def reserve(self) -> int:
        """A nonce nobody else holds: a given-back one first, else the next new one."""
        with self._lock:
            if not self._ready:
                raise NonceError("nonce manager is not reconciled")
            if os.getpid() != self._pid:
                raise AddressInUseError(
                    f"address {self.address} on chain {self.chain_id} belongs to the process "
                    "that made this nonce manager, not to a child forked from it"
                )
            nonce = heapq.heappop(self._free) if self._free else self._next
            if nonce == self._next:
                self._next += 1
            self._in_flight.add(nonce)
            return nonce

    def record(self, nonce: int, tx_hash: str, raw: bytes) -> None:
        """Journal a signed transaction before it is broadcast."""
        with self._lock:
            if nonce not in self._in_flight:
                raise NonceError(f"nonce {nonce} was not reserved")
            upcoming, anchor = self._next, self._anchor
        self.ledger.record(self.chain_id, self.address, nonce, tx_hash, raw, upcoming, anchor)

    def record_replacement(self, nonce: int, tx_hash: str, raw: bytes) -> None:
        """Journal a replacement (fee bump, cancel) of a sent transaction at ``nonce``, with
        the same chain anchor as every entry: without one, a chain started again with this
        chain id would get it rebroadcast (the original is recognised as foreign)."""
        with self._lock:
            anchor = self._anchor
        self.ledger.record(self.chain_id, self.address, nonce, tx_hash, raw, nonce + 1, anchor)

    # sent/taken/release settle memory before they write the journal: a write that fails
    # (SQLite locked past its timeout, disk full) must not leave the nonce in flight for good.

    def sent(self, nonce: int, tx_hash: str) -> None:
        """The node accepted the transaction: the nonce is spent."""
        with self._lock:
            self._in_flight.discard(nonce)
        self.ledger.set_status(self.chain_id, self.address, tx_hash, "sent")

    def uncertain(self, nonce: int) -> None:
        """The broadcast got no answer: the node may hold the transaction, so its journal entry
        stays live and ``nonce`` stays spent (never given back). :meth:`reconcile` or a
        rebroadcast of the same bytes settles it."""
        with self._lock:
            self._in_flight.discard(nonce)

    def taken(self, nonce: int, tx_hash: str) -> None:
        """The node said "nonce too low": the chain used ``nonce`` for another transaction, so
        ours can never be mined. Drop its entry; the nonce is not given back."""
        with self._lock:
            self._in_flight.discard(nonce)
        self.ledger.set_status(self.chain_id, self.address, tx_hash, "dropped")

    def release(self, nonce: int, tx_hash: str | None = None) -> None:
        """The node refused the broadcast (an error answer, so it never took it): give
        ``nonce`` back. Not for a broadcast without an answer: see :meth:`uncertain`."""
        with self._lock:
            self._in_flight.discard(nonce)
            if nonce == self._next - 1:
                self._next -= 1
                # fold given-back nonces that are now at the top
                while self._free and max(self._free) == self._next - 1:
                    self._free.remove(self._next - 1)
                    heapq.heapify(self._free)
                    self._next -= 1
            elif nonce < self._next and nonce not in self._free:
                heapq.heappush(self._free, nonce)
            try:
                self.ledger.store_next(self.chain_id, self.address, self._next)
            finally:
                if tx_hash is not None:
                    self.ledger.set_status(self.chain_id, self.address, tx_hash, "dropped")

    def confirmed(self, tx_hash: str) -> None:
        """``tx_hash`` is mined: its entry is closed, and so are its siblings at that nonce."""
        self.ledger.set_mined(self.chain_id, self.address, tx_hash)

    def live_entries(self) -> list[JournalEntry]:
        return self.ledger.live(self.chain_id, self.address)
