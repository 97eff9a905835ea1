"""The Dashboard tab: counts, human-judged accuracy (with its 95% Wilson interval), high-resolution request ratio and
visual tokens saved, per model version and mode, and the latest ratings. Every figure shows how many answers it
rests on, and a chart with nothing to draw says why. Who rated what is shown to admins only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr
import numpy as np
import pandas as pd

from app.context import Context
from app.render import error_box
from store.api import Dashboard
from store.db import StoreError

SAVED_BINS = 12
ALL_MODES = "all modes"

VERSION_COLUMNS = ["version", "mode", "answers", "accuracy (95% interval)", "high-res ratio (auto answers)",
                   "tokens saved", "mean latency (s)"]
ACCURACY_COLUMNS = ["version · mode", "accuracy", "mode", "judged", "95% interval"]
HIGH_RES_COLUMNS = ["version", "ratio", "auto answers", "asked for the full image"]
SAVED_COLUMNS = ["saved", "answers", "version"]


@dataclass(frozen=True)
class DashboardView:
    """What the tab shows, as plain values: tables and chart data, chart titles, and a note under each chart that
    says why it is empty (or, for the request ratio, which bars sit at 0); an empty note is not shown."""

    summary: str
    versions: pd.DataFrame
    accuracy: pd.DataFrame
    accuracy_title: str
    accuracy_note: str
    high_res: pd.DataFrame
    high_res_title: str
    high_res_note: str
    saved: pd.DataFrame
    saved_bins: list[str]  # the histogram's bin labels in numeric order
    saved_title: str
    saved_note: str
    agreement: pd.DataFrame
    latest: pd.DataFrame
    annotators: pd.DataFrame | None  # admins only


def build(ctx: Context) -> tuple[gr.Tab, Callable, list]:
    with gr.Tab("Dashboard", id="dashboard", visible=False, elem_id="vt-dashboard-tab") as tab:
        refresh = gr.Button("Refresh", elem_id="vt-dashboard-refresh", size="sm")
        summary = gr.Markdown("", elem_id="vt-dashboard-summary")
        versions = gr.Dataframe(label="Per model version and mode (n: the answers each figure counts)",
                                interactive=False, elem_id="vt-dashboard-versions")
        with gr.Row():
            with gr.Column():
                accuracy = gr.BarPlot(
                    x="version · mode", y="accuracy", color="mode", title="Human-judged accuracy", y_lim=[0, 1],
                    x_title="version · mode (n judged)", tooltip=["judged", "95% interval"],
                    caption="Correct / judged answers (those with a consensus verdict). Hover a bar for its 95% "
                            "Wilson interval; the table above lists every interval.",
                    elem_id="vt-plot-accuracy")
                accuracy_note = gr.Markdown(visible=False, elem_id="vt-dashboard-accuracy-note")
            with gr.Column():
                high_res = gr.BarPlot(
                    x="version", y="ratio", title="High-resolution request ratio (auto mode)", y_lim=[0, 1],
                    x_title="version (n auto answers)", tooltip=["auto answers", "asked for the full image"],
                    caption="Auto-mode answers that asked for the full image / auto-mode answers; in low and high "
                            "mode the model cannot ask.",
                    elem_id="vt-plot-highres")
                high_res_note = gr.Markdown(visible=False, elem_id="vt-dashboard-highres-note")
        saved = gr.BarPlot(x="saved", y="answers", color="version", title="Visual tokens saved per answer",
                           x_title="visual tokens saved (negative: the model asked for the full image)",
                           color_title="version (n answers)", elem_id="vt-plot-saved")
        saved_note = gr.Markdown(visible=False, elem_id="vt-dashboard-saved-note")
        agreement = gr.Dataframe(label="Automatic judge vs people (python -m train.score_store)", interactive=False,
                                 elem_id="vt-dashboard-agreement")
        latest = gr.Dataframe(label="Latest ratings", interactive=False, elem_id="vt-dashboard-latest")
        annotators = gr.Dataframe(label="Annotators (admins only)", interactive=False, visible=False,
                                  elem_id="vt-dashboard-annotators")
    outputs = [summary, versions, accuracy, accuracy_note, high_res, high_res_note, saved, saved_note, agreement,
               latest, annotators]

    def show(view: DashboardView) -> dict:
        return {
            summary: view.summary,
            versions: view.versions,
            accuracy: gr.BarPlot(view.accuracy, title=view.accuracy_title, sort=list(view.accuracy["version · mode"]),
                                 visible=not view.accuracy.empty),
            accuracy_note: gr.Markdown(view.accuracy_note, visible=bool(view.accuracy_note)),
            high_res: gr.BarPlot(view.high_res, title=view.high_res_title, sort=list(view.high_res["version"]),
                                 visible=not view.high_res.empty),
            high_res_note: gr.Markdown(view.high_res_note, visible=bool(view.high_res_note)),
            saved: gr.BarPlot(view.saved, title=view.saved_title, sort=view.saved_bins, visible=not view.saved.empty),
            saved_note: gr.Markdown(view.saved_note, visible=bool(view.saved_note)),
            agreement: view.agreement,
            latest: view.latest,
            annotators: (gr.Dataframe(visible=False) if view.annotators is None
                         else gr.Dataframe(view.annotators, visible=True)),
        }

    def load(request: gr.Request, profile: gr.OAuthProfile | None) -> dict:
        try:
            board = ctx.store.dashboard(ctx.actor(request, profile))
        except StoreError as exc:
            return {summary: error_box(str(exc))}
        return show(render(board))

    refresh.click(load, outputs=outputs, api_name="dashboard")
    tab.select(load, outputs=outputs, api_visibility="private")  # fresh numbers whenever the tab is opened
    return tab, load, outputs


def version_label(model_id: str, revision: str) -> str:
    return f"{model_id}@{revision}" if revision else model_id


# --- What the tab shows ----------------------------------------------------------------------------------------


def render(board: Dashboard) -> DashboardView:
    summary = (
        f"**{board.asks}** answers stored ({board.consented} may be used for training) · **{board.ratings}** "
        f"ratings on **{board.rated}** answers · **{board.disputed}** disputed"
    )
    if not board.asks:
        summary += "\n\nNothing to show yet: the figures appear once someone asks a question in the Ask tab."
    accuracy, accuracy_title, accuracy_note = accuracy_chart(board)
    high_res, high_res_title, high_res_note = high_res_chart(board)
    saved, bins = saved_histogram(board)
    answers = sum(v.asks for v in board.versions)
    latest = pd.DataFrame([{
        "time": r.created_at.strftime("%Y-%m-%d %H:%M"), "item": r.ask_id, "source": r.source, "verdict": r.verdict,
        "decision": r.decision or "", "reference": r.reference_answer or "", "rater": r.rater or "—",
    } for r in board.latest], columns=["time", "item", "source", "verdict", "decision", "reference", "rater"])
    annotators = None
    if board.annotators is not None:
        annotators = pd.DataFrame([{"annotator": a.rater, "ratings": a.ratings, "today": a.today}
                                   for a in board.annotators], columns=["annotator", "ratings", "today"])
    agreement = pd.DataFrame([{
        "judge": a.judge, "version": version_label(a.model_id, a.revision), "answers": a.items,
        "agreement": None if a.agreement is None else round(a.agreement, 3),
        "Cohen's kappa": None if a.kappa is None else round(a.kappa, 3), "judge failures": a.judge_failures,
    } for a in board.agreement], columns=["judge", "version", "answers", "agreement", "Cohen's kappa", "judge failures"])
    return DashboardView(
        summary=summary,
        versions=versions_table(board),
        accuracy=accuracy, accuracy_title=accuracy_title, accuracy_note=accuracy_note,
        high_res=high_res, high_res_title=high_res_title, high_res_note=high_res_note,
        saved=saved, saved_bins=bins, saved_title=f"Visual tokens saved per answer (n = {answers} answers)",
        saved_note="" if answers else ("No answers stored yet: the tokens saved appear once someone asks a question "
                                       "in the Ask tab."),
        agreement=agreement, latest=latest, annotators=annotators,
    )


def _answers(n: int) -> str:
    return f"{n} answer" if n == 1 else f"{n} answers"


def accuracy_text(correct: int, judged: int, interval: tuple[float, float] | None) -> str:
    """"0.62 (0.48–0.74), n=40": correct / judged, its 95% Wilson interval and the number of judged answers."""
    if not judged or interval is None:
        return "—, n=0"
    return f"{correct / judged:.2f} ({interval[0]:.2f}–{interval[1]:.2f}), n={judged}"


def ratio_text(ratio: float | None, n: int) -> str:
    return "—" if ratio is None else f"{ratio:.2f}, n={n}"


def tokens_text(total: int, n: int) -> str:
    return f"{total} total, {total / n:.1f} per answer, n={n}" if n else "—, n=0"


def versions_table(board: Dashboard) -> pd.DataFrame:
    """One row per version over all its answers, then one per mode it answered in; a version that answered in one
    mode only gets that mode's row alone (the two would be the same)."""
    rows = []
    for v in board.versions:
        label = version_label(v.model_id, v.revision)
        if len(v.by_mode) != 1:
            rows.append({
                "version": label, "mode": ALL_MODES, "answers": v.asks,
                "accuracy (95% interval)": accuracy_text(v.correct, v.judged, v.accuracy_ci),
                "high-res ratio (auto answers)": ratio_text(v.high_res_ratio, v.auto_asks),
                "tokens saved": tokens_text(v.tokens_saved_total, v.asks),
                "mean latency (s)": None if v.mean_latency_s is None else round(v.mean_latency_s, 2),
            })
        for m in v.by_mode:
            rows.append({
                "version": label, "mode": m.mode, "answers": m.asks,
                "accuracy (95% interval)": accuracy_text(m.correct, m.judged, m.accuracy_ci),
                "high-res ratio (auto answers)": ratio_text(m.high_res_ratio, m.asks),
                "tokens saved": tokens_text(m.tokens_saved_total, m.asks),
                "mean latency (s)": None if m.mean_latency_s is None else round(m.mean_latency_s, 2),
            })
    return pd.DataFrame(rows, columns=VERSION_COLUMNS)


def accuracy_chart(board: Dashboard) -> tuple[pd.DataFrame, str, str]:
    """One bar per version and mode with judged answers: (data, title, note)."""
    rows = [{
        "version · mode": f"{version_label(v.model_id, v.revision)} · {m.mode} (n={m.judged})",
        "accuracy": float(m.accuracy), "mode": m.mode, "judged": m.judged,
        "95% interval": f"{m.accuracy_ci[0]:.2f}–{m.accuracy_ci[1]:.2f}",
    } for v in board.versions for m in v.by_mode if m.judged]
    judged = sum(v.judged for v in board.versions)
    note = ""
    if not judged:
        note = ("No answers judged yet: accuracy appears once annotators have rated answers and agree on a verdict."
                if not board.rated else
                f"No answers judged yet: {_answers(board.rated)} rated, but none has a verdict the annotators "
                "agree on yet (each needs enough ratings, and disputed ones wait for an admin).")
    return (pd.DataFrame(rows, columns=ACCURACY_COLUMNS),
            f"Human-judged accuracy by version and mode (n = {judged} judged answers)", note)


def high_res_chart(board: Dashboard) -> tuple[pd.DataFrame, str, str]:
    """One bar per version with auto-mode answers, a ratio of 0 included: (data, title, note)."""
    auto = [v for v in board.versions if v.auto_asks]
    rows = [{
        "version": f"{version_label(v.model_id, v.revision)} (n={v.auto_asks})", "ratio": float(v.high_res_ratio),
        "auto answers": v.auto_asks, "asked for the full image": v.high_res_requests,
    } for v in auto]
    n = sum(v.auto_asks for v in auto)
    if not board.asks:
        note = ("No answers yet: the request ratio appears once someone asks a question in auto mode, the mode in "
                "which the model decides whether it needs the full image.")
    elif not auto:
        note = ("No auto-mode answers yet: only in auto mode does the model decide whether it needs the full image, "
                "so the request ratio counts those answers alone.")
    else:
        zero = [f"{version_label(v.model_id, v.revision)} (n={v.auto_asks})" for v in auto if v.high_res_requests == 0]
        note = ("A ratio of 0 draws a bar of no height: no auto-mode answer of " + ", ".join(zero)
                + " asked for the full image.") if zero else ""
    return (pd.DataFrame(rows, columns=HIGH_RES_COLUMNS),
            f"High-resolution request ratio, auto mode (n = {n} auto answers)", note)


def saved_histogram(board: Dashboard) -> tuple[pd.DataFrame, list[str]]:
    """Answers per bin of visual tokens saved, per version (negative: the model asked for the full image), and the
    bin labels in numeric order. Up to ``SAVED_BINS`` bins of equal whole-token width; empty bins between full
    ones are kept, so the histogram's shape is not squeezed."""
    answered = [v for v in board.versions if v.tokens_saved]
    if not answered:
        return pd.DataFrame(columns=SAVED_COLUMNS), []
    values = np.concatenate([np.asarray(v.tokens_saved, dtype=np.int64) for v in answered])
    low, high = int(values.min()), int(values.max())
    width = max(1, -(-(high - low + 1) // SAVED_BINS))
    edges = np.arange(low, high + width + 1, width)  # whole-token edges; the last one lies past ``high``
    labels = [str(start) if width == 1 else f"{start} to {start + width - 1}" for start in edges[:-1].tolist()]
    rows = []
    for v in answered:
        counts, _ = np.histogram(v.tokens_saved, bins=edges)
        name = f"{version_label(v.model_id, v.revision)} (n={v.asks})"
        rows += [{"saved": label, "answers": int(n), "version": name} for label, n in zip(labels, counts, strict=True)]
    return pd.DataFrame(rows, columns=SAVED_COLUMNS), labels

