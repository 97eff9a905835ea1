"""VisionThink's dataset row (docs/protocol.md §8): its features, the one writer (``make_row``, used by store
exports and the miniature's sampler) and the one reader (``load_source``, ``read_row``, ``read_rows``, used by ``train/``).

A row holds ``problem`` (the question with ``<image>``), ``images`` (one image, the original), ``original_answer``
(the judge's reference), ``solution`` (the rule judge's), ``needs_high_res`` (whether the full image is needed,
when known), ``data_source`` and ``doc_id``. A writer may add columns (the miniature adds ``kind``).

The reader takes any source in this schema: a store export, a parquet file or folder, a Hub dataset, including
VisionThink's released data (whose rows also have ``info``). It reads text as the source spells it (a blank value
counts as missing), an image from ``images`` (a list) or ``image``, and ``kind``, ``category`` and ``info`` where
the source has them. A row is usable when it has exactly one image, a problem and a reference (``original_answer``,
else ``solution``); any other row is skipped for one of ``SKIP_REASONS``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from visionthink import protocol
from visionthink.files import looks_like_path

FEATURES = datasets.Features({
    "problem": datasets.Value("string"),
    "images": datasets.List(datasets.Image()),
    "original_answer": datasets.Value("string"),
    "solution": datasets.Value("string"),
    "needs_high_res": datasets.Value("bool"),
    "data_source": datasets.Value("string"),
    "doc_id": datasets.Value("string"),
})
#: A column of TRL conversational messages with image slots (``protocol.Conversation.to_trl``).
MESSAGES = datasets.List({
    "role": datasets.Value("string"),
    "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")}),
})
#: The column only VisionThink's released data has (``Senqiao/VisionThink-Smart-Train``): it tells ``train.data``
#: that the row's images follow the released training's rule.
RELEASED_COLUMN = "info"


def features(**extra: datasets.features.features.FeatureType) -> datasets.Features:
    """The row's features with ``extra`` columns after them."""
    return datasets.Features({**FEATURES, **extra})


# --- Writing -----------------------------------------------------------------------------------------------------


def make_row(question: str, image: Any, reference: str, *, needs_high_res: bool | None, data_source: str,
             doc_id: str, solution: str | None = None, **extra: Any) -> dict:
    """One row: ``problem`` is ``question`` with its ``<image>`` marker (``protocol.problem_text``), ``image`` what
    ``datasets.Image`` encodes (a PIL image, ``{"bytes", "path"}``), ``solution`` by default the reference's
    ``\\boxed{}`` value, else the reference. ``extra`` columns follow (declare them with ``features``)."""
    return {
        "problem": protocol.problem_text(question),
        "images": [image],
        "original_answer": reference,
        "solution": solution if solution is not None else protocol.last_boxed(reference) or reference,
        "needs_high_res": needs_high_res,
        "data_source": data_source,
        "doc_id": doc_id,
        **extra,
    }


# --- Reading -----------------------------------------------------------------------------------------------------


class DataError(ValueError):
    """A data source that cannot be used; the message says what is wrong."""


#: Why a row is not usable.
SKIP_REASONS = {
    "not_one_image": "VisionThink rows hold exactly one image",
    "no_image": "the image is missing",
    "no_problem": "the problem (the question) is blank",
    "no_reference": "neither original_answer nor solution holds a reference answer",
}


class Skipped(ValueError):
    """A row that is not usable; ``reason`` is one of ``SKIP_REASONS``, the message says it for this row."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class Row:
    """One usable row. Text is as the source spells it; None where the source has none, or only blanks."""

    problem: str  # as the source spells it, with or without ``<image>``
    image: Any  # the one image as the dataset gives it: decoded (PIL), or ``{"bytes", "path"}`` when read as Arrow
    original_answer: str | None
    solution: str | None
    needs_high_res: bool | None = None
    data_source: str | None = None
    doc_id: str | None = None
    kind: str | None = None  # the kind of question, where the source has a ``kind`` column (the miniature's)
    category: str | None = None  # a benchmark's ``category`` column
    released: bool = False  # the source has the ``info`` column (``RELEASED_COLUMN``), null or not
    info: Mapping | None = None
    index: int | None = None  # the row's position in the dataset (``read_rows``)

    @property
    def reference(self) -> str:
        """The reference answer: ``original_answer``, else ``solution``."""
        return self.original_answer or self.solution or ""


def read_row(record: Mapping, index: int | None = None) -> Row:
    """A source row as a ``Row``; raises ``Skipped`` when it is not usable (the module docstring's rules)."""
    image = record.get("images") if "images" in record else record.get("image")
    if isinstance(image, (list, tuple)):
        if len(image) != 1:
            raise Skipped("not_one_image", f"VisionThink rows hold exactly one image, this has {len(image)}.")
        image = image[0]
    if image is None:
        raise Skipped("no_image", "it has no image.")
    problem = _text(record.get("problem"))
    if problem is None:
        raise Skipped("no_problem", "its problem (the question) is blank.")
    original, solution = _text(record.get("original_answer")), _text(record.get("solution"))
    if not (original or solution):
        raise Skipped("no_reference", "no reference answer.")
    return Row(problem=problem, image=image, original_answer=original, solution=solution,
               needs_high_res=record.get("needs_high_res"), data_source=_text(record.get("data_source")),
               doc_id=_text(record.get("doc_id")), kind=_text(record.get("kind")),
               category=_text(record.get("category")), released=RELEASED_COLUMN in record,
               info=record.get(RELEASED_COLUMN), index=index)


def read_rows(dataset: datasets.Dataset, skipped: Counter | None = None) -> Iterator[Row]:
    """The usable rows of ``dataset`` in order, read as Arrow in batches (images are not decoded); the others are
    counted in ``skipped`` by reason."""
    records = (r for batch in dataset.with_format("arrow").iter(batch_size=64) for r in batch.to_pylist())
    for index, record in enumerate(records):
        try:
            row = read_row(record, index)
        except Skipped as exc:
            if skipped is not None:
                skipped[exc.reason] += 1
            continue
        yield row


def missing_columns(column_names: Iterable[str]) -> list[str]:
    """The columns a source lacks to be in this schema (as a person would name them); empty when none."""
    columns = set(column_names)
    return [name for name, present in (("problem", "problem" in columns),
                                       ("images", bool({"images", "image"} & columns)),
                                       ("original_answer or solution", bool({"original_answer", "solution"} & columns)))
            if not present]


def load_source(source: str | Path, split: str = "train", *, limit: int | None = None) -> datasets.Dataset:
    """The first ``limit`` rows (all by default) of a folder saved with ``save_to_disk`` (a store export), a parquet
    file or folder, or a Hub dataset id, checked to have this schema's columns; ``DataError`` says what is wrong."""
    dataset = _load(source, split)
    missing = missing_columns(dataset.column_names)
    if missing:
        raise DataError(f"{source} has no {', '.join(missing)} column; it is not in VisionThink's schema "
                        "(docs/protocol.md §8).")
    return dataset if limit is None else dataset.select(range(min(limit, len(dataset))))


def _load(source: str | Path, split: str) -> datasets.Dataset:
    path = Path(source).expanduser()
    if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_info.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    if (path.is_file() and path.suffix == ".parquet") or (path.is_dir() and any(path.glob("*.parquet"))):
        files = [str(path)] if path.is_file() else sorted(str(p) for p in path.glob("*.parquet"))
        return datasets.load_dataset("parquet", data_files=files, split="train")
    if path.exists():
        raise DataError(f"{path} is neither a saved dataset (save_to_disk) nor parquet.")
    name = str(source)
    if looks_like_path(source) or name.count("/") != 1:  # a Hub id is owner/name
        raise DataError(f"{source} does not exist (and is not a Hub dataset id like Senqiao/VisionThink-Smart-Train).")
    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:  # the Hub unreachable, offline mode, no such dataset or split
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # one line: commands print it as one
        raise DataError(f"Could not load the Hub dataset {name} (split {split}): {first}") from exc


def _text(value: object) -> str | None:
    text = "" if value is None else str(value)
    return text if text.strip() else None
