"""The VisionThink loop: show the model the 1/4-resolution image, hand it the full image only when it asks.

``Engine.ask`` runs one episode and returns an ``Answer``; ``Engine.stream`` yields events as the episode runs,
for the UI; ``Engine.compare`` runs one question in every mode (VisionThink, the 1/4 image only, the full image
only), the comparison the method is about. A backend (local transformers or an OpenAI-compatible server, see ``visionthink.backends``) generates
one model turn at a time; everything else, the protocol, the turn budget and the token accounting, lives here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from PIL import Image as PILImage

from visionthink import protocol
from visionthink.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageError,
    TokenReport,
    downsample,
    full_resolution,
    load_image,
    visual_tokens,
)
from visionthink.text import MAX_QUESTION_CHARS, TextError, bounded_text

Mode = Literal["auto", "low", "high"]
MODES: tuple[Mode, ...] = ("auto", "low", "high")
#: Not a mode of an episode: every mode in turn, on the same image and question (``Engine.compare``).
COMPARE = "compare"
MODE_LABELS = {
    "auto": "VisionThink: 1/4 image first, the full image only when the model asks",
    "low": "1/4-resolution image only",
    "high": "Full-resolution image only (the baseline)",
}
#: Why an episode ended.
StopReason = Literal["answer", "tool_call_at_turn_limit", "invalid", "truncated"]

# What the model is told when it asks for the full image in a mode that cannot give it.
_NO_RESIZE_IN_MODE = {
    "low": "The full-resolution image is not available in this mode. Answer from the current image",
    "high": "The image is already at full resolution. Answer from the current image",
}


class QuestionError(ValueError):
    """A question that cannot be asked; the message is for a person."""


@dataclass(frozen=True)
class InputLimits:
    """What an episode accepts: images up to ``max_image_pixels`` (checked from the file's header, before decoding)
    and questions up to ``max_question_chars`` characters. The app, the terminal command and the engine all take
    them from the same ``Settings``."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_question_chars: int = MAX_QUESTION_CHARS


@dataclass(frozen=True)
class Inputs:
    """A checked question and its image, what an episode starts from (made by ``prepare_inputs``)."""

    image: PILImage.Image  # upright 8-bit RGB, within the pixel limit
    question: str  # stripped, cleaned of control characters, within the length limit
    mode: Mode


@dataclass(frozen=True)
class GenerationSettings:
    """How each model turn is sampled. Temperature 0 is greedy decoding, as in the paper's evaluation."""

    max_new_tokens: int = 2048
    temperature: float = 0.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")
        if self.temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or more, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")


# --- What a backend does ---------------------------------------------------------------------------------------


@dataclass
class TurnRequest:
    """One model turn to generate: the conversation so far and its images in slot order.

    ``carry`` is the same dict for every turn of one episode and is dropped with it: a backend may keep what it
    needs from one turn for the next there (the local backend keeps the turn's KV cache, so the next turn prefills
    only what it adds).

    ``upcoming`` holds the images that a tool call in this turn would add (the full image, in auto's turns before it
    was given). A backend may start preparing them while the turn runs; the model may well not ask for them.
    """

    conversation: protocol.Conversation
    images: list[PILImage.Image]
    settings: GenerationSettings
    turn_index: int
    carry: dict = field(default_factory=dict)
    upcoming: list[PILImage.Image] = field(default_factory=list)


@dataclass
class TurnOutput:
    """What a backend generated for one turn."""

    text: str  # without the end-of-turn token
    generated_tokens: int
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int | None = None
    image_tokens: list[int] | None = None  # visual tokens per image, as the backend's processor counted them
    #: Prompt tokens taken from the previous turn's KV cache instead of being prefilled again (local backend).
    reused_tokens: int = 0


class Backend(Protocol):
    """Generates model turns. ``generate`` yields text deltas (str) and, last, one ``TurnOutput``."""

    model_id: str
    pixel_limits: tuple[int, int]

    def generate(self, request: TurnRequest) -> Iterator[str | TurnOutput]: ...


# --- Results ---------------------------------------------------------------------------------------------------


@dataclass
class TurnRecord:
    """One model turn of an episode: the parsed turn and what it cost."""

    index: int
    turn: protocol.Turn
    latency_s: float
    generated_tokens: int
    finish_reason: str
    prompt_tokens: int | None = None
    image_tokens: list[int] | None = None  # visual tokens per image in context, as the backend counted them


def turns_to_json(records: list[TurnRecord]) -> list[dict]:
    """Turns as they are stored and exported (read back by ``turns_from_json``)."""
    return [
        {
            "kind": r.turn.kind,
            "think": r.turn.think,
            "text": r.turn.text,
            "answer": r.turn.answer,
            "boxed": r.turn.boxed,
            "reason": r.turn.reason,
            "latency_s": round(r.latency_s, 4),
            "generated_tokens": r.generated_tokens,
            "finish_reason": r.finish_reason,
            "prompt_tokens": r.prompt_tokens,
            "image_tokens": r.image_tokens,
        }
        for r in records
    ]


def turns_from_json(data: list[dict]) -> list[TurnRecord]:
    """Turns written by ``turns_to_json``: each is parsed again from its text, so its kind, think, answer and call
    always agree with it; an invalid turn keeps its stored reason (a cut-off turn's names the token limit, which
    the text cannot tell). Cost fields missing from older data read as unknown."""
    records = []
    for index, item in enumerate(data):
        turn = protocol.parse_turn(item.get("text", ""))
        if turn.kind == "invalid" and item.get("reason"):
            turn = replace(turn, reason=item["reason"])
        records.append(TurnRecord(
            index=index, turn=turn, latency_s=item.get("latency_s", 0.0),
            generated_tokens=item.get("generated_tokens", 0), finish_reason=item.get("finish_reason", "stop"),
            prompt_tokens=item.get("prompt_tokens"), image_tokens=item.get("image_tokens"),
        ))
    return records


@dataclass
class Answer:
    """One VisionThink episode: every turn, the final answer, the resolution decision and the token report."""

    question: str
    mode: Mode
    model: str
    turns: list[TurnRecord]
    final_answer: str | None  # the last turn's answer; None when the episode ended without one
    requested_high_res: bool
    tokens: TokenReport
    latency_s: float
    stop_reason: StopReason
    original_size: tuple[int, int]
    #: The images the model received, in order (the first is the 1/4 image in "auto" and "low" modes).
    seen_images: list[PILImage.Image] = field(default_factory=list, repr=False, compare=False)

    @property
    def boxed(self) -> str | None:
        return self.turns[-1].turn.boxed if self.final_answer is not None else None

    def to_json(self) -> dict:
        return {
            "answer": self.final_answer,
            "requested_high_res": self.requested_high_res,
            "turns": turns_to_json(self.turns),
            "tokens": self.tokens.to_dict(),
            "latency_s": round(self.latency_s, 4),
            "model": self.model,
            "mode": self.mode,
            "stop_reason": self.stop_reason,
        }


# --- Events for streaming --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TurnStarted:
    index: int
    image_sizes: tuple[tuple[int, int], ...]  # every image in context for this turn


@dataclass(frozen=True)
class TextDelta:
    index: int
    text: str


@dataclass(frozen=True)
class TurnFinished:
    record: TurnRecord


@dataclass(frozen=True)
class HighResRequested:
    """The model called ``resize_image`` and the full-resolution image is added to the next turn."""

    index: int  # the turn that asked
    size: tuple[int, int]
    tokens: int


@dataclass(frozen=True)
class Done:
    answer: Answer


@dataclass(frozen=True)
class Waiting:
    """The model is busy with other episodes; this one starts when a slot frees (sent about once a second)."""

    waited_s: float


Event = Waiting | TurnStarted | TextDelta | TurnFinished | HighResRequested | Done


# --- The engine ------------------------------------------------------------------------------------------------


class Engine:
    """Runs VisionThink episodes on a backend."""

    def __init__(
        self,
        backend: Backend,
        *,
        settings: GenerationSettings | None = None,
        max_turns: int = 2,
        limits: InputLimits | None = None,
        max_concurrent: int = 1,
        notice: str | None = None,
        model_source: str = "local",
        model_revision: str = "",
    ) -> None:
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}.")
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, got {max_concurrent}.")
        self.backend = backend
        self.settings = settings or GenerationSettings()
        self.max_turns = max_turns
        self.limits = limits or InputLimits()
        #: Episodes this model runs at once, whoever asks (every page and tab shares the one engine): the rest wait.
        self.max_concurrent = max_concurrent
        self._slots = threading.BoundedSemaphore(max_concurrent)
        #: A message for people about this engine (e.g. that it fell back to the embedded miniature).
        self.notice = notice
        #: Where the model came from (hub, local, server, miniature) and its revision, recorded with stored answers.
        self.model_source = model_source
        self.model_revision = model_revision

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def ask(self, image, question: str, mode: Mode = "auto", *, settings: GenerationSettings | None = None) -> Answer:
        """Run one episode and return its ``Answer``. ``image`` is a path, bytes or a PIL image."""
        for event in self.stream(image, question, mode, settings=settings):
            if isinstance(event, Done):
                return event.answer
        raise RuntimeError("The episode ended without a result.")  # unreachable: stream always ends with Done

    def prepare(self, image, question: str, mode: Mode) -> Inputs:
        """Validate the inputs before any model work; raises ``ImageError`` or ``QuestionError`` for people."""
        return prepare_inputs(image, question, mode, self.limits)

    def stream(
        self, image, question: str, mode: Mode = "auto", *, settings: GenerationSettings | None = None
    ) -> Iterator[Event]:
        """Check the inputs, then run one episode, yielding events; the last event is ``Done`` with the ``Answer``."""
        yield from self.run(self.prepare(image, question, mode), settings=settings)

    def run(self, inputs: Inputs, *, settings: GenerationSettings | None = None) -> Iterator[Event]:
        """Run one episode on inputs already checked by ``prepare_inputs`` (they are not decoded or checked again).

        The episode waits for a free slot of this model first (``Waiting`` events, about once a second), so that
        no more than ``max_concurrent`` episodes run at once; closing the generator while it waits gives up.
        """
        started = time.perf_counter()
        while not self._slots.acquire(timeout=1.0):
            yield Waiting(time.perf_counter() - started)
        try:
            yield from self._episode(inputs, settings or self.settings)
        finally:
            self._slots.release()

    def compare(self, inputs: Inputs, *, settings: GenerationSettings | None = None
                ) -> Iterator[tuple[Mode, Event]]:
        """Run ``inputs`` in every mode, one after the other (``MODES`` order), yielding each event with its mode.

        Each episode takes a slot of the model on its own (see ``run``), so other people's questions are not held
        up for the whole comparison. ``inputs.mode`` is ignored.
        """
        for mode in MODES:
            for event in self.run(replace(inputs, mode=mode), settings=settings):
                yield mode, event

    def _episode(self, inputs: Inputs, settings: GenerationSettings) -> Iterator[Event]:
        original, question, mode = inputs.image, inputs.question, inputs.mode
        min_pixels, max_pixels = self.backend.pixel_limits
        full = full_resolution(original)
        full_tokens = visual_tokens(*full.size, min_pixels, max_pixels)
        images = [full if mode == "high" else downsample(original)]  # high never needs the 1/4 image
        conversation = protocol.Conversation.start(question)
        turns: list[TurnRecord] = []
        requested_high_res = False
        stop_reason: StopReason = "invalid"
        started = time.perf_counter()
        carry: dict = {}  # the backend's state between this episode's turns

        for index in range(self.max_turns):
            yield TurnStarted(index, tuple(im.size for im in images))
            turn_started = time.perf_counter()
            output: TurnOutput | None = None
            # the full image a tool call would bring, when this turn may still ask for it
            upcoming = [full] if mode == "auto" and not requested_high_res and index < self.max_turns - 1 else []
            request = TurnRequest(conversation, list(images), settings, index, carry, upcoming)
            for item in self.backend.generate(request):
                if isinstance(item, TurnOutput):
                    output = item
                elif item:
                    yield TextDelta(index, item)
            if output is None:
                raise RuntimeError(f"The backend {type(self.backend).__name__} returned no turn output.")
            record = _record(index, output, time.perf_counter() - turn_started, settings)
            turns.append(record)
            conversation.add_model_turn(output.text)
            yield TurnFinished(record)

            kind = record.turn.kind
            if kind == "answer":
                stop_reason = "answer"
                break
            if output.finish_reason == "length" and kind == "invalid":
                stop_reason = "truncated"
                break
            if index == self.max_turns - 1:
                stop_reason = "tool_call_at_turn_limit" if kind == "tool_call" else "invalid"
                break
            followup = continue_conversation(conversation, record.turn, mode)
            if followup == "end":
                stop_reason = "invalid"  # neither an answer nor a call: nothing to respond to
                break
            if followup == "full_image":
                images.append(full)
                requested_high_res = True
                yield HighResRequested(index, full.size, full_tokens)

        first_tokens = visual_tokens(*images[0].size, min_pixels, max_pixels)
        if mode == "high":
            report = TokenReport.build(low_res=0, high_res=first_tokens, full_res=full_tokens)
        else:
            report = TokenReport.build(
                low_res=first_tokens, high_res=full_tokens if requested_high_res else 0, full_res=full_tokens
            )
        final = turns[-1].turn
        answer = Answer(
            question=question,
            mode=mode,
            model=self.model_id,
            turns=turns,
            final_answer=final.answer if final.kind == "answer" else None,
            requested_high_res=requested_high_res,
            tokens=report,
            latency_s=time.perf_counter() - started,
            stop_reason=stop_reason,
            original_size=original.size,
            seen_images=images,
        )
        yield Done(answer)


def continue_conversation(conversation: protocol.Conversation, turn: protocol.Turn, mode: Mode) -> str:
    """Append what follows a model turn that neither answered nor used the last turn.

    Returns "full_image" (a resize in auto mode: the tool response with the next image), "error" (the trained
    error turn: an invalid call, or a resize that ``mode`` cannot honour) or "end" (nothing to respond to).
    """
    if turn.kind == "tool_call":
        if mode == "auto":
            conversation.add_tool_response()
            return "full_image"
        conversation.add_error(_NO_RESIZE_IN_MODE[mode])
        return "error"
    error = protocol.call_error(turn)
    if error is not None:
        conversation.add_error(error)
        return "error"
    return "end"


def replay(question: str, mode: Mode, turns: list[protocol.Turn]) -> protocol.Conversation | None:
    """The conversation the model saw before its final turn, rebuilt from a recorded episode's turns; None when
    they could not have come from ``Engine.stream`` (then nothing is guessed)."""
    conversation = protocol.Conversation.start(question)
    try:
        for turn in turns[:-1]:
            conversation.add_model_turn(turn.text)
            if continue_conversation(conversation, turn, mode) == "end":
                return None
    except (KeyError, ValueError):
        return None
    return conversation


def prepare_inputs(image, question: str, mode: Mode = "auto", limits: InputLimits | None = None) -> Inputs:
    """Check a question and load its image, without a model; raises ``ImageError`` or ``QuestionError``.

    The question is checked first (cheap), then the image's size from its header, and only then is it decoded.
    """
    limits = limits or InputLimits()
    if mode not in MODES:
        raise QuestionError(f"Unknown mode {mode!r}; choose one of {', '.join(MODES)}.")
    try:
        question = bounded_text(question, limit=limits.max_question_chars, what="question").strip()
        if question:
            protocol.problem_text(question)
    except (TextError, ValueError) as exc:
        raise QuestionError(str(exc)) from exc
    if not question:
        raise QuestionError("The question is empty. Type what you want to know about the image.")
    if image is None:
        raise ImageError("No image was given. Upload an image or pick an example.")
    original = load_image(image, max_pixels=limits.max_image_pixels)
    downsample(original)  # raises ImageError for aspect ratios the model refuses
    return Inputs(original, question, mode)


def _record(index: int, output: TurnOutput, latency_s: float, settings: GenerationSettings) -> TurnRecord:
    turn = protocol.parse_turn(output.text)
    if turn.kind == "invalid" and output.finish_reason == "length":
        cut = f"The turn was cut off at the {settings.max_new_tokens}-token limit before it finished."
        turn = replace(turn, reason=f"{cut} {turn.reason}")
    return TurnRecord(
        index=index, turn=turn, latency_s=latency_s, generated_tokens=output.generated_tokens,
        finish_reason=output.finish_reason, prompt_tokens=output.prompt_tokens, image_tokens=output.image_tokens,
    )
