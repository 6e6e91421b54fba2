"""Settings, built by a factory (never at import time) so tests and commands can override them.

Every field reads ``FOLLOWPAY_<NAME>`` from the environment; see docs/operations.md.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.operators import OperatorRef, parse_operator_refs
from wallet.chain_config import ChainBackend, ChainConfig

__all__ = ["Settings", "get_settings", "trusted_proxy_networks"]

_ROOT_PATH = re.compile(r"(/(?!\.\.?(?:/|$))[A-Za-z0-9._~-]+)+")  # no "." or ".." segment


class Settings(BaseSettings):
    # hide_input_in_errors: a refused FOLLOWPAY_RPC_URL or database URL must not be echoed in a
    # validation error (FOLLOWPAY_DEBUG=1 prints the whole exception)
    model_config = SettingsConfigDict(
        env_prefix="FOLLOWPAY_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    home: Path = Field(default_factory=lambda: Path.home() / ".followpay")
    # Out of repr: a database password or an RPC provider key may ride in the URL.
    database_url: str = Field(default="", repr=False)
    chain: ChainBackend = ChainBackend.TESTER
    rpc_url: str | None = Field(default=None, repr=False)
    chain_id: int | None = None
    manifest: Path | None = None
    master_key: SecretStr | None = None
    public_base_url: str = "http://127.0.0.1:8000"
    indexer_poll_interval: float = Field(default=1.0, gt=0)
    indexer_batch_blocks: int = Field(default=2_000, ge=1, le=100_000)
    #: Seconds an API process serves API keys, router accounts and webhook subscriptions from
    #: memory (``api.cache``): how long another API process may still act on a key revoked or
    #: an account or endpoint changed elsewhere. 0 turns it off.
    api_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    #: HTTP-layer limits (:class:`api.deps.ApiConfig`): request body size, a rate limit per API
    #: key (token bucket), browser origins allowed by CORS (comma-separated), how long an
    #: Idempotency-Key's response is kept, the OpenAPI docs pages, requests in the app at once.
    api_max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    api_rate_limit_per_second: float = Field(default=25.0, gt=0)
    api_rate_limit_burst: int = Field(default=100, ge=1)
    api_cors_origins: str = ""
    api_idempotency_ttl_seconds: float = Field(default=24 * 3600, ge=60)
    api_docs: bool = True
    api_max_in_flight: int = Field(default=32, ge=1, le=1024)
    #: Reverse proxies whose ``X-Forwarded-For`` names the client (addresses or networks,
    #: comma-separated), so per-client rate limits and the access log see customers, not the
    #: proxy. Empty: the header is ignored (anyone could write it).
    api_trusted_proxies: str = ""
    #: The path prefix a reverse proxy strips before it forwards (``/pay`` when the API is
    #: public at ``https://shop.example/pay/v1/...``). ``followpay serve`` hands it to uvicorn
    #: as the ASGI ``root_path``, so paths the API returns (the consent page's
    #: ``withdraw_url``) carry it. Empty: the API is served at the root.
    api_root_path: str = ""
    #: Webhook endpoints may be on loopback, private, link-local and other non-public addresses
    #: (``api.webhooks.targets``). Off: a merchant's URL must not reach our own network (SSRF);
    #: the embedded ``followpay serve``, the demo and the tests turn it on for 127.0.0.1 receivers.
    webhook_allow_private_targets: bool = False
    #: Vault wallets whose keys sign invoice intents (``api.operators``): ``name`` or
    #: ``name:index``, comma-separated, each optionally bound as ``merchant_id=name``. Empty:
    #: invoices need the embedded stack's dev operator.
    operators: str = ""
    #: Unlocks the vault wallets (``FOLLOWPAY_PASSWORD``; never a command-line argument).
    password: SecretStr | None = None
    #: The worker's SMTP AUTH password (``FOLLOWPAY_SMTP_PASSWORD``; never a command-line
    #: argument), with ``followpay worker --smtp-user``.
    smtp_password: SecretStr | None = None

    @field_validator("rpc_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _public_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL like https://pay.example.com")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or a fragment")
        return value.rstrip("/")  # links are base + "/v1/...": a trailing slash made "//v1"

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        # Messages never quote the URL (nor SQLAlchemy's, which do): it may hold a password.
        if not value:
            return value
        scheme, _, rest = value.partition("://")
        if not scheme.startswith("sqlite") and rest.partition("?")[0].count("@") > 1:
            # SQLAlchemy splits at the first '@': the rest of the password would become the
            # host, the port or the database name, and an error would print it.
            raise ValueError(
                "has an '@' in its user name or password: write it as %40 "
                "(percent-encode the user name and password)"
            )
        try:
            sa.make_url(value)
        except (sa.exc.ArgumentError, ValueError, TypeError):  # ValueError: a bad port
            raise ValueError(
                "is not a database URL like postgresql+psycopg://host:5432/db "
                "or sqlite:///path/to/file"
            ) from None
        return value

    @field_validator("api_trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: str) -> str:
        trusted_proxy_networks(value.split(","))  # ValueError names the bad entry
        return value

    @field_validator("api_root_path")
    @classmethod
    def _root_path(cls, value: str) -> str:
        if value and not _ROOT_PATH.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a path prefix like /pay or /api/v2 (a leading slash, no "
                "trailing one, letters, digits and -._~ between)"
            )
        return value

    @field_validator("operators")
    @classmethod
    def _operator_refs(cls, value: str) -> str:
        parse_operator_refs(value)  # ValueError names the bad entry
        return value

    @model_validator(mode="after")
    def _rpc_needs_url(self) -> Settings:
        if self.chain is ChainBackend.RPC and not self.rpc_url:
            raise ValueError("FOLLOWPAY_CHAIN=rpc needs FOLLOWPAY_RPC_URL")
        return self

    @property
    def operator_refs(self) -> tuple[OperatorRef, ...]:
        return parse_operator_refs(self.operators)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'followpay.sqlite3'}"

    def manifest_for(self, chain_id: int) -> Path:
        """Where ``followpay chain up`` writes, and everything else reads, the deployment of
        ``chain_id``: ``FOLLOWPAY_MANIFEST``, else ``<home>/deployment-<chain id>.json``."""
        return self.manifest or self.home / f"deployment-{chain_id}.json"

    def chain_config(self) -> ChainConfig:
        return ChainConfig(
            backend=self.chain, rpc_url=self.rpc_url, expected_chain_id=self.chain_id
        )


def trusted_proxy_networks(entries: Iterable[str]) -> tuple[str, ...]:
    """Trusted proxy entries (blank ones skipped) as the network strings uvicorn's
    ``ProxyHeadersMiddleware`` takes: an address is a /32 or /128, and an IPv4 network also
    comes as its IPv4-mapped IPv6 form (how an IPv4 proxy arrives on a dual-stack socket).
    Refused: ``*`` and any /0, which trust every peer (any client could pick the address it
    is limited by), and host bits after the prefix (``10.0.0.5/8``: an address or a network?)."""
    networks: list[str] = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        try:
            network = ipaddress.ip_network(entry)
        except ValueError:
            network = None
        if entry == "*" or (network is not None and network.prefixlen == 0):
            raise ValueError(
                f"trusted proxy {entry!r} trusts every peer, so any client could choose the "
                "address it is rate-limited by: name the proxies' addresses or networks"
            )
        if network is None:
            raise ValueError(
                f"trusted proxy {entry!r} is not an IP address or network (e.g. 10.0.0.0/8, "
                "with no host bits after the prefix)"
            )
        networks.append(str(network))
        if network.version == 4:
            mapped = f"::ffff:{network.network_address}/{96 + network.prefixlen}"
            networks.append(str(ipaddress.ip_network(mapped)))
    return tuple(dict.fromkeys(networks))


def get_settings(**overrides: Any) -> Settings:
    """Read the environment now and apply ``overrides`` on top."""
    return Settings(**overrides)
