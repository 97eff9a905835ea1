"""Turn-1 KV reuse in the local backend: turn 2 continues from turn 1's cache, prefilling only what it adds, and
gives what a full re-prefill gives: the same greedy tokens and logits within 1e-4 (real tiny Qwen2.5-VL, real
processor, the backend's real decoding; turn 1 is forced to call the tool, turn 2 is the random model's own greedy
answer)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tests.support.forcing import TOOL_TURN, ForceText, Record
from visionthink import protocol
from visionthink.backends import TransformersBackend
from visionthink.engine import Engine, GenerationSettings, TurnFinished
from visionthink.hf import load_model, load_processor


@pytest.fixture(scope="module")
def parts(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu"), load_processor(str(tiny_model_dir))


class Spy(TransformersBackend):
    """The real backend, keeping each turn's output (for how many prompt tokens came from the cache)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.outputs: list = []
        self.carries: list[dict] = []

    def _generate_turn_locked(self, request):
        self.carries.append(request.carry)
        for item in super()._generate_turn_locked(request):
            if not isinstance(item, str):
                self.outputs.append(item)
            yield item


def run(parts, image: Image.Image, question: str, *, reuse: bool, mode: str = "auto", early: bool = False):
    """One episode: turn 1 forced to call resize_image; turn 2 free (greedy), its scores recorded."""
    model, processor = parts
    scores: list[torch.Tensor] = []
    tool = processor.tokenizer.encode(TOOL_TURN, add_special_tokens=False)
    end = processor.tokenizer.convert_tokens_to_ids(protocol.IM_END)

    def factory(turn_index: int) -> list:
        return [ForceText(tool, end)] if turn_index == 0 else [Record(scores)]

    backend = Spy(model, processor, "tiny", logits_processor_factory=factory, reuse_kv=reuse, early_encode=early)
    engine = Engine(backend, settings=GenerationSettings(max_new_tokens=len(tool) + 1))
    turns = [e.record for e in engine.stream(image, question, mode) if isinstance(e, TurnFinished)]
    first, second = backend.outputs
    # with reuse, turn 2 took every token of turn 1 but its last from the cache; without, none
    assert second.reused_tokens == ((first.prompt_tokens + first.generated_tokens - 1) if reuse else 0)
    return turns, scores


def noise(width: int, height: int, seed: int) -> Image.Image:
    rng = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 255, (height, width, 3), generator=rng, dtype=torch.uint8).numpy())


@pytest.mark.parametrize("size", [(448, 336), (640, 480), (300, 900), (1024, 768)])
def test_turn_two_from_the_cache_equals_a_full_re_prefill(parts, size):
    image = noise(*size, seed=size[0])
    again, expected = run(parts, image, "What does the small print say?", reuse=False)
    reused, got = run(parts, image, "What does the small print say?", reuse=True)
    assert [t.turn.kind for t in reused][:1] == ["tool_call"] and len(reused) == 2
    assert reused[1].turn.text == again[1].turn.text  # the same greedy tokens
    assert len(got) == len(expected) > 0
    for step, (a, b) in enumerate(zip(got, expected)):
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite)
        assert (a[finite] - b[finite]).abs().max().item() < 1e-4, f"step {step}"


def test_turn_two_prefills_only_what_it_adds(parts):
    """Only the tail is prefilled: the end of turn 1, the tool response and the full image (192 visual tokens)."""
    model, processor = parts
    tool = processor.tokenizer.encode(TOOL_TURN, add_special_tokens=False)
    end = processor.tokenizer.convert_tokens_to_ids(protocol.IM_END)
    backend = Spy(model, processor, "tiny", reuse_kv=True,
                  logits_processor_factory=lambda i: [ForceText(tool, end)] if i == 0 else [])
    Engine(backend, settings=GenerationSettings(max_new_tokens=len(tool) + 1)).ask(noise(448, 336, seed=7), "Read it.")
    first, second = backend.outputs[:2]
    assert first.reused_tokens == 0
    tail = second.prompt_tokens - second.reused_tokens
    assert 192 < tail < 192 + 150  # the full image's 192 visual tokens and the tool response's text
    assert second.reused_tokens > tail  # most of the prompt came from the cache


def test_an_error_turn_without_a_new_image_also_continues(parts):
    """In "low" mode a tool call gets the trained error turn (text only): turn 2 continues from the cache too."""
    image = noise(448, 336, seed=3)
    again, expected = run(parts, image, "What is it?", reuse=False, mode="low")
    reused, got = run(parts, image, "What is it?", reuse=True, mode="low")
    assert reused[1].turn.text == again[1].turn.text
    assert max((a - b)[torch.isfinite(b)].abs().max().item() for a, b in zip(got, expected)) < 1e-4


class VisionCalls:
    """Counts the vision tower's calls, by the visual tokens each encodes."""

    def __init__(self, model) -> None:
        self.tokens: list[int] = []
        merge = model.model.visual.spatial_merge_size
        self.handle = model.model.visual.register_forward_pre_hook(
            lambda module, args, kwargs: self.tokens.append(int(kwargs["grid_thw"].prod(-1).sum()) // merge**2),
            with_kwargs=True)


def test_the_full_image_encoded_during_turn_one_gives_what_encoding_it_in_turn_two_gives(parts):
    image = noise(640, 480, seed=11)
    calls = VisionCalls(parts[0])
    try:
        usual, expected = run(parts, image, "What does the small print say?", reuse=True)
        late = list(calls.tokens)
        calls.tokens.clear()
        early, got = run(parts, image, "What does the small print say?", reuse=True, early=True)
        ahead = list(calls.tokens)
    finally:
        calls.handle.remove()
    assert early[1].turn.text == usual[1].turn.text
    assert max((a - b)[torch.isfinite(b)].abs().max().item() for a, b in zip(got, expected)) < 1e-4
    # the tower ran once per image either way: the 1/4 image for turn 1, the full image (four times its tokens)
    assert sorted(late) == sorted(ahead) and len(ahead) == 2 and max(ahead) > 3 * min(ahead)


def test_early_features_are_used_only_for_the_very_pixels_they_encode(parts):
    from visionthink.backends import EarlyImages

    model, processor = parts
    image = noise(448, 336, seed=5)
    early = EarlyImages(model, processor, [image])
    processed = processor.image_processor(images=[image], return_tensors="pt")
    pixels, grid = processed["pixel_values"], processed["image_grid_thw"]
    assert early.take(pixels + 0.5, grid) is None  # other pixels (another image of the same size)
    assert early.take(pixels, grid * 2) is None
    features = early.take(pixels, grid)
    assert features is not None and features.pooler_output[0].shape[0] == int(grid.prod()) // 4


def test_early_features_the_model_did_not_ask_for_are_dropped(parts):
    """The model answers at once: the early encoding is done and nothing of it reaches the answer."""
    model, processor = parts
    answer = processor.tokenizer.encode(protocol.answer_turn_text("a", "4"), add_special_tokens=False)
    end = processor.tokenizer.convert_tokens_to_ids(protocol.IM_END)
    calls = VisionCalls(model)
    try:
        backend = Spy(model, processor, "tiny", early_encode=True,
                      logits_processor_factory=lambda i: [ForceText(answer, end)])
        result = Engine(backend, settings=GenerationSettings(max_new_tokens=len(answer) + 1)).ask(
            noise(448, 336, seed=9), "What is it?", "auto")
        from visionthink.backends import _EARLY

        backend.carries[0][_EARLY].thread.join(timeout=60)  # left to finish on its own; waited for here only
    finally:
        calls.handle.remove()
    assert result.final_answer == "4" and not result.requested_high_res and len(result.turns) == 1
    assert sorted(calls.tokens) == [48, 192]  # the 1/4 image for the turn, the full image ahead of a request


def test_early_encoding_is_off_on_the_cpu_unless_asked_for(parts):
    model, processor = parts
    assert not TransformersBackend(model, processor, "tiny").early_encode
    assert TransformersBackend(model, processor, "tiny", early_encode="on").early_encode
    assert not TransformersBackend(model, processor, "tiny", early_encode="on", reuse_kv=False).early_encode
    with pytest.raises(ValueError, match="early_encode"):
        TransformersBackend(model, processor, "tiny", early_encode="sometimes")
