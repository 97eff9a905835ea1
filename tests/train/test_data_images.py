"""Training images by the rule that applies to the source, and the prompt-length filter.

VisionThink's released data (an ``info`` column) follows the released training: a target size is used exactly, other
images are area-clamped to [512², 2048²] and halved, and the full image is twice the low one. Store exports follow
the serving engine's rule. Every expected size and token count below was worked out by hand from those rules and
Qwen2.5-VL's ``smart_resize``; nothing is computed by the code under test. Every row is built here.
"""

from __future__ import annotations

import logging

import datasets
import numpy as np
import pytest
from PIL import Image

from train.data import DataError, prompt_messages, prompt_tokens, training_dataset
from visionthink.images import ImageError, downsample, released_view_sizes, visual_tokens

INFO = datasets.Features({
    "problem": datasets.Value("string"),
    "images": datasets.List(datasets.Image()),
    "original_answer": datasets.Value("string"),
    "solution": datasets.Value("string"),
    "info": {"tgt_width": datasets.Value("int64"), "tgt_height": datasets.Value("int64"),
             "use_tool": datasets.Value("bool")},
    "data_source": datasets.Value("string"),
    "doc_id": datasets.Value("string"),
})


def gradient(width: int, height: int) -> Image.Image:
    """A smooth picture (small as PNG), different along each axis, so a crop or a transpose would show."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def vt_row(doc_id: str, size: tuple[int, int], info: dict | None, problem: str = "<image>\nWhat is shown?") -> dict:
    return {"problem": problem, "images": [gradient(*size)], "original_answer": "A chart", "solution": "A chart",
            "info": info, "data_source": "open_source_require_high", "doc_id": doc_id}


# --- The released geometry, on sizes alone ------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "target", "low", "high"), [
    ((4000, 3000), (504, 392), (504, 392), (1008, 784)),  # a target is used as it is, not halved again
    ((100, 60), (56, 28), (56, 28), (112, 56)),  # even below the clamp's floor
    ((1024, 768), None, (512, 384), (1024, 768)),  # inside [512², 2048²]: halved, high = 2x low = the original
    ((512, 512), None, (256, 256), (512, 512)),  # exactly the floor: untouched
    ((4096, 1024), None, (2048, 512), (4096, 1024)),  # exactly the ceiling (2048² pixels): untouched
    ((8192, 4096), None, (1448, 724), (2896, 1448)),  # x sqrt(1/8) = 2896.3 x 1448.2, truncated, halved
    ((2600, 2000), None, (1167, 898), (2334, 1796)),  # clamped to 2335 x 1796; high is 2x low, not the clamp
    ((256, 128), None, (362, 181), (724, 362)),  # x sqrt(8) = 724.08 x 362.04, truncated, halved
    ((100, 60), None, (330, 198), (660, 396)),  # x 6.6099 = 660.99 x 396.59
])
def test_released_sizes(size, target, low, high):
    assert released_view_sizes(*size, target) == (low, high)


def test_released_sizes_refuse_what_the_released_training_refused():
    with pytest.raises(ImageError, match="under 28 px"):
        released_view_sizes(2000, 1000, (20, 400))  # a target side under 28
    with pytest.raises(ImageError, match="under 28 px"):
        released_view_sizes(1, 150)  # clamped up to 41 x 6270, halved to 20 x 3135
    with pytest.raises(ImageError, match="aspect ratio"):
        released_view_sizes(5000, 10)


# --- Rows of VisionThink's schema (an info column) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def released_source(tmp_path_factory):
    """Four rows in the Hub layout: a target size, no info, info without a target, and an unusable target."""
    rows = [
        vt_row("target", (1600, 1200), {"tgt_width": 504, "tgt_height": 392, "use_tool": True}),
        vt_row("large", (2600, 2000), None),
        vt_row("small", (256, 128), {"tgt_width": None, "tgt_height": None, "use_tool": None}),
        vt_row("too-thin", (1600, 1200), {"tgt_width": 20, "tgt_height": 400, "use_tool": False}),
    ]
    folder = tmp_path_factory.mktemp("released")
    dataset = datasets.Dataset.from_list(rows, features=INFO)
    dataset.save_to_disk(str(folder / "saved"))
    dataset.to_parquet(str(folder / "rows.parquet"))
    return folder


@pytest.mark.parametrize("layout", ["saved", "rows.parquet"])
def test_rows_with_info_follow_the_released_rule(released_source, layout, caplog):
    with caplog.at_level(logging.WARNING, logger="train.data"):
        rows = training_dataset(released_source / layout)
    assert "too-thin" in caplog.text and "Using 3 of 4 rows" in caplog.text  # its target is under 28 px
    assert set(rows.column_names) == {"prompt", "images", "full_image", "problem", "original_answer", "solution",
                                      "needs_high_res", "data_source", "kind"}
    sizes = [(row["images"][0].size, row["full_image"].size) for row in rows]
    assert sorted(sizes) == sorted([
        ((504, 392), (1008, 784)),  # exactly the target; high 2x
        ((1167, 898), (2334, 1796)),  # clamped from 2600 x 2000 to 2335 x 1796, halved; high 2x the low view
        ((362, 181), (724, 362)),  # raised from 256 x 128 (x sqrt 8), halved
    ])
    by_low = {row["images"][0].size: row for row in rows}
    # Visual tokens (smart_resize to multiples of 28): 504x392 is 18x14, 1008x784 36x28; 1167x898 → 1176x896 (42x32),
    # 2334x1796 → 2324x1792 (83x64); 362x181 → 364x168 (13x6), 724x362 → 728x364 (26x13).
    tokens = {low: (visual_tokens(*low), visual_tokens(*row["full_image"].size)) for low, row in by_low.items()}
    assert tokens == {(504, 392): (252, 1008), (1167, 898): (1344, 5312), (362, 181): (78, 338)}
    # The project's rule on the target row would have cost 800x600 → 812x588 = 609 and 1600x1200 → 1596x1204 =
    # 2451 tokens: the released sizes are what the checkpoints were trained on.
    assert visual_tokens(800, 600) == 609 and visual_tokens(1600, 1200) == 2451
    # Each view is the whole picture resampled (red grows left to right, green top to bottom), not a crop.
    for row in rows:
        for view in (row["images"][0], row["full_image"]):
            pixels = np.asarray(view).astype(int)
            assert pixels[0, 0, 0] < 8 and pixels[0, -1, 0] > 247 and pixels[-1, 0, 1] > 247


def test_a_store_export_keeps_the_project_rule(tmp_path):
    """A real grpo export (no info column): half of each side, and the original as the full image."""
    from store.api import Actor, Store
    from store.export import export
    from tests.support.forcing import ANSWER_TURN
    from visionthink import protocol
    from visionthink.engine import Answer, TurnRecord
    from visionthink.images import TokenReport

    image = gradient(1600, 1200)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    turn = TurnRecord(0, protocol.parse_turn(ANSWER_TURN), 0.1, 10, "stop")
    answer = Answer("What is the value?", "auto", "tiny", [turn], "The value is \\boxed{44.6}", False,
                    TokenReport.build(low_res=609, high_res=0, full_res=2451), 0.2, "answer", image.size)
    ask = store.record(answer, image, Actor.anonymous("s"), consent=True)
    for rater in ("ann", "bob"):
        store.rate(Actor(rater, "annotator"), ask, verdict="incorrect", reference_answer="12", decision="low_enough")
    out = export(store, Actor.system(), "grpo", tmp_path / "export")
    store.close()
    assert "info" not in datasets.load_from_disk(str(out.path)).column_names

    [row] = training_dataset(out.path)
    assert row["images"][0].size == (800, 600) and row["full_image"].size == (1600, 1200)
    assert np.array_equal(np.asarray(row["full_image"]), np.asarray(image))  # the original, byte for byte
    assert np.array_equal(np.asarray(row["images"][0]), np.asarray(downsample(image)))
    assert (visual_tokens(*row["images"][0].size), visual_tokens(*row["full_image"].size)) == (609, 2451)


# --- The prompt-length filter ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_processor(tiny_model_dir):
    from train.chat_template import install
    from visionthink.hf import load_processor

    processor = load_processor(str(tiny_model_dir))
    install(processor)
    return processor


def processor_length(processor, problem: str, low: Image.Image) -> int:
    """The oracle: what the processor itself makes of the rendered prompt and the low view."""
    text = processor.apply_chat_template(prompt_messages(problem), add_generation_prompt=True, tokenize=False)
    return len(processor(text=[text], images=[low])["input_ids"][0])


@pytest.fixture(scope="module")
def mixed_lengths(tmp_path_factory):
    """Three short-image rows whose problems grow, and one released-layout row that is short only at its target."""
    plain = [{"problem": "<image>\n" + "Count the bars. " * n, "images": [gradient(224, 168)],
              "original_answer": "3", "solution": "3"} for n in (1, 40, 80)]
    folder = tmp_path_factory.mktemp("lengths")
    datasets.Dataset.from_list(plain).save_to_disk(str(folder / "plain"))
    released = [vt_row("target", (1600, 1200), {"tgt_width": 504, "tgt_height": 392, "use_tool": True}),
                vt_row("clamped", (1600, 1200), None)]
    datasets.Dataset.from_list(released, features=INFO).save_to_disk(str(folder / "released"))
    return folder


def test_prompt_tokens_match_the_processor(training_processor, mixed_lengths):
    rows = training_dataset(mixed_lengths / "plain")
    counted = prompt_tokens(rows["prompt"], [row["images"][0].size for row in rows], training_processor)
    expected = [processor_length(training_processor, row["problem"], row["images"][0]) for row in rows]
    assert counted == expected
    assert expected[0] < expected[1] < expected[2]
    assert expected[0] > visual_tokens(112, 84) + 30  # the system prompt, the problem and the image all count


def test_rows_over_the_limit_are_dropped_and_counted(training_processor, mixed_lengths, caplog):
    source = mixed_lengths / "plain"
    lengths = sorted(processor_length(training_processor, row["problem"], downsample(row["images"][0]))
                     for row in datasets.load_from_disk(str(source)))
    for attempt in range(2):  # the second time the rows come from datasets' cache, and the count must not change
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="train.data"):
            rows = training_dataset(source, max_prompt_tokens=lengths[1], processor=training_processor)
        assert len(rows) == 2, attempt  # a prompt exactly at the limit stays
        assert all("Count the bars. " * 80 not in row["problem"] for row in rows)
        assert "Dropped 1 of 3 rows" in caplog.text and f"max_prompt_tokens ({lengths[1]} tokens" in caplog.text
    assert list(source.glob("cache-*.arrow")), "the second pass did not read a cache"

    assert len(training_dataset(source, max_prompt_tokens=lengths[2], processor=training_processor)) == 3
    assert len(training_dataset(source, max_prompt_tokens=lengths[0], processor=training_processor)) == 1
    with pytest.raises(DataError, match="Raise max_prompt_tokens"):
        training_dataset(source, max_prompt_tokens=lengths[0] - 1, processor=training_processor)
    with pytest.raises(DataError, match="needs the processor"):
        training_dataset(source, max_prompt_tokens=8192)


def test_the_filter_counts_the_low_view_that_is_used(training_processor, mixed_lengths):
    """A released row's low view is its target (252 tokens here), not the half-size image (609)."""
    source = mixed_lengths / "released"
    original = gradient(1600, 1200)
    at_target = processor_length(training_processor, "<image>\nWhat is shown?", original.resize((504, 392)))
    clamped = processor_length(training_processor, "<image>\nWhat is shown?", original.resize((800, 600)))
    assert clamped - at_target == 609 - 252
    rows = training_dataset(source, max_prompt_tokens=at_target, processor=training_processor)
    assert [row["images"][0].size for row in rows] == [(504, 392)]


def test_build_trainer_passes_the_limit(tiny_model_dir, mixed_lengths, training_processor, tmp_path):
    from trl import GRPOConfig, ModelConfig

    from train.grpo import VisionThinkArguments, build_trainer

    assert VisionThinkArguments(dataset="unused").max_prompt_tokens == 8192  # the released limit by default
    source = mixed_lengths / "plain"
    limit = sorted(processor_length(training_processor, row["problem"], downsample(row["images"][0]))
                   for row in datasets.load_from_disk(str(source)))[0]
    vt = VisionThinkArguments(dataset=str(source), judge="rule", max_turn_tokens=16, max_prompt_tokens=limit)
    training = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, num_generations=2,
                          per_device_train_batch_size=2, max_steps=1, report_to="none", save_strategy="no")
    trainer = build_trainer(vt, training, ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32"))
    assert len(trainer.train_dataset) == 1
