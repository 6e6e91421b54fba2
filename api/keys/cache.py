"""Authenticated API keys held in memory for a short time, so a request needs no key lookup.

A busy merchant sends hundreds of requests a second with one key; looking it up each time is a
query (and, in the request path, a thread-pool hop) that answers the same thing every time. An
entry lives ``ttl`` seconds (default 1 s). Revoking through this process clears the cache at
once (after the revocation commits); another API process stops accepting a revoked key within
``ttl``. Only successful lookups are cached, keyed by the key's SHA-256 (never the key), and no
entry holds secret material. ``ttl`` 0 turns caching off.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from api.keys.service import AuthenticatedKey

__all__ = ["KeyCache"]


class KeyCache:
    def __init__(self, ttl: float, *, max_entries: int = 10_000) -> None:
        if ttl < 0:
            raise ValueError("ttl must be >= 0")
        self.ttl = float(ttl)
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[AuthenticatedKey, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: str, now: float | None = None) -> AuthenticatedKey | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        key, expires = entry
        if (time.monotonic() if now is None else now) >= expires:
            with self._lock:
                if self._entries.get(digest) is entry:
                    del self._entries[digest]
            return None
        return key

    def put(self, digest: str, key: AuthenticatedKey, now: float | None = None) -> None:
        if self.ttl <= 0:
            return
        expires = (time.monotonic() if now is None else now) + self.ttl
        with self._lock:
            self._entries[digest] = (key, expires)
            self._entries.move_to_end(digest)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
