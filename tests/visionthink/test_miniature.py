"""The miniature's task, its premise, its splits and its tokenizer (visionthink.miniature)."""

from __future__ import annotations

import random
from collections import Counter

import datasets
import numpy as np
import pytest

from visionthink import hf, protocol
from visionthink.images import downsample
from visionthink.miniature import data, model, probe, task, turns
from visionthink.miniature.__main__ import main as miniature_main


def test_drawing_is_deterministic_and_the_kinds_take_turns():
    first, again = task.sample(12, 5), task.sample(12, 5)
    assert [np.asarray(a.image).tobytes() == np.asarray(b.image).tobytes() for a, b in zip(first, again)] == [True] * 12
    assert [i.kind for i in first] == list(task.KINDS) * 4
    other = task.sample(12, 6)
    assert np.asarray(first[0].image).tobytes() != np.asarray(other[0].image).tobytes()
    for item in first:
        assert item.image.size == (task.IMAGE_SIZE, task.IMAGE_SIZE) and item.image.mode == "RGB"
        assert item.answer in task.ANSWERS[item.kind]
        assert item.answer == {"colour": item.colour, "shape": item.shape, "pattern": item.pattern}[item.kind]
        assert task.kind_of(item.problem) == item.kind and item.problem.startswith(protocol.IMAGE_MARKER)
        assert item.needs_high_res == (item.kind == "pattern")


def test_canonical_questions_are_drawn_and_recognised():
    questions = Counter(task.draw_item(random.Random(i), "pattern").question for i in range(200))
    assert set(questions) == set(task.QUESTIONS["pattern"])
    assert 0.4 < questions["What pattern fills the shape?"] / 200 < 0.6
    assert task.QUESTIONS["colour"][0] == "What colour is the shape?"
    assert task.QUESTIONS["shape"][0] == "What shape is it?"
    assert task.kind_of("What is written on the sign?") is None


def test_the_texture_is_a_two_pixel_grating_that_the_downsample_erases():
    """Inside the shape, neighbouring rows (horizontal), columns (vertical) or both (checkerboard) alternate; at 1/4
    what is left is the noise floor, the same for all three patterns."""
    rng = random.Random(3)
    for pattern, axis in (("horizontal", 0), ("vertical", 1), ("checkerboard", None)):
        image = np.asarray(task.draw_image("blue", "square", pattern, rng), dtype=np.float64).mean(2)
        centre = image[92:132, 92:132]
        rows, cols = np.abs(np.diff(centre, axis=0)).mean(), np.abs(np.diff(centre, axis=1)).mean()
        if axis == 0:
            assert rows > 4 * cols
        elif axis == 1:
            assert cols > 4 * rows
        else:
            assert rows > 40 and cols > 40
        low = np.asarray(downsample(task.draw_image("blue", "square", pattern, rng)), dtype=np.float64).mean(2)
        assert low[50:62, 50:62].std() < 4  # noise sigma 5 halves to ~2.5; the texture's ±40 is gone


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_premise_a_probe_reads_the_pattern_only_from_the_full_image():
    """A CNN trained on one split and scored on another: every kind legible from the full image, colour and shape
    from the 1/4 image, the pattern at chance (+5 points at most) from the 1/4 image. Fails if the rendering leaks
    the pattern at 1/4 (or stops showing it at full resolution)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        # 800 training items sufficed on one CPU but left the full-image pattern at 90.2% on another (same seed,
        # other floating-point kernels); with 1,200 it is 100% on both, and the 1/4 pattern stays at chance.
        result = probe.measure(train_items=1200, test_items=600, seed=0, epochs=5)
    finally:
        torch.set_num_threads(threads)
    assert result.failures() == [], result.table()
    assert result.low["pattern"] <= 1 / 3 + probe.CHANCE_MARGIN


def test_sample_writes_a_split_in_visionthinks_schema(tmp_path, capsys):
    out = tmp_path / "split"
    assert miniature_main(["sample", "--n", "9", "--seed", "11", "--out", str(out)]) == 0
    assert "Wrote 9 items" in capsys.readouterr().out
    rows = datasets.load_from_disk(str(out))
    assert len(rows) == 9
    assert set(rows.column_names) >= {"problem", "images", "original_answer", "solution", "kind", "doc_id",
                                      "needs_high_res", "data_source"}
    first = rows[0]
    drawn = task.sample(9, 11)[0]
    assert first["problem"] == drawn.problem and first["solution"] == first["original_answer"] == drawn.answer
    assert np.array_equal(np.asarray(first["images"][0].convert("RGB")), np.asarray(drawn.image))
    assert Counter(rows["kind"]) == {"colour": 3, "shape": 3, "pattern": 3}
    assert len(set(rows["doc_id"])) == 9
    with pytest.raises(SystemExit):
        miniature_main(["sample", "--n", "0", "--seed", "1", "--out", str(tmp_path / "none")])


def test_transcripts_follow_the_protocol_and_guess_only_what_the_image_cannot_show():
    rng = random.Random(0)
    pattern = task.draw_item(rng, "pattern")
    colour = task.draw_item(rng, "colour")
    request = turns.transcript(pattern, "request", rng)
    assert request.mode == "auto" and [protocol.parse_turn(t).kind for t in request.turns] == ["tool_call", "answer"]
    assert protocol.parse_turn(request.turns[1]).answer == pattern.answer
    assert protocol.parse_turn(turns.transcript(colour, "direct", rng).turns[0]).answer == colour.answer
    assert turns.transcript(pattern, "high", rng).mode == "high"
    refused = turns.transcript(pattern, "refused", rng)
    assert refused.mode == "low" and len(refused.turns) == 2
    guesses = Counter(protocol.parse_turn(turns.transcript(pattern, "direct", rng).turns[0]).answer for _ in range(300))
    assert set(guesses) == set(task.PATTERNS) and min(guesses.values()) > 70  # uniform, whatever the truth
    with pytest.raises(ValueError):
        turns.transcript(pattern, "sideways", rng)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    return model.build_untrained(tmp_path_factory.mktemp("miniature-init"), seed=0)


def test_the_untrained_miniature_loads_through_from_pretrained_and_fits_in_10_mb(untrained):
    from transformers import Qwen2_5_VLForConditionalGeneration

    assert (untrained / "model.safetensors").stat().st_size <= 10_000_000
    loaded = hf.load_model(str(untrained), device="cpu")
    assert isinstance(loaded, Qwen2_5_VLForConditionalGeneration)
    assert 1_500_000 < model.parameter_count(untrained)["total"] < 2_500_000


def test_every_fixed_text_of_the_protocol_is_one_token_and_turn_boundaries_stay_token_boundaries(untrained):
    tokenizer = hf.load_processor(str(untrained)).tokenizer
    for text in protocol.fixed_texts():
        assert len(tokenizer.encode(text, add_special_tokens=False)) == 1, text[:40]
    conversation = protocol.Conversation.start(task.QUESTIONS["pattern"][0])
    prompt = conversation.render()
    conversation.add_model_turn(turns.request_turn("pattern"))
    conversation.add_tool_response()
    episode = conversation.render() + turns.answer_turn("pattern", "vertical") + protocol.IM_END
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    # The generation prompt, each turn and each injected turn tokenise the same alone as inside the episode.
    pieces = [prompt, turns.request_turn("pattern") + protocol.IM_END, protocol.tool_response_turn(),
              turns.answer_turn("pattern", "vertical") + protocol.IM_END]
    assert "".join(pieces) == episode
    assert sum((encode(p) for p in pieces), []) == encode(episode)
    assert len(encode(episode)) < 100  # the fixed texts cost a position each, not hundreds
    for word in (*task.COLOURS, *task.SHAPES, *task.PATTERNS):
        assert len(encode(word)) == 1, word
