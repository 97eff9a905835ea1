"""visionthink.images.visual_tokens against the real Qwen2.5-VL image processor (the checkpoint's limits)."""

from __future__ import annotations

import random

import pytest
from PIL import Image

from visionthink import images

# (original W, H) -> (full tokens, low-res tokens), docs/tokens.md §5.
WORKED_EXAMPLES = {
    (1024, 768): (999, 252),
    (1280, 960): (1564, 391),
    (2048, 1024): (2701, 666),
    (8000, 6000): (16170, 15301),
    (100, 60): (8, 6),
}

# Above 12.8 MP: the processor caps these. Each costs about a second (the 48 MP one about four), so only a handful.
HUGE_SIZES = [(8000, 6000), (4200, 3100), (3585, 3584), (52000, 260), (260, 51000)]


@pytest.fixture(scope="module")
def image_processor(tiny_model_dir):
    """The tiny checkpoint's image processor, loaded the way the real one is (Hub-style preprocessor_config)."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(str(tiny_model_dir))
    assert type(processor).__name__ in {"Qwen2VLImageProcessorPil", "Qwen2VLImageProcessor"}
    assert (processor.size["shortest_edge"], processor.size["longest_edge"]) == (images.MIN_PIXELS, images.MAX_PIXELS)
    assert (processor.patch_size, processor.merge_size) == (14, 2)
    return processor


def processor_tokens(image_processor, width: int, height: int) -> int:
    """Visual tokens the real processor gives a real ``width`` x ``height`` image: grid_t*grid_h*grid_w / 4."""
    grid = image_processor(images=[Image.new("RGB", (width, height), (90, 160, 30))], return_tensors="pt")[
        "image_grid_thw"
    ]
    assert grid.shape == (1, 3) and int(grid[0, 0]) == 1
    return int(grid.prod()) // image_processor.merge_size**2


def random_sizes() -> list[tuple[int, int]]:
    """At least 200 sizes from a seeded RNG: ordinary, tiny (under 28 px), extreme aspect ratios, rounding ties."""
    rng = random.Random(1234)
    sizes: set[tuple[int, int]] = set()

    def log_uniform(low: int, high: int) -> int:
        return int(round(low * (high / low) ** rng.random()))

    while len(sizes) < 110:  # ordinary photos and screenshots
        sizes.add((log_uniform(28, 1800), log_uniform(28, 1800)))
    while len(sizes) < 150:  # small: at least one side under 28 px (the pixel floor)
        width, height = log_uniform(1, 27), log_uniform(1, 400)
        if max(width, height) <= 200 * min(width, height):
            sizes.add((width, height) if rng.random() < 0.5 else (height, width))
    while len(sizes) < 200:  # extreme aspect ratios, up to exactly 200:1
        ratio = rng.uniform(20, 200)
        short = log_uniform(1, 60)
        long = min(int(short * ratio), 200 * short)
        sizes.add((long, short) if rng.random() < 0.5 else (short, long))
    while len(sizes) < 215:  # sides at 28k + 14: Python's round() sends ties to even
        sizes.add((28 * rng.randint(0, 40) + 14, 28 * rng.randint(0, 40) + 14))
    sizes.update({(200, 1), (1, 200), (5600, 28), (28, 5600), (1, 1), (2, 3), (27, 27), (28, 28), (55, 57)})
    return sorted(sizes)


def test_random_sizes_cover_the_edge_cases():
    sizes = random_sizes()
    assert len(sizes) >= 200
    assert sum(min(s) < 28 for s in sizes) >= 40
    assert max(max(s) / min(s) for s in sizes) == 200
    assert sum(max(s) / min(s) >= 100 for s in sizes) >= 15
    assert sum(w % 28 == 14 and h % 28 == 14 for w, h in sizes) >= 10


def test_visual_tokens_match_the_processor_on_random_sizes(image_processor):
    mismatches = []
    for width, height in random_sizes():
        expected = processor_tokens(image_processor, width, height)
        if images.visual_tokens(width, height) != expected:
            mismatches.append(((width, height), images.visual_tokens(width, height), expected))
    assert mismatches == []


@pytest.mark.parametrize("size", HUGE_SIZES, ids=[f"{w}x{h}" for w, h in HUGE_SIZES])
def test_visual_tokens_match_the_processor_above_the_pixel_cap(image_processor, size):
    width, height = size
    assert width * height > images.MAX_PIXELS
    tokens = processor_tokens(image_processor, width, height)
    assert images.visual_tokens(width, height) == tokens
    assert tokens <= images.MAX_PIXELS // 28**2  # capped at 16,384


@pytest.mark.parametrize("size", list(WORKED_EXAMPLES), ids=[f"{w}x{h}" for w, h in WORKED_EXAMPLES])
def test_worked_examples(image_processor, size):
    full, low = WORKED_EXAMPLES[size]
    low_size = images.low_res_size(*size)
    assert images.visual_tokens(*size) == full
    assert images.visual_tokens(*low_size) == low
    # The processor agrees on the low-res view (the full 8000x6000 one is checked above the cap).
    assert processor_tokens(image_processor, *low_size) == low
    if size != (8000, 6000):
        assert processor_tokens(image_processor, *size) == full


def test_worked_example_resized_sizes():
    assert images.smart_resize(1024, 768) == (1036, 756)
    assert images.smart_resize(512, 384) == (504, 392)
    assert images.smart_resize(8000, 6000) == (4116, 3080)
    assert images.smart_resize(4000, 3000) == (4004, 2996)
    assert images.smart_resize(100, 60) == (112, 56)
    assert images.smart_resize(50, 30) == (84, 56)


@pytest.mark.parametrize("size", [(201, 1), (1, 201), (5601, 28), (28, 5601), (20001, 99), (603, 3)])
def test_aspect_ratio_over_200_is_refused_by_both(image_processor, size):
    with pytest.raises(images.ImageError, match="200:1"):
        images.visual_tokens(*size)
    with pytest.raises(ValueError, match="aspect ratio"):
        image_processor(images=[Image.new("RGB", size)], return_tensors="pt")


def test_visual_tokens_follow_custom_limits(image_processor):
    """The app counts with the processor's own limits; a lower cap (training) must agree too."""
    limits = {"shortest_edge": images.MIN_PIXELS, "longest_edge": 224 * 224}
    for width, height in [(1024, 768), (3000, 40), (640, 640), (10, 10)]:
        grid = image_processor(images=[Image.new("RGB", (width, height))], size=limits, return_tensors="pt")[
            "image_grid_thw"
        ]
        assert images.visual_tokens(width, height, max_pixels=224 * 224) == int(grid.prod()) // 4
