"""`python -m train.grpo --help` is short, fast and lists the recipes; `--help-all` is TRL's full field list, in which
each ``--no_FIELD`` flag says what it does rather than repeating its field's help."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "train" / "recipes").glob("*.yaml"))
ON_CPU = ["--bf16", "false", "--use_cpu", "true"]  # GPU recipes can only be built as configs here


def grpo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.grpo", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def short_help() -> str:
    result = grpo("--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def full_help() -> str:
    result = grpo("--help-all")
    assert result.returncode == 0, result.stderr
    return result.stdout


def option_help(text: str) -> dict[str, str]:
    """Each option's help text from argparse's output, by its first flag (``--merge_lora`` → its help)."""
    found: dict[str, str] = {}
    flag = None
    for line in text.splitlines():
        start = re.match(r"  (--[\w-]+)", line)
        if start:
            flag = start.group(1)
            found[flag] = line.split("  ", 2)[2].strip() if line[2:].count("  ") else ""
        elif flag and line.startswith("      "):
            found[flag] = f"{found[flag]} {line.strip()}".strip()
        else:
            flag = None
    return found


def test_short_help_lists_every_recipe_with_a_description(short_help: str) -> None:
    assert RECIPES, "no recipes found"
    for recipe in RECIPES:
        [line] = [line for line in short_help.splitlines() if f"train/recipes/{recipe.name}" in line
                  and not line.lstrip().startswith(("python", "accelerate"))]
        description = line.split(recipe.name, 1)[1].strip()
        assert len(description) > 10, f"{recipe.name} has no description in --help: {line!r}"
        assert "no description" not in description
    assert "--config" in short_help and "--help-all" in short_help
    assert len(short_help.splitlines()) < 40


def test_short_help_loads_neither_torch_nor_trl() -> None:
    """What keeps ``--help`` fast: it prints from this module and the recipe files alone."""
    probe = ("import sys; from train.grpo import main; main(['--help']); "
             "print(sorted({'torch', 'trl', 'transformers'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def test_every_example_in_the_short_help_parses(short_help: str) -> None:
    from train.grpo import build_parser

    examples = [line.strip() for line in short_help.splitlines()
                if line.strip().startswith(("python -m train.grpo --config", "accelerate launch"))]
    assert len(examples) >= 3
    for example in examples:
        args = shlex.split(example.split("train.grpo", 1)[1])
        vt, training, model = build_parser().parse_args_and_config([*args, *ON_CPU])
        assert vt.dataset and model.model_name_or_path
        if "--learning_rate" in args:
            assert training.learning_rate == float(args[args.index("--learning_rate") + 1])


def test_help_all_lists_every_field_and_points_back_to_the_recipes(full_help: str) -> None:
    options = option_help(full_help)
    for flag in ("--dataset", "--max_turn_tokens", "--penalty_mode", "--learning_rate", "--num_generations",
                 "--model_name_or_path", "--use_peft"):
        assert flag in options, flag
    assert "--config RECIPE.yaml" in full_help and "python -m train.grpo --help" in full_help
    assert len(full_help.splitlines()) > 500


def test_each_negation_flag_has_its_own_help(full_help: str) -> None:
    # HfArgumentParser gives ``--no_FIELD`` the help of ``--FIELD``; only the appended default then differs.
    options = {flag: re.sub(r"\s*\(default: [^)]*\)$", "", text) for flag, text in option_help(full_help).items()}
    assert options["--no_merge_lora"] != options["--merge_lora"]
    assert "unmerged" in options["--no_merge_lora"]
    assert "(default: False)" not in option_help(full_help)["--no_merge_lora"]  # merging is on by default
    negations = [flag for flag in options if flag.startswith("--no_")]
    assert len(negations) > 5
    for flag in negations:
        assert options[flag] and options[flag] != options.get(f"--{flag[5:]}"), flag


def test_the_negation_flags_still_turn_their_fields_off() -> None:
    from train.grpo import build_parser

    recipe = ["--config", str(ROOT / "train" / "recipes" / "lora-1gpu.yaml"), "--dataset", "x", *ON_CPU]
    vt, training, _ = build_parser().parse_args_and_config(recipe)
    assert vt.merge_lora and vt.log_completions_jsonl and training.shuffle_dataset
    vt, training, _ = build_parser().parse_args_and_config(
        [*recipe, "--no_merge_lora", "--no-log-completions-jsonl", "--no_shuffle_dataset"])
    assert not vt.merge_lora and not vt.log_completions_jsonl and not training.shuffle_dataset


def test_a_missing_recipe_is_named_with_the_shipped_ones() -> None:
    result = grpo("--config", "train/recipes/lora-1-gpu.yaml", "--dataset", "x")
    assert result.returncode == 2
    assert "the recipe train/recipes/lora-1-gpu.yaml does not exist" in result.stderr
    assert all(f"train/recipes/{recipe.name}" in result.stderr for recipe in RECIPES)
    assert "Traceback" not in result.stderr
