"""The miniature's training costs on this machine: an SFT step and a GRPO step at G = 8 from the shipped warm start
(median over steps, warm-up left out), beside what the last ``make miniature`` recorded (its total time, its SFT
and GRPO wall times, its peak memory; from the shipped ``figures.json``).

    python -m bench.miniature_bench [--sft-steps 30] [--grpo-steps 12] [--write]   # --write updates BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## The miniature (CPU)"


def sft_steps(steps: int) -> list[float]:
    import torch

    from train import sft
    from train.miniature import Recipe, sft_batches
    from visionthink import hf
    from visionthink.miniature import model as miniature_model, task

    recipe = Recipe()
    model = hf.load_model(str(miniature_model.START_DIR), device="cpu")
    processor = hf.load_processor(str(miniature_model.START_DIR))
    batches = sft_batches(task.sample(300, 5, kinds=recipe.train_kinds), recipe, random.Random(0))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        batch = sft.encode(batches(recipe.pattern_steps + step), processor)
        loss = model(**batch).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        times.append(time.perf_counter() - started)
    return times[1:]


def grpo_steps(steps: int, workdir: Path) -> list[float]:
    from trl import GRPOConfig, ModelConfig, TrlParser

    from bench.grpo_bench import step_timer
    from train.grpo import VisionThinkArguments, build_trainer
    from train.miniature import RECIPE, Recipe
    from visionthink.miniature import data, model as miniature_model

    split = data.write_split(64, 5, workdir / "train", kinds=Recipe().train_kinds)
    vt, training, model_args = TrlParser((VisionThinkArguments, GRPOConfig, ModelConfig)).parse_args_and_config(
        ["--config", str(RECIPE), "--model_name_or_path", str(miniature_model.START_DIR), "--dataset", str(split),
         "--output_dir", str(workdir / "out"), "--max_steps", str(steps + 1), "--logging_steps", "1000",
         "--disable_tqdm", "true", "--log_completions_jsonl", "false"])

    trainer = build_trainer(vt, training, model_args)
    timer = step_timer()
    trainer.add_callback(timer)
    trainer.train()
    return timer.times[1:]


def machine() -> str:
    from train.miniature import machine as describe

    return f"{describe()}, {platform.system()} {platform.release()}"


def section(result: dict) -> str:
    f = result["figures"]
    sft, grpo = result["sft_step_s"], result["grpo_step_s"]
    t = f["timings_s"]
    return "\n".join([
        SECTION,
        "",
        f"Measured {result['measured_at']} with `python -m bench.miniature_bench` on {result['machine']}, no GPU. "
        f"The build figures are the last `make miniature` ({f['written_at']}, {f['machine']}), as its "
        "`figures.json` recorded them.",
        "",
        "| What | Time | Notes |",
        "|---|---:|---|",
        f"| `make miniature`, from nothing | {f['total_s'] / 60:.1f} min | target ≤ 45 min on 2 cores; peak RSS "
        f"{f['peak_rss_mib']:.0f} MiB |",
        f"| of which: drawing the splits | {t['sample']:.0f} s | {f['recipe']['train_items']} training and "
        f"{f['recipe']['test_items']} held-out items |",
        f"| of which: SFT warm start | {t['sft'] / 60:.1f} min | {f['sft']['steps']} steps of "
        f"{f['recipe']['batch_size']} episodes |",
        f"| of which: GRPO | {t['grpo'] / 60:.1f} min | {f['grpo']['steps']} steps, G 8, 2 prompts a step, data "
        "preparation and loading included |",
        f"| of which: evaluations | {t['evaluate'] / 60:.1f} min | start greedy and sampled, trained in 3 modes |",
        f"| of which: probes | {(t['visual_token_probe'] + t['premise_probe']) / 60:.1f} min | visual tokens of 3 "
        "models; the CNN premise probe |",
        f"| SFT step, median | {statistics.median(sft):.3f} s | {len(sft)} steps of 16 episodes, min–max "
        f"{min(sft):.3f}–{max(sft):.3f} s |",
        f"| GRPO step at G = 8, median | {statistics.median(grpo):.3f} s | {len(grpo)} steps of 16 completions "
        f"(generate both turns, score, reference and policy forward, backward, AdamW), min–max "
        f"{min(grpo):.3f}–{max(grpo):.3f} s |",
        "",
        f"Peak RSS of the benchmark process: {result['peak_rss_mib']:.0f} MiB.",
        "",
    ])


def write(text: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    current = path.read_text(encoding="utf-8")
    if SECTION in current:
        start = current.index(SECTION)
        end = current.find("\n## ", start + len(SECTION))
        current = current[:start] + text + (current[end + 1:] if end != -1 else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft-steps", type=int, default=30)
    parser.add_argument("--grpo-steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from visionthink.miniature import model as miniature_model

    torch.set_num_threads(args.threads)
    figures = json.loads((miniature_model.TRAINED_DIR / "figures.json").read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        sft = sft_steps(args.sft_steps)
        grpo = grpo_steps(args.grpo_steps, Path(tmp))
    result = {"measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
              "sft_step_s": sft, "grpo_step_s": grpo, "figures": figures,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    text = section(result)
    print(text)
    if args.write:
        write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
