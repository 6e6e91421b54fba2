"""Sending transactions: fees, gas, nonces, broadcast, receipts, replacement and cancellation.

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
  bytes, idempotent) or :meth:`Sender.wait` — never by sending the payment again.

* Fees: ``eth_feeHistory`` → ``maxFeePerGas = 2 x next base fee + tip`` where the tip is the
  median 50th-percentile reward of recent blocks (floored at ``min_tip``). A node without a
  working fee history falls back to the latest block's base fee.
* Gas: ``eth_estimateGas`` x ``gas_margin`` (default 1.2). A revert during estimation is
  decoded against the known ABIs (TestToken, PaymentRouter, OpenZeppelin errors,
  ``Error(string)``, ``Panic(uint256)``) into :class:`TransactionRevertedError` *before* a
  nonce is reserved, so failing calls cost neither gas nor a nonce.
* Receipts: :meth:`Sender.wait` polls with a timeout and a confirmation depth, and detects a
  transaction replaced by another with the same nonce (:class:`TransactionReplacedError`).
* Replacement: :func:`bump_fees` implements geth's rule — *both* fee fields at least +10 % — and
  :func:`check_replacement` enforces it (anvil would accept less; mainnet nodes will not).
* :func:`send_raw_batch` posts many ``eth_sendRawTransaction`` in one JSON-RPC batch.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eth_abi import decode as abi_decode
from eth_hash.auto import keccak

from wallet.errors import (
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
from wallet.nonces import JournalEntry, NonceLedger, NonceManager
from wallet.signing import SignedTransaction, Signer, decode_transaction

if TYPE_CHECKING:
    from wallet.chain import Chain

__all__ = [
    "Fees",
    "Receipt",
    "Sender",
    "SentTransaction",
    "bump_fees",
    "check_replacement",
    "decode_revert",
    "send_raw_batch",
    "suggest_fees",
]

log = logging.getLogger(__name__)
GWEI = 10**9
REPLACEMENT_BUMP_PERCENT = 10


# --- fees ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fees:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    def as_tx_fields(self) -> dict[str, int]:
        return {
            "maxFeePerGas": self.max_fee_per_gas,
            "maxPriorityFeePerGas": self.max_priority_fee_per_gas,
        }


def _as_int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def suggest_fees(chain: Chain, *, min_tip: int = GWEI, blocks: int = 5) -> Fees:
    """EIP-1559 fees: ``maxFee = 2 x baseFee(next block) + tip``."""
    base_fee: int | None = None
    tip = min_tip
    try:
        history = chain.request("eth_feeHistory", [hex(blocks), "latest", [50]])
        base_fees = history.get("baseFeePerGas") or []
        if base_fees:
            base_fee = _as_int(base_fees[-1])  # the last entry is the *next* block's base fee
        rewards = [_as_int(r[0]) for r in history.get("reward") or [] if r]
        if rewards:
            tip = max(min_tip, int(statistics.median(rewards)))
    except Exception:  # eth-tester's feeHistory is broken; the block below suffices
        base_fee = None
    with chain.lock:
        block = chain.w3.eth.get_block("latest")
    latest = int(block.get("baseFeePerGas", 0) or 0)
    # The next base fee is within 12.5 % of the latest block's. anvil keeps serving pre-revert
    # fee history after evm_revert, so the block itself is the floor we trust.
    floor = latest - latest // 8
    base_fee = floor if base_fee is None else max(base_fee, floor)
    return Fees(2 * base_fee + tip, tip)


def _at_least_bumped(old: int, percent: int) -> int:
    # ceil(old * (100 + percent) / 100), integer arithmetic only
    return -(-old * (100 + percent) // 100)


def bump_fees(
    old: Fees, market: Fees | None = None, *, percent: int = REPLACEMENT_BUMP_PERCENT
) -> Fees:
    """Fees for a replacement: ≥ ``percent`` % more on *both* fields, and never below market."""
    tip = _at_least_bumped(old.max_priority_fee_per_gas, percent)
    fee = _at_least_bumped(old.max_fee_per_gas, percent)
    if market is not None:
        tip = max(tip, market.max_priority_fee_per_gas)
        fee = max(fee, market.max_fee_per_gas)
    return Fees(max(fee, tip), tip)


def check_replacement(old: Fees, new: Fees, *, percent: int = REPLACEMENT_BUMP_PERCENT) -> None:
    """geth's txpool rule: a replacement must raise both fee caps by at least ``percent`` %."""
    need_fee = _at_least_bumped(old.max_fee_per_gas, percent)
    need_tip = _at_least_bumped(old.max_priority_fee_per_gas, percent)
    if new.max_fee_per_gas < need_fee or new.max_priority_fee_per_gas < need_tip:
        raise FeeBumpError(
            f"replacement underpriced: need maxFeePerGas ≥ {need_fee} and "
            f"maxPriorityFeePerGas ≥ {need_tip} (+{percent}% on both)"
        )


# --- revert decoding -------------------------------------------------------------------------


_PANIC_CODES = {
    0x01: "assertion failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division by zero",
    0x21: "invalid enum value",
    0x31: "pop on empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory",
    0x51: "call to an uninitialised function",
}


def _abi_type(param: Mapping[str, Any]) -> str:
    kind = str(param["type"])
    if kind.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in param.get("components", []))
        return f"({inner}){kind[5:]}"
    return kind


@functools.cache
def _known_errors() -> dict[bytes, tuple[str, tuple[str, ...], tuple[str, ...]]]:
    table: dict[bytes, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}
    try:
        from contracts import load_artifact
    except ImportError:  # pragma: no cover - contracts package always ships with wallet
        return table
    for name in ("TestToken", "PaymentRouter"):
        try:
            abi = load_artifact(name).abi
        except Exception:  # a missing artifact just means fewer decodable names
            log.debug("no ABI for %s: its custom errors will not be decoded", name)
        else:
            table.update(errors_from_abi(abi))
    return table


def errors_from_abi(
    abi: Sequence[Mapping[str, Any]],
) -> dict[bytes, tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """``selector → (name, arg types, arg names)`` for every ``error`` in ``abi``."""
    out: dict[bytes, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}
    for item in abi:
        if item.get("type") != "error":
            continue
        types = tuple(_abi_type(i) for i in item.get("inputs", []))
        names = tuple(str(i.get("name", "")) for i in item.get("inputs", []))
        signature = f"{item['name']}({','.join(types)})"
        out[keccak(signature.encode())[:4]] = (str(item["name"]), types, names)
    return out


def decode_revert(
    data: bytes | str | None, extra_abi: Sequence[Mapping[str, Any]] | None = None
) -> tuple[str | None, tuple[Any, ...], str]:
    """Revert data → ``(error name, args, human message)``; unknown data keeps the selector."""
    if isinstance(data, str):
        text = data[2:] if data[:2] in ("0x", "0X") else data
        try:
            data = bytes.fromhex(text)
        except ValueError:
            return None, (), f"reverted: {text[:200]}"
    if not data:
        return None, (), "reverted without a reason"
    sel, body = data[:4], data[4:]
    if sel == bytes.fromhex("08c379a0"):
        with contextlib.suppress(Exception):
            (reason,) = abi_decode(["string"], body)
            return "Error", (reason,), f"reverted: {reason}"
    if sel == bytes.fromhex("4e487b71"):
        with contextlib.suppress(Exception):
            (code,) = abi_decode(["uint256"], body)
            text = _PANIC_CODES.get(int(code), f"code 0x{int(code):x}")
            return "Panic", (int(code),), f"panicked: {text}"
    table = dict(_known_errors())
    if extra_abi:
        table.update(errors_from_abi(extra_abi))
    known = table.get(sel)
    if known is not None:
        name, types, names = known
        try:
            decoded = abi_decode(list(types), body)
        except Exception:
            return name, (), f"reverted with {name} (undecodable arguments)"
        args = tuple(
            _checksummed(v) if t == "address" else v for t, v in zip(types, decoded, strict=True)
        )
        shown = ", ".join(
            f"{n}={_show(v)}" if n else _show(v) for n, v in zip(names, args, strict=True)
        )
        return name, args, f"reverted with {name}({shown})"
    return None, (), f"reverted with unknown error 0x{sel.hex()}"


def _checksummed(value: Any) -> Any:
    from wallet.keys import to_checksum_address

    return to_checksum_address(value) if isinstance(value, str) else value


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
        from wallet.keys import to_checksum_address

        return to_checksum_address(value)
    return str(value)


def revert_data_of(exc: BaseException) -> str | None:
    """Pull revert data out of whatever web3 / eth-tester / anvil raised."""
    data = getattr(exc, "data", None)
    if isinstance(data, dict):
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        return data
    if isinstance(data, bytes):
        return "0x" + data.hex()
    for arg in getattr(exc, "args", ()):
        if isinstance(arg, bytes):
            return "0x" + arg.hex()
        if isinstance(arg, str) and arg.startswith("0x") and len(arg) >= 10:
            return arg
        if isinstance(arg, dict) and isinstance(arg.get("data"), str):
            return str(arg["data"])
        if isinstance(arg, str) and ("reverted: b'" in arg or 'reverted: b"' in arg):
            # eth-tester puts the repr of the revert bytes in its message
            literal = arg.split("reverted: ", 1)[1]
            with contextlib.suppress(ValueError, SyntaxError):
                value = ast.literal_eval(literal)
                if isinstance(value, bytes):
                    return "0x" + value.hex()
    return None


def _reverted(exc: BaseException, tx_hash: str | None = None) -> TransactionRevertedError | None:
    data = revert_data_of(exc)
    text = str(exc)
    if data is None and "revert" not in text.lower():
        return None
    if data is None:
        return TransactionRevertedError(text[:300], tx_hash=tx_hash)
    name, args, message = decode_revert(data)
    return TransactionRevertedError(message, name=name, args=args, data=data, tx_hash=tx_hash)


# --- broadcast error classification ----------------------------------------------------------


def _classify_broadcast(exc: BaseException) -> TransactionError:
    text = str(exc)
    low = text.lower()
    if "insufficient funds" in low or "not have enough balance" in low:
        return InsufficientFundsError("insufficient funds for gas x price + value")
    if "underpriced" in low:
        return FeeBumpError(f"node refused the replacement: {text[:200]}")
    if "nonce too low" in low or ("invalid transaction nonce" in low and "expected" in low):
        return NonceError(f"node refused the nonce: {text[:200]}")
    return BroadcastError(f"node refused the transaction: {text[:200]}")


def _is_already_known(exc: BaseException) -> bool:
    low = str(exc).lower()
    return "already known" in low or "already imported" in low or "known transaction" in low


class _RpcError(Exception):
    """A JSON-RPC error object; ``data`` carries revert data when the node sent it."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.data = data


class _Unanswered(Exception):
    """The request got no JSON-RPC answer: the node may or may not have processed it."""


#: How nodes (go-ethereum, reth, anvil, Nethermind, Erigon) word an error answer to
#: ``eth_sendRawTransaction`` that refused the transaction for sure. Any other error answer —
#: "request timed out" (-32002), an internal error (-32603), a gateway's rate limit — can come
#: after the node took the transaction into its pool, so it counts as no answer.
_REFUSALS = (
    "nonce too low",
    "nonce too high",
    "invalid transaction nonce",
    "already known",
    "already imported",
    "known transaction",
    "insufficient funds",
    "not have enough balance",
    "underpriced",
    "intrinsic gas too low",
    "gas too low",
    "base fee",
    "fee cap",
    "priority fee",
    "exceeds the configured cap",
    "exceeds block gas limit",
    "txpool is full",
    "pool is full",
    "invalid sender",
    "invalid signature",
    "chain id",
    "oversized data",
    "transaction type not supported",
    "rlp",
)


def _is_unanswered(exc: BaseException) -> bool:
    """No answer from the node (vs an error answer)."""
    import httpx

    # OSError covers ConnectionError, TimeoutError and ChainUnreachableError
    return isinstance(exc, (_Unanswered, httpx.TransportError, OSError))


def _broadcast_uncertain(exc: BaseException) -> bool:
    """A broadcast that may have reached the pool: no answer, or an error answer that does not
    say it refused (:data:`_REFUSALS`; the in-process chain's exceptions are refusals)."""
    if isinstance(exc, _RpcError):
        low = str(exc).lower()
        return not any(refusal in low for refusal in _REFUSALS)
    return _is_unanswered(exc)


_http_local = threading.local()


class _Coalescer:
    """Turns concurrent JSON-RPC calls into batches without adding latency to a lone caller.

    A caller that finds fewer than ``max_inflight`` batches in flight becomes a flusher: it takes
    everything queued (its own call included), posts it as one batch and hands each waiter its
    result. Callers that arrive meanwhile queue up and ride the next batch. A lone caller pays
    no extra latency; there is no background thread.
    """

    def __init__(self, url: str, max_batch: int = 200, max_inflight: int = 1) -> None:
        self.url = url
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._inflight = 0

    def call(self, method: str, params: list[Any]) -> Any:
        pending = _Pending(method, params)
        with self._cond:
            self._queue.append(pending)
        while True:
            with self._cond:
                while self._inflight >= self.max_inflight and not pending.done.is_set():
                    self._cond.wait()
                if pending.done.is_set():
                    return pending.result()
                self._inflight += 1
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                if batch:
                    self._flush(batch)
            finally:
                with self._cond:
                    self._inflight -= 1
                    self._cond.notify_all()

    def _flush(self, batch: list[_Pending]) -> None:
        payload = [
            {"jsonrpc": "2.0", "id": i, "method": p.method, "params": p.params}
            for i, p in enumerate(batch)
        ]
        try:
            response = _http_client().post(self.url, json=payload if len(batch) > 1 else payload[0])
            if response.status_code == 429 or response.status_code >= 500:
                # a rate limiter or gateway answered, not the node (a 502/504 may come after
                # the node took the request)
                raise _Unanswered(f"HTTP {response.status_code} from the RPC endpoint")
            body = response.json()
        except Exception as exc:
            # no answer for the whole batch: each waiter learns it may have been processed
            lost = exc if isinstance(exc, _Unanswered) else _Unanswered(f"no answer: {exc!r}")
            for p in batch:
                p.fail(lost)
            return
        items = body if isinstance(body, list) else [body]
        by_id = {item.get("id"): item for item in items if isinstance(item, dict)}
        for i, p in enumerate(batch):
            item = by_id.get(i) or (items[0] if len(batch) == 1 and items else None)
            if not isinstance(item, dict) or ("result" not in item and "error" not in item):
                p.fail(_Unanswered("the node returned no answer for this request"))
            elif item.get("error") is not None:
                error = item["error"]
                message = error.get("message", error) if isinstance(error, dict) else error
                data = error.get("data") if isinstance(error, dict) else None
                p.fail(_RpcError(str(message), data))
            else:
                p.succeed(item.get("result"))


class _Pending:
    __slots__ = ("_error", "_value", "done", "method", "params")

    def __init__(self, method: str, params: list[Any]) -> None:
        self.method = method
        self.params = params
        self.done = threading.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def succeed(self, value: Any) -> None:
        self._value = value
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self.done.set()

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


def _http_client() -> Any:
    import httpx

    client = getattr(_http_local, "client", None)
    if client is None:
        client = httpx.Client(timeout=30.0)
        _http_local.client = client
    return client


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
        self._coalescer = None if self._in_process else _Coalescer(str(chain.rpc_url))
        self.ledger = ledger if ledger is not None else NonceLedger()
        self.nonces = NonceManager(
            self.ledger,
            self.chain_id,
            self.address,
            get_count=self._count,
            broadcast=self._rebroadcast,
        )

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
        go out together as one JSON-RPC batch (see :class:`_Coalescer`)."""
        assert self._coalescer is not None
        return self._coalescer.call(method, params)

    def _count(self, address: str, block: str) -> int:
        if not self._in_process:
            try:
                return _as_int(self._rpc("eth_getTransactionCount", [address, block]))
            except _Unanswered as exc:
                raise ChainUnreachableError(f"no transaction count from the node: {exc}") from exc
        with self._w3() as w3:
            return int(w3.eth.get_transaction_count(address, block))

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
            if _is_already_known(exc):
                return
            if _broadcast_uncertain(exc):
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
                estimate = _as_int(self._rpc("eth_estimateGas", [call]))
        except Exception as exc:
            if _is_unanswered(exc):
                raise ChainUnreachableError(f"no gas estimate from the node: {exc}") from exc
            reverted = _reverted(exc)
            if reverted is not None:
                raise reverted from None
            classified = _classify_broadcast(exc)
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
            self.ledger.record(
                self.chain_id, self.address, nonce, signed.hash, signed.raw, nonce + 1
            )
        else:
            self.nonces.record(nonce, signed.hash, signed.raw)  # journal BEFORE broadcast
        fees = Fees(int(tx["maxFeePerGas"]), int(tx["maxPriorityFeePerGas"]))
        sent = SentTransaction(signed.hash, nonce, self.address, fees, dict(tx), signed)
        try:
            self._broadcast_raw(signed.raw)
        except Exception as exc:
            if not _is_already_known(exc):
                error = self._broadcast_failed(sent, exc, replacing=replacing)
                # keep the transport failure as the cause; a refusal's message says it all
                raise error from (exc if isinstance(error, BroadcastUncertainError) else None)
        if not replacing:
            self.nonces.sent(nonce, signed.hash)
        else:
            self.ledger.set_status(self.chain_id, self.address, signed.hash, "sent")
        log.debug("sent tx %s nonce=%s from=%s", signed.hash, nonce, self.address)
        return sent

    def _broadcast_failed(
        self, sent: SentTransaction, exc: Exception, *, replacing: bool
    ) -> TransactionError:
        """Settle the journal and the nonce after a failed broadcast; the error to raise."""
        if _broadcast_uncertain(exc):
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
        error = _classify_broadcast(exc)
        if replacing:
            self.ledger.set_status(self.chain_id, self.address, sent.hash, "dropped")
        elif isinstance(error, NonceError):
            self.nonces.taken(sent.nonce, sent.hash)
            try:
                self.nonces.resync()
            except ChainUnreachableError:
                log.warning("nonce resync after %r found the node unreachable", error)
        else:
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
            if "nonce too low" in str(exc).lower():
                return  # mined, or replaced: wait() tells which and closes the entry
            raise _classify_broadcast(exc) from None
        if entry.status == "signed":
            self.ledger.set_status(self.chain_id, self.address, tx_hash, "sent")

    def stuck(self) -> list[SentTransaction]:
        """The newest journaled transaction at each nonce the last reconcile found stuck (the
        node refused it, e.g. its fee cap is below today's base fee), ready for
        :meth:`replace` (bumped fees) or :meth:`cancel` at the same nonce."""
        report = self.nonces.last_report
        if report is None:
            return []
        newest: dict[int, JournalEntry] = {}
        for tx_hash in report.stuck:
            entry = self.ledger.entry(self.chain_id, self.address, tx_hash)
            if entry is not None and entry.status in ("signed", "sent"):
                newest[entry.nonce] = entry  # entries are listed oldest first
        return [self._journaled(e) for _, e in sorted(newest.items())]

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
        """Wait for ``sent`` to be mined ``confirmations`` deep (1 = in the latest block)."""
        tx_hash = sent if isinstance(sent, str) else sent.hash
        nonce = None if isinstance(sent, str) else sent.nonce
        deadline = time.monotonic() + timeout
        while True:
            receipt = self._receipt(tx_hash)
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
                    # nonce used, our hash not mined, replacement not ours to know
                    receipt = self._receipt(tx_hash)
                    if receipt is None:
                        raise TransactionReplacedError(
                            f"transaction {tx_hash} was replaced (nonce {nonce} used by another "
                            "transaction)",
                            tx_hash=tx_hash,
                        )
            if receipt is not None:
                with self._w3() as w3:
                    head = int(w3.eth.block_number)
                depth = head - int(receipt["blockNumber"]) + 1
                if depth >= confirmations:
                    return self._finish(tx_hash, receipt, raise_on_revert)
            if time.monotonic() >= deadline:
                raise ReceiptTimeoutError(
                    f"no receipt with {confirmations} confirmation(s) for {tx_hash} "
                    f"within {timeout:g}s",
                    tx_hash=tx_hash,
                )
            sleep(self.poll_interval)

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
            reverted = _reverted(exc, tx_hash)
            if reverted is not None:
                return reverted
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


# --- raw batches -----------------------------------------------------------------------------


def send_raw_batch(
    rpc_url: str, raws: Sequence[bytes | str], *, timeout: float = 30.0
) -> list[Any]:
    """POST one JSON-RPC batch of ``eth_sendRawTransaction``; per-item hash or error dict.

    web3.py's ``batch_requests`` is read-only, so this builds the batch by hand.
    """
    import httpx

    payload = [
        {
            "jsonrpc": "2.0",
            "id": i,
            "method": "eth_sendRawTransaction",
            "params": [raw if isinstance(raw, str) else "0x" + raw.hex()],
        }
        for i, raw in enumerate(raws)
    ]
    client: httpx.Client = _http_client()
    response = client.post(rpc_url, json=payload, timeout=timeout)
    response.raise_for_status()
    body = response.json()
    if isinstance(body, dict):  # a batch-level error
        raise BroadcastError(f"batch refused: {body.get('error', body)}")
    by_id = {item.get("id"): item for item in body}
    return [by_id.get(i, {}).get("result", by_id.get(i, {}).get("error")) for i in range(len(raws))]
