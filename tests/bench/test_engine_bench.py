"""The engine bench runs end to end and reports a well-formed table; its GPU script counts FLOPs right and refuses
to run its 7B measurement without a GPU. No timing is asserted: speed figures belong in BENCHMARKS.md."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def _ratio(cell: str) -> float:
    assert cell.endswith("×"), cell
    return float(cell.removesuffix("×"))


def test_quick_run_reports_every_mode_with_finite_ratios_and_floors(tmp_path):
    from bench.engine import QUICK, parse_table

    saved = tmp_path / "quick.json"
    done = _run("bench.engine", "--quick", "--json", str(saved))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("## Engine\n")
    rows = parse_table(done.stdout)
    assert len(rows) == len(QUICK.sizes) * len(QUICK.answer_tokens)
    results = json.loads(saved.read_text(encoding="utf-8"))
    names = [v["name"] for v in results["variants"]]
    assert names == (["low", "high", "auto", "auto, no reuse", "auto, no draft"] if results["reuse_switch"] else
                     ["low", "high", "auto"])
    for row, answer_tokens in zip(rows, QUICK.answer_tokens, strict=True):
        assert row["Image"] == "448×336" and row["Visual tokens (1/4 → full)"] == "48 → 192"
        assert row["Answer tokens"] == str(answer_tokens)
        for name in names:
            assert float(row[f"{name} (s)"]) >= 0
        ratios = [_ratio(cell) for column, cell in row.items() if column.endswith(("/high", " floor"))]
        assert len(ratios) == 2 * (len(names) - 1)
        assert all(math.isfinite(r) and r > 0 for r in ratios), row
    for row in rows:  # turn 2's own work, measured without the engine, gives auto a second floor
        assert math.isfinite(_ratio(row["auto floor, turn 2's own work"]))
    for row in results["rows"]:
        assert all(math.isfinite(x) and x > 0 for x in (*row["ratio_to_high"].values(), *row["floor"].values(),
                                                        row["floor_own_turn2"]))
        # the clock on the model's forwards counts some of each episode, not all: the rest is the engine's and the
        # processor's; each repetition is also held to its own repetition's floor
        assert all(0 < row["outside_model_s"][name] < row["median_s"][name] for name in names), row
        held = [name for name in ("low", "high", "auto", "auto, no draft") if name in names]
        assert {name: len(values) for name, values in row["over_floor_runs"].items()} == {
            name: QUICK.repeats for name in (*held, "auto, turn 2's own work")}
        assert all(math.isfinite(x) and x > 0 for values in row["over_floor_runs"].values() for x in values)
        if results["reuse_switch"]:  # the switch reaches the backend: only "auto" starts turn 2 from turn 1's cache
            assert row["turns"]["auto"]["reused_tokens"][1] > 0
            assert row["turns"]["auto, no reuse"]["reused_tokens"][1] == 0
    # The section can be rendered again from the saved run without measuring.
    again = _run("bench.engine", "--report", str(saved))
    assert again.returncode == 0 and parse_table(again.stdout) == rows


def test_gpu_script_says_it_needs_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present, so the script would measure")
    done = _run("bench.gpu_engine")
    assert done.returncode == 2
    assert "needs a CUDA GPU" in done.stderr and "--size test" in done.stderr


def test_gpu_script_code_path_on_a_small_model():
    done = _run("bench.gpu_engine", "--size", "test")
    assert done.returncode == 0, done.stderr[-3000:]
    first, _, markdown = done.stdout.partition("\n")
    result = json.loads(first)
    assert result["size"] == "test" and "sdpa" in result["kernels"]
    for entry in result["kernels"]["sdpa"]["sizes"]:
        for name in ("low", "full"):
            assert entry["costs"][name]["tflop_per_s"] > 0 and entry["costs"][name]["decode_tokens_per_s"] > 0
    assert markdown.startswith("### On a GPU")
    assert "| sdpa | 448×336 |" in markdown


def test_prefill_flops_match_torch_flop_counter(tmp_path):
    """With eager attention every matmul is an aten op that torch's counter sees, and it counts the whole attention
    square; ``prefill_flops`` counts the causal half in the language model, the rest the same."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bench.engine import QUESTION, noise_image
    from bench.gpu_engine import prefill_flops, random_model
    from visionthink import protocol
    from visionthink.hf import load_processor
    from visionthink.images import full_resolution
    from visionthink.tiny import build_tiny_model

    processor = load_processor(str(build_tiny_model(tmp_path / "tiny")))
    model = random_model("test", processor.tokenizer, torch.device("cpu"), torch.float32, "eager")
    text = protocol.Conversation.start(QUESTION).render()
    inputs = processor(text=[text], images=[full_resolution(noise_image(448, 336))], return_tensors="pt")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(**inputs, use_cache=True, logits_to_keep=1)
    counted = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    tokens = inputs["input_ids"].shape[1]
    flops = prefill_flops(model.config, inputs["image_grid_thw"].tolist(), tokens)
    config = model.config.text_config
    upper_triangle = config.num_hidden_layers * 4 * config.hidden_size * (tokens * tokens - tokens * (tokens + 1) // 2)
    assert flops["vision"] == counted["Qwen2_5_VLForConditionalGeneration.model.visual"]
    assert flops["total"] + upper_triangle == counted["Global"]


def test_grpo_gpu_bench_with_vllm_says_what_it_needs():
    import importlib.util

    import torch

    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        pytest.skip("vLLM and a GPU are present, so the script would measure")
    done = _run("bench.grpo_gpu_bench", "--vllm", "--size", "test")
    assert done.returncode == 2
    assert "needs a CUDA GPU and vLLM" in done.stderr and "make install-train-gpu" in done.stderr
