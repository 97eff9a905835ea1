"""Experiment tracking: a short GRPO run on the tiny model (CPU) with ``report_to: tensorboard`` writes the rewards by
component, the high-resolution request ratio, the penalty counts and the tokens per turn to TensorBoard's event
files and to the trainer's log history; the GPU recipes have it on."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from PIL import Image
from trl import GRPOConfig, ModelConfig

from tests.support.forcing import ANSWER_TURN, TOOL_TURN, force_training_episodes
from tests.train.conftest import FULL
from train.grpo import VisionThinkArguments, build_trainer

ROOT = Path(__file__).resolve().parents[2]
#: What every logging step must carry, by component (TRL's names for the three reward functions, ours for the rest).
TRACKED = ["rewards/accuracy_reward/mean", "rewards/format_reward/mean", "rewards/penalty_reward/mean", "reward",
           "visionthink/high_res_ratio", "visionthink/penalised/direct", "visionthink/penalised/high_res",
           "visionthink/tokens/first_turn", "visionthink/tokens/second_turn", "visionthink/truncated",
           "visionthink/well_formed", "visionthink/judge_failures"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, train_model_dir):
    """Two steps on one prompt whose answer is 44.6: in each group of 4, two completions answer from the 1/4 image
    and two ask for the full image, all four correctly (r = 0.5 ≥ θ, so the two high-resolution answers lose 0.1)."""
    folder = tmp_path_factory.mktemp("tracking")
    model_dir = train_model_dir
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (*FULL, 3), dtype=np.uint8))
    datasets.Dataset.from_dict({"problem": ["<image>\nWhat is the value of Beta in Q3?"], "images": [[image]],
                                "original_answer": ["44.6"], "solution": ["44.6"]}).save_to_disk(str(folder / "data"))
    out = folder / "run"
    training = GRPOConfig(output_dir=str(out), use_cpu=True, bf16=False, gradient_checkpointing=False,
                          num_generations=4, per_device_train_batch_size=4, max_steps=2, learning_rate=1e-3,
                          logging_steps=1, report_to="tensorboard", beta=0.0, save_strategy="no", seed=0)
    trainer = build_trainer(VisionThinkArguments(dataset=str(folder / "data"), judge="rule", max_turn_tokens=96),
                            training, ModelConfig(model_name_or_path=str(model_dir), dtype="float32"))
    tokenizer = trainer.processing_class.tokenizer
    force_training_episodes(trainer.model, tokenizer, [TOOL_TURN, ANSWER_TURN])
    trainer.train()
    return trainer, out, tokenizer


def _expected(tokenizer) -> dict[str, float]:
    tokens = {text: len(tokenizer.encode(text, add_special_tokens=False)) for text in (TOOL_TURN, ANSWER_TURN)}
    return {
        "rewards/accuracy_reward/mean": 1.0, "rewards/format_reward/mean": 0.5,
        "rewards/penalty_reward/mean": -0.05, "reward": 1.45,
        "visionthink/high_res_ratio": 0.5, "visionthink/penalised/direct": 0.0, "visionthink/penalised/high_res": 0.5,
        "visionthink/tokens/first_turn": (tokens[TOOL_TURN] + tokens[ANSWER_TURN]) / 2,
        "visionthink/tokens/second_turn": float(tokens[ANSWER_TURN]),
        "visionthink/truncated": 0.0, "visionthink/well_formed": 1.0, "visionthink/judge_failures": 0.0,
    }


def test_every_step_logs_the_tracked_metrics_with_their_values(run):
    trainer, _, tokenizer = run
    steps = [h for h in trainer.state.log_history if "reward" in h]
    assert [h["step"] for h in steps] == [1, 2]
    expected = _expected(tokenizer)
    for entry in steps:
        assert {name: entry[name] for name in TRACKED} == pytest.approx(expected)


def test_tensorboard_event_files_hold_them(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, out, tokenizer = run
    folders = [p for p in (out / "runs").iterdir() if p.is_dir()]
    assert len(folders) == 1 and list(folders[0].glob("events.out.tfevents.*"))
    events = EventAccumulator(str(folders[0]))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    expected = _expected(tokenizer)
    for name in TRACKED:
        tag = f"train/{name}"  # transformers' TensorBoardCallback prefixes the training logs
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
        assert [e.step for e in events.Scalars(tag)] == [1, 2]
        assert [e.value for e in events.Scalars(tag)] == pytest.approx([expected[name]] * 2, rel=1e-6)


def test_penalty_counts_tokens_and_judge_failures_from_the_reward_functions():
    """The reward functions alone, on one group of 8: one correct direct answer, six correct answers after the full
    image and one the judge failed on. r = 1/7 < θ, so the direct answer loses the penalty (Eq. 5)."""
    from train.rewards import RewardSettings, VisionThinkRewards
    from visionthink import protocol

    end, assistant = protocol.IM_END, f"{protocol.IM_START}assistant\n"
    tool_turn = f"{protocol.IM_START}user\n{protocol.VISION_START}{protocol.IMAGE_PAD}{protocol.VISION_END}{end}\n"
    direct = ANSWER_TURN + end
    high = TOOL_TURN + end + tool_turn + assistant + ANSWER_TURN + end

    class Judge:
        name = "fake"

        def score_many(self, items):
            return [1, 1, 1, 1, 1, 1, 1, None]

    class Tokenizer:  # one token per word
        def decode(self, ids, skip_special_tokens=False):
            return direct if ids == [0] else high

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [t.split() for t in texts]}

    logged: dict[str, list[float]] = {}
    rewards = VisionThinkRewards(Tokenizer(), Judge(), RewardSettings(), num_generations=8)
    kwargs = {"problem": ["q"] * 8, "original_answer": ["44.6"] * 8,
              "log_metric": lambda name, value: logged.setdefault(name, []).append(value)}
    ids = [[i] for i in range(8)]
    accuracy, _, penalty = [f([None] * 8, [None] * 8, ids, **kwargs) for f in rewards.functions]
    assert accuracy == [1.0] * 7 + [None]
    assert penalty == [-0.1] + [0.0] * 6 + [None]
    words = len(ANSWER_TURN.split()), len(TOOL_TURN.split())
    assert logged == {
        "visionthink/high_res_ratio": [7 / 8], "visionthink/well_formed": [1.0], "visionthink/truncated": [0.0],
        "visionthink/judge_failures": [1.0],
        "visionthink/tokens/first_turn": [(words[0] + 7 * words[1]) / 8],
        "visionthink/tokens/second_turn": [float(words[0])],
        "visionthink/penalised/direct": [1 / 8], "visionthink/penalised/high_res": [0.0],
    }


@pytest.mark.parametrize("name", ["efficient-7b", "lora-1gpu"])
def test_the_gpu_recipes_report_to_tensorboard(name):
    recipe = yaml.safe_load((ROOT / "train" / "recipes" / f"{name}.yaml").read_text())
    assert recipe["report_to"] == "tensorboard" and recipe["logging_steps"] == 1
