"""An automatic judge's verdicts on rated answers, and its agreement with people (rate and Cohen's kappa)."""

from __future__ import annotations

import pytest

from store.api import Actor, PermissionDenied, Store, cohen
from store.db import StoreError
from tests.store.conftest import build_answer, sample_image

SYSTEM, ANN, BOB = Actor.system(), Actor("ann", "annotator"), Actor("bob", "annotator")


def test_cohen_kappa_on_known_tables():
    assert cohen([]) == (None, None)
    assert cohen([(1, 1), (0, 0), (1, 1), (0, 0)]) == (1.0, 1.0)
    agreement, kappa = cohen([(1, 1)] * 20 + [(1, 0)] * 5 + [(0, 1)] * 10 + [(0, 0)] * 15)  # a textbook 2x2
    assert agreement == pytest.approx(0.7) and kappa == pytest.approx(0.4)
    assert cohen([(1, 1), (1, 1)]) == (1.0, None)  # one class on both sides: kappa undefined
    assert cohen([(1, 0), (0, 1)])[1] == pytest.approx(-1.0)


def rated(store: Store, seed: int, verdict: str, reference: str, model: str = "vt-a") -> int:
    ask = store.record(build_answer(f"Q{seed}?", model=model, answer="44.6"), sample_image(seed), SYSTEM, consent=True)
    for rater in (ANN, BOB):
        store.rate(rater, ask, verdict=verdict, reference_answer=reference)
    return ask


def test_judge_targets_and_agreement_per_version(store: Store):
    right = rated(store, 0, "correct", "44.6")
    wrong = rated(store, 1, "incorrect", "12")
    other = rated(store, 2, "correct", "44.6", model="vt-b")
    lone = store.record(build_answer("Unrated?"), sample_image(3), SYSTEM, consent=True)
    store.rate(ANN, lone, verdict="correct")  # one rating of two: no consensus, not a target

    targets = store.judge_targets(SYSTEM, "rule")
    assert [(t.ask_id, t.reference_answer, t.prediction) for t in targets] == [
        (right, "44.6", "44.6"), (wrong, "12", "44.6"), (other, "44.6", "44.6")]
    store.record_judgement(SYSTEM, right, "rule", 1, "44.6")
    store.record_judgement(SYSTEM, wrong, "rule", 1, "12")  # the judge disagrees with people here
    store.record_judgement(SYSTEM, other, "rule", None, "44.6")  # failed: counted, not compared
    assert store.judge_targets(SYSTEM, "rule") == []
    assert len(store.judge_targets(SYSTEM, "rule", rejudge=True)) == 3

    rows = {(a.judge, a.model_id): a for a in store.dashboard(SYSTEM).agreement}
    a = rows[("rule", "vt-a")]
    assert (a.items, a.agreement, a.judge_failures) == (2, 0.5, 0)
    assert a.kappa == pytest.approx(0.0)  # people: 1/0, judge: 1/1 → chance-level agreement
    b = rows[("rule", "vt-b")]
    assert (b.items, b.agreement, b.kappa, b.judge_failures) == (0, None, None, 1)

    store.record_judgement(SYSTEM, wrong, "rule", 0, "12")  # a later verdict supersedes the earlier one
    a = next(r for r in store.dashboard(SYSTEM).agreement if r.model_id == "vt-a")
    assert (a.agreement, a.kappa) == (1.0, 1.0)


def test_only_admins_judge_and_verdicts_are_checked(store: Store):
    ask = rated(store, 0, "correct", "44.6")
    for actor in (ANN, Actor.anonymous("s")):
        with pytest.raises(PermissionDenied):
            store.judge_targets(actor, "rule")
        with pytest.raises(PermissionDenied):
            store.record_judgement(actor, ask, "rule", 1, "44.6")
    with pytest.raises(StoreError, match="0, 1 or None"):
        store.record_judgement(SYSTEM, ask, "rule", 2, "44.6")
    assert store.dashboard(SYSTEM).agreement == []
