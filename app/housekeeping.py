"""What the running app deletes by itself, so that visitors cannot fill the disk:

- answers that may never be used for training, once they are older than ``VISIONTHINK_RETENTION_DAYS``, with their
  ratings and any image no other answer uses (``Store.purge_unconsented``);
- files in the pages' file folders (uploads, the images a page showed, export archives) older than
  ``VISIONTHINK_CACHE_MAX_AGE`` seconds, except the examples' files.

Gradio's own cache cleanup (``delete_cache``, set on every page) deletes only the files of the components as they
were built; the copies Gradio makes of a component for one session, when a handler updates it, write files it never
deletes (measured: every image the Ask tab shows stayed). The sweep here deletes by age whatever is in the folders.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path

from store.api import Actor, Store
from visionthink.clock import utcnow
from visionthink.incidents import log_incident
from visionthink.settings import Settings

log = logging.getLogger(__name__)

#: The longest wait between two rounds.
MAX_INTERVAL_S = 600.0


def sweep_files(folders: Iterable[Path], max_age_s: float, keep: set[str] = frozenset()) -> tuple[int, int]:
    """Delete the files in ``folders`` (recursively) last changed more than ``max_age_s`` seconds ago, except the
    paths in ``keep``, and the folders left empty; returns (files deleted, bytes freed)."""
    cutoff = time.time() - max_age_s
    files = freed = 0
    for folder in folders:
        if not folder.is_dir():
            continue
        for root, dirs, names in os.walk(folder, topdown=False):
            for name in names:
                path = os.path.join(root, name)
                try:
                    stat = os.lstat(path)
                    if max(stat.st_mtime, stat.st_ctime) < cutoff and os.path.abspath(path) not in keep:
                        os.remove(path)
                        files += 1
                        freed += stat.st_size
                except FileNotFoundError:  # deleted meanwhile (Gradio's own cleanup, another sweep)
                    continue
            if root != str(folder):
                try:
                    os.rmdir(root)  # only succeeds when empty
                except OSError:
                    pass
    return files, freed


class Housekeeping:
    """A daemon thread that applies the retention rule and sweeps the file folders at start and then every
    ``interval_s`` seconds (at most ten minutes, and no longer than the files' maximum age)."""

    def __init__(self, store: Store | None, settings: Settings, *, folders: Iterable[Path] = (),
                 keep: Callable[[], set[str]] = set, interval_s: float | None = None) -> None:
        self.store = store
        self.retention = timedelta(days=settings.retention_days) if settings.retention_days else None
        self.max_age_s = settings.cache_max_age_s
        self.folders = [Path(f) for f in folders]
        self.keep = keep
        self.interval_s = interval_s or min(MAX_INTERVAL_S, float(settings.cache_max_age_s))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Housekeeping:
        self._thread = threading.Thread(target=self._loop, name="visionthink-housekeeping", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def run_once(self) -> None:
        """One round: the retention rule, then the file sweep."""
        if self.store is not None and self.retention is not None:
            cutoff = utcnow() - self.retention
            report = self.store.purge_unconsented(Actor.system(), older_than=cutoff)
            if report.asks:
                log.info("Retention: deleted %d answers without training consent from before %s (%d ratings, "
                         "%d images, %.1f MB).", report.asks, cutoff.strftime("%Y-%m-%d %H:%M UTC"),
                         report.ratings, report.images, report.image_bytes / 1e6)
        files, freed = sweep_files(self.folders, self.max_age_s, self.keep())
        if files:
            log.info("Deleted %d files older than %d s from the pages' file folders (%.1f MB).", files,
                     self.max_age_s, freed / 1e6)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as exc:  # the database may be away for a while: try again at the next round
                log_incident(log, "Housekeeping (retention, file sweep) could not run", exc)
            self._stop.wait(self.interval_s)
