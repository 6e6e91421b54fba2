"""Where webhooks may go: public internet addresses only (no SSRF into our own network).

A merchant chooses the URL, so without a check the delivery worker would POST wherever a merchant
points it: the cloud metadata service (169.254.169.254), the database on 127.0.0.1:5432, an admin
panel on 10.0.0.5. :class:`TargetPolicy` refuses every address that is not public:

- at registration (:meth:`TargetPolicy.check_url`: ``400 url_not_allowed``), for an IP literal
  and for every address a host name resolves to then;
- at every connection (:meth:`TargetPolicy.vet`, used by :mod:`api.webhooks.transport`), on the
  addresses resolved for that connection, which are the ones connected to: a name that resolved
  to a public address at registration and to 127.0.0.1 later (DNS rebinding) is refused.

``allow_private=True`` (``FOLLOWPAY_WEBHOOK_ALLOW_PRIVATE_TARGETS``) turns the address check off:
tests, the demo and the embedded ``followpay serve`` run their receivers on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from api.errors import InvalidRequest

__all__ = ["Resolver", "TargetNotAllowed", "TargetPolicy", "is_public_address", "system_resolver"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``resolve(host, port)``: the host's addresses as strings; raises :class:`OSError` when the name
#: does not resolve.
Resolver = Callable[[str, int], Sequence[str]]

# Not public, though ``is_global`` says so on some Python versions (3.11 predates RFC 9637's
# 3fff::/20 documentation range); and the IPv6 ranges that carry an IPv4 address inside
# (checked as that address, below).
_NOT_PUBLIC = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.0.0/24", "::/96", "100::/64", "2001:db8::/32", "3fff::/20", "fec0::/10")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class TargetNotAllowed(ValueError):
    """A webhook host that is, or resolves to, an address the policy refuses."""


def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver, first-seen order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, 6to4, Teredo or NAT64 address reaches."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """``False`` for loopback, private (RFC 1918, IPv6 ULA), link-local (metadata services),
    CGNAT, multicast, unspecified, reserved and documentation addresses, and for IPv6 addresses
    that carry one of those inside (IPv4-mapped ``::ffff:127.0.0.1``, 6to4, Teredo, NAT64)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return False
        inner = _embedded_ipv4(ip)
        if inner is not None:
            return is_public_address(inner)
    if any(ip.version == net.version and ip in net for net in _NOT_PUBLIC):
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


@dataclass(frozen=True)
class TargetPolicy:
    """Which addresses webhooks may be sent to; ``resolve`` is swappable for tests."""

    allow_private: bool = False
    resolve: Resolver = field(default=system_resolver, repr=False, compare=False)

    def allows(self, address: str) -> bool:
        ip = _literal(address)
        return ip is not None and (self.allow_private or is_public_address(ip))

    def vet(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for ``host``: resolved now, all of them allowed.

        Raises :class:`TargetNotAllowed` when any of them is refused (a name that also resolves to
        a private address is refused whole), :class:`OSError` when ``host`` does not resolve.
        """
        literal = _literal(host.strip("[]"))
        addresses = [str(literal)] if literal is not None else list(self.resolve(host, port))
        if not addresses or not all(self.allows(a) for a in addresses):
            raise TargetNotAllowed("the webhook host is not a public address")
        return addresses

    def check_url(self, url: str) -> None:
        """Registration check: refuse an endpoint whose host is, or now resolves to, an address
        this policy refuses (``400 url_not_allowed``). A name that does not resolve (yet) is
        accepted: every connection checks again."""
        if self.allow_private:
            return
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or _default_port(parts.scheme)  # a bad port is no "not resolvable"
        try:
            self.vet(host, port)
        except TargetNotAllowed:
            raise InvalidRequest(
                "Webhook endpoints must be on the public internet: the url's host is, or "
                "resolves to, a loopback, private, link-local or otherwise reserved address.",
                param="url",
                code="url_not_allowed",
            ) from None
        except (OSError, UnicodeError, ValueError):
            return
