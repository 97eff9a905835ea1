"""VisionThink's dataset row (``visionthink.rows``): the writer, the reader's rules on real saved datasets and parquet
files, and a conversation as TRL messages."""

from __future__ import annotations

import io
from collections import Counter

import datasets
import numpy as np
import pytest
from PIL import Image

from visionthink import protocol, rows


def picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_make_row_writes_the_schema() -> None:
    row = rows.make_row("How many dots?", picture(0), "There are \\boxed{4}", needs_high_res=True,
                        data_source="here", doc_id="d1")
    assert list(row) == list(rows.FEATURES)
    assert row["problem"] == "<image>\nHow many dots?" and row["solution"] == "4"
    assert rows.make_row("<image> What?", picture(0), "red", needs_high_res=None, data_source="here",
                         doc_id="d2")["problem"] == "<image> What?"  # the marker is not added twice
    extra = rows.make_row("What?", picture(0), "red", solution="RED", needs_high_res=False, data_source="here",
                          doc_id="d3", kind="colour")
    assert (extra["solution"], extra["kind"]) == ("RED", "colour")
    saved = datasets.Dataset.from_list([extra], features=rows.features(kind=datasets.Value("string")))
    assert saved[0]["images"][0].size == (16, 12) and saved[0]["kind"] == "colour"


@pytest.mark.parametrize(("record", "reason"), [
    ({"problem": "What?", "images": [], "original_answer": "a"}, "not_one_image"),
    ({"problem": "What?", "images": ["x", "y"], "original_answer": "a"}, "not_one_image"),
    ({"problem": "What?", "images": None, "original_answer": "a"}, "no_image"),
    ({"problem": "What?", "image": None, "original_answer": "a"}, "no_image"),
    ({"problem": "  ", "images": ["x"], "original_answer": "a"}, "no_problem"),
    ({"problem": "What?", "images": ["x"], "original_answer": " ", "solution": None}, "no_reference"),
    ({"problem": "What?", "images": ["x"]}, "no_reference"),
])
def test_rows_that_cannot_be_used_are_skipped_for_a_reason(record: dict, reason: str) -> None:
    with pytest.raises(rows.Skipped) as skipped:
        rows.read_row(record)
    assert skipped.value.reason == reason and reason in rows.SKIP_REASONS


def test_read_row_keeps_text_as_spelled_and_falls_back_to_the_solution() -> None:
    row = rows.read_row({"problem": "<image>\nWhat? ", "image": "cell", "original_answer": "  ", "solution": " 4",
                         "kind": "", "category": "count", "doc_id": 7})
    assert (row.problem, row.image, row.original_answer, row.solution, row.reference) == (
        "<image>\nWhat? ", "cell", None, " 4", " 4")
    assert (row.kind, row.category, row.doc_id, row.released, row.info) == (None, "count", "7", False, None)
    released = rows.read_row({"problem": "What?", "images": ["cell"], "original_answer": "a", "info": None})
    assert released.released and released.info is None and released.reference == "a"


def test_read_rows_of_a_saved_dataset_and_its_parquet(tmp_path) -> None:
    source = [
        {"problem": "<image>\nFirst?", "images": [png(picture(1))], "original_answer": "a", "solution": None},
        {"problem": "<image>\nNo image?", "images": [], "original_answer": "b", "solution": None},
        {"problem": "<image>\nNo answer?", "images": [png(picture(2))], "original_answer": None, "solution": ""},
        {"problem": "<image>\nLast?", "images": [png(picture(3))], "original_answer": None, "solution": "d"},
    ]
    features = datasets.Features({"problem": datasets.Value("string"), "images": datasets.List(datasets.Image()),
                                  "original_answer": datasets.Value("string"), "solution": datasets.Value("string")})
    dataset = datasets.Dataset.from_list(source, features=features)
    dataset.save_to_disk(str(tmp_path / "saved"))
    dataset.to_parquet(str(tmp_path / "rows.parquet"))
    for layout in ("saved", "rows.parquet"):
        loaded = rows.load_source(tmp_path / layout)
        skipped: Counter = Counter()
        usable = list(rows.read_rows(loaded, skipped))
        assert [(r.index, r.problem, r.reference) for r in usable] == [(0, "<image>\nFirst?", "a"),
                                                                        (3, "<image>\nLast?", "d")], layout
        assert usable[0].image["bytes"] == png(picture(1))  # read as Arrow: not decoded
        assert skipped == {"not_one_image": 1, "no_reference": 1}
        assert len(rows.load_source(tmp_path / layout, limit=2)) == 2


def test_load_source_says_what_is_wrong(tmp_path) -> None:
    datasets.Dataset.from_list([{"question": "What?", "answer": "a"}]).save_to_disk(str(tmp_path / "other"))
    with pytest.raises(rows.DataError, match="has no problem, images, original_answer or solution column"):
        rows.load_source(tmp_path / "other")
    assert rows.missing_columns(["problem", "image", "solution"]) == []
    (tmp_path / "notes.txt").write_text("hello")
    for source, message in [(tmp_path / "notes.txt", "neither a saved dataset"),
                            (tmp_path / "nowhere", "does not exist"), ("not/a/hub/id", "does not exist"),
                            ("data.parquet", "does not exist")]:
        with pytest.raises(rows.DataError, match=message):
            rows.load_source(source)


def test_a_conversation_as_trl_messages() -> None:
    conversation = protocol.Conversation.start("How many dots?")
    conversation.add_model_turn(protocol.tool_call_text())
    conversation.add_tool_response()
    messages = conversation.to_trl()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    slots = [part for m in messages for part in m["content"] if part["type"] == "image"]
    assert slots == [{"type": "image", "text": None}] * conversation.image_count == [slots[0]] * 2
    text = lambda part: protocol.IMAGE_PLACEHOLDER if part["type"] == "image" else part["text"]  # noqa: E731
    assert ["".join(map(text, m["content"])) for m in messages] == [m.text for m in conversation.messages]
    assert all(part["text"] != "" for m in messages for part in m["content"])
    assert datasets.Dataset.from_list([{"prompt": messages}], features=datasets.Features(
        {"prompt": rows.MESSAGES}))[0]["prompt"] == messages
