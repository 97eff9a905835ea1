"""``python -m train.evaluate`` on the tiny model: three items, three modes, the table, the JSON, the plot, resuming.

The tiny model is forced to write what a VisionThink model would: on the item with small print it asks for the
full image from the 1/4 image, reads 44.6 from the full image and guesses 12 without it; elsewhere it answers 44.6
at once. References make some answers right and some wrong.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from tests.support.forcing import ANSWER_TURN, TOOL_TURN, forcing_factory
from train import evaluate as ev
from train.judge import RuleJudge
from visionthink.backends import TransformersBackend
from visionthink.engine import Engine, GenerationSettings
from visionthink.images import low_res_size, visual_tokens

ROOT = Path(__file__).resolve().parents[2]
GUESS_TURN = "<think>Still too small to read.</think>\n<answer>The value is \\boxed{12}</answer>"
ZOOM_SIZE = (336, 224)
# doc_id, size, problem, original_answer, solution. The model answers 44.6 (12 for chart-1 without the full image).
ROWS = [
    ("chart-1", ZOOM_SIZE, "<image>\nWhat is the value in the small print?", "The value is 44.6.", "44.6"),
    ("chart-2", (224, 168), "<image>\nWhat is the total?", "The total is 12.", "12"),
    ("chart-3", (280, 196), "<image>\nWhat is the value of Beta in Q3?", "44.6", "44.6"),
]


class Crash(BaseException):
    """A stand-in for the process being killed: not an engine error, so nothing catches it."""


class Scripted:
    """The tiny model's backend, forced per request to the turns the module docstring describes; counts episodes."""

    def __init__(self, inner: TransformersBackend, *, stop_after: int | None = None) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.pixel_limits = inner.pixel_limits
        self.stop_after = stop_after
        self.episodes = 0

    def generate(self, request):
        if request.turn_index == 0:
            if self.stop_after is not None and self.episodes >= self.stop_after:
                raise Crash
            self.episodes += 1
        small_print = "small print" in request.conversation.render()
        if not small_print or request.images[0].size == ZOOM_SIZE:  # high mode starts with the full image
            turn = ANSWER_TURN
        elif request.turn_index == 0:
            turn = TOOL_TURN
        else:
            turn = ANSWER_TURN if len(request.images) == 2 else GUESS_TURN
        self.inner.logits_processor_factory = forcing_factory(self.inner.processor.tokenizer, [turn])
        yield from self.inner.generate(request)


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir) -> TransformersBackend:
    from visionthink.hf import load_model, load_processor

    return TransformersBackend(load_model(str(tiny_model_dir), device="cpu"), load_processor(str(tiny_model_dir)),
                               "vt-tiny-forced")


def make_engine(tiny_backend, **kwargs) -> tuple[Engine, Scripted]:
    backend = Scripted(tiny_backend, **kwargs)
    return Engine(backend, settings=GenerationSettings(max_new_tokens=128)), backend


def picture(size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("eval-data") / "three"
    datasets.Dataset.from_dict({
        "problem": [r[2] for r in ROWS],
        "images": [[picture(r[1], seed)] for seed, r in enumerate(ROWS)],
        "original_answer": [r[3] for r in ROWS],
        "solution": [r[4] for r in ROWS],
        "doc_id": [r[0] for r in ROWS],
        "data_source": ["test"] * len(ROWS),
    }).save_to_disk(str(path))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_main(argv: list[str]) -> int:
    try:
        return ev.main(argv)
    except SystemExit as exc:  # argparse's own errors
        return exc.code


@pytest.fixture(autouse=True)
def clean_visionthink_env(monkeypatch):
    """No VISIONTHINK_* setting of the calling shell (judge, model, fallback) leaks into these runs."""
    for name in list(os.environ):
        if name.startswith("VISIONTHINK_"):
            monkeypatch.delenv(name)


def test_three_items_give_the_table_json_and_plot_and_a_second_run_reruns_nothing(
        tiny_backend, dataset_dir, tmp_path, monkeypatch, capsys):
    engine, backend = make_engine(tiny_backend)
    loaded = []

    def fake_load_engine(settings, progress=None):
        loaded.append(settings)
        return engine

    monkeypatch.setattr(ev, "load_engine", fake_load_engine)
    out = tmp_path / "out"
    argv = ["--model", "some/model", "--data", str(dataset_dir), "--judge", "rule", "--out", str(out)]
    assert run_main(argv) == 0
    assert loaded[0].model == "some/model" and loaded[0].fallback == "none"
    table = capsys.readouterr().out
    assert backend.episodes == 9

    # The table: one row per mode with its accuracy; the high-res ratio only where it applies.
    cells = [re.split(r"\s{2,}", line.strip()) for line in table.splitlines()]  # cells are 2+ spaces apart
    header = next(c for c in cells if c[0] == "mode")
    rows = {c[0]: dict(zip(header, c, strict=True)) for c in cells if c[0] in ("auto", "low", "high")}
    assert set(rows) == {"auto", "low", "high"}
    assert [rows[m]["accuracy"] for m in ("auto", "low", "high")] == ["66.7% (2/3)", "33.3% (1/3)", "66.7% (2/3)"]
    assert rows["auto"]["high-res"] == "33.3%"  # 1 of 3 auto episodes asked for the full image
    assert rows["low"]["high-res"] == "—" and rows["high"]["high-res"] == "—"
    assert rows["high"]["retained"] == "100.0%" and rows["auto"]["items"] == "3"
    assert "auto vs high (3 items answered in both): accuracy +0.0 points" in table

    # The JSON: accuracy, ratios and tokens computed from the images' sizes.
    low = [visual_tokens(*low_res_size(*r[1])) for r in ROWS]
    full = [visual_tokens(*r[1]) for r in ROWS]
    used = {"auto": sum(low) + full[0], "low": sum(low), "high": sum(full)}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "vt-tiny-forced" and summary["judge"] == "rule" and summary["items"] == 3
    assert summary["data"]["source"] == str(dataset_dir)
    assert summary["settings"]["modes"] == ["auto", "low", "high"]
    assert summary["settings"]["max_new_tokens"] == 128
    modes = summary["modes"]
    for mode, correct in (("auto", 2), ("low", 1), ("high", 2)):
        s = modes[mode]
        assert (s["items"], s["errors"], s["judged"], s["judge_failures"], s["correct"]) == (3, 0, 3, 0, correct)
        assert s["accuracy"] == pytest.approx(correct / 3)
        assert s["tokens_used_total"] == used[mode] and s["tokens_full_res_total"] == sum(full)
        assert s["mean_tokens_used"] == pytest.approx(used[mode] / 3)
        assert s["retained_ratio"] == pytest.approx(used[mode] / sum(full))
        assert s["latency_mean_s"] > 0 and s["latency_p50_s"] <= s["latency_p90_s"]
    assert modes["auto"]["high_res_requests"] == 1 and modes["auto"]["high_res_ratio"] == pytest.approx(1 / 3)
    assert modes["low"]["high_res_ratio"] is None and modes["high"]["high_res_ratio"] is None
    assert [modes[m]["tool_call_episodes"] for m in ("auto", "low", "high")] == [1, 1, 0]
    assert modes["high"]["retained_ratio"] == 1.0
    auto_vs_high = summary["comparisons"]["auto_vs_high"]
    assert auto_vs_high["accuracy_diff_points"] == pytest.approx(0.0)
    assert auto_vs_high["token_ratio"] == pytest.approx(used["auto"] / sum(full))
    assert summary["comparisons"]["low_vs_high"]["accuracy_diff_points"] == pytest.approx(-100 / 3)

    # The plot is a real PNG of a readable size.
    with Image.open(out / "summary.png") as plot:
        assert plot.format == "PNG" and plot.width >= 800 and plot.height >= 400

    # One line per item and mode, with what the episode did.
    results = lines(out / "results.jsonl")
    assert len(results) == 9
    assert {(r["item"], r["mode"]) for r in results} == {(r[0], m) for r in ROWS for m in ("auto", "low", "high")}
    zoom_auto = next(r for r in results if r["item"] == "chart-1" and r["mode"] == "auto")
    assert zoom_auto["requested_high_res"] is True and zoom_auto["turn_kinds"] == ["tool_call", "answer"]
    assert zoom_auto["tokens"] == {"low_res": low[0], "high_res": full[0], "used": low[0] + full[0],
                                   "full_res": full[0], "saved": -low[0], "retained_ratio": pytest.approx(
                                       (low[0] + full[0]) / full[0])}
    assert zoom_auto["verdict"] == 1 and zoom_auto["judge"] == "rule" and zoom_auto["turns"] == 2

    # A second run resumes everything: no episode runs again, and the numbers stay.
    assert run_main(argv) == 0
    assert backend.episodes == 9
    assert len(lines(out / "results.jsonl")) == 9
    again = json.loads((out / "summary.json").read_text())
    assert again["modes"] == summary["modes"] and again["run"]["episodes_run"] == 0
    assert again["run"]["reused"] == 9
    assert capsys.readouterr().out == table


def test_a_stopped_run_resumes_to_one_line_per_item_and_mode(tiny_backend, dataset_dir, tmp_path):
    items = ev.load_items(dataset_dir)
    out = tmp_path / "out"
    engine, backend = make_engine(tiny_backend, stop_after=4)
    with pytest.raises(Crash):
        ev.evaluate(engine, items, judge=RuleJudge(), out_dir=out, progress=False)
    results_file = out / "results.jsonl"
    assert len(lines(results_file)) == 4  # every finished episode was written before the crash
    with results_file.open("a") as handle:  # and the crash tore the next line in half
        handle.write('{"item": "chart-2", "mode": "lo')

    engine, backend = make_engine(tiny_backend)
    report = ev.evaluate(engine, items, judge=RuleJudge(), out_dir=out, progress=False)
    results = lines(results_file)
    assert len(results) == 9 and backend.episodes == 5
    assert len({(r["item"], r["mode"]) for r in results}) == 9
    assert report.run["reused"] == 4 and report.run["episodes_run"] == 5
    assert report.modes["auto"].accuracy == pytest.approx(2 / 3)

    # Lines deleted by hand are run again, and only they.
    results_file.write_text("".join(json.dumps(r) + "\n" for r in results[:7]))
    report = ev.evaluate(engine, items, judge=RuleJudge(), out_dir=out, progress=False)
    assert backend.episodes == 7 and len(lines(results_file)) == 9 and report.run["episodes_run"] == 2


class PartlyFailingJudge(RuleJudge):
    """Fails (None) on the references it is told to, like an LLM judge whose endpoint gave up."""

    name = "flaky"

    def __init__(self, failing: set[str]) -> None:
        super().__init__()
        self.failing = failing

    def score(self, question, reference, prediction):
        return None if reference in self.failing else super().score(question, reference, prediction)


def test_a_failed_judgement_is_counted_and_left_out_of_accuracy_then_judged_again(tiny_backend, tmp_path):
    items = [ev.EvalItem(r[0], picture(r[1], seed), r[2], r[3], r[4]) for seed, r in enumerate(ROWS)]
    engine, backend = make_engine(tiny_backend)
    report = ev.evaluate(engine, items, modes=["auto"], judge=PartlyFailingJudge({"44.6"}),
                         out_dir=tmp_path, progress=False)
    auto = report.modes["auto"]
    # chart-1 and chart-3 (reference 44.6) fail to be judged; chart-2 is judged wrong.
    assert (auto.judged, auto.judge_failures, auto.correct, auto.accuracy) == (1, 2, 0, 0.0)
    assert "0.0% (0/1)" in report.table()
    assert json.loads(report.summary_json.read_text())["modes"]["auto"]["judge_failures"] == 2

    # Another run judges the stored answers again (without asking the model) and supersedes the old lines.
    report = ev.evaluate(engine, items, modes=["auto"], judge=RuleJudge(), out_dir=tmp_path, progress=False)
    assert backend.episodes == 3 and report.run["episodes_run"] == 0 and report.run["rejudged"] == 3
    assert len(lines(tmp_path / "results.jsonl")) == 6  # the new verdicts supersede the old lines
    assert (report.modes["auto"].judged, report.modes["auto"].accuracy) == (3, pytest.approx(2 / 3))


def test_engine_errors_are_recorded_and_the_run_goes_on(tiny_backend, tmp_path):
    items = [ev.EvalItem("broken", b"this is not an image", "<image>\nWhat?", "1"),
             ev.EvalItem("chart-3", picture(ROWS[2][1], 2), ROWS[2][2], ROWS[2][3], ROWS[2][4])]
    engine, _ = make_engine(tiny_backend)
    report = ev.evaluate(engine, items, modes=["low"], judge=RuleJudge(), out_dir=tmp_path, progress=False)
    low = report.modes["low"]
    assert (low.items, low.errors, low.judged, low.accuracy) == (2, 1, 1, 1.0)
    assert low.error_types == {"ImageError": 1}
    broken = next(r for r in lines(tmp_path / "results.jsonl") if r["item"] == "broken")
    assert broken["verdict"] is None and "not an image" in broken["error"]
    assert "broken" not in report.comparisons  # no high mode: nothing to compare with


def test_load_items_ids_references_and_skipped_rows(tmp_path):
    image = picture((64, 48), 0)
    path = tmp_path / "data"
    datasets.Dataset.from_dict({
        "problem": ["<image>\nA?", "<image>\nB?", "<image>\nC?", "<image>\nD?"],
        "images": [[image], [image], [image], [image]],
        "original_answer": ["", "Bee", None, "Dee"],
        "solution": ["a", "b", None, "d"],
    }).save_to_disk(str(path))
    items = ev.load_items(path)
    assert len(items) == 3 and items.skipped == {"no_reference": 1}
    assert [i.reference for i in items] == ["a", "Bee", "Dee"]
    assert items[1].reference_for(RuleJudge()) == "b" and items[1].solution == "b"
    assert all(len(i) == 16 for i in items.ids) and len(set(items.ids)) == 3
    assert ev.load_items(path).ids == items.ids  # the same data gives the same ids
    assert ev.load_items(path, limit=1).ids == items.ids[:1]
    assert isinstance(items[0].image, bytes)  # not decoded until the engine needs it


def test_load_items_from_parquet_with_one_image_column_strips_text_and_counts_every_skip(tmp_path, caplog):
    image = picture((32, 32), 0)
    path = tmp_path / "bench.parquet"
    datasets.Dataset.from_dict({
        "problem": ["  <image>\nA?  ", "  <image>\nA?  ", "  <image>\nA?  ", "<image>\nB?", "   ", "<image>\nC?"],
        "image": [image, image, image, None, image, image],
        "solution": [" a ", " a ", " a ", "b", "c", "c"],
        "doc_id": ["q1", "q1", "q1", "q2", "q3", None],
        "needs_high_res": [True, True, True, None, None, False],
        "kind": [None, None, None, None, None, " colour "],
    }).to_parquet(str(path))
    with caplog.at_level("WARNING", logger="train.evaluate"):
        items = ev.load_items(path)
    assert items.ids[:2] == ["q1", f"q1#{items.ids[1].split('#')[1]}"] and len(items.ids[2]) == 16
    assert items.skipped == {"duplicate": 1, "no_image": 1, "no_problem": 1}
    assert f"Skipped 3 rows of {path}: 1 duplicate, 1 no image, 1 no problem." in caplog.text
    assert [(i.question, i.reference, i.solution) for i in items[:2]] == [("<image>\nA?", "a", "a")] * 2
    assert [i.kind for i in items] == ["needs_full_image", "needs_full_image", "colour"]
    assert all(isinstance(i.image, bytes) for i in items)

    datasets.Dataset.from_dict({"question": ["<image>\nA?"], "image": [image], "solution": ["a"]}).to_parquet(
        str(tmp_path / "other.parquet"))
    with pytest.raises(ev.EvalError, match=r"other\.parquet has no problem column; it is not in VisionThink's schema"):
        ev.load_items(tmp_path / "other.parquet")


def test_a_second_writer_of_the_same_results_file_is_refused_until_the_first_closes(tmp_path):
    path = tmp_path / ev.RESULTS_FILE
    with ev.ResultsLog(path):
        with pytest.raises(ev.EvalError, match="Another evaluation is writing to .*choose another --out"):
            ev.ResultsLog(path)
    with ev.ResultsLog(path) as results_log:  # free again once the first writer is done
        assert results_log.results == []


def cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VISIONTHINK_")}
    return subprocess.run([sys.executable, "-m", "train.evaluate", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**clean, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=timeout)


def test_cli_end_to_end_with_the_model_loaded_from_its_folder(tiny_model_dir, dataset_dir, tmp_path):
    out = tmp_path / "out"
    result = cli("--model", str(tiny_model_dir), "--data", str(dataset_dir), "--limit", "1", "--modes", "low",
                 "--judge", "rule", "--device", "cpu", "--max-new-tokens", "8", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert any(line.startswith("low ") for line in result.stdout.splitlines())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == str(tiny_model_dir) and summary["items"] == 1 and list(summary["modes"]) == ["low"]
    assert len(lines(out / "results.jsonl")) == 1
    with Image.open(out / "summary.png") as plot:
        assert plot.format == "PNG"


def test_cli_refuses_to_evaluate_the_fallback(dataset_dir, tmp_path):
    out = tmp_path / "out"
    result = cli("--data", str(dataset_dir), "--out", str(out), env={"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 1
    assert "Could not load Senqiao/VisionThink-Efficient" in result.stderr and "--allow-fallback" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_an_engine_with_a_fallback_notice_is_refused_unless_allowed(tiny_backend, dataset_dir, tmp_path, monkeypatch,
                                                                    capsys):
    engine, _ = make_engine(tiny_backend)
    engine.notice = "Could not load the model. Running the embedded miniature instead."
    monkeypatch.setattr(ev, "load_engine", lambda settings, progress=None: engine)
    argv = ["--data", str(dataset_dir), "--limit", "1", "--modes", "low", "--out", str(tmp_path / "out")]
    assert run_main(argv) == 1
    assert "embedded miniature" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert run_main([*argv, "--allow-fallback"]) == 0
    assert "WARNING: Could not load the model" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["notice"] == engine.notice


@pytest.mark.parametrize("args, message", [
    (["--modes", "auto,zoom"], "Unknown mode 'zoom'"),
    (["--limit", "0"], "--limit must be at least 1"),
    (["--data", "./no/such/folder"], "There is no file or folder ./no/such/folder"),
    (["--judge", "oracle"], "invalid choice: 'oracle'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_arguments_exit_2_with_one_line(args, message, dataset_dir, monkeypatch, capsys):
    monkeypatch.setattr(ev, "load_engine", lambda *a, **k: pytest.fail("the model must not be loaded"))
    argv = ["--data", str(dataset_dir), *args] if "--data" not in args else args
    assert run_main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], captured.err
    assert captured.out == ""


def test_default_output_folder_names():
    assert ev.default_out_dir("Senqiao/VisionThink-Efficient") == Path("runs/eval/Senqiao--VisionThink-Efficient")
    assert ev.default_out_dir("/models/vt step 100/") == Path("runs/eval/vt_step_100")
