"""The miniature's task: one large shape on a light, noisy background, its interior filled with a 2-pixel texture.

Colour and shape are coarse: they survive ``images.downsample`` (half width and height, LANCZOS). The texture is
fine: horizontal stripes, vertical stripes or a checkerboard with a period of 2 pixels (1 px dark, 1 px light),
exactly what a 2x LANCZOS downsample erases. Its amplitude fades in smoothly inside the shape's edge, so that no
edge effect of the texture survives the downsample either (the premise probe, ``visionthink.miniature.probe``,
checks that the pattern is at chance from the 1/4 image).

Everything is drawn from a seed: ``draw_item(random.Random(seed))`` and ``sample(n, seed)`` give the same pixels
on every machine.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from visionthink import protocol

#: Side of the full-resolution image. A multiple of 56, so that both it and its half are multiples of 28 and the
#: image processor never resamples (a resample would blur the texture at full resolution).
IMAGE_SIZE = 224

WARM_COLOURS = ("red", "yellow")
COLOURS = {
    "red": (190, 55, 55),
    "green": (55, 160, 65),
    "blue": (55, 85, 195),
    "yellow": (200, 185, 50),
}
SHAPES = ("circle", "square", "triangle")
PATTERNS = ("horizontal", "vertical", "checkerboard")
ANSWERS = {"colour": tuple(COLOURS), "shape": SHAPES, "pattern": PATTERNS}
KINDS = tuple(ANSWERS)
#: Kinds answerable from the 1/4 image; the others need the full image.
COARSE_KINDS = ("colour", "shape")
FINE_KINDS = ("pattern",)

#: The canonical question of each kind, first, then paraphrases drawn less often.
QUESTIONS = {
    "colour": ("What colour is the shape?", "What is the colour of the shape?", "Which colour does the shape have?"),
    "shape": ("What shape is it?", "Which shape is shown?", "What is the shape in the image?"),
    "pattern": ("What pattern fills the shape?", "Which texture fills the shape?", "What pattern is inside the shape?"),
}
#: How often the canonical question is drawn; the rest is split evenly between the paraphrases.
CANONICAL_SHARE = 0.5

#: Texture amplitude (grey levels, added and subtracted) and the fade-in inside the shape's edge.
TEXTURE_AMPLITUDE = 40.0
TEXTURE_INSET_PX = 5
TEXTURE_FADE_PX = 3.0
NOISE_SIGMA = 5.0
COLOUR_JITTER = 12
#: Shape radius as a share of the image side, and the supersampling of its outline.
RADIUS_RANGE = (0.32, 0.40)
#: Pixels kept free between the shape and the border, and how far the centre may move from the image's centre.
BORDER_PX = 3
CENTRE_JITTER = 0.09
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Item:
    """One drawn image and one question about it."""

    image: Image.Image
    kind: str  # colour | shape | pattern
    question: str
    answer: str
    colour: str
    shape: str
    pattern: str

    @property
    def problem(self) -> str:
        """The dataset ``problem``: the question with the ``<image>`` marker."""
        return protocol.problem_text(self.question)

    @property
    def warm(self) -> bool:
        """A red or yellow shape: plain to see at 1/4, and irrelevant to whether the full image is needed (the
        warm start's arbitrary lean to ask follows it, see ``train.miniature``)."""
        return self.colour in WARM_COLOURS

    @property
    def needs_high_res(self) -> bool:
        return self.kind in FINE_KINDS


def kind_of(question: str) -> str | None:
    """The kind of one of this task's questions (canonical or paraphrase), or None for another question."""
    text = question.replace(protocol.IMAGE_MARKER, "").strip()
    for kind, questions in QUESTIONS.items():
        if text in questions:
            return kind
    return None


def _shape_mask(shape: str, cx: float, cy: float, radius: float, size: int, inset: float = 0.0) -> np.ndarray:
    """The shape's coverage of each pixel in [0, 1], anti-aliased by supersampling; ``inset`` pixels shrinks it
    (every side moves inwards by that much: the shapes are convex, so this is an exact erosion)."""
    s = SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(canvas)
    x, y = cx * s, cy * s
    if shape == "circle":
        r = (radius - inset) * s
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    elif shape == "square":
        h = (radius * 0.9 - inset) * s
        draw.rectangle([x - h, y - h, x + h, y + h], fill=255)
    elif shape == "triangle":
        # Circumradius 1.15 r (a triangle looks smaller than a circle of the same radius); an equilateral
        # triangle's sides move in by d when its circumradius shrinks by 2d.
        t = (radius * 1.15 - 2 * inset) * s
        points = [(x + t * math.cos(a), y - t * math.sin(a)) for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)]
        draw.polygon(points, fill=255)
    else:
        raise ValueError(f"Unknown shape {shape!r}; choose one of {', '.join(SHAPES)}.")
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def _envelope(shape: str, cx: float, cy: float, radius: float, size: int) -> np.ndarray:
    """Where the texture is drawn, in [0, 1]: the shape shrunk by a few pixels, with a smooth fade-in."""
    inner = _shape_mask(shape, cx, cy, radius, size, inset=TEXTURE_INSET_PX)
    soft = Image.fromarray(np.rint(inner * 255).astype(np.uint8), "L").filter(ImageFilter.GaussianBlur(TEXTURE_FADE_PX))
    return np.asarray(soft, dtype=np.float64) / 255.0


def _grating(pattern: str, phase: int, size: int) -> np.ndarray:
    """+1/-1 in a 2-pixel period: rows, columns or both."""
    y, x = np.mgrid[0:size, 0:size]
    if pattern == "horizontal":
        parity = y
    elif pattern == "vertical":
        parity = x
    elif pattern == "checkerboard":
        parity = x + y
    else:
        raise ValueError(f"Unknown pattern {pattern!r}; choose one of {', '.join(PATTERNS)}.")
    return np.where((parity + phase) % 2 == 0, 1.0, -1.0)


#: How far each shape reaches from its centre (left, up, right, down), in radii (see ``_shape_mask``).
_EXTENTS = {
    "circle": (1.0, 1.0, 1.0, 1.0),
    "square": (0.9, 0.9, 0.9, 0.9),
    "triangle": (1.15 * math.sqrt(3) / 2, 1.15, 1.15 * math.sqrt(3) / 2, 1.15 / 2),
}


def draw_image(colour: str, shape: str, pattern: str, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """One image: the background, the shape in its colour, the texture inside, and noise over all of it."""

    radius = rng.uniform(*RADIUS_RANGE) * size
    left, up, right, down = (e * radius + BORDER_PX for e in _EXTENTS[shape])
    jitter = CENTRE_JITTER * size
    centre = size / 2
    cx = rng.uniform(max(left, centre - jitter), max(left, min(size - right, centre + jitter)))
    cy = rng.uniform(max(up, centre - jitter), max(up, min(size - down, centre + jitter)))
    background = np.array([rng.uniform(215, 250) for _ in range(3)])
    fill = np.array([c + rng.randint(-COLOUR_JITTER, COLOUR_JITTER) for c in COLOURS[colour]], dtype=np.float64)
    mask = _shape_mask(shape, cx, cy, radius, size)[..., None]
    envelope = _envelope(shape, cx, cy, radius, size)[..., None]
    texture = TEXTURE_AMPLITUDE * envelope * _grating(pattern, rng.randint(0, 1), size)[..., None]
    noise = np.random.default_rng(rng.getrandbits(64)).normal(0.0, NOISE_SIGMA, (size, size, 3))
    pixels = background * (1 - mask) + fill * mask + texture + noise
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def draw_item(rng: random.Random, kind: str | None = None, *, size: int = IMAGE_SIZE) -> Item:
    """A random image and a question of ``kind`` (drawn at random when None) about it."""
    colour, shape, pattern = rng.choice(tuple(COLOURS)), rng.choice(SHAPES), rng.choice(PATTERNS)
    kind = kind or rng.choice(KINDS)
    if kind not in ANSWERS:
        raise ValueError(f"Unknown kind {kind!r}; choose one of {', '.join(KINDS)}.")
    questions = QUESTIONS[kind]
    question = questions[0] if rng.random() < CANONICAL_SHARE else rng.choice(questions[1:])
    image = draw_image(colour, shape, pattern, rng, size)
    answer = {"colour": colour, "shape": shape, "pattern": pattern}[kind]
    return Item(image, kind, question, answer, colour, shape, pattern)


def sample(n: int, seed: int, *, kinds: tuple[str, ...] = KINDS, size: int = IMAGE_SIZE) -> list[Item]:
    """``n`` items, the kinds in turn (so every kind gets n/3), reproducible from ``seed``."""
    rng = random.Random(seed)
    return [draw_item(rng, kinds[i % len(kinds)], size=size) for i in range(n)]
