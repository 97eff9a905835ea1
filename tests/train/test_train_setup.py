"""The GPU recipes' batch geometry and checkpointing, and the install paths for CUDA hosts: what can be checked on a
CPU (the installs themselves need a GPU host; `make -n` shows the order of their steps)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from trl import GRPOConfig, ModelConfig, TrlParser

from train.grpo import VisionThinkArguments, check_setup

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "train" / "recipes"
GPUS = 8  # train/accelerate/zero3.yaml


def parse(name: str):
    return TrlParser((VisionThinkArguments, GRPOConfig, ModelConfig)).parse_args_and_config(
        ["--config", str(RECIPES / f"{name}.yaml"), "--bf16", "false", "--use_cpu", "true"])


def test_the_paper_recipe_has_the_papers_batch_geometry_on_8_gpus():
    vt, training, _ = parse("efficient-7b")
    g = training.num_generations
    assert g == 16 and training.per_device_train_batch_size == 1  # micro-batch 1 per GPU
    per_update = training.per_device_train_batch_size * GPUS * training.gradient_accumulation_steps
    per_generation = training.per_device_train_batch_size * GPUS * training.steps_per_generation
    assert (per_update, per_update // g) == (512, 32)  # 32 prompts x 16 per optimiser update
    assert (per_generation, per_generation // g) == (8192, 512)  # 512 prompts x 16 per generation batch
    assert training.num_iterations == 1 and per_generation // per_update == 16  # 16 updates, each sample used once
    check_setup(vt, training, num_processes=GPUS)  # whole groups on each GPU
    assert vt.drop_uniform_groups


def test_checkpoints_are_bounded_and_fall_on_generation_batch_boundaries():
    vt, training, _ = parse("efficient-7b")
    updates_per_generation = training.steps_per_generation // training.gradient_accumulation_steps
    assert training.save_steps == 5 * updates_per_generation == 80  # the paper's every 5 rollout steps
    assert training.save_total_limit == 3
    # validated with every save, the best by accuracy kept and loaded at the end (the paper's checkpoint choice)
    assert vt.eval_rows > 0 and training.eval_strategy == "steps" and training.eval_steps == training.save_steps
    assert training.metric_for_best_model == "rewards/accuracy_reward/mean" and training.load_best_model_at_end
    assert training.per_device_eval_batch_size % training.num_generations_eval == 0
    for path in RECIPES.glob("*.yaml"):
        recipe = yaml.safe_load(path.read_text())
        if recipe.get("save_strategy", "steps") != "no":
            assert recipe.get("save_total_limit"), f"{path.name} saves checkpoints without save_total_limit"


def test_the_readme_disk_estimate_is_the_arithmetic():
    parameters = 8_292_166_656  # Qwen2.5-VL-7B
    per_checkpoint = parameters * (2 + 12) / 2**30  # bf16 weights + fp32 master weights and two Adam moments
    readme = (ROOT / "README.md").read_text()
    assert round(per_checkpoint) == 108 and "108 GiB per checkpoint" in readme
    assert "325 GiB" in readme and round(3 * per_checkpoint) in (324, 325)


def test_the_lora_recipe_has_the_papers_entropy_term():
    _, training, _ = parse("lora-1gpu")
    assert training.entropy_coef == 0.001 and training.beta == 0.001


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==(\S+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(3)
    return pins


def test_the_training_environment_differs_from_the_apps_only_where_vllm_needs_it():
    app, train = _pins("requirements.txt"), _pins("requirements-train-gpu.txt")
    differing = {name for name in set(app) & set(train) if app[name] != train[name]}
    assert differing == {"transformers"}  # vLLM 0.31 needs < 5.18
    assert train["torch"] == app["torch"] and "tensorboard" in train
    assert "flash-attn" not in train and "flash-attn" in _pins("requirements-gpu.txt")  # one pin, built separately


def _dry_run(target: str, tmp_path) -> list[str]:
    result = subprocess.run(["make", "-n", target, f"TRAIN_VENV={tmp_path / 'train'}",
                             f"TRAIN_CPU_VENV={tmp_path / 'train-cpu'}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("target", ["install-gpu", "install-train-gpu"])
def test_flash_attn_is_built_without_build_isolation_after_torch(target, tmp_path):
    lines = _dry_run(target, tmp_path)
    flash = next(i for i, line in enumerate(lines) if "requirements-gpu.txt" in line and " install " in line)
    assert "--no-build-isolation" in lines[flash]
    tools = next(i for i, line in enumerate(lines) if "ninja" in line and "wheel" in line)
    cuda = next(i for i, line in enumerate(lines) if "CUDA_HOME" in line)
    assert cuda < tools < flash  # checked for a CUDA torch and nvcc first, build tools in before the build
    if target == "install-train-gpu":
        torch = next(i for i, line in enumerate(lines) if line.endswith("install -q torch==2.13.0"))
        assert torch < cuda


def test_the_cpu_training_environment_refuses_a_cuda_torch_and_leaves_the_gpu_packages_out(tmp_path):
    lines = _dry_run(str(tmp_path / "train-cpu" / ".installed"), tmp_path)
    plan = next(i for i, line in enumerate(lines) if "--dry-run" in line and "torch==2.13.0" in line)
    check = next(i for i, line in enumerate(lines) if "this environment takes the CPU build only" in line)
    install = next(i for i, line in enumerate(lines) if line.endswith("install -q torch==2.13.0"))
    assert plan < check < install  # pip's plan is checked before anything is installed
    grep = next(line for line in lines if line.startswith("grep"))
    assert all(name in grep for name in ("vllm", "deepspeed", "flash-attn", "playwright"))
