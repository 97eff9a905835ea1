"""The miniature's build recipe (train.miniature) and its ablation report (train.ablations), on their own parts."""

from __future__ import annotations

import json
import random
from collections import Counter

from train import ablations
from train.miniature import Recipe, choose_path, sft_batches, held_out_seed, train_seed
from visionthink import protocol
from visionthink.miniature import task


def test_the_warm_start_transcripts_are_blind_to_the_kind_of_question():
    """Every kind asks about half the time in auto mode; only the background's tint, which no question is about,
    tilts it (so that greedy decoding is not all one way)."""
    recipe = Recipe()
    rng = random.Random(0)
    items = task.sample(3000, 3)
    paths = Counter((item.kind, item.warm, choose_path(item, rng, recipe)) for item in items for _ in range(4))
    for kind in task.KINDS:
        asked = {warm: paths[(kind, warm, "request")] / (paths[(kind, warm, "request")] + paths[(kind, warm, "direct")])
                 for warm in (True, False)}
        assert abs(asked[True] - recipe.ask_share_warm) < 0.05 and abs(asked[False] - recipe.ask_share_cool) < 0.05
        total = sum(paths[(kind, w, p)] for w in (True, False) for p in ("direct", "request", "high", "refused"))
        assert abs(sum(paths[(kind, w, "high")] for w in (True, False)) / total - 0.125) < 0.03


def test_sft_batches_start_with_the_pattern_then_the_shape_then_mix_every_kind():
    recipe = Recipe(batch_size=8)
    batches = sft_batches(task.sample(90, 4, kinds=recipe.train_kinds), recipe, random.Random(1))
    first = batches(0)
    assert all(task.kind_of(e.question) == "pattern" for e in first)
    assert {e.mode for e in first} <= {"auto", "high"}
    assert all(protocol.parse_turn(e.turns[-1]).kind == "answer" for e in first)
    shape_stage = [e for step in range(recipe.pattern_steps, recipe.pattern_steps + 20) for e in batches(step)]
    kinds = Counter(task.kind_of(e.question) for e in shape_stage)
    assert set(kinds) == {"shape", "pattern"}  # the pattern stage rehearsed
    assert abs(kinds["pattern"] / len(shape_stage) - recipe.shape_rehearsal) < 0.1
    # ... with the full image from the start, so that it teaches reading the texture and not a decision.
    assert all(e.mode == "high" for e in shape_stage if task.kind_of(e.question) == "pattern")
    mixed = recipe.pattern_steps + recipe.shape_steps
    later = [e for step in range(mixed, mixed + 40) for e in batches(step)]
    kinds = Counter(task.kind_of(e.question) for e in later)
    assert set(kinds) == set(task.KINDS) and kinds["shape"] > kinds["pattern"] > kinds["colour"]
    assert {e.mode for e in later} == {"auto", "high", "low"}


def test_held_out_items_never_share_the_training_seed():
    for seed in range(5):
        assert train_seed(Recipe(seed=seed)) != held_out_seed(Recipe(seed=seed))


def test_ablation_curves_and_table_from_a_completions_log(tmp_path):
    log = tmp_path / "completions.jsonl"
    rows = []
    for step in range(20):
        for kind in task.KINDS:
            asks = kind == "pattern" and step >= 10
            rows.append({"step": step, "kind": kind, "requested_high_res": asks,
                         "correct": 1 if kind != "pattern" or asks else 0})
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    curve = ablations.curves(log, window=10)
    assert curve["steps"] == [5.0, 15.0]
    assert curve["high_res_ratio/pattern"] == [0.0, 1.0] and curve["accuracy/pattern"] == [0.0, 1.0]
    assert curve["high_res_ratio/colour"] == [0.0, 0.0] and curve["accuracy/shape"] == [1.0, 1.0]
    final = {k: {"high_res_ratio": 1.0 if k == "pattern" else 0.0, "accuracy": 1.0, "well_formed_ratio": 1.0}
             for k in task.KINDS}
    text = ablations.table({"paper": {"curves": curve, "final": final}})
    assert "| Eq. 5 (θ 0.2), as trained | 0% / 100% | 0% / 100% | 100% / 100% | 100% (worst kind) |" in text
    ablations.plot({"paper": {"curves": curve, "final": final}}, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000
