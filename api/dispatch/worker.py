"""The follow-up worker: claim due follow-ups, re-check consent at send time, deliver.

In-app messages and phone tasks are written in the same transaction that marks the follow-up
sent (exactly once). E-mail and webhooks leave the process: the claim and the send-time check
commit first, the delivery happens, then ``sent`` commits. Several workers may run against
PostgreSQL (``FOR UPDATE SKIP LOCKED`` in the claim) without sending anything twice.

A claim is a lease (``lease``, default 2 minutes): ``prepare_send`` renews it just before a
message leaves, and every :meth:`Worker.run_once` first recovers claims of dead workers whose
lease ran out (:func:`crm.followups.dispatch.recover_stale`): never prepared → rescheduled,
prepared → ``failed``/``interrupted``, never resent. A live worker's attempt must fit in the
lease, or it would be recovered as interrupted while it delivers: from the renewal, the
prepare's commit may wait for locks (SQLite's busy timeout, 30 s; a later commit is not sent
this round, see :data:`PREPARE_SLACK`), the delivery is cut at 30 s
(:data:`~api.dispatch.channels.EMAIL_ATTEMPT_TIMEOUT`; webhooks 15 s, every endpoint at once)
and recording it may wait 30 s more: :data:`MIN_LEASE`. Claims of the batch not reached yet
are renewed every quarter lease, so a slow batch keeps them. Delivery is therefore at most once; see
docs/operations.md. A worker told to stop (SIGINT/SIGTERM set ``stop``) finishes the delivery
in hand and hands the rest of its batch back at once (:func:`followups_dispatch.release_claims`).

Whatever a channel raises ends that follow-up's attempt, never the worker or the batch: a
:class:`DeliveryError` says whether anything arrived; any other exception from an in-process
channel (its savepoint rolled back) delivered nothing and is retried, and from a channel that
left the process it may have delivered, so it is ``failed``/``delivery_uncertain``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

import sqlalchemy.exc
from sqlalchemy import Engine
from sqlmodel import Session

from api.dispatch import phone_tasks as calls
from api.dispatch.channels import (
    EMAIL_ATTEMPT_TIMEOUT,
    DeliveryError,
    DeliveryRefused,
    DeliveryUncertain,
    Recipient,
)
from api.retry import until_stopped
from api.schemas.crm import TicketOut
from api.webhooks import enqueue
from crm import KeyRing
from crm.clock import Clock
from crm.contacts import service as contacts
from crm.errors import InvalidTransition
from crm.followups import dispatch as followups_dispatch
from crm.followups import service as followups
from crm.followups.dispatch import SendInstruction
from crm.merchants import service as merchants
from crm.tickets import service as tickets

__all__ = ["MIN_LEASE", "PREPARE_SLACK", "Channel", "Worker", "WorkerResult", "default_worker_id"]

log = logging.getLogger(__name__)
_IN_TRANSACTION = frozenset({"in_app", "phone"})
#: The database itself failing: the batch's concern (retried by :meth:`Worker.run`), not one
#: follow-up's.
_DATABASE_AWAY = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
#: A message leaves at most this long after its claim's renewal; a prepare that took longer to
#: commit is not sent (retried, nothing delivered).
PREPARE_SLACK = timedelta(seconds=30)
#: The shortest lease that outlasts an attempt: the slack, the longest channel deadline, and
#: the wait for the lock that records the outcome.
MIN_LEASE = PREPARE_SLACK + timedelta(seconds=EMAIL_ATTEMPT_TIMEOUT) + timedelta(seconds=30)


class Channel(Protocol):
    name: str

    def send(
        self, session: Session | None, instruction: SendInstruction, to: Recipient
    ) -> None: ...


@dataclass
class WorkerResult:
    claimed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    recovered: dict[str, list[int]] = field(default_factory=dict)


def default_worker_id(name: str | None = None) -> str:
    """Unique per process, whatever ``name`` (the host's by default) it starts with: a claim
    check between two workers that share an id would pass for both (one's lease recovered and
    re-claimed by the other, both sending), and a deployment that starts N copies with one
    ``--worker-id`` would share it."""
    return f"{(name or socket.gethostname())[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Worker:
    def __init__(
        self,
        engine: Engine,
        keyring: KeyRing,
        channels: dict[str, Channel],
        clock: Clock,
        *,
        worker_id: str | None = None,
        batch: int = 50,
        lease: timedelta = followups_dispatch.DEFAULT_LEASE,
    ) -> None:
        self.engine, self.keyring, self.channels, self.clock = engine, keyring, channels, clock
        self.worker_id = worker_id or default_worker_id()
        self.batch, self.lease = batch, lease

    def run_once(self, stop: threading.Event | None = None) -> WorkerResult:
        """One batch. When ``stop`` is set mid-batch, the claims not yet started go back."""
        now = self.clock.now()
        with Session(self.engine) as session, session.begin():
            recovered = followups_dispatch.recover_stale(session, now, self.lease)
            followups.expire_due(session, now)
            # the 24 h SLA clock is recorded, not inferred, and each breach announced once
            for ticket in tickets.sweep_breaches(session, now):
                payload = TicketOut.of(ticket).model_dump(mode="json")
                enqueue(session, str(ticket.merchant_id), "ticket.breached", payload)
            calls.roll_windows(session, now)  # a missed calling window: the next one
        # A transaction of its own: scheduling locks contacts before follow-ups, as
        # prepare_send does; recover/expire above lock follow-ups first (mixed: deadlocks).
        with Session(self.engine) as session, session.begin():
            followups.schedule_periodic_all(session, self.clock)
            ids = followups_dispatch.claim_due(session, now, self.batch, self.worker_id)
        for outcome, rows in recovered.items():
            if rows:
                log.warning("recovered %d stale claim(s) as %s", len(rows), outcome)
        result = WorkerResult(claimed=len(ids), recovered=recovered)
        renewed = now
        for position, followup_id in enumerate(ids):
            if stop is not None and stop.is_set():
                self._release(ids[position:], result)
                break
            if self.lease > timedelta(0) and self.clock.now() - renewed > self.lease / 4:
                renewed = self._renew(ids[position:])
            try:
                result.outcomes[self._deliver(followup_id)] += 1
            except InvalidTransition as exc:  # e.g. claim_lost: the lease ran out meanwhile
                log.warning("follow-up %s skipped: %s", followup_id, exc)
                result.outcomes[f"skipped:{exc.code}"] += 1
        return result

    def _renew(self, ids: list[int]) -> datetime:
        """Renew the batch's claims not reached yet (a batch may outlast the lease); returns
        the renewal's time."""
        now = self.clock.now()
        with Session(self.engine) as session, session.begin():
            followups_dispatch.renew_claims(session, ids, now, worker_id=self.worker_id)
        return now

    def _release(self, ids: list[int], result: WorkerResult) -> None:
        with Session(self.engine) as session, session.begin():
            released = followups_dispatch.release_claims(
                session, ids, self.clock.now(), worker_id=self.worker_id
            )
        result.outcomes["released"] += len(released)

    def _deliver(self, followup_id: int) -> str:
        now = self.clock.now()
        with Session(self.engine) as session, session.begin():
            instruction = followups_dispatch.prepare_send(
                session, followup_id, now, self.keyring, worker_id=self.worker_id
            )
            if instruction is None:
                return "held_or_suppressed"
            channel = self.channels.get(instruction.channel)
            contact = contacts.get_contact(session, instruction.merchant_id, instruction.contact_id)
            merchant = merchants.get_merchant(session, instruction.merchant_id)
            to = Recipient(merchant.name, contact.time_zone or "UTC", now)
            if channel is None:
                followups_dispatch.mark_failed(
                    session,
                    followup_id,
                    now,
                    error="no_channel_configured",
                    worker_id=self.worker_id,
                )
                return "failed"
            if instruction.channel in _IN_TRANSACTION:
                try:  # a savepoint: a failing send must not undo the prepare
                    with session.begin_nested():
                        channel.send(session, instruction, to)
                except _DATABASE_AWAY:
                    raise
                except Exception as exc:  # rolled back: nothing was delivered
                    return self._failed(session, followup_id, instruction.channel, exc, sent=False)
                followups_dispatch.mark_sent(session, followup_id, now, worker_id=self.worker_id)
                return f"sent:{instruction.channel}"
        if self.clock.now() - now > PREPARE_SLACK:  # the renewal is too old to cover a send
            with Session(self.engine) as session, session.begin():
                return self._failed(
                    session,
                    followup_id,
                    instruction.channel,
                    DeliveryError("not sent: the claim's renewal took too long to commit"),
                    sent=False,
                )
        try:
            channel.send(None, instruction, to)
        except Exception as exc:  # one follow-up's failure, not the worker's
            with Session(self.engine) as session, session.begin():
                return self._failed(session, followup_id, instruction.channel, exc, sent=None)
        with Session(self.engine) as session, session.begin():
            followups_dispatch.mark_sent(
                session, followup_id, self.clock.now(), worker_id=self.worker_id
            )
        return f"sent:{instruction.channel}"

    def _failed(
        self, session: Session, followup_id: int, channel: str, exc: Exception, *, sent: bool | None
    ) -> str:
        """Record a failed send. ``sent=False``: certainly nothing left (retried with backoff).
        ``sent=None`` (it left the process): a :class:`DeliveryError` says whether anything
        arrived; any other exception cannot, so it counts as maybe delivered, never resent. A
        :class:`DeliveryRefused` (the message cannot be built) fails at once: no retry helps.
        Logged without the exception's text unless it is a DeliveryError (whose texts carry no
        personal data): a ValueError may quote an address or a name."""
        permanent = isinstance(exc, DeliveryRefused)
        if isinstance(exc, DeliveryError):
            uncertain = isinstance(exc, DeliveryUncertain)
            error = str(exc)
            log.warning("follow-up %s: %s", followup_id, error)
        else:
            uncertain = sent is None
            kind = type(exc).__name__
            error = (
                f"{channel}: {kind} in the channel" if uncertain else f"not sent, {channel}: {kind}"
            )
            trace = "".join(traceback.format_tb(exc.__traceback__))  # frames, not the message
            log.error("follow-up %s: %s\n%s", followup_id, error, trace)
        followups_dispatch.mark_failed(
            session,
            followup_id,
            self.clock.now(),
            error=error[:200],
            worker_id=self.worker_id,
            retry=not uncertain,
            permanent=permanent,
        )
        return "uncertain" if uncertain else "failed" if permanent else "retry"

    def run(self, stop: threading.Event, *, poll_interval: float = 1.0) -> None:
        """Batches until ``stop``; a batch that fails because the database is away is retried
        with backoff (:func:`api.retry.until_stopped`)."""
        retrying = until_stopped(stop, base=poll_interval, what="worker batch", logger=log)
        while not stop.is_set():
            result = retrying(self.run_once, stop)
            if result is None:
                break
            if result.claimed == 0:
                stop.wait(poll_interval)
