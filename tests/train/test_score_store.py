"""`python -m train.score_store`: the rule judge scores rated answers and the agreement is reported and stored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from store.api import Actor, Store
from tests.store.conftest import build_answer, sample_image

ROOT = Path(__file__).resolve().parents[2]


def test_scoring_rated_answers_from_the_command_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    store = Store(url)
    for seed, (verdict, reference) in enumerate([("correct", "44.6"), ("incorrect", "12"), ("correct", "\\boxed{44.6}")]):
        ask = store.record(build_answer(f"Q{seed}?", answer="The value is 44.6"), sample_image(seed), Actor.system(),
                           consent=True)
        for rater in ("ann", "bob"):
            store.rate(Actor(rater, "annotator"), ask, verdict=verdict, reference_answer=reference)
    command = [sys.executable, "-m", "train.score_store", "--judge", "rule", "--db", url]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert first.returncode == 0, first.stderr
    assert "Judged 3 rated answers with rule (0 judgements failed)." in first.stdout
    assert "agreement 100.0%, Cohen's kappa 1.000" in first.stdout
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert "Judged 0 rated answers" in again.stdout  # nothing new to judge
    rows = store.dashboard(Actor.system()).agreement
    assert [(r.judge, r.items, r.agreement) for r in rows] == [("rule", 3, 1.0)]
    store.close()
    bad = subprocess.run([sys.executable, "-m", "train.score_store", "--db", "nonsense://x"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
