"""The shipped recipes and accelerate configs, and the whole path from rated answers to a trained checkpoint:
store → grpo export → training rows → `python -m train.grpo --config train/recipes/cpu-smoke.yaml` → the engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from trl import GRPOConfig, ModelConfig, TrlParser

from store.api import Actor, Store
from store.export import export
from tests.support.forcing import ANSWER_TURN, TOOL_TURN
from train.data import prompt_messages, training_dataset
from train.grpo import VisionThinkArguments, check_setup
from visionthink import protocol
from visionthink.engine import Answer, TurnRecord
from visionthink.images import TokenReport, downsample

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "train" / "recipes"
ON_CPU = ["--bf16", "false", "--use_cpu", "true"]  # GPU recipes can only be built as configs here


def parse(name: str, *extra: str):
    return TrlParser((VisionThinkArguments, GRPOConfig, ModelConfig)).parse_args_and_config(
        ["--config", str(RECIPES / f"{name}.yaml"), *extra])


def test_the_paper_recipe_holds_the_paper_settings():
    raw = yaml.safe_load((RECIPES / "efficient-7b.yaml").read_text())
    vt, training, model = parse("efficient-7b", *ON_CPU)
    assert model.model_name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct" and raw["bf16"] is True
    assert (training.num_generations, training.learning_rate, training.beta, training.entropy_coef,
            training.epsilon) == (16, 1e-6, 0.001, 0.001, 0.2)
    assert raw["gradient_checkpointing"] is True and training.lr_scheduler_type == "constant"
    assert (training.use_vllm, training.vllm_mode, training.vllm_tensor_parallel_size) == (True, "colocate", 1)
    assert (vt.max_turn_tokens, vt.penalty_mode, vt.penalty_theta, vt.judge) == (8192, "paper", 0.2, "llm")
    check_setup(vt, training, num_processes=8)  # groups stay whole and generation cannot hang
    os.environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"] = "3"
    try:
        check_setup(vt, training, num_processes=8)  # ZeRO-3 is fine with vLLM colocate, TP 1
    finally:
        del os.environ["ACCELERATE_DEEPSPEED_ZERO_STAGE"]


def test_the_lora_recipe_starts_from_the_released_checkpoint():
    vt, training, model = parse("lora-1gpu", *ON_CPU)
    assert model.model_name_or_path == "Senqiao/VisionThink-Efficient" and model.use_peft
    assert vt.merge_lora and training.use_vllm is False
    check_setup(vt, training, num_processes=1)


def test_accelerate_configs():
    configs = {p.stem: yaml.safe_load(p.read_text()) for p in (ROOT / "train" / "accelerate").glob("*.yaml")}
    assert set(configs) == {"single_gpu", "multi_gpu", "zero2", "zero3"}
    assert configs["zero3"]["deepspeed_config"]["zero_stage"] == 3
    assert configs["zero2"]["deepspeed_config"]["zero_stage"] == 2
    assert configs["multi_gpu"]["distributed_type"] == "MULTI_GPU"
    assert all(c["mixed_precision"] == "bf16" for c in configs.values())


def _answer(question: str, turns: list[str]) -> Answer:
    records = [TurnRecord(i, protocol.parse_turn(t), 0.1, 10, "stop") for i, t in enumerate(turns)]
    return Answer(question, "auto", "tiny", records, "The value is \\boxed{44.6}", len(turns) > 1,
                  TokenReport.build(low_res=4, high_res=16 if len(turns) > 1 else 0, full_res=16), 0.2, "answer",
                  (112, 112))


@pytest.fixture(scope="module")
def rated_export(tmp_path_factory):
    """Three consented answers, two annotators agreeing on each, and one unconsented: exported as grpo."""
    folder = tmp_path_factory.mktemp("feedback")
    store = Store(f"sqlite:///{folder / 'db.sqlite'}")
    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)) for _ in range(4)]
    references = ["44.6", "12", "blue", "secret"]
    for i, (image, reference) in enumerate(zip(images, references, strict=True)):
        ask = store.record(_answer(f"Question {i}?", [TOOL_TURN, ANSWER_TURN] if i % 2 else [ANSWER_TURN]), image,
                           Actor.anonymous("s"), consent=i < 3)
        for rater in ("ann", "bob"):
            store.rate(Actor(rater, "annotator"), ask, verdict="incorrect" if i else "correct",
                       reference_answer=reference, decision="needed_full" if i % 2 else "low_enough")
    out = export(store, Actor.system(), "grpo", folder / "export")
    store.close()
    return out.path, images


def test_store_export_becomes_training_rows(rated_export):
    path, images = rated_export
    rows = training_dataset(path)
    assert len(rows) == 3  # the unconsented answer never arrives
    by_problem = {row["problem"]: row for row in rows}
    for i, reference in enumerate(["44.6", "12", "blue"]):
        row = by_problem[f"<image>\nQuestion {i}?"]
        assert row["prompt"] == prompt_messages(f"Question {i}?")
        assert row["original_answer"] == reference and row["needs_high_res"] is (i % 2 == 1)
        assert np.array_equal(np.asarray(row["full_image"]), np.asarray(images[i]))
        assert np.array_equal(np.asarray(row["images"][0]), np.asarray(downsample(images[i])))


def test_cpu_smoke_recipe_trains_from_the_export_and_the_engine_loads_the_result(rated_export, tmp_path):
    from visionthink.tiny import build_tiny_model

    tiny = build_tiny_model(tmp_path / "tiny")  # the real pixel limits; the recipe caps them for training only
    path, _ = rated_export
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "train.grpo", "--config", str(RECIPES / "cpu-smoke.yaml"), "--model_name_or_path",
         str(tiny), "--dataset", str(path), "--output_dir", str(out), "--max_turn_tokens", "16"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model.safetensors").exists() and (out / "processor_config.json").exists()
    assert (out / "completions.jsonl").read_text().count("\n") == 8  # 2 steps x 4 completions, all scored
    from visionthink.backends import TransformersBackend
    from visionthink.engine import Engine, GenerationSettings

    backend = TransformersBackend.load(str(out), device="cpu")
    assert backend.pixel_limits == (3136, 12845056)  # the checkpoint's own limits, not the recipe's training cap
    answer = Engine(backend, settings=GenerationSettings(max_new_tokens=4)).ask(Image.new("RGB", (112, 112)), "What?")
    assert answer.turns


def test_a_bad_setup_exits_2_with_the_fields_to_change(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "train.grpo", "--config", str(RECIPES / "cpu-smoke.yaml"), "--dataset", "unused",
         "--output_dir", str(tmp_path), "--max_tool_calling_iterations", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"},
    )
    assert result.returncode == 2
    assert "max_tool_calling_iterations is 3" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_data_is_a_clear_error(tmp_path):
    from train.data import DataError, training_dataset

    for source, message in [(tmp_path / "nowhere", "does not exist"), ("not/a/hub/id", "does not exist"),
                            ("someone/missing-dataset", "Could not load the Hub dataset")]:
        with pytest.raises(DataError, match=message):
            training_dataset(source)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="neither a saved dataset"):
        training_dataset(tmp_path / "notes.txt")


def test_the_miniature_recipe_trains_the_shipped_start_on_a_cpu():
    from visionthink.miniature import model as miniature_model

    vt, training, model = parse("miniature")
    assert (ROOT / model.model_name_or_path).resolve() == miniature_model.START_DIR
    assert (vt.judge, vt.penalty_mode, vt.penalty_theta, vt.format_weight) == ("rule", "paper", 0.2, 0.5)
    assert vt.freeze_vision_tower and training.use_cpu and not training.bf16
    assert training.num_generations == 8 and training.per_device_train_batch_size == 16
    check_setup(vt, training, num_processes=1)
