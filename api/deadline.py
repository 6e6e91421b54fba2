"""Blocking calls that cannot be cancelled, bounded in time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["run_within"]

_T = TypeVar("_T")


def run_within(call: Callable[[], _T], seconds: float, name: str) -> _T:
    """``call()`` in a daemon thread, waited for at most ``seconds``: ``TimeoutError`` after
    that (the call is abandoned, still running: a name lookup cannot be cancelled), else its
    result or its exception."""
    outcome: list[_T | BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    if not done.wait(max(seconds, 0.0)):
        raise TimeoutError(f"{name} ran out of time")
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result
