"""The evaluation report per category of question: a benchmark's ``category`` column groups the items, and each
group's row gives its n, accuracy with the 95% Wilson interval, and the high-resolution request ratio, in the table
and in ``summary.json``'s ``by_kind``.

The items come from a real saved dataset through ``load_items`` and are judged by the real rule judge; the answers
are what ``ask`` would record, so no model is loaded here (``test_evaluate.py`` runs the whole loop on one).
"""

from __future__ import annotations

import dataclasses
import json

import datasets
import numpy as np
import pytest
from PIL import Image

from train import evaluate as ev
from train.judge import RuleJudge
from train.report import ModeSummary, Report, summarise_mode

# problem, answer, category; "chart" items are answered 44.6 in auto mode, 2 of 3 right, one after asking for the
# full image; the "ocr" item is answered wrong without asking.
ROWS = [
    ("<image>\nWhat is the value?", "44.6", "chart"),
    ("<image>\nWhat is the peak?", "44.6", "chart"),
    ("<image>\nWhat is the total?", "12", "chart"),
    ("<image>\nWhat does the sign say?", "STOP", "ocr"),
]
ANSWERS = ["44.6", "44.6", "44.6", "YIELD"]
ASKED = [True, False, False, False]


@pytest.fixture
def items(tmp_path):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8))
    path = tmp_path / "bench"
    datasets.Dataset.from_dict({
        "problem": [r[0] for r in ROWS], "images": [[image]] * len(ROWS), "solution": [r[1] for r in ROWS],
        "category": [r[2] for r in ROWS], "doc_id": [f"q{i}" for i in range(len(ROWS))],
    }).save_to_disk(str(path))
    return ev.load_items(path)


def report(items, tmp_path) -> Report:
    results = []
    for item, answer, asked in zip(items, ANSWERS, ASKED, strict=True):
        result = ev.Result(item=item.id, mode="auto", model="m", settings={}, question=item.question,
                           reference=item.reference, solution=item.solution, kind=item.kind, answer=answer,
                           requested_high_res=asked, stop_reason="answer",
                           turn_kinds=["tool_call", "answer"] if asked else ["answer"],
                           tokens={"used": 80 if asked else 16, "full_res": 64}, latency_s=1.0)
        results.append(result)
    ev.judge_results(RuleJudge(), results, {i.id: i for i in items})
    kinds = sorted({r.kind for r in results})
    return Report(
        model="m", model_source="test", judge="rule", data=items.describe(),
        modes={"auto": summarise_mode("auto", results)}, comparisons={},
        by_kind={k: {"auto": summarise_mode("auto", [r for r in results if r.kind == k])} for k in kinds},
        settings={}, judge_stats=None, run={}, out_dir=tmp_path,
    )


def test_the_category_column_groups_the_items(items) -> None:
    assert [i.kind for i in items] == ["chart", "chart", "chart", "ocr"]


def test_a_kind_column_still_wins_over_category(tmp_path) -> None:
    image = Image.new("RGB", (32, 32))
    path = tmp_path / "both"
    datasets.Dataset.from_dict({"problem": ["<image>\nA?"], "images": [[image]], "solution": ["a"],
                                "kind": ["colour"], "category": ["chart"]}).save_to_disk(str(path))
    assert ev.load_items(path)[0].kind == "colour"


def test_each_category_row_shows_n_accuracy_with_its_interval_and_the_request_ratio(items, tmp_path) -> None:
    made = report(items, tmp_path)
    table = made.table()
    rows = {line.split()[0]: line for line in table.splitlines()[table.splitlines().index("By kind of question:"):]
            if line.split() and line.split()[0] in ("chart", "ocr")}
    # chart: 2 of 3; Wilson 95%: (2/3 + z²/6) / (1 + z²/3) ± ... = 0.2077–0.9385
    assert "66.7% (20.8–93.9%), n=3" in rows["chart"] and "33.3%" in rows["chart"]  # 1 of 3 asked
    # ocr: 0 of 1; the upper bound is z² / (1 + z²) = 0.7935
    assert "0.0% (0.0–79.3%), n=1" in rows["ocr"] and " 0.0% " in rows["ocr"]  # never asked: a ratio of 0, shown
    assert "accuracy (95% interval), n judged" in table

    written = json.loads(json.dumps(made.to_dict()))
    chart = written["by_kind"]["chart"]["auto"]
    assert (chart["items"], chart["judged"], chart["correct"]) == (3, 3, 2)
    assert chart["accuracy_ci95"] == pytest.approx([0.2077, 0.9385], abs=1e-4)
    assert chart["high_res_ratio"] == pytest.approx(1 / 3)
    ocr = written["by_kind"]["ocr"]["auto"]
    assert ocr["accuracy_ci95"] == pytest.approx([0.0, 0.7935], abs=1e-4) and ocr["high_res_ratio"] == 0.0
    assert "Wilson" in written["definitions"]["by_kind"] and "category" in written["definitions"]["by_kind"]
    # the overall modes keep their fields unchanged
    assert set(written["modes"]["auto"]) == {f.name for f in dataclasses.fields(ModeSummary)}
