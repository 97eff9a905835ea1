"""Publishing an export: ``DIR`` is a link to a version folder named by the hash of its content, kept beside it in
``.DIR.versions/``.

``new_version(out)`` holds the folder's lock (one export per ``DIR`` at a time; a second is refused, not queued) and
hands out an empty folder to build the version in; ``Draft.publish()`` names it by its content, makes it durable and
swaps the link to it atomically, keeping the previous version and removing older ones. A draft that is never
published (an error, a stopped process) leaves the current version in place; what a killed one left behind is
removed by the next publish.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from store.db import StoreError
from visionthink.files import exclusive

LOCK = ".lock"


class ExportError(StoreError):
    """An export that cannot be made as asked; the message says why and what to do."""


def resolve(out: str | os.PathLike) -> Path:
    """``out`` as an absolute path, ``~`` expanded; links are kept (``out`` is one)."""
    return Path(os.path.abspath(os.path.expanduser(out)))


def versions_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.versions"


def check_out(out: str | os.PathLike) -> None:
    """Refuse an ``--out`` that exists and is not a link made by an earlier export."""
    out = resolve(out)
    if out.is_symlink():
        target = Path(os.readlink(out))
        if target.parent != Path(versions_folder(out).name):
            raise ExportError(f"{out} is a link to {target}, not an export made by this tool; choose another --out.")
    elif out.exists():
        raise ExportError(
            f"{out} already exists and is not an export link; refusing to replace it. Choose a path that does not "
            "exist yet: the export creates it as a link to a versioned folder beside it."
        )


@dataclass(frozen=True)
class Draft:
    """A version being built: write it in ``folder``; ``scratch`` (which holds ``folder``) has room for temporary
    files and is removed with the draft."""

    out: Path
    scratch: Path

    @property
    def folder(self) -> Path:
        return self.scratch / "version"

    def publish(self) -> Path:
        """Make ``folder`` the version ``out`` links to, and return that version's folder."""
        versions = versions_folder(self.out)
        _fsync_tree(self.folder)
        version = versions / _tree_digest(self.folder)[:16]
        if not version.exists():  # else the same content was published before
            os.rename(self.folder, version)
            _fsync(versions)
        previous = _point(self.out, version)
        _prune(versions, keep={version.name, previous})
        return version


@contextlib.contextmanager
def new_version(out: Path) -> Iterator[Draft]:
    """A draft of the next version of the link ``out`` (an absolute path, see ``resolve``), built under the lock."""
    check_out(out)
    versions = versions_folder(out)
    versions.mkdir(parents=True, exist_ok=True)
    busy = partial(ExportError, f"Another export to {out} is running; wait for it to finish.")
    with exclusive(versions / LOCK, busy):
        check_out(out)
        draft = Draft(out, versions / f".partial-{uuid.uuid4().hex}")
        draft.folder.mkdir(parents=True)
        try:
            yield draft
        finally:
            shutil.rmtree(draft.scratch, ignore_errors=True)


def _point(out: Path, version: Path) -> str | None:
    """Swap the link ``out`` to ``version`` atomically; returns the name of the version it pointed to before."""
    previous = os.readlink(out) if out.is_symlink() else None
    link = out.parent / f".{out.name}.link-new"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    os.symlink(os.path.join(version.parent.name, version.name), link)
    os.replace(link, out)
    _fsync(out.parent)
    return Path(previous).name if previous else None


def _prune(versions: Path, keep: set[str | None]) -> None:
    """Remove older versions and what stopped exports left behind, keeping the current and the previous one."""
    for entry in versions.iterdir():
        if entry.name in keep or entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix()):
        digest.update(path.relative_to(folder).as_posix().encode("utf-8") + b"\0")
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    for directory in [*sorted(p for p in folder.rglob("*") if p.is_dir()), folder]:
        _fsync(directory)


def _fsync(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
