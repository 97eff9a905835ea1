"""The feedback loop in short, on the shipped miniature: the uninformed start answers, annotators rate through the
store's API, `python -m train.retrain` trains, evaluates on held-out items and registers, and refuses to register
what was not held out or did not change."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from store.api import Actor, Store
from visionthink.loader import load_engine
from visionthink.miniature import model as miniature_model
from visionthink.miniature import task
from visionthink.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
START = miniature_model.START_DIR


def retrain(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.retrain", "--recipe", "train/recipes/miniature.yaml",
                           "--base", str(START), "--judge", "rule", "--eval-modes", "auto", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_OFFLINE": "1",
                               "OMP_NUM_THREADS": "2"})


def rated_store(path: Path, items: list[task.Item]) -> str:
    """Answers of the start to ``items``, recorded with consent and rated by two annotators as they would."""
    url = f"sqlite:///{path}"
    engine = load_engine(Settings(model=str(START), fallback="none", device="cpu", max_new_tokens=64))
    store = Store(url)
    for item in items:
        answer = engine.ask(item.image, item.question)
        ask = store.record(answer, item.image, Actor.anonymous("visitor"), consent=True, source="local")
        for rater in ("ann", "bob"):
            right = (answer.final_answer or "").strip().lower() == item.answer
            store.rate(Actor(rater, "annotator"), ask, verdict="correct" if right else "incorrect",
                       reference_answer=item.answer,
                       decision="needed_full" if item.kind in task.FINE_KINDS else "low_enough")
    store.close()
    return url


@pytest.fixture(scope="module")
def feedback(tmp_path_factory) -> str:
    return rated_store(tmp_path_factory.mktemp("loop") / "studio.db", task.sample(24, 4242))


def versions(url: str) -> dict[str, str]:
    store = Store(url)
    try:
        return {model: source for model, _, source, _ in store.model_versions()}
    finally:
        store.close()


def test_retrain_trains_evaluates_on_held_out_items_and_registers(feedback, tmp_path):
    out = tmp_path / "run"
    result = retrain("--db", feedback, "--out", str(out), "--eval-fraction", "0.25", "--", "--max_steps", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["held_out"] is True and comparison["held_out_rows"] == 6
    held = {row["doc_id"] for row in _rows(out / "eval-data")}
    trained_on = {row["doc_id"] for row in _rows(out / "train-data")}
    assert len(held) == 6 and len(trained_on) == 18 and not held & trained_on
    # Evaluated per the annotators' decision label, the start against the new checkpoint.
    groups = comparison["by_kind"]["auto"]
    assert set(groups) == {"needs_full_image", "low_res_enough"}
    assert all(set(rows) == {"current", "new"} for rows in groups.values())
    assert versions(feedback)[str(out / "checkpoint")].startswith("retrain:")
    assert "By kind of question (auto)" in result.stdout and "Serve it:" in result.stdout


def test_retrain_refuses_a_checkpoint_whose_weights_did_not_change(feedback, tmp_path):
    out = tmp_path / "still"
    result = retrain("--db", feedback, "--out", str(out), "--eval-fraction", "0.25",
                     "--", "--max_steps", "2", "--learning_rate", "0")
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Not registered: its weights are identical to the base model's" in result.stdout
    assert (out / "comparison.json").exists()  # the evaluation is kept for a look
    assert str(out / "checkpoint") not in versions(feedback)


def test_retrain_refuses_a_checkpoint_evaluated_only_on_its_training_rows(tmp_path):
    url = rated_store(tmp_path / "one.db", task.sample(1, 77))
    out = tmp_path / "alone"
    result = retrain("--db", url, "--out", str(out), "--min-rows", "1",
                     "--", "--max_steps", "1", "--per_device_train_batch_size", "8")
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Not registered: it was evaluated only on the rows it was trained on" in result.stdout
    assert "Traceback" not in result.stderr
    assert str(out / "checkpoint") not in versions(url)


def _rows(folder: Path) -> list[dict]:
    import datasets

    return list(datasets.load_from_disk(str(folder)).remove_columns(["images"]))
