"""The VisionThink loop on a real (tiny, random) Qwen2.5-VL: real processor, real decoding, forced turns."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from tests.support.forcing import ANSWER_TURN, BAD_TOOL_TURN, TOOL_TURN, CountSteps, forcing_factory
from visionthink import protocol
from visionthink.backends import TransformersBackend
from visionthink.engine import (
    Done,
    Engine,
    GenerationSettings,
    HighResRequested,
    QuestionError,
    TextDelta,
    TurnFinished,
    TurnStarted,
    turns_from_json,
    turns_to_json,
)
from visionthink.images import ImageError, downsample, visual_tokens

SIZE = (448, 336)  # full: 16x12 = 192 visual tokens; 1/4: 224x168 -> 8x6 = 48


@pytest.fixture(scope="module")
def tiny_parts(tiny_model_dir):
    from visionthink.hf import load_model, load_processor

    return load_model(str(tiny_model_dir), device="cpu"), load_processor(str(tiny_model_dir))


class Recording:
    """Wraps a backend and keeps every request it was given (rendered text and images)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.pixel_limits = inner.pixel_limits
        self.requests: list[tuple[str, list[Image.Image]]] = []

    def generate(self, request):
        self.requests.append((request.conversation.render(), list(request.images)))
        yield from self.inner.generate(request)


def make_engine(tiny_parts, turns: list[str] | None, **kwargs) -> tuple[Engine, Recording]:
    model, processor = tiny_parts
    factory = forcing_factory(processor.tokenizer, turns) if turns else None
    backend = Recording(TransformersBackend(model, processor, "tiny", logits_processor_factory=factory))
    settings = kwargs.pop("settings", GenerationSettings(max_new_tokens=96))
    return Engine(backend, settings=settings, **kwargs), backend


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 255, size=(SIZE[1], SIZE[0], 3), dtype=np.uint8))


def test_tool_call_gets_the_full_image_in_turn_two(tiny_parts, picture):
    engine, backend = make_engine(tiny_parts, [TOOL_TURN, ANSWER_TURN])
    answer = engine.ask(picture, "What is the value of Beta in Q3?")

    assert [t.turn.kind for t in answer.turns] == ["tool_call", "answer"]
    assert answer.requested_high_res is True
    assert answer.stop_reason == "answer"
    assert answer.final_answer == "The value is \\boxed{44.6}"
    assert answer.boxed == "44.6"
    assert answer.turns[0].turn.think == "The labels are too small to read at this size."

    low, full = visual_tokens(224, 168), visual_tokens(*SIZE)
    assert (low, full) == (48, 192)
    # What the processor really produced for each turn: one grid in turn 1, two in turn 2.
    assert answer.turns[0].image_tokens == [low]
    assert answer.turns[1].image_tokens == [low, full]
    assert answer.turns[1].prompt_tokens > answer.turns[0].prompt_tokens + answer.turns[0].generated_tokens + full

    # The second request carries the 1/4 image and the untouched original, and the trained tool-response turn.
    (text1, images1), (text2, images2) = backend.requests
    assert [im.size for im in images1] == [(224, 168)]
    assert [im.size for im in images2] == [(224, 168), SIZE]
    assert np.array_equal(np.asarray(images2[1]), np.asarray(picture))
    assert np.array_equal(np.asarray(images2[0]), np.asarray(downsample(picture)))
    assert text2 == text1 + answer.turns[0].turn.text + protocol.IM_END + protocol.tool_response_turn()
    assert text2.count(protocol.IMAGE_PLACEHOLDER) == 2

    tokens = answer.tokens
    assert (tokens.low_res, tokens.high_res, tokens.used, tokens.full_res) == (low, full, low + full, full)
    assert tokens.saved == -low
    assert tokens.retained_ratio == pytest.approx((low + full) / full)


def test_direct_answer_uses_only_the_quarter_image(tiny_parts, picture):
    engine, backend = make_engine(tiny_parts, [ANSWER_TURN])
    answer = engine.ask(picture, "Is there a chart?")
    assert [t.turn.kind for t in answer.turns] == ["answer"]
    assert answer.requested_high_res is False
    assert len(backend.requests) == 1
    assert answer.turns[0].image_tokens == [48]
    t = answer.tokens
    assert (t.low_res, t.high_res, t.used, t.full_res, t.saved) == (48, 0, 48, 192, 144)
    assert t.retained_ratio == pytest.approx(0.25)


def test_low_mode_refuses_the_resize_with_an_error_turn(tiny_parts, picture):
    engine, backend = make_engine(tiny_parts, [TOOL_TURN, ANSWER_TURN])
    answer = engine.ask(picture, "What is the value?", mode="low")
    assert [t.turn.kind for t in answer.turns] == ["tool_call", "answer"]
    assert answer.requested_high_res is False
    assert answer.turns[1].image_tokens == [48]  # still only the 1/4 image
    text2 = backend.requests[1][0]
    assert "ERROR occurs during the function tool call" in text2
    assert "not available in this mode" in text2
    assert (answer.tokens.used, answer.tokens.full_res) == (48, 192)


def test_high_mode_is_one_pass_on_the_full_image(tiny_parts, picture):
    engine, backend = make_engine(tiny_parts, [ANSWER_TURN])
    answer = engine.ask(picture, "What is the value?", mode="high")
    assert [im.size for im in backend.requests[0][1]] == [SIZE]
    assert answer.turns[0].image_tokens == [192]
    t = answer.tokens
    assert (t.low_res, t.high_res, t.used, t.full_res, t.saved, t.retained_ratio) == (0, 192, 192, 192, 0, 1.0)


def test_tool_call_in_the_last_turn_ends_the_episode(tiny_parts, picture):
    engine, backend = make_engine(tiny_parts, [TOOL_TURN, TOOL_TURN])
    answer = engine.ask(picture, "What is the value?")
    assert [t.turn.kind for t in answer.turns] == ["tool_call", "tool_call"]
    assert answer.stop_reason == "tool_call_at_turn_limit"
    assert answer.final_answer is None
    assert len(backend.requests) == 2


def test_max_turns_is_configurable(tiny_parts, picture):
    engine, backend = make_engine(tiny_parts, [TOOL_TURN, ANSWER_TURN], max_turns=1)
    answer = engine.ask(picture, "What is the value?")
    assert answer.stop_reason == "tool_call_at_turn_limit"
    assert len(answer.turns) == 1 and len(backend.requests) == 1
    assert answer.requested_high_res is False


def test_invalid_tool_call_gets_the_error_turn(tiny_parts, picture):
    engine, backend = make_engine(tiny_parts, [BAD_TOOL_TURN, ANSWER_TURN])
    answer = engine.ask(picture, "What is the value?")
    assert answer.turns[0].turn.kind == "invalid"
    assert "annotate_image" in answer.turns[0].turn.reason
    assert answer.requested_high_res is False
    text1, _ = backend.requests[0]
    text2, images2 = backend.requests[1]
    expected = protocol.error_turn(answer.turns[0].turn.reason.rstrip("."))
    assert text2 == text1 + answer.turns[0].turn.text + protocol.IM_END + expected
    assert len(images2) == 1
    assert answer.final_answer == "The value is \\boxed{44.6}"


def test_stream_events_in_order(tiny_parts, picture):
    engine, _ = make_engine(tiny_parts, [TOOL_TURN, ANSWER_TURN])
    events = list(engine.stream(picture, "What is the value?"))
    kinds = [type(e).__name__ for e in events if not isinstance(e, TextDelta)]
    assert kinds == ["TurnStarted", "TurnFinished", "HighResRequested", "TurnStarted", "TurnFinished", "Done"]
    starts = [e for e in events if isinstance(e, TurnStarted)]
    assert starts[0].image_sizes == ((224, 168),) and starts[1].image_sizes == ((224, 168), SIZE)
    high = next(e for e in events if isinstance(e, HighResRequested))
    assert (high.size, high.tokens) == (SIZE, 192)
    finished = [e.record for e in events if isinstance(e, TurnFinished)]
    for record in finished:
        streamed = "".join(e.text for e in events if isinstance(e, TextDelta) and e.index == record.index)
        assert streamed == record.turn.text
        assert len([e for e in events if isinstance(e, TextDelta) and e.index == record.index]) > 3
    assert isinstance(events[-1], Done) and events[-1].answer.turns == finished


def test_unconstrained_random_model_is_cut_off_cleanly(tiny_parts, picture):
    engine, _ = make_engine(tiny_parts, None, settings=GenerationSettings(max_new_tokens=12))
    answer = engine.ask(picture, "Anything?")
    assert answer.turns[0].generated_tokens <= 12
    assert answer.stop_reason in ("truncated", "invalid")
    assert answer.final_answer is None
    assert not any(tok in answer.turns[0].turn.text for tok in protocol.VISION_TOKENS)


def test_bad_inputs_are_refused_before_generation(tiny_parts, picture, tmp_path):
    engine, backend = make_engine(tiny_parts, [ANSWER_TURN])
    with pytest.raises(QuestionError, match="empty"):
        engine.ask(picture, "   ")
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ImageError, match="not an image"):
        engine.ask(bad, "What is it?")
    with pytest.raises(ImageError, match="200:1"):
        engine.ask(Image.new("RGB", (3000, 10)), "What is it?")
    with pytest.raises(QuestionError, match="mode"):
        engine.ask(picture, "What?", mode="medium")
    assert backend.requests == []


def test_closing_the_stream_stops_generation(tiny_parts, picture):
    """A consumer that goes away (a closed browser tab) must not leave the model generating."""
    model, processor = tiny_parts
    steps: list[int] = []
    backend = TransformersBackend(model, processor, "tiny", logits_processor_factory=lambda turn: [CountSteps(steps)])
    engine = Engine(backend, settings=GenerationSettings(max_new_tokens=2000))
    events = engine.stream(picture, "Anything?")
    for event in events:
        if isinstance(event, TextDelta):
            break
    events.close()  # closes the backend's decoding loop at its current token
    assert 0 < len(steps) < 200
    count = len(steps)
    import time

    time.sleep(0.3)
    assert len(steps) == count  # nothing is still generating in the background


# --- checked inputs and one model slot --------------------------------------------------------------------------


def test_prepare_inputs_bounds_and_cleans_the_question(picture):
    from visionthink.engine import InputLimits, prepare_inputs

    limits = InputLimits(max_question_chars=20)
    with pytest.raises(QuestionError, match="The question is 1,000,000 characters long; the limit is 20"):
        prepare_inputs(picture, "?" * 1_000_000, "auto", limits)
    inputs = prepare_inputs(picture, "  What\x00 is\ud800 it?  ", "low", limits)
    assert inputs.question == "What is\ufffd it?" and inputs.mode == "low"
    assert inputs.question.encode("utf-8")  # a lone surrogate could not be encoded
    with pytest.raises(ImageError, match="too large"):
        prepare_inputs(picture, "What?", "auto", InputLimits(max_image_pixels=1000))


def test_run_uses_the_checked_image_without_decoding_it_again(tiny_parts, picture, monkeypatch):
    import visionthink.engine as engine_module

    engine, _ = make_engine(tiny_parts, [ANSWER_TURN])
    inputs = engine.prepare(picture, "What is the value?", "auto")

    def no_second_decode(*args, **kwargs):
        raise AssertionError("the image was loaded a second time")

    monkeypatch.setattr(engine_module, "load_image", no_second_decode)
    done = [e for e in engine.run(inputs) if isinstance(e, Done)]
    assert done[0].answer.final_answer is not None and done[0].answer.original_size == SIZE


def test_a_second_episode_waits_for_the_model(tiny_parts, picture):
    """One model, one episode at a time (whichever page asks): the second waits, saying so about once a second, and
    one that gives up while waiting leaves the slot free."""
    from visionthink.engine import Waiting

    engine, backend = make_engine(tiny_parts, [TOOL_TURN, ANSWER_TURN])
    first = engine.stream(picture, "First?")
    assert isinstance(next(first), TurnStarted)  # the first episode holds the model from here ...
    second = engine.stream(picture, "Second?")
    assert isinstance(next(second), Waiting)  # ... so the second waits (about 1 s) instead of starting
    abandoned = engine.stream(picture, "Gives up?")
    assert isinstance(next(abandoned), Waiting)
    abandoned.close()
    rest = list(first)
    assert isinstance(rest[-1], Done) and len(backend.requests) == 2
    events = list(second)
    assert not any(isinstance(e, Waiting) for e in events[1:] if isinstance(e, TurnStarted))
    assert isinstance(events[-1], Done) and events[-1].answer.question == "Second?"
    assert [r[0].count("Second?") > 0 for r in backend.requests] == [False, False, True, True]


def test_model_concurrency_above_one_runs_episodes_together(tiny_parts, picture):
    from visionthink.engine import Waiting

    engine, _ = make_engine(tiny_parts, [ANSWER_TURN], max_concurrent=2)
    first = engine.stream(picture, "First?")
    next(first)
    second = engine.stream(picture, "Second?")
    assert isinstance(next(second), TurnStarted)
    assert not any(isinstance(e, Waiting) for e in [*first, *second])


def test_turns_read_back_as_they_were_written(tiny_parts, picture):
    engine, _ = make_engine(tiny_parts, [TOOL_TURN, ANSWER_TURN])
    answer = engine.ask(picture, "What is the value of Beta in Q3?")
    engine, _ = make_engine(tiny_parts, [ANSWER_TURN], settings=GenerationSettings(max_new_tokens=8))
    cut = engine.ask(picture, "What is the value of Beta in Q3?")
    assert cut.stop_reason == "truncated" and "8-token limit" in cut.turns[0].turn.reason
    for records in (answer.turns, cut.turns):
        stored = json.loads(json.dumps(turns_to_json(records)))
        assert turns_from_json(stored) == [replace(r, latency_s=round(r.latency_s, 4)) for r in records]
        assert turns_to_json(turns_from_json(stored)) == stored


def test_a_stored_turn_is_what_its_text_says():
    """The kind and parts come from the text, whatever was stored beside it; an invalid turn keeps its stored
    reason (a cut-off turn's names the token limit, which its text cannot tell)."""
    cut_off = "The turn was cut off at the 8-token limit before it finished."
    stored = [
        {"kind": "answer", "text": "<answer>44.6</answer>", "think": "made up", "answer": "44.6", "latency_s": 0.5},
        {"kind": "invalid", "text": TOOL_TURN, "reason": "stale", "generated_tokens": 30, "image_tokens": [48]},
        {"kind": "invalid", "text": "<think>Now the", "reason": cut_off, "finish_reason": "length"},
    ]
    first, second, third = turns_from_json(stored)
    assert first.turn == protocol.parse_turn("<answer>44.6</answer>") and first.turn.kind == "invalid"
    assert (first.index, first.latency_s, first.generated_tokens, first.finish_reason) == (0, 0.5, 0, "stop")
    assert second.turn == protocol.parse_turn(TOOL_TURN) and second.turn.reason is None
    assert (second.index, second.generated_tokens, second.image_tokens, second.prompt_tokens) == (1, 30, [48], None)
    assert third.turn.kind == "invalid" and third.turn.reason == cut_off and third.finish_reason == "length"
