"""The one module that knows how to reach a chain.

Three backends behind one :class:`Chain` object, picked by configuration:

* ``tester`` — in-process eth-tester/py-evm, the embedded default; zero set-up, no Node.
* ``anvil`` — a real anvil spawned from ``node_modules`` on a free 127.0.0.1 port, readiness
  checked, killed when the chain is closed or this process dies (``PR_SET_PDEATHSIG``).
* ``rpc`` — any JSON-RPC URL.

Nothing outside this module imports a web3 provider class or checks which backend runs; code
that needs test-only powers (snapshots, time travel, funding) calls the methods here, which
raise :class:`UnsupportedOperationError` on a plain RPC endpoint.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import functools
import http.client
import itertools
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import HexStr
from web3 import EthereumTesterProvider, HTTPProvider, Web3
from web3.exceptions import BlockNotFound, Web3Exception
from web3.types import Wei

from wallet.chain_config import ChainBackend, ChainConfig  # re-exported: see that module
from wallet.errors import (
    AnvilNotFoundError,
    AnvilStartError,
    ChainIdMismatchError,
    ChainUnreachableError,
    UnknownBackendError,
    UnsupportedOperationError,
)

__all__ = [
    "DEV_MNEMONIC",
    "LOCAL_DEV_CHAIN_IDS",
    "Chain",
    "ChainBackend",
    "ChainConfig",
    "anvil_binary",
    "connect",
    "dev_accounts",
    "free_port",
    "rpc_origin",
]

#: The well-known development mnemonic: anvil and our tester backend derive the same funded
#: accounts from it (m/44'/60'/0'/0/i), so tests and the demo behave alike on both.
DEV_MNEMONIC = "test test test test test test test test test test test junk"
_DEV_ACCOUNTS = 10
ANVIL_CHAIN_ID = 31337
#: Chain ids of local development nodes (anvil/hardhat, ganache/geth --dev): the only chains on
#: which the public :data:`DEV_MNEMONIC` keys may own anything.
LOCAL_DEV_CHAIN_IDS = frozenset({ANVIL_CHAIN_ID, 1337})
_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def anvil_binary(explicit: str | None = None) -> Path:
    """Locate anvil: an explicit path, else ``FOLLOWPAY_ANVIL``, else the npm platform package.

    A path that is named but unusable is an error, never silently replaced by another binary.
    """
    named = explicit or os.environ.get("FOLLOWPAY_ANVIL")
    if named:
        path = Path(named)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise AnvilNotFoundError(f"anvil binary not found or not executable at {named}")
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    modules = _PROJECT_ROOT / "node_modules"
    candidates = [
        modules / "@foundry-rs" / f"anvil-{platform.system().lower()}-{arch}" / "bin" / "anvil",
        modules / ".bin" / "anvil",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    on_path = shutil.which("anvil")
    if on_path:
        return Path(on_path)
    raise AnvilNotFoundError(
        "anvil binary not found: run `npm ci` (it comes from @foundry-rs/anvil) "
        "or set FOLLOWPAY_ANVIL to its path"
    )


def _require_free(port: int) -> None:
    """Raise :class:`AnvilStartError` when something already listens on 127.0.0.1:``port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as anvil binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise AnvilStartError(
                f"cannot start anvil: port {port} on 127.0.0.1 is in use ({exc.strerror}); "
                "stop what listens there or choose another port"
            ) from None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if platform.system() == "Linux":
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphan even after kill -9 of us


class _AnvilProcess:
    """A spawned anvil. Owned by one :class:`Chain`; stopped by :meth:`stop`."""

    def __init__(self, config: ChainConfig) -> None:
        binary = anvil_binary(config.anvil_path)
        self.port = config.anvil_port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if config.anvil_port:
            _require_free(self.port)  # else the probe below may reach whoever holds the port
        args = [
            str(binary),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--chain-id",
            str(ANVIL_CHAIN_ID),
            "--mnemonic",
            DEV_MNEMONIC,
            "--accounts",
            str(_DEV_ACCOUNTS),
            "--silent",
            *config.anvil_args,
        ]
        if config.anvil_block_time:
            args += ["--block-time", str(config.anvil_block_time)]
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                preexec_fn=_die_with_parent,  # PDEATHSIG, see above
            )
        except OSError as exc:
            raise AnvilStartError(f"could not start anvil at {binary}: {exc.strerror}") from None
        self._wait_ready(config.startup_timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Until our anvil answers. An answer only counts while our process is alive: a port
        someone else holds makes anvil exit, and that server's answer is not our anvil's."""
        deadline = time.monotonic() + timeout
        payload = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                answered = False
                with contextlib.suppress(httpx.HTTPError):
                    answered = client.post(self.url, json=payload).status_code == 200
                self._raise_if_exited()
                if answered:
                    return
                time.sleep(0.05)
        self.stop()
        raise AnvilStartError(f"anvil did not answer on {self.url} within {timeout:.0f}s")

    def _raise_if_exited(self) -> None:
        proc = self._proc
        assert proc is not None
        if proc.poll() is None:
            return
        self._proc = None
        err = b""
        if proc.stderr:
            err = proc.stderr.read()
            proc.stderr.close()
        lines = [line.strip() for line in err.decode(errors="replace").splitlines()]
        reason = next((line for line in reversed(lines) if line), f"exit status {proc.returncode}")
        raise AnvilStartError(f"anvil exited during start-up on port {self.port}: {reason[:300]}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None


def rpc_origin(url: str) -> str:
    """What an error message may say about an RPC URL: scheme, host and port. Credentials ride
    in the rest (``user:pass@``, Infura/Alchemy keys in the path, ``?key=`` queries)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}"


class _RpcUrlRedaction(logging.Filter):
    """web3's HTTP provider logs its endpoint URI at DEBUG: a provider key in the URL must not
    reach a log, so the URI arguments of its records are cut to :func:`rpc_origin`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                rpc_origin(arg) if isinstance(arg, str) and arg.startswith("http") else arg
                for arg in record.args
            )
        return True


class _RequestPathRedaction(logging.Filter):
    """urllib3 (under web3's provider) logs each request line at DEBUG, path included: the
    path of an RPC URL carries the provider key (``/v3/<key>``), so it is withheld."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                "/[path withheld]" if isinstance(arg, str) and arg.startswith("/") else arg
                for arg in record.args
            )
        return True


for _logger in (
    "web3.providers.HTTPProvider",
    "web3._utils.http_session_manager.HTTPSessionManager",
):
    logging.getLogger(_logger).addFilter(_RpcUrlRedaction())
logging.getLogger("urllib3.connectionpool").addFilter(_RequestPathRedaction())


def _error_answer(data: bytes) -> dict[str, Any] | None:
    """A JSON-RPC error object in a response body, else None."""
    try:
        answer = json.loads(data)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) and "error" in answer else None


class _JsonRpc:
    """Raw JSON-RPC over one keep-alive HTTP connection (``http.client``): what the indexer's
    polling path runs on. web3's provider costs ~0.85 ms of CPU per call here (request
    middleware, ``requests``), this ~0.2 ms; a poll is a call or two. Not thread-safe: the
    caller holds :attr:`Chain.lock`. A connection the node dropped is reopened once."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UnknownBackendError(
                f"not an http(s) RPC URL (scheme {parts.scheme!r})", param="rpc_url"
            )
        self.origin = rpc_origin(url)  # what errors may say about the URL
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout = timeout
        self._headers = {"Content-Type": "application/json"}
        if parts.username is not None:
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
        self._conn: http.client.HTTPConnection | None = None
        self._ids = itertools.count(1)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = kind(self._host, self._port, timeout=self._timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def post(self, payload: Any) -> Any:
        body = json.dumps(payload, separators=(",", ":"))
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request("POST", self._path, body, self._headers)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()  # the node closed an idle keep-alive connection: reopen once
                if attempt == 2:
                    raise ChainUnreachableError(
                        f"chain RPC at {self.origin} dropped the connection"
                    ) from None
                continue
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise ChainUnreachableError(
                    f"chain RPC at {self.origin} is unreachable: {type(exc).__name__}"
                ) from None
            if response.status != 200:
                refusal = _error_answer(data) if 400 <= response.status < 500 else None
                if refusal is not None and response.status != 429:
                    return refusal  # a JSON-RPC error sent with a 4xx (some providers do)
                raise ChainUnreachableError(
                    f"chain RPC at {self.origin} answered HTTP {response.status}"
                )
            try:
                return json.loads(data)
            except ValueError:
                raise ChainUnreachableError(
                    f"chain RPC at {self.origin} sent invalid JSON"
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def call(self, method: str, params: list[Any]) -> dict[str, Any]:
        answer = self.post(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        )
        return answer if isinstance(answer, dict) else {"error": "not a JSON-RPC response"}

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
        first = next(self._ids)
        for _ in calls[1:]:
            next(self._ids)
        payload = [
            {"jsonrpc": "2.0", "id": first + i, "method": method, "params": params}
            for i, (method, params) in enumerate(calls)
        ]
        answers = self.post(payload)
        if not isinstance(answers, list):
            return [answers] if isinstance(answers, dict) else []
        by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
        return [by_id.get(first + i, {"error": "missing answer"}) for i in range(len(calls))]


class Chain:
    """A connected chain. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        w3: Web3,
        backend: ChainBackend,
        *,
        rpc_url: str | None = None,
        anvil: _AnvilProcess | None = None,
        tester: Any = None,
    ) -> None:
        self.w3 = w3
        self.backend = backend
        self.rpc_url = rpc_url
        self._anvil = anvil
        self._tester = tester
        self._rpc = _JsonRpc(rpc_url) if rpc_url and tester is None else None
        self._chain_id: int | None = None
        # eth-tester is not thread-safe; anvil over HTTP is. One lock keeps both honest.
        self.lock = threading.RLock()

    def __repr__(self) -> str:
        return f"Chain(backend={self.backend.value!r}, chain_id={self.chain_id})"

    def __enter__(self) -> Chain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    @property
    def is_local(self) -> bool:
        return self.backend in (ChainBackend.TESTER, ChainBackend.ANVIL)

    @property
    def anvil_pid(self) -> int | None:
        return self._anvil.pid if self._anvil else None

    def dev_accounts(self) -> list[LocalAccount]:
        """The funded development accounts (local backends only)."""
        self._require_local("dev accounts")
        return list(dev_accounts())

    def request(self, method: str, params: list[Any] | None = None) -> Any:
        """A raw JSON-RPC call. A node that cannot be reached raises
        :class:`ChainUnreachableError`; an error answer, :class:`UnsupportedOperationError`."""
        response: dict[str, Any]
        with self.lock:
            if self._rpc is not None:
                response = self._rpc.call(method, params or [])
            else:
                response = dict(self.w3.provider.make_request(method, params or []))  # type: ignore[arg-type]
        if "error" in response:
            error = response["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise UnsupportedOperationError(f"{method} failed: {message}")
        return response.get("result")

    def raw_logs(
        self, address: str, from_block: int, to_block: int, topics: list[Any]
    ) -> list[dict[str, Any]]:
        """``eth_getLogs`` exactly as the node sends it (hex strings, no web3 formatting).

        web3's per-field result formatting costs about fifteen times the fetch itself; an
        indexer that decodes the few fields it needs should not pay for it.
        """
        if self._tester is None:
            params = {
                "address": address,
                "fromBlock": hex(from_block),
                "toBlock": hex(to_block),
                "topics": topics,
            }
            return list(self.request("eth_getLogs", [params]))
        with self.lock:
            entries = self.w3.eth.get_logs(
                {
                    "address": Web3.to_checksum_address(address),
                    "fromBlock": from_block,
                    "toBlock": to_block,
                    "topics": topics,
                }
            )
        return [
            {
                "transactionHash": Web3.to_hex(e["transactionHash"]),
                "logIndex": hex(e["logIndex"]),
                "blockNumber": hex(e["blockNumber"]),
                "blockHash": Web3.to_hex(e["blockHash"]),
                "topics": [Web3.to_hex(t) for t in e["topics"]],
                "data": Web3.to_hex(e["data"]),
                "removed": bool(e.get("removed", False)),
            }
            for e in entries
        ]

    def head_and_block_hashes(
        self, numbers: Sequence[int]
    ) -> tuple[tuple[int, str], list[str | None]]:
        """The head block's ``(number, hash)`` and the hashes of blocks ``numbers`` (None
        past the head), in one round trip."""
        if self._tester is not None:
            headers = [self.block_header(number) for number in numbers]
            return self.latest_block(), [header[0] if header else None for header in headers]
        calls = [("eth_getBlockByNumber", [hex(number), False]) for number in numbers]
        latest, *blocks = self.batch([("eth_getBlockByNumber", ["latest", False]), *calls])
        head = (int(latest["number"], 16), str(latest["hash"]))
        return head, [None if block is None else str(block["hash"]) for block in blocks]

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """Several read-only JSON-RPC calls in one round trip (a batch) on node backends, one
        after another in process; results in call order. An error anywhere raises."""
        if self._rpc is None:
            return [self.request(method, params) for method, params in calls]
        with self.lock:
            answers = self._rpc.batch(calls)
        errors = [a["error"] for a in answers if "error" in a]
        if errors or len(answers) != len(calls):
            error = errors[0] if errors else "incomplete batch response"
            message = error.get("message", error) if isinstance(error, dict) else error
            raise UnsupportedOperationError(f"batch of {[m for m, _ in calls]} failed: {message}")
        return [a.get("result") for a in answers]

    def latest_block(self) -> tuple[int, str]:
        """``(number, hash)`` of the head in one call: what a follower polls to notice a new
        block or a reorg at the same height."""
        if self._tester is None:
            block = self.request("eth_getBlockByNumber", ["latest", False])
            return int(block["number"], 16), str(block["hash"])
        with self.lock:
            found = self.w3.eth.get_block("latest")
        return int(found["number"]), Web3.to_hex(found["hash"])

    def head(self) -> int:
        """The latest block number (a raw ``eth_blockNumber`` on node backends)."""
        if self._tester is None:
            return int(self.request("eth_blockNumber"), 16)
        with self.lock:
            return int(self.w3.eth.block_number)

    def call(self, to: str, data: str) -> bytes:
        """A read-only ``eth_call`` at the head: the returned bytes (empty from an account
        without code). A revert raises :class:`UnsupportedOperationError`."""
        if self._tester is None:
            answer = self.request("eth_call", [{"to": to, "data": data}, "latest"])
            return bytes.fromhex(str(answer)[2:])
        from eth_tester.exceptions import TransactionFailed  # loaded with the tester backend

        with self.lock:
            try:
                return bytes(
                    self.w3.eth.call({"to": Web3.to_checksum_address(to), "data": HexStr(data)})
                )
            except (Web3Exception, TransactionFailed) as exc:  # a revert on eth-tester
                raise UnsupportedOperationError(f"eth_call failed: {exc}") from None

    def block_header(self, number: int) -> tuple[str, int] | None:
        """``(hash, timestamp)`` of block ``number`` (0x hex hash), or None past the head."""
        if self._tester is None:
            block = self.request("eth_getBlockByNumber", [hex(number), False])
            return None if block is None else (str(block["hash"]), int(block["timestamp"], 16))
        with self.lock:
            try:
                found = self.w3.eth.get_block(number)
            except BlockNotFound:
                return None
        return Web3.to_hex(found["hash"]), int(found["timestamp"])

    def snapshot(self) -> Any:
        self._require_local("evm_snapshot")
        return self.request("evm_snapshot")

    def revert(self, snapshot_id: Any) -> None:
        self._require_local("evm_revert")
        self.request("evm_revert", [snapshot_id])

    def mine(self, blocks: int = 1) -> None:
        self._require_local("evm_mine")
        if self._tester is not None:
            with self.lock:
                self._tester.mine_blocks(blocks)
        else:
            self.request("anvil_mine", [hex(blocks)])

    def increase_time(self, seconds: int) -> None:
        """Move the chain clock forward and mine one block with the new time."""
        self._require_local("evm_increaseTime")
        if self._tester is not None:
            with self.lock:
                latest = self.w3.eth.get_block("latest")["timestamp"]
                self._tester.time_travel(int(latest) + int(seconds))
        else:
            self.request("evm_increaseTime", [int(seconds)])
            self.request("evm_mine")

    def fund(self, address: str, wei: int) -> None:
        """Give ``address`` exactly ``wei`` of native balance (local backends only)."""
        self._require_local("funding")
        target = Web3.to_checksum_address(address)
        if self._tester is None:
            self.request("anvil_setBalance", [target, hex(wei)])
            return
        with self.lock:
            current = self.w3.eth.get_balance(target)
            if wei > current:
                faucet = self.w3.eth.accounts[0]
                tx = self.w3.eth.send_transaction(
                    {"from": faucet, "to": target, "value": Wei(wei - current)}
                )
                self.w3.eth.wait_for_transaction_receipt(tx)

    def close(self) -> None:
        if self._rpc is not None:
            with self.lock:
                self._rpc.close()
        if self._anvil is not None:
            self._anvil.stop()
            self._anvil = None

    def _require_local(self, what: str) -> None:
        if not self.is_local:
            raise UnsupportedOperationError(f"{what} needs a local chain (tester or anvil)")


@functools.cache
def dev_accounts() -> tuple[LocalAccount, ...]:
    """The accounts of :data:`DEV_MNEMONIC` (funded on tester and anvil; never use elsewhere)."""
    Account.enable_unaudited_hdwallet_features()
    return tuple(
        Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}")
        for i in range(_DEV_ACCOUNTS)
    )


def _tester_chain() -> Chain:
    from eth_tester import EthereumTester, PyEVMBackend  # heavy import, only when used

    backend = PyEVMBackend(mnemonic=DEV_MNEMONIC, hd_path="m/44'/60'/0'/0")
    tester = EthereumTester(backend)
    w3 = Web3(EthereumTesterProvider(tester))
    return Chain(w3, ChainBackend.TESTER, tester=tester)


def _http_web3(url: str) -> Web3:
    w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": 30}))
    try:
        w3.eth.chain_id  # noqa: B018 - a cheap round trip proves the endpoint answers
    except (OSError, Web3Exception, ValueError) as exc:
        reason = type(exc).__name__
        raise ChainUnreachableError(
            f"chain RPC at {rpc_origin(url)} is unreachable: {reason}"
        ) from None
    return w3


def connect(config: ChainConfig | None = None) -> Chain:
    """Build the :class:`Chain` that ``config`` names."""
    config = config or ChainConfig()
    try:
        backend = ChainBackend(str(config.backend))
    except ValueError:
        choices = ", ".join(b.value for b in ChainBackend)
        raise UnknownBackendError(
            f"unknown chain backend {config.backend!r} (choose one of: {choices})", param="backend"
        ) from None

    if config.rpc_url and not config.rpc_url.startswith(("http://", "https://")):
        raise UnknownBackendError("the RPC URL must be an http(s) URL", param="rpc_url")
    if backend is ChainBackend.TESTER:
        chain = _tester_chain()
    elif backend is ChainBackend.ANVIL:
        if config.rpc_url:
            chain = Chain(_http_web3(config.rpc_url), backend, rpc_url=config.rpc_url)
        else:
            process = _AnvilProcess(config)
            try:
                chain = Chain(_http_web3(process.url), backend, rpc_url=process.url, anvil=process)
            except BaseException:
                process.stop()
                raise
    else:
        if not config.rpc_url:
            raise UnknownBackendError("the rpc backend needs an RPC URL", param="rpc_url")
        chain = Chain(_http_web3(config.rpc_url), backend, rpc_url=config.rpc_url)

    if config.expected_chain_id is not None and chain.chain_id != config.expected_chain_id:
        actual = chain.chain_id
        chain.close()
        raise ChainIdMismatchError(
            f"connected to chain id {actual}, expected {config.expected_chain_id}"
        )
    return chain
