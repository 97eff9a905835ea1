"""Example images the project draws itself (no downloads): two from the embedded miniature's task (a question the
1/4 image answers, and one only the full image answers), then one that 1/4 resolution is enough for and two with
small print that should make a real VisionThink checkpoint ask for the full image.

Drawing is deterministic, so the files are the same on every machine.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from visionthink.files import atomic_write
from visionthink.miniature import task


@dataclass(frozen=True)
class Example:
    name: str
    question: str
    path: Path


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def draw_chart() -> Image.Image:
    """A grouped bar chart whose value labels are small enough to blur at half resolution."""
    width, height = 1600, 1000
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((60, 30), "Quarterly revenue by product (million EUR)", fill="black", font=_font(40))
    left, right, top, bottom = 140, 1540, 140, 880
    d.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=3)
    for k in range(0, 6):
        y = bottom - k * (bottom - top) / 5
        d.line([(left - 8, y), (left, y)], fill="black", width=2)
        d.text((left - 60, y - 8), f"{k * 20}", fill="black", font=_font(16))
    values = {"Alpha": [23.4, 41.7, 37.2, 58.9], "Beta": [31.8, 29.5, 44.6, 52.3], "Gamma": [12.1, 18.7, 26.4, 21.9]}
    colours = {"Alpha": (52, 101, 164), "Beta": (204, 102, 51), "Gamma": (90, 160, 90)}
    group_width = (right - left) / 4
    bar = group_width / 4.5
    for q in range(4):
        x0 = left + q * group_width + bar * 0.6
        for i, (name, series) in enumerate(values.items()):
            value = series[q]
            x = x0 + i * bar * 1.15
            y = bottom - value / 100 * (bottom - top)
            d.rectangle([x, y, x + bar, bottom], fill=colours[name])
            d.text((x + 4, y - 16), f"{value}", fill="black", font=_font(12))
        d.text((left + q * group_width + group_width / 2 - 14, bottom + 14), f"Q{q + 1}", fill="black", font=_font(22))
    for i, name in enumerate(values):
        x = 1250 + 0 * i
        y = 40 + i * 26
        d.rectangle([x, y, x + 18, y + 18], fill=colours[name])
        d.text((x + 26, y), name, fill="black", font=_font(18))
    return img


def draw_receipt() -> Image.Image:
    """A till receipt in small print."""
    width, height = 900, 1300
    img = Image.new("RGB", (width, height), (250, 248, 240))
    d = ImageDraw.Draw(img)
    d.text((280, 40), "CORNER MARKET", fill="black", font=_font(44))
    d.text((300, 100), "12 Harbour Street - Tel 0123 456 789", fill="black", font=_font(14))
    items = [
        ("Sourdough loaf", 3.80), ("Free-range eggs x6", 2.95), ("Oat milk 1L", 1.89), ("Cheddar 250g", 4.25),
        ("Apples 1kg", 2.40), ("Coffee beans 500g", 9.99), ("Dark chocolate", 1.75), ("Tomatoes 400g", 0.95),
    ]
    y = 180
    for name, price in items:
        d.text((80, y), name, fill="black", font=_font(15))
        d.text((720, y), f"{price:6.2f}", fill="black", font=_font(15))
        y += 34
    total = sum(p for _, p in items)
    d.line([(80, y + 10), (820, y + 10)], fill="black", width=2)
    d.text((80, y + 30), "TOTAL", fill="black", font=_font(17))
    d.text((720, y + 30), f"{total:6.2f}", fill="black", font=_font(17))
    d.text((80, y + 80), "Paid by card ****4821   Auth 093311", fill="black", font=_font(13))
    d.text((80, y + 110), "Thank you for shopping with us!", fill="black", font=_font(13))
    return img


def draw_scene() -> Image.Image:
    """A simple, large-featured scene: a red house, a tree, the sun. Low resolution is enough here."""
    width, height = 1200, 800
    img = Image.new("RGB", (width, height), (135, 200, 250))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 560, width, height], fill=(80, 170, 70))
    d.ellipse([940, 60, 1100, 220], fill=(255, 215, 0))
    d.rectangle([300, 330, 660, 600], fill=(200, 40, 40))
    d.polygon([(270, 340), (480, 170), (690, 340)], fill=(110, 60, 30))
    d.rectangle([450, 470, 520, 600], fill=(60, 40, 20))
    d.rectangle([340, 390, 410, 450], fill=(220, 240, 255))
    d.rectangle([560, 390, 630, 450], fill=(220, 240, 255))
    d.rectangle([830, 420, 870, 600], fill=(100, 60, 20))
    d.ellipse([760, 290, 940, 460], fill=(30, 120, 40))
    return img


def draw_coarse_shape() -> Image.Image:
    """The miniature's task: a question the 1/4 image answers (its colour)."""
    return task.draw_image("red", "circle", "vertical", random.Random(101))


def draw_fine_shape() -> Image.Image:
    """The miniature's task: a question only the full image answers (its 2-pixel texture)."""
    return task.draw_image("blue", "triangle", "checkerboard", random.Random(102))


#: The embedded miniature's own task first (a coarse question and a fine one, so a visitor sees both decisions),
#: then pictures for a real checkpoint.
EXAMPLES = (
    ("shape-colour", task.QUESTIONS["colour"][0], draw_coarse_shape),
    ("shape-pattern", task.QUESTIONS["pattern"][0], draw_fine_shape),
    ("chart", "What is the revenue of Beta in Q3?", draw_chart),
    ("receipt", "What is the total on the receipt?", draw_receipt),
    ("scene", "What colour is the house?", draw_scene),
)


def ensure_examples(folder: str | os.PathLike) -> list[Example]:
    """Draw the example images into ``folder`` (``VISIONTHINK_EXAMPLES_DIR``; once) and return them with their
    questions."""
    folder = Path(folder).expanduser()
    examples = []
    for name, question, draw in EXAMPLES:
        path = folder / f"{name}.png"
        if not path.exists():
            atomic_write(path, lambda handle, draw=draw: draw().save(handle, format="PNG"))
        examples.append(Example(name, question, path))
    return examples
