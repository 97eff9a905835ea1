"""The local backend's decoding loop on a real (tiny, random) Qwen2.5-VL: it chooses what ``model.generate`` chooses
(greedy and seeded sampling, scores within 1e-4), takes nothing from the checkpoint's generation config, streams
the same text inline or from its own thread, and stops when its consumer goes away."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from tests.support.forcing import BAD_TOOL_TURN, TOOL_TURN, CountSteps, ForceText, Record
from visionthink import protocol
from visionthink.backends import TransformersBackend
from visionthink.engine import GenerationSettings, TurnOutput, TurnRequest
from visionthink.hf import load_model, load_processor

STEPS = 24


@pytest.fixture(scope="module")
def parts(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu"), load_processor(str(tiny_model_dir))


@pytest.fixture(scope="module")
def picture() -> Image.Image:
    rng = np.random.default_rng(11)
    return Image.fromarray(rng.integers(0, 255, size=(336, 448, 3), dtype=np.uint8))


class NoStop(LogitsProcessor):
    """Bans the end-of-turn tokens and every token this turn already chose, so that both sides decode exactly
    ``STEPS`` different tokens of the random model's (whose own greedy choice is one newline after another)."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.start: int | None = None

    def __call__(self, input_ids, scores):
        self.start = input_ids.shape[1] if self.start is None else self.start
        scores = scores.clone()
        scores[:, self.ids] = float("-inf")
        scores[:, input_ids[0, self.start:]] = float("-inf")
        return scores


def stop_ids(processor) -> list[int]:
    return [processor.tokenizer.convert_tokens_to_ids(t) for t in protocol.STOP_STRINGS]


def request(picture, settings: GenerationSettings) -> TurnRequest:
    return TurnRequest(conversation=protocol.Conversation.start("What does the small print say?"), images=[picture],
                       settings=settings, turn_index=0)


def backend_turn(parts, picture, settings, **kwargs) -> tuple[list[int], str, list[torch.Tensor], TurnOutput]:
    """One turn through the backend: its tokens, its streamed text, the scores of each step, and its output."""
    model, processor = parts
    scores: list[torch.Tensor] = []
    backend = TransformersBackend(model, processor, "tiny", reuse_kv=True, **kwargs,
                                  logits_processor_factory=lambda turn: [NoStop(stop_ids(processor)), Record(scores)])
    turn = request(picture, settings)
    items = list(backend.generate(turn))
    output = items[-1]
    tokens = turn.carry["transformers_kv"]["ids"][0, -output.generated_tokens:].tolist()
    return tokens, "".join(items[:-1]), scores, output


def generate_turn(parts, picture, settings, *, spelled_out: bool = True) -> tuple[list[int], list[torch.Tensor]]:
    """The same turn through ``model.generate``, every setting spelled out (or, with ``spelled_out=False``, the
    repetition penalty and top-k left to the model's generation config)."""
    model, processor = parts
    inputs = processor(text=[request(picture, settings).conversation.render()], images=[picture], return_tensors="pt")
    scores: list[torch.Tensor] = []
    sampling = settings.temperature > 0
    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens, do_sample=sampling, temperature=settings.temperature or None,
        top_p=settings.top_p if sampling else None, top_k=(0 if sampling else None) if spelled_out else None,
        repetition_penalty=1.0 if spelled_out else None,
        eos_token_id=stop_ids(processor), pad_token_id=stop_ids(processor)[-1],
        suppress_tokens=[processor.tokenizer.convert_tokens_to_ids(t) for t in protocol.VISION_TOKENS])
    with torch.inference_mode():
        out = model.generate(**inputs, generation_config=config,
                             logits_processor=LogitsProcessorList([NoStop(stop_ids(processor)), Record(scores)]))
    return out[0, inputs["input_ids"].shape[1]:].tolist(), scores


def test_greedy_decoding_chooses_what_generate_chooses(parts, picture):
    settings = GenerationSettings(max_new_tokens=STEPS)
    tokens, text, scores, output = backend_turn(parts, picture, settings)
    expected, expected_scores = generate_turn(parts, picture, settings)
    assert len(tokens) == STEPS and output.generated_tokens == STEPS and output.finish_reason == "length"
    assert len(set(tokens)) == STEPS
    assert tokens == expected
    assert len(scores) == len(expected_scores) == STEPS
    for step, (a, b) in enumerate(zip(scores, expected_scores)):
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite)
        assert (a[finite] - b[finite]).abs().max().item() < 1e-4, f"step {step}"
    assert text == output.text == parts[1].tokenizer.decode(tokens, skip_special_tokens=False)


class PreferVision(LogitsProcessor):
    """Keeps a copy of the scores it receives, then makes the vision tokens by far the likeliest choice."""

    def __init__(self, ids: list[int], into: list) -> None:
        self.ids, self.into = ids, into

    def __call__(self, input_ids, scores):
        self.into.append(scores.clone())
        scores = scores.clone()
        scores[:, self.ids] += 1e4
        return scores


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_vision_tokens_are_never_chosen(parts, picture, temperature):
    """The vision tokens come out as -inf before any other processor sees the scores, whatever it adds to them, and
    every other token keeps a finite score."""
    model, processor = parts
    vision = [processor.tokenizer.convert_tokens_to_ids(t) for t in protocol.VISION_TOKENS]
    seen: list[torch.Tensor] = []
    backend = TransformersBackend(model, processor, "tiny",
                                  logits_processor_factory=lambda turn: [PreferVision(vision, seen)])
    torch.manual_seed(3)
    turn = request(picture, GenerationSettings(max_new_tokens=8, temperature=temperature))
    output = list(backend.generate(turn))[-1]
    tokens = turn.carry["transformers_kv"]["ids"][0, -output.generated_tokens:].tolist()
    assert output.generated_tokens >= 1 and len(seen) == output.generated_tokens
    assert not set(tokens) & set(vision)
    for scores in seen:
        assert torch.isneginf(scores[0, vision]).all()
        assert torch.isfinite(scores[0]).sum() == scores.shape[-1] - len(vision)


def test_seeded_sampling_draws_what_generate_draws(parts, picture):
    settings = GenerationSettings(max_new_tokens=STEPS, temperature=1.5, top_p=0.9)
    draws = []
    for _ in range(2):
        torch.manual_seed(5)
        draws.append(backend_turn(parts, picture, settings)[0])
    torch.manual_seed(5)
    expected, _ = generate_turn(parts, picture, settings)
    torch.manual_seed(6)
    other = backend_turn(parts, picture, settings)[0]
    greedy = backend_turn(parts, picture, GenerationSettings(max_new_tokens=STEPS))[0]
    assert draws[0] == draws[1] == expected
    assert other != expected and greedy != expected  # the seed and the temperature both matter


def test_the_checkpoints_generation_config_changes_nothing(parts, picture):
    """A checkpoint may ship sampling defaults (Qwen2.5-VL-7B-Instruct's: a repetition penalty, top-k 1), which
    ``generate`` applies wherever its caller left a value unset; the backend decodes by its settings alone."""
    model, _ = parts
    settings = GenerationSettings(max_new_tokens=STEPS)
    before = backend_turn(parts, picture, settings)[0]
    shipped = model.generation_config
    model.generation_config = GenerationConfig(**{**shipped.to_dict(), "repetition_penalty": 3.0})
    try:
        after = backend_turn(parts, picture, settings)[0]
        penalised, _ = generate_turn(parts, picture, settings, spelled_out=False)
    finally:
        model.generation_config = shipped
    assert after == before
    assert penalised != before  # the shipped penalty would have changed this turn


@pytest.mark.parametrize("thread", [False, True])
def test_inline_and_threaded_decoding_stream_the_same_turn(parts, picture, thread):
    settings = GenerationSettings(max_new_tokens=STEPS)
    inline = backend_turn(parts, picture, settings, decode_thread=False)
    other = backend_turn(parts, picture, settings, decode_thread=thread)
    assert other[0] == inline[0] and other[1] == inline[1] == other[3].text


@pytest.mark.parametrize("thread", [False, True])
def test_a_consumer_that_stops_stops_decoding(parts, picture, thread):
    model, processor = parts
    steps: list[int] = []
    backend = TransformersBackend(model, processor, "tiny", decode_thread=thread,
                                  logits_processor_factory=lambda turn: [NoStop(stop_ids(processor)),
                                                                         CountSteps(steps)])
    stream = backend.generate(request(picture, GenerationSettings(max_new_tokens=2000)))
    next(stream)
    stream.close()
    count = len(steps)
    assert 0 < count < 50
    time.sleep(0.3)
    assert len(steps) == count
    assert not any(t.name == "visionthink-decode" for t in threading.enumerate())
    assert backend._lock.acquire(blocking=False)  # the model is free for the next episode


class Broken(LogitsProcessor):
    def __call__(self, input_ids, scores):
        raise RuntimeError("the logits processor broke")


@pytest.mark.parametrize("thread", [False, True])
def test_a_failure_while_decoding_reaches_the_consumer(parts, picture, thread):
    model, processor = parts
    backend = TransformersBackend(model, processor, "tiny", decode_thread=thread,
                                  logits_processor_factory=lambda turn: [Broken()])
    with pytest.raises(RuntimeError, match="the logits processor broke"):
        list(backend.generate(request(picture, GenerationSettings(max_new_tokens=8))))
    assert backend._lock.acquire(blocking=False)


def test_decode_thread_is_checked(parts):
    with pytest.raises(ValueError, match="decode_thread"):
        TransformersBackend(*parts, "tiny", decode_thread="sometimes")
    assert TransformersBackend(*parts, "tiny").decode_thread is False  # "auto": a thread only on a GPU


# --- the tool call's draft -------------------------------------------------------------------------------------


class Forwards:
    """Counts the model's forward calls."""

    def __init__(self, model) -> None:
        self.count = 0
        self.handle = model.register_forward_pre_hook(lambda module, args: self.__setattr__("count", self.count + 1))

    def close(self) -> None:
        self.handle.remove()


def forced_turn(parts, picture, text: str, *, draft: bool, temperature: float = 0.0) -> dict:
    """One turn forced to write ``text``: its tokens, text, scores, cache length and forward calls."""
    model, processor = parts
    scores: list[torch.Tensor] = []
    forced = processor.tokenizer.encode(text, add_special_tokens=False)
    end = processor.tokenizer.convert_tokens_to_ids(protocol.IM_END)
    backend = TransformersBackend(model, processor, "tiny", draft_tool_call=draft,
                                  logits_processor_factory=lambda turn: [ForceText(forced, end), Record(scores)])
    turn = request(picture, GenerationSettings(max_new_tokens=len(forced) + 8, temperature=temperature))
    forwards = Forwards(model)
    try:
        output = list(backend.generate(turn))[-1]
    finally:
        forwards.close()
    kept = turn.carry["transformers_kv"]
    return {"tokens": kept["ids"][0, -output.generated_tokens:].tolist(), "text": output.text, "scores": scores,
            "ids": kept["ids"].shape[1], "cached": kept["cache"].get_seq_length(), "forwards": forwards.count,
            "draft": len(backend._tool_call_draft or [])}


def test_a_tool_call_is_checked_in_one_forward(parts, picture):
    drafted = forced_turn(parts, picture, TOOL_TURN, draft=True)
    stepped = forced_turn(parts, picture, TOOL_TURN, draft=False)
    assert drafted["tokens"] == stepped["tokens"] and drafted["text"] == stepped["text"] == TOOL_TURN
    assert drafted["draft"] > 20  # the call after "<tool_call>" and the end-of-turn token
    # one forward per token but the last without the draft; the draft's tokens all came from one forward
    assert stepped["forwards"] == len(stepped["tokens"])
    assert stepped["forwards"] - drafted["forwards"] == drafted["draft"] - 1
    assert drafted["cached"] == stepped["cached"] == drafted["ids"] - 1  # every token but the last, for turn 2
    for step, (a, b) in enumerate(zip(drafted["scores"], stepped["scores"], strict=True)):
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite)
        assert (a[finite] - b[finite]).abs().max().item() < 1e-4, f"step {step}"


def test_a_call_that_leaves_the_draft_goes_on_token_by_token(parts, picture):
    """A call to another tool shares only its first tokens with the draft: the rest is cut from the cache."""
    drafted = forced_turn(parts, picture, BAD_TOOL_TURN, draft=True)
    stepped = forced_turn(parts, picture, BAD_TOOL_TURN, draft=False)
    assert drafted["tokens"] == stepped["tokens"] and drafted["text"] == BAD_TOOL_TURN
    assert drafted["cached"] == stepped["cached"] == drafted["ids"] - 1
    draft = parts[1].tokenizer.encode(protocol.tool_call_text(), add_special_tokens=False)
    after = drafted["tokens"][drafted["tokens"].index(draft[0]) + 1:]
    shared = next(i for i, (a, b) in enumerate(zip(after, draft[1:])) if a != b)
    assert 0 < shared < drafted["draft"] - 1
    assert stepped["forwards"] - drafted["forwards"] == shared  # one forward saved per token the draft had right


def test_sampling_draws_token_by_token(parts, picture):
    drafted = forced_turn(parts, picture, TOOL_TURN, draft=True, temperature=0.7)
    assert drafted["text"] == TOOL_TURN and drafted["forwards"] == len(drafted["tokens"])
