"""Every setting of VisionThink Studio in one place, read from environment variables (README has the table).

Command-line flags override these through ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from visionthink.images import DEFAULT_MAX_IMAGE_PIXELS
from visionthink.text import MAX_QUESTION_CHARS, MAX_TEXT_CHARS

DEFAULT_MODEL = "Senqiao/VisionThink-Efficient"
#: The embedded default: the miniature trained on a synthetic task, shipped in the repository (visionthink/miniature).
FALLBACK_MODEL = Path(__file__).resolve().parent / "miniature" / "weights" / "visionthink-miniature"


def default_db_url() -> str:
    """A SQLite file under data/, or on Hugging Face Spaces under the persistent /data mount when there is one."""
    if os.environ.get("SPACE_ID") and os.path.isdir("/data") and os.access("/data", os.W_OK):
        return "sqlite:////data/visionthink.db"
    return "sqlite:///data/visionthink.db"


class SettingsError(ValueError):
    """An environment variable with a value that cannot be used; the message names it."""


@dataclass(frozen=True)
class Settings:
    model: str = DEFAULT_MODEL
    revision: str | None = None
    backend: str = "transformers"  # transformers | openai
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str | None = None
    device: str = "auto"
    early_encode: str = "auto"  # auto (on a CUDA GPU only) | on | off: encode the full image while turn 1 runs
    max_new_tokens: int = 2048
    temperature: float = 0.0
    top_p: float = 1.0
    max_turns: int = 2
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_question_chars: int = MAX_QUESTION_CHARS
    max_text_chars: int = MAX_TEXT_CHARS  # reference answers, corrections, comments
    max_upload_mb: float = 20.0
    model_concurrency: int = 1
    fallback: str = "miniature"  # miniature | none
    fallback_model: Path = FALLBACK_MODEL
    fallback_max_new_tokens: int = 64
    request_timeout_s: float = 600.0
    db_url: str = field(default_factory=default_db_url)
    ratings_per_item: int = 2
    users: str = ""  # "name:role:hash;…" (hash from `python -m store.users hash`; no hash with Spaces sign-in)
    users_file: Path | None = None
    anonymous_rating: bool = False
    store_enabled: bool = True
    retention_days: float = 30.0  # answers without training consent; 0 keeps them forever
    cache_max_age_s: int = 3600  # files in Gradio's cache (uploads, images shown, export archives)
    queue_size: int = 32
    export_dir: Path = Path("data/exports")
    login_max_failures: int = 5  # failed sign-ins per user name within login_window_s
    login_max_failures_per_client: int = 20  # failed sign-ins per client address within login_window_s
    login_window_s: int = 900

    def __post_init__(self) -> None:
        if self.backend not in ("transformers", "openai"):
            raise SettingsError(f"VISIONTHINK_BACKEND must be 'transformers' or 'openai', not {self.backend!r}.")
        if self.early_encode not in ("auto", "on", "off"):
            raise SettingsError(f"VISIONTHINK_EARLY_ENCODE must be 'auto', 'on' or 'off', not {self.early_encode!r}.")
        if self.fallback not in ("miniature", "none"):
            raise SettingsError(f"VISIONTHINK_FALLBACK must be 'miniature' or 'none', not {self.fallback!r}.")
        for name in _AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise SettingsError(f"{ENV_NAMES[name]} must be at least 1, not {getattr(self, name)}.")
        for name in ("max_upload_mb", "retention_days"):
            if not 0 <= getattr(self, name) < 1e6:  # also refuses NaN and infinity
                raise SettingsError(f"{ENV_NAMES[name]} must be a number from 0 up, not {getattr(self, name)}.")
        if self.max_upload_mb == 0:
            raise SettingsError("VISIONTHINK_MAX_UPLOAD_MB must be above 0 (megabytes per uploaded file).")

    @property
    def input_limits(self):
        """What an episode accepts (image pixels, question length), for the engine and for every early check."""
        from visionthink.engine import InputLimits

        return InputLimits(max_image_pixels=self.max_image_pixels, max_question_chars=self.max_question_chars)

    @property
    def max_upload_bytes(self) -> int:
        """The upload limit in bytes; a megabyte is 1024² bytes here, as the page counts it when it refuses a file."""
        return int(self.max_upload_mb * 1024 * 1024)

    def override(self, **values) -> Settings:
        """These settings with the given values (command-line flags) in place; ``None`` means "not given"."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict = {}
        for f in fields(cls):
            raw = environ.get(ENV_NAMES[f.name])
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, raw)
        if "api_key" not in values and environ.get("OPENAI_API_KEY"):
            values["api_key"] = environ["OPENAI_API_KEY"]
        return cls(**values)


ENV_NAMES = {
    "model": "VISIONTHINK_MODEL",
    "revision": "VISIONTHINK_REVISION",
    "backend": "VISIONTHINK_BACKEND",
    "base_url": "VISIONTHINK_BASE_URL",
    "api_key": "VISIONTHINK_API_KEY",
    "device": "VISIONTHINK_DEVICE",
    "early_encode": "VISIONTHINK_EARLY_ENCODE",
    "max_new_tokens": "VISIONTHINK_MAX_NEW_TOKENS",
    "temperature": "VISIONTHINK_TEMPERATURE",
    "top_p": "VISIONTHINK_TOP_P",
    "max_turns": "VISIONTHINK_MAX_TURNS",
    "max_image_pixels": "VISIONTHINK_MAX_IMAGE_PIXELS",
    "max_question_chars": "VISIONTHINK_MAX_QUESTION_CHARS",
    "max_text_chars": "VISIONTHINK_MAX_TEXT_CHARS",
    "max_upload_mb": "VISIONTHINK_MAX_UPLOAD_MB",
    "model_concurrency": "VISIONTHINK_MODEL_CONCURRENCY",
    "fallback": "VISIONTHINK_FALLBACK",
    "fallback_model": "VISIONTHINK_FALLBACK_MODEL",
    "fallback_max_new_tokens": "VISIONTHINK_FALLBACK_MAX_NEW_TOKENS",
    "request_timeout_s": "VISIONTHINK_REQUEST_TIMEOUT",
    "db_url": "VISIONTHINK_DB_URL",
    "ratings_per_item": "VISIONTHINK_RATINGS_PER_ITEM",
    "users": "VISIONTHINK_USERS",
    "users_file": "VISIONTHINK_USERS_FILE",
    "anonymous_rating": "VISIONTHINK_ANONYMOUS_RATING",
    "store_enabled": "VISIONTHINK_STORE",
    "retention_days": "VISIONTHINK_RETENTION_DAYS",
    "cache_max_age_s": "VISIONTHINK_CACHE_MAX_AGE",
    "queue_size": "VISIONTHINK_QUEUE_SIZE",
    "export_dir": "VISIONTHINK_EXPORT_DIR",
    "login_max_failures": "VISIONTHINK_LOGIN_MAX_FAILURES",
    "login_max_failures_per_client": "VISIONTHINK_LOGIN_MAX_FAILURES_PER_CLIENT",
    "login_window_s": "VISIONTHINK_LOGIN_WINDOW",
}

_AT_LEAST_ONE = ("max_new_tokens", "max_turns", "max_image_pixels", "max_question_chars", "max_text_chars",
                 "model_concurrency", "fallback_max_new_tokens", "ratings_per_item", "cache_max_age_s", "queue_size",
                 "login_max_failures", "login_max_failures_per_client", "login_window_s")
_INTS = set(_AT_LEAST_ONE)
_FLOATS = {"temperature", "top_p", "request_timeout_s", "max_upload_mb", "retention_days"}
_BOOLS = {"anonymous_rating", "store_enabled"}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _convert(name: str, raw: str):
    try:
        if name in _INTS:
            return int(raw.replace("_", ""))
        if name in _FLOATS:
            return float(raw)
    except ValueError:
        kind = "a whole number" if name in _INTS else "a number"
        raise SettingsError(f"{ENV_NAMES[name]} must be {kind}, not {raw!r}.") from None
    if name in _BOOLS:
        if raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise SettingsError(f"{ENV_NAMES[name]} must be 1 or 0 (true or false), not {raw!r}.")
    if name in ("fallback_model", "users_file", "export_dir"):
        return Path(raw).expanduser()
    return raw
