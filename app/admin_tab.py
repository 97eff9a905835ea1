"""The Admin tab: resolve items where annotators disagree, and export judged data for training."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import gradio as gr
import pandas as pd

from app.ask_tab import DECISION_CHOICES
from app.context import Context
from app.render import error_box, note_box
from store.db import StoreError

FORMATS = [("GRPO (reference answers, for train/)", "grpo"), ("KTO (good/bad answers)", "kto"),
           ("DPO (corrected vs model answer)", "dpo"), ("JSONL (everything, for audit)", "jsonl")]
VERDICT_CHOICES = [("Correct", "correct"), ("Incorrect", "incorrect"), ("Unsure", "unsure")]


def build(ctx: Context) -> tuple[gr.Tab, Callable, list]:
    with gr.Tab("Admin", id="admin", visible=False, elem_id="vt-admin-tab") as tab:
        gr.Markdown("### Disagreements")
        disputes = gr.Dataframe(label="Items where annotators disagree", interactive=False, elem_id="vt-disputes")
        with gr.Row():
            item = gr.Number(label="Item #", precision=0, elem_id="vt-resolve-item")
            verdict = gr.Radio(VERDICT_CHOICES, label="Final verdict", elem_id="vt-resolve-verdict")
            decision = gr.Radio(DECISION_CHOICES, label="Needed the full image?", elem_id="vt-resolve-decision")
        reference = gr.Textbox(label="Final reference answer", max_length=ctx.settings.max_text_chars,
                               elem_id="vt-resolve-reference")
        resolve = gr.Button("Resolve", elem_id="vt-resolve")
        resolved = gr.HTML("", elem_id="vt-resolve-status")
        gr.Markdown("### Export judged data")
        with gr.Row():
            fmt = gr.Dropdown(FORMATS, value="grpo", label="Format", elem_id="vt-export-format")
            since = gr.Textbox(label="Only answers since (YYYY-MM-DD, optional)", max_length=10,
                               elem_id="vt-export-since")
        export = gr.Button("Export", variant="primary", elem_id="vt-export")
        exported = gr.HTML("", elem_id="vt-export-status")
        archive = gr.File(label="Download", elem_id="vt-export-file")

    def load(request: gr.Request, profile: gr.OAuthProfile | None):
        try:
            items = ctx.store.disputed(ctx.actor(request, profile))
        except StoreError:
            return pd.DataFrame()  # not an admin: the tab is hidden and stays empty
        return pd.DataFrame([{
            "item": v.id, "question": v.question, "model answer": v.answer or "",
            "ratings": "; ".join(f"{r.rater}: {r.verdict} / {r.reference_answer or '—'} / {r.decision or '—'}"
                                 for r in v.ratings if r.source == "annotation"),
        } for v in items], columns=["item", "question", "model answer", "ratings"])

    def resolve_handler(ask_id, final_verdict, final_decision, final_reference, request: gr.Request,
                        profile: gr.OAuthProfile | None):
        actor = ctx.actor(request, profile)
        if ask_id is None or not final_verdict:
            return error_box("Give the item number and a final verdict."), gr.skip()
        try:
            ctx.store.resolve(actor, int(ask_id), verdict=final_verdict, reference_answer=final_reference,
                              decision=final_decision)
        except StoreError as exc:
            return error_box(str(exc)), gr.skip()
        return note_box(f"Item #{int(ask_id)} is resolved."), load(request, profile)

    def export_handler(fmt_value: str, since_text: str, request: gr.Request, profile: gr.OAuthProfile | None,
                       progress=gr.Progress()):
        from store.export import export

        actor = ctx.actor(request, profile)
        try:
            start = _parse_since(since_text)
            out = ctx.settings.export_dir / fmt_value

            def report(done: int, total: int) -> None:
                progress((done, total), desc="Exporting", unit="answers")

            result = export(ctx.store, actor, fmt_value, out, since=start, progress=report)
        except (StoreError, ValueError) as exc:
            return error_box(str(exc)), None
        # The archive goes straight into this page's own file folder: only the signed-in studio serves it, and the
        # app's housekeeping deletes it with the page's other files (VISIONTHINK_CACHE_MAX_AGE, app/housekeeping.py).
        folder = tempfile.mkdtemp(prefix="export-", dir=archive.GRADIO_CACHE)
        zip_path = shutil.make_archive(str(Path(folder) / f"visionthink-{fmt_value}"), "zip",
                                       root_dir=result.path.resolve())
        return note_box(f"Exported {result.rows} rows to {result.path}.", "vt-export-done"), zip_path

    resolve.click(resolve_handler, inputs=[item, verdict, decision, reference], outputs=[resolved, disputes],
                  api_name="resolve")
    export.click(export_handler, inputs=[fmt, since], outputs=[exported, archive], api_name="export")
    return tab, load, [disputes]


def _parse_since(value: str | None) -> datetime | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        shown = value if len(value) <= 20 else value[:20] + "…"
        raise ValueError(f"{shown!r} is not a date like 2026-01-31.") from None
