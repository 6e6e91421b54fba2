"""Merchant configuration held in memory for a short time, so a busy request path needs no query
for it: authenticated API keys, router accounts and webhook subscriptions.

A merchant creating hundreds of invoices a second asks the same three questions every time (who
is this key, which account and operator sign, who listens to ``invoice.created``); on PostgreSQL
each answer is a round trip. An entry lives ``ttl`` seconds (default 1 s). A change made through
this process clears the whole cache once it commits; another API process sees it within ``ttl``
(a key revoked elsewhere is accepted that long; an endpoint registered elsewhere may miss events
of that second). Only found values are cached; keys are tuples whose first item names the kind
(``("key", sha256)``, ``("account", merchant, chain)``, ``("webhooks", merchant)``); values hold
no secret material. ``ttl`` 0 turns caching off.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

__all__ = ["ConfigCache"]

_V = TypeVar("_V")


class ConfigCache:
    def __init__(self, ttl: float, *, max_entries: int = 10_000) -> None:
        if ttl < 0:
            raise ValueError("ttl must be >= 0")
        self.ttl = float(ttl)
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, tuple[Any, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}
        # Bumped by clear(): a load that began before a change committed must not cache what it
        # read (a revoked key read just before its revoke was accepted for another ttl).
        self._generation = 0

    def get(self, key: Hashable, now: float | None = None) -> Any | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires = entry
        if (time.monotonic() if now is None else now) >= expires:
            with self._lock:
                if self._entries.get(key) is entry:
                    del self._entries[key]
            return None
        return value

    def put(
        self, key: Hashable, value: Any, now: float | None = None, *, generation: int | None = None
    ) -> None:
        """``generation``: store only if :meth:`clear` has not run since it was read."""
        if self.ttl <= 0 or value is None:
            return
        expires = (time.monotonic() if now is None else now) + self.ttl
        with self._lock:
            if generation is not None and generation != self._generation:
                return
            self._entries[key] = (value, expires)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def load(self, key: Hashable, loader: Callable[[], _V]) -> _V:
        """The cached value, else ``loader()`` (cached unless None). Concurrent misses of one
        key call the loader once; the others wait for it (a busy key expiring every second
        would otherwise send every request in flight to the database at once)."""
        value = self.get(key)
        if value is not None:
            return value  # type: ignore[no-any-return]
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        try:
            with gate:
                value = self.get(key)
                if value is None:
                    generation = self._generation
                    value = loader()
                    self.put(key, value, generation=generation)
        finally:  # a loader that raises (an unknown API key) must not leave its gate behind
            with self._lock:
                if self._loading.get(key) is gate and not gate.locked():
                    del self._loading[key]
        return value  # type: ignore[no-any-return]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._generation += 1

    def __len__(self) -> int:
        return len(self._entries)
