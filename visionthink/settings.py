"""Every setting of VisionThink Studio in one place: one field each, carrying its environment variable and its help.

README's settings table is rendered from these fields (``python -m visionthink.settings`` prints it, and a test keeps
README equal to it). Command-line flags override them through ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from visionthink.images import DEFAULT_MAX_IMAGE_PIXELS
from visionthink.text import MAX_QUESTION_CHARS, MAX_TEXT_CHARS

DEFAULT_MODEL = "Senqiao/VisionThink-Efficient"
#: The embedded default: the miniature trained on a synthetic task, shipped in the repository (visionthink/miniature).
FALLBACK_MODEL = Path(__file__).resolve().parent / "miniature" / "weights" / "visionthink-miniature"
#: The paper's judge model.
DEFAULT_JUDGE_MODEL = "gpt-4o-2024-11-20"
LOCAL_DB_URL = "sqlite:///data/visionthink.db"
#: On Hugging Face Spaces with persistent storage: a SQLite file on its /data mount.
SPACES_DB_URL = "sqlite:////data/visionthink.db"


class SettingsError(ValueError):
    """An environment variable with a value that cannot be used; the message names it."""


def setting(env: str, default, doc: str, *, shown: str | None = None, also: str | None = None):
    """A field read from the variable ``env``, with its help ``doc``. ``shown`` is README's default where the value
    itself is not what to show; ``also`` is a variable read when ``env`` is unset."""
    metadata = {"env": env, "help": doc}
    if shown is not None:
        metadata["shown"] = shown
    if also is not None:
        metadata["also"] = also
    return field(default=default, metadata=metadata)


_NONE = "(none)"


@dataclass(frozen=True)
class Settings:
    model: str = setting(
        "VISIONTHINK_MODEL", DEFAULT_MODEL,
        "Hub id or local folder of the checkpoint. With the `openai` backend, the served model name (`auto` asks the "
        "server).")
    revision: str | None = setting("VISIONTHINK_REVISION", None,
                                   "Hub revision (branch, tag or commit) of the checkpoint.", shown="(latest)")
    backend: str = setting(
        "VISIONTHINK_BACKEND", "transformers",
        "`transformers` runs the model in this process; `openai` sends turns to an OpenAI-compatible server.")
    base_url: str = setting("VISIONTHINK_BASE_URL", "http://127.0.0.1:8000/v1",
                            "The OpenAI-compatible server (vLLM, SGLang) for the `openai` backend.")
    api_key: str | None = setting("VISIONTHINK_API_KEY", None, "API key sent to that server.",
                                  shown="`OPENAI_API_KEY`, else `EMPTY`", also="OPENAI_API_KEY")
    device: str = setting(
        "VISIONTHINK_DEVICE", "auto",
        "`auto`, `cpu`, `cuda` or `cuda:N`. CUDA uses bf16 and FlashAttention-2 when `flash-attn` imports (else "
        "SDPA); the CPU uses float32.")
    early_encode: str = setting(
        "VISIONTHINK_EARLY_ENCODE", "auto",
        "`on` starts encoding the full image while auto's first turn runs (on a CUDA side stream), so a request pays "
        "only the prefill of its tokens; unused features are dropped. `auto` turns it on on a CUDA GPU only (on the "
        "CPU it would compete with the turn for the same cores); `off` never. Local backend only.")
    max_new_tokens: int = setting("VISIONTHINK_MAX_NEW_TOKENS", 2048,
                                  "Tokens generated per turn at most (the paper's evaluation allowed 8192).")
    temperature: float = setting("VISIONTHINK_TEMPERATURE", 0.0,
                                 "0 is greedy decoding, as in the paper's evaluation.")
    top_p: float = setting("VISIONTHINK_TOP_P", 1.0, "Nucleus sampling when the temperature is above 0.")
    max_turns: int = setting("VISIONTHINK_MAX_TURNS", 2,
                             "Model turns per episode (the checkpoints were trained with 2: at most one resize).")
    max_image_pixels: int = setting("VISIONTHINK_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS,
                                    "Larger images are refused from their header, never decoded.")
    max_upload_mb: float = setting(
        "VISIONTHINK_MAX_UPLOAD_MB", 20.0,
        "Largest file a visitor may upload (megabytes of 1024² bytes, as the page counts them); larger uploads are "
        "refused before they are stored.")
    max_question_chars: int = setting("VISIONTHINK_MAX_QUESTION_CHARS", MAX_QUESTION_CHARS,
                                      "Longest question, in characters.")
    max_text_chars: int = setting("VISIONTHINK_MAX_TEXT_CHARS", MAX_TEXT_CHARS,
                                  "Longest reference answer, correction or comment, in characters.")
    model_concurrency: int = setting(
        "VISIONTHINK_MODEL_CONCURRENCY", 1,
        "Answers the model generates at once, across every page; the rest wait. Raise it for a server that batches "
        "(vLLM).")
    fallback: str = setting(
        "VISIONTHINK_FALLBACK", "miniature",
        "`miniature`: use the embedded miniature when the checkpoint cannot be loaded; `none`: stop with an error.")
    fallback_model: Path = setting("VISIONTHINK_FALLBACK_MODEL", FALLBACK_MODEL, "The fallback's folder.",
                                   shown="`visionthink/miniature/weights/visionthink-miniature`")
    fallback_max_new_tokens: int = setting(
        "VISIONTHINK_FALLBACK_MAX_NEW_TOKENS", 64,
        "Token cap per turn for the fallback (the miniature's turns are about 30 tokens).")
    request_timeout_s: float = setting("VISIONTHINK_REQUEST_TIMEOUT", 600.0,
                                       "Seconds to wait for the OpenAI-compatible server per request.")
    queue_size: int = setting("VISIONTHINK_QUEUE_SIZE", 32,
                              "Requests the page queues before it turns new ones away.")
    examples_dir: Path = setting("VISIONTHINK_EXAMPLES_DIR", Path("~/.cache/visionthink/examples"),
                                 "Where the example images are drawn.")
    db_url: str = setting(
        "VISIONTHINK_DB_URL", LOCAL_DB_URL,
        "Where answers and ratings are kept: a SQLite file, or `postgresql://…` for several replicas.",
        shown=f"`{LOCAL_DB_URL}` (`/data/…` on Spaces with storage)")
    store_enabled: bool = setting("VISIONTHINK_STORE", True,
                                  "`0` stores nothing (no rating, annotation or export then).")
    users: str = setting(
        "VISIONTHINK_USERS", "",
        "Users and roles, `name:role:hash;…`; roles are `viewer`, `annotator`, `admin`. No hash on Spaces (Hugging "
        "Face sign-in).", shown=_NONE)
    users_file: Path | None = setting(
        "VISIONTHINK_USERS_FILE", None,
        "The same as a JSON or TOML file with a list `users` of `{name, role, password_hash}`.", shown=_NONE)
    ratings_per_item: int = setting("VISIONTHINK_RATINGS_PER_ITEM", 2,
                                    "Annotators who rate each answer before it leaves the queue.")
    anonymous_rating: bool = setting("VISIONTHINK_ANONYMOUS_RATING", False,
                                     "`1` lets visitors who are not signed in rate their own answers (thumbs).")
    export_dir: Path = setting("VISIONTHINK_EXPORT_DIR", Path("data/exports"),
                               "Where the Admin tab's exports are written (one link per format).")
    retention_days: float = setting(
        "VISIONTHINK_RETENTION_DAYS", 30.0,
        "Days an answer without training consent is kept (for its asker's rating and the dashboard), then deleted "
        "with its ratings and image; `0` keeps them.")
    cache_max_age_s: int = setting(
        "VISIONTHINK_CACHE_MAX_AGE", 3600,
        "Seconds the pages keep files (uploads, images shown, export archives) before deleting them.")
    login_max_failures: int = setting(
        "VISIONTHINK_LOGIN_MAX_FAILURES", 5,
        "Failed sign-ins per user name within the window before that name is refused for the rest of it.")
    login_max_failures_per_client: int = setting("VISIONTHINK_LOGIN_MAX_FAILURES_PER_CLIENT", 20,
                                                 "The same per client address, whatever names it tries.")
    login_window_s: int = setting("VISIONTHINK_LOGIN_WINDOW", 900, "The sign-in window, in seconds.")
    judge: str | None = setting("VISIONTHINK_JUDGE", None,
                                "The judge for training, evaluation and `train.score_store`.",
                                shown="`llm` when a judge endpoint is set, else `rule`")
    judge_base_url: str | None = setting("VISIONTHINK_JUDGE_BASE_URL", None,
                                         "OpenAI-compatible judge endpoint (OpenAI, vLLM, …).",
                                         shown="(api.openai.com)")
    judge_model: str = setting("VISIONTHINK_JUDGE_MODEL", DEFAULT_JUDGE_MODEL, "The judge model (the paper's).")
    judge_api_key: str | None = setting("VISIONTHINK_JUDGE_API_KEY", None, "Key for the judge endpoint.",
                                        shown="`OPENAI_API_KEY`", also="OPENAI_API_KEY")
    judge_azure_endpoint: str | None = setting(
        "VISIONTHINK_JUDGE_AZURE_ENDPOINT", None,
        "Use Azure OpenAI instead: its endpoint (the judge model is then the deployment name).", shown=_NONE)
    judge_api_version: str | None = setting(
        "VISIONTHINK_JUDGE_API_VERSION", None,
        "The Azure OpenAI API version (e.g. `2024-10-21`), needed with `VISIONTHINK_JUDGE_AZURE_ENDPOINT`.",
        shown=_NONE)
    judge_concurrency: int = setting("VISIONTHINK_JUDGE_CONCURRENCY", 16, "Judge requests in flight at most.")
    judge_timeout_s: float = setting("VISIONTHINK_JUDGE_TIMEOUT", 120.0, "Seconds per judge request.")
    judge_cache: Path | None = setting("VISIONTHINK_JUDGE_CACHE", None,
                                       "A SQLite file that keeps verdicts across runs.", shown="(memory only)")
    server_name: str | None = setting(
        "GRADIO_SERVER_NAME", None,
        "Where the page listens (Gradio's own variable; use `0.0.0.0` to listen on all interfaces).",
        shown="`127.0.0.1` (`0.0.0.0` on Spaces)")
    server_port: int = setting("GRADIO_SERVER_PORT", 7860, "The port it listens on (Gradio's own variable).")
    space_id: str | None = setting(
        "SPACE_ID", None,
        "Set by Hugging Face Spaces: the app then shows one page with \"Sign in with Hugging Face\", listens on all "
        "interfaces and keeps its database under `/data` when the Space has storage.", shown=_NONE)

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
        if self.judge is not None and self.judge.lower() not in ("llm", "rule"):
            raise SettingsError(f"VISIONTHINK_JUDGE must be 'llm' or 'rule', not {self.judge!r}.")
        for name in ("judge_base_url", "judge_azure_endpoint"):
            url = getattr(self, name)
            if url and not re.match(r"^https?://[^/\s]+", url):
                raise SettingsError(
                    f"{ENV_NAMES[name]} must be an http(s) URL such as http://127.0.0.1:8000/v1, not {url!r}.")
        if not (self.judge_timeout_s > 0 and math.isfinite(self.judge_timeout_s)):
            raise SettingsError(
                f"VISIONTHINK_JUDGE_TIMEOUT must be a positive number of seconds, not {self.judge_timeout_s}.")

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
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings the environment gives; a variable unset or blank keeps the default."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        for f in fields(cls):
            raw = _read(environ, f.metadata["env"]) or _read(environ, f.metadata.get("also"))
            if raw:
                values[f.name] = _convert(f.name, raw)
        if ("db_url" not in values and values.get("space_id") and os.path.isdir("/data")
                and os.access("/data", os.W_OK)):
            values["db_url"] = SPACES_DB_URL
        return cls(**values)


#: Each field's environment variable, from the fields' metadata.
ENV_NAMES = {f.name: f.metadata["env"] for f in fields(Settings)}

_AT_LEAST_ONE = ("max_new_tokens", "max_turns", "max_image_pixels", "max_question_chars", "max_text_chars",
                 "model_concurrency", "fallback_max_new_tokens", "ratings_per_item", "cache_max_age_s", "queue_size",
                 "login_max_failures", "login_max_failures_per_client", "login_window_s", "judge_concurrency")
#: Each field's type without ``None`` (``Path | None`` is ``Path``): what its variable is converted to.
_KINDS = {name: next((t for t in typing.get_args(hint) if t is not type(None)), hint)
          for name, hint in typing.get_type_hints(Settings).items()}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _read(environ: Mapping[str, str], name: str | None) -> str:
    return (environ.get(name) or "").strip() if name else ""


def _convert(name: str, raw: str):
    kind = _KINDS[name]
    if kind in (int, float):
        try:
            return int(raw.replace("_", "")) if kind is int else float(raw)
        except ValueError:
            raise SettingsError(
                f"{ENV_NAMES[name]} must be {'a whole number' if kind is int else 'a number'}, not {raw!r}.") from None
    if kind is bool:
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise SettingsError(f"{ENV_NAMES[name]} must be 1 or 0 (true or false), not {raw!r}.")
    if kind is Path:
        return Path(raw).expanduser()
    return raw


#: Variables of the libraries the app runs on that README's table also lists: (variable, default, meaning).
OTHER_VARIABLES = (
    ("`GRADIO_TEMP_DIR`", "`<temp>/visionthink-gradio`",
     "Gradio's file folder for the pages; the app deletes old files there, so give it a folder of its own. The "
     "studio keeps its files beside it, in `<GRADIO_TEMP_DIR>-studio`."),
    ("`HF_HUB_OFFLINE`, `HF_HOME`, `HF_TOKEN`", "", "Hugging Face Hub settings, used when loading checkpoints."),
)


def _shown(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return f"{value:g}" if isinstance(value, float) else str(value)


def markdown_table() -> str:
    """README's settings table: each field's variable, default and help, then :data:`OTHER_VARIABLES`."""
    rows = [(f"`{f.metadata['env']}`", f.metadata.get("shown", f"`{_shown(f.default)}`"), f.metadata["help"])
            for f in fields(Settings)]
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in (*rows, *OTHER_VARIABLES)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
