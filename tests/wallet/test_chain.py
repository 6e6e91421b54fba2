"""One chain suite, run on every local backend (web3.py's EthModuleTest pattern)."""

from __future__ import annotations

import http.server
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ChainSuite, missing
from wallet.chain import Chain, ChainBackend, ChainConfig, anvil_binary, connect, rpc_origin
from wallet.errors import (
    AnvilNotFoundError,
    AnvilStartError,
    ChainIdMismatchError,
    ChainUnreachableError,
    UnknownBackendError,
    UnsupportedOperationError,
)

DEAD = "0x000000000000000000000000000000000000dEaD"


class ChainBehaviour(ChainSuite):
    def test_dev_accounts_are_funded_and_identical_across_backends(self, chain):
        accounts = chain.dev_accounts()
        assert accounts[0].address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        assert chain.w3.eth.get_balance(accounts[0].address) > 10**21

    def test_snapshot_revert_restores_blocks_and_balances(self, chain):
        # the session's chain is shared: another module may have left DEAD a balance
        start_block, before = chain.w3.eth.block_number, chain.w3.eth.get_balance(DEAD)
        snap = chain.snapshot()
        chain.fund(DEAD, before + 12345)
        chain.mine(3)
        assert chain.w3.eth.block_number >= start_block + 3
        assert chain.w3.eth.get_balance(DEAD) == before + 12345
        chain.revert(snap)
        assert chain.w3.eth.block_number == start_block
        assert chain.w3.eth.get_balance(DEAD) == before

    def test_increase_time_moves_the_block_clock(self, chain):
        before = chain.w3.eth.get_block("latest")["timestamp"]
        chain.increase_time(3600)
        after = chain.w3.eth.get_block("latest")["timestamp"]
        assert 3599 <= after - before <= 3700

    def test_fund_sets_exact_balance(self, chain):
        chain.fund(DEAD, 10**18)
        assert chain.w3.eth.get_balance(DEAD) == 10**18

    def test_call_returns_bytes_and_raises_on_revert(self, chain):
        # runtimes behind a 12-byte constructor that copies them out: return 32 bytes of 0x2a;
        # revert with no data
        answers = _deploy(chain, "602a60005260206000f3")
        reverts = _deploy(chain, "60006000fd")
        assert chain.call(answers, "0x12345678") == (42).to_bytes(32, "big")
        assert chain.call(DEAD, "0x12345678") == b""  # no code: empty answer
        with pytest.raises(UnsupportedOperationError, match="eth_call failed"):
            chain.call(reverts, "0x12345678")


def _deploy(chain, runtime: str) -> str:
    size = f"{len(runtime) // 2:02x}"
    init = f"0x60{size}600c60003960{size}6000f3{runtime}"
    sender = chain.dev_accounts()[0].address
    tx = chain.w3.eth.send_transaction({"from": sender, "data": init})
    return chain.w3.eth.wait_for_transaction_receipt(tx)["contractAddress"]


class TestTesterChain(ChainBehaviour):
    backend = "tester"

    def test_is_in_process(self, chain):
        assert chain.rpc_url is None
        assert chain.anvil_pid is None


class TestAnvilChain(ChainBehaviour):
    backend = "anvil"

    def test_listens_on_loopback_with_anvil_chain_id(self, chain):
        assert chain.rpc_url.startswith("http://127.0.0.1:")
        assert chain.chain_id == 31337


class TestConnectErrors:
    def test_unknown_backend(self):
        with pytest.raises(UnknownBackendError, match="unknown chain backend 'ganache'"):
            connect(ChainConfig(backend="ganache"))

    def test_unreachable_rpc(self):
        with pytest.raises(ChainUnreachableError, match="unreachable"):
            connect(ChainConfig(backend="rpc", rpc_url="http://127.0.0.1:9"))

    def test_rpc_errors_logs_and_reprs_name_only_the_endpoints_origin(self, caplog):
        keyed = "http://alice:s3cretpw@127.0.0.1:9/v3/0123456789abcdef?apikey=zz99"
        config = ChainConfig(backend="rpc", rpc_url=keyed)
        with (
            caplog.at_level(logging.DEBUG),
            pytest.raises(ChainUnreachableError) as on_connect,
        ):
            connect(config)
        # web3's provider logs its URI at DEBUG: only the origin may show
        assert "http://127.0.0.1:9" in caplog.text
        # the indexer's own JSON-RPC path, on a chain whose node went away
        tester = connect(ChainConfig())
        polling = Chain(tester.w3, ChainBackend.RPC, rpc_url=keyed)
        with pytest.raises(ChainUnreachableError) as on_poll:
            polling.latest_block()
        for text in (str(on_connect.value), str(on_poll.value), repr(config), caplog.text):
            for secret in ("alice", "s3cretpw", "0123456789abcdef", "zz99"):
                assert secret not in text
        assert "chain RPC at http://127.0.0.1:9 is unreachable" in str(on_connect.value)
        assert "chain RPC at http://127.0.0.1:9 " in str(on_poll.value)
        assert rpc_origin("https://[::1]:8545/key") == "https://[::1]:8545"

    @pytest.mark.parametrize(
        ("status", "raised"),
        [
            (400, UnsupportedOperationError),
            (429, ChainUnreachableError),
            (503, ChainUnreachableError),
        ],
    )
    def test_an_error_answer_sent_with_a_4xx_is_the_nodes_answer(self, status, raised):
        """Some providers send a JSON-RPC error (a range too wide) with HTTP 400: it is the
        node's refusal, not an unreachable node, so the indexer can narrow its range. A 429
        or a 5xx is the node being away: retried."""
        refusal = {
            "jsonrpc": "2.0",
            "id": 1,
            "error": {"code": -32602, "message": "range too wide"},
        }

        class Refusing(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                body = json.dumps(refusal).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}"
            node = Chain(connect(ChainConfig()).w3, ChainBackend.RPC, rpc_url=url)
            with pytest.raises(raised) as caught:
                node.request("eth_getLogs", [{}])
            if raised is UnsupportedOperationError:
                assert "range too wide" in str(caught.value)
        finally:
            server.shutdown()
            server.server_close()

    def test_urllib3s_request_line_withholds_the_rpc_path(self, caplog):
        """web3's provider runs on urllib3, whose DEBUG request line prints the URL's path:
        a provider key (/v3/<key>) would reach the log."""
        with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
            logging.getLogger("urllib3.connectionpool").debug(
                '%s://%s:%s "%s %s %s" %s %s',
                *("https", "mainnet.example.io", 443, "POST"),
                *("/v3/0123456789abcdef0123?apikey=zz99", "HTTP/1.1", 200, 42),
            )
        (line,) = [r.getMessage() for r in caplog.records if r.name == "urllib3.connectionpool"]
        assert line == 'https://mainnet.example.io:443 "POST /[path withheld] HTTP/1.1" 200 42'

    def test_rpc_backend_without_url(self):
        with pytest.raises(UnknownBackendError, match="needs an RPC URL"):
            connect(ChainConfig(backend="rpc"))

    def test_named_anvil_that_does_not_exist(self, tmp_path):
        with pytest.raises(AnvilNotFoundError, match="not found"):
            connect(ChainConfig(backend="anvil", anvil_path=str(tmp_path / "anvil")))

    def test_wrong_chain_id(self):
        with pytest.raises(ChainIdMismatchError, match="expected 1"):
            connect(ChainConfig(backend="tester", expected_chain_id=1))


class TestRpcBackend:
    def test_plain_rpc_has_no_test_powers(self, anvil_chain):
        with connect(ChainConfig(backend="rpc", rpc_url=anvil_chain.rpc_url)) as chain:
            assert chain.chain_id == 31337
            with pytest.raises(UnsupportedOperationError):
                chain.snapshot()
            with pytest.raises(UnsupportedOperationError):
                chain.fund(DEAD, 1)


class _NodeStub(http.server.BaseHTTPRequestHandler):
    """A JSON-RPC node that answers batches in reverse order and, when asked, drops the
    keep-alive connection after each answer (as nodes and proxies do with idle ones)."""

    protocol_version = "HTTP/1.1"
    drop_after_answer = False
    seen: list[str] = []

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(self.headers.get("Authorization", ""))

        def answer(call: dict) -> dict:
            if call["method"] == "eth_blockNumber":
                return {"jsonrpc": "2.0", "id": call["id"], "result": "0x2a"}
            if call["method"] == "eth_chainId":
                return {"jsonrpc": "2.0", "id": call["id"], "result": "0x7a69"}
            return {
                "jsonrpc": "2.0",
                "id": call["id"],
                "error": {"code": -32601, "message": "nope"},
            }

        out = (
            [answer(c) for c in reversed(payload)] if isinstance(payload, list) else answer(payload)
        )
        body = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if self.drop_after_answer:
            self.close_connection = True

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def node_stub() -> Iterator[tuple[str, type[_NodeStub], http.server.ThreadingHTTPServer]]:
    handler = type("Stub", (_NodeStub,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"user:s3cret@127.0.0.1:{server.server_address[1]}", handler, server
    finally:
        server.shutdown()
        server.server_close()


class TestRawJsonRpc:
    """The node backends' own JSON-RPC transport (the indexer's polling path)."""

    def test_batches_come_back_in_call_order(self, node_stub):
        address, _, _ = node_stub
        with connect(ChainConfig(backend="rpc", rpc_url=f"http://{address}")) as chain:
            assert chain.batch([("eth_blockNumber", []), ("eth_chainId", [])]) == ["0x2a", "0x7a69"]

    def test_an_error_answer_names_the_method(self, node_stub):
        address, _, _ = node_stub
        with connect(ChainConfig(backend="rpc", rpc_url=f"http://{address}")) as chain:
            with pytest.raises(UnsupportedOperationError, match="eth_foo failed: nope"):
                chain.request("eth_foo")
            with pytest.raises(UnsupportedOperationError, match="nope"):
                chain.batch([("eth_blockNumber", []), ("eth_foo", [])])

    def test_a_dropped_keep_alive_connection_is_reopened(self, node_stub):
        address, handler, _ = node_stub
        handler.drop_after_answer = True
        with connect(ChainConfig(backend="rpc", rpc_url=f"http://{address}")) as chain:
            assert [chain.head() for _ in range(5)] == [42] * 5
        assert handler.seen[-1].startswith("Basic ")  # credentials in the URL are sent

    def test_a_node_that_went_away_is_unreachable(self, node_stub):
        address, handler, server = node_stub
        handler.drop_after_answer = True
        with connect(ChainConfig(backend="rpc", rpc_url=f"http://{address}")) as chain:
            server.shutdown()
            server.server_close()
            with pytest.raises(ChainUnreachableError, match="unreachable"):
                chain.head()


class TestAnvilLifecycle:
    def test_stopped_on_close(self, anvil_chain):  # anvil_chain: proves the binary exists
        chain = connect(ChainConfig(backend="anvil"))
        pid = chain.anvil_pid
        assert pid is not None
        chain.close()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    def test_no_orphan_after_parent_is_killed(self, anvil_chain):
        assert anvil_binary()
        script = (
            "import sys, time\n"
            "from wallet.chain import connect, ChainConfig\n"
            "c = connect(ChainConfig(backend='anvil'))\n"
            "print(c.anvil_pid, flush=True)\n"
            "time.sleep(60)\n"
        )
        parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            child_pid = int(parent.stdout.readline())
            os.kill(child_pid, 0)  # alive while the parent lives
        finally:
            parent.send_signal(signal.SIGKILL)
            parent.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(child_pid, 0)
            except ProcessLookupError:
                break
            # reap if it became our zombie via subreaper semantics
            time.sleep(0.05)
        else:
            pytest.fail(f"anvil {child_pid} outlived its killed parent")


def _processes_with_port(port: int) -> list[int]:
    """Pids whose command line has ``--port PORT`` (an anvil we may have left behind)."""
    needle = f"--port\0{port}\0".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port held by a plain TCP listener that never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _fake_anvil(tmp_path: Path, stderr_line: str, pid_file: Path | None = None) -> str:
    """An "anvil" that prints ``stderr_line`` and exits 1 (first writing its pid to
    ``pid_file`` if given)."""
    script = tmp_path / "anvil"
    record = f"echo $$ > '{pid_file}'\n" if pid_file is not None else ""
    script.write_text(f"#!/bin/sh\n{record}echo '{stderr_line}' >&2\nexit 1\n")
    script.chmod(0o755)
    return str(script)


def _has_exited(pid_file: Path) -> bool:
    """Whether the process whose pid ``pid_file`` holds has exited (a zombie counts: its
    parent has not reaped it yet). False while the file is not written."""
    try:
        pid = int(pid_file.read_text())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except ValueError:  # not written yet, or half-written
        return False
    except FileNotFoundError:
        return pid_file.exists()  # no such process any more
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


class TestAnvilStartErrors:
    def test_port_in_use_is_a_clear_error_and_leaves_no_process(self, busy_port):
        try:
            anvil_binary()
        except AnvilNotFoundError as exc:
            missing(str(exc))
        with pytest.raises(AnvilStartError, match=rf"port {busy_port} on 127.0.0.1 is in use"):
            connect(ChainConfig(backend="anvil", anvil_port=busy_port))
        assert _processes_with_port(busy_port) == []

    def test_early_exit_reports_anvils_own_stderr_line(self, tmp_path):
        fake = _fake_anvil(tmp_path, "Error: Address already in use (os error 98)")
        with pytest.raises(
            AnvilStartError,
            match=r"exited during start-up on port \d+: Error: Address already in use",
        ):
            connect(ChainConfig(backend="anvil", anvil_path=fake, startup_timeout=5))

    def test_an_answer_counts_only_while_our_anvil_lives(self, tmp_path, monkeypatch):
        """Another server answers on the port while our anvil has already exited."""
        pid_file = tmp_path / "anvil.pid"
        answered_after_exit: list[bool] = []

        class LateJsonRpc(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                deadline = time.monotonic() + 10
                while not _has_exited(pid_file) and time.monotonic() < deadline:
                    time.sleep(0.01)  # answer only once the fake anvil is gone
                answered_after_exit.append(_has_exited(pid_file))
                body = b'{"jsonrpc":"2.0","id":1,"result":"0x7a69"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        statuses: list[int] = []  # what the start-up probe received
        real_post = httpx.Client.post

        def recording_post(client: httpx.Client, *args: Any, **kwargs: Any) -> httpx.Response:
            response = real_post(client, *args, **kwargs)
            statuses.append(response.status_code)
            return response

        monkeypatch.setattr(httpx.Client, "post", recording_post)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LateJsonRpc)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        monkeypatch.setattr("wallet.chain.free_port", lambda: server.server_address[1])
        fake = _fake_anvil(tmp_path, "Error: Address already in use (os error 98)", pid_file)
        try:
            with pytest.raises(AnvilStartError, match="Address already in use"):
                connect(ChainConfig(backend="anvil", anvil_path=fake, startup_timeout=5))
            # the probe got its answer, and only after our anvil had exited
            assert statuses == [200]
            assert answered_after_exit == [True]
        finally:
            server.shutdown()
            server.server_close()
