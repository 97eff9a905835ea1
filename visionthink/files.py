"""Small file-system helpers every part shares: atomic writes, one-writer locks, and telling a path from a name."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from filelock import FileLock, Timeout


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[IO[bytes]], None], *,
                 mode: int | None = None) -> None:
    """Write ``path`` so that a reader sees the old file or the new one, never a part: the data (text as UTF-8,
    bytes, or a function writing to a binary handle) goes to a temporary file beside it, is flushed to disk, and
    replaces ``path`` in one rename. ``mode`` sets the permissions (else the old file's, else what ``open`` would
    give a new file under the process's umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``os.umask`` sets it while reading)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


@contextlib.contextmanager
def exclusive(lock_path: str | os.PathLike, busy: Callable[[], Exception]) -> Iterator[None]:
    """Hold ``lock_path`` (a ``filelock`` lock file) while the block runs; when another process holds it, raise
    ``busy()`` at once instead of waiting (one writer per folder; a second one is refused, not queued)."""
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise busy() from None
    try:
        yield
    finally:
        lock.release()


def looks_like_path(name: str | os.PathLike) -> bool:
    """Whether ``name`` is meant as a local path rather than a Hub id (``owner/name``): a ``PathLike``, an absolute
    or ``./``/``../``/``~`` path, ``.`` or ``..``, more than one ``/``, the OS's own separator, or a data file's
    extension."""
    if isinstance(name, os.PathLike):
        return True
    return (
        name.startswith(("/", "./", "../", "~", "\\", ".\\"))
        or name in (".", "..")
        or os.path.isabs(name)
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
        or name.endswith((".parquet", ".arrow", ".jsonl", ".json"))
    )
