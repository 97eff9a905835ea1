"""The report of an evaluation (``train.evaluate``): the aggregates per mode, per kind of question and against
full-resolution inference, the table for the terminal, ``summary.json`` and ``summary.png``.

Definitions (also written into ``summary.json``):

- accuracy = correct / judged. Engine errors and failed judgements are left out and counted; an episode that ended
  without an ``<answer>`` is judged wrong.
- high-resolution request ratio: the share of "auto" episodes in which the model called ``resize_image``. It does
  not apply to "low" (the full image is never given) or "high" (it is given from the start).
- retained = the visual tokens of all episodes / the visual tokens of one full-resolution pass over the same
  items (a ratio of sums). A resize keeps the 1/4 image in context, so "auto" can exceed 100% on an item.
- latency: the engine's time per episode (every turn), not counting judging; p50/p90 interpolate linearly.
"""

from __future__ import annotations

import dataclasses
import io
import json
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from visionthink.clock import utcnow
from visionthink.files import atomic_write
from visionthink.intervals import wilson_interval

if TYPE_CHECKING:
    from train.evaluate import Result

#: The files of an evaluation's output folder.
RESULTS_FILE = "results.jsonl"
SUMMARY_JSON = "summary.json"
SUMMARY_PNG = "summary.png"
#: The mode the others are compared with, as the paper compares with vanilla (full-resolution) inference.
BASELINE_MODE = "high"

DEFINITIONS = {
    "accuracy": "correct / judged; engine errors and failed judgements are left out (counted in errors and "
                "judge_failures); an episode without an <answer> is judged wrong",
    "high_res_ratio": "auto mode: episodes in which the model called resize_image / episodes; null for low (the "
                      "full image is never given) and high (it is given from the start)",
    "tool_call_ratio": "episodes with at least one valid resize_image call / episodes, in any mode (in low and "
                       "high the call is answered with an error turn)",
    "retained_ratio": "sum of visual tokens used / sum of visual tokens of one full-resolution pass, over the "
                      "episodes without engine errors",
    "latency": "Answer.latency_s: the engine's time per episode, judging excluded; p50/p90 interpolate linearly",
    "well_formed_ratio": "episodes in the trained format (a direct answer, or one valid resize_image call, the full "
                         "image, then an answer) / episodes without engine errors",
    "by_kind": "the same aggregates per kind of question: the data's kind column (the miniature's), else its "
               "category column (a benchmark's), else its needs_high_res label (needs_full_image / low_res_enough, "
               "the annotators' decision in store exports); accuracy_ci95 is the 95% Wilson score interval of "
               "correct / judged",
    "comparisons": "each mode against high over the items both answered without engine errors (accuracy over the "
                   "items judged in both): accuracy difference in points, accuracy relative to high, visual "
                   "tokens relative to high, mean latency relative to high",
}


# --- Aggregates ------------------------------------------------------------------------------------------------


@dataclass
class ModeSummary:
    """The aggregates of one mode over the run's items (see the module docstring for the definitions)."""

    mode: str
    items: int
    errors: int
    answered: int
    no_answer: int
    judged: int
    judge_failures: int
    correct: int
    accuracy: float | None
    high_res_requests: int | None
    high_res_ratio: float | None
    tool_call_episodes: int
    tool_call_ratio: float | None
    well_formed: int
    well_formed_ratio: float | None
    tokens_used_total: int
    tokens_full_res_total: int
    mean_tokens_used: float | None
    mean_tokens_full_res: float | None
    mean_tokens_low_res: float | None
    mean_tokens_high_res: float | None
    retained_ratio: float | None
    latency_mean_s: float | None
    latency_p50_s: float | None
    latency_p90_s: float | None
    stop_reasons: dict[str, int]
    error_types: dict[str, int]


@dataclass
class Comparison:
    """A mode against full-resolution inference ("high") over the items both answered, as the paper frames it."""

    mode: str
    baseline: str
    paired_items: int
    judged_items: int
    accuracy: float | None
    baseline_accuracy: float | None
    accuracy_diff_points: float | None
    relative_accuracy: float | None
    token_ratio: float | None
    latency_ratio: float | None


def summarise_mode(mode: str, results: list[Result]) -> ModeSummary:
    done = [r for r in results if not r.failed]
    judged = [r for r in done if r.verdict is not None]
    correct = sum(r.verdict for r in judged)
    tokens = [r.tokens or {} for r in done]
    used = [t.get("used", 0) for t in tokens]
    full = [t.get("full_res", 0) for t in tokens]
    latencies = [r.latency_s for r in done if r.latency_s is not None]
    high_res = sum(bool(r.requested_high_res) for r in done) if mode == "auto" else None
    tool_calls = sum("tool_call" in r.turn_kinds for r in done)
    return ModeSummary(
        mode=mode,
        items=len(results),
        errors=len(results) - len(done),
        answered=sum(r.answer is not None for r in done),
        no_answer=sum(r.answer is None for r in done),
        judged=len(judged),
        judge_failures=len(done) - len(judged),
        correct=correct,
        accuracy=_ratio(correct, len(judged)),
        high_res_requests=high_res,
        high_res_ratio=_ratio(high_res, len(done)) if high_res is not None else None,
        tool_call_episodes=tool_calls,
        tool_call_ratio=_ratio(tool_calls, len(done)),
        well_formed=sum(r.well_formed for r in done),
        well_formed_ratio=_ratio(sum(r.well_formed for r in done), len(done)),
        tokens_used_total=sum(used),
        tokens_full_res_total=sum(full),
        mean_tokens_used=_mean(used),
        mean_tokens_full_res=_mean(full),
        mean_tokens_low_res=_mean([t.get("low_res", 0) for t in tokens]),
        mean_tokens_high_res=_mean([t.get("high_res", 0) for t in tokens]),
        retained_ratio=_ratio(sum(used), sum(full)),
        latency_mean_s=_mean(latencies),
        latency_p50_s=_percentile(latencies, 50),
        latency_p90_s=_percentile(latencies, 90),
        stop_reasons=dict(Counter(r.stop_reason for r in done if r.stop_reason)),
        error_types=dict(Counter(r.error_type or "error" for r in results if r.failed)),
    )


def compare(mode: str, results: dict[str, Result], baseline: dict[str, Result]) -> Comparison:
    """``results`` and ``baseline`` map item id to result."""
    paired = [i for i in results if i in baseline and not results[i].failed and not baseline[i].failed]
    judged = [i for i in paired if results[i].verdict is not None and baseline[i].verdict is not None]
    accuracy = _ratio(sum(results[i].verdict for i in judged), len(judged))
    base_accuracy = _ratio(sum(baseline[i].verdict for i in judged), len(judged))
    used = sum((results[i].tokens or {}).get("used", 0) for i in paired)
    base_used = sum((baseline[i].tokens or {}).get("used", 0) for i in paired)
    latency = _mean([results[i].latency_s for i in paired if results[i].latency_s is not None])
    base_latency = _mean([baseline[i].latency_s for i in paired if baseline[i].latency_s is not None])
    return Comparison(
        mode=mode,
        baseline=BASELINE_MODE,
        paired_items=len(paired),
        judged_items=len(judged),
        accuracy=accuracy,
        baseline_accuracy=base_accuracy,
        accuracy_diff_points=(accuracy - base_accuracy) * 100 if judged else None,
        relative_accuracy=accuracy / base_accuracy if judged and base_accuracy else None,
        token_ratio=_ratio(used, base_used),
        latency_ratio=latency / base_latency if latency is not None and base_latency else None,
    )


def _ratio(part: float | None, whole: float) -> float | None:
    return part / whole if part is not None and whole else None


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _percentile(values: list[float], q: float) -> float | None:
    """numpy's default ("linear") method: between the two nearest ranks, as the definitions say."""
    return float(np.percentile(values, q)) if values else None


# --- The report ------------------------------------------------------------------------------------------------


@dataclass
class Report:
    """What an evaluation measured, and where it wrote it."""

    model: str
    model_source: str
    judge: str
    data: dict
    modes: dict[str, ModeSummary]
    comparisons: dict[str, Comparison]
    by_kind: dict[str, dict[str, ModeSummary]]
    settings: dict
    judge_stats: dict | None
    run: dict  # what this invocation did: episodes run, reused from the results file, re-judged; its concurrency
    out_dir: Path
    notice: str | None = None

    @property
    def results_path(self) -> Path:
        return self.out_dir / RESULTS_FILE

    @property
    def summary_json(self) -> Path:
        return self.out_dir / SUMMARY_JSON

    @property
    def summary_png(self) -> Path:
        return self.out_dir / SUMMARY_PNG

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "model_source": self.model_source,
            "notice": self.notice,
            "judge": self.judge,
            "data": self.data,
            "items": self.data.get("items"),
            "settings": self.settings,
            "modes": {mode: dataclasses.asdict(summary) for mode, summary in self.modes.items()},
            "by_kind": {kind: {mode: {**dataclasses.asdict(summary),
                                      "accuracy_ci95": wilson_interval(summary.correct, summary.judged)}
                               for mode, summary in summaries.items()}
                        for kind, summaries in self.by_kind.items()},
            "comparisons": {f"{c.mode}_vs_{c.baseline}": dataclasses.asdict(c) for c in self.comparisons.values()},
            "judge_stats": self.judge_stats,
            "run": self.run,
            "definitions": DEFINITIONS,
            "files": {"results": RESULTS_FILE, "plot": SUMMARY_PNG},
            "written_at": utcnow().isoformat(timespec="seconds"),
        }

    def write(self) -> None:
        """Write ``summary.json`` and ``summary.png`` into ``out_dir``, each replaced whole."""
        atomic_write(self.summary_json, json.dumps(self.to_dict(), indent=2, ensure_ascii=False))
        write_plot(self, self.summary_png)

    def table(self) -> str:
        """The plain-text table for the terminal."""
        header = ("mode", "items", "errors", "no answer", "unjudged", "accuracy", "high-res", "tokens used",
                  "full res", "retained", "latency", "p50", "p90")
        rows = [(
            s.mode, str(s.items), str(s.errors), str(s.no_answer), str(s.judge_failures),
            f"{_pct(s.accuracy)} ({s.correct}/{s.judged})" if s.judged else "—",
            _pct(s.high_res_ratio) if s.high_res_ratio is not None else "—",
            _num(s.mean_tokens_used), _num(s.mean_tokens_full_res), _pct(s.retained_ratio),
            _secs(s.latency_mean_s), _secs(s.latency_p50_s), _secs(s.latency_p90_s),
        ) for s in self.modes.values()]
        lines = [
            f"VisionThink evaluation of {self.model} on {self.data.get('source') or 'the given items'} "
            f"({self.data.get('items')} items, judge: {self.judge})",
            "",
            _text_table(header, rows, left=1),
            "",
        ]
        if self.by_kind:
            kind_header = ("kind", "mode", "items", "accuracy (95% interval), n judged", "high-res", "format",
                           "tokens used")
            kind_rows = [(
                kind, s.mode, str(s.items), _accuracy_with_interval(s),
                _pct(s.high_res_ratio) if s.high_res_ratio is not None else "—",
                _pct(s.well_formed_ratio), _num(s.mean_tokens_used),
            ) for kind, summaries in self.by_kind.items() for s in summaries.values()]
            lines += ["By kind of question:", _text_table(kind_header, kind_rows, left=2), ""]
        for c in self.comparisons.values():
            if not c.paired_items:
                lines.append(f"{c.mode} vs {c.baseline}: no item answered in both modes.")
                continue
            parts = []
            if c.judged_items:
                parts.append(f"accuracy {c.accuracy_diff_points:+.1f} points"
                             + (f" ({_pct(c.relative_accuracy)} of {c.baseline})" if c.relative_accuracy is not None else ""))
            if c.token_ratio is not None:
                parts.append(f"visual tokens {_pct(c.token_ratio)} of {c.baseline}")
            if c.latency_ratio is not None:
                parts.append(f"latency {_pct(c.latency_ratio)} of {c.baseline}")
            lines.append(f"{c.mode} vs {c.baseline} ({c.paired_items} items answered in both): " + ", ".join(parts))
        lines += [
            "accuracy = correct / judged (engine errors and unjudged answers left out; no answer counts as wrong).",
            "high-res = auto episodes that asked for the full image; — where it does not apply "
            "(low never gets it, high starts with it).",
            "format = episodes in the trained format (a direct answer, or one call, the full image, an answer).",
            "tokens: mean visual tokens per episode; retained = total used / total for one full-resolution pass.",
            "latency: mean, p50 and p90 seconds per episode (engine time, judging excluded).",
        ]
        return "\n".join(lines)


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int) -> str:
    """``rows`` under ``header`` as plain text (rich, no styles or colour codes): columns two spaces apart, the
    first ``left`` columns left-aligned and the others right-aligned, never wrapped."""
    table = Table(box=None, padding=(0, 1), pad_edge=False, show_edge=False)
    for index, name in enumerate(header):
        table.add_column(Text(name), justify="left" if index < left else "right", no_wrap=True)
    for row in rows:
        table.add_row(*map(Text, row))  # Text: a "[" in a model or kind name is not rich markup
    console = Console(file=io.StringIO(), width=100_000, color_system=None, highlight=False)
    console.print(table)
    return "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())


def _accuracy_with_interval(s: ModeSummary) -> str:
    """"66.7% (20.8–93.9%), n=3": accuracy, its 95% Wilson interval and the judged answers it rests on."""
    interval = wilson_interval(s.correct, s.judged)
    if interval is None:
        return "—, n=0"
    return f"{_pct(s.accuracy)} ({interval[0] * 100:.1f}–{interval[1] * 100:.1f}%), n={s.judged}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _secs(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}s"


# --- The plot --------------------------------------------------------------------------------------------------

_COLOURS = {"auto": "#1f77b4", "low": "#ff7f0e", "high": "#2ca02c"}


def write_plot(report: Report, path: Path) -> None:
    """Accuracy against visual tokens retained per mode, and latency per mode, as a PNG (Agg, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 5), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    summaries = list(report.modes.values())

    xs = [s.retained_ratio * 100 for s in summaries if s.retained_ratio is not None]
    left.axvline(100, color="grey", linestyle=":", linewidth=1)
    left.text(100, 106, "one full-resolution pass", color="grey", fontsize=8, ha="center", va="bottom")
    plotted = 0
    for s in summaries:
        if s.retained_ratio is None or s.accuracy is None:
            continue
        x, y = s.retained_ratio * 100, s.accuracy * 100
        label = f"{s.mode}: {y:.1f}% correct, {x:.0f}% of the visual tokens"
        if s.high_res_ratio is not None:
            label += f", {s.high_res_ratio * 100:.0f}% asked for the full image"
        left.scatter([x], [y], s=90, color=_COLOURS.get(s.mode, "black"), zorder=3, label=label)
        left.annotate(s.mode, (x, y), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=10)
        plotted += 1
    left.set_xlim(0, max([110.0, *(x + 10 for x in xs)]))
    left.set_ylim(-2, 112)
    left.set_xlabel("Visual tokens used (% of one full-resolution pass)")
    left.set_ylabel("Accuracy (% of judged answers)")
    left.set_title("Accuracy vs visual tokens", pad=14)
    left.grid(alpha=0.3)
    if plotted:
        left.legend(loc="lower right", fontsize=8)
    else:
        left.text(55, 50, "no judged answers", ha="center", color="grey")

    names = [s.mode for s in summaries]
    means = [s.latency_mean_s or 0.0 for s in summaries]
    right.bar(names, means, color=[_COLOURS.get(n, "grey") for n in names], alpha=0.8, label="mean")
    for index, s in enumerate(summaries):
        if s.latency_p50_s is not None:
            right.plot([index], [s.latency_p50_s], marker="o", color="black", linestyle="none",
                       label="p50" if index == 0 else None)
        if s.latency_p90_s is not None:
            right.plot([index], [s.latency_p90_s], marker="^", color="black", linestyle="none",
                       label="p90" if index == 0 else None)
    top = max([*means, *(s.latency_p90_s or 0.0 for s in summaries)])
    right.set_ylim(0, top * 1.3 if top > 0 else 1.0)  # room for the legend above the bars
    right.set_xlabel("Mode")
    right.set_ylabel("Latency per episode (s)")
    right.set_title("Latency per episode", pad=14)
    right.grid(axis="y", alpha=0.3)
    right.legend(loc="upper center", ncol=3, fontsize=8)

    figure.suptitle(f"{_short(report.model)} on {_short(str(report.data.get('source')), 50)}: "
                    f"{report.data.get('items')} items, judge {report.judge}")
    atomic_write(path, lambda handle: figure.savefig(handle, format="png"))


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]
