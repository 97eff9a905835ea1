"""The Ask tab: upload an image, ask, watch the VisionThink loop, and rate the answer."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import gradio as gr

from app.context import Context
from app.render import Transcript, badge, error_box, note_box, text, token_report
from store.db import StoreError
from visionthink.engine import MODE_LABELS, Done, QuestionError, Waiting, prepare_inputs
from visionthink.images import ImageError
from visionthink.incidents import log_incident

log = logging.getLogger(__name__)

DECISION_CHOICES = [
    ("It needed the full-resolution image", "needed_full"),
    ("The 1/4-resolution image was enough", "low_enough"),
    ("Unsure", "unsure"),
]
LOAD_WAIT_S = 1.0


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
    status = ctx.slot.status()
    if status.state == "loading":
        return f"⏳ {text(status.message)} ({status.elapsed_s:.0f} s)"
    if status.state == "failed":
        return f"❌ {text(status.message)}"
    engine = ctx.slot.engine
    warning = " ⚠️ A miniature trained on a synthetic task, not a general model (see the note below)." \
        if engine.notice else ""
    return f"✅ Model: `{text(engine.model_id)}` — ready.{warning}"


def notice_box(ctx: Context) -> str:
    engine = ctx.slot.engine
    if engine is None or not engine.notice:
        return ""
    return f'<div class="vt-notice" id="vt-notice">⚠️ {text(engine.notice)}</div>'


def build(ctx: Context) -> None:
    """The Ask tab's components and events (call inside a ``gr.Tab`` or at the top level)."""
    status = gr.Markdown(status_line(ctx), elem_id="vt-status")
    notice = gr.HTML(notice_box(ctx), elem_id="vt-notice-box")
    ask_id = gr.State(None)
    with gr.Row():
        with gr.Column(scale=5):
            image = UploadedImage(type="filepath", label="Image", sources=["upload", "clipboard"], height=360,
                                  image_mode=None, elem_id="vt-image")
            question = gr.Textbox(label="Question", placeholder="What does the small print say?", lines=2,
                                  max_length=ctx.settings.max_question_chars, elem_id="vt-question")
            mode = gr.Radio([(label, key) for key, label in MODE_LABELS.items()], value="auto", label="Resolution")
            consent = gr.Checkbox(
                False, label="Allow this image and question to be used to train VisionThink",
                info="Answers are stored so that they can be rated; only those you allow here are ever exported "
                     "for training.",
                elem_id="vt-consent", visible=ctx.store is not None,
            )
            ask = gr.Button("Ask", variant="primary", elem_id="ask-button")
            if ctx.examples:
                gr.Examples([[str(e.path), e.question] for e in ctx.examples], inputs=[image, question],
                            label="Examples (drawn by the project)")
        with gr.Column(scale=7):
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

    def refresh_status():
        done = ctx.slot.status().state != "loading"
        return status_line(ctx), notice_box(ctx), gr.Timer(active=not done)

    timer = gr.Timer(1.0, active=ctx.slot.status().state == "loading")
    timer.tick(refresh_status, outputs=[status, notice, timer], api_visibility="private", queue=False)

    def ask_handler(image_path: str | None, question_text: str, mode_key: str, allow_training: bool,
                    request: gr.Request, profile: gr.OAuthProfile | None) -> Iterator[tuple]:
        """Stream one VisionThink episode into the chat, badge, images and token report; store it."""
        hidden = gr.Group(visible=False)
        try:
            inputs = prepare_inputs(image_path, question_text, mode_key, ctx.settings.input_limits)
        except (ImageError, QuestionError) as exc:
            yield (error_box(str(exc)), "", [], None, "", gr.skip(), None, hidden, "")
            return
        engine = ctx.slot.engine
        while engine is None:
            yield ("", "", [], None, "", status_line(ctx), None, hidden, "")
            try:
                engine = ctx.slot.wait(LOAD_WAIT_S)
            except RuntimeError as exc:
                yield (error_box(str(exc)), "", [], None, "", status_line(ctx), None, hidden, "")
                return
        transcript = Transcript(inputs.question)
        yield ("", "", transcript.messages, None, "", status_line(ctx), None, hidden, "")
        try:
            for event in engine.run(inputs):
                if isinstance(event, Waiting):
                    waiting = (f"⏳ Waiting for the model: it is answering someone else "
                               f"({event.waited_s:.0f} s).")
                    yield ("", "", transcript.messages, gr.skip(), "", waiting, None, hidden, "")
                    continue
                transcript.apply(event)
                if not isinstance(event, Done):
                    yield ("", "", transcript.messages, gr.skip(), "", status_line(ctx), None, hidden, "")
                    continue
                answer = event.answer
                original = inputs.image
                w, h = answer.seen_images[0].size
                gallery = [(answer.seen_images[0], f"Seen first: {w}×{h}"),
                           (original, f"Original: {original.size[0]}×{original.size[1]}")]
                stored_id, problem = _record(ctx, answer, original, allow_training, request, profile)
                actor = ctx.actor(request, profile)
                yield (problem, badge(answer.mode, answer.requested_high_res), transcript.messages, gallery,
                       token_report(answer.tokens, answer.latency_s, answer.turns), status_line(ctx), stored_id,
                       gr.Group(visible=stored_id is not None and ctx.may_rate(actor)), "")
        except (ImageError, QuestionError) as exc:
            yield (error_box(str(exc)), "", transcript.messages, None, "", gr.skip(), None, hidden, "")
        except Exception as exc:  # the model or its server failed: say so on the page, keep the app up
            reference = log_incident(log, "The model failed while answering", exc)
            yield (error_box(f"The model could not answer this time (reference {reference}). Try again in a minute; "
                             "if it keeps happening, give the operator this reference."),
                   "", transcript.messages, None, "", gr.skip(), None, hidden, "")

    outputs = [error, decision, chat, seen, tokens, status, ask_id, rate_panel, rate_status]
    # The engine lets only VISIONTHINK_MODEL_CONCURRENCY episodes run at once across every page; this page queues
    # no more than that many of its own, so that the rest wait in Gradio's queue and see their place in it.
    ask.click(ask_handler, inputs=[image, question, mode, consent], outputs=outputs, api_name="ask",
              concurrency_limit=ctx.settings.model_concurrency, concurrency_id="model")
    question.submit(ask_handler, inputs=[image, question, mode, consent], outputs=outputs,
                    api_visibility="private", concurrency_id="model")

    def rate_handler(verdict: str):
        def handler(stored_id: int | None, corrected: str, decision_value: str | None, request: gr.Request,
                    profile: gr.OAuthProfile | None) -> str:
            if ctx.store is None or stored_id is None:
                return error_box("There is no stored answer to rate; ask a question first."), gr.skip(), gr.skip()
            try:
                ctx.store.rate(ctx.actor(request, profile), stored_id, verdict=verdict, reference_answer=corrected,
                               decision=decision_value, source="thumbs")
            except StoreError as exc:
                return error_box(str(exc)), gr.skip(), gr.skip()
            # One rating per answer from this page: the buttons come back with the next answer.
            return (note_box("Thank you: your rating is saved.", "vt-rate-saved"), gr.Button(interactive=False),
                    gr.Button(interactive=False))

        return handler

    rating_inputs, rating_outputs = [ask_id, correction, decision_label], [rate_status, up, down]
    up.click(rate_handler("correct"), inputs=rating_inputs, outputs=rating_outputs, api_name="rate_correct")
    down.click(rate_handler("incorrect"), inputs=rating_inputs, outputs=rating_outputs, api_name="rate_incorrect")
    ask.click(lambda: (gr.Button(interactive=True), gr.Button(interactive=True), "", None), outputs=[up, down, correction, decision_label],
              api_visibility="private", queue=False)


def _record(ctx: Context, answer, original, allow_training: bool, request, profile) -> tuple[int | None, str]:
    """Store the answer; a store failure is reported on the page but never hides the answer."""
    if ctx.store is None:
        return None, ""
    engine = ctx.slot.engine
    try:
        stored = ctx.store.record(answer, original, ctx.actor(request, profile), consent=allow_training,
                                  revision=engine.model_revision, source=engine.model_source)
    except StoreError as exc:
        return None, error_box(f"The answer could not be saved: {exc}")
    except Exception as exc:  # whatever the store failed on, the person still gets their answer
        reference = log_incident(log, "Storing an answer failed", exc)
        return None, error_box(f"The answer could not be saved (reference {reference}); ratings are off for it.")
    return stored, ""
