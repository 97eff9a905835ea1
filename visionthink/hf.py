"""The real Hugging Face loading path for Qwen2.5-VL checkpoints, shared by the inference engine and training.

- :func:`load_processor` gives the stock ``AutoProcessor`` where torchvision works and otherwise an image-only
  ``Qwen2_5_VLProcessor`` subclass (transformers' video processor needs torchvision, and the CPU has no
  torchvision build here). Both keep the checkpoint's pixel limits.
- :func:`load_model` loads ``Qwen2_5_VLForConditionalGeneration`` with the dtype and attention kernel that suit
  the device (:func:`pick_device_and_dtype`).
- :func:`check_available` tells quickly, before any heavy import, whether a model can be loaded at all.

torch and transformers are imported only when needed, so ``check_available`` and ``processor_pixel_limits`` stay
cheap; ``ImageOnlyQwen2_5_VLProcessor`` is created on first access.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionthink.files import looks_like_path

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: The processor class name the Hub checkpoints record; saved processors use it too.
HUB_PROCESSOR_CLASS = "Qwen2_5_VLProcessor"
#: Seconds ``check_available`` waits for the Hub when the model is not cached.
DEFAULT_HUB_TIMEOUT = 8.0


# --- Processor -------------------------------------------------------------------------------------------------


@functools.cache
def _image_only_processor_class():
    from transformers import Qwen2_5_VLProcessor

    class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
        """``Qwen2_5_VLProcessor`` without the video processor, so it works without torchvision.

        ``ProcessorMixin`` derives the sub-processors from this ``__init__`` signature, which names only the image
        processor and the tokenizer; the parent gets ``None`` for the video slot. Images, text and the chat
        template work as in the stock processor; videos are not supported. ``save_pretrained`` records the stock
        class name, so a saved folder loads with ``AutoProcessor`` where torchvision is available.
        """

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

        def to_dict(self) -> dict[str, Any]:
            output = super().to_dict()
            output["processor_class"] = HUB_PROCESSOR_CLASS
            return output

        def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
            files = super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
            # ProcessorMixin stamps our class name into the tokenizer; restore the Hub name on disk and in memory.
            self.tokenizer._set_processor_class(HUB_PROCESSOR_CLASS)
            for name in ("tokenizer_config.json", "preprocessor_config.json", "processor_config.json"):
                path = Path(save_directory) / name
                if path.is_file():
                    data = json.loads(path.read_text(encoding="utf-8"))
                    if data.get("processor_class") == type(self).__name__:
                        data["processor_class"] = HUB_PROCESSOR_CLASS
                        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            return files

    ImageOnlyQwen2_5_VLProcessor.__module__ = __name__
    ImageOnlyQwen2_5_VLProcessor.__qualname__ = "ImageOnlyQwen2_5_VLProcessor"
    return ImageOnlyQwen2_5_VLProcessor


_CLASS_LOCK = threading.Lock()


def __getattr__(name: str):
    if name == "ImageOnlyQwen2_5_VLProcessor":  # built on first use: importing transformers' processors is slow
        with _CLASS_LOCK:  # one class object, however many threads ask first (functools.cache alone may build two)
            return _image_only_processor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def torchvision_works() -> bool:
    """True when torchvision imports. A CUDA-only wheel on a CPU host raises RuntimeError, not ImportError."""
    try:
        importlib.import_module("torchvision")
    except Exception:  # ImportError, or RuntimeError "operator torchvision::nms does not exist"
        return False
    return True


def adapter_base(name_or_path: str) -> str | None:
    """The base model of a folder that holds a PEFT (LoRA) adapter, or None when it is not one."""
    config = Path(str(name_or_path)).expanduser() / "adapter_config.json"
    if not config.is_file():
        return None
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config} names no base_model_name_or_path; cannot tell which model the adapter is for.")
    return base


def load_processor(name_or_path: str, *, revision: str | None = None, local_files_only: bool = False):
    """The checkpoint's processor: stock ``AutoProcessor`` when torchvision works, else the image-only subclass.

    An adapter folder without a processor of its own uses its base model's.
    """
    kwargs: dict[str, Any] = {"local_files_only": local_files_only}
    if revision is not None:
        kwargs["revision"] = revision
    name_or_path = str(name_or_path)
    base = adapter_base(name_or_path)
    if base is not None and not (Path(name_or_path).expanduser() / "preprocessor_config.json").is_file():
        return load_processor(base, local_files_only=local_files_only)
    if torchvision_works():
        from transformers import AutoProcessor

        try:
            return AutoProcessor.from_pretrained(name_or_path, **kwargs)
        except ImportError:  # a sub-processor still wants something missing; the image-only path needs less
            pass
    cls = __getattr__("ImageOnlyQwen2_5_VLProcessor")
    return cls.from_pretrained(name_or_path, **kwargs)


def processor_pixel_limits(processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) of a processor (or of a bare image processor), from its ``size``."""
    image_processor = getattr(processor, "image_processor", processor)
    size = getattr(image_processor, "size", None)
    if size is None:
        raise ValueError(f"{type(image_processor).__name__} has no size; is it a Qwen2-VL image processor?")
    if not isinstance(size, dict):
        size = {key: getattr(size, key, None) for key in ("shortest_edge", "longest_edge")}
    shortest, longest = size.get("shortest_edge"), size.get("longest_edge")
    if not shortest or not longest:
        raise ValueError(f"The image processor's size {dict(size)} lacks shortest_edge/longest_edge pixel limits.")
    return int(shortest), int(longest)


# --- Model -----------------------------------------------------------------------------------------------------


def _flash_attention_works() -> bool:
    try:
        importlib.import_module("flash_attn")
    except Exception:
        return False
    from transformers.utils import is_flash_attn_2_available

    return bool(is_flash_attn_2_available())


def pick_device_and_dtype(device: str = "auto") -> tuple[torch.device, torch.dtype, str]:
    """(device, dtype, attn_implementation) for ``device`` = "auto", "cpu", "cuda" or "cuda:N".

    CUDA gets bfloat16 (float16 on GPUs without bf16) and FlashAttention-2 when ``flash_attn`` imports, else SDPA;
    the CPU gets float32 and SDPA. "auto" picks CUDA when a GPU is visible.
    """
    import torch

    spec = (device or "auto").strip().lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        target = torch.device(spec)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.") from exc
    if target.type == "cpu":
        return torch.device("cpu"), torch.float32, "sdpa"
    if target.type != "cuda":
        raise ValueError(f"Unsupported device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    if not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} was requested but no CUDA GPU is available; use 'cpu' or 'auto'.")
    index = target.index if target.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ValueError(f"Device {device!r} does not exist: {torch.cuda.device_count()} CUDA GPU(s) are visible.")
    target = torch.device("cuda", index)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return target, dtype, ("flash_attention_2" if _flash_attention_works() else "sdpa")


def load_model(
    name_or_path: str,
    *,
    revision: str | None = None,
    device: str = "auto",
    local_files_only: bool = False,
):
    """``Qwen2_5_VLForConditionalGeneration`` on the device, in the device's dtype, in eval mode.

    A folder holding a LoRA adapter (what ``train.grpo`` saves with ``merge_lora=false``) loads its base model and
    merges the adapter into it.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    base = adapter_base(name_or_path)
    if base is not None:
        from peft import PeftModel

        model = load_model(base, device=device, local_files_only=local_files_only)
        return PeftModel.from_pretrained(model, str(Path(str(name_or_path)).expanduser())).merge_and_unload().eval()

    target, dtype, attn_implementation = pick_device_and_dtype(device)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": attn_implementation,
        "local_files_only": local_files_only,
    }
    if revision is not None:
        kwargs["revision"] = revision
    if target.type == "cuda":
        kwargs["device_map"] = {"": str(target)}  # load the weights straight onto the GPU (one device: no hooks)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(name_or_path), **kwargs)
    return model.to(target).eval()


# --- Availability ----------------------------------------------------------------------------------------------


class ModelUnavailable(RuntimeError):
    """The model cannot be loaded here; the message says why, for a person to read."""


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.is_offline_mode() or env.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _cached_weights_complete(repo_id: str, revision: str | None) -> bool | None:
    """True when config.json and all weight files are in the local Hub cache; None when nothing is cached."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> str | None:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
        return found if isinstance(found, str) else None

    if cached("config.json") is None:
        return None
    if cached("model.safetensors") is not None:
        return True
    index = cached("model.safetensors.index.json")
    if index is None:
        return False
    try:
        shards = set(json.loads(Path(index).read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all(cached(shard) is not None for shard in shards)


def _hub_config_reachable(repo_id: str, revision: str | None, timeout: float) -> None:
    """Raise ModelUnavailable unless the Hub answers for ``repo_id``'s config.json within ``timeout`` seconds."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub import errors as hub_errors

    outcome: dict[str, BaseException | None] = {}

    def probe() -> None:
        try:
            endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None  # read now, not at import
            url = hf_hub_url(repo_id, "config.json", revision=revision, endpoint=endpoint)
            get_hf_file_metadata(url, timeout=timeout)
            outcome["error"] = None
        except BaseException as exc:  # reported in the caller's thread
            outcome["error"] = exc

    # DNS lookups are outside httpx's timeouts; a daemon thread bounds the whole probe.
    thread = threading.Thread(target=probe, name=f"hub-probe-{repo_id}", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if "error" not in outcome:
        raise ModelUnavailable(
            f"The model {repo_id!r} is not in the local cache and the Hugging Face Hub did not answer within "
            f"{timeout:g} s. Check the network, download it beforehand, or use a local folder."
        )
    error = outcome["error"]
    if error is None:
        return
    where = f" at revision {revision!r}" if revision else ""
    if isinstance(error, hub_errors.GatedRepoError):
        message = f"The model {repo_id!r} is gated on the Hub: accept its licence and log in (HF_TOKEN) first."
    elif isinstance(error, hub_errors.RepositoryNotFoundError):
        message = f"There is no model {repo_id!r} on the Hugging Face Hub (or it is private). Check the name."
    elif isinstance(error, hub_errors.RevisionNotFoundError):
        message = f"The model {repo_id!r} has no revision {revision!r} on the Hub."
    elif isinstance(error, hub_errors.EntryNotFoundError):
        message = f"The Hub repository {repo_id!r}{where} has no config.json; it is not a transformers model."
    elif isinstance(error, hub_errors.OfflineModeIsEnabled):
        message = (
            f"The model {repo_id!r} is not in the local cache and Hub access is off (HF_HUB_OFFLINE). "
            "Download it beforehand or use a local folder."
        )
    else:
        message = (
            f"The model {repo_id!r} is not in the local cache and the Hugging Face Hub could not be reached "
            f"({type(error).__name__}: {error}). Check the network, download it beforehand, or use a local folder."
        )
    raise ModelUnavailable(message) from error


def check_available(name_or_path: str, *, revision: str | None = None, timeout: float = DEFAULT_HUB_TIMEOUT) -> None:
    """Raise ModelUnavailable unless the model is a local folder with a config.json, cached, or on the Hub.

    Local folders and the Hub cache are checked without the network. Offline (HF_HUB_OFFLINE=1) an uncached
    model fails at once; otherwise the Hub is asked once, and the answer must come within ``timeout`` seconds.
    """
    name = str(name_or_path).strip()
    if not name:
        raise ModelUnavailable("No model was given: name a Hugging Face Hub id or a local folder.")
    path = Path(name).expanduser()
    if path.is_dir():
        base = adapter_base(str(path))
        if base is not None:
            return check_available(base, timeout=timeout)
        if not (path / "config.json").is_file():
            raise ModelUnavailable(f"The folder {path} holds no config.json, so it is not a saved model.")
        return
    if path.exists():
        raise ModelUnavailable(f"{path} is a file; give the folder that holds the model's config.json.")
    if looks_like_path(name):
        raise ModelUnavailable(f"There is no folder {path}. Check the path or give a Hugging Face Hub id.")

    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as exc:
        raise ModelUnavailable(f"{name!r} is neither an existing folder nor a valid Hugging Face Hub id ({exc}).") from exc

    cached = _cached_weights_complete(name, revision)
    if cached:
        return
    if _offline():
        state = "only partly in" if cached is False else "not in"
        raise ModelUnavailable(
            f"The model {name!r} is {state} the local Hugging Face cache and Hub access is off (HF_HUB_OFFLINE=1). "
            "Download it on a connected machine first, or give a local folder."
        )
    _hub_config_reachable(name, revision, timeout)
