"""A real HTTP proxy in front of a JSON-RPC node that loses replies on demand.

The sender's transport is plain HTTP, so faults are injected on the wire, not by patching the
sender: ``lost_reply`` forwards the request and then hangs up without answering (the node has
the transaction, the client sees a disconnect), ``unreachable`` hangs up without forwarding,
``gateway`` answers HTTP 503 without forwarding, ``timed_out`` forwards and answers the JSON-RPC
error go-ethereum gives when its handler deadline passes (-32002 "request timed out").
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

__all__ = ["RpcProxy"]

MODES = ("lost_reply", "unreachable", "gateway", "timed_out")


def _timed_out(body: bytes) -> bytes:
    """The -32002 error answer to each request of ``body`` (one request or a batch)."""
    request = json.loads(body)
    error = {"code": -32002, "message": "request timed out"}
    answers = [
        {"jsonrpc": "2.0", "id": item["id"], "error": error}
        for item in (request if isinstance(request, list) else [request])
    ]
    return json.dumps(answers if isinstance(request, list) else answers[0]).encode()


class RpcProxy:
    """Forwards POSTs to ``upstream``; :meth:`fail` arms faults for requests naming a method."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._lock = threading.Lock()
        self._faults: list[tuple[str, str]] = []  # (mode, method), consumed in order
        self.faulted = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like a real node

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                mode = proxy._take(body)
                if mode in ("unreachable", "lost_reply"):
                    if mode == "lost_reply":
                        proxy._forward(body)
                    self.close_connection = True  # hang up: no status line at all
                    return
                if mode == "timed_out":
                    proxy._forward(body)  # the node takes it; its answer says it timed out
                    status, answer = 200, _timed_out(body)
                elif mode:
                    status, answer = 503, b"upstream unavailable"
                else:
                    status, answer = proxy._forward(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, mode: str, *, times: int = 1, method: str = "eth_sendRawTransaction") -> None:
        assert mode in MODES, mode
        with self._lock:
            self._faults.extend([(mode, method)] * times)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take(self, body: bytes) -> str | None:
        with self._lock:
            for i, (mode, method) in enumerate(self._faults):
                if f'"{method}"'.encode() in body:
                    del self._faults[i]
                    self.faulted += 1
                    return mode
        return None

    def _forward(self, body: bytes) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"}
        response = httpx.post(self.upstream, content=body, headers=headers, timeout=30)
        return response.status_code, response.content

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
