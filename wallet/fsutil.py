"""Private files: 0700 directories, 0600 files, atomic replace with fsync."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from wallet.errors import VaultError, WalletExistsError

__all__ = ["atomic_write", "ensure_private_dir", "followpay_home"]


def followpay_home(explicit: str | Path | None = None) -> Path:
    """``explicit``, else ``$FOLLOWPAY_HOME``, else ``~/.followpay`` (read at call time)."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get("FOLLOWPAY_HOME")
    return Path(env).expanduser() if env else Path.home() / ".followpay"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700; tighten it if it already exists."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if path.stat().st_mode & 0o077:
            path.chmod(0o700)
    except OSError as exc:
        raise VaultError(f"cannot create private directory {str(path)!r}: {exc.strerror}") from None
    return path


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(
    target: Path, data: bytes, *, overwrite: bool = False, private_dir: bool = True
) -> None:
    """Write ``data`` to ``target`` with mode 0600: temp file, fsync, rename, fsync the dir.

    With ``overwrite=False`` the final step is a hard link, which fails if ``target`` appeared
    in the meantime (no check-then-write race); :class:`WalletExistsError` is raised.
    ``private_dir``: the directory is ours (``$FOLLOWPAY_HOME``): created or tightened to 0700.
    Otherwise (a path the user chose) a missing directory is created 0700, an existing one keeps
    its mode: the file alone is 0600.
    """
    parent = target.parent
    if private_dir or not parent.is_dir():
        ensure_private_dir(parent)
    if not overwrite and target.exists():
        raise WalletExistsError(f"{str(target)!r} already exists; refusing to overwrite it")
    tmp = parent / f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
            except FileExistsError:
                raise WalletExistsError(
                    f"{str(target)!r} already exists; refusing to overwrite it"
                ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(parent)
