"""How the e-mail channel reaches its relay: plain SMTP (a local relay), STARTTLS (submission,
port 587) or implicit TLS (port 465), with optional AUTH.

A relay that is not on this machine sees the customer's address, the message and its live
rating and withdraw links, so credentials are refused over a plain connection to anything but
loopback, and STARTTLS, once asked for, is required: a server that does not offer it (or a
man in the middle that strips it) gets no password and no message. Certificates are verified
against the system's CAs, or a CA file for a private relay.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import smtplib
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from api.deadline import run_within

__all__ = ["SmtpAccess", "SmtpConversation", "SmtpSecurity", "SmtpSecurityError"]


class SmtpSecurity(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    TLS = "tls"


class SmtpSecurityError(smtplib.SMTPException):
    """The relay cannot give the connection the security it was configured with."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class SmtpAccess:
    """Host, port, transport security and credentials of one relay. The password is a
    :class:`~pydantic.SecretStr`: never in ``repr``, logs or errors."""

    host: str
    port: int
    security: SmtpSecurity = SmtpSecurity.NONE
    username: str | None = None
    password: SecretStr | None = field(default=None, repr=False)
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "security", SmtpSecurity(self.security))
        if (self.username is None) != (self.password is None):
            raise ValueError("SMTP AUTH needs both a user name and a password")
        plain = self.security == SmtpSecurity.NONE
        if self.username is not None and plain and not _loopback(self.host):
            raise ValueError(
                f"SMTP AUTH to {self.host} over a plain connection would send the password "
                "in clear: use security 'starttls' or 'tls'"
            )
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"SMTP CA file {self.ca_file} does not exist")

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    def conversation(
        self, *, timeout: float, local_hostname: str, deadline: float
    ) -> SmtpConversation:
        """A conversation not yet connected (:meth:`SmtpConversation.open`), TLS from the
        first byte when ``security`` is ``tls``; ``deadline`` is a ``time.monotonic()``."""
        tls = self.tls_context() if self.security == SmtpSecurity.TLS else None
        return SmtpConversation(
            tls=tls, local_hostname=local_hostname, timeout=timeout, deadline=deadline
        )

    def secure(self, smtp: smtplib.SMTP) -> None:
        """After connecting: STARTTLS when configured (required), then AUTH when configured.
        Raises :class:`smtplib.SMTPException` (nothing was sent)."""
        smtp.ehlo_or_helo_if_needed()
        if self.security == SmtpSecurity.STARTTLS:
            if not smtp.has_extn("starttls"):
                raise SmtpSecurityError("server offers no STARTTLS")
            smtp.starttls(context=self.tls_context())
            smtp.ehlo()
        if self.username is not None and self.password is not None:
            smtp.login(self.username, self.password.get_secret_value())


class SmtpConversation(smtplib.SMTP):
    """An :class:`smtplib.SMTP` that another thread can end in every phase: :meth:`cut` shuts
    the TCP connection down, which wakes a read or write blocked on it — the server's
    greeting, a TLS handshake (implicit or STARTTLS), any command. smtplib reads the greeting
    inside ``connect``, and a relay that trickles it (``220-`` lines, each inside the
    per-operation timeout) held the worker for ever. The name lookup runs in a daemon thread
    bounded by the deadline (``getaddrinfo`` cannot be cancelled)."""

    def __init__(
        self,
        *,
        tls: ssl.SSLContext | None,
        local_hostname: str,
        timeout: float,
        deadline: float,
    ) -> None:
        self._tls, self._deadline = tls, deadline
        self._cut = threading.Event()
        self._guard = threading.Lock()
        self._handle: socket.socket | None = None  # a duplicate of the connection's descriptor
        super().__init__(local_hostname=local_hostname, timeout=timeout)  # no host: not yet

    @property
    def was_cut(self) -> bool:
        return self._cut.is_set()

    def open(self, host: str, port: int) -> None:
        """Connect and read the greeting. Raises ``OSError`` or ``smtplib.SMTPException``."""
        self._host = host  # STARTTLS checks the certificate against it (smtplib sets it in
        # __init__, which had no host)
        code, _ = self.connect(host, port)
        if code != 220:
            raise smtplib.SMTPConnectError(code, "greeting refused")

    def cut(self) -> None:
        self._cut.set()
        with self._guard:
            handle = self._handle
        if handle is not None:
            with contextlib.suppress(OSError):  # shutdown reaches every descriptor of it
                handle.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        try:
            super().close()
        finally:
            with self._guard:
                handle, self._handle = self._handle, None
            if handle is not None:
                handle.close()

    def _first_connection(self, addresses: list[Any], timeout: float) -> socket.socket:
        """The first of the relay's addresses that connects, each tried for what is left of
        the deadline at most: nothing is there to cut until a connection exists."""
        error: OSError = OSError("no address to connect to")
        for _family, _type, _proto, _name, address in addresses:
            left = self._deadline - time.monotonic()
            if self._cut.is_set() or left <= 0:
                self._cut.set()
                raise OSError("smtp attempt cut")
            try:
                return socket.create_connection(
                    address[:2], min(timeout, left), self.source_address
                )
            except OSError as exc:
                error = exc
        raise error

    def _get_socket(self, host: str, port: int, timeout: float) -> Any:
        try:
            addresses = run_within(
                lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                self._deadline - time.monotonic(),
                "smtp name lookup",
            )
        except TimeoutError:  # the attempt's deadline, reached before there was a socket
            self._cut.set()
            raise
        raw = self._first_connection(addresses, timeout)
        with self._guard:
            self._handle = socket.socket(fileno=os.dup(raw.fileno()))
        if self._cut.is_set():  # cut while connecting: the handle was not there to shut
            raw.close()
            raise OSError("smtp attempt cut")
        return raw if self._tls is None else self._tls.wrap_socket(raw, server_hostname=host)
