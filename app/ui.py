"""The demo page: upload an image, ask, and watch the VisionThink loop. Handlers only call the engine and render."""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr

from app.examples import Example
from app.model_slot import ModelSlot
from app.render import Transcript, badge, text, token_report
from visionthink.engine import MODE_LABELS, Done, QuestionError, prepare_inputs
from visionthink.images import ImageError

TITLE = "VisionThink Studio"
INTRO = (
    "VisionThink first looks at your image at **half width and half height** (about 1/4 of the visual tokens) and "
    "answers directly when that is enough. When it is not (small text, charts), it calls a `resize_image` tool and "
    "gets the **full-resolution image** in a second turn. Below you see its reasoning, its decision and what it cost."
)
LOAD_WAIT_S = 1.0

CSS = """
.vt-notice {border-left: 4px solid #b45309; padding: 8px 12px; background: #fffbeb; color: #78350f}
.vt-error {border-left: 4px solid #b91c1c; padding: 8px 12px; background: #fef2f2; color: #7f1d1d}
"""


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


def _status_line(slot: ModelSlot) -> str:
    status = slot.status()
    if status.state == "loading":
        return f"⏳ {text(status.message)} ({status.elapsed_s:.0f} s)"
    if status.state == "failed":
        return f"❌ {text(status.message)}"
    engine = slot.engine
    warning = " ⚠️ A stand-in model: its answers are meaningless (see the note below)." if engine.notice else ""
    return f"✅ Model: `{text(engine.model_id)}` — ready.{warning}"


def _notice(slot: ModelSlot) -> str:
    engine = slot.engine
    if engine is None or not engine.notice:
        return ""
    return f'<div class="vt-notice" id="vt-notice">⚠️ {text(engine.notice)}</div>'


def _error(message: str) -> str:
    return f'<div class="vt-error" id="vt-error">{text(message)}</div>'


def build_demo(slot: ModelSlot, examples: list[Example] | None = None) -> gr.Blocks:
    """The Blocks for the demo page. ``slot`` provides the engine (loaded in the background)."""
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        status = gr.Markdown(_status_line(slot), elem_id="vt-status")
        notice = gr.HTML(_notice(slot), elem_id="vt-notice-box")
        with gr.Row():
            with gr.Column(scale=5):
                image = UploadedImage(type="filepath", label="Image", sources=["upload", "clipboard"], height=360,
                                      image_mode=None, elem_id="vt-image")
                question = gr.Textbox(label="Question", placeholder="What does the small print say?", lines=2)
                mode = gr.Radio(
                    [(label, key) for key, label in MODE_LABELS.items()], value="auto", label="Resolution"
                )
                ask = gr.Button("Ask", variant="primary", elem_id="ask-button")
                if examples:
                    gr.Examples([[str(e.path), e.question] for e in examples], inputs=[image, question],
                                label="Examples (drawn by the project)")
            with gr.Column(scale=7):
                error = gr.HTML("", elem_id="vt-error-box")
                decision = gr.HTML("", elem_id="vt-badge-box")
                chat = gr.Chatbot(label="Reasoning", height=460, elem_id="vt-chat", feedback_options=None,
                                  buttons=["copy"])
                seen = gr.Gallery(label="What the model saw first, and the original", columns=2, height="auto",
                                  elem_id="vt-seen", object_fit="contain", format="png", preview=False)
                tokens = gr.HTML("", elem_id="vt-tokens-box")

        def refresh_status():
            done = slot.status().state != "loading"
            return _status_line(slot), _notice(slot), gr.Timer(active=not done)

        timer = gr.Timer(1.0, active=slot.status().state == "loading")
        timer.tick(refresh_status, outputs=[status, notice, timer], api_visibility="private", queue=False)

        def ask_handler(image_path: str | None, question_text: str, mode_key: str) -> Iterator[tuple]:
            """Stream one VisionThink episode into the chat, badge, images and token report."""
            try:
                original, question_clean = prepare_inputs(image_path, question_text, mode_key)
            except (ImageError, QuestionError) as exc:
                yield (_error(str(exc)), "", [], None, "", gr.skip())
                return
            engine = slot.engine
            while engine is None:
                yield ("", "", [], None, "", _status_line(slot))
                try:
                    engine = slot.wait(LOAD_WAIT_S)
                except RuntimeError as exc:
                    yield (_error(str(exc)), "", [], None, "", _status_line(slot))
                    return
            transcript = Transcript(question_clean)
            yield ("", "", transcript.messages, None, "", _status_line(slot))
            try:
                for event in engine.stream(original, question_clean, mode_key):
                    transcript.apply(event)
                    if isinstance(event, Done):
                        answer = event.answer
                        w, h = answer.seen_images[0].size
                        gallery = [(answer.seen_images[0], f"Seen first: {w}×{h}"),
                                   (original, f"Original: {original.size[0]}×{original.size[1]}")]
                        yield ("", badge(answer), transcript.messages, gallery, token_report(answer),
                               _status_line(slot))
                    else:
                        yield ("", "", transcript.messages, gr.skip(), "", gr.skip())
            except (ImageError, QuestionError) as exc:
                yield (_error(str(exc)), "", transcript.messages, None, "", gr.skip())
            except Exception as exc:  # the model or server failed: say so on the page, keep the app up
                yield (_error(f"The model failed while answering: {exc}"), "", transcript.messages, None, "",
                       gr.skip())

        ask.click(
            ask_handler,
            inputs=[image, question, mode],
            outputs=[error, decision, chat, seen, tokens, status],
            api_name="ask",
            concurrency_limit=1,
            concurrency_id="model",
        )
        question.submit(
            ask_handler,
            inputs=[image, question, mode],
            outputs=[error, decision, chat, seen, tokens, status],
            api_visibility="private",
            concurrency_id="model",
        )
    return demo


def launch_kwargs() -> dict:
    """Launch options shared by app.py and the tests."""
    return {"css": CSS, "run_history": False, "footer_links": ["api", "gradio", "settings"]}
