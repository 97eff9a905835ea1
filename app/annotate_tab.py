"""The Annotate tab: annotators work through a queue of stored answers and judge each one.

One screen per item (1280×900): the image on the left, with a switch between the original and the 1/4 image the
model saw first (enlarged to the original's size, so its blur shows) and a full-screen view; the transcript, the
reference answer, the decision and the verdict buttons on the right. Filters above narrow the queue in the store.
Back returns to the item rated last, filled in with the annotator's rating; Undo withdraws that rating.

Keyboard: 1 correct, 2 incorrect, 3 unsure, S skip, B back; F / L / U set "needed the full image" / "the 1/4 image
was enough" / "unsure" (not while typing in a text box).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import gradio as gr
from gradio.components import Component
from PIL import Image

from app.ask_tab import SHORT_DECISIONS
from app.context import Context
from app.render import badge, error_box, note_box, stored_transcript, text, token_report
from store.api import Actor, AskView, QueueFilter, QueueProgress, RatingView, utcnow
from store.db import StoreError
from visionthink.images import downsample

GUIDELINES = """
**What you judge.** The model first saw the image at 1/4 resolution (half width, half height). It either answered,
or called `resize_image` to get the full-resolution image and answered in a second turn. Switch the image above to
*As the model saw it first* to see that 1/4 image enlarged to the original's size; click the image to view it full
screen.

1. **Verdict.** *Correct* when the final answer says what a careful person would answer from the full image
   (synonyms and paraphrases are fine; numbers must match, units converted). *Incorrect* otherwise, including
   no answer at all. *Unsure* when you cannot tell, even from the full image.
2. **Reference answer.** It starts as the model's answer. If the answer is wrong, replace it with the right one:
   short, in the form the question asks for (a number, a word, a letter for multiple choice).
3. **Decision.** Was the full-resolution image *needed* to answer (small text, fine detail), or was the 1/4 image
   *enough*? Judge the image and question, not what the model did.
4. Skip items you cannot judge at all (unreadable, offensive, private). Never type personal data into a box.
5. **Back** shows the item you rated last, filled in with your rating: rate it again to replace your rating, or
   **Undo** to take it back (the item returns to your queue). Press Back again to go further back.

Keys: **1** correct · **2** incorrect · **3** unsure · **S** skip · **B** back · **F** / **L** / **U** decision.
"""

SHORTCUTS_JS = """
<script>
document.addEventListener("keydown", (event) => {
  const target = event.target;
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" && target.type !== "radio"
      && target.type !== "checkbox" || target.isContentEditable)) return;
  const buttons = {"1": "vt-verdict-correct", "2": "vt-verdict-incorrect", "3": "vt-verdict-unsure", "s": "vt-skip",
                   "b": "vt-back"};
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
// A click on the item's image opens it full screen (the image's own full-screen button).
document.addEventListener("click", (event) => {
  const image = event.target.closest && event.target.closest("#vt-annotate-image img");
  if (!image) return;
  const full = document.querySelector("#vt-annotate-image button[aria-label='Fullscreen'], "
                                      + "#vt-annotate-image button[title='Fullscreen']");
  if (full) full.click();
});
</script>
"""

ANY = "any"
MODE_FILTER = [("Any mode", ANY), ("auto: the model decides", "auto"), ("low: 1/4 image only", "low"),
               ("high: full image only", "high")]
ASKED_FILTER = [("Asked for the full image or not", ANY), ("Asked for the full image", "asked"),
                ("Answered from the 1/4 image", "not_asked")]
ORIGINAL, AS_SEEN = "original", "as_seen"
VIEW_CHOICES = [("Original", ORIGINAL), ("As the model saw it first (1/4, enlarged)", AS_SEEN)]


def build(ctx: Context) -> tuple[gr.Tab, Callable, list]:
    """The tab, a function that fills it for the signed-in annotator (for the page's load event), its outputs."""
    with gr.Tab("Annotate", id="annotate", visible=False, elem_id="vt-annotate-tab") as tab:
        current = gr.State(None)  # the item on screen
        revisiting = gr.State(None)  # the id of the annotator's rating of it, when they went back to it
        started = gr.State(None)  # when this page was opened: "Item x of N" counts the work done since
        with gr.Row(equal_height=True, elem_id="vt-annotate-bar"):
            progress = gr.Markdown("", elem_id="vt-progress")
            back = gr.Button("B · Back", size="sm", scale=0, min_width=84, elem_id="vt-back")
            undo = gr.Button("Undo my last rating", size="sm", scale=0, min_width=150, elem_id="vt-undo")
            # The first choice of each says what it filters, so the labels are for screen readers only.
            model_filter = gr.Dropdown([("Any model", ANY)], value=ANY, label="Model", show_label=False,
                                       container=False, elem_id="vt-filter-model")
            mode_filter = gr.Dropdown(MODE_FILTER, value=ANY, label="Mode", show_label=False, container=False,
                                      elem_id="vt-filter-mode")
            asked_filter = gr.Dropdown(ASKED_FILTER, value=ANY, label="Full image", show_label=False,
                                       container=False, elem_id="vt-filter-asked")
        # One line kept free for notes, so nothing moves under the mouse when a note comes or goes.
        message = gr.HTML("", elem_id="vt-annotate-message")
        with gr.Row(elem_id="vt-annotate-item"):
            with gr.Column(scale=6, min_width=360):
                with gr.Row(equal_height=True):
                    view = gr.Radio(VIEW_CHOICES, value=ORIGINAL, label="Image shown", show_label=False,
                                    container=False, scale=3, elem_id="vt-image-view")
                    caption = gr.HTML("", elem_id="vt-image-caption")
                image = gr.Image(None, type="pil", format="png", interactive=False, label="Click to enlarge",
                                 height=520, buttons=["fullscreen", "download"], elem_id="vt-annotate-image")
                with gr.Accordion("Visual tokens and latency", open=False):
                    tokens = gr.HTML("", elem_id="vt-annotate-tokens")
            with gr.Column(scale=5, min_width=420):
                decided = gr.HTML("", elem_id="vt-annotate-badge")
                # Not scrolled to the end: the question comes first (the answer is in the reference box below).
                chat = gr.Chatbot(label="Question, reasoning and answer", height=200, autoscroll=False,
                                  feedback_options=None, elem_id="vt-annotate-chat")
                reference = gr.Textbox(label="Reference answer (correct it if the answer is wrong)", lines=1,
                                       max_lines=3, max_length=ctx.settings.max_text_chars, elem_id="vt-reference")
                decision = gr.Radio(SHORT_DECISIONS, label="Was the full-resolution image needed?",
                                    elem_id="vt-decision")
                comment = gr.Textbox(label="Comment", show_label=False, placeholder="Comment (optional)", lines=1,
                                     max_length=ctx.settings.max_text_chars, elem_id="vt-comment")
                with gr.Row(elem_id="vt-verdicts"):
                    correct = gr.Button("1 · Correct", variant="primary", min_width=90, elem_id="vt-verdict-correct")
                    incorrect = gr.Button("2 · Incorrect", variant="stop", min_width=90,
                                          elem_id="vt-verdict-incorrect")
                    unsure = gr.Button("3 · Unsure", min_width=90, elem_id="vt-verdict-unsure")
                    skip = gr.Button("S · Skip", min_width=90, elem_id="vt-skip")
        with gr.Accordion("Guidelines", open=False, elem_id="vt-guidelines"):
            gr.Markdown(GUIDELINES)

    page = Page(ctx, current=current, revisiting=revisiting, progress=progress, message=message, image=image,
                caption=caption, view=view, decided=decided, tokens=tokens, chat=chat, reference=reference,
                decision=decision, comment=comment)
    shown = page.outputs
    filters = [model_filter, mode_filter, asked_filter]

    def load(request: gr.Request, profile: gr.OAuthProfile | None):
        actor = ctx.actor(request, profile)
        since = utcnow()
        values = {started: since, **page.next(actor, QueueFilter(), since)}
        try:
            models = ctx.store.queue_models(actor)
        except StoreError:
            models = []  # page.next has said what is wrong with the store
        values[model_filter] = gr.Dropdown(choices=[("Any model", ANY)] + [
            (f"{m.model_id} @ {m.revision}" if m.revision else m.model_id, m.id) for m in models], value=ANY)
        return values

    def judge(verdict: str):
        def handler(ask_id: int | None, rating_id: int | None, since: datetime | None, ref: str,
                    decision_value: str | None, note: str, model: int | str, mode: str, asked: str,
                    request: gr.Request, profile: gr.OAuthProfile | None):
            actor, wanted = ctx.actor(request, profile), queue_filter(model, mode, asked)
            if ask_id is None:
                return page.next(actor, wanted, since)
            try:
                ctx.store.rate(actor, ask_id, verdict=verdict, reference_answer=ref, decision=decision_value,
                               comment=note or "")
            except StoreError as exc:
                return {message: error_box(str(exc))}
            again = " Your new rating replaces the earlier one." if rating_id is not None else ""
            return page.next(actor, wanted, since, f"Saved: #{ask_id} is {verdict}.{again}")

        return handler

    def skip_handler(ask_id: int | None, rating_id: int | None, since: datetime | None, model: int | str,
                     mode: str, asked: str, request: gr.Request, profile: gr.OAuthProfile | None):
        actor, wanted = ctx.actor(request, profile), queue_filter(model, mode, asked)
        if ask_id is None:
            return page.next(actor, wanted, since)
        if rating_id is not None:  # went back to a rated item: leave it as it was rated
            return page.next(actor, wanted, since, f"#{ask_id} keeps your rating.")
        try:
            ctx.store.skip(actor, ask_id)
        except StoreError as exc:
            return {message: error_box(str(exc))}
        return page.next(actor, wanted, since, f"Skipped #{ask_id}.")

    def back_handler(rating_id: int | None, since: datetime | None, model: int | str, mode: str, asked: str,
                     request: gr.Request, profile: gr.OAuthProfile | None):
        actor, wanted = ctx.actor(request, profile), queue_filter(model, mode, asked)
        try:
            item = ctx.store.last_rated(actor, before=rating_id)
        except StoreError as exc:
            return {message: error_box(str(exc))}
        if item is None:
            further = "nothing rated before this one" if rating_id is not None else "no rating of yours yet"
            return {message: note_box(f"There is {further} to go back to.", "vt-annotate-note")}
        return page.revisit(actor, item, wanted, since)

    def undo_handler(ask_id: int | None, rating_id: int | None, since: datetime | None, model: int | str,
                     mode: str, asked: str, request: gr.Request, profile: gr.OAuthProfile | None):
        actor, wanted = ctx.actor(request, profile), queue_filter(model, mode, asked)
        try:
            if rating_id is not None:  # went back to this item: its rating is the one to undo
                target = ask_id
            else:
                last = ctx.store.last_rated(actor)
                if last is None:
                    return {message: note_box("You have not rated anything yet: there is nothing to undo.",
                                              "vt-annotate-note")}
                target = last.id
            ctx.store.withdraw(actor, target)
            item = ctx.store.get_ask(actor, target)
        except StoreError as exc:
            return {message: error_box(str(exc))}
        note = f"Undone: your rating of #{target} no longer counts, and the item is back in your queue."
        return page.show(actor, item, wanted, since, note)

    def on_filter(since: datetime | None, model: int | str, mode: str, asked: str, request: gr.Request,
                  profile: gr.OAuthProfile | None):
        return page.next(ctx.actor(request, profile), queue_filter(model, mode, asked), since)

    def on_select(ask_id: int | None, since: datetime | None, model: int | str, mode: str, asked: str,
                  request: gr.Request, profile: gr.OAuthProfile | None):
        """Opening the tab with no item loaded (the queue was empty when the page loaded) looks again, so answers
        stored since then show up; an item already on screen is kept with whatever the annotator typed."""
        if ask_id is not None:
            return {current: ask_id}
        return page.next(ctx.actor(request, profile), queue_filter(model, mode, asked), since)

    def on_view(ask_id: int | None, which: str, request: gr.Request, profile: gr.OAuthProfile | None):
        if ask_id is None:
            return {image: gr.skip()}
        actor = ctx.actor(request, profile)
        try:
            return page.image_values(actor, ctx.store.get_ask(actor, ask_id), which)
        except StoreError as exc:
            return {message: error_box(str(exc))}

    load_outputs = [*shown, started, model_filter]
    private = {"api_visibility": "private"}
    tab.select(on_select, inputs=[current, started, *filters], outputs=shown, **private)
    for dropdown in filters:
        dropdown.input(on_filter, inputs=[started, *filters], outputs=shown, **private)
    view.input(on_view, inputs=[current, view], outputs=[image, caption, message], **private)

    inputs = [current, revisiting, started, reference, decision, comment, *filters]
    correct.click(judge("correct"), inputs=inputs, outputs=shown, api_name="annotate_correct")
    incorrect.click(judge("incorrect"), inputs=inputs, outputs=shown, api_name="annotate_incorrect")
    unsure.click(judge("unsure"), inputs=inputs, outputs=shown, api_name="annotate_unsure")
    skip.click(skip_handler, inputs=[current, revisiting, started, *filters], outputs=shown, api_name="annotate_skip")
    back.click(back_handler, inputs=[revisiting, started, *filters], outputs=shown, api_name="annotate_back")
    undo.click(undo_handler, inputs=[current, revisiting, started, *filters], outputs=shown, api_name="annotate_undo")
    return tab, load, load_outputs


def queue_filter(model: int | str | None, mode: str | None, asked: str | None) -> QueueFilter:
    """The store's filter for the three dropdowns' values (Gradio has checked them against the choices)."""
    return QueueFilter(model_version=None if model in (None, ANY) else int(model),
                       mode=None if mode in (None, ANY) else mode,
                       requested_high_res={"asked": True, "not_asked": False}.get(asked))


@dataclass(frozen=True)
class Page:
    """The tab's components for one item, and what they show for an item (or for none), as ``{component: value}``
    updates."""

    ctx: Context
    current: Component
    revisiting: Component
    progress: Component
    message: Component
    image: Component
    caption: Component
    view: Component
    decided: Component
    tokens: Component
    chat: Component
    reference: Component
    decision: Component
    comment: Component

    @property
    def outputs(self) -> list[Component]:
        """Every component an item fills: the outputs of the tab's events. (The API returns them in this order, less
        the states: progress, message, image first.)"""
        return [self.current, self.revisiting, self.progress, self.message, self.image, self.decided, self.tokens,
                self.chat, self.reference, self.decision, self.comment, self.view, self.caption]

    def next(self, actor: Actor, wanted: QueueFilter, since: datetime | None, note: str = "") -> dict:
        """The next item of the annotator's queue that matches ``wanted``, or why there is none."""
        try:
            item = self.ctx.store.next_ask(actor, wanted)
            if item is not None:
                return self.show(actor, item, wanted, since, note)
            done = self.ctx.store.progress(actor, wanted, since=since)
            outside = self.ctx.store.progress(actor).left if wanted != QueueFilter() else 0
        except StoreError as exc:
            return {**self._empty(), self.message: error_box(str(exc))}
        lead = note + " " if note else ""
        if outside:
            box = note_box(f"{lead}No items match these filters. {_items(outside)} left in your queue without them: "
                           "set a filter back to “Any” to see them.", "vt-queue-empty")
        else:
            box = note_box(lead + "The queue is empty. Thank you!", "vt-queue-empty")
        return {**self._empty(), self.progress: _progress_line(done, None), self.message: box}

    def show(self, actor: Actor, item: AskView, wanted: QueueFilter, since: datetime | None, note: str = "") -> dict:
        """``item`` ready to judge afresh: the reference starts as the model's answer."""
        values = self._item(actor, item, wanted, since)
        values.update({self.revisiting: None, self.reference: item.answer or "", self.decision: None,
                       self.comment: "", self.message: note_box(note, "vt-annotate-note") if note else ""})
        return values

    def revisit(self, actor: Actor, item: AskView, wanted: QueueFilter, since: datetime | None) -> dict:
        """``item``, which the annotator rated, filled in with their latest rating of it."""
        mine = _latest_annotation(item, actor)
        values = self._item(actor, item, wanted, since, revisit=True)
        values.update({
            self.revisiting: mine.id, self.reference: mine.reference_answer or "", self.decision: mine.decision,
            self.comment: mine.comment,
            self.message: note_box(f"Back to #{item.id}: you rated it {mine.verdict}. Rate it again to replace your "
                                   "rating, Undo to take it back, Skip to leave it as it is, or Back to go further.",
                                   "vt-annotate-note"),
        })
        return values

    def image_values(self, actor: Actor, item: AskView, which: str) -> dict:
        original = Image.open(io.BytesIO(self.ctx.store.image_png(actor, item.image_sha256)))
        original.load()
        width, height = original.size
        if which == AS_SEEN:
            seen = downsample(original)
            # Nearest neighbour: every pixel the model got becomes a block, and no detail is made up.
            shown = seen.resize(original.size, Image.Resampling.NEAREST)
            label = f"1/4 image: {seen.width}×{seen.height}, enlarged to {width}×{height}"
        else:
            shown, label = original, f"Original: {width}×{height}"
        # The image as a value, never ``gr.Image(shown)``: a component built here would save it into Gradio's shared
        # folder at once, where the public page could serve it; a value is saved by this page's own component.
        return {self.image: shown, self.caption: f'<span class="vt-caption">{label}</span>'}

    def _item(self, actor: Actor, item: AskView, wanted: QueueFilter, since: datetime | None, *,
              revisit: bool = False) -> dict:
        done = self.ctx.store.progress(actor, wanted, since=since)
        chat = stored_transcript(item.question, item.turns, mode=item.mode, requested_high_res=item.requested_high_res,
                                 answer=item.answer, stop_reason=item.stop_reason, original_size=item.image_size,
                                 high_res_tokens=item.tokens.high_res)
        # The badge names the mode too: "(forced)" for low and high, the model's decision for auto.
        header = (f'<div class="vt-item-head"><span>Item #{item.id} · <code>{text(item.model_id)}</code></span> '
                  f"{badge(item.mode, item.requested_high_res)}</div>")
        if actor.role == "admin" and item.consensus is not None and item.consensus.disputed:
            header += '<div class="vt-error" id="vt-disputed">⚠️ Annotators disagree on this item.</div>'
        return {
            self.current: item.id, self.progress: _progress_line(done, item.id if revisit else None),
            **self.image_values(actor, item, ORIGINAL), self.view: ORIGINAL, self.decided: header,
            self.tokens: token_report(item.tokens, item.latency_s, item.turns), self.chat: chat,
        }

    def _empty(self) -> dict:
        return {self.current: None, self.revisiting: None, self.progress: "", self.message: "",
                self.image: None, self.caption: "", self.decided: "", self.tokens: "", self.chat: [],
                self.reference: "", self.decision: None, self.comment: "", self.view: ORIGINAL}


def _progress_line(done: QueueProgress, revisited: int | None) -> str:
    tally = f"{done.done} done · {done.left} left"
    if revisited is not None:
        return f"**Back to #{revisited}** · {tally}"
    if done.left == 0:
        return f"**No item to do** · {tally}"
    return f"**Item {done.position} of {done.total}** · {tally}"


def _items(n: int) -> str:
    return f"{n} item" + ("" if n == 1 else "s")


def _latest_annotation(item: AskView, actor: Actor) -> RatingView:
    return [r for r in item.ratings if r.source == "annotation" and r.rater == actor.rater][-1]
