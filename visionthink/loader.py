"""Build an ``Engine`` from ``Settings``: the chosen checkpoint, or, when it cannot be loaded, the embedded miniature.

The fallback keeps the app and the terminal command usable offline with a model that really decides when to ask
for the full image, and says plainly that it is a miniature trained on a synthetic task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from visionthink.engine import Engine, GenerationSettings
from visionthink.settings import Settings

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


#: What the page and the log say about the embedded miniature, in one line.
MINIATURE_LINE = ("a miniature VisionThink trained on a synthetic shapes-and-textures task, not a general model: ask "
                  "about the colour, shape or pattern of the example images.")


class ModelLoadError(RuntimeError):
    """The model could not be loaded or reached and no fallback applies; the message is for a person."""


def load_engine(settings: Settings, progress: Progress | None = None) -> Engine:
    """Load the model named in ``settings``; fall back to the embedded miniature when allowed and necessary.

    ``progress`` receives one-line status messages for people (loading steps, the fallback notice).
    """
    say = progress or (lambda message: log.info(message))
    generation = GenerationSettings(
        max_new_tokens=settings.max_new_tokens, temperature=settings.temperature, top_p=settings.top_p
    )
    if settings.backend == "openai":
        from visionthink.backends import BackendError, OpenAIBackend

        say(f"Connecting to the model server at {settings.base_url} …")
        try:
            backend = OpenAIBackend(
                settings.base_url,
                None if settings.model == "auto" else settings.model,
                api_key=settings.api_key,
                timeout_s=settings.request_timeout_s,
            )
            served = backend.served_models()  # a named model is not looked up: make sure the server answers
        except BackendError as exc:
            raise ModelLoadError(str(exc)) from exc
        if backend.model_id not in served:
            raise ModelLoadError(f"The server at {settings.base_url} serves {', '.join(served)}, not "
                                 f"{backend.model_id}. Set VISIONTHINK_MODEL to one of those, or to 'auto'.")
        say(f"Using {backend.model_id} served at {settings.base_url}.")
        return _engine(backend, generation, settings, source="server")

    from visionthink import hf
    from visionthink.backends import TransformersBackend

    notice = None
    name = settings.model
    source = "local" if Path(name).expanduser().is_dir() else "hub"
    try:
        say(f"Looking for {name} …")
        hf.check_available(name, revision=settings.revision)
        say(f"Loading {name} (this can take a few minutes for a 7B model) …")
        backend = TransformersBackend.load(name, revision=settings.revision, device=settings.device,
                                           early_encode=settings.early_encode)
    except (hf.ModelUnavailable, OSError) as exc:
        if settings.fallback != "miniature":
            raise ModelLoadError(f"Could not load {name}: {exc}") from exc
        folder = Path(settings.fallback_model).expanduser()
        notice = (
            f"Could not load {name}: {exc} Running the embedded miniature instead: {MINIATURE_LINE} Set "
            "VISIONTHINK_MODEL to a downloaded checkpoint, or connect to a server with VISIONTHINK_BACKEND=openai, "
            "for a general model."
        )
        say(notice)
        try:
            hf.check_available(str(folder))
            backend = TransformersBackend.load(str(folder), device=settings.device, model_id=folder.name,
                                               early_encode=settings.early_encode)
        except (hf.ModelUnavailable, OSError) as fallback_exc:
            raise ModelLoadError(f"Could not load {name} ({exc}) nor the embedded miniature in {folder} "
                                 f"({fallback_exc}).") from fallback_exc
        generation = GenerationSettings(
            max_new_tokens=min(settings.max_new_tokens, settings.fallback_max_new_tokens),
            temperature=settings.temperature,
            top_p=settings.top_p,
        )
        source = "miniature"
    say(f"Ready: {backend.model_id}.")
    return _engine(backend, generation, settings, notice=notice, source=source)


def _engine(backend, generation: GenerationSettings, settings: Settings, *, notice: str | None = None,
            source: str) -> Engine:
    return Engine(
        backend,
        settings=generation,
        max_turns=settings.max_turns,
        limits=settings.input_limits,
        max_concurrent=settings.model_concurrency,
        notice=notice,
        model_source=source,
        model_revision=(settings.revision or "") if source == "hub" else "",
    )
