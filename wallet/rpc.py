"""The JSON-RPC transport to a node, and what its answer (or its silence) means.

* :class:`Coalescer`: keep-alive HTTP calls; concurrent callers leave as one JSON-RPC batch.
* :func:`send_raw_batch` posts many ``eth_sendRawTransaction`` in one JSON-RPC batch.
* Refused vs unanswered: :func:`classify_broadcast` maps a node's refusal to the wallet's error;
  :func:`broadcast_uncertain` tells a broadcast that may have reached the pool (no answer, or an
  error answer that is not one of :data:`_REFUSALS`) from a refusal.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

from wallet.errors import (
    BroadcastError,
    FeeBumpError,
    InsufficientFundsError,
    NonceError,
    TransactionError,
)

__all__ = [
    "Coalescer",
    "Unanswered",
    "as_int",
    "broadcast_uncertain",
    "classify_broadcast",
    "is_already_known",
    "is_nonce_held",
    "is_nonce_too_low",
    "is_unanswered",
    "send_raw_batch",
]


def as_int(value: Any) -> int:
    """A JSON-RPC quantity (hex string) or an int from the in-process chain, as an int."""
    return int(value, 16) if isinstance(value, str) else int(value)


def classify_broadcast(exc: BaseException) -> TransactionError:
    """The wallet error for a node's refusal (insufficient funds, underpriced, nonce, other)."""
    text = str(exc)
    low = text.lower()
    if "insufficient funds" in low or "not have enough balance" in low:
        return InsufficientFundsError("insufficient funds for gas x price + value")
    if "underpriced" in low:
        return FeeBumpError(f"node refused the replacement: {text[:200]}")
    if is_nonce_too_low(exc):
        return NonceError(f"node refused the nonce: {text[:200]}")
    return BroadcastError(f"node refused the transaction: {text[:200]}")


#: py-evm / eth-tester: "Invalid transaction nonce: Expected 1, but got 0"
_EXPECTED_NONCE = re.compile(r"invalid transaction nonce: expected (\d+), but got (\d+)")


def is_nonce_too_low(exc: BaseException) -> bool:
    """The node refused a nonce the chain has already used ("nonce too low", or the in-process
    chain's "Expected X, but got Y" with Y < X; Y > X is a gap, not a used nonce)."""
    low = str(exc).lower()
    if "nonce too low" in low:
        return True
    expected = _EXPECTED_NONCE.search(low)
    return expected is not None and int(expected[2]) < int(expected[1])


def is_nonce_held(exc: BaseException) -> bool:
    """The node's pool holds another transaction at this nonce, which ours did not outbid
    ("replacement transaction underpriced"): for a fresh send, the nonce is taken."""
    return "replacement transaction underpriced" in str(exc).lower()


def is_already_known(exc: BaseException) -> bool:
    """The node already holds this transaction: a broadcast that succeeded before."""
    low = str(exc).lower()
    return "already known" in low or "already imported" in low or "known transaction" in low


class _RpcError(Exception):
    """A JSON-RPC error object; ``data`` carries revert data when the node sent it."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.data = data


class Unanswered(Exception):
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
    "gas too high",  # anvil: "intrinsic gas too high -- tx.gas_limit > env.block.gas_limit"
    "gas_limit > env.block.gas_limit",
    "failed to decode",  # anvil: a transaction it cannot parse never entered its pool
    "txpool is full",
    "pool is full",
    "invalid sender",
    "invalid signature",
    "chain id",
    "oversized data",
    "transaction type not supported",
    "rlp",
)


def is_unanswered(exc: BaseException) -> bool:
    """No answer from the node (vs an error answer)."""
    import httpx

    # OSError covers ConnectionError, TimeoutError and ChainUnreachableError
    return isinstance(exc, (Unanswered, httpx.TransportError, OSError))


def broadcast_uncertain(exc: BaseException) -> bool:
    """A broadcast that may have reached the pool: no answer, or an error answer that does not
    say it refused (:data:`_REFUSALS`; the in-process chain's exceptions are refusals)."""
    if isinstance(exc, _RpcError):
        low = str(exc).lower()
        return not any(refusal in low for refusal in _REFUSALS)
    return is_unanswered(exc)


_http_local = threading.local()


class Coalescer:
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
                raise Unanswered(f"HTTP {response.status_code} from the RPC endpoint")
            body = response.json()
        except Exception as exc:
            # no answer for the whole batch: each waiter learns it may have been processed
            lost = exc if isinstance(exc, Unanswered) else Unanswered(f"no answer: {exc!r}")
            for p in batch:
                p.fail(lost)
            return
        items = body if isinstance(body, list) else [body]
        by_id = {item.get("id"): item for item in items if isinstance(item, dict)}
        for i, p in enumerate(batch):
            item = by_id.get(i) or (items[0] if len(batch) == 1 and items else None)
            if not isinstance(item, dict) or ("result" not in item and "error" not in item):
                p.fail(Unanswered("the node returned no answer for this request"))
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
