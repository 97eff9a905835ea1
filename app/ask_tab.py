"""The Ask tab: upload an image, ask (or compare the three modes on it), watch the VisionThink loop, rate the answer.

Controls behave as in a chat demo: Enter asks (Shift+Enter adds a line), Ask and Compare are disabled while an
answer runs, Stop ends the generation (the model stops at its next token), Retry asks the last question again,
Clear starts over. The image stays after an answer, so several questions can be asked about one upload.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator

import gradio as gr

from app.context import Context
from app.render import Transcript, badge, error_box, note_box, seen_gallery, text, token_report
from store.db import StoreError
from visionthink.engine import COMPARE, MODE_LABELS, MODES, Done, Inputs, QuestionError, Waiting, prepare_inputs
from visionthink.images import ImageError
from visionthink.incidents import log_incident

log = logging.getLogger(__name__)

#: Each decision a rater can give (``store.models.DECISIONS``): its label, and a short one that fits one line beside
#: an item on the Annotate page.
DECISION_TEXT = {
    "needed_full": ("It needed the full-resolution image", "Needed the full image"),
    "low_enough": ("The 1/4-resolution image was enough", "The 1/4 image was enough"),
    "unsure": ("Unsure", "Unsure"),
}
DECISION_CHOICES = [(label, value) for value, (label, _) in DECISION_TEXT.items()]
DECISION_LABELS = {value: label for value, (label, _) in DECISION_TEXT.items()}
SHORT_DECISIONS = [(short, value) for value, (_, short) in DECISION_TEXT.items()]
MODE_TITLES = {"auto": "VisionThink (auto)", "low": "1/4 image only", "high": "Full image only"}
LOAD_WAIT_S = 1.0
FALLBACK_SENTENCE = (
    "The VisionThink model could not be loaded on this server, so a miniature model trained only on synthetic "
    "shapes and textures is answering instead: it answers the examples well and other images poorly."
)


class UploadedImage(gr.Image):
    """``gr.Image`` that hands the handler the uploaded file's path without decoding it.

    The stock component opens every upload with Pillow first, so a broken file fails before the handler can say
    why; here ``visionthink.images.load_image`` checks it and refuses it with a message for a person.
    """

    def get_block_name(self) -> str:
        return "image"

    def preprocess(self, payload):
        if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        return super().preprocess(payload)


def status_line(ctx: Context) -> str:
    """The model's state in plain words (what went wrong in detail is for the operator: see ``operator_detail``)."""
    status = ctx.slot.status()
    if status.state == "loading":
        return f"⏳ Loading the model ({status.elapsed_s:.0f} s): you can ask once it is ready."
    if status.state == "failed":
        return f"❌ {text(status.message)} Questions cannot be answered until it is fixed."  # with its reference
    engine = ctx.slot.engine
    if engine.notice:
        return f"⚠️ Running a miniature demonstration model, not VisionThink (`{text(engine.model_id)}`)."
    return f"✅ Model: `{text(engine.model_id)}` — ready."


def notice_box(ctx: Context, *, operator: bool = False) -> str:
    """When the fallback answers: what is running and why, in one sentence, for everyone; ``operator`` (admins) also
    gets the loader's full account, folded away."""
    engine = ctx.slot.engine
    if engine is None or not engine.notice:
        return ""
    folded = (f'<details id="vt-operator-detail"><summary>Details for the operator</summary>'
              f'<div class="vt-detail">{text(engine.notice)}</div></details>' if operator else "")
    return f'<div class="vt-notice" id="vt-notice">⚠️ {FALLBACK_SENTENCE}{folded}</div>'


def build(ctx: Context) -> tuple[Callable, list]:
    """The Ask tab's components and events (call inside a ``gr.Tab`` or at the top level). Returns a function that
    fills the model's status when a page loads (``(request, profile) -> {component: value}``) and its outputs."""
    status = gr.Markdown("", elem_id="vt-status")
    notice = gr.HTML("", elem_id="vt-notice-box")
    ask_id = gr.State(None)
    last_action = gr.State(None)  # "ask" or "compare": what Retry repeats
    with gr.Row():
        with gr.Column(scale=5):
            image = UploadedImage(type="filepath", label="Image", sources=["upload", "clipboard"], height=360,
                                  image_mode=None, elem_id="vt-image")
            question = gr.Textbox(label="Question", placeholder="What does the small print say?", lines=1,
                                  max_lines=6, info="Enter asks; Shift+Enter adds a line.",
                                  max_length=ctx.settings.max_question_chars, elem_id="vt-question")
            mode = gr.Radio([(label, key) for key, label in MODE_LABELS.items()], value="auto", label="Resolution")
            consent = gr.Checkbox(
                False, label="Allow this image and question to be used to train VisionThink",
                info="Answers are stored so that they can be rated; only those you allow here are ever exported "
                     "for training.",
                elem_id="vt-consent", visible=ctx.store is not None,
            )
            with gr.Row():
                ask = gr.Button("Ask", variant="primary", elem_id="ask-button")
                compare = gr.Button("Compare all three", elem_id="vt-compare-button")
                stop = gr.Button("Stop", variant="stop", visible=False, elem_id="vt-stop")
            with gr.Row():
                retry = gr.Button("Retry", size="sm", interactive=False, elem_id="vt-retry")
                clear = gr.Button("Clear", size="sm", elem_id="vt-clear")
            if ctx.examples:
                gr.Examples([[str(e.path), e.question] for e in ctx.examples], inputs=[image, question],
                            label="Examples (drawn by the project)")
        with gr.Column(scale=7, elem_id="vt-result"):
            error = gr.HTML("", elem_id="vt-error-box")
            decision = gr.HTML("", elem_id="vt-badge-box")
            chat = gr.Chatbot(label="Reasoning", height=460, elem_id="vt-chat", feedback_options=None,
                              buttons=["copy"])
            seen = gr.Gallery(label="What the model saw first, and the original", columns=2, height="auto",
                              elem_id="vt-seen", object_fit="contain", format="png", preview=False)
            tokens = gr.HTML("", elem_id="vt-tokens-box")
            with gr.Group(visible=False, elem_id="vt-rate-panel") as rate_panel:
                gr.Markdown("**Was this answer right?** Your rating helps retrain the model.")
                correction = gr.Textbox(label="Correct answer (optional)", lines=1,
                                        max_length=ctx.settings.max_text_chars, elem_id="vt-correction")
                decision_label = gr.Radio(DECISION_CHOICES, label="Was asking for the full image right?",
                                          elem_id="vt-rate-decision")
                with gr.Row():
                    up = gr.Button("👍 Correct", elem_id="vt-thumbs-up")
                    down = gr.Button("👎 Wrong", elem_id="vt-thumbs-down")
                rate_status = gr.HTML("", elem_id="vt-rate-status")
    with gr.Column(visible=False, elem_id="vt-compare") as compare_box:
        gr.Markdown("### The three modes on this image")
        columns: dict[str, tuple[gr.HTML, gr.Chatbot]] = {}
        with gr.Row(equal_height=True):
            for key in MODES:
                with gr.Column(min_width=240, elem_id=f"vt-compare-{key}"):
                    summary = gr.HTML(f"<h4>{MODE_TITLES[key]}</h4>", elem_id=f"vt-compare-{key}-summary")
                    reasoning = gr.Chatbot(label=f"Reasoning: {MODE_TITLES[key]}", height=320, feedback_options=None,
                                           elem_id=f"vt-compare-{key}-chat")
                    columns[key] = (summary, reasoning)
        with gr.Group(visible=False, elem_id="vt-compare-rate") as compare_rate:
            gr.Markdown("**Which answers were right?** Rate the three at once; your ratings help retrain the model.")
            right = gr.CheckboxGroup([(MODE_TITLES[key], key) for key in MODES], label="Right answers (leave all "
                                     "unticked if none was right)", elem_id="vt-compare-right")
            compare_decision = gr.Radio(DECISION_CHOICES, label="Was the full-resolution image needed?",
                                        elem_id="vt-compare-decision")
            compare_correction = gr.Textbox(label="Correct answer (optional)", lines=1,
                                            max_length=ctx.settings.max_text_chars, elem_id="vt-compare-correction")
            save = gr.Button("Save ratings", elem_id="vt-compare-save")
            compare_status = gr.HTML("", elem_id="vt-compare-status")
    compare_ids = gr.State(None)  # {mode: stored answer id}
    compare_json = gr.JSON(visible=False)  # the comparison as data, for API clients

    def load(request: gr.Request, profile: gr.OAuthProfile | None) -> dict:
        operator = ctx.actor(request, profile).role == "admin"
        return {status: status_line(ctx), notice: notice_box(ctx, operator=operator),
                timer: gr.Timer(active=ctx.slot.status().state == "loading")}

    timer = gr.Timer(1.0, active=False)
    timer.tick(load, outputs=[status, notice, timer],
               api_visibility="private", queue=False)

    # --- one answer ---

    def ask_handler(image_path: str | None, question_text: str, mode_key: str, allow_training: bool,
                    request: gr.Request, profile: gr.OAuthProfile | None) -> Iterator[dict]:
        """Stream one VisionThink episode into the chat, badge, images and token report; store it."""
        cleared = {error: "", decision: "", chat: [], seen: None, tokens: "", status: status_line(ctx), ask_id: None,
                   rate_panel: gr.Group(visible=False), rate_status: ""}
        yield from merged(ask_updates(image_path, question_text, mode_key, allow_training, request, profile), cleared)

    def ask_updates(image_path, question_text, mode_key, allow_training, request, profile) -> Iterator[dict]:
        started = yield from _start(ctx, image_path, question_text, mode_key, status, error)
        if started is None:
            return
        inputs, engine = started
        transcript = Transcript(inputs.question)
        yield {chat: transcript.messages}
        try:
            for event in engine.run(inputs):
                if isinstance(event, Waiting):
                    yield {status: waiting_line(event)}
                    continue
                transcript.apply(event)
                if not isinstance(event, Done):
                    yield {chat: transcript.messages, status: status_line(ctx)}
                    continue
                answer = event.answer
                stored_id, problem = _record(ctx, answer, inputs, allow_training, request, profile)
                actor = ctx.actor(request, profile)
                yield {error: problem, decision: badge(answer.mode, answer.requested_high_res),
                       chat: transcript.messages, seen: seen_gallery(answer.seen_images[0], inputs.image),
                       tokens: token_report(answer.tokens, answer.latency_s, answer.turns), status: status_line(ctx),
                       ask_id: stored_id,
                       rate_panel: gr.Group(visible=stored_id is not None and ctx.may_rate(actor))}
        except (ImageError, QuestionError) as exc:
            yield {error: error_box(str(exc))}
        except Exception as exc:  # the model or its server failed: say so on the page, keep the app up
            yield {error: model_failed(exc)}

    # --- the three modes side by side ---

    def compare_handler(image_path: str | None, question_text: str, allow_training: bool, request: gr.Request,
                        profile: gr.OAuthProfile | None) -> Iterator[dict]:
        """Run the question in every mode on the one image, each into its column; store the three answers linked."""
        cleared = {compare_json: None, error: "", status: status_line(ctx), compare_ids: None,
                   compare_rate: gr.Group(visible=False), compare_status: "",
                   **{s: f"<h4>{MODE_TITLES[k]}</h4>" for k, (s, _) in columns.items()},
                   **{c: [] for _, c in columns.values()}}
        yield from merged(compare_updates(image_path, question_text, allow_training, request, profile), cleared)

    def compare_updates(image_path, question_text, allow_training, request, profile) -> Iterator[dict]:
        started = yield from _start(ctx, image_path, question_text, "auto", status, error)
        if started is None:
            return
        inputs, engine = started
        key = uuid.uuid4().hex
        transcripts = {m: Transcript(inputs.question) for m in MODES}
        results: dict[str, dict] = {}
        stored: dict[str, int] = {}
        try:
            for mode_key, event in engine.compare(inputs):
                summary, reasoning = columns[mode_key]
                if isinstance(event, Waiting):
                    yield {status: waiting_line(event)}
                    continue
                transcripts[mode_key].apply(event)
                if not isinstance(event, Done):
                    yield {reasoning: transcripts[mode_key].messages, status: status_line(ctx)}
                    continue
                answer = event.answer
                stored_id, problem = _record(ctx, answer, inputs, allow_training, request, profile, comparison=key)
                if stored_id is not None:
                    stored[mode_key] = stored_id
                results[mode_key] = {**answer.to_json(), "stored_id": stored_id}
                yield {summary: compare_summary(answer), reasoning: transcripts[mode_key].messages,
                       **({error: problem} if problem else {})}
        except (ImageError, QuestionError) as exc:
            yield {error: error_box(str(exc))}
            return
        except Exception as exc:
            yield {error: model_failed(exc)}
            return
        actor = ctx.actor(request, profile)
        yield {compare_json: {"mode": COMPARE, "comparison": key if stored else None, "answers": results},
               compare_ids: stored or None, status: status_line(ctx),
               compare_rate: gr.Group(visible=len(stored) == len(MODES) and ctx.may_rate(actor))}

    def retry_handler(action: str | None, image_path, question_text, mode_key, allow_training,
                      request: gr.Request, profile: gr.OAuthProfile | None) -> Iterator[dict]:
        if action == "compare":
            yield from compare_handler(image_path, question_text, allow_training, request, profile)
        else:
            yield from ask_handler(image_path, question_text, mode_key, allow_training, request, profile)

    # --- the controls ---

    running = [ask, compare, retry, stop, question]  # what an answer in progress locks (Enter would ask again)

    def lock(action: str) -> Callable[[], dict]:
        """Before an answer runs: the buttons that would start another are disabled and Stop appears; the result
        area for this action is shown (and the other one's hidden), its rating form reset for the new answer."""

        def handler() -> dict:
            return {ask: gr.Button(interactive=False), compare: gr.Button(interactive=False),
                    question: gr.Textbox(interactive=False),
                    retry: gr.Button(interactive=False), stop: gr.Button(visible=True), last_action: action,
                    compare_box: gr.Column(visible=action == "compare"),
                    chat: gr.Chatbot(visible=action != "compare"), seen: gr.Gallery(visible=action != "compare"),
                    up: gr.Button(interactive=True), down: gr.Button(interactive=True), correction: "",
                    decision_label: None, right: [], compare_decision: None, compare_correction: "",
                    save: gr.Button(interactive=True)}

        return handler

    def lock_last(action: str | None) -> dict:
        return lock(action or "ask")()

    def unlock() -> dict:
        return {ask: gr.Button(interactive=True), compare: gr.Button(interactive=True),
                question: gr.Textbox(interactive=True),
                retry: gr.Button(interactive=True), stop: gr.Button(visible=False)}

    scroll = """(...args) => {
      const target = document.getElementById(%r);
      if (target) target.scrollIntoView({behavior: "instant", block: "start"});
      return args;
    }"""
    ask_inputs = [image, question, mode, consent]
    ask_outputs = [error, decision, chat, seen, tokens, status, ask_id, rate_panel, rate_status]
    compare_inputs = [image, question, consent]
    compare_outputs = [compare_json, error, status, compare_ids, compare_rate, compare_status,
                       *[component for pair in columns.values() for component in pair]]
    lock_outputs = [*running, last_action, compare_box, chat, seen, up, down, correction, decision_label, right,
                    compare_decision, compare_correction, save]
    model_queue = {"concurrency_limit": ctx.settings.model_concurrency, "concurrency_id": "model"}
    # The engine lets only VISIONTHINK_MODEL_CONCURRENCY episodes run at once across every page; this page queues
    # no more than that many of its own, so that the rest wait in Gradio's queue and see their place in it.
    answering = []
    for trigger, name in ((ask.click, "ask"), (question.submit, None)):
        event = trigger(lock("ask"), outputs=lock_outputs, queue=False, api_visibility="private").then(
            ask_handler, inputs=ask_inputs, outputs=ask_outputs, js=scroll % "vt-result",
            **({"api_name": name} if name else {"api_visibility": "private"}), **model_queue)
        answering.append(event)
        event.then(unlock, outputs=running, queue=False, api_visibility="private")
    event = compare.click(lock("compare"), outputs=lock_outputs, queue=False, api_visibility="private").then(
        compare_handler, inputs=compare_inputs, outputs=compare_outputs, js=scroll % "vt-compare", api_name="compare",
        **model_queue)
    answering.append(event)
    event.then(unlock, outputs=running, queue=False, api_visibility="private")
    event = retry.click(lock_last, inputs=[last_action], outputs=lock_outputs, queue=False,
                        api_visibility="private").then(
        retry_handler, inputs=[last_action, *ask_inputs], outputs=list(dict.fromkeys(ask_outputs + compare_outputs)),
        api_visibility="private", **model_queue)
    answering.append(event)
    event.then(unlock, outputs=running, queue=False, api_visibility="private")

    stop.click(unlock, outputs=running, cancels=answering, queue=False, api_visibility="private")

    def clear_handler() -> dict:
        return {**unlock(), image: None, question: gr.Textbox("", interactive=True), error: "", decision: "", chat: gr.Chatbot([], visible=True),
                seen: gr.Gallery(None, visible=True), tokens: "",
                ask_id: None, rate_panel: gr.Group(visible=False), rate_status: "", retry: gr.Button(interactive=False),
                last_action: None, compare_box: gr.Column(visible=False), compare_ids: None, compare_json: None,
                **{s: "" for s, _ in columns.values()}, **{c: [] for _, c in columns.values()}}

    clear.click(clear_handler, outputs=list(dict.fromkeys(
        [*running, image, question, *ask_outputs, last_action, compare_box, *compare_outputs])),
        cancels=answering, queue=False, api_visibility="private")

    # --- ratings ---

    def rate_handler(verdict: str):
        def handler(stored_id: int | None, corrected: str, decision_value: str | None, request: gr.Request,
                    profile: gr.OAuthProfile | None) -> dict:
            if ctx.store is None or stored_id is None:
                return {rate_status: error_box("There is no stored answer to rate; ask a question first.")}
            try:
                ctx.store.rate(ctx.actor(request, profile), stored_id, verdict=verdict, reference_answer=corrected,
                               decision=decision_value, source="thumbs")
            except StoreError as exc:
                return {rate_status: error_box(str(exc))}
            # One rating per answer from this page: the buttons come back with the next answer.
            return {rate_status: note_box("Thank you: your rating is saved.", "vt-rate-saved"),
                    up: gr.Button(interactive=False), down: gr.Button(interactive=False)}

        return handler

    rating_inputs, rating_outputs = [ask_id, correction, decision_label], [rate_status, up, down]
    up.click(rate_handler("correct"), inputs=rating_inputs, outputs=rating_outputs, api_name="rate_correct")
    down.click(rate_handler("incorrect"), inputs=rating_inputs, outputs=rating_outputs, api_name="rate_incorrect")

    def rate_comparison(ids: dict | None, right_modes: list[str], decision_value: str | None, corrected: str,
                        request: gr.Request, profile: gr.OAuthProfile | None) -> dict:
        """One rating of the comparison: each answer right or wrong, and whether the full image was needed."""
        if ctx.store is None or not ids:
            return {compare_status: error_box("There is no stored comparison to rate; compare the modes first.")}
        actor = ctx.actor(request, profile)
        if any(key not in ids for key in MODES):
            return {compare_status: error_box("This comparison is incomplete; compare the modes again.")}
        verdicts = {int(ids[key]): "correct" if key in (right_modes or []) else "incorrect" for key in MODES}
        try:
            ctx.store.rate_many(actor, verdicts, reference_answer=corrected, decision=decision_value, source="thumbs")
        except StoreError as exc:
            return {compare_status: error_box(str(exc))}
        named = [MODE_TITLES[k] for k in MODES if k in (right_modes or [])]
        said = f"right: {', '.join(named)}" if named else "none of the three was right"
        return {compare_status: note_box(f"Thank you: your ratings are saved ({said}).", "vt-compare-saved"),
                save: gr.Button(interactive=False)}

    save.click(rate_comparison, inputs=[compare_ids, right, compare_decision, compare_correction],
               outputs=[compare_status, save], api_name="rate_comparison")
    return load, [status, notice, timer]


def _start(ctx: Context, image_path, question_text: str, mode_key: str, status, error) -> Iterator[dict]:
    """Check the inputs, then get the engine, waiting while it loads (yielding the status to the page). Returns
    ``(inputs, engine)``, or None after a message for the person (bad input, or the model failed to load)."""
    try:
        inputs = prepare_inputs(image_path, question_text, mode_key, ctx.settings.input_limits)
    except (ImageError, QuestionError) as exc:
        yield {error: error_box(str(exc))}
        return None
    engine = ctx.slot.engine
    while engine is None:
        yield {status: status_line(ctx)}
        try:
            engine = ctx.slot.wait(LOAD_WAIT_S)
        except RuntimeError as exc:  # the slot's message: plain words and a reference, never the reason itself
            yield {status: status_line(ctx), error: error_box(str(exc))}
            return None
    return inputs, engine


def merged(updates: Iterator[dict], start: dict) -> Iterator[dict]:
    """Each update merged into those before it, starting from ``start`` (a value for every output): every yield,
    the last one included, which is what API clients receive, carries the whole result."""
    view = dict(start)
    yield dict(view)
    for update in updates:
        view.update(update)
        yield dict(view)


def waiting_line(event: Waiting) -> str:
    return f"⏳ Waiting for the model: it is answering someone else ({event.waited_s:.0f} s)."


def model_failed(exc: Exception) -> str:
    reference = log_incident(log, "The model failed while answering", exc)
    return error_box(f"The model could not answer this time (reference {reference}). Try again in a minute; if it "
                     "keeps happening, give the operator this reference.")


def compare_summary(answer) -> str:
    """One column of a comparison: the mode, its decision, the answer, tokens and latency."""
    final = (text(answer.final_answer) if answer.final_answer is not None
             else f"<i>No answer ({text(answer.stop_reason.replace('_', ' '))})</i>")
    t = answer.tokens
    return (f"<h4>{MODE_TITLES[answer.mode]}</h4>{badge(answer.mode, answer.requested_high_res)}"
            f'<div class="vt-compare-answer"><b>Answer:</b> {final}</div>'
            f'<div class="vt-compare-cost"><b>{t.used}</b> visual tokens (of {t.full_res} at full resolution) · '
            f"<b>{answer.latency_s:.2f} s</b></div>")


def _record(ctx: Context, answer, inputs: Inputs, allow_training: bool, request, profile,
            comparison: str | None = None) -> tuple[int | None, str]:
    """Store the answer; a store failure is reported on the page but never hides the answer."""
    if ctx.store is None:
        return None, ""
    engine = ctx.slot.engine
    try:
        stored = ctx.store.record(answer, inputs.image, ctx.actor(request, profile), consent=allow_training,
                                  revision=engine.model_revision, source=engine.model_source, comparison=comparison)
    except StoreError as exc:
        return None, error_box(f"The answer could not be saved: {exc}")
    except Exception as exc:  # whatever the store failed on, the person still gets their answer
        reference = log_incident(log, "Storing an answer failed", exc)
        return None, error_box(f"The answer could not be saved (reference {reference}); ratings are off for it.")
    return stored, ""
