"""Backoff for the long-running loops (indexer, follow-up worker): a database or node that is
briefly away must not end the process, and an operator must see why it waits."""

from __future__ import annotations

import logging
import threading

import sqlalchemy.exc
import tenacity

from api.errors import redact
from wallet.errors import ChainError

__all__ = ["TRANSIENT", "until_stopped"]

#: What a retry can cure: the database (locked, restarting, connection lost) or the node
#: (unreachable, a failed batch). Anything else is a bug or a decision and ends the loop.
TRANSIENT: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    ChainError,
    OSError,
)


def until_stopped(
    stop: threading.Event, *, base: float, what: str, logger: logging.Logger
) -> tenacity.Retrying:
    """Retry :data:`TRANSIENT` failures with exponential backoff from ``base`` seconds up to
    30 s, logging each; ``stop`` ends the waiting at once (the call then returns ``None``)."""

    def log_retry(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        logger.error(
            "%s failed (%s: %s); attempt %d, retrying in %.1f s",
            what,
            type(exc).__name__,
            redact(str(exc))[:300],
            state.attempt_number,
            wait,
        )

    def wait(seconds: float) -> None:
        stop.wait(seconds)  # returns early once stopped

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(TRANSIENT),
        wait=tenacity.wait_exponential(multiplier=max(base, 0.05), max=30),
        stop=tenacity.stop_when_event_set(stop),
        sleep=wait,
        before_sleep=log_retry,
        retry_error_callback=lambda _state: None,
    )
