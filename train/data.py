"""Training rows from a store export (``grpo`` format) or any dataset in VisionThink's schema.

Source rows are read by ``visionthink.rows`` (which rows are usable, and why others are skipped, is decided there).
A training row has:

- ``prompt``: the system and user messages, built by ``visionthink.protocol`` (an image placeholder where
  ``<image>`` stands);
- ``images``: the low view, which the model sees first;
- ``full_image``: the high view, which the ``resize_image`` tool returns;
- ``problem``, ``original_answer``, ``solution``, ``needs_high_res``, ``data_source`` for the rewards, and ``kind``
  (the kind of question, where the source has one, e.g. the miniature's; empty otherwise) for per-kind metrics.

Which rule makes the two views, decided by one explicit signal, the ``info`` column:

- a source with an ``info`` column is VisionThink's released data (``Senqiao/VisionThink-Smart-Train``'s layout;
  ``visionthink.rows``, which store exports and the miniature write, has no such column). Its images follow the
  released training (``visionthink.images.released_views``): a row whose ``info`` holds ``tgt_width``/``tgt_height``
  gets a low view of exactly that size; any other row (``info`` null, or without a target) is area-clamped to
  [512², 2048²] pixels, then halved; the high view is twice the low one, not the original;
- any other source (a store export in the ``grpo`` format, the miniature's splits, rows built by hand) follows this
  project's rule, as the serving engine does: ``downsample(original)`` and ``full_resolution(original)``.

``training_dataset`` can also drop rows whose prompt is too long (``max_prompt_tokens``; the released training
dropped prompts over 8192 tokens): a prompt is counted as the processor gives it to the model, its rendered text
with the image slot expanded to the low view's visual tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path

import datasets

from train.environment import as_image
from visionthink import protocol
from visionthink.images import ImageError, downsample, full_resolution, released_views, visual_tokens
from visionthink.rows import MESSAGES, RELEASED_COLUMN, DataError, Row, Skipped, load_source, read_row

log = logging.getLogger(__name__)

FEATURES = datasets.Features({
    "prompt": MESSAGES,
    "images": datasets.Sequence(datasets.Image()),
    "full_image": datasets.Image(),
    "problem": datasets.Value("string"),
    "original_answer": datasets.Value("string"),
    "solution": datasets.Value("string"),
    "needs_high_res": datasets.Value("bool"),
    "data_source": datasets.Value("string"),
    "kind": datasets.Value("string"),
})
#: The low view's size, kept beside the rows only while they are prepared (the prompt-length filter reads it).
_LOW_SIZE = {"_low_width": datasets.Value("int32"), "_low_height": datasets.Value("int32")}


def prompt_messages(question: str) -> list[dict]:
    """The conversation before the model's first turn, in TRL's structured form (``{"type": "image"}`` slots)."""
    return protocol.Conversation.start(question).to_trl()


def target_size(info: Mapping | None) -> tuple[int, int] | None:
    """``(tgt_width, tgt_height)`` from a row's ``info``; None when it names none (the area clamp then applies).
    Raises ``ValueError`` for an ``info`` that is not a mapping or a target that is not two positive integers."""
    if info is None:
        return None
    if not isinstance(info, Mapping):
        raise ValueError(f"info is a {type(info).__name__}, not a mapping with tgt_width and tgt_height")
    width, height = info.get("tgt_width"), info.get("tgt_height")
    if not width or not height:  # the released code's test: both present and non-zero
        return None
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or v < 1 for v in (width, height)):
        raise ValueError(f"info's target size {width!r} x {height!r} is not two positive integers")
    return int(width), int(height)


def training_views(original, row: Row) -> tuple:
    """(low, high) views of a row's image by the rule that applies to it (module docstring)."""
    if row.released:
        return released_views(original, target_size(row.info))
    return downsample(original), full_resolution(original)


def to_training_row(record: Mapping) -> dict | None:
    """One source row as a training row; None (skipped, with a warning) when it or its image cannot be used."""
    try:
        row = read_row(record)
        original = as_image(row.image).convert("RGB")
        low, full = training_views(original, row)
    except (Skipped, ImageError, TypeError, ValueError, OSError) as exc:
        log.warning("Skipping %s: %s", record.get("doc_id"), exc)
        return None
    problem = protocol.problem_text(row.problem)
    return {
        "prompt": prompt_messages(problem),
        "images": [low],
        "full_image": full,
        "problem": problem,
        "original_answer": row.reference,
        "solution": row.solution or row.reference,
        "needs_high_res": row.needs_high_res,
        "data_source": row.data_source or "unknown",
        "kind": row.kind or "",
    }


def prompt_tokens(prompts: Iterable[list[dict]], low_sizes: Iterable[tuple[int, int]], processor) -> list[int]:
    """Tokens of each prompt as ``processor`` gives it to the model: the text its chat template renders (with the
    generation prompt), each image slot expanded to the visual tokens of the low view of that size."""
    from visionthink.hf import processor_pixel_limits

    tokenizer = processor.tokenizer
    min_pixels, max_pixels = processor_pixel_limits(processor)
    pad = tokenizer.convert_tokens_to_ids(protocol.IMAGE_PAD)
    counts = []
    for prompt, (width, height) in zip(prompts, low_sizes, strict=True):
        text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        slots = ids.count(pad)  # one image per row, so every slot is the low view
        counts.append(len(ids) - slots + slots * visual_tokens(width, height, min_pixels, max_pixels))
    return counts


def training_dataset(source: str | Path, split: str = "train", *, limit: int | None = None,
                     max_prompt_tokens: int | None = None, processor=None) -> datasets.Dataset:
    """Load ``source`` and turn every usable row into a training row (in batches, so images stay on disk).

    With ``max_prompt_tokens``, rows whose prompt (``prompt_tokens``, counted with ``processor``, the training
    processor with its template and pixel limits) is longer are dropped, and how many is logged.
    """
    if max_prompt_tokens is not None and processor is None:
        raise DataError("max_prompt_tokens needs the processor that counts the prompt's tokens.")
    raw = load_source(source, split, limit=limit)
    released = RELEASED_COLUMN in raw.column_names
    log.info("Images of %s follow %s.", source,
             "the released training's rule (it has an 'info' column)" if released
             else "the project's rule (no 'info' column: a store export or rows of this project)")

    def convert(batch: dict) -> dict:
        converted = [to_training_row(dict(zip(batch, values, strict=True)))
                     for values in zip(*batch.values(), strict=True)]
        kept = [r for r in converted if r is not None]
        columns = {name: [r[name] for r in kept] for name in FEATURES}
        columns["_low_width"] = [r["images"][0].width for r in kept]
        columns["_low_height"] = [r["images"][0].height for r in kept]
        return columns

    rows = raw.map(convert, batched=True, batch_size=64, remove_columns=raw.column_names,
                   features=datasets.Features({**FEATURES, **_LOW_SIZE}), desc="Preparing training rows")
    if len(rows) == 0:
        raise DataError(f"{source} holds no usable rows (each needs one image, a problem and a reference answer).")
    if len(rows) < len(raw):
        log.warning("Using %d of %d rows from %s (see the warnings above).", len(rows), len(raw), source)
    if max_prompt_tokens is not None:
        # Counted outside ``map`` from two small columns, so the count is right when ``map`` reads its cache.
        counts = prompt_tokens(rows["prompt"], zip(rows["_low_width"], rows["_low_height"], strict=True), processor)
        keep = [i for i, count in enumerate(counts) if count <= max_prompt_tokens]
        if not keep:
            raise DataError(f"Every prompt of {source} is over max_prompt_tokens ({max_prompt_tokens}); the shortest "
                            f"has {min(counts)} tokens. Raise max_prompt_tokens.")
        if len(keep) < len(rows):
            log.warning("Dropped %d of %d rows from %s: their prompt is over max_prompt_tokens (%d tokens, text and "
                        "the low view's visual tokens; the longest has %d).", len(rows) - len(keep), len(rows),
                        source, max_prompt_tokens, max(counts))
            rows = rows.select(keep)
    return rows.remove_columns(list(_LOW_SIZE))
