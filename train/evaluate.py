"""Evaluate a VisionThink model per mode: accuracy, high-resolution requests, visual tokens and latency.

``python -m train.evaluate --model M --data D`` asks every item in the "auto", "low" and "high" modes, scores the
answers with a judge (``train.judge``) and writes, under ``--out``: ``results.jsonl``, one line per item and mode,
appended as each answer comes, so that a stopped run resumes where it stopped; ``summary.json``; ``summary.png``.
The table goes to stdout, the progress bar to stderr. Against a server (``--backend openai``), ``--concurrency N``
keeps N episodes in flight, so that a large benchmark is bound by the server's throughput, not by one episode's
latency; lines are then written in the order episodes finish, and the report does not depend on that order.

The report (its aggregates and their definitions, the table, the JSON and the plot) is ``train.report``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from train.report import BASELINE_MODE, RESULTS_FILE, Report, compare, summarise_mode
from visionthink.args import EXIT_BAD_INPUT, CommandParser, fail
from visionthink.clock import utcnow
from visionthink.engine import MODES, Engine
from visionthink.files import exclusive, looks_like_path
from visionthink.images import ImageError
from visionthink.loader import ModelLoadError, load_engine
from visionthink.settings import Settings, SettingsError

log = logging.getLogger("train.evaluate")

DEFAULT_OUT_ROOT = Path("runs") / "eval"


class EvalError(ValueError):
    """An evaluation that cannot start or go on (bad data, an unknown mode, an output folder in use); the message
    says what to change."""


# --- Items -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalItem:
    """One question about one image, with its reference answers."""

    id: str
    image: Any  # a PIL image, encoded bytes or a path: anything ``Engine.ask`` takes
    question: str  # the dataset's ``problem`` (with or without ``<image>``)
    #: ``original_answer``, else ``solution``: what the LLM judge was prompted with (docs/rewards.md §2.1)
    reference: str
    solution: str | None = None  # the rule-based ground truth, often a bare value
    data_source: str | None = None
    kind: str | None = None  # the kind of question, where the data says (the miniature's colour, shape, pattern)

    def reference_for(self, judge) -> str:
        """The rule judge compares bare values best (``solution``); an LLM judge reads ``original_answer``."""
        from train.judge import RuleJudge

        if isinstance(judge, RuleJudge) and self.solution:
            return self.solution
        return self.reference


class EvalItems(Sequence[EvalItem]):
    """The usable rows of a dataset as ``EvalItem``s. Images stay in the (memory-mapped) dataset until an item is
    read; ``ids`` are known without reading any image."""

    def __init__(self, dataset, items: list[tuple[int, EvalItem]], *, source: str, split: str, limit: int | None,
                 skipped: Counter) -> None:
        self._table = dataset.with_format("arrow")
        self._items = items  # (the row's position in the dataset, its item without the image)
        self.source = source
        self.split = split
        self.limit = limit
        #: Rows left out, by reason.
        self.skipped = skipped

    @property
    def ids(self) -> list[str]:
        return [item.id for _, item in self._items]

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):  # type: ignore[override]
        from visionthink.rows import read_row

        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        position, item = self._items[index]
        record = self._table[position].to_pylist()[0]
        return dataclasses.replace(item, image=_image_source(read_row(record).image))

    def describe(self) -> dict:
        return {"source": self.source, "split": self.split, "limit": self.limit, "items": len(self),
                "skipped": dict(self.skipped)}


def load_items(source: str | os.PathLike, split: str = "train", limit: int | None = None) -> EvalItems:
    """The items of a store export, a parquet file or folder, or a Hub dataset in VisionThink's schema
    (docs/protocol.md §8).

    Rows are read by ``visionthink.rows`` (which rows are usable, and why others are skipped, is decided there).
    An item's id is its ``doc_id`` (a repeated ``doc_id`` gets ``#`` and a content hash), else a hash of the
    problem and the image bytes, so the same data gives the same ids and a stopped run resumes. Skipped rows, and
    rows repeating an item (``duplicate``), are counted in ``skipped``.
    """
    from visionthink import rows

    text = str(source)
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be at least 1, not {limit}.")
    if looks_like_path(text) and not Path(text).expanduser().exists():
        raise EvalError(f"There is no file or folder {text}. Give a saved dataset, a parquet file or a Hub id.")
    try:
        dataset = rows.load_source(text, split, limit=limit)
    except rows.DataError as exc:
        raise EvalError(str(exc)) from exc
    except Exception as exc:  # datasets raises many types (a corrupt folder, a bad file); one message for people
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EvalError(f"Cannot load the data {text!r} (split {split!r}): {detail}") from exc

    items: list[tuple[int, EvalItem]] = []
    seen: set[str] = set()
    skipped: Counter = Counter()
    for row in rows.read_rows(dataset, skipped):
        question = row.problem.strip()
        item_id = row.doc_id or _content_id(question, row.image)
        if item_id in seen:
            item_id = f"{item_id}#{_content_id(question, row.image)}"
        if item_id in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(item_id)
        kind = row.kind or row.category  # the reader's text is never blank, but may be padded
        items.append((row.index, EvalItem(
            item_id, None, question, row.reference.strip(), row.solution.strip() if row.solution else None,
            row.data_source, kind.strip() if kind else NEEDS_HIGH_RES_GROUPS.get(row.needs_high_res))))
    if skipped:
        log.warning("Skipped %d rows of %s: %s.", sum(skipped.values()), text,
                    ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in skipped.items()))
    if not items:
        raise EvalError(f"{text} holds no usable rows (each needs one image, a problem and a reference answer).")
    return EvalItems(dataset, items, source=text, split=split, limit=limit, skipped=skipped)


#: The group of a row without a ``kind`` or ``category`` column, from its ``needs_high_res`` label (store exports
#: carry the annotators' decision there).
NEEDS_HIGH_RES_GROUPS = {True: "needs_full_image", False: "low_res_enough"}


def _image_source(value):
    """An image cell as ``Engine.ask`` takes it: bytes or a path (no decoding here)."""
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value


def _content_id(question: str, image) -> str:
    digest = hashlib.sha256(question.encode("utf-8"))
    digest.update(b"\0")
    source = _image_source(image)
    if isinstance(source, (bytes, bytearray, memoryview)):
        digest.update(bytes(source))
    elif hasattr(source, "tobytes"):  # a decoded PIL image
        digest.update(f"{source.mode}{source.size}".encode())
        digest.update(source.tobytes())
    else:
        digest.update(str(source).encode("utf-8"))
    return digest.hexdigest()[:16]


# --- One result ------------------------------------------------------------------------------------------------


@dataclass
class Result:
    """One episode of one item in one mode, as a line of ``results.jsonl``."""

    item: str
    mode: str
    model: str
    settings: dict  # model revision and generation settings; a run resumes only rows with the same ones
    question: str
    reference: str
    solution: str | None = None
    data_source: str | None = None
    kind: str | None = None
    answer: str | None = None
    verdict: int | None = None  # 1 right, 0 wrong, None: not judged (judge failure or engine error)
    judge: str | None = None
    judge_error: str | None = None
    requested_high_res: bool | None = None
    stop_reason: str | None = None
    turns: int = 0
    turn_kinds: list[str] = field(default_factory=list)
    tokens: dict | None = None  # every TokenReport field
    latency_s: float | None = None
    error: str | None = None  # the engine's error, when the episode failed
    error_type: str | None = None
    finished_at: str = ""

    @classmethod
    def from_json(cls, data: dict) -> Result:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def well_formed(self) -> bool:
        """The trained format: a direct answer, or one valid call, the full image, then an answer."""
        if self.failed or self.stop_reason != "answer":
            return False
        return self.turn_kinds == ["answer"] or (self.turn_kinds == ["tool_call", "answer"] and bool(self.requested_high_res))


def run_settings(engine: Engine) -> dict:
    """What must match for a stored result to count in this run, besides the model id."""
    generation = engine.settings
    return {
        "revision": engine.model_revision or None,
        "max_new_tokens": generation.max_new_tokens,
        "temperature": generation.temperature,
        "top_p": generation.top_p,
        "max_turns": engine.max_turns,
    }


_EXPECTED_ERRORS: tuple[type[Exception], ...] = (ImageError, ValueError)


def ask(engine: Engine, item: EvalItem, mode: str, settings: dict) -> Result:
    """Run one episode; an engine error becomes a failed ``Result`` with the message (not judged)."""
    result = Result(item=item.id, mode=mode, model=engine.model_id, settings=settings, question=item.question,
                    reference=item.reference, solution=item.solution, data_source=item.data_source,
                    kind=item.kind)
    try:
        answer = engine.ask(item.image, item.question, mode)
    except Exception as exc:  # any engine failure (a refused image, a server error) is recorded, not fatal
        from visionthink.backends import BackendError

        if isinstance(exc, (*_EXPECTED_ERRORS, BackendError)):
            log.warning("Item %s, %s mode: %s", item.id, mode, exc)
        else:
            log.exception("Item %s, %s mode failed unexpectedly", item.id, mode)
        result.error, result.error_type = str(exc) or type(exc).__name__, type(exc).__name__
    else:
        result.answer = answer.final_answer
        result.requested_high_res = answer.requested_high_res
        result.stop_reason = answer.stop_reason
        result.turns = len(answer.turns)
        result.turn_kinds = [record.turn.kind for record in answer.turns]
        result.tokens = answer.tokens.to_dict()
        result.latency_s = round(answer.latency_s, 4)
    result.finished_at = utcnow().isoformat(timespec="seconds")
    return result


def judge_results(judge, results: list[Result], items: dict[str, EvalItem] | None = None) -> None:
    """Fill in the verdicts of ``results`` (in place). No answer is wrong without asking the judge; a judge that
    raises leaves the verdict None, with the message in ``judge_error``."""
    asking = []
    for result in results:
        result.judge, result.judge_error = judge.name, None
        if result.failed:
            result.verdict = None
        elif result.answer is None or not result.answer.strip():
            result.verdict = 0
        else:
            asking.append(result)
    if not asking:
        return
    triples = []
    for result in asking:
        item = (items or {}).get(result.item)
        reference = item.reference_for(judge) if item is not None else result.reference
        triples.append((result.question, reference, result.answer))
    try:
        verdicts = judge.score_many(triples)
    except Exception as exc:  # the judges return None for their own failures; this is a broken judge
        log.warning("The judge %s failed: %s", judge.name, exc)
        verdicts = [None] * len(asking)
        for result in asking:
            result.judge_error = str(exc) or type(exc).__name__
    for result, verdict in zip(asking, verdicts, strict=True):
        result.verdict = None if verdict is None else int(verdict)


# --- The results file ------------------------------------------------------------------------------------------


class ResultsLog:
    """``results.jsonl`` held open for appending under an exclusive lock (``.results.jsonl.lock`` beside it): one
    JSON line per result, flushed and synced before the next episode starts. Opening it drops a partly written last
    line (a run killed mid-write)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.unreadable = 0
        with contextlib.ExitStack() as held:
            held.enter_context(exclusive(path.with_name(f".{path.name}.lock"), lambda: EvalError(
                f"Another evaluation is writing to {path}. Wait for it to finish or choose another --out.")))
            self._file = held.enter_context(open(path, "a+b"))
            self.results = self._read()
            self._held = held.pop_all()  # released in close()

    def _read(self) -> list[Result]:
        self._file.seek(0)
        data = self._file.read()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning("%s ends with a partly written line (a stopped run); dropping it.", self.path)
            self._file.truncate(keep)
            self._file.flush()
            os.fsync(self._file.fileno())
            data = data[:keep]
        results = []
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                results.append(Result.from_json(json.loads(line)))
            except (ValueError, TypeError) as exc:
                self.unreadable += 1
                log.warning("%s line %d is not a result (%s); ignoring it.", self.path, number, exc)
        return results

    def append(self, result: Result) -> None:
        line = json.dumps(result.to_json(), ensure_ascii=False) + "\n"
        self._file.write(line.encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.results.append(result)

    def close(self) -> None:
        self._held.close()

    def __enter__(self) -> ResultsLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- The evaluation --------------------------------------------------------------------------------------------


def parse_modes(modes: str | Iterable[str]) -> tuple[str, ...]:
    """``"auto,low"`` or a list of modes, checked and without repeats, in the given order."""
    names = [m.strip() for m in (modes.split(",") if isinstance(modes, str) else modes) if m.strip()]
    unknown = [m for m in names if m not in MODES]
    if unknown:
        raise EvalError(f"Unknown mode {', '.join(map(repr, unknown))}; choose from {', '.join(MODES)}.")
    if not names:
        raise EvalError(f"No mode given; choose from {', '.join(MODES)}.")
    return tuple(dict.fromkeys(names))


def check_concurrency(engine: Engine, concurrency: int) -> None:
    """Refuse a concurrency the engine cannot give, before any episode runs."""
    from visionthink.backends import TransformersBackend

    if concurrency < 1:
        raise EvalError(f"--concurrency must be at least 1, not {concurrency}.")
    if concurrency > 1 and isinstance(engine.backend, TransformersBackend):
        raise EvalError(concurrency_refusal(concurrency))
    if concurrency > engine.max_concurrent:
        raise EvalError(f"--concurrency {concurrency} asks for more episodes at once than the engine allows "
                        f"({engine.max_concurrent}); build the Engine with max_concurrent={concurrency} "
                        "(the command line does this itself).")


def concurrency_refusal(concurrency: int) -> str:
    return (f"--concurrency {concurrency} needs --backend openai (a server such as vLLM, which batches the requests "
            "of many episodes). The transformers backend generates one turn at a time on its one model, so more "
            "episodes in flight would only queue behind each other. Serve the model (e.g. `vllm serve MODEL "
            "--limit-mm-per-prompt '{\"image\":2}'`) and pass --backend openai --base-url URL, or leave "
            "--concurrency at 1.")


class Episodes:
    """The episodes ``todo`` ((position in ``items``, mode) pairs) of an evaluation, each run and judged; iterate for
    each ``Result`` as it finishes. With ``concurrency`` 1 they run in order on the iterating thread; above, up to
    ``concurrency`` run at once on worker threads and come in the order they finish.

    Items are read on the iterating thread, only as a slot frees, so a large benchmark is never held in memory at
    once. ``stop()`` starts nothing new and gives the episodes still in flight as they finish (on Ctrl-C, so that
    their answers are not lost). Use it as a context manager: leaving it starts nothing more and does not wait for
    the episodes still running (Python itself waits for their threads when the process exits).
    """

    def __init__(self, engine: Engine, items: Sequence[EvalItem], todo: Iterable[tuple[int, str]], *, judge,
                 settings: dict, concurrency: int = 1) -> None:
        self._engine, self._items, self._judge, self._settings = engine, items, judge, settings
        self._todo = iter(todo)
        self._concurrency = concurrency
        self._running: set[Future] = set()
        self._pool = (ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="evaluate-episode")
                      if concurrency > 1 else None)

    @property
    def in_flight(self) -> int:
        return len(self._running)

    def __iter__(self) -> Iterator[Result]:
        if self._pool is None:
            for position, mode in self._todo:
                yield self._episode(self._items[position], mode)
            return
        while len(self._running) < self._concurrency and self._start_next():
            pass
        while self._running:
            done, _ = wait(self._running, return_when=FIRST_COMPLETED)
            for future in done:
                self._running.discard(future)
                self._start_next()
                yield future.result()  # an exception the episode did not catch (never an engine error) ends the run

    def stop(self) -> Iterator[Result]:
        """Start no more episodes; yield the ones in flight as they finish."""
        self._todo = iter(())
        for future in as_completed(list(self._running)):
            self._running.discard(future)
            yield future.result()

    def _start_next(self) -> bool:
        for position, mode in self._todo:
            self._running.add(self._pool.submit(self._episode, self._items[position], mode))
            return True
        return False

    def _episode(self, item: EvalItem, mode: str) -> Result:
        result = ask(self._engine, item, mode, self._settings)
        judge_results(self._judge, [result], {item.id: item})
        return result

    def __enter__(self) -> Episodes:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            # Not waiting: after an error here, the episodes still running may take up to a request timeout.
            self._pool.shutdown(wait=False, cancel_futures=True)


def evaluate(
    engine: Engine,
    items: Sequence[EvalItem],
    *,
    modes: Iterable[str] = MODES,
    judge,
    out_dir: str | os.PathLike,
    progress: bool = True,
    retry_failed: bool = False,
    data: dict | None = None,
    concurrency: int = 1,
) -> Report:
    """Ask every item in every mode, judge, and write ``results.jsonl``, ``summary.json`` and ``summary.png``.

    Results already in ``out_dir/results.jsonl`` for the same model and settings are reused (a stopped run
    resumes); results whose verdict is missing or came from another judge are judged again; failed episodes are
    run again only with ``retry_failed``. A newer line for an item and mode supersedes an older one.

    ``concurrency`` episodes run at once (``Episodes``; the engine needs as many slots, ``max_concurrent``, and a
    server backend); each result is written as it finishes, so the lines' order then differs from the items'.
    """
    modes = parse_modes(modes)
    check_concurrency(engine, concurrency)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = list(getattr(items, "ids", None) or [item.id for item in items])
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        raise EvalError(f"Item ids must be unique; repeated: {', '.join(repeated[:5])}.")
    wanted = set(ids)
    settings = run_settings(engine)
    model = engine.model_id
    counts = Counter()

    with ResultsLog(out / RESULTS_FILE) as results_log:
        current: dict[tuple[str, str], Result] = {}
        for result in results_log.results:
            if result.model == model and result.settings == settings:
                current[(result.item, result.mode)] = result  # the newest line wins
            else:
                counts["other_runs_rows"] += 1
        current = {key: r for key, r in current.items() if key[0] in wanted and key[1] in modes}
        counts["reused"] = sum(not (retry_failed and r.failed) for r in current.values())
        pending = {(i, m) for i in ids for m in modes
                   if (i, m) not in current or (retry_failed and current[(i, m)].failed)}

        stale = [r for r in current.values() if not r.failed and (r.judge != judge.name or r.verdict is None)]
        if stale:
            log.info("Judging %d stored answers again (no verdict yet, or another judge).", len(stale))
            rejudged = [dataclasses.replace(r, turn_kinds=list(r.turn_kinds)) for r in stale]
            positions = {item_id: position for position, item_id in enumerate(ids)}
            judge_results(judge, rejudged, {r.item: items[positions[r.item]] for r in rejudged})
            for result in rejudged:
                results_log.append(result)
                current[(result.item, result.mode)] = result
            counts["rejudged"] = len(rejudged)

        from tqdm import tqdm

        todo = [(position, mode) for position, item_id in enumerate(ids) for mode in modes
                if (item_id, mode) in pending]
        started, cpu_started = time.perf_counter(), time.process_time()
        with tqdm(total=len(pending), desc=f"Evaluating {model_slug(model)}", unit="episode", file=sys.stderr,
                  disable=not progress, dynamic_ncols=True) as bar, \
                Episodes(engine, items, todo, judge=judge, settings=settings, concurrency=concurrency) as episodes:

            def record(result: Result) -> None:  # only this thread writes the file: whole lines, one at a time
                results_log.append(result)
                current[(result.item, result.mode)] = result
                counts["run"] += 1
                counts["failed"] += result.failed
                bar.set_postfix_str(f"{result.item[:24]} {result.mode}")
                bar.update(1)

            try:
                for result in episodes:
                    record(result)
            except KeyboardInterrupt:
                if episodes.in_flight:
                    log.warning("Stopping: finishing the %d episodes in flight and writing them first.",
                                episodes.in_flight)
                    for result in episodes.stop():
                        record(result)
                raise
        episodes_wall_s = time.perf_counter() - started
        episodes_cpu_s = time.process_time() - cpu_started  # this process's, every thread: is the client the limit?
        counts["unreadable_lines"] = results_log.unreadable

    by_mode = {mode: {i: current[(i, mode)] for i in ids if (i, mode) in current} for mode in modes}
    summaries = {mode: summarise_mode(mode, list(by_mode[mode].values())) for mode in modes}
    comparisons = {mode: compare(mode, by_mode[mode], by_mode[BASELINE_MODE])
                   for mode in modes if mode != BASELINE_MODE and BASELINE_MODE in modes}
    kinds = sorted({r.kind for results in by_mode.values() for r in results.values() if r.kind})
    by_kind = {kind: {mode: summarise_mode(mode, [r for r in by_mode[mode].values() if r.kind == kind])
                      for mode in modes} for kind in kinds}
    stats = getattr(judge, "stats", None)
    description = dict(data or (items.describe() if hasattr(items, "describe") else {}))
    description.setdefault("items", len(ids))
    report = Report(
        model=model,
        model_source=engine.model_source,
        judge=judge.name,
        data=description,
        modes=summaries,
        comparisons=comparisons,
        by_kind=by_kind,
        settings={**settings, "modes": list(modes)},
        judge_stats=stats.as_dict() if hasattr(stats, "as_dict") else None,
        run={"episodes_run": counts["run"], "episodes_failed": counts["failed"], "reused": counts["reused"],
             "rejudged": counts["rejudged"], "rows_of_other_runs": counts["other_runs_rows"],
             "unreadable_lines": counts["unreadable_lines"], "concurrency": concurrency,
             "episodes_wall_s": round(episodes_wall_s, 3), "episodes_cpu_s": round(episodes_cpu_s, 3),
             "episodes_per_s": round(counts["run"] / episodes_wall_s, 3) if counts["run"] and episodes_wall_s else None},
        out_dir=out,
        notice=engine.notice,
    )
    report.write()
    return report


# --- Command line ----------------------------------------------------------------------------------------------

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
PROG = "python -m train.evaluate"


@dataclass(kw_only=True)
class EvaluateArguments:
    """The command line of ``python -m train.evaluate`` (every field a flag)."""

    model: str | None = field(default=None, metadata={
        "help": "Hub id or folder of the checkpoint (VISIONTHINK_MODEL); 'auto' asks the server."})
    revision: str | None = field(default=None, metadata={
        "help": "Hub revision of the checkpoint (VISIONTHINK_REVISION)."})
    data: str = field(metadata={"help": "A store export (save_to_disk folder), a parquet file or folder, or a Hub "
                                        "dataset id, in VisionThink's schema."})
    split: str = field(default="train", metadata={"help": "Split of a Hub dataset."})
    modes: str = field(default=",".join(MODES), metadata={"help": "Comma-separated: auto, low, high."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate the first N rows only."})
    judge: Literal["rule", "llm", "env"] = field(default="env", metadata={
        "help": "rule (offline matching), llm (the paper's judge; VISIONTHINK_JUDGE_* variables) or env "
                "(VISIONTHINK_JUDGE decides; rule when nothing is set)."})
    out: str | None = field(default=None, metadata={"help": "Output folder (runs/eval/<model> when not given)."})
    backend: Literal["transformers", "openai"] | None = field(default=None, metadata={"help": "VISIONTHINK_BACKEND."})
    base_url: str | None = field(default=None, metadata={
        "help": "OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (VISIONTHINK_BASE_URL)."})
    device: str | None = field(default=None, metadata={"help": "auto, cpu, cuda or cuda:N (VISIONTHINK_DEVICE)."})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "Tokens per turn at most (VISIONTHINK_MAX_NEW_TOKENS)."})
    retry_failed: bool = field(default=False, metadata={"help": "Run again the episodes that failed last time."})
    concurrency: int = field(default=1, metadata={
        "metavar": "N", "help": "Episodes in flight at once. Above 1 needs --backend openai: a server such as vLLM "
                                "batches them, so a large benchmark runs at the server's throughput."})
    allow_fallback: bool = field(default=False, metadata={
        "help": "Evaluate the embedded miniature when the model cannot be loaded (it knows only its synthetic task; "
                "for smoke tests)."})
    no_progress: bool = field(default=False, metadata={"help": "No progress bar."})


def build_parser() -> CommandParser:
    # Errors without the program's name, as every other error of this command is written.
    return CommandParser(EvaluateArguments, prog=PROG, description=__doc__.splitlines()[0], named_errors=False)


def model_slug(model_id: str) -> str:
    """A folder-safe model name: a folder's own name, or a Hub id with ``/`` as ``--``."""
    name = Path(model_id).expanduser().name if looks_like_path(model_id) or Path(model_id).is_dir() \
        else model_id.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def default_out_dir(model_id: str) -> Path:
    """``runs/eval/<model_slug>``."""
    return DEFAULT_OUT_ROOT / model_slug(model_id)


def _settings(args: EvaluateArguments) -> Settings:
    return Settings.from_env().override(
        model=args.model, revision=args.revision, backend=args.backend, base_url=args.base_url, device=args.device,
        max_new_tokens=args.max_new_tokens, model_concurrency=args.concurrency,
        # The miniature knows only its synthetic task: evaluating it instead of the model asked for would mislead.
        fallback="miniature" if args.allow_fallback else "none",
    )


def main(argv: list[str] | None = None) -> int:
    (args,) = build_parser().parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from train.judge import make_judge

    try:
        modes = parse_modes(args.modes)
        if args.concurrency < 1:
            raise EvalError(f"--concurrency must be at least 1, not {args.concurrency}.")
        settings = _settings(args)
        if args.concurrency > 1 and settings.backend != "openai":
            raise EvalError(concurrency_refusal(args.concurrency))  # before loading a model for nothing
        judge = make_judge(args.judge, settings)
        items = load_items(args.data, args.split, limit=args.limit)
    except (EvalError, SettingsError) as exc:  # a JudgeError is a SettingsError
        return fail(None, str(exc), EXIT_BAD_INPUT)

    refusal = ("An evaluation does not fall back to the embedded miniature; pass --allow-fallback to evaluate it "
               "anyway, or name it with --model.")
    try:
        try:
            engine = load_engine(settings, progress=lambda message: print(message, file=sys.stderr))
        except ModelLoadError as exc:
            hint = f" {refusal}" if settings.backend == "transformers" and not args.allow_fallback else ""
            return fail(None, f"{exc}{hint}", EXIT_FAILED)
        if engine.notice:
            if not args.allow_fallback:
                return fail(None, f"{engine.notice} {refusal}", EXIT_FAILED)
            print(f"WARNING: {engine.notice}", file=sys.stderr)
        out = Path(args.out).expanduser() if args.out else default_out_dir(engine.model_id)
        try:
            report = evaluate(engine, items, modes=modes, judge=judge, out_dir=out, progress=not args.no_progress,
                              retry_failed=args.retry_failed, concurrency=args.concurrency)
        except EvalError as exc:
            return fail(None, str(exc), EXIT_FAILED)
        except KeyboardInterrupt:
            print(f"\nStopped. Finished episodes are in {out / RESULTS_FILE}; run the same command again to resume.",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
    finally:
        close = getattr(judge, "close", None)
        if close is not None:
            close()
    print(report.table())
    if report.run["episodes_per_s"]:
        print(f"Ran {report.run['episodes_run']} episodes in {report.run['episodes_wall_s']:.1f} s "
              f"({report.run['episodes_per_s']:.2f} episodes/s, {args.concurrency} at a time).", file=sys.stderr)
    print(f"Wrote {report.results_path}, {report.summary_json} and {report.summary_png}.", file=sys.stderr)
    episodes = sum(s.items for s in report.modes.values())
    if episodes and all(s.errors == s.items for s in report.modes.values()):
        return fail(None, "every episode failed (see the messages above).", EXIT_FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
