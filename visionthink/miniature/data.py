"""Splits of the miniature's task in VisionThink's row schema (``visionthink.rows``), plus the ``kind`` column."""

from __future__ import annotations

from pathlib import Path

import datasets

from visionthink import rows
from visionthink.miniature import task

DATA_SOURCE = "visionthink_miniature"
FEATURES = rows.features(kind=datasets.Value("string"))


def row(item: task.Item, doc_id: str) -> dict:
    return rows.make_row(item.question, item.image, item.answer, solution=item.answer,
                         needs_high_res=item.needs_high_res, data_source=DATA_SOURCE, doc_id=doc_id, kind=item.kind)


def split(n: int, seed: int, kinds: tuple[str, ...] = task.KINDS) -> datasets.Dataset:
    """``n`` items drawn from ``seed`` (``kinds`` in turn), as a dataset."""
    items = task.sample(n, seed, kinds=kinds)
    return datasets.Dataset.from_list([row(item, f"miniature-{seed}-{i}") for i, item in enumerate(items)],
                                      features=FEATURES)


def write_split(n: int, seed: int, out: str | Path, kinds: tuple[str, ...] = task.KINDS) -> Path:
    """Save a split with ``save_to_disk`` (what ``train.grpo``, ``train.evaluate`` and ``datasets.load_from_disk``
    read) and return its folder."""
    out = Path(out)
    split(n, seed, kinds).save_to_disk(str(out))
    return out
