"""How the e-mail channel reaches its relay: plain SMTP (a local relay), STARTTLS (submission,
port 587) or implicit TLS (port 465), with optional AUTH.

A relay that is not on this machine sees the customer's address, the message and its live
rating and withdraw links, so credentials are refused over a plain connection to anything but
loopback, and STARTTLS, once asked for, is required: a server that does not offer it (or a
man in the middle that strips it) gets no password and no message. Certificates are verified
against the system's CAs, or a CA file for a private relay.
"""

from __future__ import annotations

import ipaddress
import smtplib
import ssl
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from pydantic import SecretStr

__all__ = ["SmtpAccess", "SmtpSecurity", "SmtpSecurityError"]


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

    def connect(self, *, timeout: float, local_hostname: str) -> smtplib.SMTP:
        """A connection, TLS from the first byte when ``security`` is ``tls``."""
        if self.security == SmtpSecurity.TLS:
            return smtplib.SMTP_SSL(
                self.host,
                self.port,
                local_hostname=local_hostname,
                timeout=timeout,
                context=self.tls_context(),
            )
        return smtplib.SMTP(self.host, self.port, local_hostname=local_hostname, timeout=timeout)

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
