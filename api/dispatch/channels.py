"""Delivery channels for follow-ups: e-mail (SMTP), webhook and SMS (a signed POST to the
merchant's endpoints), in-app, phone task.

A channel gets a :class:`crm.SendInstruction` (address and single-use feedback token included)
and either delivers it or raises :class:`DeliveryError`; the worker records the outcome.
"""

from __future__ import annotations

import dataclasses
import email.policy
import logging
import re
import smtplib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
from email_validator import EmailNotValidError, validate_email
from pydantic import SecretStr
from sqlalchemy import Engine
from sqlmodel import Session

from api import webhooks
from api.dispatch.models import LINK_TOKEN, SUBJECT_MAX_LENGTH, InAppMessage, PhoneTask
from api.dispatch.smtp import SmtpAccess, SmtpSecurity, SmtpSecurityError
from api.webhooks.secrets import SecretCipher
from api.webhooks.transport import describe_error, post
from crm import KeyRing
from crm.contacts import service as contacts
from crm.followups.dispatch import SendInstruction
from crm.followups.windows import window_bounds

log = logging.getLogger(__name__)

__all__ = [
    "CONTROL_CHARACTERS",
    "EMAIL_ATTEMPT_TIMEOUT",
    "FOLLOWUP_EVENT",
    "MIN_CALL_TIME",
    "DeliveryError",
    "DeliveryRefused",
    "DeliveryUncertain",
    "EmailChannel",
    "InAppChannel",
    "Links",
    "PhoneChannel",
    "Recipient",
    "WebhookChannel",
    "call_window",
    "header_text",
    "render_in_app",
]


class DeliveryError(Exception):
    """The channel could not deliver and nothing reached the recipient: the worker retries
    with backoff."""


class DeliveryRefused(DeliveryError):
    """Nothing reached the recipient and no retry can change that (the message cannot be
    built from the data it has; the relay refused the recipient or the message with a
    permanent 5xx reply): the follow-up fails at once instead of after every backoff."""


class DeliveryUncertain(DeliveryError):
    """The message may have reached the recipient: the connection failed after the server had
    it and before it answered (an SMTP reply to the end of DATA, an HTTP response). Never
    retried, so a follow-up is sent at most once."""


@dataclass(frozen=True, slots=True)
class Recipient:
    """What a channel needs besides the instruction (never logged: may name a person)."""

    merchant_name: str
    time_zone: str
    now: datetime


def _ascii_domain(address: str) -> str:
    """``address`` with an internationalised domain in its ASCII (IDNA) form where the local
    part is ASCII: any relay takes it, while the Unicode form needs SMTPUTF8, which most
    relays lack. A non-ASCII local part has no ASCII form."""
    try:
        return validate_email(address, check_deliverability=False).ascii_email or address
    except EmailNotValidError:
        return address


@dataclass(frozen=True, slots=True)
class Links:
    """Customer-facing URLs (no API key: the single-use token is the credential)."""

    base_url: str

    def __post_init__(self) -> None:
        # "https://pay.example/" made every link "//v1/public/...": a 404 for every customer
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))

    def rating(self, token: str, rating: int) -> str:
        """A confirmation page with ``rating`` chosen; only its button records (a prefetching
        mail scanner or link preview rates nothing)."""
        return f"{self.base_url}/v1/public/feedback/{token}/rate?rating={rating}"

    def withdraw(self, token: str) -> str:
        return f"{self.base_url}/v1/public/consent/{token}/withdraw"


#: What no header may carry (and the API refuses in names that end up in one): C0 and C1
#: controls, line breaks (CR, LF, U+2028/U+2029) and tabs included.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def header_text(text: str) -> str:
    """``text`` fit for a header (a display name, a subject): control characters, line breaks
    included, become one space. The API refuses them in merchant names; rows from before that
    still get their mail."""
    return CONTROL_CHARACTERS.sub(" ", text).strip()


def _subject(instruction: SendInstruction, merchant_name: str) -> str:
    return f"How was your purchase at {header_text(merchant_name)}?"


def _cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters (merchant names take 200, and the subject
    around one did not fit its column on PostgreSQL: every in-app message failed)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _body(instruction: SendInstruction, merchant_name: str, links: Links) -> str:
    lines = [
        f"Thank you for your payment to {merchant_name} (invoice {instruction.invoice_ref}).",
        "How did it go? One click is enough:",
        "",
    ]
    lines += [f"  {n} {'*' * n}: {links.rating(instruction.token, n)}" for n in range(1, 6)]
    lines += [
        "",
        "Answering earns you reward points, whatever you answer.",
        f"Stop these messages: {links.withdraw(instruction.token)}",
    ]
    return "\n".join(lines)


#: RFC 5322's hard line limit. Headers fold at it, not at 78: the List-Unsubscribe URL has no
#: place to fold, and at 78 the generator turned it into an RFC 2047 encoded word that mail
#: clients cannot read as the RFC 8058 one-click URL.
_MAX_HEADER_LINE = 998
#: ``FOLLOWPAY_MAIL_FROM``: an addr-spec only (the display name is the merchant's).
_ADDR_SPEC = re.compile(r"[^\s<>()\[\],;:\\\"@\x00-\x1f\x7f]+@[^\s<>()\[\],;:\\\"@\x00-\x1f\x7f]+")


#: Seconds one e-mail attempt may take in all, connection to QUIT (each socket operation also
#: has the channel's ``timeout``): the follow-up worker's lease must outlast an attempt.
EMAIL_ATTEMPT_TIMEOUT = 30.0


class EmailChannel:
    """Submits each follow-up to one SMTP server (the merchant's relay). An attempt is cut at
    ``deadline`` seconds whatever the server does (a watchdog shuts the socket down; a server
    trickling its replies would never trip the per-operation ``timeout``): before ``DATA``
    that delivered nothing, during it the message may have arrived."""

    name = "email"

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        links: Links,
        timeout: float = 10,
        deadline: float = EMAIL_ATTEMPT_TIMEOUT,
        *,
        security: SmtpSecurity | str = SmtpSecurity.NONE,
        username: str | None = None,
        password: SecretStr | None = None,
        ca_file: Path | None = None,
    ) -> None:
        if not _ADDR_SPEC.fullmatch(sender):
            raise ValueError("the sender must be a bare address (local@domain), no name or spaces")
        self.relay = SmtpAccess(
            host, port, SmtpSecurity(security), username, password, ca_file
        )  # checks the combination (no password in clear to a remote relay)
        self.sender, self.links = sender, links
        self.timeout, self.deadline = timeout, deadline
        # Looked up once, here: smtplib and make_msgid would ask the resolver on every
        # attempt, outside the attempt's deadline.
        self.local_hostname = socket.getfqdn()
        self.msgid_domain = sender.rsplit("@", 1)[1]

    def send(self, session: Session | None, instruction: SendInstruction, to: Recipient) -> None:
        if not instruction.address:
            raise DeliveryError("contact has no e-mail address")
        address = _ascii_domain(instruction.address)
        international = not (self.sender + address).isascii()
        try:  # the whole message before any connection: a failure here sent nothing
            data = self._message(instruction, address, to, international)
        except (ValueError, TypeError, LookupError) as exc:  # UnicodeError is a ValueError
            raise DeliveryRefused(f"email: message not built ({type(exc).__name__})") from None
        smtp = self.relay.conversation(
            timeout=min(self.timeout, self.deadline),
            local_hostname=self.local_hostname,
            deadline=time.monotonic() + self.deadline,
        )
        # From before the connection: the name lookup, the greeting and a TLS handshake are
        # inside the deadline too.
        watchdog = threading.Timer(self.deadline, smtp.cut)
        watchdog.daemon = True
        watchdog.start()
        try:
            try:
                smtp.open(self.relay.host, self.relay.port)
            except (OSError, smtplib.SMTPException) as exc:  # ssl.SSLError is an OSError
                raise DeliveryError(f"smtp: {type(exc).__name__}") from None
            self._transfer(smtp, address, data, international)
        except DeliveryError as exc:
            if smtp.was_cut:  # the same kind: before DATA nothing arrived, during it maybe
                raise type(exc)(f"smtp: attempt cut at {self.deadline:g} s") from None
            raise
        finally:
            try:  # the message is the server's now: a failing QUIT changes nothing
                smtp.quit()  # still under the watchdog: a server that stalls here is cut too
            except (OSError, smtplib.SMTPException):
                smtp.close()
            watchdog.cancel()

    def _message(
        self, instruction: SendInstruction, address: str, to: Recipient, international: bool
    ) -> bytes:
        message = EmailMessage()
        message["From"] = formataddr((header_text(to.merchant_name), self.sender))
        message["To"] = address
        message["Subject"] = _subject(instruction, to.merchant_name)
        message["Date"] = format_datetime(to.now)  # RFC 5322 requires it; filters score it
        message["Message-ID"] = make_msgid(
            idstring=f"followup-{instruction.followup_id}", domain=self.msgid_domain
        )
        message["List-Unsubscribe"] = f"<{self.links.withdraw(instruction.token)}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message.set_content(_body(instruction, to.merchant_name, self.links))
        policy = email.policy.SMTPUTF8 if international else email.policy.SMTP
        return message.as_bytes(policy=policy.clone(max_line_length=_MAX_HEADER_LINE))

    def _transfer(self, smtp: smtplib.SMTP, address: str, data: bytes, international: bool) -> None:
        """The envelope, then DATA. A failure before DATA, or a refusal code at its end,
        delivered nothing; a lost connection during DATA may have delivered it."""
        try:
            self.relay.secure(smtp)  # STARTTLS and AUTH as configured, before the envelope
        except SmtpSecurityError as exc:
            raise DeliveryError(f"smtp: {exc}") from None
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"smtp: authentication refused ({exc.smtp_code})") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"smtp: {type(exc).__name__} securing the session") from None
        try:
            options: list[str] = []
            if international:
                if not smtp.has_extn("smtputf8"):  # retrying the same relay changes nothing
                    raise DeliveryRefused("smtp: server lacks SMTPUTF8 for this address")
                options = ["SMTPUTF8", "BODY=8BITMIME"]
            code, reply = smtp.mail(self.sender, options)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, reply, self.sender)
            code, reply = smtp.rcpt(address)
            if 500 <= code < 600:  # no such mailbox, relaying denied: no retry changes that
                raise DeliveryRefused(f"smtp: recipient refused ({code})")
            if code not in (250, 251):
                raise smtplib.SMTPRecipientsRefused({address: (code, reply)})
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"smtp: {type(exc).__name__}") from None
        try:
            # smtplib raises for a refused DATA command (before the message) and returns the
            # reply to the message itself, whatever its code
            code, _ = smtp.data(data)
        except smtplib.SMTPDataError as exc:  # a reply code: the server refused it
            code = exc.smtp_code
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryUncertain(f"smtp: {type(exc).__name__} during DATA") from None
        if code != 250:  # refused: nothing was delivered (a 4xx is worth another try)
            kind = DeliveryRefused if 500 <= code < 600 else DeliveryError
            raise kind(f"smtp: DATA refused ({code})")


#: httpx errors raised before a request left the process (no connection, or refused locally).
_NOT_SENT = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.LocalProtocolError,
    httpx.ProxyError,
)
FOLLOWUP_EVENT = "followup.requested"


class WebhookChannel:
    """For SMS gateways or the merchant's own system: the follow-up as a signed
    ``followup.requested`` event, POSTed to each of the merchant's enabled webhook endpoints
    subscribed to it (``*`` included), signed with the endpoint's own secret (DESIGN §8).

    One class serves two channels: ``webhook`` (no address) and ``sms`` (``to`` is the
    contact's E.164 number, for the merchant's SMS gateway). Sent directly, not through the
    outbox: the body names the customer and carries the single-use rating token, which must not
    stay behind in a stored delivery that erasure cannot reach. The event id is derived from the
    follow-up, so it is the same on a retry.

    At most once per endpoint: one endpoint that took it makes the follow-up sent (the others'
    failures are logged); when none did, a refusal or connection error is retried with the
    follow-up's backoff and a response lost after sending is :class:`DeliveryUncertain`.

    POSTs go through the merchant webhooks' guarded client (``targets``: public addresses only
    unless the policy allows private ones, checked at connect time), one bounded attempt each,
    all at once (a follow-up's attempt takes one POST's deadline, whatever the endpoint count),
    and failures are logged as the webhook log's fixed phrases, never the exception's text.
    """

    def __init__(
        self,
        engine: Engine,
        cipher: SecretCipher,
        links: Links,
        *,
        name: str = "webhook",
        targets: webhooks.TargetPolicy | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        if name not in ("webhook", "sms"):
            raise ValueError(f"a webhook channel is 'webhook' or 'sms', not {name!r}")
        self.engine, self.cipher, self.links, self.name = engine, cipher, links, name
        self.client = client or webhooks.delivery_client(targets or webhooks.TargetPolicy())

    def send(self, session: Session | None, instruction: SendInstruction, to: Recipient) -> None:
        if self.name == "sms" and not instruction.address:
            raise DeliveryError("contact has no phone number")
        try:  # nothing has left the process yet: any failure here is a sure one, retried
            with Session(self.engine) as own:
                targets = webhooks.signing_targets(
                    own, str(instruction.merchant_id), FOLLOWUP_EVENT, self.cipher, to.now
                )
            event_id = f"evt_followup_{instruction.followup_id}"
            body = webhooks.event_body(
                event_id, FOLLOWUP_EVENT, self._object(instruction, to), to.now
            )
        except Exception as exc:  # a database away: taken for "maybe sent", it was never retried
            raise DeliveryError(f"{self.name}: {type(exc).__name__} before sending") from exc
        if not targets:
            raise DeliveryError(f"no webhook endpoint subscribed to {FOLLOWUP_EVENT}")
        failures: list[DeliveryError] = []
        for target, failure in zip(
            targets, self._post_all(targets, body, event_id, to.now), strict=True
        ):
            if failure is not None:
                failures.append(failure)
                log.warning(
                    "follow-up %s to %s: %s", instruction.followup_id, target.endpoint_id, failure
                )
        if len(failures) == len(targets):
            uncertain = [f for f in failures if isinstance(f, DeliveryUncertain)]
            raise uncertain[0] if uncertain else failures[0]

    def _object(self, instruction: SendInstruction, to: Recipient) -> dict[str, object]:
        return {
            "object": "followup",
            "id": instruction.followup_id,
            "channel": self.name,
            "contact_id": instruction.contact_id,
            "invoice": instruction.invoice_ref,
            "locale": instruction.locale,
            "to": instruction.address if self.name == "sms" else None,
            "subject": _subject(instruction, to.merchant_name),
            "text": _body(instruction, to.merchant_name, self.links),
            "rating_links": {n: self.links.rating(instruction.token, n) for n in range(1, 6)},
            "withdraw_link": self.links.withdraw(instruction.token),
            "links_expire_at": int(instruction.token_expires_at.timestamp()),
        }

    def _post_all(
        self, targets: list[webhooks.SigningTarget], body: str, event_id: str, now: datetime
    ) -> list[DeliveryError | None]:
        """POST to every target at once, so an attempt takes one POST's deadline however many
        endpoints the merchant has (at most :data:`~api.webhooks.MAX_ENABLED_ENDPOINTS`): the
        worker's lease must outlast it. Each target's failure, or ``None``, in target order."""

        def attempt(target: webhooks.SigningTarget) -> DeliveryError | None:
            try:
                self._post(target, body, event_id, now)
            except DeliveryError as exc:
                return exc
            return None

        if len(targets) == 1:
            return [attempt(targets[0])]
        threads = min(len(targets), webhooks.MAX_ENABLED_ENDPOINTS)  # more: registered before it
        with ThreadPoolExecutor(threads, thread_name_prefix="followup-post") as pool:
            return list(pool.map(attempt, targets))

    def _post(
        self, target: webhooks.SigningTarget, body: str, event_id: str, now: datetime
    ) -> None:
        headers = webhooks.signed_headers(target.secrets, body, now, event_id)
        try:
            response = post(self.client, target.url, body.encode(), headers)
        except (httpx.InvalidURL, UnicodeError):  # stored before registration parsed urls so
            raise DeliveryError(f"{self.name}: invalid url") from None
        except _NOT_SENT as exc:
            raise DeliveryError(f"{self.name}: {describe_error(exc)}") from None
        except httpx.HTTPError as exc:  # sent, or partly: the receiver may have acted on it
            raise DeliveryUncertain(f"{self.name}: {describe_error(exc)}") from None
        if response.status_code >= 300:
            raise DeliveryError(f"{self.name}: endpoint answered {response.status_code}")


def _token_context(followup_id: int) -> str:
    return f"api_inapp_message.link_token:{followup_id}"


class InAppChannel:
    """Stores the message for the customer's inbox. The stored body holds a placeholder where
    the links' token goes; the token itself is encrypted under the contact's data key and put
    back only when the message is read (:func:`render_in_app`)."""

    name = "in_app"

    def __init__(self, links: Links, keyring: KeyRing) -> None:
        self.links, self.keyring = links, keyring

    def send(self, session: Session | None, instruction: SendInstruction, to: Recipient) -> None:
        assert session is not None, "in-app delivery writes in the worker's transaction"
        key = contacts.data_key(
            session,
            self.keyring,
            contacts.get_contact(session, instruction.merchant_id, instruction.contact_id),
        )
        if key is None:
            raise DeliveryError("contact has no data key (erased)")
        template = dataclasses.replace(instruction, token=LINK_TOKEN)
        session.add(
            InAppMessage(
                merchant_id=instruction.merchant_id,
                contact_id=instruction.contact_id,
                followup_id=instruction.followup_id,
                subject=_cut(_subject(instruction, to.merchant_name), SUBJECT_MAX_LENGTH),
                body=_body(template, to.merchant_name, self.links),
                link_token_enc=key.encrypt(
                    instruction.token, _token_context(instruction.followup_id)
                ),
                created_at=to.now,
            )
        )


def render_in_app(session: Session, keyring: KeyRing, message: InAppMessage) -> str:
    """One message's body with its own links' token put back (a body from before 0006 carries
    it already). One at a time: a reader is shown only the message its own token belongs to.
    A contact erased since has no key: the links read as withdrawn."""
    if message.link_token_enc is None:
        return message.body
    found = contacts.get_contacts(session, message.merchant_id, [message.contact_id])
    contact = found.get(message.contact_id)
    key = None if contact is None else contacts.data_key(session, keyring, contact)
    context = _token_context(message.followup_id)
    token = key.decrypt(message.link_token_enc, context) if key is not None else None
    return message.body.replace(LINK_TOKEN, token or "withdrawn")


#: The least time a phone task leaves support to call in: a follow-up sent closer to the end of
#: the contact's calling window gets the next window instead.
MIN_CALL_TIME = timedelta(minutes=30)


class PhoneChannel:
    """A call task in the support queue, inside the policy's send window (the instruction's)
    in the contact's local time: the window it is sent in (if at least :data:`MIN_CALL_TIME`
    of it is left), or the next one."""

    name = "phone"

    def send(self, session: Session | None, instruction: SendInstruction, to: Recipient) -> None:
        zone = str(ZoneInfo(to.time_zone or "UTC"))
        minutes = (instruction.window_start_minute, instruction.window_end_minute)
        after, before = call_window(to.now, zone, *minutes)
        assert session is not None, "phone tasks are written in the worker's transaction"
        session.add(
            PhoneTask(
                merchant_id=instruction.merchant_id,
                contact_id=instruction.contact_id,
                followup_id=instruction.followup_id,
                time_zone=zone,
                call_after=after,
                call_before=before,
                window_start_minute=minutes[0],
                window_end_minute=minutes[1],
                created_at=to.now,
            )
        )


def call_window(
    now: datetime, zone: str, start_minute: int, end_minute: int
) -> tuple[datetime, datetime]:
    """``(call after, call before)``: the part of the daily window ``now`` is in, if at least
    :data:`MIN_CALL_TIME` of it is left, else the next window."""
    start, end = window_bounds(now, zone, start_minute, end_minute)
    if end - max(start, now) < MIN_CALL_TIME:
        start, end = window_bounds(end, zone, start_minute, end_minute)
    return max(start, now), end
