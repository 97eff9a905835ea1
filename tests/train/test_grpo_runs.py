"""Training runs a maintainer can trust (tiny Qwen2.5-VL, CPU, TRL's real loop): each turn capped at
max_turn_tokens, checkpoint-N folders that load in the engine as trained, resume that continues, validation with
the best checkpoint kept, and the optional filter of groups whose rollouts all got the same reward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from trl import GRPOConfig, ModelConfig

from tests.support.forcing import ANSWER_TURN, BAD_TOOL_TURN, force_training_episodes
from tests.train.conftest import FULL, record_batches
from train.chat_template import TRAINING_CHAT_TEMPLATE
from train.grpo import SetupError, VisionThinkArguments, build_trainer, main


@pytest.fixture(scope="module")
def model_dir(train_model_dir):
    return train_model_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    import datasets
    import numpy as np

    rng = np.random.default_rng(1)
    folder = tmp_path_factory.mktemp("runs-data") / "grpo"
    datasets.Dataset.from_dict({
        "problem": [f"<image>\nWhat is the value of item {i}?" for i in range(4)],
        "images": [[Image.fromarray(rng.integers(0, 255, (*FULL, 3), dtype=np.uint8))] for _ in range(4)],
        "original_answer": ["44.6", "12", "7", "44.6"],
        "doc_id": [f"row-{i}" for i in range(4)],
    }).save_to_disk(str(folder))
    return folder


def trainer_for(model_dir, data_dir, out, *, first_turns=None, vt=None, **settings):
    arguments = dict(output_dir=str(out), use_cpu=True, bf16=False, gradient_checkpointing=False, num_generations=4,
                     per_device_train_batch_size=4, max_steps=1, learning_rate=1e-3, logging_steps=1,
                     report_to="none", beta=0.0, save_strategy="no", seed=0)
    arguments.update(settings)
    trainer = build_trainer(VisionThinkArguments(dataset=str(data_dir), judge="rule", **(vt or {})),
                            GRPOConfig(**arguments), ModelConfig(model_name_or_path=str(model_dir), dtype="float32"))
    if first_turns:
        force_training_episodes(trainer.model, trainer.processing_class.tokenizer, first_turns)
    batches = record_batches(trainer)
    return trainer, batches


def model_turn_lengths(batch) -> list[int]:
    """Lengths of the model's own turns: the runs of tool_mask 1 inside each completion."""
    lengths = []
    for mask, tool in zip(batch["completion_mask"], batch["tool_mask"], strict=True):
        run = 0
        for inside, model in zip(mask.tolist(), tool.tolist(), strict=True):
            if inside and model:
                run += 1
            elif run:
                lengths.append(run)
                run = 0
        if run:
            lengths.append(run)
    return lengths


def test_every_turn_stops_at_max_turn_tokens(model_dir, data_dir, tmp_path):
    """The random model rarely ends a turn by itself: before the cap was per turn, its first turns ran to the whole
    completion budget (two turns, the tool text and the full image: well over 100 tokens here)."""
    trainer, batches = trainer_for(model_dir, data_dir, tmp_path / "run", vt={"max_turn_tokens": 12})
    assert trainer.args.max_completion_length > 100
    trainer.train()
    lengths = model_turn_lengths(batches[0])
    assert lengths and max(lengths) <= 12
    assert max(lengths) == 12  # and turns do run up to it


def test_every_checkpoint_folder_loads_in_the_engine_as_trained(model_dir, data_dir, tmp_path):
    from visionthink.backends import TransformersBackend
    from visionthink.engine import Engine, GenerationSettings

    trainer, _ = trainer_for(model_dir, data_dir, tmp_path / "run", first_turns=[ANSWER_TURN], max_steps=2,
                             save_strategy="steps", save_steps=1)
    trainer.train()
    for step in (1, 2):
        folder = tmp_path / "run" / f"checkpoint-{step}"
        backend = TransformersBackend.load(str(folder), device="cpu")
        assert backend.processor.chat_template != TRAINING_CHAT_TEMPLATE
        assert "tool_response" not in (backend.processor.chat_template or "")
        assert backend.processor.tokenizer.response_template is None
        answer = Engine(backend, settings=GenerationSettings(max_new_tokens=4)).ask(Image.new("RGB", FULL), "What?")
        assert answer.turns
    assert trainer.processing_class.chat_template == TRAINING_CHAT_TEMPLATE  # the run keeps training's own


def recipe(tmp_path: Path, model_dir, data_dir, out: Path, **fields) -> Path:
    values = dict(model_name_or_path=str(model_dir), dtype="float32", dataset=str(data_dir), judge="rule",
                  max_turn_tokens=12, output_dir=str(out), use_cpu=True, bf16=False, gradient_checkpointing=False,
                  num_generations=4, per_device_train_batch_size=4, max_steps=3, learning_rate=1e-3, beta=0.0,
                  temperature=1.0, save_strategy="steps", save_steps=1, logging_steps=1, report_to="none", seed=0)
    values.update(fields)
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def steps_logged(folder: Path) -> list[int]:
    state = json.loads((folder / "trainer_state.json").read_text())
    return [entry["step"] for entry in state["log_history"] if "loss" in entry]


def test_resume_continues_the_step_count_optimizer_and_random_state(model_dir, data_dir, tmp_path):
    mixed = [BAD_TOOL_TURN, ANSWER_TURN]  # rewards differ within each group, so every step moves the weights
    run = dict(first_turns=mixed, max_steps=3, save_strategy="steps", save_steps=1)
    whole, _ = trainer_for(model_dir, data_dir, tmp_path / "whole", **run)
    whole.train()
    again, _ = trainer_for(model_dir, data_dir, tmp_path / "resumed", **run)
    again.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-1"))
    # two more steps, not three fresh ones: the step count went on from 1
    resumed = tmp_path / "resumed"
    assert sorted(p.name for p in resumed.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert steps_logged(resumed / "checkpoint-3") == [1, 2, 3]  # the first from the resumed checkpoint's own log
    # with the weights, optimizer, scheduler and RNG restored, the same three steps end in the same weights
    a, b = weights(tmp_path / "whole" / "checkpoint-3"), weights(resumed / "checkpoint-3")
    first = weights(tmp_path / "whole" / "checkpoint-1")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not all(torch.equal(a[k], first[k]) for k in a)  # and they did move after step 1


def test_resume_from_last_and_a_missing_checkpoint(model_dir, data_dir, tmp_path, caplog):
    out = tmp_path / "run"
    assert main(["--config", str(recipe(tmp_path, model_dir, data_dir, out, max_steps=1))]) == 0
    assert main(["--config", str(recipe(tmp_path, model_dir, data_dir, out, max_steps=2)),
                 "--resume_from_checkpoint", "last"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert main(["--config", str(recipe(tmp_path, model_dir, data_dir, tmp_path / "empty")),
                 "--resume_from_checkpoint", "last"]) == 2
    assert "holds no checkpoint-N folder" in caplog.text
    assert main(["--config", str(recipe(tmp_path, model_dir, data_dir, tmp_path / "other")),
                 "--resume_from_checkpoint", str(tmp_path)]) == 2
    assert "is not a checkpoint folder" in caplog.text


def test_validation_runs_during_training_and_the_best_checkpoint_is_kept(model_dir, data_dir, tmp_path):
    trainer, _ = trainer_for(
        model_dir, data_dir, tmp_path / "run", first_turns=[BAD_TOOL_TURN, ANSWER_TURN], vt={"eval_rows": 2},
        max_steps=2,
        eval_strategy="steps", eval_steps=1, per_device_eval_batch_size=4, save_strategy="steps", save_steps=1,
        save_total_limit=1, metric_for_best_model="rewards/accuracy_reward/mean", load_best_model_at_end=True)
    held_out = set(trainer.eval_dataset["problem"])
    assert len(held_out) == 2 and not held_out & set(trainer.train_dataset["problem"])
    trainer.train()
    evaluations = [e for e in trainer.state.log_history if "eval_rewards/accuracy_reward/mean" in e]
    assert [e["step"] for e in evaluations] == [1, 2]
    assert all(0.0 <= e["eval_rewards/accuracy_reward/mean"] <= 1.0 and e["eval_completions/mean_length"] > 0
               and e["eval_visionthink/high_res_ratio"] == 0.0  # the request ratio on the held-out rows
               and e["eval_visionthink/tokens/first_turn"] > 0 for e in evaluations)
    best = Path(trainer.state.best_model_checkpoint)
    assert best.is_dir() and best.parent == tmp_path / "run"  # kept even with save_total_limit 1
    # load_best_model_at_end really loaded it (every weight)
    from visionthink.hf import load_model

    kept = load_model(str(best), device="cpu").state_dict()
    assert all(torch.equal(value, kept[name]) for name, value in trainer.model.state_dict().items())
    # the forced answers score the same at both evaluations, so the first stays best; the weights moved in step 2
    # (the rewards differ within each group), so the model equals it only because it was loaded back
    assert best.name == "checkpoint-1" and not (tmp_path / "run" / "checkpoint-2").exists()


def test_validation_data_without_evaluation_steps_is_refused(model_dir, data_dir, tmp_path):
    with pytest.raises(SetupError, match="eval_strategy"):
        trainer_for(model_dir, data_dir, tmp_path / "run", vt={"eval_rows": 1})
    with pytest.raises(SetupError, match="leaves nothing to train on"):
        trainer_for(model_dir, data_dir, tmp_path / "run", vt={"eval_rows": 4}, eval_strategy="steps")


@pytest.mark.parametrize("first_turns, uniform", [([ANSWER_TURN], True), ([BAD_TOOL_TURN, ANSWER_TURN], False)])
def test_groups_whose_rollouts_all_scored_alike_can_be_left_out_of_the_loss(model_dir, data_dir, tmp_path,
                                                                            first_turns, uniform):
    kept, _ = trainer_for(model_dir, data_dir, tmp_path / "kept", first_turns=first_turns)
    dropped, batches = trainer_for(model_dir, data_dir, tmp_path / "dropped", first_turns=first_turns,
                                   vt={"drop_uniform_groups": True})
    _, kept_batches = kept, kept._generate_and_score_completions
    dropped.train()
    batch = batches[0]
    fraction = [e["groups/uniform_fraction"] for e in dropped.state.log_history if "groups/uniform_fraction" in e]
    assert fraction == [1.0 if uniform else 0.0]
    if uniform:  # nothing left in the loss, and the normaliser counts nothing
        assert batch["completion_mask"].sum() == 0 and batch["num_items_in_batch"] == 0
    else:
        assert batch["completion_mask"].sum() > 0 and batch["num_items_in_batch"] > 0
