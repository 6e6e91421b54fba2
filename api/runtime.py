"""What a long-running FollowPay process needs, built once from :class:`Settings`.

The indexer, the worker, ``followpay serve`` and the CLI's invoice commands share it: database
engine, chain, deployment (from the manifest ``followpay chain up`` wrote), the CRM key ring, a
clock, and the operator signers of ``FOLLOWPAY_OPERATORS`` (:mod:`api.operators`).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import secrets
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa

from api.db import check_schema, holds_encrypted_data
from api.operators import OperatorKeys, OperatorUnavailableError, load_operator_signers
from api.settings import Settings
from crm import KeyRing, SystemClock, make_engine
from crm.consent.service import HeadsSealed
from wallet.chain_config import ChainBackend
from wallet.errors import ManifestError

if TYPE_CHECKING:  # web3, the API and signing stacks load only in the processes that use them
    from api.deps import ChainInfo
    from api.webhooks.secrets import SecretCipher
    from wallet.chain import Chain
    from wallet.deployment import Deployment
    from wallet.signing import Signer

__all__ = [
    "DatabaseMissingError",
    "MasterKeyMissingError",
    "Runtime",
    "WarmHeapFreezer",
    "chain_info_for",
    "freeze_startup_heap",
    "load_master_key",
    "secret_cipher",
    "stop_on_signals",
]


def freeze_startup_heap() -> None:
    """Exempt what start-up built (modules, routes, models, metadata) from the cyclic GC.

    Without it every full collection walks those hundreds of thousands of long-lived objects:
    measured here, POST /v1/invoices at a steady 100 req/s had a p99 of 232 ms (GC pauses)
    against 16 ms after ``gc.freeze()``. Call it once the app is built, before serving.
    """
    gc.collect()
    gc.freeze()


class WarmHeapFreezer:
    """Freezes the heap once more after the first ``after`` requests (0: never).

    Serving fills caches that live as long as the process — SQLAlchemy's compiled statements,
    FastAPI's and pydantic's validators, pooled connections — and every full collection walked
    them again: measured here, gen-2 collections of 31-154 ms every few seconds, one of which
    put a 15 s window's p99 at 48 ms (a run at 130 req/s on PostgreSQL). ``gc.freeze()`` without
    a collection is a constant-time splice, so the request that crosses the count pays nothing;
    garbage that is frozen with the rest (a few objects) is never collected.
    """

    def __init__(self, after: int) -> None:
        self.after = after
        self._served = 0
        self._lock = threading.Lock()

    def served(self) -> None:
        if self._served > self.after:
            return
        with self._lock:
            self._served += 1
            if self._served == self.after:
                gc.freeze()


def chain_info_for(chain: Chain, deployment: Deployment) -> ChainInfo:
    """What the API issues invoices on: chain id, router, token and its decimals (read from the
    token), live head/receipt look-ups so payments report confirmations and gas used, and the
    router's merchant registrations (the account route checks them)."""
    from eth_utils import to_checksum_address

    from api.deps import ChainInfo
    from contracts import load_artifact
    from wallet.tokens import Token

    def head() -> int:
        with chain.lock:
            return int(chain.w3.eth.block_number)

    def gas_used(tx_hash: str) -> int | None:
        with chain.lock:
            receipt = chain.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        return int(receipt["gasUsed"]) if receipt else None

    router = chain.w3.eth.contract(
        address=to_checksum_address(deployment.router), abi=load_artifact("PaymentRouter").abi
    )

    def registration(address: str) -> tuple[str, str] | None:
        with chain.lock:
            payout, operator = router.functions.merchantOf(to_checksum_address(address)).call()
        return None if int(operator, 16) == 0 else (str(payout), str(operator))

    return ChainInfo(
        chain_id=chain.chain_id,
        router=deployment.router,
        token=deployment.token,
        decimals=Token(chain, deployment.token).decimals(),
        head=head,
        gas_used=gas_used,
        registration=registration,
    )


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set ``stop`` instead of raising in the middle of whatever runs.

    A ``KeyboardInterrupt`` can land between an SMTP command and its reply; ``smtplib`` then
    reads the stale reply to ``QUIT``, raises ``SMTPResponseException`` and the interrupt is
    lost: the worker went on and marked an undelivered follow-up for a retry. With this the
    loop finishes the step it is in and returns. A second signal acts as before (default
    handlers are back after the first), so a stuck process still stops. Main thread only.
    """
    names = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.getsignal(number) for number in names}

    def handle(number: int, _frame: object) -> None:
        stop.set()
        for each, handler in previous.items():
            signal.signal(each, handler)

    for number in names:
        signal.signal(number, handle)
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def load_master_key(settings: Settings) -> bytes:
    """``FOLLOWPAY_MASTER_KEY`` (hex, ≥ 32 bytes), else ``<home>/master.key`` created 0600 once.

    The master key wraps every contact's data key: losing it loses the CRM's personal data,
    which is the point of crypto-shredding, so back it up like a database password.
    """
    if settings.master_key is not None:
        try:
            key = bytes.fromhex(settings.master_key.get_secret_value())
        except ValueError:
            raise ValueError("FOLLOWPAY_MASTER_KEY must be hex") from None
        if len(key) < 32:
            raise ValueError("FOLLOWPAY_MASTER_KEY must be at least 32 bytes (64 hex digits)")
        return key
    path = settings.home / "master.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # written whole beside it, then linked in: a process starting at the same moment
        # reads either no key or the whole key, and the first link wins
        fresh = secrets.token_hex(32)
        draft = path.with_name(f".master.key.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(fresh)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(draft, path)
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links: create it in place
                with contextlib.suppress(FileExistsError):
                    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(out, "w") as handle:
                        handle.write(fresh)
        finally:
            draft.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


def secret_cipher(settings: Settings) -> SecretCipher:
    """The cipher for webhook signing secrets, from the same master key as the CRM's key ring
    (:func:`load_master_key`): ``FOLLOWPAY_MASTER_KEY`` as given, else ``<home>/master.key``.
    Every process that reads or writes those secrets (API, worker, embedded) builds it here."""
    from api.webhooks.secrets import SecretCipher

    # The key's bytes, as the key ring takes them: the raw setting made one key of "AB…",
    # "ab…" and "ab…\n" for the CRM and three for the webhook secrets, and an empty one none.
    # Secrets stored by releases that took the setting's text as given still read.
    key = load_master_key(settings).hex()
    given = () if settings.master_key is None else (settings.master_key.get_secret_value(),)
    return SecretCipher(key, previous=tuple(text.encode("utf-8") for text in given))


class DatabaseMissingError(Exception):
    """A command that reads or writes the database found no SQLite file: it creates none (an
    empty, unmigrated file would be left behind); ``followpay db upgrade`` does."""

    status_code = 409
    code = "database_missing"


def _sqlite_path(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


@contextlib.contextmanager
def _home_lock(home: Path) -> Iterator[None]:
    """One upgrade at a time per home: another process's upgrade (``serve`` and ``db upgrade``
    started together) must not see a database file or a key half made, nor have this one's
    clean-up after a failure remove what it made."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(home, os.O_RDONLY)  # the directory itself: no lock file left in the home
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class MasterKeyMissingError(Exception):
    """The master key file is gone while the database holds data encrypted under it."""

    status_code = 409
    code = "master_key_missing"


@dataclass
class Runtime:
    settings: Settings
    _creating_database: bool = field(default=False, init=False, repr=False)

    @cached_property
    def engine(self) -> sa.Engine:
        url = self.settings.resolved_database_url
        path = _sqlite_path(url)
        if path is not None and not path.exists():
            raise DatabaseMissingError(f"no database at {path}: run `followpay db upgrade` first")
        engine = make_engine(url)
        try:
            check_schema(engine)
        except BaseException:
            engine.dispose()
            raise
        return engine

    def upgrade_database(self) -> HeadsSealed:
        """Apply the migrations (creating the SQLite file and its directory), sealing with the
        server's key the consent heads older releases wrote without a MAC (see
        :func:`crm.db.upgrade`)."""
        if self.settings.master_key is not None:
            load_master_key(self.settings)  # a bad key fails before the home is made
        with _home_lock(self.settings.home):
            return self._upgrade_database()

    def _upgrade_database(self) -> HeadsSealed:
        from api.db import upgrade

        url = self.settings.resolved_database_url
        path = _sqlite_path(url)
        key_file = self.settings.home / "master.key"
        new_key = self.settings.master_key is None and not key_file.exists()
        self._creating_database = True
        keyring = self.keyring  # a bad key fails here, before anything is written
        new_file = path is not None and not path.exists()
        if path is not None and new_file:
            # the owner's only, like master.key: invoices, payer addresses and audit entries
            # are in clear (a plain mkdir and SQLite made them 0755 and 0644 under umask 022;
            # SQLite gives its -wal and -shm files the database file's mode)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        if "engine" in self.__dict__:
            self.engine.dispose()  # pooled connections must not outlive the schema change
        try:
            if not new_file:  # a newer release's schema: say so before touching it
                existing = make_engine(url)
                try:
                    check_schema(existing, behind_ok=True)
                finally:
                    existing.dispose()
            return upgrade(url, keyring=keyring)
        except BaseException:  # leave the home as it was found
            if path is not None and new_file:
                for leftover in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm"))):
                    leftover.unlink(missing_ok=True)
                if new_key:
                    key_file.unlink(missing_ok=True)
            raise

    @cached_property
    def chain(self) -> Chain:
        from wallet.chain import connect

        return connect(self.settings.chain_config())

    @cached_property
    def keyring(self) -> KeyRing:
        self._check_master_key_may_be_made()
        return KeyRing(load_master_key(self.settings))

    def _check_master_key_may_be_made(self) -> None:
        """``<home>/master.key`` is made only for a database that holds nothing encrypted
        yet. A missing key file beside a database of encrypted contacts and secrets (a volume
        not mounted, a home restored without it) was replaced by a new key: every contact
        unreadable, and new data written under a key that restoring the old one would break.
        A command on a home without a database makes no key either (it leaves the home as it
        found it); ``followpay db upgrade`` and ``serve`` create both."""
        if self.settings.master_key is not None or (self.settings.home / "master.key").exists():
            return
        url = self.settings.resolved_database_url
        path = _sqlite_path(url)
        if path is not None and not path.exists():
            if self._creating_database:
                return
            raise DatabaseMissingError(f"no database at {path}: run `followpay db upgrade` first")
        if holds_encrypted_data(url):
            raise MasterKeyMissingError(
                f"{self.settings.home / 'master.key'} is missing, and the database holds data "
                "encrypted under it: restore it (or set FOLLOWPAY_MASTER_KEY); a new key "
                "would make that data unreadable"
            )

    @cached_property
    def cipher(self) -> SecretCipher:
        self._check_master_key_may_be_made()
        return secret_cipher(self.settings)

    @cached_property
    def clock(self) -> SystemClock:
        return SystemClock()

    @cached_property
    def deployment(self) -> Deployment:
        if self.settings.chain is ChainBackend.TESTER:  # a fresh chain in every process
            raise ManifestError(
                "the in-process chain (FOLLOWPAY_CHAIN=tester) lives inside one process: "
                "use `followpay serve`, which runs the indexer and worker with it, or run "
                "`followpay chain up` and set FOLLOWPAY_CHAIN=anvil and FOLLOWPAY_RPC_URL",
                param="manifest",
            )
        from wallet.deployment import read_manifest

        path = self.settings.manifest_for(self.chain.chain_id)
        deployment = read_manifest(path, self.chain)
        if deployment is None:
            raise ManifestError(
                f"no live deployment in {path}: run `followpay chain up` first", param="manifest"
            )
        return deployment

    @cached_property
    def operator_signers(self) -> OperatorKeys:
        """Operator address -> signer, unlocked from the vault (empty without operators)."""
        from wallet.vault import Vault

        return load_operator_signers(
            Vault(self.settings.home),
            self.settings.operator_refs,
            self.settings.password,
            self.deployment.router,
        )

    def signer_for(self, merchant_id: int, operator: str) -> Signer:
        signer = self.operator_signers.for_merchant(merchant_id, operator)
        if signer is None:
            listed = ", ".join(sorted(self.operator_signers)) or "none"
            bound = self.operator_signers.merchant_of(operator)
            whose = "" if bound is None else f", bound to merchant {bound}"
            raise OperatorUnavailableError(
                f"no configured operator signs for merchant {merchant_id}'s operator {operator}"
                f"{whose} (FOLLOWPAY_OPERATORS: {listed})",
                param="operators",
            )
        return signer

    def close(self) -> None:
        if "chain" in self.__dict__:
            self.chain.close()
        if "engine" in self.__dict__:
            self.engine.dispose()
