"""The Annotate tab: annotators work through a queue of stored answers and judge each one.

Keyboard: 1 correct, 2 incorrect, 3 unsure, S skip; F / L / U set "needed the full image" / "the 1/4 image was
enough" / "unsure" (not while typing in a text box).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import gradio as gr
from PIL import Image

from app.ask_tab import DECISION_CHOICES
from app.context import Context
from app.render import badge, error_box, note_box, stored_transcript, text, token_report
from store.api import AskView
from store.db import StoreError
from visionthink.engine import TurnRecord
from visionthink.images import downsample

GUIDELINES = """
**What you judge.** The model first saw the image at 1/4 resolution (half width, half height). It either answered,
or called `resize_image` to get the full-resolution image and answered in a second turn.

1. **Verdict.** *Correct* when the final answer says what a careful person would answer from the full image
   (synonyms and paraphrases are fine; numbers must match, units converted). *Incorrect* otherwise, including
   no answer at all. *Unsure* when you cannot tell, even from the full image.
2. **Reference answer.** It starts as the model's answer. If the answer is wrong, replace it with the right one:
   short, in the form the question asks for (a number, a word, a letter for multiple choice).
3. **Decision.** Was the full-resolution image *needed* to answer (small text, fine detail), or was the 1/4 image
   *enough*? Judge the image and question, not what the model did.
4. Skip items you cannot judge at all (unreadable, offensive, private). Never type personal data into a box.

Keys: **1** correct · **2** incorrect · **3** unsure · **S** skip · **F** / **L** / **U** decision.
"""

SHORTCUTS_JS = """
<script>
document.addEventListener("keydown", (event) => {
  const target = event.target;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" && target.type !== "radio"
      && target.type !== "checkbox" || target.isContentEditable)) return;
  const buttons = {"1": "vt-verdict-correct", "2": "vt-verdict-incorrect", "3": "vt-verdict-unsure", "s": "vt-skip"};
  const decisions = {"f": "needed_full", "l": "low_enough", "u": "unsure"};
  const key = event.key.toLowerCase();
  if (buttons[key]) {
    const button = document.getElementById(buttons[key]);
    if (button && button.offsetParent !== null) { event.preventDefault(); button.click(); }
  } else if (decisions[key]) {
    const input = document.querySelector(`#vt-decision input[value="${decisions[key]}"]`);
    if (input && input.offsetParent !== null) { event.preventDefault(); input.click(); }
  }
});
</script>
"""


def build(ctx: Context) -> tuple[gr.Tab, Callable, list]:
    """The tab, a function that fills it for the signed-in annotator (for the page's load event), its outputs."""
    with gr.Tab("Annotate", id="annotate", visible=False, elem_id="vt-annotate-tab") as tab:
        with gr.Accordion("Guidelines", open=False):
            gr.Markdown(GUIDELINES)
        progress = gr.Markdown("", elem_id="vt-progress")
        current = gr.State(None)
        message = gr.HTML("", elem_id="vt-annotate-message")
        decided = gr.HTML("", elem_id="vt-annotate-badge")
        with gr.Row():
            with gr.Column(scale=5):
                images = gr.Gallery(label="What the model saw first, and the original", columns=2,
                                    height="auto", object_fit="contain", format="png", elem_id="vt-annotate-images",
                                    preview=False)
                tokens = gr.HTML("", elem_id="vt-annotate-tokens")
            with gr.Column(scale=6):
                chat = gr.Chatbot(label="Question, reasoning and answer", height=420, feedback_options=None,
                                  elem_id="vt-annotate-chat")
                reference = gr.Textbox(label="Reference answer (correct it if the answer is wrong)", lines=2,
                                       max_length=ctx.settings.max_text_chars, elem_id="vt-reference")
                decision = gr.Radio(DECISION_CHOICES, label="Was the full-resolution image needed?",
                                    elem_id="vt-decision")
                comment = gr.Textbox(label="Comment (optional)", lines=1, max_length=ctx.settings.max_text_chars,
                                     elem_id="vt-comment")
                with gr.Row():
                    correct = gr.Button("1 · Correct", variant="primary", elem_id="vt-verdict-correct")
                    incorrect = gr.Button("2 · Incorrect", variant="stop", elem_id="vt-verdict-incorrect")
                    unsure = gr.Button("3 · Unsure", elem_id="vt-verdict-unsure")
                    skip = gr.Button("S · Skip", elem_id="vt-skip")

    outputs = [current, progress, message, images, decided, tokens, chat, reference, decision, comment]

    def show_next(actor, note: str = ""):
        try:
            item = ctx.store.next_item(actor)
            done = ctx.store.progress(actor)
        except StoreError as exc:
            return (None, "", error_box(str(exc)), None, "", "", [], "", None, "")
        line = f"**Done today:** {done.done_today} · **Left in the queue:** {done.left}"
        if item is None:
            return (None, line, note_box((note + " " if note else "") + "The queue is empty. Thank you!",
                                         "vt-queue-empty"), None, "", "", [], "", None, "")
        return (item.id, line, note_box(note, "vt-annotate-note") if note else "", *_item_outputs(ctx, actor, item))

    def load(request: gr.Request, profile: gr.OAuthProfile | None):
        return show_next(ctx.actor(request, profile))

    def judge(verdict: str):
        def handler(ask_id: int | None, ref: str, decision_value: str | None, note: str, request: gr.Request,
                    profile: gr.OAuthProfile | None):
            actor = ctx.actor(request, profile)
            if ask_id is None:
                return show_next(actor)
            try:
                ctx.store.rate(actor, ask_id, verdict=verdict, reference_answer=ref, decision=decision_value,
                               comment=note or "")
            except StoreError as exc:
                return (ask_id, gr.skip(), error_box(str(exc)), gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                        gr.skip(), gr.skip(), gr.skip())
            return show_next(actor, f"Saved: #{ask_id} is {verdict}.")

        return handler

    def skip_handler(ask_id: int | None, request: gr.Request, profile: gr.OAuthProfile | None):
        actor = ctx.actor(request, profile)
        if ask_id is not None:
            try:
                ctx.store.skip(actor, ask_id)
            except StoreError as exc:
                return (ask_id, gr.skip(), error_box(str(exc)), gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                        gr.skip(), gr.skip(), gr.skip())
        return show_next(actor, f"Skipped #{ask_id}." if ask_id is not None else "")

    def on_select(ask_id: int | None, request: gr.Request, profile: gr.OAuthProfile | None):
        """Opening the tab with no item loaded (the queue was empty when the page loaded) looks again, so answers
        stored since then show up; an item already on screen is kept with whatever the annotator typed."""
        if ask_id is not None:
            return tuple(gr.skip() for _ in outputs)
        return show_next(ctx.actor(request, profile))

    tab.select(on_select, inputs=[current], outputs=outputs, api_visibility="private")

    inputs = [current, reference, decision, comment]
    correct.click(judge("correct"), inputs=inputs, outputs=outputs, api_name="annotate_correct")
    incorrect.click(judge("incorrect"), inputs=inputs, outputs=outputs, api_name="annotate_incorrect")
    unsure.click(judge("unsure"), inputs=inputs, outputs=outputs, api_name="annotate_unsure")
    skip.click(skip_handler, inputs=[current], outputs=outputs, api_name="annotate_skip")
    return tab, load, outputs


def _item_outputs(ctx: Context, actor, item: AskView) -> tuple:
    png = ctx.store.image_png(actor, item.image_sha256)
    original = Image.open(io.BytesIO(png))
    original.load()
    low = downsample(original)
    gallery = [(low, f"Seen first: {low.size[0]}×{low.size[1]}"),
               (original, f"Original: {original.size[0]}×{original.size[1]}")]
    chat = stored_transcript(item.question, item.turns, mode=item.mode, requested_high_res=item.requested_high_res,
                             answer=item.answer, stop_reason=item.stop_reason, original_size=item.image_size,
                             high_res_tokens=item.tokens.high_res)
    header = (f"<div>Item #{item.id} · model <code>{text(item.model_id)}</code> · mode {text(item.mode)}</div>"
              + badge(item.mode, item.requested_high_res))
    if actor.role == "admin" and item.consensus is not None and item.consensus.disputed:
        header += '<div class="vt-error" id="vt-disputed">⚠️ Annotators disagree on this item.</div>'
    turns = [TurnRecord.from_dict(i, t) for i, t in enumerate(item.turns)]
    return (gallery, header, token_report(item.tokens, item.latency_s, turns), chat, item.answer or "", None, "")
