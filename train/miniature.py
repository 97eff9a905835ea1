"""Build the embedded miniature from nothing, through the project's own training code (``make miniature``).

    python -m train.miniature build [--out runs/miniature] [--seed 0] [--threads 2] [--no-install]
    python -m train.miniature ablations [--out runs/miniature]

``build``:

1. draw the splits (``visionthink.miniature``): training rows, and held-out rows from another seed;
2. build the untrained model (``visionthink.miniature.model``);
3. the warm start, by supervised fine-tuning (``train.sft``) on transcripts in the exact protocol: first pattern
   questions with the full image only (the texture is the skill hardest to find in a mixture), then shape
   questions (the slowest to read from the 1/4 image; half the batch rehearses the texture), then *uninformed*
   transcripts where every kind answers directly from the 1/4 image or asks for the full image, half and half (a
   direct answer to a pattern question is a uniform guess). The start reads what it can and has no reason to
   prefer either path;
4. GRPO from the start (``train.grpo`` with ``train/recipes/miniature.yaml``: rule judge, format reward, Eq. 5);
5. evaluate the start and the trained model on the held-out rows with ``train.evaluate`` (engine, greedy; the
   start also sampled), and probe each model's own visual tokens;
6. install both checkpoints, each with a model card holding the task, the recipe and the figures, into
   ``visionthink/miniature/weights/`` (the app's embedded default and the feedback loop's uninformed start).

Deterministic for a seed and a number of threads. ``ablations`` reruns GRPO from the same start and seed with
each penalty variant and writes the request ratio per kind and the accuracy over steps (``docs/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from visionthink.clock import utcnow

log = logging.getLogger("train.miniature")
ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "train" / "recipes" / "miniature.yaml"
DOCS = ROOT / "docs"


@dataclass(frozen=True)
class Recipe:
    """Everything a build depends on besides the GRPO recipe file."""

    seed: int = 0
    train_items: int = 3000
    #: The training split's kinds in turn: half the questions need the full image, as in the paper's data (10K that
    #: the 1/4 image answers, 10K that need the full one). Evenly mixed, the two coarse kinds' push to answer
    #: directly outweighs the pattern's pull to ask while GRPO has not yet told the kinds apart.
    train_kinds: tuple[str, ...] = ("colour", "pattern", "shape", "pattern")
    test_items: int = 240
    pattern_steps: int = 200
    #: Then shape questions (every path, uninformed; half the batch, see below): reading the shape from the 1/4
    #: image is the slowest skill; the mixed stage that follows keeps it and brings the rest back.
    shape_steps: int = 400
    #: The share of the shape stage's examples that rehearse reading the texture, with the full image from the
    #: start ("high", so that no decision is taught): 400 steps of shape alone at the peak learning rate undid
    #: the texture reading (held-out pattern questions with the full image fell to 72-80%, and GRPO then stopped
    #: at 86%). Rehearsed through the VisionThink episode instead, the start learnt that pattern questions ask
    #: (greedy: 99% of them).
    shape_rehearsal: float = 0.5
    mixed_steps: int = 1400
    #: How often each kind is drawn in the mixed stage: the shape is the slowest to learn from the 1/4 image.
    kind_weights: tuple[tuple[str, float], ...] = (("colour", 0.2), ("shape", 0.5), ("pattern", 0.3))
    batch_size: int = 16
    learning_rate: float = 1e-3
    vision_learning_rate: float = 1e-4
    warmup_steps: int = 50
    #: Shares of the uninformed transcripts: the VisionThink episode ("auto": answer from the 1/4 image, or ask
    #: and answer after the full image), the full image from the start ("high"), and a call refused where the full
    #: image cannot be given ("low": the error turn, then an answer from the 1/4 image).
    modes: tuple[tuple[str, float], ...] = (("auto", 0.75), ("high", 0.125), ("low", 0.125))
    #: In "auto", how often the start asks: half the time on every kind, leaning on a cue that has nothing to do
    #: with whether the full image is needed (a red or yellow shape asks more), so that greedy decoding, which
    #: takes the likelier path, also asks about half the time instead of always or never.
    ask_share_warm: float = 0.65
    ask_share_cool: float = 0.35
    max_new_tokens: int = 64


def train_seed(recipe: Recipe) -> int:
    return recipe.seed + 1


def held_out_seed(recipe: Recipe) -> int:
    """The held-out split's seed: never one the training split uses."""
    return recipe.seed + 2


def choose_path(item, rng: random.Random, recipe: Recipe) -> str:
    """The path of one uninformed transcript: blind to the kind of question (see ``Recipe``)."""
    r, total, mode = rng.random(), 0.0, recipe.modes[-1][0]
    for name, share in recipe.modes:
        total += share
        if r < total:
            mode = name
            break
    if mode == "high":
        return "high"
    if mode == "low":
        return "refused"
    ask = recipe.ask_share_warm if item.warm else recipe.ask_share_cool
    return "request" if rng.random() < ask else "direct"


def sft_batches(items, recipe: Recipe, rng: random.Random):
    """``step -> examples`` for ``train.sft``: pattern questions with the full image for ``pattern_steps``, shape
    questions (rehearsing the pattern's) for ``shape_steps``, then the uninformed mixture of every kind."""
    from train.sft import Example
    from visionthink.miniature import turns

    by_kind = {kind: [i for i in items if i.kind == kind] for kind, _ in recipe.kind_weights}
    kinds, weights = zip(*recipe.kind_weights, strict=True)

    def batch(step: int) -> list[Example]:
        out = []
        for _ in range(recipe.batch_size):
            if step < recipe.pattern_steps:
                item, path = rng.choice(by_kind["pattern"]), rng.choice(("request", "high"))
            elif step < recipe.pattern_steps + recipe.shape_steps:
                if rng.random() < recipe.shape_rehearsal:
                    item, path = rng.choice(by_kind["pattern"]), "high"
                else:
                    item = rng.choice(by_kind["shape"])
                    path = choose_path(item, rng, recipe)
            else:
                item = rng.choice(by_kind[rng.choices(kinds, weights)[0]])
                path = choose_path(item, rng, recipe)
            transcript = turns.transcript(item, path, rng)
            out.append(Example(item.question, item.image, transcript.mode, transcript.turns))
        return out

    return batch


def warm_start(init: Path, out: Path, recipe: Recipe) -> dict:
    """SFT from ``init`` on the training split's items; saves the start in the Hub layout and returns what it
    measured."""
    from train import sft
    from visionthink import hf
    from visionthink.miniature import model as miniature_model, task

    model = hf.load_model(str(init), device="cpu")
    processor = hf.load_processor(str(init))
    items = task.sample(recipe.train_items, train_seed(recipe), kinds=recipe.train_kinds)
    config = sft.SFTConfig(steps=recipe.pattern_steps + recipe.shape_steps + recipe.mixed_steps,
                           batch_size=recipe.batch_size,
                           learning_rate=recipe.learning_rate, vision_learning_rate=recipe.vision_learning_rate,
                           warmup_steps=recipe.warmup_steps, log_every=100)
    record = sft.train(model, processor, sft_batches(items, recipe, random.Random(recipe.seed)), config)
    miniature_model.save(model, processor, out)
    return {"steps": config.steps, "seconds": round(record.seconds, 1), "model_tokens": record.model_tokens,
            "loss": list(zip(record.steps, [round(x, 4) for x in record.losses], strict=True))}


def run_grpo(start: Path, split_dir: Path, out: Path, *, seed: int = 0, overrides: list[str] = ()) -> Path:
    """GRPO with the miniature recipe from ``start``; returns the saved checkpoint (``out``)."""
    from train import grpo

    argv = ["--config", str(RECIPE), "--model_name_or_path", str(start), "--dataset", str(split_dir),
            "--output_dir", str(out), "--seed", str(seed), *overrides]
    if grpo.main(argv) != 0:
        raise RuntimeError(f"GRPO from {start} failed (see the messages above).")
    return out


def evaluate(folder: Path, split_dir: Path, out: Path, modes: tuple[str, ...], *, temperature: float = 0.0,
             recipe: Recipe = Recipe()) -> dict:
    """``train.evaluate`` on the held-out split through the engine; returns the report as a dict."""
    from train.evaluate import evaluate as run, load_items
    from train.judge import RuleJudge
    from visionthink.loader import load_engine
    from visionthink.settings import Settings

    engine = load_engine(Settings(model=str(folder), fallback="none", device="cpu",
                                  max_new_tokens=recipe.max_new_tokens, temperature=temperature))
    report = run(engine, load_items(split_dir), modes=modes, judge=RuleJudge(), out_dir=out, progress=False,
                 data={"source": split_dir.name})
    return report.to_dict()


def per_kind(report: dict, mode: str = "auto") -> dict:
    """Request ratio, accuracy and format per kind from an evaluation report."""
    out = {}
    for kind, modes in report["by_kind"].items():
        summary = modes[mode]
        out[kind] = {"items": summary["items"], "high_res_ratio": summary["high_res_ratio"],
                     "accuracy": summary["accuracy"], "well_formed_ratio": summary["well_formed_ratio"]}
    return out


def machine() -> str:
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads"


def build(out: Path, recipe: Recipe, *, install: bool) -> dict:
    import resource

    from visionthink.miniature import data, model as miniature_model, probe

    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 1)
        log.info("%s: %.1f s", name, timings[name])
        return time.perf_counter()

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t = time.perf_counter()
    train_dir = data.write_split(recipe.train_items, train_seed(recipe), out / "data" / "train",
                                 kinds=recipe.train_kinds)
    test_dir = data.write_split(recipe.test_items, held_out_seed(recipe), out / "data" / "test")
    t = lap("sample", t)
    init = miniature_model.build_untrained(out / "init", seed=recipe.seed)
    t = lap("init", t)
    sft_record = warm_start(init, out / "start", recipe)
    t = lap("sft", t)
    trained = run_grpo(out / "start", train_dir, out / "trained", seed=recipe.seed)
    t = lap("grpo", t)
    start_greedy = evaluate(out / "start", test_dir, out / "eval" / "start", ("auto",), recipe=recipe)
    start_sampled = evaluate(out / "start", test_dir, out / "eval" / "start-sampled", ("auto",), temperature=1.0,
                             recipe=recipe)
    trained_report = evaluate(trained, test_dir, out / "eval" / "trained", ("auto", "low", "high"), recipe=recipe)
    t = lap("evaluate", t)
    tokens = {name: dataclasses.asdict(probe.visual_tokens(folder, seed=recipe.seed))
              for name, folder in (("untrained", init), ("start", out / "start"), ("trained", trained))}
    t = lap("visual_token_probe", t)
    premise = probe.measure(seed=recipe.seed)
    t = lap("premise_probe", t)
    steps = _grpo_steps(out / "trained" / "completions.jsonl")
    figures = {
        "written_at": utcnow().isoformat(timespec="seconds"),
        "machine": machine(),
        "recipe": dataclasses.asdict(recipe),
        "grpo_recipe": RECIPE.read_text(encoding="utf-8"),
        "parameters": miniature_model.parameter_count(trained),
        "weights_bytes": (trained / "model.safetensors").stat().st_size,
        "premise": dataclasses.asdict(premise),
        "visual_token_probe": tokens,
        "sft": sft_record,
        "grpo": {"seconds": timings["grpo"], "steps": len(steps),
                 "seconds_per_step": round(timings["grpo"] / max(1, len(steps)), 3)},
        "start": {"greedy": per_kind(start_greedy), "sampled": per_kind(start_sampled)},
        "trained": {mode: per_kind(trained_report, mode) for mode in ("auto", "low", "high")},
        "trained_modes": {mode: {k: trained_report["modes"][mode][k] for k in
                                 ("accuracy", "high_res_ratio", "retained_ratio", "mean_tokens_used",
                                  "well_formed_ratio", "latency_mean_s")} for mode in ("auto", "low", "high")},
        "timings_s": timings,
        "total_s": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    (out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    if install:
        install_checkpoints(out, figures)
    return figures


def _grpo_steps(completions: Path) -> list[int]:
    steps = set()
    if completions.is_file():
        for line in completions.read_text(encoding="utf-8").splitlines():
            steps.add(json.loads(line).get("step"))
    return sorted(s for s in steps if s is not None)


def install_checkpoints(out: Path, figures: dict) -> None:
    """Write the start and the trained model into the package in the Hub layout (what a training run leaves beside
    the weights stays behind), each with its model card and figures."""
    from visionthink import hf
    from visionthink.miniature import card, model as miniature_model

    for name, target in (("start", miniature_model.START_DIR), ("trained", miniature_model.TRAINED_DIR)):
        if target.exists():
            shutil.rmtree(target)
        model = hf.load_model(str(out / name), device="cpu")
        miniature_model.save(model, hf.load_processor(str(out / name)), target,
                             name_or_path=target.relative_to(ROOT))
        (target / "figures.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        (target / "README.md").write_text(card.model_card(name, figures), encoding="utf-8")
        log.info("Installed %s in %s.", name, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.miniature", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="sample, SFT, GRPO, evaluate, install")
    ablate = commands.add_parser("ablations", help="GRPO from the same start with each penalty variant")
    for command in (build_cmd, ablate):
        command.add_argument("--out", type=Path, default=Path("runs/miniature"), help="run folder")
        command.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    build_cmd.add_argument("--seed", type=int, default=0)
    build_cmd.add_argument("--no-install", action="store_true", help="leave the package's checkpoints alone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    import torch

    torch.set_num_threads(args.threads)
    if args.command == "build":
        figures = build(args.out.resolve(), Recipe(seed=args.seed), install=not args.no_install)
        print(json.dumps({k: figures[k] for k in ("start", "trained", "timings_s", "total_s", "peak_rss_mib")},
                         indent=2))
        return 0
    from train.ablations import run as run_ablations

    return run_ablations(args.out.resolve())


if __name__ == "__main__":
    raise SystemExit(main())
