"""The worker over real channels: SMTP to a local aiosmtpd sink, a real local HTTP receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import select as io_select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.utils import parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from sqlmodel import Session, select

import api.dispatch.models  # noqa: F401
import api.webhooks as webhooks
import crm.models  # noqa: F401
from api.dispatch.channels import (
    DeliveryError,
    EmailChannel,
    InAppChannel,
    Links,
    PhoneChannel,
    Recipient,
    WebhookChannel,
    render_in_app,
)
from api.dispatch.models import LINK_TOKEN, InAppMessage, PhoneTask
from api.dispatch.worker import Worker, default_worker_id
from api.webhooks import SecretCipher
from crm import (
    ContactCreate,
    FollowUpPolicyCreate,
    FrozenClock,
    KeyRing,
    consent,
    contacts,
    followups,
    merchants,
)
from crm.feedback.models import Feedback
from crm.feedback.tokens import hash_token
from crm.followups import dispatch as followups_dispatch
from crm.followups import policies as followups_policies
from crm.followups.models import FollowUp, FollowUpEvent
from crm.merchants.models import Merchant, MerchantCreate
from crm.privacy import service as privacy
from tests.support import migrated_pg_schema, stalling_server
from wallet.chain import free_port

LINKS = Links("https://pay.example")


class Sink:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp():
    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, sink
    controller.stop()


class Receiver(BaseHTTPRequestHandler):
    received: list = []
    fail_next = 0
    hang_up_next = 0
    act_then_fail_next = 0  # acts on the request (recorded), then answers 502
    fail_paths: frozenset = frozenset()  # answered 503
    #: Requests to these paths answer only once all of them are in flight at once (503 if the
    #: barrier breaks: the sender posted one after the other).
    together: tuple[frozenset, threading.Barrier] | None = None

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Receiver.together and self.path in Receiver.together[0]:
            try:
                Receiver.together[1].wait(timeout=5)
            except threading.BrokenBarrierError:
                self.send_response(503)
                self.end_headers()
                return
        if self.path in Receiver.fail_paths:
            self.send_response(503)
            self.end_headers()
            return
        if Receiver.hang_up_next:  # acts on the request, dies before answering
            Receiver.hang_up_next -= 1
            Receiver.received.append((dict(self.headers) | {"Path": self.path}, body))
            self.close_connection = True
            return
        if Receiver.act_then_fail_next:
            Receiver.act_then_fail_next -= 1
            Receiver.received.append((dict(self.headers) | {"Path": self.path}, body))
            self.send_response(502)
        elif Receiver.fail_next:
            Receiver.fail_next -= 1
            self.send_response(503)
        else:
            Receiver.received.append((dict(self.headers) | {"Path": self.path}, body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        return


@pytest.fixture
def receiver():
    Receiver.received, Receiver.fail_next, Receiver.hang_up_next = [], 0, 0
    Receiver.act_then_fail_next = 0
    Receiver.fail_paths, Receiver.together = frozenset(), None
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks", Receiver
    server.shutdown()
    server.server_close()


MASTER_KEY = b"m" * 32
KEYRING = KeyRing(MASTER_KEY)
CIPHER = SecretCipher(b"w" * 32)


def shop_with(engine, clock, *, channel, consented=True, phone=None, email="ada@example.com"):
    with Session(engine, expire_on_commit=False) as session, session.begin():
        shop = merchants.create_merchant(session, MerchantCreate(name="Tea House"), clock)
        followups_policies.create_policy(
            session,
            shop.id,
            FollowUpPolicyCreate(delay_minutes=0, channel_order=[channel]),
            actor="owner",
            clock=clock,
        )
        person = contacts.create_contact(
            session,
            shop.id,
            ContactCreate(name="Ada", email=email, phone=phone, time_zone="Europe/London"),
            KEYRING,
            clock,
        )
        if consented:
            consent.grant(
                session,
                shop.id,
                person.id,
                "service_followup",
                channel,
                actor="ada",
                clock=clock,
                keyring=KEYRING,
            )
        followups.schedule_for_payment(
            session, shop.id, person.id, "pay_1", "inv_1", 25_000_000, "tUSD", clock.now(), clock
        )
        return shop.id, person.id


def instruction_for(shop_id, contact_id, clock, *, channel, address):
    """What the worker hands a channel, for calling one directly."""
    return followups_dispatch.SendInstruction(
        followup_id=77,
        merchant_id=shop_id,
        contact_id=contact_id,
        channel=channel,
        purpose="service_followup",
        kind="post_payment",
        payment_ref="pay_1",
        invoice_ref="inv_1",
        locale=None,
        token_expires_at=clock.now(),
        address=address,
        token="t",
    )


def states(engine):
    with Session(engine) as session:
        return [(f.state, f.channel, f.reason) for f in session.exec(select(FollowUp))]


class TestEmail:
    def test_delivers_a_parseable_message_with_rating_and_withdraw_links(self, engine, clock, smtp):
        controller, sink = smtp
        shop_with(engine, clock, channel="email")
        channels = {
            "email": EmailChannel("127.0.0.1", controller.port, "followup@tea.example", LINKS)
        }
        result = Worker(engine, KEYRING, channels, clock).run_once()
        assert result.outcomes["sent:email"] == 1
        assert states(engine) == [("sent", "email", None)]
        (mail,) = sink.messages
        assert mail["Subject"] == "How was your purchase at Tea House?"
        assert mail["From"] == "Tea House <followup@tea.example>"
        assert mail["To"] == "ada@example.com"
        body = mail.get_payload(decode=True).decode()
        links = [line.split(": ", 1)[1] for line in body.splitlines() if "rating=" in line]
        assert [link.rsplit("=", 1)[1] for link in links] == ["1", "2", "3", "4", "5"]
        # each opens the confirmation page (a GET that records nothing), never the answer itself
        assert all(
            re.fullmatch(r"https://pay\.example/v1/public/feedback/[\w-]+/rate\?rating=\d", link)
            for link in links
        )
        assert "/v1/public/consent/" in mail["List-Unsubscribe"]
        assert "Stop these messages: https://pay.example/v1/public/consent/" in body
        assert "inv_1" in body

    def test_the_message_is_dated(self, engine, clock, smtp):
        """RFC 5322 requires a Date field; without one spam filters score the message."""
        controller, sink = smtp
        shop_with(engine, clock, channel="email")
        channels = {"email": EmailChannel("127.0.0.1", controller.port, "f@tea.example", LINKS)}
        assert Worker(engine, KEYRING, channels, clock).run_once().outcomes == {"sent:email": 1}
        (mail,) = sink.messages
        assert parsedate_to_datetime(mail["Date"]) == clock.now().replace(microsecond=0)

    @pytest.fixture
    def plain_relay(self):
        """A relay as most are: no SMTPUTF8."""
        sink = Sink()
        controller = Controller(sink, hostname="127.0.0.1", port=free_port(), enable_SMTPUTF8=False)
        controller.start()
        yield controller, sink
        controller.stop()

    def test_an_international_domain_goes_out_in_its_ascii_form(self, engine, clock, plain_relay):
        """ada@bücher.example has an ASCII form any relay takes; sent in Unicode it needed
        SMTPUTF8, which most relays lack, and the customer never got mail."""
        controller, sink = plain_relay
        shop_with(engine, clock, channel="email", email="ada@bücher.example")
        channels = {"email": EmailChannel("127.0.0.1", controller.port, "f@tea.example", LINKS)}
        assert Worker(engine, KEYRING, channels, clock).run_once().outcomes == {"sent:email": 1}
        (mail,) = sink.messages
        assert mail["To"] == "ada@xn--bcher-kva.example"

    def test_a_unicode_mailbox_a_relay_cannot_take_fails_at_once(self, engine, clock, plain_relay):
        """A non-ASCII local part has no ASCII form: a relay without SMTPUTF8 will never take
        it, and five attempts over 75 minutes changed nothing."""
        controller, sink = plain_relay
        shop_with(engine, clock, channel="email", email="ädä@example.com")
        channels = {"email": EmailChannel("127.0.0.1", controller.port, "f@tea.example", LINKS)}
        assert Worker(engine, KEYRING, channels, clock).run_once().outcomes == {"failed": 1}
        assert [state for state, *_ in states(engine)] == ["failed"]
        assert sink.messages == []

    def test_a_merchant_name_with_a_line_break_still_gets_its_mail(self, engine, clock, smtp):
        """A name stored before the API refused control characters: EmailMessage refuses a
        line break in a header, which used to end the worker (the review's repro)."""
        controller, sink = smtp
        shop_id, _ = shop_with(engine, clock, channel="email")
        with Session(engine) as session, session.begin():
            session.get(Merchant, shop_id).name = "Tea\r\nBcc: x@evil.example\tHouse"
        channels = {"email": EmailChannel("127.0.0.1", controller.port, "f@tea.example", LINKS)}
        assert Worker(engine, KEYRING, channels, clock).run_once().outcomes == {"sent:email": 1}
        (mail,) = sink.messages
        assert mail["Subject"] == "How was your purchase at Tea Bcc: x@evil.example House?"
        assert mail["Bcc"] is None
        assert mail["From"] == '"Tea Bcc: x@evil.example House" <f@tea.example>'

    def test_a_message_that_cannot_be_built_is_refused_before_connecting(self, engine, clock):
        """Nothing left the process, so it is a DeliveryError (retried), named as such; the
        server is never contacted (a dead port would say so otherwise)."""
        shop_id, contact_id = shop_with(engine, clock, channel="email")
        instruction = instruction_for(
            shop_id, contact_id, clock, channel="email", address="ada@example.com"
        )
        channel = EmailChannel("127.0.0.1", free_port(), "f@tea.example", LINKS, timeout=2)
        with pytest.raises(DeliveryError, match=r"^email: message not built \(UnicodeEncodeError"):
            channel.send(None, instruction, Recipient("Tea \ud800", "UTC", clock.now()))

    @pytest.mark.parametrize(
        "sender", ["Tea <f@tea.example>", "f@tea.example\r\nBcc: x@evil.example", "nobody"]
    )
    def test_the_sender_is_a_bare_address(self, sender):
        with pytest.raises(ValueError, match="bare address"):
            EmailChannel("127.0.0.1", 25, sender, LINKS)

    def test_no_consent_sends_nothing_and_records_why(self, engine, clock, smtp):
        controller, sink = smtp
        shop_with(engine, clock, channel="email", consented=False)
        channels = {"email": EmailChannel("127.0.0.1", controller.port, "f@tea.example", LINKS)}
        Worker(engine, KEYRING, channels, clock).run_once()
        assert sink.messages == []
        assert states(engine) == [("suppressed", None, "no_consent")]

    def test_consent_withdrawn_after_scheduling_is_honoured_at_send_time(self, engine, clock, smtp):
        controller, sink = smtp
        shop_id, contact_id = shop_with(engine, clock, channel="email")
        with Session(engine) as session, session.begin():
            consent.withdraw(
                session,
                shop_id,
                contact_id,
                "service_followup",
                "email",
                actor="ada",
                clock=clock,
                keyring=KEYRING,
            )
        channels = {"email": EmailChannel("127.0.0.1", controller.port, "f@tea.example", LINKS)}
        Worker(engine, KEYRING, channels, clock).run_once()
        assert sink.messages == []
        assert states(engine)[0][0] == "suppressed"

    def test_unreachable_smtp_schedules_a_retry(self, engine, clock):
        shop_with(engine, clock, channel="email")
        channels = {
            "email": EmailChannel("127.0.0.1", free_port(), "f@tea.example", LINKS, timeout=2)
        }
        result = Worker(engine, KEYRING, channels, clock).run_once()
        assert result.outcomes["retry"] == 1
        with Session(engine) as session:
            fu = session.exec(select(FollowUp)).one()
            assert fu.state == "scheduled"
            assert fu.due_at > clock.now()


class _AcceptThenMisbehave:
    """Takes the message at the end of DATA, then either drops the connection before its
    reply reaches the client (``hang_up``: the server has it, the client never hears so) or
    refuses QUIT with a non-221 code (the message was accepted either way)."""

    def __init__(self, *, hang_up: bool) -> None:
        self.messages: list = []
        self.hang_up = hang_up

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(message_from_bytes(envelope.content))
        if self.hang_up:
            server.transport.close()
        return "250 OK"

    async def handle_QUIT(self, server, session, envelope):
        return "421 going away"


def _send_then_retry_window(engine, clock, *, hang_up: bool):
    """One worker run against a misbehaving SMTP server, then another past any retry backoff
    (which must find nothing to send). Returns the first run's outcomes and what the server
    received."""
    handler = _AcceptThenMisbehave(hang_up=hang_up)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        shop_with(engine, clock, channel="email")
        channels = {"email": EmailChannel("127.0.0.1", controller.port, "f@tea.example", LINKS)}
        first = Worker(engine, KEYRING, channels, clock).run_once()
        clock.advance(timedelta(hours=2))
        assert Worker(engine, KEYRING, channels, clock).run_once().claimed == 0
    finally:
        controller.stop()
    return first.outcomes, handler.messages


class TestEmailAtMostOnce:
    def test_a_lost_reply_at_the_end_of_data_is_never_resent(self, engine, clock):
        outcomes, messages = _send_then_retry_window(engine, clock, hang_up=True)
        assert outcomes == {"uncertain": 1}
        assert len(messages) == 1
        assert states(engine) == [("failed", "email", "delivery_uncertain")]
        with Session(engine) as session:  # the customer may hold the link: it still works
            (feedback,) = session.exec(select(Feedback)).all()
            assert feedback.token_hash is not None

    def test_a_refused_quit_after_an_accepted_message_counts_as_sent(self, engine, clock):
        outcomes, messages = _send_then_retry_window(engine, clock, hang_up=False)
        assert outcomes == {"sent:email": 1}
        assert len(messages) == 1
        assert states(engine) == [("sent", "email", None)]

    def test_a_sure_failure_revokes_its_link_so_a_crash_before_the_retry_loses_nothing(
        self, engine, clock
    ):
        """An attempt that delivered nothing for sure is retried; its link is revoked until
        then, so a worker that dies after re-claiming the follow-up (before
        preparing it) leaves a claim that is rescheduled, not written off as interrupted."""
        shop_with(engine, clock, channel="email")
        dead = {"email": EmailChannel("127.0.0.1", free_port(), "f@tea.example", LINKS, timeout=2)}
        assert Worker(engine, KEYRING, dead, clock).run_once().outcomes == {"retry": 1}
        with Session(engine) as session:
            assert session.exec(select(Feedback)).one().token_hash is None
        clock.advance(timedelta(hours=1))
        with Session(engine) as session, session.begin():
            (claimed,) = followups_dispatch.claim_due(session, clock.now(), 5, "doomed-worker")
        clock.advance(timedelta(hours=1))  # its lease runs out
        with Session(engine) as session, session.begin():
            recovered = followups_dispatch.recover_stale(session, clock.now())
        assert recovered == {"rescheduled": [claimed], "interrupted": []}


class _Slow:
    """Stalls at RCPT (``at="rcpt"``), at the end of DATA (``at="data"``, the message already
    taken) or at QUIT (``at="quit"``) until ``release`` is set (at the test's teardown),
    trickling a continuation line every 0.1 s meanwhile: the socket's per-operation timeout
    never trips, only the attempt's deadline can end the wait. After ``limit`` seconds it
    answers anyway, so a client that fails to cut the attempt fails the test, not hangs it."""

    def __init__(self, at: str, limit: float = 10.0) -> None:
        self.messages: list = []
        self.at, self.limit = at, limit
        self.release = threading.Event()
        self.quit_answered = threading.Event()

    async def _stall(self, server, stage: str) -> None:
        if self.at != stage:
            return
        code = "221" if stage == "quit" else "250"
        until = asyncio.get_running_loop().time() + self.limit
        while not self.release.is_set() and asyncio.get_running_loop().time() < until:
            # cancelled when the client cuts the connection
            await server.push(f"{code}-still working")
            await asyncio.sleep(0.1)

    async def handle_QUIT(self, server, session, envelope):
        await self._stall(server, "quit")
        self.quit_answered.set()
        return "221 Bye"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        await self._stall(server, "rcpt")
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(message_from_bytes(envelope.content))
        await self._stall(server, "data")
        return "250 OK"


@contextlib.contextmanager
def _slow_server(at: str) -> Iterator[tuple[_Slow, int]]:
    """A :class:`_Slow` SMTP server on a free port; its stall ends before it stops."""
    handler = _Slow(at)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield handler, controller.port
    finally:
        handler.release.set()
        controller.stop()


@dataclass
class _Greeter:
    port: int
    hung_up: threading.Event  # the client ended the connection mid-greeting
    finished: threading.Event  # the greeting ran to its limit: nobody cut it


@contextlib.contextmanager
def _trickling_greeter(limit: float = 10.0) -> Iterator[_Greeter]:
    """A TCP server whose greeting never ends: a ``220-`` line every 0.1 s, for ``limit``
    seconds at most (so a client that is never cut fails the test, not hangs it)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    greeter = _Greeter(listener.getsockname()[1], threading.Event(), threading.Event())

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                until = time.monotonic() + limit
                while not stop.is_set() and time.monotonic() < until:
                    conn.sendall(b"220-please wait\r\n")
                    readable, _, _ = io_select.select([conn], [], [], 0.1)
                    if readable and conn.recv(1) == b"":
                        greeter.hung_up.set()
                        return
                greeter.finished.set()
                conn.sendall(b"220 ready\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield greeter
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=limit + 5)


class _Refusing:
    """Answers RCPT or the end of DATA with a fixed reply."""

    def __init__(self, at: str, reply: str) -> None:
        self.at, self.reply = at, reply

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.at == "rcpt":
            return self.reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        return self.reply if self.at == "data" else "250 OK"


#: The attempt's deadline in these tests: wide enough that connecting and the exchanges before
#: the stall finish well within it on a loaded machine, so the cut lands in the stall.
_DEADLINE = 3.0


class TestEmailRefusals:
    """A relay's 5xx is permanent (RFC 5321): the follow-up fails at once instead of five
    times over hours. A 4xx (a full mailbox, greylisting) is retried."""

    @pytest.mark.parametrize(
        ("at", "reply", "outcome", "state", "detail"),
        [
            ("rcpt", "550 5.1.1 no such user", "failed", "failed", "smtp: recipient refused (550)"),
            ("data", "554 5.7.1 rejected as spam", "failed", "failed", "smtp: DATA refused (554)"),
            ("rcpt", "452 4.2.2 mailbox full", "retry", "scheduled", "smtp: SMTPRecipientsRefused"),
            ("data", "451 4.7.1 try later", "retry", "scheduled", "smtp: DATA refused (451)"),
        ],
    )
    def test_a_permanent_refusal_fails_at_once(
        self, engine, clock, at, reply, outcome, state, detail
    ):
        controller = Controller(_Refusing(at, reply), hostname="127.0.0.1", port=free_port())
        controller.start()
        try:
            shop_with(engine, clock, channel="email")
            email = EmailChannel("127.0.0.1", controller.port, "f@tea.example", LINKS)
            result = Worker(engine, KEYRING, {"email": email}, clock).run_once()
        finally:
            controller.stop()
        assert result.outcomes == {outcome: 1}
        assert states(engine)[0][0] == state
        assert followup_events(engine)[-1][2] == detail


class TestEmailDeadline:
    """An attempt ends at the channel's deadline whatever the server does, so the worker's
    lease outlasts it (the per-operation timeout here is 10 s, the deadline 3 s; the server
    keeps each read alive)."""

    @pytest.mark.parametrize(
        ("at", "outcome", "state", "said"),
        [
            ("rcpt", "retry", ("scheduled", "email", None), ("scheduled", "retry")),
            (
                "data",
                "uncertain",
                ("failed", "email", "delivery_uncertain"),
                ("failed", "delivery_uncertain"),
            ),
        ],
    )
    def test_a_server_too_slow_is_cut_off(self, engine, clock, at, outcome, state, said):
        with _slow_server(at) as (handler, port):
            shop_with(engine, clock, channel="email")
            email = EmailChannel("127.0.0.1", port, "f@tea.example", LINKS, deadline=_DEADLINE)
            result = Worker(engine, KEYRING, {"email": email}, clock).run_once()
        assert result.outcomes == {outcome: 1}
        assert len(handler.messages) == (1 if at == "data" else 0)
        assert states(engine) == [state]
        to_state, reason, detail = followup_events(engine)[-1]
        assert (to_state, reason) == said
        assert detail == "smtp: attempt cut at 3 s"

    def test_a_greeting_that_never_ends_is_cut_off(self, engine, clock):
        """smtplib reads the greeting inside connect, before the watchdog used to start: a
        relay trickling ``220-`` lines held the worker for ever."""
        with _trickling_greeter() as greeter:
            shop_with(engine, clock, channel="email")
            email = EmailChannel(
                "127.0.0.1", greeter.port, "f@tea.example", LINKS, deadline=_DEADLINE
            )
            result = Worker(engine, KEYRING, {"email": email}, clock).run_once()
            assert greeter.hung_up.wait(5)
            assert not greeter.finished.is_set()
        assert result.outcomes == {"retry": 1}
        assert states(engine) == [("scheduled", "email", None)]
        assert followup_events(engine)[-1] == ("scheduled", "retry", "smtp: attempt cut at 3 s")

    def test_a_name_lookup_that_hangs_is_cut_off(self, engine, clock, monkeypatch):
        released = threading.Event()

        def hanging_lookup(*args, **kwargs):
            released.wait(10)
            raise socket.gaierror("released")

        monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
        try:
            shop_with(engine, clock, channel="email")
            email = EmailChannel("relay.invalid", 25, "f@tea.example", LINKS, deadline=_DEADLINE)
            result = Worker(engine, KEYRING, {"email": email}, clock).run_once()
            assert not released.is_set()
        finally:
            released.set()
        assert result.outcomes == {"retry": 1}
        assert followup_events(engine)[-1] == ("scheduled", "retry", "smtp: attempt cut at 3 s")

    def test_a_relay_with_several_dead_addresses_stays_within_the_deadline(self, monkeypatch):
        """Nothing can be cut before a connection exists: each address got the whole
        per-operation timeout, so four blackholed ones took four of them."""
        from api.dispatch import smtp as smtp_module

        addresses = [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (f"192.0.2.{n}", 25)) for n in range(1, 5)
        ]
        asked: list[float] = []

        def blackholed(address, timeout, source=None):
            asked.append(timeout)
            time.sleep(timeout)  # no SYN-ACK ever comes
            raise TimeoutError("timed out")

        monkeypatch.setattr(smtp_module.socket, "getaddrinfo", lambda *a, **k: addresses)
        monkeypatch.setattr(smtp_module.socket, "create_connection", blackholed)
        conversation = smtp_module.SmtpConversation(
            tls=None, local_hostname="worker", timeout=0.4, deadline=time.monotonic() + 0.6
        )
        with pytest.raises(OSError, match="attempt cut"):
            conversation.open("relay.example", 25)
        assert len(asked) == 2  # the second address got what was left; the third none
        assert asked[0] == 0.4
        assert asked[1] <= 0.2 + 1e-6
        assert conversation.was_cut

    def test_a_server_that_stalls_at_quit_is_cut_off_and_the_message_counts(self, engine, clock):
        """The message was taken: a QUIT the server never answers in time ends the attempt
        as sent, not as a failure. The Message-ID names the sender's domain (no resolver
        call during the attempt)."""
        with _slow_server("quit") as (handler, port):
            shop_with(engine, clock, channel="email")
            email = EmailChannel("127.0.0.1", port, "f@tea.example", LINKS, deadline=_DEADLINE)
            result = Worker(engine, KEYRING, {"email": email}, clock).run_once()
            assert not handler.quit_answered.is_set()
        assert result.outcomes == {"sent:email": 1}
        assert len(handler.messages) == 1
        (message,) = handler.messages
        assert message["Message-ID"].endswith("@tea.example>")


class TestWorkerLoop:
    def test_a_database_that_is_away_for_a_batch_is_waited_for(self, engine, clock, caplog):
        shop_with(engine, clock, channel="in_app")
        worker = Worker(engine, KEYRING, {"in_app": InAppChannel(LINKS, KEYRING)}, clock)
        real = worker.run_once
        failures = [sa.exc.OperationalError("SELECT 1", {}, Exception("database is locked"))]

        def flaky(stop=None):
            if failures:
                raise failures.pop(0)
            return real(stop)

        worker.run_once = flaky  # type: ignore[method-assign]
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), kwargs={"poll_interval": 0.01})
        with caplog.at_level(logging.ERROR):
            thread.start()
            try:
                for _ in range(500):
                    if states(engine) == [("sent", "in_app", None)]:
                        break
                    threading.Event().wait(0.01)
            finally:
                stop.set()
                thread.join(10)
        assert not thread.is_alive()
        assert states(engine) == [("sent", "in_app", None)]
        assert any(
            "worker batch failed (OperationalError" in r.getMessage() for r in caplog.records
        )


class TestWorkerNames:
    def test_workers_get_distinct_names_by_default(self, engine, clock):
        names = {Worker(engine, KEYRING, {}, clock).worker_id for _ in range(3)}
        assert len(names) == 3
        assert all(0 < len(name) <= 64 for name in names)

    def test_copies_given_one_name_still_get_distinct_ids(self):
        """``followpay worker --worker-id w`` started N times (one deployment template) gave
        N workers one id, and the claim check passes for every holder of an id."""
        ids = {default_worker_id("w") for _ in range(3)}
        assert len(ids) == 3
        assert all(i.startswith(f"w-{os.getpid()}-") for i in ids)
        assert len(default_worker_id("x" * 200)) <= 64  # fits the claim column


def endpoint(engine, shop_id, url, events, *, enabled=True):
    """A merchant webhook endpoint as the API makes it; returns its signing secret."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        made, secret = webhooks.create_endpoint(session, str(shop_id), url, events, cipher=CIPHER)
        if not enabled:
            webhooks.disable_endpoint(session, made.id, merchant_id=str(shop_id))
    return secret


#: The test receivers listen on 127.0.0.1.
LOCAL = webhooks.TargetPolicy(allow_private=True)


def webhook_channels(engine, targets=LOCAL):
    return {
        "webhook": WebhookChannel(engine, CIPHER, LINKS, targets=targets),
        "sms": WebhookChannel(engine, CIPHER, LINKS, name="sms", targets=targets),
    }


def delivered_object(engine, clock, headers, body, secret):
    webhooks.verify(secret, headers["FollowPay-Signature"], body, now=clock.now().timestamp())
    event = json.loads(body)
    assert event["type"] == "followup.requested"
    assert headers["FollowPay-Event-Id"] == event["id"]
    return event["data"]["object"]


def followup_events(engine):
    with Session(engine) as session:
        return [(e.to_state, e.reason, e.detail) for e in session.exec(select(FollowUpEvent))]


class TestWebhook:
    def test_signed_event_reaches_each_subscribed_endpoint_once(self, engine, clock, receiver):
        url, handler = receiver
        shop_id, contact_id = shop_with(engine, clock, channel="webhook")
        explicit = endpoint(engine, shop_id, url + "/a", ["followup.requested"])
        wildcard = endpoint(engine, shop_id, url + "/b", ["*"])
        endpoint(engine, shop_id, url + "/c", ["invoice.settled"])
        endpoint(engine, shop_id, url + "/d", ["*"], enabled=False)
        other_shop, _ = shop_with(engine, clock, channel="email")
        endpoint(engine, other_shop, url + "/e", ["*"])

        result = Worker(engine, KEYRING, webhook_channels(engine), clock).run_once()
        assert result.outcomes["sent:webhook"] == 1
        received = sorted(handler.received, key=lambda r: r[0]["Path"])  # posted at once
        assert [h["Path"] for h, _ in received] == ["/hooks/a", "/hooks/b"]
        objects = [
            delivered_object(engine, clock, h, b, secret)
            for (h, b), secret in zip(received, [explicit, wildcard], strict=True)
        ]
        assert objects[0] == objects[1]
        (data,) = objects[:1]
        assert (data["channel"], data["to"], data["contact_id"]) == ("webhook", None, contact_id)
        assert data["invoice"] == "inv_1"
        assert sorted(data["rating_links"]) == ["1", "2", "3", "4", "5"]
        token = data["rating_links"]["5"].split("/feedback/", 1)[1].split("/rate?", 1)[0]
        with Session(engine) as session:
            (feedback,) = session.exec(select(Feedback).where(Feedback.merchant_id == shop_id))
        assert hash_token(token) == feedback.token_hash
        assert data["withdraw_link"] == LINKS.withdraw(token)
        assert ("sent", "webhook", None) in states(engine)

    def test_sms_goes_to_the_gateway_with_the_contacts_number(self, engine, clock, receiver):
        url, handler = receiver
        shop_id, _ = shop_with(engine, clock, channel="sms", phone="+44 20 7183 8750")
        secret = endpoint(engine, shop_id, url, ["followup.requested"])
        result = Worker(engine, KEYRING, webhook_channels(engine), clock).run_once()
        assert result.outcomes["sent:sms"] == 1
        ((headers, body),) = handler.received
        data = delivered_object(engine, clock, headers, body, secret)
        assert (data["channel"], data["to"]) == ("sms", "+442071838750")
        assert "Tea House" in data["text"]

    def test_a_database_away_before_any_post_is_retried_not_written_off(
        self, engine, clock, receiver, monkeypatch
    ):
        """The channel reads the merchant's endpoints before it posts; a database error
        there was taken for "maybe sent" (``delivery_uncertain``, never retried) although
        nothing had left the process: the follow-up was lost for good."""
        import sqlalchemy.exc

        url, handler = receiver
        shop_id, _ = shop_with(engine, clock, channel="webhook")
        endpoint(engine, shop_id, url, ["*"])

        def database_away(*_args, **_kwargs):
            raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("connection closed"))

        monkeypatch.setattr("api.webhooks.signing_targets", database_away)
        result = Worker(engine, KEYRING, webhook_channels(engine), clock).run_once()
        assert handler.received == []
        assert result.outcomes == {"retry": 1}
        assert followup_events(engine)[-1] == (
            "scheduled",
            "retry",
            "webhook: OperationalError before sending",
        )

    def test_without_a_subscribed_endpoint_it_is_retried_with_the_reason(self, engine, clock):
        shop_id, _ = shop_with(engine, clock, channel="webhook")
        endpoint(engine, shop_id, "http://127.0.0.1:9/x", ["invoice.settled"])
        result = Worker(engine, KEYRING, webhook_channels(engine), clock).run_once()
        assert result.outcomes == {"retry": 1}
        assert followup_events(engine)[-1] == (
            "scheduled",
            "retry",
            "no webhook endpoint subscribed to followup.requested",
        )

    def test_an_sms_without_a_number_is_not_posted(self, engine, clock, receiver):
        """The scheduler already suppresses an SMS follow-up without a number; a number erased
        between the claim and the send must not reach the gateway either."""
        url, handler = receiver
        shop_id, contact_id = shop_with(engine, clock, channel="webhook")
        endpoint(engine, shop_id, url, ["*"])
        instruction = instruction_for(shop_id, contact_id, clock, channel="sms", address=None)
        to = Recipient("Tea House", "UTC", clock.now())
        with pytest.raises(DeliveryError, match="no phone number"):
            webhook_channels(engine)["sms"].send(None, instruction, to)
        assert handler.received == []

    def test_failing_receiver_is_retried_later(self, engine, clock, receiver):
        url, handler = receiver
        handler.fail_next = 1
        shop_id, _ = shop_with(engine, clock, channel="webhook")
        endpoint(engine, shop_id, url, ["*"])
        channels = webhook_channels(engine)
        assert Worker(engine, KEYRING, channels, clock).run_once().outcomes["retry"] == 1
        assert followup_events(engine)[-1][2] == "webhook: endpoint answered 503"
        clock.advance(timedelta(hours=1))
        assert Worker(engine, KEYRING, channels, clock).run_once().outcomes["sent:webhook"] == 1
        assert len(handler.received) == 1

    def test_a_retry_after_a_gateway_that_acted_but_failed_carries_the_same_links(
        self, engine, clock, receiver
    ):
        """The SMS gateway sent the text, then answered 502: the retry carries the same
        event id (a careful receiver drops it) and the same links, which work once it is
        through. A new token per attempt left the delivered text with dead links."""
        url, handler = receiver
        handler.act_then_fail_next = 1
        shop_id, _ = shop_with(engine, clock, channel="sms", phone="+44 20 7183 8750")
        secret = endpoint(engine, shop_id, url, ["followup.requested"])
        channels = webhook_channels(engine)
        assert Worker(engine, KEYRING, channels, clock).run_once().outcomes["retry"] == 1
        clock.advance(timedelta(hours=1))
        assert Worker(engine, KEYRING, channels, clock).run_once().outcomes["sent:sms"] == 1
        (first_headers, first), (second_headers, second) = handler.received
        assert first_headers["FollowPay-Event-Id"] == second_headers["FollowPay-Event-Id"]
        before = json.loads(first)["data"]["object"]
        after = delivered_object(engine, clock, second_headers, second, secret)
        assert before["rating_links"] == after["rating_links"]
        assert before["withdraw_link"] == after["withdraw_link"]
        token = before["rating_links"]["5"].split("/feedback/", 1)[1].split("/rate?", 1)[0]
        with Session(engine) as session:
            (feedback,) = session.exec(select(Feedback).where(Feedback.merchant_id == shop_id))
        assert hash_token(token) == feedback.token_hash

    def test_one_endpoint_that_took_it_makes_it_sent_and_none_gets_it_twice(
        self, engine, clock, receiver
    ):
        url, handler = receiver
        handler.fail_paths = frozenset({"/hooks/a"})  # one endpoint refuses, the other takes it
        shop_id, _ = shop_with(engine, clock, channel="webhook")
        endpoint(engine, shop_id, url + "/a", ["*"])
        endpoint(engine, shop_id, url + "/b", ["*"])
        channels = webhook_channels(engine)
        assert Worker(engine, KEYRING, channels, clock).run_once().outcomes["sent:webhook"] == 1
        clock.advance(timedelta(days=1))
        assert Worker(engine, KEYRING, channels, clock).run_once().claimed == 0
        assert [h["Path"] for h, _ in handler.received] == ["/hooks/b"]

    def test_every_endpoint_is_posted_at_once(self, engine, clock, receiver):
        """An attempt takes one POST's deadline whatever the endpoint count (the worker's lease
        must outlast it): the receiver answers only when all three requests are in flight."""
        url, handler = receiver
        paths = frozenset({"/hooks/a", "/hooks/b", "/hooks/c"})
        handler.together = (paths, threading.Barrier(len(paths)))
        shop_id, _ = shop_with(engine, clock, channel="webhook")
        for path in sorted(paths):
            endpoint(engine, shop_id, url + path.removeprefix("/hooks"), ["*"])
        result = Worker(engine, KEYRING, webhook_channels(engine), clock).run_once()
        assert result.outcomes == {"sent:webhook": 1}
        assert {h["Path"] for h, _ in handler.received} == paths
        assert len(handler.received) == len(paths)

    def test_a_receiver_that_hangs_up_after_reading_is_never_called_again(
        self, engine, clock, receiver
    ):
        url, handler = receiver
        handler.hang_up_next = 1
        shop_id, _ = shop_with(engine, clock, channel="webhook")
        endpoint(engine, shop_id, url, ["*"])
        channels = webhook_channels(engine)
        assert Worker(engine, KEYRING, channels, clock).run_once().outcomes == {"uncertain": 1}
        clock.advance(timedelta(hours=1))
        assert Worker(engine, KEYRING, channels, clock).run_once().claimed == 0
        assert len(handler.received) == 1
        assert states(engine) == [("failed", "webhook", "delivery_uncertain")]

    def test_by_default_a_private_address_is_not_posted_to(self, engine, clock, receiver):
        """The channel uses the merchant webhooks' guarded client: an endpoint whose name
        resolves to a private address (here, loopback) is refused at connect time, not sent,
        and the follow-up's log says so in the webhook log's words."""
        url, handler = receiver
        shop_id, _ = shop_with(engine, clock, channel="webhook")
        endpoint(engine, shop_id, url, ["*"])
        channels = webhook_channels(engine, targets=webhooks.TargetPolicy())
        assert Worker(engine, KEYRING, channels, clock).run_once().outcomes == {"retry": 1}
        assert handler.received == []
        assert followup_events(engine)[-1][2] == "webhook: address not allowed"

    @pytest.mark.parametrize(
        ("url", "said"),
        [
            ("https://010.8.8.8/h", "webhook: invalid url"),
            ("https://a..b.example/h", "dns error"),
            ("https://xn--zz.example/h", "webhook: invalid url"),  # not an IDNA 2008 label
        ],
    )
    def test_an_endpoint_url_deliveries_cannot_use_is_a_retry_not_a_crash(
        self, engine, clock, url, said
    ):
        """Stored before registration parsed urls as deliveries do: nothing was sent."""
        shop_id, _ = shop_with(engine, clock, channel="webhook")
        endpoint(engine, shop_id, "https://hooks.example/h", ["*"])
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE api_webhook_endpoints SET url = :u"), {"u": url})
        result = Worker(engine, KEYRING, webhook_channels(engine), clock).run_once()
        assert result.outcomes == {"retry": 1}
        assert said in followup_events(engine)[-1][2]

    def test_an_endpoint_url_that_cannot_be_sent_to_leaves_the_others_delivery_standing(
        self, engine, clock, receiver
    ):
        """The bad url was nothing sent; the healthy endpoint took the event, so the follow-up
        is sent (it was failed as 'delivery_uncertain' when the IDNA error escaped the channel)."""
        url, handler = receiver
        shop_id, _ = shop_with(engine, clock, channel="webhook")
        endpoint(engine, shop_id, url + "/a", ["*"])
        endpoint(engine, shop_id, url + "/b", ["*"])
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE api_webhook_endpoints SET url = :u WHERE url = :was"),
                {"u": "https://xn--zz.example/h", "was": url + "/b"},
            )
        result = Worker(engine, KEYRING, webhook_channels(engine), clock).run_once()
        assert result.outcomes == {"sent:webhook": 1}
        assert [h["Path"] for h, _ in handler.received] == ["/hooks/a"]
        assert ("sent", "webhook", None) in states(engine)

    def test_stalled_endpoints_do_not_keep_a_healthy_one_from_its_post(self, engine, clock):
        """A follow-up POSTs to all of a merchant's endpoints at once. With 15 stalled, the
        16th waited for one of the connection pool's 10 connections until the deadline."""
        shop_id, _ = shop_with(engine, clock, channel="webhook")
        worker = Worker(engine, KEYRING, webhook_channels(engine), clock)
        outcome: list = []
        round_ = threading.Thread(target=lambda: outcome.append(worker.run_once()))
        with stalling_server() as server:
            for n in range(webhooks.MAX_ENABLED_ENDPOINTS - 1):
                endpoint(engine, shop_id, f"{server.base}/slow/{n}", ["*"])
            endpoint(engine, shop_id, f"{server.base}/fast", ["*"])
            round_.start()
            arrived = server.fast_arrived.wait(10)  # a hang guard; with enough connections, at once
            server.release.set()
            round_.join(60)
        assert arrived, "the healthy endpoint waited for a pooled connection"
        assert outcome[0].outcomes == {"sent:webhook": 1}

    def test_only_webhook_and_sms_are_webhook_channels(self, engine):
        with pytest.raises(ValueError, match="'webhook' or 'sms'"):
            WebhookChannel(engine, CIPHER, LINKS, name="email")


class TestInAppAndPhone:
    @pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
    def any_engine(self, request, engine):
        if request.param == "sqlite":
            yield engine
            return
        with migrated_pg_schema(f"dispatch_inapp_{os.getpid()}") as pg:
            yield pg

    def test_a_merchant_name_as_long_as_allowed_gets_its_in_app_message(self, any_engine, clock):
        """Names take 200 characters and the subject around one is longer: PostgreSQL refused
        the row, and every in-app follow-up of that merchant failed after its retries."""
        shop_id, _ = shop_with(any_engine, clock, channel="in_app")
        name = "T" * 200
        MerchantCreate(name=name)  # the API takes it
        with Session(any_engine) as session, session.begin():
            session.get(Merchant, shop_id).name = name
        channels = {"in_app": InAppChannel(LINKS, KEYRING)}
        outcomes = Worker(any_engine, KEYRING, channels, clock).run_once().outcomes
        assert outcomes == {"sent:in_app": 1}
        with Session(any_engine) as session:
            (message,) = session.exec(select(InAppMessage)).all()
        assert len(message.subject) == 200
        assert message.subject.startswith("How was your purchase at TTT")
        assert message.subject.endswith("…")

    def test_in_app_message_is_stored_exactly_once(self, engine, clock):
        shop_with(engine, clock, channel="in_app")
        Worker(engine, KEYRING, {"in_app": InAppChannel(LINKS, KEYRING)}, clock).run_once()
        Worker(engine, KEYRING, {"in_app": InAppChannel(LINKS, KEYRING)}, clock).run_once()
        with Session(engine) as session:
            (message,) = session.exec(select(InAppMessage)).all()
            assert "rating=5" in message.body
        assert states(engine) == [("sent", "in_app", None)]

    def test_in_app_links_are_stored_without_their_token_and_rendered_on_read(self, engine, clock):
        """The stored body holds a placeholder; the token is encrypted under the contact's
        data key, put back when read, and gone with the contact on erasure."""
        shop_id, contact_id = shop_with(engine, clock, channel="in_app")
        Worker(engine, KEYRING, {"in_app": InAppChannel(LINKS, KEYRING)}, clock).run_once()
        with Session(engine) as session:
            (message,) = session.exec(select(InAppMessage)).all()
            (feedback,) = session.exec(select(Feedback)).all()
            assert LINK_TOKEN in message.body
            assert message.link_token_enc is not None
            body = render_in_app(session, KEYRING, message)
        links = [line.split(": ", 1)[1] for line in body.splitlines() if "rating=" in line]
        token = links[0].split("/feedback/", 1)[1].split("/rate?", 1)[0]
        assert hash_token(token) == feedback.token_hash
        assert token not in message.body
        with Session(engine) as session, session.begin():
            privacy.erase_contact(session, shop_id, contact_id, actor="dpo", clock=clock)
        with Session(engine) as session:
            (message,) = session.exec(select(InAppMessage)).all()
            erased = render_in_app(session, KEYRING, message)
        assert token not in erased
        assert "/feedback/withdrawn/rate?rating=5" in erased

    def test_phone_task_carries_the_contacts_local_window(self, engine, clock):
        shop_with(engine, clock, channel="phone", phone="+442071838750")
        Worker(engine, KEYRING, {"phone": PhoneChannel()}, clock).run_once()
        with Session(engine) as session:
            (task,) = session.exec(select(PhoneTask)).all()
        assert task.time_zone == "Europe/London"
        local_end = task.call_before.astimezone(ZoneInfo("Europe/London"))
        assert (local_end.hour, local_end.minute) == (21, 0)
        assert task.call_after < task.call_before


@pytest.mark.parametrize(
    ("local_now", "window"),
    [
        ("2026-06-01 12:00", ("2026-06-01 12:00", "2026-06-01 21:00")),  # inside: call now
        ("2026-06-01 06:30", ("2026-06-01 08:00", "2026-06-01 21:00")),  # early: from 08:00
        ("2026-06-01 23:15", ("2026-06-02 08:00", "2026-06-02 21:00")),  # late: tomorrow
        ("2026-03-28 22:00", ("2026-03-29 08:00", "2026-03-29 21:00")),  # over the DST change
    ],
)
def test_phone_task_window_is_the_contacts_next_local_calling_hours(engine, local_now, window):
    zone = ZoneInfo("Europe/London")
    now = datetime.fromisoformat(local_now).replace(tzinfo=zone)
    clock = FrozenClock(now.astimezone(UTC))
    shop_id, contact_id = shop_with(engine, clock, channel="phone", phone="+442071838750")
    instruction = instruction_for(
        shop_id, contact_id, clock, channel="phone", address="+442071838750"
    )
    with Session(engine, expire_on_commit=False) as session, session.begin():
        PhoneChannel().send(session, instruction, Recipient("Tea House", "Europe/London", now))
    with Session(engine) as session:
        (task,) = session.exec(select(PhoneTask)).all()
    local = tuple(
        t.astimezone(zone).strftime("%Y-%m-%d %H:%M") for t in (task.call_after, task.call_before)
    )
    assert local == window


class TestPeriodic:
    def test_thirty_days_after_the_first_purchase_the_worker_schedules_and_sends(
        self, engine, clock
    ):
        shop_id, _ = shop_with(engine, clock, channel="in_app")
        with Session(engine) as session, session.begin():
            followups_policies.create_policy(
                session,
                shop_id,
                FollowUpPolicyCreate(
                    trigger="periodic",
                    periodic_after_days=30,
                    channel_order=["in_app"],
                    frequency_cap_days=0,
                ),
                actor="owner",
                clock=clock,
            )
        worker = Worker(engine, KEYRING, {"in_app": InAppChannel(LINKS, KEYRING)}, clock)
        worker.run_once()  # the payment follow-up

        def kinds():
            with Session(engine) as session:
                return sorted(f.kind for f in session.exec(select(FollowUp)))

        assert kinds() == ["payment_settled"]
        clock.advance(timedelta(days=31))
        worker.run_once()
        worker.run_once()
        assert kinds() == ["payment_settled", "periodic"]
        with Session(engine) as session:
            periodic = session.exec(select(FollowUp).where(FollowUp.kind == "periodic")).one()
        assert periodic.state == "sent"


class _StopAfterFirst:
    """An in-app channel that asks the worker to stop once it has sent one message."""

    name = "in_app"

    def __init__(self, stop: threading.Event) -> None:
        self.stop, self.inner = stop, InAppChannel(LINKS, KEYRING)

    def send(self, session, instruction, to):
        self.inner.send(session, instruction, to)
        self.stop.set()


def three_due(engine, clock, time_zone="Europe/London"):
    with Session(engine, expire_on_commit=False) as session, session.begin():
        shop = merchants.create_merchant(session, MerchantCreate(name="Tea House"), clock)
        followups_policies.create_policy(
            session,
            shop.id,
            FollowUpPolicyCreate(delay_minutes=0, frequency_cap_days=0, channel_order=["in_app"]),
            actor="owner",
            clock=clock,
        )
        person = contacts.create_contact(
            session, shop.id, ContactCreate(name="Ada", time_zone=time_zone), KEYRING, clock
        )
        consent.grant(
            session,
            shop.id,
            person.id,
            "service_followup",
            "in_app",
            actor="ada",
            clock=clock,
            keyring=KEYRING,
        )
        for n in range(3):
            followups.schedule_for_payment(
                session, shop.id, person.id, f"pay_{n}", f"inv_{n}", 1, "tUSD", clock.now(), clock
            )


class TestSlowBatch:
    def test_a_batch_slower_than_the_lease_keeps_the_claims_it_has_not_reached(
        self, engine, clock, smtp
    ):
        """Each e-mail takes 50 s here (a 2-minute lease). Another worker that recovers stale
        claims during the third finds none: the busy worker renewed the rest of its batch, so
        its fourth is not taken over as a dead worker's, and all four are sent by it."""
        controller, sink = smtp
        for n in range(4):
            shop_with(engine, clock, channel="email", email=f"c{n}@example.com")
        email = EmailChannel("127.0.0.1", controller.port, "f@tea.example", LINKS)
        recovered = []

        class Slow:
            name = "email"

            def send(self, session, instruction, to):
                clock.advance(timedelta(seconds=50))
                if len(sink.messages) == 2:  # the third: 150 s after the claim
                    with Session(engine) as other, other.begin():
                        recovered.append(
                            followups_dispatch.recover_stale(
                                other, clock.now(), timedelta(minutes=2)
                            )
                        )
                email.send(session, instruction, to)

        worker = Worker(engine, KEYRING, {"email": Slow()}, clock, lease=timedelta(minutes=2))
        result = worker.run_once()
        assert recovered == [{"rescheduled": [], "interrupted": []}]
        assert result.outcomes == {"sent:email": 4}
        assert sorted(m["To"] for m in sink.messages) == [f"c{n}@example.com" for n in range(4)]


class TestStopping:
    def test_a_stop_mid_batch_hands_back_the_claims_not_yet_started(self, engine, clock):
        three_due(engine, clock)
        stop = threading.Event()
        channel = _StopAfterFirst(stop)
        result = Worker(engine, KEYRING, {"in_app": channel}, clock, worker_id="w1").run_once(stop)
        assert result.claimed == 3
        assert result.outcomes == {"sent:in_app": 1, "released": 2}
        with Session(engine) as session:
            rows = session.exec(select(FollowUp).order_by(FollowUp.id)).all()
            assert [r.state for r in rows] == ["sent", "scheduled", "scheduled"]
            assert [r.worker_id for r in rows[1:]] == [None, None]
            last = session.exec(
                select(FollowUpEvent)
                .where(FollowUpEvent.followup_id == rows[1].id)
                .order_by(FollowUpEvent.id.desc())
            ).first()
            assert (last.to_state, last.reason, last.detail) == ("scheduled", "released", "w1")
        # another worker picks them up at once, without waiting for the lease
        other = Worker(
            engine, KEYRING, {"in_app": InAppChannel(LINKS, KEYRING)}, clock, worker_id="w2"
        )
        assert other.run_once().outcomes == {"sent:in_app": 2}
        with Session(engine) as session:
            assert len(session.exec(select(InAppMessage)).all()) == 3

    def test_release_leaves_prepared_and_foreign_claims_alone(self, engine, clock):
        three_due(engine, clock)
        with Session(engine) as session, session.begin():
            first, second, third = followups_dispatch.claim_due(session, clock.now(), 3, "w1")
            followups_dispatch.prepare_send(session, first, clock.now(), KEYRING, worker_id="w1")
        with Session(engine) as session, session.begin():
            fu = session.get(FollowUp, third)
            fu.worker_id = "w2"
            session.add(fu)
        with Session(engine) as session, session.begin():
            released = followups_dispatch.release_claims(
                session, [first, second, third, 999], clock.now(), worker_id="w1"
            )
        assert released == [second]
        with Session(engine) as session:
            got = {f.id: (f.state, f.worker_id) for f in session.exec(select(FollowUp))}
        assert got == {
            first: ("queued", "w1"),
            second: ("scheduled", None),
            third: ("queued", "w2"),
        }
