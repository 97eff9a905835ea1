"""Exports of consented, rated answers: GRPO rows in VisionThink's on-disk schema, KTO and DPO preference rows, and
a JSONL dump for audit, each a folder with a dataset card (``python -m store.export --format … --out DIR``).

``DIR`` is a symlink to a version folder named by the hash of its content (``store.publish``): a new version is built
aside and the link is swapped atomically, so a stopped export leaves the previous one in place, and the same data
always gives the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from itertools import chain
from pathlib import Path
from typing import Literal, get_args

import datasets
from datasets.exceptions import DatasetGenerationError
from huggingface_hub import DatasetCardData
from PIL import Image as PILImage

from store import consensus as consensus_rule
from store.api import Actor, RatedAsk, RatingView, Store, encode_png, question_key, require
from store.consensus import Vote, latest_per_rater, normalise
from store.db import StoreError
from store.publish import Draft, ExportError, check_out, new_version, resolve
from visionthink import protocol
from visionthink.args import EXIT_BAD_INPUT, CommandParser, fail
from visionthink.clock import as_utc, parse_day
from visionthink.engine import replay as replay_episode
from visionthink.engine import turns_to_json
from visionthink.images import downsample, full_resolution
from visionthink.rows import FEATURES as GRPO_FEATURES
from visionthink.rows import MESSAGES, make_row

Format = Literal["grpo", "kto", "dpo", "jsonl"]
FORMATS: tuple[str, ...] = get_args(Format)
DATA_SOURCE = "visionthink_studio"

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
_REPLY = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
KTO_FEATURES = datasets.Features({"prompt": MESSAGES, "completion": _REPLY, "label": datasets.Value("bool"),
                                  "images": _IMAGES})
DPO_FEATURES = datasets.Features({"prompt": MESSAGES, "chosen": _REPLY, "rejected": _REPLY, "images": _IMAGES})
#: The card's metadata for the Hub: the rows its dataset viewer and ``load_dataset`` read (every format but jsonl).
CARD_METADATA = DatasetCardData(configs=[{"config_name": "default", "data_files": "data.parquet"}])

Progress = Callable[[int, int], None]


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
    out = resolve(out)
    with new_version(out) as draft:
        counts = _build(store, actor, fmt, draft, as_utc(since), progress)
        current = current_rows(out)
        if counts.rows == 0 and current and not replace_with_empty:
            raise EmptyExportRefused(out, counts, current)
        version = draft.publish()
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


# --- Building one version --------------------------------------------------------------------------------------


def _build(store: Store, actor: Actor, fmt: str, draft: Draft, since: datetime | None,
           progress: Progress | None) -> ExportCounts:
    consented = store.count_asks(actor, since=since)
    builder: _Builder = BUILDERS[fmt](draft, store, actor)
    ticker = _Ticker(progress, consented * (2 if builder.two_passes else 1))
    rows = builder.write(ticker.each(store.rated_asks(actor, since=since)), ticker)
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
    (draft.folder / "README.md").write_text(card, encoding="utf-8")
    return counts


class _Ticker:
    """Reports (done, total) steps; the total may shrink once the second pass knows its length."""

    def __init__(self, callback: Progress | None, total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0
        self._report()

    def expect(self, more: int) -> None:
        self.total = self.done + more
        self._report()

    def each(self, items: Iterable[RatedAsk]) -> Iterator[RatedAsk]:
        """``items``, one step as each is done with (when the next one is asked for)."""
        for item in items:
            yield item
            self.step()

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

    def add(self, item: RatedAsk) -> None:
        ask = item.ask
        self.asks += 1
        self.models[(ask.model_id, ask.model_revision)] += 1
        self.raters[item.consensus.raters] += 1
        self.newest_ask = max(filter(None, (self.newest_ask, ask.created_at)))
        for rating in item.votes:
            self.newest_rating = max(filter(None, (self.newest_rating, rating.created_at)))


class _Builder:
    """Turns consensus items into one format's files in the draft's folder; by default the dataset (of ``features``)
    of the rows that ``rows`` yields."""

    two_passes = False
    title = ""
    summary = ""
    columns: dict[str, str] = {}
    loading = ""
    features = datasets.Features()

    def __init__(self, draft: Draft, store: Store, actor: Actor) -> None:
        self.draft, self.store, self.actor = draft, store, actor
        self.skipped: Counter = Counter()
        self.facts = _Facts()

    def write(self, items: Iterator[RatedAsk], ticker: _Ticker) -> int:
        """Write the files; returns the number of rows."""
        return _save_rows(self.draft, self.features, self.rows(items, ticker))

    def rows(self, items: Iterator[RatedAsk], ticker: _Ticker) -> Iterator[dict]:
        raise NotImplementedError

    def card_details(self) -> str:
        return ""

    def _with_episode(self, item: RatedAsk, **columns: object) -> dict | None:
        """A preference row: ``columns`` with the prompt and images of the episode up to the model's final turn;
        None (skipped) when the stored turns cannot be replayed."""
        episode = replay(item)
        if episode is None:
            self.skipped["unreplayable"] += 1
            return None
        prompt, images = episode
        self.facts.add(item)
        return {"prompt": prompt, **columns, "images": [{"bytes": png, "path": None} for png in images]}


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
    features = GRPO_FEATURES

    def __init__(self, draft: Draft, store: Store, actor: Actor) -> None:
        super().__init__(draft, store, actor)
        self.pairs: dict[tuple[str, str], list[tuple[RatedAsk, str]]] = defaultdict(list)

    def add(self, item: RatedAsk) -> None:
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
        slim = RatedAsk(ask=item.ask, image_png=b"", votes=item.votes, consensus=agreed)
        self.pairs[(item.ask.image_sha256, question_key(item.ask.question))].append((slim, reference))

    def card_details(self) -> str:
        return (
            "Merging: the reference answers of all the stored answers to one image and question must agree, "
            "compared after normalising case, spacing and a trailing full stop (their `\\boxed{}` values when they "
            "have one); otherwise the pair is left out (`references_disagree`). A row keeps the oldest answer's "
            "question and reference spelling. `needs_high_res` is the label every labelled answer agrees on."
        )

    def rows(self, items: Iterator[RatedAsk], ticker: _Ticker) -> Iterator[dict]:
        for item in items:  # the first pass: group the answers by image and question
            self.add(item)
        ticker.expect(len(self.pairs))
        for (sha, key), answers in ticker.each(sorted(self.pairs.items(), key=lambda kv: _doc_id(*kv[0]))):
            if len({_core(reference) for _, reference in answers}) > 1:
                self.skipped["references_disagree"] += len(answers)
                continue
            labels = {item.consensus.needs_high_res for item, _ in answers} - {None}
            first, reference = answers[0]  # the oldest answer's spelling
            for item, _ in answers:
                self.facts.add(item)
            yield make_row(first.ask.question, {"bytes": self.store.image_png(self.actor, sha), "path": None},
                           reference, needs_high_res=labels.pop() if len(labels) == 1 else None,
                           data_source=DATA_SOURCE, doc_id=_doc_id(sha, key))


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
    features = KTO_FEATURES

    def __init__(self, draft: Draft, store: Store, actor: Actor) -> None:
        super().__init__(draft, store, actor)
        self.sources: Counter = Counter()

    def rows(self, items: Iterator[RatedAsk], ticker: _Ticker) -> Iterator[dict]:
        for item in items:
            label, source = self._label(item)
            if label is None:
                self.skipped[source] += 1
                continue
            row = self._with_episode(item, completion=[{"role": "assistant", "content": item.ask.turns[-1].turn.text}],
                                     label=label)
            if row is not None:
                self.sources[source] += 1
                yield row

    @staticmethod
    def _label(item: RatedAsk) -> tuple[bool | None, str]:
        agreed = item.consensus
        if agreed.complete:
            return agreed.verdict == "correct", "consensus"
        if agreed.disputed:
            return None, "disputed"
        thumbs = Counter(v.verdict for v in latest_per_rater(map(_vote, item.votes), "thumbs"))
        if thumbs["correct"] != thumbs["incorrect"]:
            return thumbs["correct"] > thumbs["incorrect"], "thumbs"
        return None, "no_label"

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
    features = DPO_FEATURES

    def rows(self, items: Iterator[RatedAsk], ticker: _Ticker) -> Iterator[dict]:
        for item in items:
            reason = self._skip_reason(item)
            if reason is not None:
                self.skipped[reason] += 1
                continue
            final = item.ask.turns[-1].turn
            chosen = protocol.answer_turn_text(final.think, self._corrected(item))
            if protocol.parse_turn(chosen).kind != "answer":
                self.skipped["reference_breaks_format"] += 1
                continue
            row = self._with_episode(item, chosen=[{"role": "assistant", "content": chosen}],
                                     rejected=[{"role": "assistant", "content": final.text}])
            if row is not None:
                yield row

    @staticmethod
    def _skip_reason(item: RatedAsk) -> str | None:
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
        if not item.ask.turns[-1].turn.think:
            return "no_model_reasoning"
        return None

    @staticmethod
    def _corrected(item: RatedAsk) -> str:
        reference = item.consensus.reference_answer or ""
        if protocol.last_boxed(item.ask.answer or "") is not None and protocol.last_boxed(reference) is None:
            return f"\\boxed{{{reference}}}"
        return reference

    def card_details(self) -> str:
        return _CHAT_TEMPLATE_NOTE


_CHAT_TEMPLATE_NOTE = (
    "The messages are built with `visionthink.protocol.Conversation`, so every prompt string is the one the "
    "checkpoints were trained on. Rendered with the Qwen2.5-VL chat template they differ from the trained text in "
    "one place: the template puts a newline after a model turn's `<|im_end|>` before the tool response, which the "
    "released rollout code does not (VisionThink Studio's docs/protocol.md, section 5)."
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

    def __init__(self, draft: Draft, store: Store, actor: Actor) -> None:
        super().__init__(draft, store, actor)
        self.images: set[str] = set()
        self.ratings = 0

    def write(self, items: Iterator[RatedAsk], ticker: _Ticker) -> int:
        folder = self.draft.folder
        (folder / "images").mkdir()
        with (folder / "items.jsonl").open("w", encoding="utf-8", newline="\n") as lines:
            for item in items:
                lines.write(json.dumps(self._record(item), ensure_ascii=False, sort_keys=True) + "\n")
        return self.facts.asks

    def _record(self, item: RatedAsk) -> dict:
        """One stored answer with its ratings; its image is written beside the first time it is named."""
        ask = item.ask
        image = f"images/{ask.image_sha256}.png"
        if ask.image_sha256 not in self.images:
            (self.draft.folder / image).write_bytes(item.image_png)
            self.images.add(ask.image_sha256)
        record = {
            "id": ask.id,
            "question": ask.question,
            "image": {"file": image, "sha256": ask.image_sha256, "width": ask.image_size[0],
                      "height": ask.image_size[1]},
            "model": {"id": ask.model_id, "revision": ask.model_revision},
            "mode": ask.mode,
            "turns": turns_to_json(ask.turns),
            "answer": ask.answer,
            "requested_high_res": ask.requested_high_res,
            "stop_reason": ask.stop_reason,
            "tokens": ask.tokens.to_dict(),
            "latency_s": ask.latency_s,
            "created_at": ask.created_at.isoformat(),
            "ratings": [_rating_json(r) for r in item.votes],
            "consensus": {**asdict(item.consensus), "complete": item.consensus.complete},
        }
        self.ratings += len(item.votes)
        self.facts.add(item)
        return record

    def card_details(self) -> str:
        return f"Ratings: {self.ratings}. Images: {len(self.images)}."


BUILDERS: dict[str, type[_Builder]] = {"grpo": _GrpoBuilder, "kto": _KtoBuilder, "dpo": _DpoBuilder,
                                       "jsonl": _JsonlBuilder}


# --- Rows ------------------------------------------------------------------------------------------------------


def replay(item: RatedAsk) -> tuple[list[dict], list[bytes]] | None:
    """The messages the model saw before its final turn (TRL's conversational form) and its images, as PNGs.

    Rebuilt from the stored turns the way ``visionthink.engine`` ran the episode; None when they cannot be.
    """
    ask = item.ask
    conversation = replay_episode(ask.question, ask.mode, [record.turn for record in ask.turns])
    if conversation is None:
        return None
    if conversation.image_count != 1 + int(ask.requested_high_res and ask.mode == "auto"):
        return None
    original = PILImage.open(io.BytesIO(item.image_png))
    original.load()
    full = full_resolution(original)
    seen = [full if ask.mode == "high" else downsample(original)] + [full] * (conversation.image_count - 1)
    images = [item.image_png if image is original else encode_png(image) for image in seen]
    return conversation.to_trl(), images


def _save_rows(draft: Draft, features: datasets.Features, rows: Iterable[dict]) -> int:
    """Save ``rows`` in the draft's folder in the ``load_from_disk`` layout and as ``data.parquet``; returns how many.

    ``Dataset.from_generator`` streams them to an Arrow cache in the draft's scratch folder. The dataset's
    fingerprint (in ``state.json``) is the hash of the rows, and its info only their features, so the files depend
    only on the data.
    """
    digest, count = hashlib.sha256(), 0

    def hashed() -> Iterator[dict]:
        nonlocal count
        for row in rows:
            digest.update(json.dumps(row, sort_keys=True, default=_bytes_digest).encode("utf-8"))
            count += 1
            yield row

    stream = hashed()
    first = next(stream, None)
    with _quiet_datasets():
        if first is None:  # from_generator refuses a generator that yields nothing
            table = datasets.Dataset.from_dict(dict.fromkeys(features, []), features=features).data
        else:
            try:
                # A fixed fingerprint: the cache is new, and the library need not hash the generator to name it.
                table = datasets.Dataset.from_generator(lambda: chain([first], stream), features=features,
                                                        cache_dir=str(draft.scratch / "cache"), fingerprint="rows").data
            except DatasetGenerationError as exc:  # it wraps what the rows raised (a store error, a stopped export)
                raise exc.__cause__ or exc from None
        dataset = datasets.Dataset(table, info=datasets.DatasetInfo(features=features),
                                   fingerprint=digest.hexdigest()[:16])
        dataset.save_to_disk(str(draft.folder), num_shards=None if count else 1)
        dataset.to_parquet(str(draft.folder / "data.parquet"))
    return count


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
    front = "" if fmt == "jsonl" else f"---\n{CARD_METADATA.to_yaml()}\n---\n\n"
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


# --- Command line ----------------------------------------------------------------------------------------------


@dataclass
class ExportArguments:
    """``python -m store.export``'s arguments."""

    format: Format = field(metadata={"help": "what to write: grpo, kto or dpo rows for training, jsonl for audit"})
    out: Path = field(metadata={"help": "the export's path: a link to a versioned folder beside it, swapped "
                                        "atomically"})
    since: str | None = field(default=None, metadata={"help": "only answers asked on or after this day (UTC), "
                                                               "YYYY-MM-DD"})
    db: str | None = field(default=None, metadata={"help": "database URL; VISIONTHINK_DB_URL when not given"})
    replace_with_empty: bool = field(default=False, metadata={
        "help": "let an export with no rows replace a current export that has rows (refused otherwise)"})


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

    parser = CommandParser(ExportArguments, prog="python -m store.export",
                           description="Export consented, rated answers for training (grpo, kto, dpo) or audit "
                                       "(jsonl).")
    try:
        (args,) = parser.parse(argv)
        since = _since(parser, args.since)
    except SystemExit as stop:  # --help, or a bad argument (its one line is printed)
        return int(stop.code or 0)
    try:
        settings = Settings.from_env()
        db_url = args.db or settings.db_url
        _check_db(db_url)
        check_out(args.out)
    except (SettingsError, ExportError) as exc:
        return fail(parser.prog, str(exc), EXIT_BAD_INPUT)

    store = None
    try:
        with tqdm(desc=f"Exporting {args.format}", unit=" items", file=sys.stderr, dynamic_ncols=True) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            store = Store(db_url, ratings_per_item=settings.ratings_per_item)
            result = export(store, Actor.system(), args.format, args.out, since=since, progress=progress,
                            replace_with_empty=args.replace_with_empty)
    except EmptyExportRefused as exc:
        return fail(parser.prog, f"{exc} Left out: {_left_out(exc.counts.skipped)}.", 1)
    except StoreError as exc:
        return fail(parser.prog, str(exc), 1)
    except KeyboardInterrupt:
        print(f"{parser.prog}: stopped; the previous export at {args.out} (if any) is unchanged.", file=sys.stderr)
        return 130
    finally:
        if store is not None:
            store.close()
    print(f"Wrote {result.rows} {args.format} rows to {result.path} -> {result.version.name} "
          f"(left out: {_left_out(result.skipped)}).")
    return 0


def _since(parser: CommandParser, text: str | None) -> datetime | None:
    """``--since`` as the start of its day in UTC; a bad day is an argument error like any other."""
    try:
        return None if text is None else parse_day(text)
    except ValueError as exc:
        parser.error(f"argument --since: {exc}")


def _left_out(skipped: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in skipped.items()) or "none"


if __name__ == "__main__":
    sys.exit(main())
