"""Fuzz tests for the two places hostile input reaches first: ``load_image`` on mutated image files and
``parse_turn`` on arbitrary and almost-valid model turns.

Each property says what may come out: ``load_image`` returns an RGB image or raises ``ImageError`` with a message
for a person, nothing else; ``parse_turn`` never raises and returns one of the documented kinds. Hypothesis runs
derandomized (the same examples every run, so CI never flakes) with no example database (nothing is written to
the working tree) and few, bounded examples (at most ``FUZZ_MAX_PIXELS`` pixels decoded, short turns parsed),
so the file takes seconds on two cores. No deadline: how long an example takes depends on the machine, not the code.
"""

from __future__ import annotations

import io
import json
import typing

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from visionthink.images import ImageError, load_image
from visionthink.protocol import (
    END_OF_TEXT,
    IM_END,
    TurnKind,
    answer_turn_text,
    parse_turn,
    strip_stop,
    tool_call_text,
    tool_call_turn_text,
)


def fuzz_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=False,
    )


# --- load_image on mutated files -------------------------------------------------------------------------------

#: A mutated header can claim any size; decoding is attempted up to this many pixels (the limit is tested apart).
FUZZ_MAX_PIXELS = 1_000_000

#: Beginnings of every message ``load_image`` refuses with; each says what was wrong and what to do.
MESSAGES_FOR_A_PERSON = (
    "is truncated or damaged and cannot be decoded",
    "is not an image this app can read",
    "The image is too large",
    "The image has no pixels",
    "colour mode are not supported",
    "is empty (0 bytes)",
)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _seed_files() -> dict[str, bytes]:
    """Small valid files of every format Pillow writes here, each a few hundred bytes."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    rgba = Image.fromarray(rng.integers(0, 256, (12, 16, 4), dtype=np.uint8))
    grey16 = Image.fromarray(rng.integers(0, 65536, (12, 16), dtype=np.uint16))
    grey32 = Image.fromarray(rng.integers(0, 100_000, (12, 16), dtype=np.int32))
    grey_float = Image.fromarray(rng.random((12, 16), dtype=np.float32) * 2)
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "PNG": _encode(rgb, "PNG"),
        "PNG (RGBA)": _encode(rgba, "PNG"),
        "PNG (palette, transparency)": _encode(rgb.quantize(8), "PNG", transparency=0),
        "JPEG (EXIF rotation)": _encode(rgb, "JPEG", quality=90, exif=exif),
        "JPEG (progressive)": _encode(rgb, "JPEG", progressive=True),
        "GIF (2 frames)": _encode(rgb, "GIF", save_all=True, append_images=[rgb.rotate(90)]),
        "TIFF": _encode(rgb, "TIFF"),
        "TIFF (deflate)": _encode(rgb, "TIFF", compression="tiff_adobe_deflate"),
        "WebP": _encode(rgb, "WEBP"),
        "WebP (lossless)": _encode(rgb, "WEBP", lossless=True),
        "BMP": _encode(rgb, "BMP"),
        "16-bit PNG": _encode(grey16, "PNG"),
        "16-bit TIFF": _encode(grey16, "TIFF"),
        "32-bit TIFF": _encode(grey32, "TIFF"),
        "float TIFF (deflate)": _encode(grey_float, "TIFF", compression="tiff_adobe_deflate"),
    }


SEEDS = _seed_files()


@st.composite
def mutated(draw: st.DrawFn, seed: str) -> bytes:
    """``SEEDS[seed]`` after one to four byte flips, overwrites, truncations, insertions, deletions or splices.

    Positions favour the first 64 bytes, where the headers that decide everything live.
    """
    data = bytearray(SEEDS[seed])
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        last = len(data) - 1
        position = draw(st.one_of(st.integers(0, min(63, last)), st.integers(0, last)))
        operation = draw(st.sampled_from(["flip", "overwrite", "truncate", "insert", "delete", "splice"]))
        if operation == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "overwrite":
            data[position] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF]) | st.integers(0, 255))
        elif operation == "truncate":
            del data[position:]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "delete":
            del data[position : position + draw(st.integers(1, 16))]
        else:  # splice: the rest of the file comes from a piece of another (or the same) format
            other = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
            start = draw(st.integers(0, len(other) - 1))
            data[position:] = other[start : start + draw(st.integers(1, len(other)))]
    return bytes(data)


def test_seed_files_are_valid():
    # Guard: every seed loads, so a refusal of a mutant is the mutation's doing.
    for name, data in SEEDS.items():
        image = load_image(data)
        assert image.mode == "RGB" and image.size in ((16, 12), (12, 16)), name


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # Pillow warns about each corrupt EXIF block it meets
@pytest.mark.parametrize("seed", sorted(SEEDS))
@fuzz_settings(max_examples=60)
@given(data=st.data())
def test_load_image_on_mutated_files_gives_rgb_or_an_image_error(seed, data):
    blob = data.draw(mutated(seed), label="file")
    try:
        image = load_image(blob, max_pixels=FUZZ_MAX_PIXELS)
    except ImageError as exc:
        message = str(exc)
        assert any(stem in message for stem in MESSAGES_FOR_A_PERSON), message
        return
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    assert 1 <= image.width * image.height <= FUZZ_MAX_PIXELS
    image.tobytes()  # the pixels are really there


# --- parse_turn on arbitrary text and near-misses --------------------------------------------------------------

KINDS = typing.get_args(TurnKind)
TAGS = ("<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>")
FRAGMENTS = (*TAGS, IM_END, END_OF_TEXT, "\n", " ", "\\boxed{", "}", "{", "}}", tool_call_text(), '"resize_image"',
             '"resize"', "<tool_response>", "<think", "think>", "</", "<<answer>>")
#: Words a text may use without containing a tag.
PLAIN = st.text(st.characters(exclude_characters="<>", exclude_categories=["Cs"]), max_size=40)


def check_turn(text: str):
    """Parse ``text`` and check the contract every caller relies on; returns the turn."""
    turn = parse_turn(text)
    assert turn.kind in KINDS
    assert turn.text == strip_stop(text)
    if turn.kind == "invalid":
        assert isinstance(turn.reason, str) and turn.reason.strip()
    else:
        assert turn.reason is None and turn.think is not None
    if turn.kind == "answer":
        assert turn.answer is not None and not turn.attempted_tool_call
    if turn.kind == "tool_call":
        assert turn.attempted_tool_call
    return turn


def json_values() -> st.SearchStrategy:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@st.composite
def tool_call_bodies(draw: st.DrawFn) -> str:
    """Bodies near the one valid call: other keys and values, broken JSON, deep nesting, huge numbers."""
    key = st.sampled_from(["name", "arguments", "action", "Name", "args", ""]) | st.text(max_size=8)
    value = st.sampled_from(["resize_image", "resize", "zoom", "resize_image "]) | json_values()
    arguments = st.dictionaries(key, value, max_size=3) | json_values()
    kind = draw(st.sampled_from(["object", "mutated", "nested", "number", "duplicate"]))
    if kind == "object":
        call = draw(st.dictionaries(key, value | arguments, max_size=4))
        if draw(st.booleans()):
            call = {"name": draw(value), "arguments": draw(arguments)}
        return json.dumps(call, indent=draw(st.sampled_from([None, 1])))
    if kind == "mutated":  # the canonical body with a few characters changed, dropped or added
        body = list('{"name": "resize_image", "arguments": {"action": "resize"}}')
        for _ in range(draw(st.integers(1, 3))):
            position = draw(st.integers(0, len(body) - 1))
            action = draw(st.sampled_from(["drop", "replace", "add"]))
            if action == "drop":
                del body[position]
            else:
                body[position : position + (action == "replace")] = draw(st.characters(codec="utf-8"))
        return "".join(body)
    if kind == "nested":  # past the JSON decoder's recursion limit
        depth = draw(st.integers(1, 5000))
        opener = draw(st.sampled_from(["[", '{"a":', '{"arguments":']))
        return opener * depth + draw(st.sampled_from(["", "1", "]" * depth]))
    if kind == "number":
        return '{"name": "resize_image", "arguments": {"action": ' + "9" * draw(st.integers(1, 6000)) + "}}"
    return '{"name": "resize_image", "name": "resize_image", "arguments": {"action": "resize"}}'


@fuzz_settings(max_examples=300)
@given(st.text(max_size=500))
def test_parse_turn_on_arbitrary_text(text):
    check_turn(text)


@fuzz_settings(max_examples=300)
@given(st.lists(st.sampled_from(FRAGMENTS) | PLAIN, max_size=12).map("".join))
def test_parse_turn_on_tag_soup(text):
    check_turn(text)


@fuzz_settings(max_examples=300)
@given(
    think=PLAIN,
    before=st.sampled_from(["", "\n", " ", "x"]),
    between=st.sampled_from(["", "\n", "Let me look closer. "]),
    open_tag=st.sampled_from(["<tool_call>", "<tool_call>\n", "<tool_call >", ""]),
    body=tool_call_bodies(),
    close_tag=st.sampled_from(["</tool_call>", "\n</tool_call>", "", "</tool_call></tool_call>"]),
    after=st.sampled_from(["", "\n", IM_END, END_OF_TEXT + "junk", " more", "<answer>1</answer>"]),
)
def test_parse_turn_on_near_miss_tool_calls(think, before, between, open_tag, body, close_tag, after):
    check_turn(f"{before}<think>{think}</think>{between}{open_tag}{body}{close_tag}{after}")


@fuzz_settings(max_examples=200)
@given(st.permutations(["<think>", "thinking", "</think>", "<answer>", "\\boxed{42}", "</answer>"]))
def test_parse_turn_on_reordered_answer_turns(pieces):
    turn = check_turn("".join(pieces))
    if pieces == ["<think>", "thinking", "</think>", "<answer>", "\\boxed{42}", "</answer>"]:
        assert turn.kind == "answer" and turn.boxed == "42"


@fuzz_settings(max_examples=200)
@given(think=PLAIN, answer=PLAIN)
def test_well_formed_turns_parse_as_what_they_are(think, answer):
    turn = check_turn(answer_turn_text(think, answer) + IM_END)
    assert turn.kind == "answer"
    assert turn.think == think.strip() and turn.answer == answer.strip()
    call = check_turn(tool_call_turn_text(think))
    assert call.kind == "tool_call" and call.think == think.strip()


@pytest.mark.parametrize("opener", ["[", '{"a": '])
def test_deeply_nested_tool_call_is_invalid_not_a_crash(opener):
    # Found by the fuzzing above: json.loads raised RecursionError out of parse_turn.
    turn = parse_turn(f"<think>x</think><tool_call>{opener * 100_000}</tool_call>")
    assert turn.kind == "invalid" and turn.attempted_tool_call
    assert "nested too deeply" in turn.reason
