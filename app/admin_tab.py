"""The Admin tab: judge the items where annotators disagree (each opened with its images, the model's turns and every
rater's judgement, the form starting from the majority), and export judged data for training, saying what each
export holds and why answers were left out.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
import pandas as pd

from app.ask_tab import DECISION_CHOICES, DECISION_LABELS
from app.context import Context
from app.render import answer_line, badge, error_box, note_box, seen_and_original, stored_transcript, text
from store.api import Actor, AskView, require
from store.consensus import Vote, latest_per_rater, majority
from store.db import StoreError
from visionthink.clock import parse_day

if TYPE_CHECKING:
    from store.consensus import Majority
    from store.export import ExportCounts, ExportResult

ALL_FORMATS = "all"
FORMATS = [("GRPO (reference answers, for train/)", "grpo"), ("KTO (good/bad answers)", "kto"),
           ("DPO (corrected vs model answer)", "dpo"), ("JSONL (everything, for audit)", "jsonl"),
           ("All formats (one zip, a folder per format)", ALL_FORMATS)]
VERDICT_CHOICES = [("Correct", "correct"), ("Incorrect", "incorrect"), ("Unsure", "unsure")]
NO_DISPUTES = "No disagreements to resolve."
VOTE_COLUMNS = ["rater", "verdict", "reference answer", "needed the full image?", "comment"]


def build(ctx: Context) -> tuple[gr.Tab, Callable, list]:
    with gr.Tab("Admin", id="admin", visible=False, elem_id="vt-admin-tab") as tab:
        gr.Markdown("### Disagreements")
        with gr.Row(equal_height=True):
            picker = gr.Dropdown([], value=None, label="Item to resolve", allow_custom_value=True, scale=6,
                                 elem_id="vt-dispute-pick")
            refresh = gr.Button("Refresh the list", size="sm", scale=1, elem_id="vt-disputes-refresh")
        status = gr.HTML("", elem_id="vt-resolve-status")
        with gr.Column(visible=False, elem_id="vt-dispute") as detail:
            header = gr.HTML("", elem_id="vt-dispute-header")
            with gr.Row():
                with gr.Column(scale=5):
                    images = gr.Gallery(label="What the model saw first, and the original", columns=2, height="auto",
                                        object_fit="contain", format="png", preview=False,
                                        elem_id="vt-dispute-images")
                with gr.Column(scale=6):
                    chat = gr.Chatbot(label="Question, reasoning and answer", height=420, feedback_options=None,
                                      elem_id="vt-dispute-chat")
            votes = gr.Dataframe(pd.DataFrame(columns=VOTE_COLUMNS), label="What each rater said (their latest "
                                 "rating)", interactive=False, elem_id="vt-dispute-votes")
            prefill = gr.Markdown("", elem_id="vt-resolve-prefill")
            with gr.Row():
                verdict = gr.Radio(VERDICT_CHOICES, label="Final verdict", elem_id="vt-resolve-verdict")
                decision = gr.Radio(DECISION_CHOICES, label="Needed the full image?", elem_id="vt-resolve-decision")
            reference = gr.Textbox(label="Final reference answer", max_length=ctx.settings.max_text_chars,
                                   elem_id="vt-resolve-reference")
            resolve = gr.Button("Resolve", variant="primary", elem_id="vt-resolve")
        disputes = gr.Dataframe(label="All items where annotators disagree", interactive=False,
                                elem_id="vt-disputes")

        gr.Markdown("### Export judged data")
        with gr.Row():
            fmt = gr.Dropdown(FORMATS, value="grpo", label="Format", elem_id="vt-export-format")
            since = gr.Textbox(label="Only answers since (YYYY-MM-DD, optional)", max_length=10,
                               elem_id="vt-export-since")
        export = gr.Button("Export", variant="primary", elem_id="vt-export")
        exported = gr.HTML("", elem_id="vt-export-status")
        confirm = gr.Button("Replace it with the empty export", variant="stop", visible=False,
                            elem_id="vt-export-confirm")
        report = gr.HTML("", elem_id="vt-export-report")
        archive = gr.File(label="Download", elem_id="vt-export-file")
        pending = gr.State(None)  # the export that waits for "Replace": {"format": …, "since": …}

    item_outputs = [header, images, chat, votes, prefill, verdict, decision, reference]
    outputs = [status, picker, disputes, detail, *item_outputs]

    # --- disagreements ---

    def opened(actor: Actor, item: AskView | None) -> dict:
        """The detail view and the form for ``item``, or both hidden and cleared when there is none."""
        if item is None:
            return {detail: gr.Column(visible=False), header: "", images: None, chat: [],
                    votes: pd.DataFrame(columns=VOTE_COLUMNS), prefill: "", verdict: None, decision: None,
                    reference: ""}
        ratings = latest_per_rater(_votes(item), "annotation")
        suggested = majority(ratings)
        return {
            detail: gr.Column(visible=True),
            header: _header(item),
            images: seen_and_original(ctx.store.image_png(actor, item.image_sha256), item.mode),
            chat: stored_transcript(item.question, item.turns, mode=item.mode,
                                    requested_high_res=item.requested_high_res, answer=item.answer,
                                    stop_reason=item.stop_reason, original_size=item.image_size,
                                    high_res_tokens=item.tokens.high_res),
            votes: pd.DataFrame([[v.rater, v.verdict, v.reference_answer or "",
                                  DECISION_LABELS.get(v.decision or "", v.decision or ""), _comment(item, v)]
                                 for v in ratings], columns=VOTE_COLUMNS),
            prefill: _prefill_note(suggested),
            verdict: suggested.verdict,
            decision: suggested.decision,
            reference: suggested.reference_answer or "",
        }

    def listed(actor: Actor, items: list[AskView], current: AskView | None, note: str = "") -> dict:
        """The list of disagreements, with ``current`` opened (None: nothing to open)."""
        if not items and current is None:
            message = note_box((note + " " if note else "") + NO_DISPUTES, "vt-no-disputes")
        else:
            message = note_box(note, "vt-resolved") if note else ""
        return {
            status: message,
            picker: gr.Dropdown(choices=[(_choice(v), v.id) for v in items],
                                value=current.id if current is not None else None),
            disputes: _table(items),
            **opened(actor, current),
        }

    def load(request: gr.Request, profile: gr.OAuthProfile | None) -> dict:
        actor = ctx.actor(request, profile)
        try:
            items = ctx.store.disputed(actor)
            return listed(actor, items, items[0] if items else None)
        except StoreError as exc:
            return {status: error_box(str(exc))}

    def refresh_handler(current_id, request: gr.Request, profile: gr.OAuthProfile | None) -> dict:
        """A fresh list; the item on screen stays open, with whatever the admin typed, while it is still disputed."""
        actor = ctx.actor(request, profile)
        try:
            items = ctx.store.disputed(actor)
            shown = _ask_id(current_id)
            if shown in [v.id for v in items]:
                return {status: "", picker: gr.Dropdown(choices=[(_choice(v), v.id) for v in items], value=shown),
                        disputes: _table(items)}
            return listed(actor, items, items[0] if items else None)
        except StoreError as exc:
            return {status: error_box(str(exc))}

    def open_handler(chosen, request: gr.Request, profile: gr.OAuthProfile | None) -> dict:
        actor = ctx.actor(request, profile)
        ask_id = _ask_id(chosen)
        if ask_id is None:
            return {status: error_box("Pick an item from the list (or type its number).")}
        try:
            require(actor, "admin", to="resolve disagreements")  # annotators may open items, but not here
            return {status: "", **opened(actor, ctx.store.get_ask(actor, ask_id))}
        except StoreError as exc:
            return {status: error_box(str(exc))}

    def resolve_handler(chosen, final_verdict, final_decision, final_reference, request: gr.Request,
                        profile: gr.OAuthProfile | None) -> dict:
        actor = ctx.actor(request, profile)
        ask_id = _ask_id(chosen)
        if ask_id is None or not final_verdict:
            return {status: error_box("Pick an item and choose a final verdict, then resolve it.")}
        try:
            ctx.store.resolve(actor, ask_id, verdict=final_verdict, reference_answer=final_reference,
                              decision=final_decision)
            items = ctx.store.disputed(actor)
        except StoreError as exc:
            return {status: error_box(str(exc))}
        following = next((v for v in items if v.id > ask_id), items[0] if items else None)
        note = f"Item #{ask_id} is resolved ({final_verdict})."
        if following is not None:
            note += f" Next: item #{following.id}."
        return listed(actor, items, following, note)

    refresh.click(refresh_handler, inputs=[picker], outputs=outputs, api_name="disputes")
    picker.input(open_handler, inputs=[picker], outputs=outputs, api_name="open_dispute")
    resolve.click(resolve_handler, inputs=[picker, verdict, decision, reference], outputs=outputs,
                  api_name="resolve")

    # --- export ---

    def run_export(fmt_value: str, since_text: str, replace_with_empty: bool, request: gr.Request,
                   profile: gr.OAuthProfile | None, progress: gr.Progress) -> dict:
        from store.export import EmptyExportRefused, export as export_data  # imports `datasets`: only when used

        actor = ctx.actor(request, profile)
        nothing = {report: "", archive: None, confirm: gr.Button(visible=False), pending: None}
        try:
            start = _parse_since(since_text)
        except ValueError as exc:
            return {exported: error_box(str(exc)), **nothing}
        formats = [value for _, value in FORMATS if value != ALL_FORMATS] if fmt_value == ALL_FORMATS else [fmt_value]
        results, refused = [], []
        for name in formats:
            def report_progress(done: int, total: int, name: str = name) -> None:
                progress((done, total), desc=f"Exporting {name}", unit="answers")

            try:
                results.append(export_data(ctx.store, actor, name, ctx.settings.export_dir / name, since=start,
                                      progress=report_progress, replace_with_empty=replace_with_empty))
            except EmptyExportRefused as exc:
                refused.append(exc)
            except StoreError as exc:
                done = f" ({', '.join(r.format for r in results)} exported before this)" if results else ""
                return {exported: error_box(f"{exc}{done}"), **nothing}
        counts = sorted([r.counts for r in results] + [e.counts for e in refused],
                        key=lambda c: formats.index(c.format))
        messages = []
        if results:
            made = ", ".join(f"{r.format} ({_rows(r.rows)})" for r in results)
            empty = " No rows: the table below says why." if not any(r.rows for r in results) else ""
            messages.append(note_box(f"Exported to {ctx.settings.export_dir}: {made}.{empty}", "vt-export-done"))
        if refused:
            kept = "; ".join(f"{e.counts.format}: 0 rows would replace the current export of {_rows(e.current_rows)}"
                             for e in refused)
            messages.append(_notice(
                f"{kept}. Nothing was replaced: the current export stays as it was. The table below says why this "
                "export is empty; replace it only if an empty export is what you want.", "vt-export-ask"))
        return {
            exported: "".join(messages),
            report: _report(counts, start),
            archive: _archive(archive.GRADIO_CACHE, fmt_value, results) if results else None,
            confirm: gr.Button(visible=bool(refused)),
            pending: {"format": fmt_value, "since": since_text or ""} if refused else None,
        }

    def export_handler(fmt_value: str, since_text: str, request: gr.Request, profile: gr.OAuthProfile | None,
                       progress=gr.Progress()) -> dict:
        return run_export(fmt_value, since_text, False, request, profile, progress)

    def confirm_handler(asked: dict | None, request: gr.Request, profile: gr.OAuthProfile | None,
                        progress=gr.Progress()) -> dict:
        if not asked:
            return {exported: error_box("There is no export waiting to replace another; press Export first."),
                    confirm: gr.Button(visible=False)}
        return run_export(asked["format"], asked["since"], True, request, profile, progress)

    export_outputs = [exported, archive, report, confirm, pending]
    export.click(export_handler, inputs=[fmt, since], outputs=export_outputs, api_name="export")
    confirm.click(confirm_handler, inputs=[pending], outputs=export_outputs, api_name="export_confirm")
    return tab, load, outputs


# --- what the handlers show ------------------------------------------------------------------------------------


def _ask_id(value) -> int | None:
    """The item number the picker holds: a chosen item's number, or one typed in."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    digits = str(value or "").strip().lstrip("#")
    return int(digits) if digits.isdigit() else None


def _choice(item: AskView) -> str:
    question = item.question if len(item.question) <= 70 else item.question[:70] + "…"
    return f"#{item.id} · {question}"


def _votes(item: AskView) -> list[Vote]:
    return [Vote(r.rater or "", r.source, r.verdict, r.reference_answer, r.decision, r.id) for r in item.ratings]


def _comment(item: AskView, vote: Vote) -> str:
    return next((r.comment for r in item.ratings if r.id == vote.order), "")


def _table(items: list[AskView]) -> pd.DataFrame:
    return pd.DataFrame([{
        "item": v.id, "question": v.question, "model answer": answer_line(v.answer, v.stop_reason),
        "ratings": "; ".join(f"{r.rater}: {r.verdict} / {r.reference_answer or '—'} / {r.decision or '—'}"
                             for r in v.ratings if r.source == "annotation"),
    } for v in items], columns=["item", "question", "model answer", "ratings"])


def _header(item: AskView) -> str:
    return (f"<div>Item #{item.id} · model <code>{text(item.model_id)}</code> · mode {text(item.mode)} · asked "
            f"{item.created_at:%Y-%m-%d %H:%M} UTC · answer: <b>{text(answer_line(item.answer, item.stop_reason))}"
            f"</b></div>" + badge(item.mode, item.requested_high_res))


def _prefill_note(suggested: Majority) -> str:
    def shown(value: str | None, labels: dict[str, str] | None = None) -> str:
        if value is None:
            return "*left empty: the raters are tied*"
        return f"**{text((labels or {}).get(value, value))}**"

    return ("The form starts from what most raters chose. Verdict: " + shown(suggested.verdict)
            + " · reference: " + shown(suggested.reference_answer)
            + " · needed the full image: " + shown(suggested.decision, DECISION_LABELS) + ".")


def _notice(message: str, elem_id: str) -> str:
    return f'<div class="vt-notice" id="{elem_id}">{text(message)}</div>'


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def _report(counts: list[ExportCounts], since: datetime | None) -> str:
    """The numbers of each export's dataset card, one column per format, and why stored answers were left out."""
    from store.export import SKIP_REASONS

    if not counts:
        return ""
    head = "".join(f"<th>{text(c.format)}</th>" for c in counts)
    totals = [("Rows", "rows"), ("Stored answers behind the rows", "answers"),
              ("Consented answers considered", "considered")]
    body = "".join(f"<tr><td>{label}</td>" + "".join(f"<td>{getattr(c, field)}</td>" for c in counts) + "</tr>"
                   for label, field in totals)
    reasons = [reason for reason in SKIP_REASONS if any(c.skipped.get(reason) for c in counts)]
    left_out = "".join(
        f'<tr data-reason="{reason}"><td>{text(SKIP_REASONS[reason])} (<code>{reason}</code>)</td>'
        + "".join(f"<td>{c.skipped.get(reason, 0)}</td>" for c in counts) + "</tr>" for reason in reasons)
    window = f"asked since {since:%Y-%m-%d}" if since else "all stored answers"
    return (f'<div class="vt-export-report"><p>What the export holds ({window}), as its dataset card '
            f"(README.md) states it:</p>"
            f'<table id="vt-export-counts"><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>'
            + (f'<table id="vt-export-reasons"><thead><tr><th>Left out because</th>{head}</tr></thead>'
               f"<tbody>{left_out}</tbody></table>" if reasons else '<p id="vt-export-reasons">Nothing was left out.</p>')
            + "</div>")


def _archive(cache_dir: str, fmt_value: str, results: list[ExportResult]) -> str:
    """One zip of the exports just made: the files at its root for one format, a folder per format for all."""
    # The archive goes straight into this page's own file folder: only the signed-in studio serves it, and the
    # app's housekeeping deletes it with the page's other files (VISIONTHINK_CACHE_MAX_AGE, app/housekeeping.py).
    path = Path(tempfile.mkdtemp(prefix="export-", dir=cache_dir)) / f"visionthink-{fmt_value}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipped:
        for result in results:
            prefix = f"{result.format}/" if fmt_value == ALL_FORMATS else ""
            for name in result.files:
                zipped.write(result.version / name, prefix + name)
    return str(path)


def _parse_since(value: str | None) -> datetime | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return parse_day(value)
    except ValueError:
        shown = value if len(value) <= 20 else value[:20] + "…"
        raise ValueError(f"{shown!r} is not a date like 2026-01-31.") from None
