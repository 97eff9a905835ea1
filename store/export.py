"""Exports of consented, rated answers: GRPO rows in VisionThink's on-disk schema, KTO and DPO preference rows, and
a JSONL dump for audit, each a folder with a dataset card (``python -m store.export --format … --out DIR``).

``DIR`` is a symlink to a version folder named by the hash of its content, kept beside it in ``.DIR.versions/``. A
new version is built in a temporary folder there and the link is swapped atomically, so a stopped export leaves the
previous one in place, and the same data always gives the same bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

import datasets
from datasets.arrow_writer import ArrowWriter
from PIL import Image as PILImage

from store import consensus as consensus_rule
from store.api import Actor, ConsensusItem, RatingView, Store, encode_png, question_key, require
from store.consensus import Vote, latest_per_rater, normalise
from store.db import StoreError
from visionthink import protocol
from visionthink.engine import TurnRecord
from visionthink.engine import replay as replay_episode
from visionthink.images import downsample, full_resolution
from visionthink.rows import FEATURES as GRPO_FEATURES

FORMATS = ("grpo", "kto", "dpo", "jsonl")
DATA_SOURCE = "visionthink_studio"
#: Test hook, read only here: seconds to sleep after each stored answer, so a test can stop an export midway.
TEST_DELAY_ENV = "VISIONTHINK_EXPORT_TEST_DELAY_S"

#: Why a stored answer is left out of an export (counted per stored answer, "ask"). The first two leave an answer out
#: before it is looked at; every other answer is "considered", and each considered one is behind a row or left out
#: for one of the other reasons.
SKIP_REASONS = {
    "before_since": "asked before the export's since-date",
    "no_consent": "the asker did not consent to training use (never exported, in any format)",
    "awaiting_ratings": "fewer ratings than the consensus needs, or every rater was unsure",
    "disputed": "the annotators disagree on the verdict or the reference answer, and no admin has resolved it",
    "no_reference": "the consensus says the answer is wrong but no rater gave the right one",
    "references_disagree": "other answers to the same image and question have a different reference answer",
    "no_label": "no consensus verdict and no strict majority of thumbs",
    "verdict_correct": "the consensus says the model was right, so there is no correction to prefer",
    "matches_model_answer": "the reference answer is the model's own answer",
    "no_model_reasoning": "the model's final turn has no <think> block to reuse in the corrected answer",
    "reference_breaks_format": "the corrected answer would not parse as a model turn (it holds a turn tag)",
    "unreplayable": "the stored turns cannot be replayed into the conversation the model saw",
}

_IMAGES = datasets.List(datasets.Image())
_MESSAGES = datasets.List({
    "role": datasets.Value("string"),
    "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")}),
})
_REPLY = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
KTO_FEATURES = datasets.Features({"prompt": _MESSAGES, "completion": _REPLY, "label": datasets.Value("bool"),
                                  "images": _IMAGES})
DPO_FEATURES = datasets.Features({"prompt": _MESSAGES, "chosen": _REPLY, "rejected": _REPLY, "images": _IMAGES})

Progress = Callable[[int, int], None]


class ExportError(StoreError):
    """An export that cannot be made as asked; the message says why and what to do."""


class EmptyExportRefused(ExportError):
    """The new export has no rows and would replace one that has; nothing was changed. ``counts`` says why it is
    empty; export again with ``replace_with_empty=True`` (``--replace-with-empty``) to replace it anyway."""

    def __init__(self, out: Path, counts: ExportCounts, current_rows: int) -> None:
        self.out, self.counts, self.current_rows = out, counts, current_rows
        super().__init__(
            f"This {counts.format} export has 0 rows and would replace the current export at {out}, which has "
            f"{current_rows} rows; nothing was changed. Replace it anyway only if an empty export is what you want "
            "(--replace-with-empty on the command line)."
        )


@dataclass(frozen=True)
class ExportCounts:
    """The numbers a dataset card states: rows, and what happened to every stored answer."""

    format: str
    rows: int
    answers: int  # stored answers behind the rows
    considered: int  # consented stored answers asked since the since-date: behind a row, or skipped for a reason
    skipped: dict[str, int]  # stored answers left out, by reason (see SKIP_REASONS)


@dataclass(frozen=True)
class ExportResult:
    path: Path  # the --out link
    version: Path  # the folder it points at
    format: str
    rows: int
    skipped: dict[str, int]  # stored answers left out, by reason (see SKIP_REASONS)
    files: list[str]  # relative to path
    counts: ExportCounts


def export(store: Store, actor: Actor, fmt: str, out: Path, *, since: datetime | None = None,
           progress: Progress | None = None, replace_with_empty: bool = False) -> ExportResult:
    """Export every consented answer (asked on or after ``since``) as ``fmt`` to the link ``out``; admins only.

    An export with no rows never silently replaces one with rows: it raises ``EmptyExportRefused`` and leaves the
    current export as it was, unless ``replace_with_empty``.
    """
    require(actor, "admin", to="export data")
    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}.")
    out = Path(os.path.abspath(os.path.expanduser(out)))
    check_out(out)
    since = _utc(since)
    versions = out.parent / f".{out.name}.versions"
    with _exclusive(versions, out):
        check_out(out)
        partial = versions / f".partial-{uuid.uuid4().hex}"  # the new version, and scratch files beside it
        build = partial / "version"
        build.mkdir(parents=True)
        try:
            counts = _build(store, actor, fmt, build, since, progress)
            current = current_rows(out)
            if counts.rows == 0 and current and not replace_with_empty:
                raise EmptyExportRefused(out, counts, current)
            _fsync_tree(build)
            version = versions / _tree_digest(build)[:16]
            if not version.exists():  # else the same content was exported before
                os.rename(build, version)
                _fsync(versions)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        previous = _point(out, version)
        _prune(versions, keep={version.name, previous})
    files = sorted(p.relative_to(version).as_posix() for p in version.rglob("*") if p.is_file())
    return ExportResult(path=out, version=version, format=fmt, rows=counts.rows, skipped=counts.skipped, files=files,
                        counts=counts)


def current_rows(out: Path) -> int | None:
    """The rows of the export the link ``out`` points at, as its dataset card states them; None when there is none."""
    try:
        card = (Path(out) / "README.md").read_text(encoding="utf-8") if Path(out).is_symlink() else ""
    except OSError:
        return None
    found = re.search(r"^\| Rows \| (\d+) \|$", card, re.MULTILINE)
    return int(found.group(1)) if found else None


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that exists and is not a link made by an earlier export."""
    out = Path(os.path.abspath(os.path.expanduser(out)))
    if out.is_symlink():
        target = Path(os.readlink(out))
        if target.parent != Path(f".{out.name}.versions"):
            raise ExportError(f"{out} is a link to {target}, not an export made by this tool; choose another --out.")
    elif out.exists():
        raise ExportError(
            f"{out} already exists and is not an export link; refusing to replace it. Choose a path that does not "
            "exist yet: the export creates it as a link to a versioned folder beside it."
        )


# --- Building one version --------------------------------------------------------------------------------------


def _build(store: Store, actor: Actor, fmt: str, folder: Path, since: datetime | None,
           progress: Progress | None) -> ExportCounts:
    consented = store.count_asks(actor, since=since)
    builder: _Builder = BUILDERS[fmt](folder, store, actor)
    ticker = _Ticker(progress, consented * (2 if builder.two_passes else 1))
    delay = float(os.environ.get(TEST_DELAY_ENV) or 0)
    for item in store.consensus_items(actor, since=since):
        builder.add(item)
        ticker.step()
        if delay:
            time.sleep(delay)
    rows = builder.finish(ticker)
    skipped = Counter(builder.skipped)
    asked_since = store.count_asks(actor, consented_only=False, since=since)
    if asked_since > consented:
        skipped["no_consent"] = asked_since - consented
    if since is not None:
        older = store.count_asks(actor, consented_only=False) - asked_since
        if older > 0:
            skipped["before_since"] = older
    counts = ExportCounts(format=fmt, rows=rows, answers=builder.facts.asks, considered=consented,
                          skipped=dict(sorted(skipped.items())))
    card = _card(builder, counts, since, store.ratings_per_item)
    (folder / "README.md").write_text(card, encoding="utf-8")
    return counts


class _Ticker:
    """Reports (done, total) steps; the total may shrink once the second pass knows its length."""

    def __init__(self, callback: Progress | None, total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0
        self._report()

    def expect(self, more: int) -> None:
        self.total = self.done + more
        self._report()

    def step(self) -> None:
        self.done += 1
        self.total = max(self.total, self.done)
        self._report()

    def _report(self) -> None:
        if self.callback is not None:
            self.callback(self.done, self.total)


@dataclass
class _Facts:
    """What the dataset card says about the stored answers behind the rows."""

    models: Counter = field(default_factory=Counter)  # (model id, revision) -> asks
    raters: Counter = field(default_factory=Counter)  # annotators who rated -> asks
    asks: int = 0
    newest_ask: datetime | None = None
    newest_rating: datetime | None = None

    def add(self, item: ConsensusItem) -> None:
        ask = item.ask
        self.asks += 1
        self.models[(ask.model_id, ask.model_revision)] += 1
        self.raters[item.consensus.raters] += 1
        self.newest_ask = max(filter(None, (self.newest_ask, ask.created_at)))
        for rating in item.votes:
            self.newest_rating = max(filter(None, (self.newest_rating, rating.created_at)))


class _Builder:
    """Turns consensus items into one format's files in ``folder``."""

    two_passes = False
    title = ""
    summary = ""
    columns: dict[str, str] = {}
    loading = ""

    def __init__(self, folder: Path, store: Store, actor: Actor) -> None:
        self.folder, self.store, self.actor = folder, store, actor
        self.skipped: Counter = Counter()
        self.facts = _Facts()

    def add(self, item: ConsensusItem) -> None:
        raise NotImplementedError

    def finish(self, ticker: _Ticker) -> int:
        raise NotImplementedError

    def card_details(self) -> str:
        return ""


_HF_LOADING = """```python
from datasets import load_from_disk, load_dataset

ds = load_from_disk("path/to/this/folder")  # Arrow files, memory-mapped
ds = load_dataset("parquet", data_files="path/to/this/folder/data.parquet", split="train")  # the same rows
```"""


class _GrpoBuilder(_Builder):
    two_passes = True
    title = "GRPO"
    summary = (
        "One row per (image, question) with a reference answer that the annotators agreed on, in the on-disk schema "
        "of the released VisionThink training data (`datasets.load_from_disk`), plus our `needs_high_res` label. "
        "Answers to the same image and a question that differs only in case, spacing or a final full stop are "
        "merged into one row."
    )
    columns = {
        "problem": f"the question, holding the `{protocol.IMAGE_MARKER}` marker (`visionthink.protocol.problem_text`)",
        "images": "a list with one image: the stored PNG, byte for byte",
        "original_answer": "the reference answer (the raters' answer; the model's own answer where they judged it "
                           "correct and gave none)",
        "solution": "the `\\boxed{}` value of the reference answer when it has one, else the reference answer",
        "needs_high_res": "true: the annotators agreed the full image was needed; false: the 1/4 image was "
                          "enough; null: no agreed label",
        "data_source": f"always `{DATA_SOURCE}`",
        "doc_id": "the image's sha256 (16 hex digits), `-`, the normalised question's sha256 (16 hex digits)",
    }
    loading = _HF_LOADING

    def __init__(self, folder: Path, store: Store, actor: Actor) -> None:
        super().__init__(folder, store, actor)
        self.pairs: dict[tuple[str, str], list[tuple[ConsensusItem, str]]] = defaultdict(list)

    def add(self, item: ConsensusItem) -> None:
        agreed = item.consensus
        if agreed.disputed:
            self.skipped["disputed"] += 1
            return
        if not agreed.complete:
            self.skipped["awaiting_ratings"] += 1
            return
        reference = agreed.reference_answer or (item.ask.answer if agreed.verdict == "correct" else None)
        if not reference:
            self.skipped["no_reference"] += 1
            return
        # Keep only what the row needs: the image is read again when the row is written.
        slim = ConsensusItem(ask=item.ask, image_png=b"", votes=item.votes, consensus=agreed)
        self.pairs[(item.ask.image_sha256, question_key(item.ask.question))].append((slim, reference))

    def card_details(self) -> str:
        return (
            "Merging: the reference answers of all the stored answers to one image and question must agree, "
            "compared after normalising case, spacing and a trailing full stop (their `\\boxed{}` values when they "
            "have one); otherwise the pair is left out (`references_disagree`). A row keeps the oldest answer's "
            "question and reference spelling. `needs_high_res` is the label every labelled answer agrees on."
        )

    def finish(self, ticker: _Ticker) -> int:
        ticker.expect(len(self.pairs))
        rows = _ArrowRows(self.folder, GRPO_FEATURES)
        for (sha, key), answers in sorted(self.pairs.items(), key=lambda kv: _doc_id(*kv[0])):
            if len({_core(reference) for _, reference in answers}) > 1:
                self.skipped["references_disagree"] += len(answers)
                ticker.step()
                continue
            labels = {item.consensus.needs_high_res for item, _ in answers} - {None}
            first, reference = answers[0]  # the oldest answer's spelling
            png = self.store.image_png(self.actor, sha)
            rows.write({
                "problem": protocol.problem_text(first.ask.question),
                "images": [{"bytes": png, "path": None}],
                "original_answer": reference,
                "solution": protocol.last_boxed(reference) or reference,
                "needs_high_res": labels.pop() if len(labels) == 1 else None,
                "data_source": DATA_SOURCE,
                "doc_id": _doc_id(sha, key),
            })
            for item, _ in answers:
                self.facts.add(item)
            ticker.step()
        return rows.save()


_PROMPT_COLUMN = (
    "messages as the model saw them before its final turn: system, user (image), and for a resize episode its "
    "first turn and the tool response (second image); images are `{\"type\": \"image\"}` parts"
)
_IMAGES_COLUMN = (
    "the images in the order of the prompt's image parts: the 1/4-resolution view (the full image in \"high\" "
    "mode), then the full image after a resize; PNG"
)


class _KtoBuilder(_Builder):
    title = "KTO"
    summary = (
        "Unpaired preference rows for TRL's `KTOTrainer` (conversational, with images): the conversation up to the "
        "model's final turn, that turn, and whether it was good. The label is the consensus verdict when there is "
        "one; otherwise the strict majority of thumbs (each rater's latest thumb counts once). Disputed answers are "
        "left out rather than labelled by thumbs."
    )
    columns = {
        "prompt": _PROMPT_COLUMN,
        "completion": "the model's final turn, as generated, as one assistant message",
        "label": "true when the answer was judged correct",
        "images": _IMAGES_COLUMN,
    }
    loading = _HF_LOADING

    def __init__(self, folder: Path, store: Store, actor: Actor) -> None:
        super().__init__(folder, store, actor)
        self.rows = _ArrowRows(folder, KTO_FEATURES)
        self.sources: Counter = Counter()

    def add(self, item: ConsensusItem) -> None:
        label, source = self._label(item)
        if label is None:
            self.skipped[source] += 1
            return
        episode = replay(item)
        if episode is None:
            self.skipped["unreplayable"] += 1
            return
        prompt, images = episode
        self.rows.write({
            "prompt": prompt,
            "completion": [{"role": "assistant", "content": item.ask.turns[-1]["text"]}],
            "label": label,
            "images": [{"bytes": png, "path": None} for png in images],
        })
        self.sources[source] += 1
        self.facts.add(item)

    @staticmethod
    def _label(item: ConsensusItem) -> tuple[bool | None, str]:
        agreed = item.consensus
        if agreed.complete:
            return agreed.verdict == "correct", "consensus"
        if agreed.disputed:
            return None, "disputed"
        thumbs = Counter(v.verdict for v in latest_per_rater(map(_vote, item.votes), "thumbs"))
        if thumbs["correct"] != thumbs["incorrect"]:
            return thumbs["correct"] > thumbs["incorrect"], "thumbs"
        return None, "no_label"

    def finish(self, ticker: _Ticker) -> int:
        return self.rows.save()

    def card_details(self) -> str:
        return (f"Labels from the consensus verdict: {self.sources['consensus']}; from thumbs: "
                f"{self.sources['thumbs']}.\n\n" + _CHAT_TEMPLATE_NOTE)


class _DpoBuilder(_Builder):
    title = "DPO"
    summary = (
        "Preference pairs for TRL's `DPOTrainer` (conversational, with images), one per answer the annotators "
        "judged incorrect and corrected. `chosen` is the model's own final-turn reasoning followed by the "
        "corrected answer, in the model's output format; `rejected` is the model's final turn as generated. The "
        "reasoning in `chosen` is the model's, not a person's: it may argue for the wrong answer."
    )
    columns = {
        "prompt": _PROMPT_COLUMN,
        "chosen": "`<think>{the model's final-turn reasoning}</think><answer>{the reference answer}</answer>` as one "
                  "assistant message; the reference is wrapped in `\\boxed{}` when the model boxed its answer and "
                  "the reference is not boxed",
        "rejected": "the model's final turn, as generated, as one assistant message",
        "images": _IMAGES_COLUMN,
    }
    loading = _HF_LOADING

    def __init__(self, folder: Path, store: Store, actor: Actor) -> None:
        super().__init__(folder, store, actor)
        self.rows = _ArrowRows(folder, DPO_FEATURES)

    def add(self, item: ConsensusItem) -> None:
        reason = self._skip_reason(item)
        if reason is not None:
            self.skipped[reason] += 1
            return
        final = item.ask.turns[-1]
        chosen = protocol.answer_turn_text(final["think"], self._corrected(item))
        if protocol.parse_turn(chosen).kind != "answer":
            self.skipped["reference_breaks_format"] += 1
            return
        episode = replay(item)
        if episode is None:
            self.skipped["unreplayable"] += 1
            return
        prompt, images = episode
        self.rows.write({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": final["text"]}],
            "images": [{"bytes": png, "path": None} for png in images],
        })
        self.facts.add(item)

    @staticmethod
    def _skip_reason(item: ConsensusItem) -> str | None:
        agreed = item.consensus
        if agreed.disputed:
            return "disputed"
        if not agreed.complete:
            return "awaiting_ratings"
        if agreed.verdict == "correct":
            return "verdict_correct"
        if not agreed.reference_answer:
            return "no_reference"
        if item.ask.answer is not None and _core(agreed.reference_answer) == _core(item.ask.answer):
            return "matches_model_answer"
        if not item.ask.turns[-1].get("think"):
            return "no_model_reasoning"
        return None

    @staticmethod
    def _corrected(item: ConsensusItem) -> str:
        reference = item.consensus.reference_answer or ""
        if protocol.last_boxed(item.ask.answer or "") is not None and protocol.last_boxed(reference) is None:
            return f"\\boxed{{{reference}}}"
        return reference

    def finish(self, ticker: _Ticker) -> int:
        return self.rows.save()

    def card_details(self) -> str:
        return _CHAT_TEMPLATE_NOTE


_CHAT_TEMPLATE_NOTE = (
    "The messages are built with `visionthink.protocol.Conversation`, so every prompt string is the one the "
    "checkpoints were trained on. Rendered with the Qwen2.5-VL chat template they differ from the trained text in "
    "one place: the template puts a newline after a model turn's `<|im_end|>` before the tool response, which the "
    "released rollout code does not (spec §2.4)."
)


class _JsonlBuilder(_Builder):
    title = "JSONL (audit)"
    summary = (
        "Every consented stored answer with every rating, for audit: `items.jsonl` holds one JSON object per "
        "answer, oldest first; each image is written once as `images/<sha256>.png` (the stored PNG, byte for byte) "
        "and referenced by that name."
    )
    columns = {
        "id": "the stored answer's number",
        "question, mode, turns, answer, requested_high_res, stop_reason, tokens, latency_s, created_at":
            "the model's answer as recorded (every turn with its reasoning, the resolution decision, visual tokens)",
        "model": "`{id, revision}` of the model that answered",
        "image": "`{file, sha256, width, height}`",
        "ratings": "every rating: `rater`, `source` (annotation, thumbs, resolution), `verdict`, `reference_answer`, "
                   "`decision`, `comment`, `created_at`",
        "consensus": "the consensus of the ratings (the rule below)",
    }
    loading = """```python
import json
from pathlib import Path

folder = Path("path/to/this/folder")
items = [json.loads(line) for line in (folder / "items.jsonl").open(encoding="utf-8")]
png = (folder / items[0]["image"]["file"]).read_bytes()
```"""

    def __init__(self, folder: Path, store: Store, actor: Actor) -> None:
        super().__init__(folder, store, actor)
        (folder / "images").mkdir()
        self.lines = (folder / "items.jsonl").open("w", encoding="utf-8", newline="\n")
        self.images: set[str] = set()
        self.ratings = 0

    def add(self, item: ConsensusItem) -> None:
        ask = item.ask
        image = f"images/{ask.image_sha256}.png"
        if ask.image_sha256 not in self.images:
            (self.folder / image).write_bytes(item.image_png)
            self.images.add(ask.image_sha256)
        record = {
            "id": ask.id,
            "question": ask.question,
            "image": {"file": image, "sha256": ask.image_sha256, "width": ask.image_size[0],
                      "height": ask.image_size[1]},
            "model": {"id": ask.model_id, "revision": ask.model_revision},
            "mode": ask.mode,
            "turns": ask.turns,
            "answer": ask.answer,
            "requested_high_res": ask.requested_high_res,
            "stop_reason": ask.stop_reason,
            "tokens": ask.tokens.to_dict(),
            "latency_s": ask.latency_s,
            "created_at": ask.created_at.isoformat(),
            "ratings": [_rating_json(r) for r in item.votes],
            "consensus": {**asdict(item.consensus), "complete": item.consensus.complete},
        }
        self.lines.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        self.ratings += len(item.votes)
        self.facts.add(item)

    def finish(self, ticker: _Ticker) -> int:
        self.lines.close()
        return self.facts.asks

    def card_details(self) -> str:
        return f"Ratings: {self.ratings}. Images: {len(self.images)}."


BUILDERS: dict[str, type[_Builder]] = {"grpo": _GrpoBuilder, "kto": _KtoBuilder, "dpo": _DpoBuilder,
                                       "jsonl": _JsonlBuilder}


# --- Rows ------------------------------------------------------------------------------------------------------


def replay(item: ConsensusItem) -> tuple[list[dict], list[bytes]] | None:
    """The messages the model saw before its final turn (TRL's conversational form) and its images, as PNGs.

    Rebuilt from the stored turns the way ``visionthink.engine`` ran the episode; None when they cannot be.
    """
    ask = item.ask
    conversation = replay_episode(ask.question, ask.mode, [TurnRecord.from_dict(i, t) for i, t in enumerate(ask.turns)])
    if conversation is None:
        return None
    if conversation.image_count != 1 + int(ask.requested_high_res and ask.mode == "auto"):
        return None
    original = PILImage.open(io.BytesIO(item.image_png))
    original.load()
    full = full_resolution(original)
    seen = [full if ask.mode == "high" else downsample(original)] + [full] * (conversation.image_count - 1)
    images = [item.image_png if image is original else encode_png(image) for image in seen]
    messages = [{"role": m.role, "content": [_content_part(part) for part in m.parts if part != ""]}
                for m in conversation.messages]
    return messages, images


def _content_part(part: protocol.Part) -> dict:
    """A message part in TRL's structured form; images are placeholders filled from the ``images`` column."""
    if isinstance(part, protocol.Image):
        return {"type": "image", "text": None}
    return {"type": "text", "text": part}


class _ArrowRows:
    """Rows streamed to a scratch Arrow file, then saved in the ``load_from_disk`` layout and as ``data.parquet``.

    The dataset's fingerprint (in ``state.json``) is the hash of the rows, so the files depend only on the data.
    """

    def __init__(self, folder: Path, features: datasets.Features) -> None:
        self.folder, self.features = folder, features
        self.scratch = folder.parent / f"{folder.name}.rows.arrow"  # save_to_disk must not read from its target
        self.writer = ArrowWriter(features=features, path=str(self.scratch))
        self.digest = hashlib.sha256()
        self.count = 0

    def write(self, row: dict) -> None:
        self.writer.write(self.features.encode_example(row))
        self.digest.update(json.dumps(row, sort_keys=True, default=_bytes_digest).encode("utf-8"))
        self.count += 1

    def save(self) -> int:
        self.writer.finalize()
        self.writer.close()
        scratch = datasets.Dataset.from_file(str(self.scratch))
        dataset = datasets.Dataset(scratch.data, info=scratch.info, fingerprint=self.digest.hexdigest()[:16])
        with _quiet_datasets():
            dataset.save_to_disk(str(self.folder), num_shards=None if self.count else 1)
            dataset.to_parquet(str(self.folder / "data.parquet"))
        del dataset, scratch
        self.scratch.unlink()
        return self.count


def _bytes_digest(value: object) -> str:
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    raise TypeError(f"Cannot hash a {type(value).__name__} in an export row.")


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Our own progress reporting covers the export; hide the library's bars while it writes."""
    was_disabled = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.utils.enable_progress_bars()


def _core(answer: str) -> str:
    """What two reference answers are compared by: the normalised ``\\boxed{}`` value, or the whole answer."""
    return normalise(protocol.last_boxed(answer) or answer)


def _doc_id(image_sha256: str, key: str) -> str:
    return f"{image_sha256[:16]}-{key[:16]}"


def _vote(rating: RatingView) -> Vote:
    return Vote(rating.rater or "", rating.source, rating.verdict, rating.reference_answer, rating.decision, rating.id)


def _rating_json(rating: RatingView) -> dict:
    return {"id": rating.id, "rater": rating.rater, "source": rating.source, "verdict": rating.verdict,
            "reference_answer": rating.reference_answer, "decision": rating.decision, "comment": rating.comment,
            "created_at": rating.created_at.isoformat()}


# --- The dataset card ------------------------------------------------------------------------------------------


def _card(builder: _Builder, counts: ExportCounts, since: datetime | None, ratings_per_item: int) -> str:
    facts, fmt, skipped = builder.facts, counts.format, counts.skipped
    front = "" if fmt == "jsonl" else "---\nconfigs:\n- config_name: default\n  data_files: data.parquet\n---\n\n"
    lines = [
        f"# VisionThink Studio export: {builder.title}",
        "",
        builder.summary,
        "",
        "| | |",
        "|---|---|",
        f"| Format | `{fmt}` (`python -m store.export --format {fmt}`) |",
        f"| Rows | {counts.rows} |",
        f"| Stored answers behind the rows | {counts.answers} |",
        f"| Consented stored answers considered | {counts.considered} |",
        f"| Answers asked since | {since.isoformat() if since else 'the beginning'} |",
        f"| Newest answer in the rows | {_iso(facts.newest_ask)} |",
        f"| Newest rating of those answers | {_iso(facts.newest_rating)} |",
        "",
        "Only answers whose askers consented to training use are exported; their images included.",
        "",
        "## Left out",
        "",
        "| Reason | Stored answers | Why |",
        "|---|---|---|",
        *[f"| `{reason}` | {n} | {SKIP_REASONS[reason]} |" for reason, n in skipped.items()],
        *(["| (none) | 0 | |"] if not skipped else []),
        "",
        "## Columns",
        "",
        *[f"- `{name}`: {text}" for name, text in builder.columns.items()],
        "",
    ]
    details = builder.card_details()
    if details:
        lines += [details, ""]
    lines += [
        "## Consensus rule",
        "",
        f"Ratings needed per answer: {ratings_per_item} (`VISIONTHINK_RATINGS_PER_ITEM`). The rule, from "
        "`store/consensus.py`:",
        "",
        "```text",
        CONSENSUS_RULE,
        "```",
        "",
        "## Model versions",
        "",
        "| Model | Revision | Stored answers |",
        "|---|---|---|",
        *[f"| `{model}` | `{revision or '-'}` | {n} |" for (model, revision), n in sorted(facts.models.items())],
        "",
        "## Ratings per answer",
        "",
        "| Annotators who rated | Stored answers |",
        "|---|---|",
        *[f"| {raters} | {n} |" for raters, n in sorted(facts.raters.items())],
        "",
        "## Loading",
        "",
        builder.loading,
        "",
    ]
    return front + "\n".join(lines)


CONSENSUS_RULE = (consensus_rule.__doc__ or "").strip()


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment else "-"


# --- Files: versions, the link, durability ---------------------------------------------------------------------


@contextlib.contextmanager
def _exclusive(versions: Path, out: Path) -> Iterator[None]:
    """One export at a time per ``--out``; a second one is refused rather than queued."""
    versions.mkdir(parents=True, exist_ok=True)
    with open(versions / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExportError(f"Another export to {out} is running; wait for it to finish.") from None
        yield


def _point(out: Path, version: Path) -> str | None:
    """Swap the link ``out`` to ``version`` atomically; returns the name of the version it pointed to before."""
    previous = os.readlink(out) if out.is_symlink() else None
    link = out.parent / f".{out.name}.link-new"
    with contextlib.suppress(FileNotFoundError):
        link.unlink()
    os.symlink(os.path.join(version.parent.name, version.name), link)
    os.replace(link, out)
    _fsync(out.parent)
    return Path(previous).name if previous else None


def _prune(versions: Path, keep: set[str | None]) -> None:
    """Remove older versions and what stopped exports left behind, keeping the current and the previous one."""
    for entry in versions.iterdir():
        if entry.name in keep or entry.name == ".lock":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix()):
        digest.update(path.relative_to(folder).as_posix().encode("utf-8") + b"\0")
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
    for directory in [*sorted(p for p in folder.rglob("*") if p.is_dir()), folder]:
        _fsync(directory)


def _fsync(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _utc(moment: datetime | None) -> datetime | None:
    """The store keeps UTC; a naive ``since`` is taken as UTC."""
    if moment is None:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


# --- Command line ----------------------------------------------------------------------------------------------


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        raise _UsageError(message)


def _since(text: str) -> datetime:
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError
        day = date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a date as YYYY-MM-DD, not {text!r}") from None
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def _check_db(url: str) -> None:
    """Refuse a database URL that cannot work, or a SQLite file that does not exist (it would be created empty)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ExportError(f"--db is not a database URL: {url!r}.") from None
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:") and not database.startswith("file:"):
        if not Path(database).expanduser().is_file():
            raise ExportError(f"There is no database at {database}; pass --db or set VISIONTHINK_DB_URL.")


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from visionthink.settings import Settings, SettingsError

    parser = _Parser(prog="python -m store.export",
                     description="Export consented, rated answers for training (grpo, kto, dpo) or audit (jsonl).")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--out", required=True, type=Path,
                        help="the export's path: a link to a versioned folder beside it, swapped atomically")
    parser.add_argument("--since", type=_since, help="only answers asked on or after this day (UTC), YYYY-MM-DD")
    parser.add_argument("--db", help="database URL (default: VISIONTHINK_DB_URL)")
    parser.add_argument("--replace-with-empty", action="store_true",
                        help="let an export with no rows replace a current export that has rows (refused otherwise)")
    try:
        args = parser.parse_args(argv)
        settings = Settings.from_env()
        db_url = args.db or settings.db_url
        _check_db(db_url)
        check_out(args.out)
    except (_UsageError, SettingsError, ExportError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2

    store = None
    try:
        with tqdm(desc=f"Exporting {args.format}", unit=" items", file=sys.stderr, dynamic_ncols=True) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            store = Store(db_url, ratings_per_item=settings.ratings_per_item)
            result = export(store, Actor.system(), args.format, args.out, since=args.since, progress=progress,
                            replace_with_empty=args.replace_with_empty)
    except EmptyExportRefused as exc:
        print(f"{parser.prog}: error: {exc} Left out: {_left_out(exc.counts.skipped)}.", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: stopped; the previous export at {args.out} (if any) is unchanged.", file=sys.stderr)
        return 130
    finally:
        if store is not None:
            store.close()
    print(f"Wrote {result.rows} {args.format} rows to {result.path} -> {result.version.name} "
          f"(left out: {_left_out(result.skipped)}).")
    return 0


def _left_out(skipped: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in skipped.items()) or "none"


if __name__ == "__main__":
    sys.exit(main())
