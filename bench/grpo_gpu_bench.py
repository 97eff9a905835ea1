"""One real GRPO step of the single-GPU LoRA recipe on a randomly initialised full-size Qwen2.5-VL, on a GPU.

    python -m bench.grpo_gpu_bench [--size 7b|3b] [--steps 3] [--write]
    python -m bench.grpo_gpu_bench --size test      # the same code on a small model, runs on a CPU

The weights are random (nothing can be downloaded), so the model writes random tokens up to the turn budget; half
the completions are forced to call ``resize_image`` in their first turn, so every step also runs the second turn
with the full image. Reports step time, generated tokens per second and peak GPU memory (``--write`` puts them in
BENCHMARKS.md). The architecture numbers are the public Qwen2.5-VL-7B/3B configs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

SECTION = "## GRPO step (LoRA recipe, GPU)"
SIZES = {
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vision_out=3584, vocab_size=152064, tie=False),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vision_out=2048, vocab_size=151936, tie=True),
    "test": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vision_out=128, vocab_size=4096, tie=True),
}


def random_model(size: str, token_config, device, dtype):
    """A Qwen2.5-VL with the published shape and random weights, built on ``device``; token ids from ``token_config``."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    shape = SIZES[size]
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    half = head_dim // 2
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, fullatt_block_indexes=[7, 15, 23, 31],
                  window_size=112, out_hidden_size=shape["vision_out"], patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2)
    if size == "test":
        vision.update(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, fullatt_block_indexes=[1])
    text = dict(vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
                intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["num_hidden_layers"],
                num_attention_heads=shape["num_attention_heads"], num_key_value_heads=shape["num_key_value_heads"],
                max_position_embeddings=128000,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope})
    ids = {k: getattr(token_config, k) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                                 "vision_end_token_id") if getattr(token_config, k, None) is not None}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=shape["tie"], **ids)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    return model


def run(size: str, steps: int, workdir: Path) -> dict:
    import datasets
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoConfig, LogitsProcessor, TrainerCallback
    from trl import GRPOConfig, ModelConfig, TrlParser

    from tests.support.forcing import TOOL_TURN
    from train.grpo import VisionThinkArguments, build_trainer
    from visionthink import protocol
    from visionthink.tiny import build_tiny_model

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    tokenizer_dir = build_tiny_model(workdir / "tokenizer")  # a processor with the real pixel limits
    rng = np.random.default_rng(0)
    data = workdir / "data"
    datasets.Dataset.from_dict({
        "problem": [f"<image>\nWhat is the value in row {i}?" for i in range(steps)],
        "images": [[Image.fromarray(rng.integers(0, 255, (768, 1024, 3), dtype=np.uint8))] for _ in range(steps)],
        "original_answer": ["44.6"] * steps,
    }).save_to_disk(str(data))

    recipe = Path(__file__).resolve().parents[1] / "train" / "recipes" / "lora-1gpu.yaml"
    vt, training, model_args = TrlParser((VisionThinkArguments, GRPOConfig, ModelConfig)).parse_args_and_config([
        "--config", str(recipe), "--model_name_or_path", str(tokenizer_dir), "--dataset", str(data),
        "--output_dir", str(workdir / "out"), "--judge", "rule", "--max_steps", str(steps),
        "--max_turn_tokens", "512" if size != "test" else "24", "--log_completions_jsonl", "false",
        "--disable_tqdm", "true", *([] if cuda else ["--bf16", "false", "--use_cpu", "true",
                                                     "--gradient_checkpointing", "false"]),
    ])
    model = random_model(size, AutoConfig.from_pretrained(str(tokenizer_dir)), device, dtype)
    trainer = build_trainer(vt, training, model_args, model=model)
    tokenizer = trainer.processing_class.tokenizer
    tool_ids = tokenizer.encode(TOOL_TURN, add_special_tokens=False) + [tokenizer.convert_tokens_to_ids(protocol.IM_END)]

    class ToolOnEvenRows(LogitsProcessor):
        """Even rows call the tool in their first turn; everything else is the random model's own tokens."""

        def __init__(self) -> None:
            self.start = None
            self.rows: list[int] = []

        def __call__(self, input_ids, scores):
            if self.start is None:
                self.start = input_ids.shape[1]
                vision_start = tokenizer.convert_tokens_to_ids(protocol.VISION_START)
                self.rows = [i for i, row in enumerate(input_ids) if i % 2 == 0 and int((row == vision_start).sum()) < 2]
            step = input_ids.shape[1] - self.start
            for row in self.rows:
                scores[row] = float("-inf")
                scores[row, tool_ids[min(step, len(tool_ids) - 1)]] = 0.0
            return scores

    generate = trainer.model.generate

    def forced(*args, **kwargs):
        return generate(*args, logits_processor=[*(kwargs.pop("logits_processor", None) or []), ToolOnEvenRows()],
                        **kwargs)

    trainer.model.generate = forced

    class Timer(TrainerCallback):
        times: list[float] = []

        def on_step_begin(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            Timer.times.append(time.perf_counter() - self.t)

    trainer.add_callback(Timer())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    tokens = [h["completions/mean_length"] * training.num_generations for h in logs]
    return {
        "size": size, "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "params": sum(p.numel() for p in model.parameters()), "step_s": Timer.times, "tokens_per_step": tokens,
        "tool_calls": [h.get("tools/call_frequency") for h in logs],
        "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "num_generations": training.num_generations, "max_turn_tokens": vt.max_turn_tokens,
        "dtype": str(dtype).removeprefix("torch."),
    }


def table(result: dict) -> str:
    steps = result["step_s"][1:] or result["step_s"]
    tokens = result["tokens_per_step"][1:] or result["tokens_per_step"]
    rate = sum(tokens) / sum(steps)
    peak = "—" if result["peak_gpu_gib"] is None else f"{result['peak_gpu_gib']:.1f}"
    return "\n".join([
        SECTION, "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with `python -m bench.grpo_gpu_bench --size "
        f"{result['size']}` on {result['device']}. A randomly initialised Qwen2.5-VL ({result['params'] / 1e9:.3g} B "
        f"parameters, {result['dtype']}), the LoRA recipe (G={result['num_generations']}, {result['max_turn_tokens']} tokens per "
        "turn), one 1024×768 image per prompt; half the completions call `resize_image`. First step left out.", "",
        "| Step time, median (s) | Generated tokens per second | Peak GPU memory (GiB) | Steps |",
        "|---:|---:|---:|---:|",
        f"| {statistics.median(steps):.2f} | {rate:.0f} | {peak} | {len(steps)} |", "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpo_gpu_bench")
    parser.add_argument("--size", choices=sorted(SIZES), default="7b")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.size, args.steps, Path(tmp))
    print(json.dumps(result), file=sys.stderr)
    text = table(result)
    print(text)
    if args.write:
        from bench.grpo_bench import write_section

        write_section(text, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
