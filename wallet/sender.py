"""Sending transactions: gas, nonces, broadcast, receipts, replacement and cancellation.

:class:`Sender` is one hot address on one :class:`~wallet.chain.Chain`. It is safe to share
between threads (and asyncio tasks through :meth:`Sender.send_async`): nonces come from a
persisted :class:`~wallet.nonces.NonceManager`, every signed transaction is journaled before
it is broadcast, and a refused broadcast gives its nonce back.

* Refused vs unanswered: only an error *answer* from the node (a JSON-RPC error object, or an
  exception from the in-process chain) is a refusal — :class:`BroadcastError` and friends, the
  nonce is given back, nothing was sent. A broadcast without an answer (timeout, connection
  reset, HTTP 429/5xx, a failed batch) may have reached the node: it raises
  :class:`BroadcastUncertainError` carrying the :class:`SentTransaction`; the journal entry
  stays live and the nonce spent. Settle it with :meth:`Sender.rebroadcast` (same signed
  bytes, idempotent) or :meth:`Sender.wait` (which sends those bytes again until the node
  answers for them) — never by sending the payment again. Which answer is which:
  :mod:`wallet.rpc`.

* Fees: :func:`~wallet.fees.suggest_fees`, cached for ``fee_ttl`` seconds.
* Gas: ``eth_estimateGas`` x ``gas_margin`` (default 1.2). A revert during estimation is
  decoded (:mod:`wallet.reverts`) into :class:`TransactionRevertedError` *before* a nonce is
  reserved, so failing calls cost neither gas nor a nonce.
* Receipts: :meth:`Sender.wait` polls with a timeout and a confirmation depth, and detects a
  transaction replaced by another with the same nonce (:class:`TransactionReplacedError`).
* Replacement: :meth:`Sender.replace` / :meth:`Sender.cancel` follow geth's rule
  (:func:`~wallet.fees.bump_fees`, :func:`~wallet.fees.check_replacement`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wallet.errors import (
    BroadcastUncertainError,
    ChainUnreachableError,
    NonceError,
    ReceiptTimeoutError,
    TransactionError,
    TransactionReplacedError,
    TransactionRevertedError,
)
from wallet.fees import GWEI, Fees, bump_fees, check_replacement, suggest_fees
from wallet.nonces import JournalEntry, NonceLedger, NonceManager
from wallet.reverts import reverted
from wallet.rpc import (
    Coalescer,
    Unanswered,
    as_int,
    broadcast_uncertain,
    classify_broadcast,
    is_already_known,
    is_nonce_held,
    is_nonce_too_low,
    is_unanswered,
)
from wallet.signing import SignedTransaction, Signer, decode_transaction

if TYPE_CHECKING:
    from wallet.chain import Chain

__all__ = ["Receipt", "Sender", "SentTransaction"]

log = logging.getLogger(__name__)

# Blocks the head must move past the first sighting of our nonce used by a stranger, with our
# receipt still missing, before wait() calls the transaction replaced (lagging RPC backends).
STRANGER_BLOCKS = 2
# wait() sends the bytes of a transaction whose broadcast got no answer again on its first
# poll and on every this many polls after, until the node answers for it.
RESEND_POLLS = 20


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SentTransaction:
    hash: str
    nonce: int
    sender: str
    fees: Fees
    tx: dict[str, Any]
    signed: SignedTransaction


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_hash: str
    block_number: int
    block_hash: str
    status: int
    gas_used: int
    effective_gas_price: int
    contract_address: str | None
    logs: tuple[Any, ...]
    raw: Mapping[str, Any]


# --- the sender ------------------------------------------------------------------------------


class Sender:
    """One hot address on one chain: build, sign (policy-checked), journal, broadcast, confirm."""

    def __init__(
        self,
        chain: Chain,
        signer: Signer,
        *,
        ledger: NonceLedger | None = None,
        gas_margin: float = 1.2,
        min_tip: int = GWEI,
        poll_interval: float = 0.05,
        fee_ttl: float = 1.0,
    ) -> None:
        self.chain = chain
        self.signer = signer
        self.address = signer.address
        self.chain_id = chain.chain_id
        self.gas_margin = gas_margin
        self.min_tip = min_tip
        self.poll_interval = poll_interval
        self.fee_ttl = fee_ttl  # fee suggestions are reused this long (a block is ≥ 1 s)
        self._fee_cache: tuple[float, Fees] | None = None
        self._fee_lock = threading.Lock()
        # eth-tester is single-threaded and refuses nonce gaps: serialise whole sends on it.
        self._in_process = chain.rpc_url is None
        self._send_lock: Any = chain.lock if self._in_process else contextlib.nullcontext()
        self._coalescer = None if self._in_process else Coalescer(str(chain.rpc_url))
        # The in-process chain ends with the process: so does its journal by default.
        self.ledger = (
            ledger if ledger is not None else NonceLedger(":memory:" if self._in_process else None)
        )
        try:
            self.nonces = NonceManager(
                self.ledger,
                self.chain_id,
                self.address,
                get_count=self._count,
                broadcast=self._rebroadcast,
                block_hash=self._block_hash,
            )
        except BaseException:  # not built (node unreachable, address in use): close our ledger
            if ledger is None:
                self.ledger.close()
            raise

    def __repr__(self) -> str:
        return f"Sender(address={self.address!r}, chain_id={self.chain_id})"

    # -- node access ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _w3(self) -> Iterator[Any]:
        if self._in_process:
            with self.chain.lock:
                yield self.chain.w3
        else:
            yield self.chain.w3

    def _rpc(self, method: str, params: list[Any]) -> Any:
        """A bare JSON-RPC call over keep-alive HTTP (the hot path: no web3 middleware, which
        re-asks the node for its chain id on every request). Only used with an RPC URL.

        Concurrent callers are coalesced: while one request is in flight, the others queue and
        go out together as one JSON-RPC batch (see :class:`~wallet.rpc.Coalescer`)."""
        assert self._coalescer is not None
        return self._coalescer.call(method, params)

    def _count(self, address: str, block: str) -> int:
        if not self._in_process:
            try:
                return as_int(self._rpc("eth_getTransactionCount", [address, block]))
            except Unanswered as exc:
                raise ChainUnreachableError(f"no transaction count from the node: {exc}") from exc
        with self._w3() as w3:
            return int(w3.eth.get_transaction_count(address, block))

    def _block_hash(self, number: int | None) -> tuple[int, str] | None:
        if number is None:
            return self.chain.latest_block()
        header = self.chain.block_header(number)
        return None if header is None else (number, header[0])

    def _broadcast_raw(self, raw: bytes) -> None:
        if not self._in_process:
            self._rpc("eth_sendRawTransaction", ["0x" + raw.hex()])
            return
        with self._w3() as w3:
            w3.eth.send_raw_transaction(raw)

    def _rebroadcast(self, raw: bytes) -> None:
        """The nonce manager's ``BroadcastFn``: "already known" is success, no answer is
        :class:`BroadcastUncertainError`, a refusal is raised as the node phrased it."""
        try:
            self._broadcast_raw(raw)
        except Exception as exc:
            if is_already_known(exc):
                return
            if broadcast_uncertain(exc):
                raise BroadcastUncertainError(f"no answer from the node: {exc}") from exc
            raise

    # -- building ---------------------------------------------------------------------------

    def fees(self) -> Fees:
        """Suggested fees, cached for ``fee_ttl`` seconds (many sends share one lookup)."""
        now = time.monotonic()
        with self._fee_lock:
            cached = self._fee_cache
            if cached is not None and now - cached[0] < self.fee_ttl:
                return cached[1]
        fees = suggest_fees(self.chain, min_tip=self.min_tip)
        with self._fee_lock:
            self._fee_cache = (now, fees)
        return fees

    def estimate_gas(self, tx: Mapping[str, Any]) -> int:
        call = {k: v for k, v in tx.items() if k in ("to", "data", "value")}
        call["from"] = self.address
        try:
            if self._in_process:
                with self._w3() as w3:
                    estimate = int(w3.eth.estimate_gas(call))  # type: ignore[arg-type]
            else:
                call["value"] = hex(int(call.get("value", 0) or 0))
                estimate = as_int(self._rpc("eth_estimateGas", [call]))
        except Exception as exc:
            if is_unanswered(exc):
                raise ChainUnreachableError(f"no gas estimate from the node: {exc}") from exc
            revert = reverted(exc)
            if revert is not None:
                raise revert from None
            classified = classify_broadcast(exc)
            raise classified from None
        return int(estimate * self.gas_margin) + 1_000

    def build(
        self,
        to: str | None,
        data: bytes | str = b"",
        value: int = 0,
        *,
        gas: int | None = None,
        fees: Fees | None = None,
    ) -> dict[str, Any]:
        """An unsigned EIP-1559 transaction without a nonce (estimated and priced)."""
        tx: dict[str, Any] = {"value": int(value), "chainId": self.chain_id, "type": 2}
        if to is not None:
            tx["to"] = to
        payload = data if isinstance(data, str) else "0x" + bytes(data).hex()
        if payload not in ("", "0x"):
            tx["data"] = payload
        tx["gas"] = gas if gas is not None else self.estimate_gas(tx)
        tx.update((fees or self.fees()).as_tx_fields())
        return tx

    # -- sending ----------------------------------------------------------------------------

    def send(
        self,
        to: str | None,
        data: bytes | str = b"",
        value: int = 0,
        *,
        gas: int | None = None,
        fees: Fees | None = None,
    ) -> SentTransaction:
        """Estimate, price, reserve a nonce, sign, journal, broadcast. Thread-safe."""
        tx = self.build(to, data, value, gas=gas, fees=fees)
        with self._send_lock:
            nonce = self.nonces.reserve()
            return self._sign_and_broadcast({**tx, "nonce": nonce})

    def _sign_and_broadcast(
        self, tx: dict[str, Any], *, replacing: bool = False
    ) -> SentTransaction:
        nonce = int(tx["nonce"])
        try:
            signed = self.signer.sign_transaction(tx, chain_id=self.chain_id)
        except BaseException:
            if not replacing:
                self.nonces.release(nonce)
            raise
        if replacing:
            self.nonces.record_replacement(nonce, signed.hash, signed.raw)
        else:
            try:
                self.nonces.record(nonce, signed.hash, signed.raw)  # journal BEFORE broadcast
            except BaseException:  # not journaled, not sent: the nonce is free again
                self.nonces.release(nonce)
                raise
        fees = Fees(int(tx["maxFeePerGas"]), int(tx["maxPriorityFeePerGas"]))
        sent = SentTransaction(signed.hash, nonce, self.address, fees, dict(tx), signed)
        try:
            self._broadcast_raw(signed.raw)
        except Exception as exc:
            if not is_already_known(exc):
                error = self._broadcast_failed(sent, exc, replacing=replacing)
                # keep the transport failure as the cause; a refusal's message says it all
                raise error from (exc if isinstance(error, BroadcastUncertainError) else None)
        with self._journal_after_answer(sent, "sent"):  # the node holds it: never raise now
            if not replacing:
                self.nonces.sent(nonce, signed.hash)
            else:
                self.ledger.set_status(self.chain_id, self.address, signed.hash, "sent")
        log.debug("sent tx %s nonce=%s from=%s", signed.hash, nonce, self.address)
        return sent

    @contextlib.contextmanager
    def _journal_after_answer(self, sent: SentTransaction, status: str) -> Iterator[None]:
        """A journal status write after the node answered: if it fails (SQLite locked past its
        timeout, disk full) the node's answer still stands. The entry was journaled 'signed'
        before the broadcast, so it stays live and the next reconcile (or ``wait``) settles it;
        the nonce manager freed or kept the nonce in memory before it wrote."""
        try:
            yield
        except sqlite3.Error as exc:
            log.warning(
                "tx %s (nonce %s): the journal could not mark it %s (%s); it stays 'signed' "
                "until reconcile settles it",
                sent.hash, sent.nonce, status, exc,
            )  # fmt: skip

    def _broadcast_failed(
        self, sent: SentTransaction, exc: Exception, *, replacing: bool
    ) -> TransactionError:
        """Settle the journal and the nonce after a failed broadcast; the error to raise."""
        if broadcast_uncertain(exc):
            # The node may hold it: the entry stays live (reconcile / rebroadcast settle it)
            # and the nonce stays spent, or a retry would pay twice.
            if not replacing:
                self.nonces.uncertain(sent.nonce)
            log.warning("no answer to the broadcast of %s (nonce %s)", sent.hash, sent.nonce)
            return BroadcastUncertainError(
                f"no answer from the node for transaction {sent.hash} (nonce {sent.nonce}); it "
                "may have been sent: rebroadcast or wait for it, do not send it again",
                tx_hash=sent.hash,
                nonce=sent.nonce,
                sent=sent,
            )
        error = classify_broadcast(exc)
        if not replacing and is_nonce_held(exc):
            # Not a fee bump of ours: another transaction (another process sending from this
            # address) holds the nonce in the node's pool. Given back, it came round again and
            # was refused the same way for ever: move past it, as after "nonce too low".
            error = NonceError(
                f"nonce {sent.nonce} is held in the node's pool by another transaction from "
                f"{self.address}; nothing was sent, the next send uses a later nonce "
                f"({str(exc)[:200]})"
            )
        if replacing:
            with self._journal_after_answer(sent, "dropped"):
                self.ledger.set_status(self.chain_id, self.address, sent.hash, "dropped")
        elif isinstance(error, NonceError):
            with self._journal_after_answer(sent, "dropped"):
                self.nonces.taken(sent.nonce, sent.hash)
            try:
                self.nonces.resync()
            except ChainUnreachableError:
                log.warning("nonce resync after %r found the node unreachable", error)
        else:
            with self._journal_after_answer(sent, "dropped"):
                self.nonces.release(sent.nonce, sent.hash)
        return error

    async def send_async(self, *args: Any, **kwargs: Any) -> SentTransaction:
        """:meth:`send` for asyncio code (runs in a worker thread; nonces stay distinct)."""
        return await asyncio.to_thread(self.send, *args, **kwargs)

    def replace(
        self,
        sent: SentTransaction,
        *,
        fees: Fees | None = None,
        tx: Mapping[str, Any] | None = None,
    ) -> SentTransaction:
        """Re-sign ``sent`` (or ``tx``) at the same nonce with fees ≥ +10 % on both fields."""
        new_fees = fees or bump_fees(sent.fees, self.fees())
        check_replacement(sent.fees, new_fees)
        body = dict(tx) if tx is not None else dict(sent.tx)
        body.update(new_fees.as_tx_fields())
        body["nonce"] = sent.nonce
        body["chainId"] = self.chain_id
        return self._sign_and_broadcast(body, replacing=True)

    def cancel(self, sent: SentTransaction, *, fees: Fees | None = None) -> SentTransaction:
        """Replace ``sent`` with a 0-value self-transfer at the same nonce."""
        body = {"to": self.address, "value": 0, "gas": 21_000, "type": 2}
        return self.replace(sent, fees=fees, tx=body)

    # -- settling uncertain and stuck transactions ------------------------------------------

    def rebroadcast(self, sent: SentTransaction | str) -> None:
        """Send a journaled transaction's signed bytes again, e.g. after
        :class:`BroadcastUncertainError`. Idempotent: the node keeps one copy.

        Returns once the node holds it (or the chain used its nonce); raises
        :class:`BroadcastUncertainError` again without an answer, or the node's refusal
        (:class:`FeeBumpError` → :meth:`replace`). The journal entry stays live either way.
        """
        tx_hash = sent if isinstance(sent, str) else sent.hash
        entry = self.ledger.entry(self.chain_id, self.address, tx_hash)
        if entry is None:
            raise TransactionError(f"transaction {tx_hash} is not in this sender's journal")
        if entry.status not in ("signed", "sent"):  # mined, or dropped with its nonce reused
            raise TransactionError(f"transaction {tx_hash} is {entry.status}: not rebroadcast")
        try:
            self._rebroadcast(entry.raw)
        except BroadcastUncertainError as exc:
            exc.tx_hash, exc.nonce = tx_hash, entry.nonce
            raise
        except Exception as exc:
            if is_nonce_too_low(exc):
                return  # mined, or replaced: wait() tells which and closes the entry
            raise classify_broadcast(exc) from None
        if entry.status == "signed":
            self.ledger.set_status(self.chain_id, self.address, tx_hash, "sent")

    def stuck(self) -> list[SentTransaction]:
        """The newest journaled transaction at each nonce the last reconcile found stuck (the
        node refused it, e.g. its fee cap is below today's base fee), ready for
        :meth:`replace` (bumped fees) or :meth:`cancel` at the same nonce. Not a nonce the
        chain has used since, nor one replaced or cancelled since (its replacement is newer)."""
        report = self.nonces.last_report
        if report is None or not report.stuck:
            return []
        latest = self._count(self.address, "latest")  # nonces below it are mined: not stuck
        newest: dict[int, JournalEntry] = {}
        for tx_hash in report.stuck:
            entry = self.ledger.entry(self.chain_id, self.address, tx_hash)
            if entry is not None and entry.status in ("signed", "sent") and entry.nonce >= latest:
                newest[entry.nonce] = entry  # entries are listed oldest first
        stuck = []
        for nonce, entry in sorted(newest.items()):
            current = self._newest_live(nonce)
            if current is not None and current.tx_hash == entry.tx_hash:
                stuck.append(self._journaled(entry))
            # else replaced or cancelled since: the newer entry is not stuck (as far as we know)
        return stuck

    def _newest_live(self, nonce: int) -> JournalEntry | None:
        """The last journaled live entry at ``nonce``: the one that supersedes the others."""
        live = [
            entry
            for entry in self.ledger.entries_for_nonce(self.chain_id, self.address, nonce)
            if entry.status in ("signed", "sent")
        ]
        return live[-1] if live else None

    def _journaled(self, entry: JournalEntry) -> SentTransaction:
        tx = decode_transaction(entry.raw)
        fees = Fees(tx["maxFeePerGas"], tx["maxPriorityFeePerGas"])
        signed = SignedTransaction(
            raw=entry.raw,
            hash=entry.tx_hash,
            sender=self.address,
            nonce=entry.nonce,
            chain_id=int(tx["chainId"]),
            max_fee_per_gas=fees.max_fee_per_gas,
            max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
        )
        return SentTransaction(entry.tx_hash, entry.nonce, self.address, fees, tx, signed)

    # -- receipts ---------------------------------------------------------------------------

    def _receipt(self, tx_hash: str) -> Mapping[str, Any] | None:
        from web3.exceptions import TransactionNotFound

        try:
            with self._w3() as w3:
                return w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[no-any-return]
        except TransactionNotFound:
            return None

    def wait(
        self,
        sent: SentTransaction | str,
        *,
        timeout: float = 60.0,
        confirmations: int = 1,
        raise_on_revert: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Receipt:
        """Wait for ``sent`` to be mined ``confirmations`` deep (1 = in the latest block).

        A nonce used while our receipt is missing means a stranger's transaction took it — or,
        behind a load-balanced RPC, that the node answering for receipts lags the one that
        counted. So a stranger's replacement is only declared once the head has moved
        :data:`STRANGER_BLOCKS` past that first sighting (or at the deadline) with our receipt
        still missing. One of our own replacements mined is proof at once.

        A transaction whose broadcast got no answer (its entry still 'signed') is sent again,
        the same bytes, on the first poll and every :data:`RESEND_POLLS` polls until the node
        answers for it: it may never have reached the node, and nothing else would send it.
        """
        if isinstance(sent, str):  # its nonce from the journal, to see a replacement mined
            tx_hash = sent
            entry = self.ledger.entry(self.chain_id, self.address, tx_hash)
            nonce = None if entry is None else entry.nonce
        else:
            tx_hash, nonce = sent.hash, sent.nonce
        deadline = time.monotonic() + timeout
        suspected_at: int | None = None  # head when the nonce was first seen used by a stranger
        polls = 0
        while True:
            if polls % RESEND_POLLS == 0:
                self._resend_unanswered(tx_hash)
            polls += 1
            receipt = self._receipt(tx_hash)
            head: int | None = None
            if receipt is None and nonce is not None:
                # a sibling at the same nonce (one of our replacements) may have been mined
                for entry in self.ledger.entries_for_nonce(self.chain_id, self.address, nonce):
                    if entry.tx_hash.lower() == tx_hash.lower():
                        continue
                    other = self._receipt(entry.tx_hash)
                    if other is not None:
                        self.nonces.confirmed(entry.tx_hash)
                        raise TransactionReplacedError(
                            f"transaction {tx_hash} was replaced by {entry.tx_hash}",
                            tx_hash=tx_hash,
                            replacement_hash=entry.tx_hash,
                        )
                if self._count(self.address, "latest") > nonce:
                    # nonce used, our hash not mined (yet, as far as this answer goes)
                    receipt = self._receipt(tx_hash)
                    if receipt is None:
                        head = self._head()
                        suspected_at = head if suspected_at is None else suspected_at
                        if (
                            self._in_process
                            or head - suspected_at >= STRANGER_BLOCKS
                            or time.monotonic() >= deadline
                        ):
                            raise TransactionReplacedError(
                                f"transaction {tx_hash} was replaced (nonce {nonce} used by "
                                "another transaction)",
                                tx_hash=tx_hash,
                            )
            if receipt is not None:
                depth = self._head() - int(receipt["blockNumber"]) + 1
                if depth >= confirmations:
                    return self._finish(tx_hash, receipt, raise_on_revert)
            if time.monotonic() >= deadline:
                raise ReceiptTimeoutError(
                    f"no receipt with {confirmations} confirmation(s) for {tx_hash} "
                    f"within {timeout:g}s",
                    tx_hash=tx_hash,
                )
            sleep(self.poll_interval)

    def _resend_unanswered(self, tx_hash: str) -> None:
        """wait()'s part in settling a broadcast that got no answer (it may never have reached
        the node): while its entry is still 'signed' and the newest live one at its nonce (never
        an original a replacement or cancel superseded), send the same bytes again. No answer
        again, or a refusal, and polling goes on; "already known" marks it sent."""
        entry = self.ledger.entry(self.chain_id, self.address, tx_hash)
        if entry is None or entry.status != "signed":
            return
        newest = self._newest_live(entry.nonce)
        if newest is None or newest.tx_hash != entry.tx_hash:
            return
        try:
            self.rebroadcast(tx_hash)
        except (TransactionError, sqlite3.Error) as exc:
            log.debug("rebroadcast of %s while waiting for it: %s", tx_hash, exc)

    def _head(self) -> int:
        with self._w3() as w3:
            return int(w3.eth.block_number)

    def _finish(self, tx_hash: str, raw: Mapping[str, Any], raise_on_revert: bool) -> Receipt:
        self.nonces.confirmed(tx_hash)
        contract = raw.get("contractAddress")
        block_hash = raw["blockHash"]
        receipt = Receipt(
            tx_hash=tx_hash,
            block_number=int(raw["blockNumber"]),
            block_hash=block_hash
            if isinstance(block_hash, str)
            else "0x" + bytes(block_hash).hex(),
            status=int(raw["status"]),
            gas_used=int(raw["gasUsed"]),
            effective_gas_price=int(raw.get("effectiveGasPrice", 0) or 0),
            contract_address=str(contract) if contract else None,
            logs=tuple(raw.get("logs", ())),
            raw=raw,
        )
        if receipt.status == 0 and raise_on_revert:
            raise self._explain_revert(tx_hash, receipt.block_number)
        return receipt

    def _explain_revert(self, tx_hash: str, block: int) -> TransactionRevertedError:
        with self._w3() as w3:
            tx = w3.eth.get_transaction(tx_hash)
        call = {
            "from": tx["from"],
            "to": tx.get("to"),
            "data": tx.get("input"),
            "value": tx["value"],
        }
        try:
            with self._w3() as w3:
                w3.eth.call(call, block - 1 if block > 0 else "latest")
        except Exception as exc:
            revert = reverted(exc, tx_hash)
            if revert is not None:
                return revert
        return TransactionRevertedError(f"transaction {tx_hash} reverted", tx_hash=tx_hash)

    def transact(
        self,
        to: str | None,
        data: bytes | str = b"",
        value: int = 0,
        *,
        gas: int | None = None,
        timeout: float = 60.0,
        confirmations: int = 1,
    ) -> Receipt:
        """:meth:`send` then :meth:`wait`."""
        sent = self.send(to, data, value, gas=gas)
        return self.wait(sent, timeout=timeout, confirmations=confirmations)
