"""Training rows from a store export (``grpo`` format) or any dataset in VisionThink's schema.

A source row has ``problem`` (the question, with ``<image>``), ``images`` (one image, the original), a reference in
``original_answer`` and/or ``solution``, and optionally ``needs_high_res``, ``info``, ``data_source``, ``doc_id``.
A training row has:

- ``prompt``: the system and user messages, built by ``visionthink.protocol`` (an image placeholder where
  ``<image>`` stands);
- ``images``: the 1/4-resolution view, ``downsample(original)``, which the model sees first;
- ``full_image``: the original (``full_resolution``), which the ``resize_image`` tool returns;
- ``problem``, ``original_answer``, ``solution``, ``needs_high_res``, ``data_source`` for the rewards, and ``kind``
  (the kind of question, where the source has one, e.g. the miniature's; empty otherwise) for per-kind metrics.
"""

from __future__ import annotations

import logging
from pathlib import Path

import datasets

from train.environment import as_image
from visionthink import protocol
from visionthink.images import ImageError, downsample, full_resolution

log = logging.getLogger(__name__)

FEATURES = datasets.Features({
    "prompt": [{"role": datasets.Value("string"),
                "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}]}],
    "images": datasets.Sequence(datasets.Image()),
    "full_image": datasets.Image(),
    "problem": datasets.Value("string"),
    "original_answer": datasets.Value("string"),
    "solution": datasets.Value("string"),
    "needs_high_res": datasets.Value("bool"),
    "data_source": datasets.Value("string"),
    "kind": datasets.Value("string"),
})


class DataError(ValueError):
    """A training source that cannot be used; the message says what is wrong."""


def prompt_messages(question: str) -> list[dict]:
    """The conversation before the model's first turn, in TRL's structured form (``{"type": "image"}`` slots)."""
    conversation = protocol.Conversation.start(question)
    return [
        {"role": m.role,
         "content": [{"type": "image", "text": None} if isinstance(p, protocol.Image) else {"type": "text", "text": p}
                     for p in m.parts if p != ""]}
        for m in conversation.messages
    ]


def load_source(source: str | Path, split: str = "train") -> datasets.Dataset:
    """A folder saved with ``save_to_disk`` (a store export), a parquet file or folder, or a Hub dataset id."""
    path = Path(source).expanduser()
    if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_info.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    if path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
        files = [str(path)] if path.is_file() else sorted(str(p) for p in path.glob("*.parquet"))
        return datasets.load_dataset("parquet", data_files=files, split="train")
    if path.exists():
        raise DataError(f"{path} is neither a saved dataset (save_to_disk) nor parquet.")
    name = str(source)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise DataError(f"{source} does not exist (and is not a Hub dataset id like Senqiao/VisionThink-Smart-Train).")
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:  # the Hub unreachable, offline mode, no such dataset or split
        raise DataError(f"Could not load the Hub dataset {name} (split {split}): {exc}") from exc


def to_training_row(row: dict) -> dict | None:
    """One source row as a training row; None (skipped) when its image or reference cannot be used."""
    images = row.get("images") or ([row["image"]] if row.get("image") is not None else [])
    if len(images) != 1:
        log.warning("Skipping %s: VisionThink rows hold exactly one image, this has %d.", row.get("doc_id"), len(images))
        return None
    reference = row.get("original_answer") or row.get("solution")
    if reference is None or not str(reference).strip():
        log.warning("Skipping %s: no reference answer.", row.get("doc_id"))
        return None
    try:
        original = as_image(images[0]).convert("RGB")
        low, full = downsample(original), full_resolution(original)
    except (ImageError, TypeError, OSError) as exc:
        log.warning("Skipping %s: %s", row.get("doc_id"), exc)
        return None
    problem = protocol.problem_text(str(row["problem"]))
    return {
        "prompt": prompt_messages(problem),
        "images": [low],
        "full_image": full,
        "problem": problem,
        "original_answer": str(reference),
        "solution": str(row.get("solution") or reference),
        "needs_high_res": row.get("needs_high_res"),
        "data_source": str(row.get("data_source") or "unknown"),
        "kind": str(row.get("kind") or ""),
    }


def training_dataset(source: str | Path, split: str = "train", *, limit: int | None = None) -> datasets.Dataset:
    """Load ``source`` and turn every usable row into a training row (in batches, so images stay on disk)."""
    raw = load_source(source, split)
    if "problem" not in raw.column_names:
        raise DataError(f"{source} has no 'problem' column; it is not in VisionThink's schema (spec §7).")
    if limit is not None:
        raw = raw.select(range(min(limit, len(raw))))

    def convert(batch: dict) -> dict:
        rows = [to_training_row(dict(zip(batch, values, strict=True))) for values in zip(*batch.values(), strict=True)]
        kept = [r for r in rows if r is not None]
        return {name: [r[name] for r in kept] for name in FEATURES}

    rows = raw.map(convert, batched=True, batch_size=64, remove_columns=raw.column_names, features=FEATURES,
                   desc="Preparing training rows")
    if len(rows) == 0:
        raise DataError(f"{source} holds no usable rows (each needs one image, a problem and a reference answer).")
    if len(rows) < len(raw):
        log.warning("Using %d of %d rows from %s (see the warnings above).", len(rows), len(raw), source)
    return rows
