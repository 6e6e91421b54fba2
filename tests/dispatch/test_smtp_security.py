"""The e-mail channel to a relay that is not on this machine: STARTTLS or implicit TLS with a
verified certificate, and SMTP AUTH that never goes out in clear (aiosmtpd relays on 127.0.0.1
with a certificate made here)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from email import message_from_bytes
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr

from api.dispatch.channels import EmailChannel
from api.dispatch.smtp import SmtpAccess
from api.dispatch.worker import Worker
from tests.dispatch.test_worker import KEYRING, LINKS, followup_events, shop_with, states
from wallet.chain import free_port

SENDER = "f@tea.example"
USER, PASSWORD = "relay-user", "s3cret-relay-pw"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA): (cert, key) PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("relay")
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class _Relay:
    """Keeps what it was sent and the credentials it was offered."""

    def __init__(self) -> None:
        self.messages: list = []
        self.logins: list[tuple[str, str]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.logins.append((login, password))
        return AuthResult(success=(login, password) == (USER, PASSWORD), handled=False)


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def relay(certificate, request) -> Iterator[tuple[_Relay, int]]:
    """A relay in the mode the test names: ``starttls`` (required before AUTH and MAIL),
    ``tls`` (implicit) or ``plain`` (no TLS offered at all)."""
    mode = request.param
    handler = _Relay()
    # implicit TLS is not "TLS" to aiosmtpd's auth_require_tls (it knows STARTTLS only)
    options: dict = {"authenticator": handler.authenticate, "auth_require_tls": mode == "starttls"}
    if mode == "starttls":
        options |= {"tls_context": _server_context(certificate), "require_starttls": True}
    elif mode == "tls":
        options |= {"ssl_context": _server_context(certificate)}
    controller = Controller(handler, hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


def _send(
    engine,
    clock,
    port: int,
    *,
    security: str = "starttls",
    password: str = PASSWORD,
    ca_file: Path | None = None,
) -> dict[str, int]:
    """One worker run against the relay on ``port`` as ``USER``."""
    shop_with(engine, clock, channel="email")
    email = EmailChannel(
        "127.0.0.1",
        port,
        SENDER,
        LINKS,
        timeout=5,
        security=security,
        username=USER,
        password=SecretStr(password),
        ca_file=ca_file,
    )
    return Worker(engine, KEYRING, {"email": email}, clock).run_once().outcomes


@pytest.mark.parametrize(
    ("relay", "security"), [("starttls", "starttls"), ("tls", "tls")], indirect=["relay"]
)
def test_a_tls_relay_with_auth_gets_the_message(engine, clock, relay, certificate, security):
    handler, port = relay
    outcomes = _send(engine, clock, port, security=security, ca_file=certificate[0])
    assert outcomes == {"sent:email": 1}
    assert handler.logins == [(USER, PASSWORD)]
    assert len(handler.messages) == 1
    assert states(engine) == [("sent", "email", None)]


@pytest.mark.parametrize("relay", ["starttls"], indirect=True)
def test_a_wrong_password_is_a_retry_and_sends_nothing(engine, clock, relay, certificate):
    handler, port = relay
    outcomes = _send(engine, clock, port, password="wrong", ca_file=certificate[0])
    assert outcomes == {"retry": 1}
    assert handler.messages == []
    assert followup_events(engine)[-1][2] == "smtp: authentication refused (535)"


@pytest.mark.parametrize("relay", ["starttls"], indirect=True)
def test_an_untrusted_certificate_gets_neither_password_nor_message(engine, clock, relay):
    """Without the relay's CA the system store does not trust its certificate: the handshake
    fails before AUTH."""
    handler, port = relay
    outcomes = _send(engine, clock, port)  # no CA file: the system's CAs
    assert outcomes == {"retry": 1}
    assert (handler.logins, handler.messages) == ([], [])
    assert followup_events(engine)[-1][2] == "smtp: SSLCertVerificationError securing the session"


@pytest.mark.parametrize("relay", ["plain"], indirect=True)
def test_starttls_asked_for_is_required(engine, clock, relay, certificate):
    """A relay that offers no STARTTLS (or a man in the middle that strips it) gets no
    password and no message."""
    handler, port = relay
    outcomes = _send(engine, clock, port, ca_file=certificate[0])
    assert outcomes == {"retry": 1}
    assert (handler.logins, handler.messages) == ([], [])
    assert followup_events(engine)[-1][2] == "smtp: server offers no STARTTLS"


def test_credentials_are_refused_in_clear_to_a_remote_relay(tmp_path):
    with pytest.raises(ValueError, match="password in clear"):
        SmtpAccess("smtp.example.com", 25, username=USER, password=SecretStr(PASSWORD))
    with pytest.raises(ValueError, match="both a user name and a password"):
        SmtpAccess("smtp.example.com", 587, "starttls", username=USER)
    with pytest.raises(ValueError, match="does not exist"):
        SmtpAccess("smtp.example.com", 587, "starttls", ca_file=tmp_path / "missing.pem")
    local = SmtpAccess("127.0.0.1", 25, username=USER, password=SecretStr(PASSWORD))
    assert PASSWORD not in repr(local)
    channel = EmailChannel(
        "smtp.example.com",
        587,
        SENDER,
        LINKS,
        security="starttls",
        username=USER,
        password=SecretStr(PASSWORD),
    )
    assert PASSWORD not in repr(channel.relay)
