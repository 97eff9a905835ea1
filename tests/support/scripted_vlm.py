"""A deterministic VisionThink model to serve with ``ChatServer``, and a data set of questions for it.

What it answers depends only on the request (the question and the widths of the images it carries), never on the
order requests arrive in, so an evaluation with many episodes in flight must give the same answers as one run
episode by episode. The evaluation's concurrency tests and ``bench/eval_throughput.py`` use it.

    with ChatServer(scripted_visionthink, model=MODEL, token_delay_s=0.02) as server: ...

Every question is about a numbered card ("What is the value on card 7?"); card k holds ``card_value(k)``. A question
about "small print" cannot be read from an image narrower than ``READABLE_WIDTH``: from the 1/4 image the model
calls ``resize_image``; given the full image it reads the value; told that the full image is not available (the
"low" mode's error turn) it guesses ``GUESS``. Every other question is answered at once.
"""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path

from tests.support.chat_server import image_urls
from visionthink import protocol

MODEL = "vt-scripted"
READABLE_WIDTH = 300
GUESS = "12"
SMALL_PRINT_SIZE = (336, 224)  # 1/4 image 168×112: too narrow to read
PLAIN_SIZE = (224, 168)


def card_value(card: int) -> str:
    return str(20 + card * 7 % 97)


def scripted_visionthink(body: dict) -> str:
    """The model's turn for a chat-completions request ``body`` (a ``ChatServer`` responses callable)."""
    question = _question(body)
    match = re.search(r"card (\d+)", question)
    if match is None:
        return protocol.answer_turn_text("There is no card in the question.", "I cannot tell.")
    card = int(match.group(1))
    widths = [png_width(url) for url in image_urls(body)]
    asked_before = any(m.get("role") == "assistant" for m in body.get("messages") or [])
    if "small print" not in question or (widths and widths[-1] >= READABLE_WIDTH):
        return protocol.answer_turn_text(f"Card {card} is readable.", f"The value is \\boxed{{{card_value(card)}}}")
    if not asked_before:
        return protocol.tool_call_turn_text("The print is too small at this size.")
    return protocol.answer_turn_text("Still too small to read.", f"The value is \\boxed{{{GUESS}}}")


def png_width(data_url: str) -> int:
    """The width of a base64 PNG data URL, from its IHDR header alone (no decoding of the image)."""
    payload = data_url.partition(",")[2]
    header = base64.b64decode(payload[:32])  # 24 bytes: signature, IHDR length and type, width, height
    return struct.unpack(">I", header[16:20])[0]


def _question(body: dict) -> str:
    for message in body.get("messages") or []:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))
    return ""


def card_rows(count: int) -> list[dict]:
    """``count`` questions: every third about small print; every fifth reference is wrong on purpose (the judge
    then has some answers to mark wrong)."""
    rows = []
    for card in range(count):
        small = card % 3 == 0
        question = (f"<image>\nWhat is the value in the small print on card {card}?" if small
                    else f"<image>\nWhat is the value on card {card}?")
        value = card_value(card) if card % 5 else "0"
        rows.append({"doc_id": f"card-{card}", "problem": question, "original_answer": f"The value is {value}.",
                     "solution": value, "size": SMALL_PRINT_SIZE if small else PLAIN_SIZE,
                     "kind": "small_print" if small else "plain"})
    return rows


def write_cards(path: Path, count: int) -> Path:
    """A saved data set of ``count`` card questions in VisionThink's schema, each with its own plain image."""
    import datasets
    from PIL import Image

    rows = card_rows(count)
    datasets.Dataset.from_dict({
        "doc_id": [r["doc_id"] for r in rows],
        "problem": [r["problem"] for r in rows],
        "images": [[Image.new("RGB", r["size"], (card * 37 % 256, card * 91 % 256, 128))]
                   for card, r in enumerate(rows)],
        "original_answer": [r["original_answer"] for r in rows],
        "solution": [r["solution"] for r in rows],
        "kind": [r["kind"] for r in rows],
    }).save_to_disk(str(path))
    return path
