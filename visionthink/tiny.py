"""A tiny, randomly initialised Qwen2.5-VL built fully offline: the tests' stand-in for a real checkpoint.

It has the real model's *interfaces* — a byte-level BPE tokenizer with Qwen2.5's special tokens in Qwen's order,
``<tool_call>``/``</tool_call>`` as non-special added tokens, the stock Qwen2.5-VL chat template, the checkpoint's
image-processor limits and a v5 nested Qwen2.5-VL config — at a size that builds in seconds and runs on a CPU.
Its answers are noise (the app's offline default is the trained miniature, ``visionthink.miniature``). The folder
is laid out like the Hub repository, so it loads through the same ``from_pretrained`` path as the real model (see
:mod:`visionthink.hf`). Its builders (tokenizer, config, folder layout) also build the miniature.

    python -m visionthink.tiny --out DIR [--seed N] [--max-pixels N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from importlib import resources
from pathlib import Path

from visionthink import images, protocol

#: The label the UI shows for this model.
TINY_MODEL_NAME = "visionthink-tiny-random"
#: Bump when the recipe changes so that cached builds are rebuilt.
BUILD_VERSION = 1
#: Written last into a finished build; its presence (with the right version) marks the folder complete.
STAMP_FILE = "visionthink_tiny.json"
#: Files a complete build holds (besides the stamp).
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
)

#: Size of the trained byte-level BPE vocabulary (the 256 byte symbols included); added tokens follow it.
BPE_VOCAB_SIZE = 2000
#: Qwen2.5's additional special tokens, in Qwen's order (ids follow ``<|endoftext|>``).
QWEN_EXTRA_SPECIAL_TOKENS = (
    protocol.IM_START,
    protocol.IM_END,
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    protocol.VISION_START,
    protocol.VISION_END,
    protocol.VISION_PAD,
    protocol.IMAGE_PAD,
    protocol.VIDEO_PAD,
)
#: Added as ordinary (non-special) tokens, as in Qwen2.5, so they survive ``skip_special_tokens=True``.
QWEN_TOOL_TOKENS = ("<tool_call>", "</tool_call>")

#: OpenAI CLIP normalisation, as in the checkpoint's preprocessor_config.json.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

_WORDS = (
    "the a an of in on at to from with by for and or not is are was were be been has have had do does did "
    "what which who whom whose where when why how many much more most less least some any all each every "
    "color colour red orange yellow green blue purple pink brown black white grey gray gold silver "
    "image picture photo photograph scene view shows shown visible appears contains depicts "
    "left right top bottom middle center centre front back behind above below near next inside outside "
    "person people man woman child boy girl player team crowd face hand hair shirt hat "
    "car bus truck bike train plane boat road street sign traffic light building house wall roof window door "
    "dog cat bird horse cow sheep animal tree grass flower sky cloud sun water river sea mountain beach "
    "table chair sofa bed desk lamp book cup bottle glass plate food pizza cake fruit apple banana "
    "phone screen computer laptop keyboard clock watch camera chart graph plot axis bar line pie legend "
    "value values label title year month day total sum average percent number numbers count digit "
    "text word letter name brand logo written printed small large tiny huge long short tall wide narrow "
    "first second third last one two three four five six seven eight nine ten hundred thousand "
    "answer question reason reasoning think step steps final option choice correct wrong true false "
    "resize resolution detail details read reading zoom higher lower original half double quarter "
    "tool call function action result error information continue analyze content returned "
    "yes no maybe because therefore so then first finally clearly seems likely cannot"
).split()


def _tokenizer_corpus() -> list[str]:
    """Deterministic training text: the protocol's prompts and turns plus generated question-like sentences."""
    rng = random.Random(20250717)
    corpus = [
        protocol.SYSTEM_PROMPT,
        protocol.USER_TEMPLATE,
        protocol.user_message("What is written on the sign?"),
        protocol.tool_response_message(),
        protocol.error_response_message("Unknown Tool Type: zoom. Available function tools are: `resize`"),
        protocol.FOLLOWUP,
        protocol.ERROR_FOLLOWUP,
        protocol.GENERAL_SYSTEM_PROMPT,
        protocol.tool_call_text(),
        "<think>I need to look closer.</think>\n" + protocol.tool_call_text(),
        "<think>The sign says stop.</think><answer>\\boxed{B}</answer>",
    ]
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "sh", "ch", "st", "tr", "pl", "qu", "ng"]
    pseudo = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))) for _ in range(900)})
    words = list(_WORDS) + pseudo
    endings = ["?", ".", "!", ":", ",", ";"]
    for _ in range(3000):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 14)))
        tail = f"{rng.choice(endings)} {rng.randint(0, 100000)}"
        if rng.random() < 0.3:
            sentence = f"<think>{sentence}</think><answer>{rng.choice(words)}</answer>"
        corpus.append(sentence[:1].upper() + sentence[1:] + tail + ("\n" if rng.random() < 0.5 else ""))
    return corpus


def _train_bpe(corpus: list[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE with Qwen2's exact pre-tokenizer; returns (vocab, merges as tuples)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    state = json.loads(tokenizer.to_str())["model"]
    vocab = dict(state["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    if len(vocab) != vocab_size:
        raise RuntimeError(f"The BPE has {len(vocab)} tokens, expected {vocab_size}; the corpus is too small.")
    return vocab, merges


def stock_chat_template() -> str:
    """The stock Qwen2.5-VL chat template (the copy that ships with TRL)."""
    return resources.files("trl").joinpath("chat_templates/qwen2_5_vl.jinja").read_text(encoding="utf-8")


def build_tokenizer(corpus: list[str] | None = None, vocab_size: int = BPE_VOCAB_SIZE, phrases: tuple[str, ...] = ()):
    """A Qwen2 tokenizer with a BPE trained on ``corpus`` (default: the tiny model's), Qwen2.5's special tokens in
    Qwen's order, the tool tags as ordinary added tokens, then ``phrases`` as ordinary added tokens too (each one
    token wherever it appears, so a fixed text of the protocol costs one position)."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = _train_bpe(_tokenizer_corpus() if corpus is None else corpus, vocab_size)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token=protocol.END_OF_TEXT,
        pad_token=protocol.END_OF_TEXT,
        unk_token=None,
        errors="replace",
        model_max_length=131072,
    )
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [AddedToken(t, special=True, normalized=False) for t in QWEN_EXTRA_SPECIAL_TOKENS]}
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_TOOL_TOKENS])
    if phrases:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in phrases])
    tokenizer.eos_token = protocol.IM_END
    tokenizer.chat_template = stock_chat_template()
    return tokenizer


def build_image_processor(max_pixels: int):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": images.MIN_PIXELS, "longest_edge": int(max_pixels)},
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )


def build_config(tokenizer, text: dict | None = None, vision: dict | None = None):
    """A v5 nested Qwen2.5-VL config with the tokenizer's ids; ``text`` and ``vision`` override the tiny sizes."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (*QWEN_EXTRA_SPECIAL_TOKENS, protocol.END_OF_TEXT)}
    text_config = {
        "vocab_size": 2048,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "max_window_layers": 2,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        "bos_token_id": ids[protocol.END_OF_TEXT],
        "eos_token_id": ids[protocol.IM_END],
        "pad_token_id": ids[protocol.END_OF_TEXT],
        "tie_word_embeddings": True,
        **(text or {}),
    }
    vision_config = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [1],
        "tokens_per_second": 2,
        **(vision or {}),
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids[protocol.IMAGE_PAD],
        video_token_id=ids[protocol.VIDEO_PAD],
        vision_start_token_id=ids[protocol.VISION_START],
        vision_end_token_id=ids[protocol.VISION_END],
        tie_word_embeddings=True,
    )


def _update_json(path: Path, **fields) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(fields)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def new_model(config, tokenizer, seed: int):
    """A randomly initialised model for ``config`` (seeded; the caller's RNG state is left alone), in eval mode,
    with a generation config that stops at either end-of-turn token."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    im_end = tokenizer.convert_tokens_to_ids(protocol.IM_END)
    end_of_text = tokenizer.convert_tokens_to_ids(protocol.END_OF_TEXT)
    model.generation_config = GenerationConfig(
        bos_token_id=end_of_text, eos_token_id=[im_end, end_of_text], pad_token_id=end_of_text
    )
    return model


def write_folder(folder: Path, model, tokenizer, image_processor, *, name_or_path: Path | str) -> None:
    """Save model, tokenizer and image processor into ``folder`` in the Hub layout, with the stock chat template;
    the config names ``name_or_path`` (trainers re-load the policy from it)."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    chat_template = stock_chat_template()
    (folder / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    (folder / "chat_template.json").write_text(
        json.dumps({"chat_template": chat_template}, indent=2) + "\n", encoding="utf-8"
    )
    # Hub layout: the checkpoint names the torchvision class and the processor; our loader resolves both.
    _update_json(
        folder / "preprocessor_config.json",
        image_processor_type="Qwen2VLImageProcessor",
        processor_class="Qwen2_5_VLProcessor",
    )
    # save_pretrained drops _name_or_path; keep it, so trainers that re-load the policy from the config find it.
    _update_json(folder / "config.json", _name_or_path=str(name_or_path))
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"The model build in {folder} did not write {', '.join(missing)}.")


def _build_into(folder: Path, *, name_or_path: Path, seed: int, max_pixels: int) -> None:
    """Write a complete tiny model into ``folder`` (which exists and is empty); its config names ``name_or_path``."""
    tokenizer = build_tokenizer()
    config = build_config(tokenizer)
    write_folder(folder, new_model(config, tokenizer, seed), tokenizer, build_image_processor(max_pixels),
                 name_or_path=name_or_path)
    (folder / STAMP_FILE).write_text(
        json.dumps(
            {"name": TINY_MODEL_NAME, "build_version": BUILD_VERSION, "seed": seed, "max_pixels": int(max_pixels)},
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )


def build_tiny_model(out_dir: str | os.PathLike, *, seed: int = 0, max_pixels: int = images.MAX_PIXELS) -> Path:
    """Build the tiny random Qwen2.5-VL into ``out_dir`` (created; files in it are overwritten). Returns the path.

    The same seed gives the same weights and the same files.
    """
    if max_pixels < images.MIN_PIXELS:
        raise ValueError(f"max_pixels must be at least {images.MIN_PIXELS}, got {max_pixels}.")
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / STAMP_FILE).unlink(missing_ok=True)  # the folder is incomplete until the new build finishes
    _build_into(out, name_or_path=out, seed=seed, max_pixels=max_pixels)
    return out


def is_complete(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a finished build of the current recipe."""
    folder = Path(folder)
    try:
        stamp = json.loads((folder / STAMP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict) or stamp.get("build_version") != BUILD_VERSION:
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size > 0 for name in REQUIRED_FILES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m visionthink.tiny",
        description="Build a tiny randomly initialised Qwen2.5-VL offline (for tests and demos; it answers noise).",
    )
    parser.add_argument("--out", required=True, help="folder to write the model into")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=images.MAX_PIXELS,
        help=f"image processor longest_edge in pixels (default {images.MAX_PIXELS}, the checkpoint's limit)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        out = build_tiny_model(args.out, seed=args.seed, max_pixels=args.max_pixels)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"Built {TINY_MODEL_NAME} in {out} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
