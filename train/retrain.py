"""The feedback loop: rated answers in, an evaluated and registered checkpoint out.

    python -m train.retrain [--recipe train/recipes/lora-1gpu.yaml] [--base MODEL] [--out DIR] [-- --field value …]

1. export the consented, judged answers from the store (``grpo`` format) and hold a deterministic share out;
2. run GRPO on the rest with the recipe (LoRA on one GPU by default), starting from the model now served;
3. evaluate the new checkpoint against the current one on the held-out rows (the same judge for both);
4. register the checkpoint as a model version in the store, so the app can serve it
   (``VISIONTHINK_MODEL=<checkpoint>``) and the dashboard compares versions.

Anything after ``--`` goes to ``train.grpo`` as command-line overrides of the recipe.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("train.retrain")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = ROOT / "train" / "recipes" / "lora-1gpu.yaml"


class RetrainError(RuntimeError):
    """A step of the loop that cannot go on; the message says why and what to do."""


def held_out(doc_id: str, fraction: float) -> bool:
    """Whether a row is kept for evaluation: a stable function of its id, so reruns split the same way."""
    return int(hashlib.sha256(doc_id.encode("utf-8")).hexdigest()[:8], 16) % 10_000 < fraction * 10_000


def split_export(export_path: Path, out: Path, fraction: float) -> tuple[Path, Path, bool]:
    """Save the training and evaluation rows of an export; the flag says whether the evaluation is held out."""
    import datasets

    rows = datasets.load_from_disk(str(export_path))
    mask = [held_out(doc_id, fraction) for doc_id in rows["doc_id"]]
    train = rows.select([i for i, m in enumerate(mask) if not m])
    evaluation = rows.select([i for i, m in enumerate(mask) if m])
    separate = len(evaluation) > 0 and len(train) > 0
    if not separate:  # too few rows to hold any out: train and evaluate on all, and say so
        train = evaluation = rows
    train_path, eval_path = out / "train-data", out / "eval-data"
    train.save_to_disk(str(train_path))
    evaluation.save_to_disk(str(eval_path))
    return train_path, eval_path, separate


def evaluate_model(model: str, eval_path: Path, out: Path, modes: tuple[str, ...], judge, settings) -> dict:
    """Evaluate one model on the held-out rows; refuses the tiny stand-in (a fallback is never evaluated)."""
    from train.evaluate import evaluate, load_items
    from visionthink.loader import ModelLoadError, load_engine

    try:
        engine = load_engine(settings.override(model=model, fallback="none"))
    except ModelLoadError as exc:
        raise RetrainError(f"Could not load {model} to evaluate it: {exc}") from exc
    report = evaluate(engine, load_items(eval_path), modes=modes, judge=judge, out_dir=out, progress=False,
                      data={"source": str(eval_path)})
    return report.to_dict()


def run(args: argparse.Namespace, grpo_overrides: list[str]) -> int:
    from store.api import Actor, Store
    from store.export import export
    from train import grpo
    from train.judge import RuleJudge, judge_from_env
    from visionthink.settings import Settings

    settings = Settings.from_env()
    base = args.base or settings.model
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"runs/retrain/{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    store = Store(args.db or settings.db_url, ratings_per_item=settings.ratings_per_item)
    try:
        log.info("1/4 Exporting consented, judged answers from %s …", args.db or settings.db_url)
        exported = export(store, Actor.system(), "grpo", out / "feedback")
        if exported.rows < args.min_rows:
            raise RetrainError(
                f"Only {exported.rows} judged answers can be used for training (at least {args.min_rows} are needed, "
                "--min-rows). Annotate more in the studio, or lower --min-rows."
            )
        train_path, eval_path, separate = split_export(exported.path, out, args.eval_fraction)
        log.info("%d rows: training on %s, evaluating on %s.", exported.rows, train_path.name,
                 eval_path.name if separate else "the same rows (too few to hold any out)")

        log.info("2/4 GRPO from %s with %s …", base, args.recipe)
        checkpoint = out / "checkpoint"
        argv = ["--config", str(args.recipe), "--model_name_or_path", str(base), "--dataset", str(train_path),
                "--output_dir", str(checkpoint), "--judge", args.judge, *grpo_overrides]
        if grpo.main(argv) != 0:
            raise RetrainError("Training stopped (see the messages above); nothing was registered.")

        log.info("3/4 Evaluating the new checkpoint against %s …", base)
        judge = RuleJudge() if args.judge == "rule" else judge_from_env(
            None if args.judge == "env" else {**os.environ, "VISIONTHINK_JUDGE": "llm"})
        modes = tuple(m.strip() for m in args.eval_modes.split(",") if m.strip())
        reports = {name: evaluate_model(model, eval_path, out / "eval" / name, modes, judge, settings)
                   for name, model in (("current", str(base)), ("new", str(checkpoint)))}
        comparison = compare_reports(reports, modes)
        (out / "comparison.json").write_text(json.dumps({"base": str(base), "checkpoint": str(checkpoint),
                                                         "held_out": separate, "modes": comparison}, indent=2))
        print(comparison_table(comparison, base, checkpoint, separate))

        log.info("4/4 Registering %s as a model version …", checkpoint)
        if not args.no_register:
            store.register_model_version(Actor.system(), str(checkpoint), "", f"retrain:{stamp}",
                                         notes=json.dumps({"base": str(base), "rows": exported.rows,
                                                           "comparison": comparison}))
        print(f"\nServe it: VISIONTHINK_MODEL={checkpoint} make run")
    finally:
        store.close()
    return 0


def compare_reports(reports: dict[str, dict], modes: tuple[str, ...]) -> dict:
    out = {}
    for mode in modes:
        rows = {name: report["modes"][mode] for name, report in reports.items()}
        out[mode] = {name: {key: row.get(key) for key in ("accuracy", "high_res_ratio", "retained_ratio", "judged")}
                     for name, row in rows.items()}
    return out


def comparison_table(comparison: dict, base, checkpoint, held_out: bool) -> str:
    def pct(value):
        return "—" if value is None else f"{value:.1%}"

    lines = [f"Current: {base}", f"New:     {checkpoint}",
             "Evaluated on held-out rows." if held_out else "Evaluated on the training rows (too few to hold out).",
             "", f"{'mode':<6} {'model':<8} {'accuracy':>9} {'high-res':>9} {'tokens':>8} {'judged':>7}"]
    for mode, rows in comparison.items():
        for name, row in rows.items():
            lines.append(f"{mode:<6} {name:<8} {pct(row['accuracy']):>9} {pct(row['high_res_ratio']):>9} "
                         f"{pct(row['retained_ratio']):>8} {row['judged'] or 0:>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    grpo_overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="python -m train.retrain", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, help="GRPO recipe (default: LoRA on one GPU)")
    parser.add_argument("--base", help="model to start from (default: VISIONTHINK_MODEL, the one being served)")
    parser.add_argument("--db", help="database URL (default: VISIONTHINK_DB_URL)")
    parser.add_argument("--out", help="run folder (default: runs/retrain/<time>)")
    parser.add_argument("--judge", choices=("rule", "llm", "env"), default="env", help="judge for training and eval")
    parser.add_argument("--eval-fraction", type=float, default=0.1, help="share of rows held out for evaluation")
    parser.add_argument("--eval-modes", default="auto", help="modes to evaluate, e.g. auto,low,high")
    parser.add_argument("--min-rows", type=int, default=8, help="refuse to train on fewer judged answers")
    parser.add_argument("--no-register", action="store_true", help="do not register the checkpoint in the store")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.recipe.is_file():
        print(f"error: there is no recipe {args.recipe}.", file=sys.stderr)
        return 2
    from store.db import StoreError
    from train.evaluate import EvalError
    from visionthink.settings import SettingsError

    try:
        return run(args, grpo_overrides)
    except (RetrainError, StoreError, SettingsError, EvalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
