"""`python -m train.retrain` on a CPU: ratings in a real store become a trained, evaluated, registered checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from store.api import Actor, Store
from tests.store.conftest import build_answer
from train.retrain import held_out

ROOT = Path(__file__).resolve().parents[2]


def test_held_out_rows_are_a_stable_share():
    ids = [f"doc-{i}" for i in range(2000)]
    chosen = [i for i in ids if held_out(i, 0.1)]
    assert 150 < len(chosen) < 250 and chosen == [i for i in ids if held_out(i, 0.1)]
    assert not any(held_out(i, 0.0) for i in ids) and all(held_out(i, 1.0) for i in ids)


def retrain(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.retrain", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_OFFLINE": "1",
                                            **(env or {})})


def test_retrain_from_a_random_model_exports_holds_out_evaluates_and_refuses_what_learnt_nothing(tmp_path):
    """The random model never writes the format, so every reward is 0 and one step changes no weight: the run is
    evaluated on held-out rows and then refused, not registered (the miniature's loop is tests/train/
    test_feedback_loop.py)."""
    from visionthink.tiny import build_tiny_model

    base = build_tiny_model(tmp_path / "current-model")
    url = f"sqlite:///{tmp_path / 'studio.db'}"
    store = Store(url)
    rng = np.random.default_rng(9)
    for i in range(6):
        image = Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
        ask = store.record(build_answer(f"How many dots in picture {i}?", model=str(base)), image,
                           Actor.anonymous("s"), consent=True)
        for rater in ("ann", "bob"):
            store.rate(Actor(rater, "annotator"), ask, verdict="incorrect", reference_answer=str(i))
    store.close()

    too_few = retrain("--base", str(base), "--db", url, "--out", str(tmp_path / "nope"), "--min-rows", "50")
    assert too_few.returncode == 1
    assert "Only 6 judged answers can be used for training (at least 50" in too_few.stderr
    assert "Traceback" not in too_few.stderr

    out = tmp_path / "run"
    result = retrain("--recipe", "train/recipes/cpu-smoke.yaml", "--base", str(base), "--db", url, "--out", str(out),
                     "--judge", "rule", "--min-rows", "4", "--eval-fraction", "0.34", "--eval-modes", "low",
                     "--", "--max_turn_tokens", "12", "--max_steps", "1")
    assert result.returncode == 3, result.stderr[-3000:]
    assert "Not registered: its weights are identical to the base model's" in result.stdout
    checkpoint = out / "checkpoint"
    assert (checkpoint / "model.safetensors").exists()
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["base"] == str(base) and comparison["checkpoint"] == str(checkpoint)
    assert comparison["held_out"] is True and comparison["held_out_rows"] == 2
    assert set(comparison["modes"]["low"]) == {"current", "new"}
    for name in ("current", "new"):
        summary = json.loads((out / "eval" / name / "summary.json").read_text())
        assert summary["model"] == (str(base) if name == "current" else str(checkpoint))
        assert summary["modes"]["low"]["items"] == summary["data"]["items"] == 2
    train_rows = json.loads((out / "train-data" / "state.json").read_text())
    assert train_rows  # the held-out rows were saved apart
    assert "Serve it:" not in result.stdout

    store = Store(url)
    versions = {model: source for model, _, source, _ in store.model_versions()}
    assert str(checkpoint) not in versions
    store.close()
