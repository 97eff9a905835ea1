"""The rewards on hand-built groups: the paper's Eq. 4-5 numbers (θ boundary included), the released code's variant,
the format rule, and what a failed judgement does."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.support.forcing import ANSWER_TURN, BAD_TOOL_TURN, TOOL_TURN
from train.judge import Judge, RuleJudge
from train.rewards import RewardSettings, VisionThinkRewards, group_penalties
from visionthink import protocol

PAPER = RewardSettings()
RELEASED = RewardSettings(penalty_mode="released")
LITERAL = RewardSettings(penalty_scope="all")


def totals(correct, high, settings, called=None):
    """accuracy + penalty of each rollout (format left out: it is the same 0.5 for well-formed ones)."""
    penalties = group_penalties(correct, high, settings, called)
    return [None if p is None else round(float(c) + p, 4) for c, p in zip(correct, penalties, strict=True)]


def test_r_at_theta_penalises_correct_high_resolution_answers():
    # 1 correct direct, 4 correct after the resize: r = 1/5 = 0.2 = θ, so resizing is penalised (r ≥ θ).
    correct, high = [True] + [True] * 4 + [False] * 3, [False] + [True] * 4 + [False] * 3
    assert totals(correct, high, PAPER) == [1.0, 0.9, 0.9, 0.9, 0.9, 0.0, 0.0, 0.0]
    # The released code divides by C_correct + 1e-4, so at exactly r = θ its r is 0.19999… < θ and the correct
    # direct answer is penalised as well.
    assert totals(correct, high, RELEASED) == [0.9, 0.9, 0.9, 0.9, 0.9, 0.0, 0.0, 0.0]
    # Just above θ both agree: 2 direct, 4 resized (r = 1/3).
    correct, high = [True] * 6, [False, False, True, True, True, True]
    assert totals(correct, high, PAPER) == totals(correct, high, RELEASED) == [1.0, 1.0, 0.9, 0.9, 0.9, 0.9]


def test_r_below_theta_penalises_correct_direct_answers():
    # 1 correct direct, 5 correct after the resize: r = 1/6 < 0.2: the low-res answers are rarely right.
    correct, high = [True] * 6 + [False, False], [False] + [True] * 5 + [False, False]
    assert totals(correct, high, PAPER) == [0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]  # resizing favoured
    assert totals(correct, high, RELEASED) == [0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.0, 0.0]  # no preference


def test_r_zero_with_a_correct_resize():
    correct, high = [True, True, False, False], [True, True, False, False]
    assert totals(correct, high, PAPER) == [1.0, 1.0, 0.0, 0.0]  # only correct direct answers are penalised
    assert totals(correct, high, LITERAL) == [1.0, 1.0, -0.1, -0.1]  # Eq. 5 read literally: wrong direct ones too
    assert totals(correct, high, RELEASED) == [0.9, 0.9, 0.0, 0.0]


def test_r_one_penalises_wrong_resizes_only_when_literal():
    correct, high = [True, True, False, False], [False, False, True, True]
    assert totals(correct, high, PAPER) == [1.0, 1.0, 0.0, 0.0]
    assert totals(correct, high, LITERAL) == [1.0, 1.0, -0.1, -0.1]


def test_no_correct_answer_no_penalty_and_unjudged_stay_unjudged():
    assert group_penalties([False] * 4, [True, False, True, False], LITERAL) == [0.0] * 4
    assert group_penalties([True, None, False, True], [False, True, False, True], PAPER) == [0.0, None, 0.0, -0.1]
    assert group_penalties([True, False], [True, False], RewardSettings(penalty_mode="none")) == [0.0, 0.0]


def test_theta_and_value_are_settings():
    correct, high = [True, True, True, True], [False, True, True, True]  # r = 0.25
    assert totals(correct, high, RewardSettings(penalty_theta=0.3, penalty_value=0.2)) == [0.8, 1.0, 1.0, 1.0]
    assert totals(correct, high, RewardSettings(penalty_theta=0.25, penalty_value=0.2)) == [1.0, 0.8, 0.8, 0.8]
    with pytest.raises(ValueError, match="penalty_mode"):
        RewardSettings(penalty_mode="sometimes")


# --- The reward functions on real token ids ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    from visionthink.hf import load_processor

    return load_processor(str(tiny_model_dir))


def completion(processor, *turns: str, injected: tuple[str, ...] = ()) -> list[int]:
    """The ids TRL would hand over: model turns, each ended by <|im_end|>, with the injected turns between."""
    tok = processor.tokenizer
    ids: list[int] = []
    for i, turn in enumerate(turns):
        ids += tok.encode(turn + protocol.IM_END, add_special_tokens=False)
        if i < len(injected):
            if injected[i] == "image":
                ids += list(processor(text=[protocol.tool_response_turn()],
                                      images=[Image.new("RGB", (56, 56))])["input_ids"][0])
            else:
                ids += tok.encode(protocol.error_turn(injected[i]), add_special_tokens=False)
    return ids


def call(rewards, ids, references, problems=None):
    problems = problems or ["<image>\nWhat is the value?"] * len(ids)
    kwargs = {"problem": problems, "original_answer": references, "solution": references}
    return [f(prompts=None, completions=None, completion_ids=ids, **kwargs) for f in rewards.functions]


def test_a_group_through_the_three_functions(processor):
    rewards = VisionThinkRewards(processor.tokenizer, RuleJudge(), PAPER, num_generations=4)
    ids = [
        completion(processor, ANSWER_TURN),  # direct, correct
        completion(processor, TOOL_TURN, ANSWER_TURN, injected=("image",)),  # resize, correct
        completion(processor, TOOL_TURN, ANSWER_TURN, injected=("image",)),  # resize, correct
        completion(processor, BAD_TOOL_TURN, ANSWER_TURN, injected=("Unknown function tool",)),  # bad call
    ]
    accuracy, fmt, penalty = call(rewards, ids, ["44.6"] * 4)
    assert accuracy == [1.0, 1.0, 1.0, 1.0]
    assert fmt == [0.5, 0.5, 0.5, 0.0]  # the invalid call is never well-formed, even though it answered
    # correct: direct = 2 (the plain answer and the answer after the refused call), high = 2; r = 0.5 ≥ θ
    assert penalty == [0.0, -0.1, -0.1, 0.0]
    assert [round(a + f + p, 4) for a, f, p in zip(accuracy, fmt, penalty)] == [1.5, 1.4, 1.4, 1.0]


def test_wrong_unanswered_and_truncated(processor):
    rewards = VisionThinkRewards(processor.tokenizer, RuleJudge(), PAPER, num_generations=4)
    tok = processor.tokenizer
    ids = [
        completion(processor, ANSWER_TURN),
        completion(processor, TOOL_TURN),  # a tool call the budget cut off: no answer
        tok.encode("<think>The value is", add_special_tokens=False),  # truncated mid-turn
        completion(processor, TOOL_TURN, TOOL_TURN, injected=("image",)),  # a second call ends the episode
    ]
    accuracy, fmt, penalty = call(rewards, ids, ["12"] * 4)
    assert accuracy == [0.0, 0.0, 0.0, 0.0] and fmt == [0.5, 0.0, 0.0, 0.0] and penalty == [0.0] * 4


class Failing(Judge):
    name = "failing"

    def score(self, question, reference, prediction):
        return None if "boxed" in (prediction or "") else 1


def test_a_failed_judgement_leaves_the_completion_unscored(processor):
    rewards = VisionThinkRewards(processor.tokenizer, Failing(), PAPER, num_generations=2)
    ids = [completion(processor, ANSWER_TURN), completion(processor, "<think>x</think><answer>7</answer>")]
    accuracy, fmt, penalty = call(rewards, ids, ["44.6", "7"], problems=["<image>\nA?"] * 2)
    assert (accuracy[0], fmt[0], penalty[0]) == (None, None, None)  # TRL drops it from the baseline
    assert (accuracy[1], fmt[1]) == (1.0, 0.5)


def test_a_split_group_is_refused_with_the_fields_to_change(processor):
    rewards = VisionThinkRewards(processor.tokenizer, RuleJudge(), PAPER, num_generations=4)
    ids = [completion(processor, ANSWER_TURN)] * 2
    with pytest.raises(ValueError, match="per_device_train_batch_size × steps_per_generation"):
        call(rewards, ids, ["44.6"] * 2)
    mixed = [completion(processor, ANSWER_TURN)] * 4
    with pytest.raises(ValueError, match="mixes prompts"):
        call(rewards, mixed, ["44.6"] * 4, problems=["<image>\nA?", "<image>\nA?", "<image>\nB?", "<image>\nB?"])


def test_the_batch_is_judged_once_for_all_three_functions(processor):
    class Counting(RuleJudge):
        calls = 0

        def score_many(self, items):
            Counting.calls += 1
            return super().score_many(items)

    rewards = VisionThinkRewards(processor.tokenizer, Counting(), PAPER, num_generations=2)
    call(rewards, [completion(processor, ANSWER_TURN)] * 2, ["44.6"] * 2)
    assert Counting.calls == 1


def test_always_penalises_every_high_resolution_answer_whatever_r_is():
    always = RewardSettings(penalty_mode="always")
    # r = 1/6 < θ: Eq. 5 would favour resizing; "always" still penalises it (the paper's Fig. 3a ablation).
    correct, high = [True] * 6 + [False, False], [False] + [True] * 5 + [False, True]
    assert totals(correct, high, always) == [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.0, 0.0]
    assert totals(correct, high, RewardSettings(penalty_mode="always", penalty_scope="all"))[-1] == -0.1
    assert group_penalties([None, True], [True, True], always) == [None, -0.1]


def test_metrics_per_kind_and_the_completions_log(processor, tmp_path):
    log = tmp_path / "completions.jsonl"
    rewards = VisionThinkRewards(processor.tokenizer, RuleJudge(), PAPER, num_generations=2, completions_log=log)
    ids = [completion(processor, ANSWER_TURN), completion(processor, TOOL_TURN, ANSWER_TURN, injected=("image",)),
           completion(processor, "<think>x</think><answer>red</answer>"),
           completion(processor, "<think>x</think><answer>blue</answer>")]
    metrics: dict[str, float] = {}
    kwargs = {"problem": ["<image>\nWhat is the value?"] * 2 + ["<image>\nWhat colour is the shape?"] * 2,
              "original_answer": ["44.6", "44.6", "red", "red"], "solution": ["44.6", "44.6", "red", "red"],
              "kind": ["pattern", "pattern", "colour", "colour"], "log_metric": metrics.__setitem__}
    rewards.accuracy_reward(prompts=None, completions=None, completion_ids=ids, **kwargs)
    assert metrics["visionthink/high_res_ratio/pattern"] == 0.5 and metrics["visionthink/high_res_ratio/colour"] == 0
    assert metrics["visionthink/accuracy/pattern"] == 1.0 and metrics["visionthink/accuracy/colour"] == 0.5
    rows = [__import__("json").loads(line) for line in log.read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["pattern", "pattern", "colour", "colour"]
    assert [r["requested_high_res"] for r in rows] == [False, True, False, False]
