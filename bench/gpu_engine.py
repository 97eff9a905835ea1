"""The engine bench (``bench.engine``) on a GPU, on a randomly initialised model of Qwen2.5-VL-7B's shape in bf16.

    python -m bench.gpu_engine [--write] [--json PATH]   # one CUDA GPU with about 20 GiB free; a few minutes
    python -m bench.gpu_engine --size test               # the same code on a small model, on the CPU (no figures)

For the 1/4 and the full image at 1600×1000 and 2048×2048 it measures the prefill time and the achieved TFLOP/s (the
FLOPs counted from the shapes, see ``prefill_flops``), decode tokens/s, the three modes through the engine with their
ratios and floors (auto with and without turn-1 KV reuse where ``TransformersBackend`` takes ``reuse_kv``), and peak
GPU memory; with SDPA and, where ``flash_attn`` imports, FlashAttention-2 as well. It prints one JSON object and the
markdown for BENCHMARKS.md (``--write`` puts it in the Engine section). The shape is the released
Qwen2.5-VL-7B-Instruct config (8,292,166,656 parameters, vision 676.6 M); the tokenizer and the processor are the tiny
model's (``visionthink.tiny``), with the checkpoint's image-processor limits. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from bench import engine as bench

#: Text and vision shapes of the released Qwen2.5-VL-7B-Instruct config.json (and a small one to check the code).
SHAPES = {
    "7b": {
        "text": {"vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                 "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
                 "max_window_layers": 28, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}},
        "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                   "out_hidden_size": 3584, "fullatt_block_indexes": [7, 15, 23, 31], "window_size": 112,
                   "tokens_per_second": 2},
    },
    "test": {
        "text": {"vocab_size": 4096, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "max_window_layers": 2,
                 "tie_word_embeddings": False,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]}},
        "vision": {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "out_hidden_size": 128,
                   "fullatt_block_indexes": [1]},
    },
}
PLANS = {
    "7b": bench.Plan(sizes=((1600, 1000), (2048, 2048)), answer_tokens=(16, 72), repeats=2, decode_steps=32,
                     early=True),
    "test": bench.Plan(sizes=((448, 336),), answer_tokens=(16, 72), repeats=1, decode_steps=4, early=True),
}
HEADING = f"{bench.GPU_HEADING} (Qwen2.5-VL-7B shape)"


def needs_gpu_message() -> str:
    return ("bench.gpu_engine needs a CUDA GPU: torch.cuda.is_available() is False here (torch "
            f"{_torch_version()}). Run it on a machine with an NVIDIA GPU and a CUDA build of torch "
            "(requirements-gpu.txt), or use --size test to run its code path on this CPU (its figures mean nothing).")


def _torch_version() -> str:
    import torch

    return torch.__version__


def random_model(size: str, tokenizer, device, dtype, attn_implementation: str):
    """A randomly initialised Qwen2.5-VL of ``SHAPES[size]``, built directly on ``device`` (seed 0), in eval mode, with
    the tokenizer's token ids and the generation config of ``visionthink.tiny.new_model``."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from visionthink import protocol
    from visionthink.tiny import build_config

    shape = SHAPES[size]
    config = build_config(tokenizer, text=shape["text"], vision=shape["vision"])
    config.tie_word_embeddings = shape["text"]["tie_word_embeddings"]  # build_config ties them, as the tiny model does
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype,
                                                                attn_implementation=attn_implementation)
    model.eval()
    end_of_text = tokenizer.convert_tokens_to_ids(protocol.END_OF_TEXT)
    model.generation_config = GenerationConfig(
        bos_token_id=end_of_text, eos_token_id=[tokenizer.convert_tokens_to_ids(protocol.IM_END), end_of_text],
        pad_token_id=end_of_text)
    return model


def _windows(height: int, width: int, window: int) -> list[int]:
    """Sizes of the vision tower's attention windows, in merged tokens, over an (height, width) merged-token grid."""
    rows = [min(window, height - r) for r in range(0, height, window)]
    cols = [min(window, width - c) for c in range(0, width, window)]
    return [r * c for r in rows for c in cols]


def prefill_flops(config, grid_thw: list[list[int]], tokens: int) -> dict:
    """Matrix FLOPs (2 per multiply-add) of one prefill of ``tokens`` tokens holding images of ``grid_thw`` (patches),
    no cache, logits for the last position only. Attention counts its two matmuls: in the vision tower over each
    window (full-attention blocks: over each image), in the language model causally (the upper triangle is not
    work). Norms, activations, rotary embeddings and softmax are left out."""
    v, t = config.vision_config, config.text_config
    hv, merge = v.hidden_size, v.spatial_merge_size
    window = v.window_size // merge // v.patch_size
    patch_in = v.in_channels * v.temporal_patch_size * v.patch_size**2
    vision = 0
    for frames, h, w in grid_thw:
        n = frames * h * w
        per_window = [size * merge**2 for size in _windows(h // merge, w // merge, window)] * frames
        vision += 2 * n * patch_in * hv
        for block in range(v.depth):
            vision += 2 * n * (4 * hv * hv + 3 * hv * v.intermediate_size)
            spans = [h * w] * frames if block in v.fullatt_block_indexes else per_window  # full: each frame
            vision += 4 * hv * sum(span * span for span in spans)
        merged = n // merge**2
        vision += 2 * merged * (hv * merge**2) ** 2 + 2 * merged * hv * merge**2 * v.out_hidden_size
    h, heads, kv = t.hidden_size, t.num_attention_heads, t.num_key_value_heads
    head_dim = h // heads
    linear = 2 * tokens * (2 * h * h + 2 * h * kv * head_dim + 3 * h * t.intermediate_size)
    attention = 4 * heads * head_dim * tokens * (tokens + 1) // 2
    text = t.num_hidden_layers * (linear + attention) + 2 * h * t.vocab_size
    return {"vision": vision, "text": text, "total": vision + text}


def attention_kernels(cuda: bool) -> list[str]:
    """SDPA, and FlashAttention-2 where ``flash_attn`` imports and transformers accepts it."""
    from visionthink.hf import _flash_attention_works

    return ["sdpa"] + (["flash_attention_2"] if cuda and _flash_attention_works() else [])


def run(size: str, plan: bench.Plan, workdir: Path, *, log=None) -> dict:
    import torch
    import transformers

    from visionthink.hf import load_processor
    from visionthink.tiny import build_tiny_model

    cuda = torch.cuda.is_available()
    device, dtype = (torch.device("cuda"), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    processor = load_processor(str(build_tiny_model(workdir / "processor")))
    model = random_model(size, processor.tokenizer, device, dtype, "sdpa")
    described = bench.describe_model(model, built_with="`bench.gpu_engine`")
    by_kernel, failed = {}, {}
    for kernel in attention_kernels(cuda):
        model.set_attn_implementation(kernel)
        try:
            results = bench.measure(model, processor, plan, log=log)
        except Exception as exc:  # one kernel failing must not lose the other's figures
            failed[kernel] = f"{type(exc).__name__}: {exc}"
            print(f"{kernel} failed: {failed[kernel]}", file=sys.stderr)
            continue
        for entry in results["sizes"]:
            for name in ("low", "full"):
                cost = entry["costs"][name]
                cost["flops"] = prefill_flops(model.config, cost["grid_thw"], cost["tokens"])
                cost["tflop_per_s"] = cost["flops"]["total"] / cost["prefill_s"] / 1e12
                cost["decode_tokens_per_s"] = 1 / cost["decode_s"]
        by_kernel[kernel] = results
    return {
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(device) if cuda else (platform.processor() or "CPU"),
        "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
        "size": size, "model": described, "peak_gib": _highest_peak(by_kernel),
        "kernels": by_kernel, "failed": failed,
    }


def _highest_peak(by_kernel: dict) -> float | None:
    """The most GPU memory any probe or episode held at once (GiB), or None off the GPU."""
    peaks = [cost.get("peak_gib") for results in by_kernel.values() for entry in results["sizes"]
             for cost in entry["costs"].values()]
    peaks += [peak for results in by_kernel.values() for row in results["rows"] for peak in row["peak_gib"].values()]
    peaks = [peak for peak in peaks if peak]
    return max(peaks) if peaks else None


def _gib(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def prefill_table(result: dict) -> list[str]:
    lines = ["| Attention | Image | Prompt | Tokens (visual) | Prefill (ms) | TFLOP (vision + text) | TFLOP/s | "
             "Peak memory (GiB) | Decode after it (ms/token) | Decode tokens/s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kernel, results in result["kernels"].items():
        for entry in results["sizes"]:
            for name, label in (("low", "1/4 image"), ("full", "full image")):
                c = entry["costs"][name]
                peak = _gib(c.get("peak_gib"))
                lines.append(
                    f"| {kernel} | {entry['size'][0]}×{entry['size'][1]} | {label} | {c['tokens']:,} "
                    f"({c['visual_tokens']:,}) | {c['prefill_s'] * 1e3:,.0f} | {c['flops']['vision'] / 1e12:.1f} + "
                    f"{c['flops']['text'] / 1e12:.1f} | {c['tflop_per_s']:.0f} | {peak} | {c['decode_s'] * 1e3:.1f} | "
                    f"{c['decode_tokens_per_s']:.1f} |")
    return lines


def peak_table(result: dict) -> list[str]:
    first = next(iter(result["kernels"].values()))
    names = [v["name"] for v in first["variants"]]
    lines = ["| Attention | Image | Answer tokens | " + " | ".join(f"{n} (GiB)" for n in names) + " |",
             "|---|---|---:|" + "---:|" * len(names)]
    for kernel, results in result["kernels"].items():
        for row in results["rows"]:
            lines.append(f"| {kernel} | {row['size'][0]}×{row['size'][1]} | {row['answer_tokens']} | " +
                         " | ".join(f"{row['peak_gib'][n]:.1f}" for n in names) + " |")
    return lines


def _stacked(result: dict, table) -> list[str]:
    """One markdown table of ``table(results, label=kernel)`` for every attention kernel, under one header."""
    lines: list[str] = []
    for kernel, results in result["kernels"].items():
        lines += table(results, label=kernel)[2 if lines else 0:]
    return lines


def markdown(result: dict, *, command: str) -> str:
    m = result["model"]
    first = next(iter(result["kernels"].values()))
    plan = first["plan"]
    modes, turns = _stacked(result, bench.modes_table), _stacked(result, bench.turns_table)
    reuse = ("auto runs with `reuse_kv` on (\"auto\") and off (\"auto, no reuse\")" if first["reuse_switch"] else
             "`TransformersBackend` had no `reuse_kv` switch, so turn 2 prefills the whole conversation again")
    early = ("\"auto, early\" encodes the full image on a side stream while turn 1 runs (`VISIONTHINK_EARLY_ENCODE`), "
             "and \"auto, answers at once\" (with and without early encoding) forces turn 1 to answer, which is what "
             "early encoding costs when the model does not ask; " if any(v.get("early") for v in first["variants"])
             else "")
    if any(v.get("draft") is False for v in first["variants"]):
        early += ("\"auto, no draft\" decodes the tool call token by token instead of checking the call after "
                  "\"<tool_call>\" in one forward; ")
    if any(v.get("decode_thread") is False for v in first["variants"]):
        early += ("the backend decodes on a thread of its own on a GPU, and \"high, decoded inline\" and \"auto, "
                  "decoded inline\" decode on the consumer's thread instead (`decode_thread=False`, the CPU's way); ")
    return "\n".join([
        HEADING, "",
        f"Measured {result['when']} with `{command}` on {result['device']} (torch {result['torch']}, CUDA "
        f"{result['cuda']}, transformers {result['transformers']}). A randomly initialised Qwen2.5-VL of the "
        f"{result['size']} shape ({m['params']:,} parameters, vision {m['vision_params'] / 1e6:.1f} M, "
        f"{m['dtype']}; text {m['text']}; vision {m['vision']}), built on the device; the tiny model's tokenizer and "
        "processor with the checkpoint's limits. The method is the CPU section's: turns forced to an answer of N "
        f"tokens and a {plan['tool_tokens']}-token tool call; {reuse}; {early}{plan['repeats']} repetition(s) "
        "interleaved, "
        f"medians; the floors modelled from the prefill and decode costs below ({plan['decode_steps']} decode steps, "
        "the median). TFLOP counts the matrix work from the shapes (`bench.gpu_engine.prefill_flops`: causal "
        "attention as half a square, logits for one position).",
        *[f"\n**{kernel} failed:** {error}" for kernel, error in result["failed"].items()],
        "", *modes, "", *prefill_table(result), "", *turns, "",
        f"Peak GPU memory per episode (weights included); the most at any point: {_gib(result['peak_gib'])} GiB.", "",
        *peak_table(result), "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SHAPES), default="7b",
                        help="7b (the default, needs a GPU) or test (a small model: checks the code on a CPU)")
    parser.add_argument("--repeats", type=int, help="repetitions of every variant (default 2)")
    parser.add_argument("--json", type=Path, help="also write the JSON to this file")
    parser.add_argument("--write", action="store_true", help="put the table in BENCHMARKS.md's Engine section")
    args = parser.parse_args(argv)

    import torch

    if args.size != "test" and not torch.cuda.is_available():
        print(needs_gpu_message(), file=sys.stderr)
        return 2
    if args.write and args.size == "test":
        parser.error("--size test checks the code path; its figures are not benchmarks and are not written.")
    plan = PLANS[args.size]
    if args.repeats:
        plan = dataclasses.replace(plan, repeats=args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.size, plan, Path(tmp))
    print(json.dumps(result))
    if not result["kernels"]:
        print(f"Every attention kernel failed: {result['failed']}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    text = markdown(result, command="python -m bench.gpu_engine" + (" --size test" if args.size == "test" else ""))
    print(text)
    if args.write:
        bench.write(gpu=text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
