"""GRPO step time and peak memory on the tiny Qwen2.5-VL (CPU), with 4 and 8 completions per prompt, half of
them asking for the full image. Each setting runs in its own process, so its peak memory is its own.

    python -m bench.grpo_bench [--steps 6] [--write]       # --write updates BENCHMARKS.md

On a machine with an NVIDIA GPU, ``python -m bench.grpo_gpu_bench`` times steps of the single-GPU LoRA recipe on a
randomly initialised full-size Qwen2.5-VL-7B (``--size 3b`` if 7B does not fit).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## GRPO step (tiny model, CPU)"


def step_timer():
    """A trainer callback that records each optimiser step's wall time in ``.times``."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    return StepTimer()


def run_one(generations: int, steps: int, workdir: Path) -> dict:
    """One training run in this process; returns per-step wall times and the peak RSS."""
    import datasets
    import numpy as np
    import torch
    from PIL import Image
    from trl import GRPOConfig, ModelConfig

    from tests.support.forcing import ANSWER_TURN, TOOL_TURN, force_training_episodes
    from train.grpo import VisionThinkArguments, build_trainer
    from visionthink.tiny import build_tiny_model

    torch.manual_seed(0)
    model_dir = build_tiny_model(workdir / "tiny", max_pixels=112 * 112)
    rng = np.random.default_rng(0)
    data = workdir / "data"
    datasets.Dataset.from_dict({
        "problem": [f"<image>\nQuestion {i}?" for i in range(steps)],
        "images": [[Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))] for _ in range(steps)],
        "original_answer": ["44.6"] * steps,
    }).save_to_disk(str(data))

    vt = VisionThinkArguments(dataset=str(data), judge="rule", max_turn_tokens=48, log_completions_jsonl=False)
    training = GRPOConfig(output_dir=str(workdir / "out"), use_cpu=True, bf16=False, gradient_checkpointing=False,
                          num_generations=generations, per_device_train_batch_size=generations, max_steps=steps,
                          learning_rate=1e-4, beta=0.0, report_to="none", save_strategy="no", logging_steps=1000,
                          disable_tqdm=True, seed=0)
    trainer = build_trainer(vt, training, ModelConfig(model_name_or_path=str(model_dir), dtype="float32"))
    force_training_episodes(trainer.model, trainer.processing_class.tokenizer, [TOOL_TURN, ANSWER_TURN])
    timer = step_timer()
    trainer.add_callback(timer)
    trainer.train()
    return {"generations": generations, "step_s": timer.times,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "completion_tokens": [h.get("num_tokens") for h in trainer.state.log_history if "num_tokens" in h]}


def measure(generations: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-m", "bench.grpo_bench", "--child", str(generations), "--steps", str(steps),
             "--workdir", tmp],
            cwd=ROOT, capture_output=True, text=True, check=True,
            env={**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"},
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: list[dict], steps: int, repeats: int) -> str:
    lines = [
        SECTION, "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with `python -m bench.grpo_bench` on "
        f"{_machine()}. Python {platform.python_version()}, torch {_version('torch')}, transformers "
        f"{_version('transformers')}, TRL {_version('trl')}.", "",
        f"A tiny random Qwen2.5-VL (2 layers, hidden 64) on one 112×112 image per prompt (16 visual tokens in full, 4 at "
        f"1/4), decoding forced so that half the completions call `resize_image` and get the full image. One prompt "
        f"per step, {steps} steps per run, {repeats} runs per setting; the first step of each run (warm-up) is left "
        "out. A step is generate (two turns where the tool is called), score, forward and backward, AdamW. Peak "
        "memory is the whole process's (imports included), one process per run; medians over the runs.", "",
        "| Completions per prompt (G) | Step time, median (s) | Step time, min–max (s) | Peak RSS (MiB) | Runs |",
        "|---:|---:|---:|---:|---:|",
    ]
    for g in sorted({r["generations"] for r in results}):
        runs = [r for r in results if r["generations"] == g]
        steps_s = [t for r in runs for t in r["step_s"][1:]]
        peak = statistics.median(r["peak_rss_mib"] for r in runs)
        lines.append(f"| {g} | {statistics.median(steps_s):.3f} | {min(steps_s):.3f}–{max(steps_s):.3f} | "
                     f"{peak:.0f} | {len(runs)} |")
    base = [r for r in results if r["generations"] == min(r["generations"] for r in results)]
    other = [r for r in results if r["generations"] == max(r["generations"] for r in results)]
    if base and other and base is not other:
        ratio = statistics.median(t for r in other for t in r["step_s"][1:]) / statistics.median(
            t for r in base for t in r["step_s"][1:])
        lines += ["", f"Doubling G from {base[0]['generations']} to {other[0]['generations']} multiplies the step "
                      f"time by {ratio:.2f} (measured side by side in this run)."]
    return "\n".join(lines) + "\n"


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0) / 2**20
    return f"{cpu}, {os.cpu_count()} CPUs, {memory:.0f} GiB RAM, no GPU"


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def write_section(text: str, section: str = SECTION) -> None:
    """Put ``text`` in BENCHMARKS.md in place of its ``section`` (appended when it is not there yet)."""
    path = ROOT / "BENCHMARKS.md"
    current = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if section in current:
        start = current.index(section)
        end = current.find("\n## ", start + len(section))
        current = current[:start] + text.rstrip("\n") + "\n" + (current[end:] if end != -1 else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpo_bench")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        import logging

        logging.disable(logging.WARNING)
        print(json.dumps(run_one(args.child, args.steps, Path(args.workdir))))
        return 0
    results = []
    for _ in range(args.repeats):
        for g in (4, 8):  # interleaved, so both see the same machine load
            results.append(measure(g, args.steps))
            print(f"G={g}: steps {['%.3f' % t for t in results[-1]['step_s']]}, peak {results[-1]['peak_rss_mib']:.0f} MiB",
                  file=sys.stderr)
    text = table(results, args.steps, args.repeats)
    print(text)
    if args.write:
        write_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
