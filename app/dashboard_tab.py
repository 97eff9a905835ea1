"""The Dashboard tab: counts, human-judged accuracy, high-resolution request ratio and visual tokens saved, per
model version, and the latest ratings. Who rated what is shown to admins only.
"""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr
import pandas as pd

from app.context import Context
from app.render import error_box
from store.api import Dashboard
from store.db import StoreError

SAVED_BINS = 12


def build(ctx: Context) -> tuple[gr.Tab, Callable, list]:
    with gr.Tab("Dashboard", id="dashboard", visible=False, elem_id="vt-dashboard-tab") as tab:
        refresh = gr.Button("Refresh", elem_id="vt-dashboard-refresh", size="sm")
        summary = gr.Markdown("", elem_id="vt-dashboard-summary")
        versions = gr.Dataframe(label="Per model version", interactive=False, elem_id="vt-dashboard-versions")
        with gr.Row():
            accuracy = gr.BarPlot(x="version", y="accuracy", title="Human-judged accuracy", y_lim=[0, 1],
                                  elem_id="vt-plot-accuracy")
            high_res = gr.BarPlot(x="version", y="ratio", title="High-resolution request ratio (auto mode)",
                                  y_lim=[0, 1], elem_id="vt-plot-highres")
        saved = gr.BarPlot(x="saved", y="answers", color="version", title="Visual tokens saved per answer",
                           elem_id="vt-plot-saved", x_title="tokens saved (bin start)", sort="x")
        agreement = gr.Dataframe(label="Automatic judge vs people (python -m train.score_store)", interactive=False,
                                 elem_id="vt-dashboard-agreement")
        latest = gr.Dataframe(label="Latest ratings", interactive=False, elem_id="vt-dashboard-latest")
        annotators = gr.Dataframe(label="Annotators (admins only)", interactive=False, visible=False,
                                  elem_id="vt-dashboard-annotators")
    outputs = [summary, versions, accuracy, high_res, saved, agreement, latest, annotators]

    def load(request: gr.Request, profile: gr.OAuthProfile | None):
        try:
            board = ctx.store.dashboard(ctx.actor(request, profile))
        except StoreError as exc:
            return (error_box(str(exc)), *[gr.skip()] * 7)
        return render(board)

    refresh.click(load, outputs=outputs, api_name="dashboard")
    tab.select(load, outputs=outputs, api_visibility="private")  # fresh numbers whenever the tab is opened
    return tab, load, outputs


def version_label(model_id: str, revision: str) -> str:
    return f"{model_id}@{revision}" if revision else model_id


def render(board: Dashboard) -> tuple:
    summary = (
        f"**{board.asks}** answers stored ({board.consented} may be used for training) · **{board.ratings}** "
        f"ratings on **{board.rated}** answers · **{board.disputed}** disputed"
    )
    rows = [{
        "version": version_label(v.model_id, v.revision), "answers": v.asks, "judged": v.judged,
        "accuracy": None if v.accuracy is None else round(v.accuracy, 3),
        "high-res ratio": None if v.high_res_ratio is None else round(v.high_res_ratio, 3),
        "tokens saved (total)": v.tokens_saved_total,
        "mean latency (s)": None if v.mean_latency_s is None else round(v.mean_latency_s, 2),
    } for v in board.versions]
    accuracy = pd.DataFrame([{"version": version_label(v.model_id, v.revision), "accuracy": float(v.accuracy)}
                             for v in board.versions if v.accuracy is not None], columns=["version", "accuracy"])
    high_res = pd.DataFrame([{"version": version_label(v.model_id, v.revision), "ratio": float(v.high_res_ratio)}
                             for v in board.versions if v.high_res_ratio is not None], columns=["version", "ratio"])
    latest = pd.DataFrame([{
        "time": r.created_at.strftime("%Y-%m-%d %H:%M"), "item": r.ask_id, "source": r.source, "verdict": r.verdict,
        "decision": r.decision or "", "reference": r.reference_answer or "", "rater": r.rater or "—",
    } for r in board.latest], columns=["time", "item", "source", "verdict", "decision", "reference", "rater"])
    annotators = gr.Dataframe(visible=False)
    if board.annotators is not None:
        annotators = gr.Dataframe(
            pd.DataFrame([{"annotator": a.rater, "ratings": a.ratings, "today": a.today} for a in board.annotators],
                         columns=["annotator", "ratings", "today"]),
            visible=True,
        )
    agreement = pd.DataFrame([{
        "judge": a.judge, "version": version_label(a.model_id, a.revision), "answers": a.items,
        "agreement": None if a.agreement is None else round(a.agreement, 3),
        "Cohen's kappa": None if a.kappa is None else round(a.kappa, 3), "judge failures": a.judge_failures,
    } for a in board.agreement], columns=["judge", "version", "answers", "agreement", "Cohen's kappa", "judge failures"])
    histogram = saved_histogram(board)
    bins = sorted(set(histogram["saved"]), key=int)  # numeric order, not the labels' alphabetical one
    return (summary, pd.DataFrame(rows), accuracy, high_res, gr.BarPlot(histogram, sort=bins), agreement, latest,
            annotators)


def saved_histogram(board: Dashboard) -> pd.DataFrame:
    """Answers per bin of visual tokens saved, per version (negative: the model asked for the full image)."""
    values = [s for v in board.versions for s in v.tokens_saved]
    if not values:
        return pd.DataFrame(columns=["saved", "answers", "version"])
    low, high = min(values), max(values)
    width = max(1, -(-(high - low + 1) // SAVED_BINS))
    counts: dict[tuple[int, str], int] = {}
    for v in board.versions:
        label = version_label(v.model_id, v.revision)
        for s in v.tokens_saved:
            start = low + (s - low) // width * width
            counts[(start, label)] = counts.get((start, label), 0) + 1
    return pd.DataFrame([{"saved": str(start), "answers": n, "version": label}
                         for (start, label), n in sorted(counts.items())], columns=["saved", "answers", "version"])
