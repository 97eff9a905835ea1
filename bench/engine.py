"""What one question costs in each mode on the same model, side by side: ``low`` (the 1/4 image only), ``high`` (the
full image only) and ``auto`` forced to ask for the full image in turn 1, against the floor its token counts allow.

    python -m bench.engine [--repeats 3] [--write]  # a 56 M random Qwen2.5-VL on the CPU (--write: BENCHMARKS.md)
    python -m bench.engine --quick                  # the tiny model, one small image, one repetition (its test)

The episodes run through the public API (``visionthink.engine.Engine`` on ``visionthink.backends.TransformersBackend``),
so the figures are whatever the backend does. The turns are forced with the tests' helper (tests/support/forcing.py):
every mode writes the same answer of N tokens, and auto first writes a tool call of about 60 tokens, then gets the
full image. Where the backend takes ``reuse_kv``, auto runs both with and without reusing turn 1's KV cache.

The floor is what an ideal engine would pay on the same model, modelled from its costs measured in the same run
(making the 1/4 image and the processor, one forward pass per prompt, then single-token steps on its cache): high is
the full image's processing, its prompt's prefill and N-1 decode steps; low the same with the 1/4 image (made from
the original); auto is high plus the 1/4 image's turn (making it, processing, prefill, the tool call's decode). Each
floor is that modelled time over the *measured* high time, so it sits beside the measured ratio. That auto floor
takes turn 2 to cost no more than high; a second one counts turn 2 as the model's own work over turn 1's longer
context (``turn_two_cost``).

On a GPU, ``python -m bench.gpu_engine`` runs the same measurement on a random model of Qwen2.5-VL-7B's shape.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Engine"
GPU_HEADING = "### On a GPU"
QUESTION = "What is the value shown for the last year in the chart?"
#: The CPU bench model: the tiny model's tokenizer and processor, at 56 M parameters, mostly text.
BENCH_TEXT = {
    "hidden_size": 768,
    "intermediate_size": 2048,
    "num_hidden_layers": 8,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "max_window_layers": 8,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]},
}
BENCH_VISION = {
    "depth": 4,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_heads": 4,
    "out_hidden_size": 768,
    "fullatt_block_indexes": [3],
}


@dataclass(frozen=True)
class Plan:
    """What to measure: image sizes (width, height), answer lengths, repetitions, and the tool call's length (tokens
    generated, the end-of-turn token included)."""

    sizes: tuple[tuple[int, int], ...] = ((1024, 768), (1600, 1000), (2048, 2048))
    answer_tokens: tuple[int, ...] = (16, 72)
    repeats: int = 3
    tool_tokens: int = 60
    decode_steps: int = 16
    early: bool = False  # also auto with early encoding, asking and answering at once (for a GPU)


QUICK = Plan(sizes=((448, 336),), repeats=1, decode_steps=4)


@dataclass(frozen=True)
class Variant:
    """One column of the table: an engine mode, and whether the backend reuses turn 1's KV cache (None: the
    backend has no such switch, so it does what it does)."""

    name: str
    mode: str
    reuse_kv: bool | None = None
    early: bool = False  # the backend encodes the full image while turn 1 runs
    asks: bool = True  # auto: turn 1 calls the tool (False: it answers at once, so the full image goes unused)
    decode_thread: bool | None = None  # decode on a thread of its own (None: the backend's default for the device)
    draft: bool = True  # greedy decoding checks the rest of a tool call in one forward (``draft_tool_call``)


def reuse_switch() -> bool:
    """True when ``TransformersBackend`` takes ``reuse_kv``."""
    from visionthink.backends import TransformersBackend

    return "reuse_kv" in inspect.signature(TransformersBackend.__init__).parameters


def variants(switch: bool, early: bool = False) -> list[Variant]:
    if not switch:
        return [Variant("low", "low"), Variant("high", "high"), Variant("auto", "auto")]
    chosen = [Variant("low", "low"), Variant("high", "high"), Variant("auto", "auto", True),
              Variant("auto, no reuse", "auto", False)]
    from visionthink.backends import TransformersBackend

    if "draft_tool_call" in inspect.signature(TransformersBackend.__init__).parameters:
        chosen.append(Variant("auto, no draft", "auto", True, draft=False))
    if early:  # the GPU plan: also what early encoding, and decoding on the consumer's thread, do there
        chosen += [Variant("auto, early", "auto", True, early=True),
                   Variant("auto, answers at once", "auto", True, asks=False),
                   Variant("auto, answers at once, early", "auto", True, early=True, asks=False),
                   Variant("high, decoded inline", "high", decode_thread=False),
                   Variant("auto, decoded inline", "auto", True, decode_thread=False)]
    return chosen


def asks(variant: Variant) -> bool:
    """Whether the variant's episodes have two turns (auto, with a tool call first)."""
    return variant.mode == "auto" and variant.asks


# --- Forced turns ----------------------------------------------------------------------------------------------


def exact_turn(tokenizer, make, tokens: int) -> str:
    """``make(think)`` with ``think`` padded by "a" words (one token each) until forcing it generates exactly
    ``tokens`` tokens, the end-of-turn token included."""
    shortest = None
    for words in range(tokens + 1):
        text = make(" ".join(["a"] * words))
        count = len(tokenizer.encode(text, add_special_tokens=False)) + 1
        shortest = shortest or count
        if count == tokens:
            return text
        if count > tokens:
            break
    raise ValueError(f"No turn of exactly {tokens} tokens with this tokenizer: the shortest takes {shortest}.")


def forced_turns(tokenizer, answer_tokens: int, tool_tokens: int) -> tuple[str, str]:
    """(tool-call turn, answer turn) of exactly ``tool_tokens`` and ``answer_tokens`` generated tokens."""
    from visionthink import protocol

    tool = exact_turn(tokenizer, protocol.tool_call_turn_text, tool_tokens)
    answer = exact_turn(tokenizer, lambda think: protocol.answer_turn_text(think, "4"), answer_tokens)
    return tool, answer


# --- Episodes through the engine -------------------------------------------------------------------------------


class Recorder:
    """A backend that passes another's turns through and keeps each turn's ``TurnOutput`` (the token counts the
    backend reports, reused KV tokens included where it reports them)."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.model_id = backend.model_id
        self.pixel_limits = backend.pixel_limits
        self.outputs: list = []

    def generate(self, request):
        from visionthink.engine import TurnOutput

        for item in self.backend.generate(request):
            if isinstance(item, TurnOutput):
                self.outputs.append(item)
            yield item


def make_engine(model, processor, variant: Variant, turns: list[str], max_new_tokens: int):
    """An engine on ``model`` whose turns are forced to ``turns``, for ``variant``."""
    from tests.support.forcing import forcing_factory
    from visionthink.backends import TransformersBackend
    from visionthink.engine import Engine, GenerationSettings

    extra = {} if variant.reuse_kv is None else {"reuse_kv": variant.reuse_kv}
    parameters = inspect.signature(TransformersBackend.__init__).parameters
    if "early_encode" in parameters:
        extra["early_encode"] = variant.early
    if variant.decode_thread is not None and "decode_thread" in parameters:
        extra["decode_thread"] = variant.decode_thread
    if "draft_tool_call" in parameters:
        extra["draft_tool_call"] = variant.draft
    backend = TransformersBackend(model, processor, "bench",
                                  logits_processor_factory=forcing_factory(processor.tokenizer, turns), **extra)
    return Engine(Recorder(backend), settings=GenerationSettings(max_new_tokens=max_new_tokens), max_turns=2)


class ForwardClock:
    """Adds up the wall time spent inside a CPU model's ``forward`` (vision tower included), so that what an episode
    spends outside it (the processor, the engine, the decoding loop) can be told apart from the model's own work,
    which the machine's noise moves far more. On a GPU the forwards return before their kernels finish, so there is
    no clock there."""

    def __init__(self, model) -> None:
        self.seconds = 0.0
        inner = model.forward

        def forward(*args, **kwargs):
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        model.forward = forward  # an instance attribute: ``model(...)`` calls it through ``nn.Module.__call__``


def run_episode(engine, inputs, expected_tokens: list[int], device=None, clock: ForwardClock | None = None) -> dict:
    """Run one episode through ``Engine.run``; its wall time and what each turn cost (and, on a GPU ``device``, its
    peak memory; with a ``clock`` on the model, the time inside its forwards). Raises when the forcing did not give
    the expected turns (the timings would compare other work)."""
    from visionthink.engine import Done

    recorder = engine.backend
    recorder.outputs.clear()
    answer = None
    reset_peak(device)
    inside = clock.seconds if clock else 0.0
    started = time.perf_counter()
    for event in engine.run(inputs):
        if isinstance(event, Done):
            answer = event.answer
    seconds = time.perf_counter() - started
    generated = [turn.generated_tokens for turn in answer.turns]
    if answer.stop_reason != "answer" or generated != expected_tokens or answer.requested_high_res != (
            len(expected_tokens) == 2):
        raise RuntimeError(
            f"The forced {inputs.mode} episode went {answer.stop_reason} with turns of {generated} tokens (expected "
            f"{expected_tokens}, full image requested {answer.requested_high_res}); the forcing no longer matches "
            "the engine's protocol.")
    return {
        "s": seconds,
        "turn_s": [turn.latency_s for turn in answer.turns],
        "prompt_tokens": [out.prompt_tokens for out in recorder.outputs],
        "reused_tokens": [getattr(out, "reused_tokens", 0) or 0 for out in recorder.outputs],
        "peak_gib": peak_gib(device),
        "model_s": clock.seconds - inside if clock else None,
    }


# --- What the model itself costs -------------------------------------------------------------------------------


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    import torch

    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> float | None:
    """GPU memory allocated at most since ``reset_peak`` (GiB); None off the GPU."""
    import torch

    if device is None or device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def probe_costs(model, processor, image, decode_steps: int, tool_text: str | None = None) -> dict:
    """The model's own cost on this image's prompts, with no engine around it: the processor, one prefill forward
    of the turn-1 prompt with the 1/4 image, with the full image and with no image, and ``decode_steps``
    single-token steps on each image prompt's cache. With ``tool_text`` (turn 1's tool call), also turn 2's own work
    (``turn_two_cost``)."""
    import torch

    from visionthink import protocol
    from visionthink.images import downsample, full_resolution

    rendered = protocol.Conversation.start(QUESTION).render()
    prompts = {  # each image made from the original inside the timing: making the 1/4 image is the method's work
        "low": (rendered, lambda: [downsample(image)]),
        "full": (rendered, lambda: [full_resolution(image)]),
        "text": (rendered.replace(protocol.IMAGE_PLACEHOLDER, ""), lambda: None),
    }
    merge = processor.image_processor.merge_size
    out = {}
    device = model.device
    with torch.inference_mode():
        for name, (text, make) in prompts.items():
            started = time.perf_counter()
            images = make()
            inputs = processor(text=[text], images=images, return_tensors="pt").to(device)
            processed = time.perf_counter() - started
            _sync(device)
            reset_peak(device)
            started = time.perf_counter()
            result = model(**inputs, use_cache=True, logits_to_keep=1)
            _sync(device)
            cost = {"prepare_s": processed, "prefill_s": time.perf_counter() - started,
                    "tokens": int(inputs["input_ids"].shape[1]), "peak_gib": peak_gib(device)}
            if images:
                cost["grid_thw"] = inputs["image_grid_thw"].tolist()
                cost["visual_tokens"] = int(inputs["image_grid_thw"].prod(-1).sum()) // merge**2
                cache, token = result.past_key_values, inputs["input_ids"][:, -1:]
                steps = []
                for _ in range(decode_steps):
                    started = time.perf_counter()
                    cache = model(input_ids=token, past_key_values=cache, use_cache=True).past_key_values
                    _sync(device)
                    steps.append(time.perf_counter() - started)
                # the mean step, as an episode pays every step, a busy machine's stalls included (the median too)
                cost["decode_s"], cost["decode_median_s"] = statistics.fmean(steps), statistics.median(steps)
                del cache
            out[name] = cost
            del result
    if tool_text is not None:
        out["turn2"] = turn_two_cost(model, processor, image, tool_text, decode_steps)
    return out


def turn_two_cost(model, processor, image, tool_text: str, decode_steps: int) -> dict:
    """What turn 2 itself must do on this model, with no engine around it: one forward of the tokens it adds (the
    end of turn 1, the tool response and the full image, vision tower included) over turn 1's cache, as
    ``TransformersBackend`` continues (its ``_continuation``: positions over the whole sequence, the new image's
    pixels only), and ``decode_steps`` single-token steps after it, the mean step. Its new tokens attend to turn
    1's whole context: that is the method's own cost, which no engine can skip."""
    import torch

    from visionthink import protocol
    from visionthink.backends import TransformersBackend
    from visionthink.images import downsample, full_resolution

    device = model.device
    backend = TransformersBackend(model, processor, "bench")  # the backend's continuation (and its attention)
    conversation = protocol.Conversation.start(QUESTION)
    low, full = downsample(image), full_resolution(image)
    # turn 1 as generated: the prompt and the tool call; the cache holds every token but the last (never fed)
    first = processor(text=[conversation.render() + tool_text + protocol.IM_END], images=[low],
                      return_tensors="pt").to(device)
    conversation.add_model_turn(tool_text)
    conversation.add_tool_response()
    second = processor(text=[conversation.render()], images=[low, full], return_tensors="pt").to(device)
    with torch.inference_mode():
        fed = {key: value[:, :-1] if key in ("input_ids", "attention_mask", "mm_token_type_ids") else value
               for key, value in first.items()}
        cache = model(**fed, use_cache=True, logits_to_keep=1).past_key_values
        arguments = backend._continuation(second, {"cache": cache, "ids": first["input_ids"], "images": 1})
        if arguments is None:
            raise RuntimeError("Turn 2's tokens do not continue turn 1's; the bench's turns no longer match the "
                               "protocol.")
        past = cache.get_seq_length()
        arguments = {**arguments, "input_ids": arguments["input_ids"][:, past:],
                     "position_ids": arguments["position_ids"][..., past:]}
        _sync(device)
        started = time.perf_counter()
        result = model(**arguments, use_cache=True, logits_to_keep=1)
        _sync(device)
        prefill = time.perf_counter() - started
        cache, token = result.past_key_values, second["input_ids"][:, -1:]
        steps = []
        for _ in range(decode_steps):
            started = time.perf_counter()
            cache = model(input_ids=token, past_key_values=cache, use_cache=True).past_key_values
            _sync(device)
            steps.append(time.perf_counter() - started)
    return {"prefill_s": prefill, "tokens": int(second["input_ids"].shape[1]), "cached_tokens": past,
            "decode_s": statistics.fmean(steps), "decode_median_s": statistics.median(steps)}


def median_costs(samples: list[dict]) -> dict:
    """Field-wise medians of several ``probe_costs`` results (counts are the same in each)."""
    merged = {}
    for name, first in samples[0].items():
        merged[name] = {key: statistics.median(s[name][key] for s in samples) if isinstance(value, float) else value
                        for key, value in first.items()}
    return merged


def ideal_seconds(costs: dict, answer_tokens: int, tool_tokens: int) -> dict:
    """What an ideal engine would pay per mode: the processor once per image it needs, one prefill, then one decode
    step per generated token but the first (it comes from the prefill); auto pays high plus the 1/4 turn and its
    tool call."""
    low, full = costs["low"], costs["full"]
    high = full["prepare_s"] + full["prefill_s"] + (answer_tokens - 1) * full["decode_s"]
    turn1 = low["prepare_s"] + low["prefill_s"] + (tool_tokens - 1) * low["decode_s"]
    ideal = {
        "low": low["prepare_s"] + low["prefill_s"] + (answer_tokens - 1) * low["decode_s"],
        "high": high,
        "turn1": turn1,
        "auto": high + turn1,
    }
    if "turn2" in costs:  # turn 2 as its own work, over turn 1's longer context
        two = costs["turn2"]
        ideal["turn2"] = full["prepare_s"] + two["prefill_s"] + (answer_tokens - 1) * two["decode_s"]
        ideal["auto_context"] = turn1 + ideal["turn2"]
    return ideal


# --- The run ---------------------------------------------------------------------------------------------------


def noise_image(width: int, height: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(width * 10_000 + height)
    return Image.fromarray(rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8))


def measure(model, processor, plan: Plan, *, log=None) -> dict:
    """Every variant on every size and answer length, interleaved, plus the model's own costs (see ``assemble``)."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    switch = reuse_switch()
    chosen = variants(switch, plan.early)
    tokenizer = processor.tokenizer
    turns = {n: forced_turns(tokenizer, n, plan.tool_tokens) for n in plan.answer_tokens}
    engines = {}
    for n, (tool, answer) in turns.items():
        for variant in chosen:
            forced = [tool, answer] if asks(variant) else [answer]
            engines[variant.name, n] = make_engine(model, processor, variant, forced,
                                                   max_new_tokens=max(n, plan.tool_tokens) + 8)
    expected = {(v.name, n): ([plan.tool_tokens, n] if asks(v) else [n]) for v in chosen
                for n in plan.answer_tokens}
    pictures = {size: noise_image(*size) for size in plan.sizes}
    inputs = {(size, v.name): engines[v.name, plan.answer_tokens[0]].prepare(pictures[size], QUESTION, v.mode)
              for size in plan.sizes for v in chosen}

    clock = ForwardClock(model) if model.device.type == "cpu" else None
    # Warm-up, not recorded: the first calls pay for allocations and lazy initialisation.
    smallest = min(plan.sizes, key=lambda s: s[0] * s[1])
    tool_text = turns[plan.answer_tokens[0]][0]
    probe_costs(model, processor, pictures[smallest], 2, tool_text)
    for variant in chosen:
        n = min(plan.answer_tokens)
        run_episode(engines[variant.name, n], inputs[smallest, variant.name], expected[variant.name, n], model.device,
                    clock)

    runs: dict = defaultdict(list)
    costs: dict = defaultdict(list)
    for rep in range(plan.repeats):
        order = chosen[rep % len(chosen):] + chosen[:rep % len(chosen)]  # rotated, so no variant always goes first
        for size in plan.sizes:
            costs[size].append(probe_costs(model, processor, pictures[size], plan.decode_steps, tool_text))
            for n in plan.answer_tokens:
                for variant in order:
                    run = run_episode(engines[variant.name, n], inputs[size, variant.name], expected[variant.name, n],
                                      model.device, clock)
                    runs[size, n, variant.name].append(run)
                    log(f"rep {rep + 1}/{plan.repeats} {size[0]}x{size[1]} N={n} {variant.name}: {run['s']:.2f} s "
                        f"(turns {', '.join(f'{t:.2f}' for t in run['turn_s'])}; reused {run['reused_tokens']})")
    return assemble(plan, chosen, switch, runs, costs)


def assemble(plan: Plan, chosen: list[Variant], switch: bool, runs: dict, costs: dict) -> dict:
    """The JSON-ready results: per size its model costs, per size and answer length each variant's medians, the
    ratios to high and the floors."""
    sizes, rows = [], []
    for size in plan.sizes:
        cost = median_costs(costs[size])
        text = cost["text"]
        per_visual = {name: (cost[name]["prefill_s"] - text["prefill_s"]) / cost[name]["visual_tokens"]
                      for name in ("low", "full")}
        sizes.append({"size": list(size), "costs": cost, "runs": costs[size],
                      "prefill_s_per_visual_token": per_visual,
                      "prefill_s_per_text_token": text["prefill_s"] / text["tokens"]})
        for n in plan.answer_tokens:
            medians = {v.name: statistics.median(r["s"] for r in runs[size, n, v.name]) for v in chosen}
            high = medians["high"]
            ideal = ideal_seconds(cost, n, plan.tool_tokens)
            row = {"size": list(size), "answer_tokens": n, "visual_tokens": [cost["low"]["visual_tokens"],
                                                                             cost["full"]["visual_tokens"]],
                   "median_s": medians, "ratio_to_high": {name: s / high for name, s in medians.items()},
                   "ideal_s": ideal, "floor": {v.name: ideal[v.mode if asks(v) or v.mode != "auto" else "low"] / high
                                                   for v in chosen}, "turns": {},
                   # auto's floor with turn 2 as the model's own work over turn 1's context (see turn_two_cost)
                   "floor_own_turn2": ideal["auto_context"] / high if "auto_context" in ideal else None,
                   "peak_gib": {v.name: max((r["peak_gib"] or 0.0 for r in runs[size, n, v.name]), default=0.0)
                                for v in chosen},
                   "runs": {v.name: runs[size, n, v.name] for v in chosen}}
            # each repetition's episode over the floor modelled from that repetition's costs (the spread is noise)
            paired = [ideal_seconds(c, n, plan.tool_tokens) for c in costs[size]]
            row["over_floor_runs"] = {
                **{name: [r["s"] / i[mode] for r, i in zip(runs[size, n, name], paired)]
                   for name, mode in (("low", "low"), ("high", "high"), ("auto", "auto"), ("auto, no draft", "auto"))
                   if name in medians},
                **({"auto, turn 2's own work": [r["s"] / i["auto_context"] for r, i in zip(runs[size, n, "auto"],
                                                                                       paired)]}
                   if "auto_context" in ideal and "auto" in medians else {}),
            }
            if all(r.get("model_s") is not None for v in chosen for r in runs[size, n, v.name]):
                row["outside_model_s"] = {
                    v.name: statistics.median(r["s"] - r["model_s"] for r in runs[size, n, v.name]) for v in chosen}
            for v in chosen:
                if asks(v):
                    episodes = runs[size, n, v.name]
                    row["turns"][v.name] = {
                        "turn_s": [statistics.median(r["turn_s"][i] for r in episodes) for i in range(2)],
                        "prompt_tokens": episodes[0]["prompt_tokens"],
                        # the fewest over the runs, so that one run that fell back to a full prefill shows
                        "reused_tokens": [min(r["reused_tokens"][i] for r in episodes) for i in range(2)],
                    }
            rows.append(row)
    return {"plan": asdict(plan), "variants": [asdict(v) for v in chosen], "reuse_switch": switch,
            "sizes": sizes, "rows": rows}


# --- The report ------------------------------------------------------------------------------------------------


def _num(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def modes_table(results: dict, *, label: str = "") -> list[str]:
    """The modes side by side, their ratios to high and the floors (``label``: a first column, e.g. the attention
    kernel)."""
    chosen = [Variant(**v) for v in results["variants"]]
    ratio_columns = [v for v in chosen if v.name != "high"]
    head = ["Image", "Visual tokens (1/4 → full)", "Answer tokens"] + [f"{v.name} (s)" for v in chosen]
    for v in ratio_columns:
        head += [f"{v.name}/high", f"{v.name} floor"]
    own = all(row.get("floor_own_turn2") for row in results["rows"])
    if own:
        head.append("auto floor, turn 2's own work")
    head = (["Attention"] if label else []) + head
    left = 2 if label else 1  # the label and the image are text; every other column is a number
    lines = ["| " + " | ".join(head) + " |", "|---" * left + "|" + "---:|" * (len(head) - left)]
    for row in results["rows"]:
        cells = [f"{row['size'][0]}×{row['size'][1]}", f"{row['visual_tokens'][0]:,} → {row['visual_tokens'][1]:,}",
                 str(row["answer_tokens"])] + [_num(row["median_s"][v.name]) for v in chosen]
        for v in ratio_columns:
            cells += [f"{row['ratio_to_high'][v.name]:.2f}×", f"{row['floor'][v.name]:.2f}×"]
        if own:
            cells.append(f"{row['floor_own_turn2']:.2f}×")
        lines.append("| " + " | ".join(([label] if label else []) + cells) + " |")
    return lines


def costs_table(results: dict) -> list[str]:
    """The model's own prefill and decode costs per size, which the floors are modelled from."""
    own = all("turn2" in entry["costs"] for entry in results["sizes"])
    lines = ["| Image | Prompt tokens (1/4, full, no image) | "
             "Preparing the image (resizing, processor), 1/4 / full (s) | "
             "Prefill 1/4 prompt (s) | Prefill full prompt (s) | Prefill, no image (s) | "
             "Prefill per visual token, 1/4 / full (ms) | "
             "Prefill per text token (ms) | Decode per token, after 1/4 / full (ms) |"
             + (" Turn 2: prefill of its new tokens over turn 1's cache (s) | Decode per token after it (ms) |"
                if own else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if own else "")]
    for entry in results["sizes"]:
        c = entry["costs"]
        two = (f" {_num(c['turn2']['prefill_s'])} | {_num(c['turn2']['decode_s'] * 1e3, 1)} |" if own else "")
        lines.append(
            f"| {entry['size'][0]}×{entry['size'][1]} | {c['low']['tokens']:,}, {c['full']['tokens']:,}, "
            f"{c['text']['tokens']:,} | {_num(c['low']['prepare_s'])} / {_num(c['full']['prepare_s'])} | "
            f"{_num(c['low']['prefill_s'])} | {_num(c['full']['prefill_s'])} | {_num(c['text']['prefill_s'])} | "
            f"{_num(entry['prefill_s_per_visual_token']['low'] * 1e3)} / "
            f"{_num(entry['prefill_s_per_visual_token']['full'] * 1e3)} | "
            f"{_num(entry['prefill_s_per_text_token'] * 1e3)} | {_num(c['low']['decode_s'] * 1e3, 1)} / "
            f"{_num(c['full']['decode_s'] * 1e3, 1)} |" + two)
    return lines


def turns_table(results: dict, *, label: str = "") -> list[str]:
    """Auto's two turns, how much of turn 2's prompt came from turn 1's KV cache, and high beside them."""
    autos = [v for v in (Variant(**v) for v in results["variants"]) if asks(v)]
    lines = [("| Attention " if label else "") + "| Image | Answer tokens | Variant | Turn 1 (s) | Turn 2 (s) | "
             "Turn-2 prompt tokens | of which reused from turn 1 | high (s) | Modelled high (s) |",
             "|---" * (1 if label else 0) + "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for row in results["rows"]:
        for v in autos:
            t = row["turns"][v.name]
            lines.append((f"| {label} " if label else "") +
                         f"| {row['size'][0]}×{row['size'][1]} | {row['answer_tokens']} | {v.name} | "
                         f"{_num(t['turn_s'][0])} | {_num(t['turn_s'][1])} | {t['prompt_tokens'][1]:,} | "
                         f"{t['reused_tokens'][1]:,} | {_num(row['median_s']['high'])} | "
                         f"{_num(row['ideal_s']['high'])} |")
    return lines


def tables(results: dict) -> str:
    """The markdown tables of a CPU run: the modes with their floors, the model's own costs, and auto's turns."""
    return "\n\n".join("\n".join(t) for t in (modes_table(results), costs_table(results), turns_table(results))) + "\n"


def parse_table(text: str) -> list[dict[str, str]]:
    """The first markdown table in ``text`` as a list of {column: cell} (what the test reads back)."""
    rows, head = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            if head:
                break
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if head is None:
            head = cells
        elif not set(line) <= set("|-: "):
            rows.append(dict(zip(head, cells, strict=True)))
    return rows


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    memory = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0) / 2**20
    return f"{cpu}, {os.cpu_count()} CPUs (nproc), {memory:.0f} GiB RAM, no GPU"


def describe_model(model, *, built_with: str) -> dict:
    text, vision = model.config.text_config, model.config.vision_config
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "vision_params": sum(p.numel() for p in model.model.visual.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "attn_implementation": model.config._attn_implementation,
        "text": f"hidden {text.hidden_size}, {text.num_hidden_layers} layers, {text.num_attention_heads} heads / "
                f"{text.num_key_value_heads} KV, intermediate {text.intermediate_size}, vocab {text.vocab_size}",
        "vision": f"depth {vision.depth}, hidden {vision.hidden_size}, {vision.num_heads} heads, intermediate "
                  f"{vision.intermediate_size}, full attention in blocks {list(vision.fullatt_block_indexes)}",
        "built_with": built_with,
    }


def section(results: dict, *, command: str) -> str:
    """The Engine section of BENCHMARKS.md for a CPU run (the GPU subsection is kept apart, see ``write``)."""
    import torch
    import transformers

    m, plan = results["model"], results["plan"]
    names = [v["name"] for v in results["variants"]]
    reused = [row["turns"]["auto"]["reused_tokens"][1] for row in results["rows"] if "auto" in row["turns"]]
    if results["reuse_switch"]:
        reuse = ("`TransformersBackend` takes `reuse_kv`: \"auto\" runs with it on (the default), \"auto, no reuse\" "
                 "with it off, which prefills the whole conversation again in turn 2. ")
        reuse += ("Turn 2 reused turn 1's KV cache in every run (the reused tokens are in the last table)."
                  if reused and all(reused) else
                  "**Turn 2 did not reuse turn 1's KV cache in some runs** (see the last table).")
    else:
        reuse = ("`TransformersBackend` had no `reuse_kv` switch when this ran: turn 2 prefills the whole conversation "
                 "again (both images).")
    if "auto, no draft" in names:
        reuse += (" \"auto, no draft\" runs with `draft_tool_call` off: its tool call is decoded one token per "
                  "forward, where \"auto\" checks the call after \"<tool_call>\" in one forward (the same tokens).")
    return "\n".join([
        SECTION, "",
        f"Measured {results['when']} with `{command}` on {results['machine']}. Python {platform.python_version()}, "
        f"torch {torch.__version__} with {results['threads']} thread{'s' if results['threads'] != 1 else ''} "
        f"(OMP_NUM_THREADS={results['omp_num_threads']}), transformers {transformers.__version__}. The "
        f"1-minute load average before the run was {results['load_before']:.1f} and after it "
        f"{results['load_after']:.1f}: other work on the machine shows up as noise, hence the medians and the "
        "interleaving.", "",
        f"The model is a random Qwen2.5-VL ({m['params'] / 1e6:.1f} M parameters, vision "
        f"{m['vision_params'] / 1e6:.1f} M, {m['dtype']}, {m['attn_implementation']}; text {m['text']}; "
        f"vision {m['vision']}) built by {m['built_with']} and loaded through `from_pretrained` with the tiny "
        "model's tokenizer and the checkpoint's image-processor limits. One random-noise image per size; the 1/4 "
        "image is the engine's (half width, half height).", "",
        f"Each episode runs through `Engine.run` on `TransformersBackend` (at {results.get('revision', '?')}), its "
        "turns forced with "
        "`tests/support/forcing.py`: every mode writes the same answer of N tokens (the end-of-turn token included), "
        f"and auto first writes a tool call of {plan['tool_tokens']} tokens, then gets the full image. {reuse} Wall "
        "time is from `Engine.run` to its `Done` event (the processor, every turn and the parsing included). "
        f"{plan['repeats']} repetition{'s' if plan['repeats'] != 1 else ''}; in each, every size, length and variant "
        f"({'; '.join(names)}) in turn, the variants' order rotated between repetitions; medians.", "",
        "The floor beside each ratio is what an ideal engine would pay on this model, over the measured high time. It "
        "is modelled from the model's own costs, measured in the same run (second table: one forward pass of the "
        f"turn-1 prompt with each image, with no engine around it, and {plan['decode_steps']} single-token steps on "
        "its cache, the mean step, as an episode pays every step, stalls included): high = prefill of the full-image "
        "prompt + (N − 1) decode steps; low = the same with the 1/4 image; auto = high + prefill of the 1/4 prompt + "
        "(tool-call tokens − 1) decode steps, i.e. turn 1 on top of high, with turn 2 no dearer than high. That last "
        "assumption is generous: turn 2 prefills fewer tokens than high, but they attend to turn 1's context too, and "
        "its answer is decoded after a longer one. So a second auto floor counts turn 2 as the model's own work, "
        "measured in the same run without an engine around it (the last two columns of the second table: one forward "
        "pass of the tokens turn 2 adds over turn 1's cache, vision tower included, then single-token steps). Every "
        "floor includes the time of preparing each image it needs once (second table: making the 1/4 image at half "
        "width and height, and the processor; the 1/4 image for low, the full one for high, both for auto): no engine "
        "can skip preparing the pixels, but none need prepare an image twice. The floors are modelled from costs "
        "measured apart from the episodes, so an engine that adds nothing lands within the machine's noise of its "
        "floor, on either side. They count one decode step per generated token, the tool call's included; \"auto\" "
        "checks most of its call in one forward (the draft), so it can sit under them, and \"auto, no draft\" is the "
        "variant held to them.", "",
        "Under the tables, measured over floor is each median over its floor, with (where there are several) its "
        "range over the repetitions, each repetition's episode over the floor modelled from that repetition's own "
        "costs: that range is the machine's noise. Beside it, the time each mode spent outside the model's forward "
        "passes (a clock around the model's `forward` on the CPU): the processor, the engine and its decoding loop, "
        "against the images' preparation the floors count.", "",
        tables(results).rstrip("\n"), "", *reading(results), "",
    ])


def _span(values: list[float], unit: str = "×") -> str:
    low, high = min(values), max(values)
    return f"{low:.2f}{unit}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}–{high:.2f}{unit}"


def reading(results: dict) -> list[str]:
    """Bullets computed from the run: where auto's time goes against its floor, and what KV reuse saved."""
    rows = results["rows"]
    costs = {tuple(entry["size"]): entry["costs"] for entry in results["sizes"]}
    lines = []
    for row in rows:
        image = f"{row['size'][0]}×{row['size'][1]}"
        turn = row["turns"]["auto"]["turn_s"]
        ideal, high = row["ideal_s"], row["median_s"]["high"]
        own = row.get("floor_own_turn2")
        modelled_turn2 = (f", modelled from the model's own turn-2 work {ideal['turn2'] / high:.2f}×"
                          if "turn2" in ideal else "")
        against = {name: row["ratio_to_high"][name] / row["floor"][name] for name in ("low", "auto", "auto, no draft")
                   if name in row["floor"]}
        if own:
            against["auto, turn 2's own work"] = row["ratio_to_high"]["auto"] / own
        spread = row.get("over_floor_runs", {})
        outside = row.get("outside_model_s")
        prepared = costs[tuple(row["size"])]
        lines.append(f"- {image}, N = {row['answer_tokens']}: auto {row['ratio_to_high']['auto']:.2f}× high against "
                     f"a floor of {row['floor']['auto']:.2f}×"
                     + (f" ({own:.2f}× with turn 2's own work)" if own else "")
                     + f"; its turn 1 took {turn[0]:.2f} s (modelled {ideal['turn1']:.2f} s) and its turn 2 "
                     f"{turn[1] / high:.2f}× high (the first floor counts 1.00×{modelled_turn2}); high took "
                     f"{high / ideal['high']:.2f}× its modelled time; measured over floor: "
                     + ", ".join(f"{name} {value:.2f}" + (f" (repetitions {_span(spread[name], '')})"
                                                          if len(spread.get(name, ())) > 1 else "")
                                 for name, value in against.items())
                     + (f"; time outside the model's forward passes: "
                        + ", ".join(f"{name} {outside[name]:.2f} s" for name in ("low", "high", "auto"))
                        + f" (preparing the images, in the floors: {prepared['low']['prepare_s']:.2f} s 1/4, "
                        f"{prepared['full']['prepare_s']:.2f} s full)" if outside else "") + ".")
    if results["reuse_switch"]:
        for size in dict.fromkeys(tuple(row["size"]) for row in rows):
            pairs = [(row["turns"]["auto"]["turn_s"][1], row["turns"]["auto, no reuse"]["turn_s"][1])
                     for row in rows if tuple(row["size"]) == size]
            reused = next(row["turns"]["auto"]["reused_tokens"][1] for row in rows if tuple(row["size"]) == size)
            lines.append(f"- KV reuse at {size[0]}×{size[1]} ({reused:,} of turn 2's tokens from turn 1's cache): "
                         f"turn 2 took {_span([with_ / without for with_, without in pairs])} its time without reuse.")
    if all("auto, no draft" in row["turns"] for row in rows):
        pairs = [(row["turns"]["auto"]["turn_s"][0], row["turns"]["auto, no draft"]["turn_s"][0]) for row in rows]
        lines.append(f"- The tool call's draft (one forward for the call after \"<tool_call>\"): turn 1 took "
                     f"{_span([with_ / without for with_, without in pairs])} its time without it "
                     f"({_span([without - with_ for with_, without in pairs], ' s')} less).")
    lines += [
        "",
        "What the model is and is not: its proportions are not the 7B's. Attention, whose cost per token grows with "
        "the context, is a much larger share of a 768-wide model's work than of a 3,584-wide one's, so large images "
        "cost it more than proportionally, and turn 2, whose new tokens attend to turn 1's whole context as well, "
        "costs it about as much as high although it prefills fewer tokens; the prompt's fixed text (system prompt "
        f"and instructions) is {costs[tuple(rows[0]['size'])]['text']['tokens']:,} tokens in the tiny model's "
        "2,016-token vocabulary, which the real tokenizer would write in fewer (about 450); and a decode step, which "
        "reads every weight, costs as much as prefilling about 25 tokens on this CPU, so turn 1's tool call weighs "
        "more here than on a GPU's prefill-to-decode balance. The ratios are this model's on this CPU; "
        "`bench.gpu_engine` measures the 7B shape.",
    ]
    return lines


GPU_PENDING = (
    f"{GPU_HEADING} (Qwen2.5-VL-7B shape)\n\n"
    "Not measured yet: no GPU was lent to the session that wrote this benchmark ({date}). On a machine with an NVIDIA "
    "GPU, `python -m bench.gpu_engine --write` builds a random model of Qwen2.5-VL-7B's shape in bf16 on the GPU and "
    "records here the prefill time and achieved TFLOP/s of the 1/4 and the full image at 1600×1000 and 2048×2048, "
    "decode tokens/s, the three modes with their ratios and floors (auto with and without KV reuse, with early "
    "encoding of the full image, and what early encoding costs when the model answers at once; auto without the "
    "tool call's draft; high and auto decoded on the consumer's thread) and peak GPU "
    "memory, with SDPA and, where `flash_attn` imports (requirements-gpu.txt), FlashAttention-2. It is planned to "
    "take a few minutes on one H100 and about 20 GiB of its memory. Without a GPU it says so and stops; its code path "
    "was run on the CPU with `--size test` (a small model of the same architecture), whose figures say nothing about "
    "a GPU and are not recorded.\n"
)


def write(cpu: str | None = None, gpu: str | None = None) -> None:
    """Put the Engine section in BENCHMARKS.md: the CPU part and the GPU subsection, each replaced when given and
    kept (or, for the GPU, the not-measured note) when not."""
    from bench.grpo_bench import write_section

    path = ROOT / "BENCHMARKS.md"
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    old_cpu, old_gpu = "", ""
    if SECTION + "\n" in current:
        start = current.index(SECTION + "\n")
        end = current.find("\n## ", start + len(SECTION))
        old = current[start:end if end != -1 else len(current)]
        old_cpu, _, rest = old.partition(GPU_HEADING)
        old_gpu = GPU_HEADING + rest if rest else ""
    cpu = cpu or old_cpu or f"{SECTION}\n\nNot measured yet: run `python -m bench.engine --write`.\n"
    gpu = gpu or old_gpu or GPU_PENDING.format(date=datetime.now(timezone.utc).strftime("%Y-%m-%d"))
    write_section(cpu.rstrip("\n") + "\n\n" + gpu.rstrip("\n") + "\n", SECTION)


def load_average() -> float:
    return os.getloadavg()[0]


def revision() -> str:
    """The commit the engine code was measured at, and whether visionthink/ differed from it."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "an unknown commit"
    return commit + (" with local changes in visionthink/" if git("status", "--porcelain", "visionthink") else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="the tiny model, one 448×336 image, one repetition: checks the bench, no useful times")
    parser.add_argument("--model", choices=("bench", "tiny"), help="default: bench, or tiny with --quick")
    parser.add_argument("--sizes", help="image sizes, e.g. 1024x768,1600x1000 (default: 1024x768,1600x1000,2048x2048)")
    parser.add_argument("--answer-tokens", help="answer lengths in tokens, e.g. 16,72 (the default)")
    parser.add_argument("--repeats", type=int, help="repetitions of every variant (default 3, or 1 with --quick)")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    parser.add_argument("--write", action="store_true", help="update the Engine section of BENCHMARKS.md")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="measure nothing: print (and with --write record) the section of a run saved with --json")
    args = parser.parse_args(argv)
    if args.report:
        results = json.loads(args.report.read_text(encoding="utf-8"))
        text = section(results, command=results.get("command", "python -m bench.engine"))
        print(text)
        if args.write:
            write(cpu=text)
        return 0
    plan = QUICK if args.quick else Plan()
    if args.sizes:
        plan = replace(plan, sizes=tuple(tuple(int(x) for x in size.split("x")) for size in args.sizes.split(",")))
    if args.answer_tokens:
        plan = replace(plan, answer_tokens=tuple(int(x) for x in args.answer_tokens.split(",")))
    if args.repeats:
        plan = replace(plan, repeats=args.repeats)
    if args.write and args.quick:
        parser.error("--quick figures are not benchmarks; run without --quick to --write.")
    kind = args.model or ("tiny" if args.quick else "bench")

    import torch

    from visionthink.hf import load_model, load_processor

    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(kind, Path(tmp) / kind)
        model, processor = load_model(str(folder), device="cpu"), load_processor(str(folder))
        results = measure(model, processor, plan)
    results.update(
        when=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), machine=machine(),
        threads=torch.get_num_threads(), omp_num_threads=os.environ.get("OMP_NUM_THREADS", "unset"),
        load_before=load_before, load_after=load_average(), revision=revision(),
        model=describe_model(model, built_with="`visionthink.tiny.build_tiny_model`" if kind == "tiny" else
                             "`bench.engine` from `visionthink.tiny.build_config`"),
    )
    given = [("--quick", args.quick), ("--model", args.model), ("--sizes", args.sizes),
             ("--answer-tokens", args.answer_tokens), ("--repeats", args.repeats)]
    results["command"] = " ".join(["python -m bench.engine", *(flag if value is True else f"{flag} {value}"
                                                                for flag, value in given if value)])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    text = section(results, command=results["command"])
    print(text)
    if args.write:
        write(cpu=text)
    bad = [r for r in results["rows"] for x in (*r["ratio_to_high"].values(), *r["floor"].values())
           if not (math.isfinite(x) and x > 0)]
    return 1 if bad else 0


def build_model(kind: str, folder: Path) -> Path:
    """Write a random model into ``folder`` in the Hub layout: the tiny model, or the bench model (the tiny model's
    tokenizer and processor, ``BENCH_TEXT``/``BENCH_VISION`` sizes, seed 0)."""
    from visionthink import images
    from visionthink.tiny import build_config, build_image_processor, build_tiny_model, build_tokenizer, new_model, \
        write_folder

    if kind == "tiny":
        return build_tiny_model(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = build_config(tokenizer, text=BENCH_TEXT, vision=BENCH_VISION)
    write_folder(folder, new_model(config, tokenizer, seed=0), tokenizer, build_image_processor(images.MAX_PIXELS),
                 name_or_path=folder)
    return folder


if __name__ == "__main__":
    raise SystemExit(main())
