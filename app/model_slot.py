"""Loads the engine in the background so the page is up at once and can show loading progress."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from visionthink.engine import Engine
from visionthink.incidents import log_incident

log = logging.getLogger(__name__)

Loader = Callable[[Callable[[str], None]], Engine]


@dataclass(frozen=True)
class SlotStatus:
    state: str  # "loading" | "ready" | "failed"
    message: str
    elapsed_s: float


class ModelSlot:
    """Holds the engine once it is loaded; ``wait`` blocks a handler until then."""

    def __init__(self, loader: Loader | None = None, *, engine: Engine | None = None) -> None:
        self._loader = loader
        self._engine = engine
        self._error: str | None = None
        self._message = "Ready." if engine else "Waiting to load the model …"
        self._started = time.monotonic()
        self._done = threading.Event()
        if engine is not None:
            self._done.set()

    @classmethod
    def ready(cls, engine: Engine) -> ModelSlot:
        return cls(engine=engine)

    def start(self) -> ModelSlot:
        if self._loader is None or self._done.is_set():
            return self
        threading.Thread(target=self._load, name="visionthink-model-loader", daemon=True).start()
        return self

    def _load(self) -> None:
        try:
            self._engine = self._loader(self._progress)
            self._message = f"Ready: {self._engine.model_id}."
        except Exception as exc:  # the page says so (the reason, which can name hosts and paths, is in the log)
            reference = log_incident(log, "The model could not be loaded", exc)
            self._error = (f"The model could not be loaded (reference {reference}); the operator finds the reason "
                           "in the server log.")
            self._message = self._error
        finally:
            self._done.set()

    def _progress(self, message: str) -> None:
        log.info(message)  # the server log (e.g. a Space's logs) tells the same story as the page
        self._message = message

    def status(self) -> SlotStatus:
        state = "ready" if self._engine else ("failed" if self._error else "loading")
        return SlotStatus(state, self._message, time.monotonic() - self._started)

    @property
    def engine(self) -> Engine | None:
        return self._engine

    def wait(self, timeout_s: float | None = None) -> Engine | None:
        """The engine, waiting up to ``timeout_s`` for it; None if still loading. Raises if loading failed."""
        self._done.wait(timeout_s)
        if self._error:
            raise RuntimeError(self._error)
        return self._engine
