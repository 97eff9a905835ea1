"""The feedback loop: rated answers in, an evaluated and registered checkpoint out.

    python -m train.retrain [--recipe train/recipes/lora-1gpu.yaml] [--base MODEL] [--out DIR] [-- --field value …]

1. export the consented, judged answers from the store (``grpo`` format) and hold a deterministic share out;
2. run GRPO on the rest with the recipe (LoRA on one GPU by default), starting from the model now served;
3. evaluate the new checkpoint against the current one on the held-out rows (the same judge for both);
4. register the checkpoint as a model version in the store, so the app can serve it
   (``VISIONTHINK_MODEL=<checkpoint>``) and the dashboard compares versions. A checkpoint is registered only when
   it was evaluated on rows it was not trained on and its weights differ from the base's; otherwise the loop
   says why and stops (exit code 3), leaving the checkpoint and its evaluation on disk.

Anything after ``--`` goes to ``train.grpo`` as command-line overrides of the recipe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from visionthink.clock import utcnow

log = logging.getLogger("train.retrain")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = ROOT / "train" / "recipes" / "lora-1gpu.yaml"


class RetrainError(RuntimeError):
    """A step of the loop that cannot go on; the message says why and what to do."""


def _rank(doc_id: str) -> int:
    return int(hashlib.sha256(doc_id.encode("utf-8")).hexdigest()[:8], 16)


def held_out(doc_id: str, fraction: float) -> bool:
    """Whether a row is kept for evaluation on its own: a stable function of its id (about ``fraction`` of ids)."""
    return _rank(doc_id) % 10_000 < fraction * 10_000


def held_out_ids(doc_ids: list[str], fraction: float) -> set[str]:
    """The rows kept for evaluation: ``round(fraction · n)`` of them, at least one and at most n - 1 when there
    are two or more, chosen by a hash of the id (reruns on the same rows split the same way; a new row moves at
    most one other)."""
    unique = sorted(set(doc_ids))
    if len(unique) < 2:
        return set()
    count = min(len(unique) - 1, max(1, round(fraction * len(unique))))
    return set(sorted(unique, key=lambda doc_id: (_rank(doc_id), doc_id))[:count])


def split_export(export_path: Path, out: Path, fraction: float) -> tuple[Path, Path, int]:
    """Save the training and evaluation rows of an export; returns their folders and the number held out (0 when
    the export has too few rows to hold any out: then both folders hold every row)."""
    import datasets

    rows = datasets.load_from_disk(str(export_path))
    chosen = held_out_ids(list(rows["doc_id"]), fraction)
    train = rows.select([i for i, doc_id in enumerate(rows["doc_id"]) if doc_id not in chosen])
    evaluation = rows.select([i for i, doc_id in enumerate(rows["doc_id"]) if doc_id in chosen])
    if not chosen:
        train = evaluation = rows
    train_path, eval_path = out / "train-data", out / "eval-data"
    train.save_to_disk(str(train_path))
    evaluation.save_to_disk(str(eval_path))
    return train_path, eval_path, len(evaluation) if chosen else 0


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def weights_changed(base: str, checkpoint: Path) -> bool | None:
    """Whether any tensor of ``checkpoint`` differs from the base model's; None when the base's weights are not
    on this machine as safetensors (a Hub id that is not cached, say), so no comparison could be made."""
    import torch
    from safetensors import safe_open

    base_folder = Path(base).expanduser()
    if not base_folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            base_folder = Path(snapshot_download(base, local_files_only=True, allow_patterns=["*.safetensors"]))
        except Exception:  # not cached, not a Hub id
            return None
    base_files, new_files = _weight_files(base_folder), _weight_files(checkpoint)
    if not base_files or not new_files:
        return None

    def tensors(files: list[Path]):
        for path in files:
            with safe_open(str(path), "pt") as handle:
                for name in handle.keys():
                    yield name, handle.get_tensor(name)

    base_tensors = dict(tensors(base_files))
    for name, tensor in tensors(new_files):
        old = base_tensors.get(name)
        if old is None or old.shape != tensor.shape or not torch.equal(old, tensor):
            return True
    return False


def evaluate_model(model: str, eval_path: Path, out: Path, modes: tuple[str, ...], judge, settings) -> dict:
    """Evaluate one model on the held-out rows; a fallback is never evaluated in its place."""
    from train.evaluate import evaluate, load_items
    from visionthink.loader import ModelLoadError, load_engine

    try:
        engine = load_engine(settings.override(model=model, fallback="none"))
    except ModelLoadError as exc:
        raise RetrainError(f"Could not load {model} to evaluate it: {exc}") from exc
    report = evaluate(engine, load_items(eval_path), modes=modes, judge=judge, out_dir=out, progress=False,
                      data={"source": str(eval_path)})
    return report.to_dict()


def run(args: RetrainArguments, grpo_overrides: list[str]) -> int:
    from store.api import Actor, Store
    from store.export import export
    from train import grpo
    from train.judge import make_judge
    from visionthink.settings import Settings

    settings = Settings.from_env()
    base = args.base or settings.model
    stamp = utcnow().strftime("%Y%m%d-%H%M%S")
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
        train_path, eval_path, held = split_export(exported.path, out, args.eval_fraction)
        separate = held > 0
        log.info("%d rows: training on %d, evaluating on %s.", exported.rows, exported.rows - held,
                 f"{held} held out" if separate else "the same rows (too few to hold any out)")

        log.info("2/4 GRPO from %s with %s …", base, args.recipe)
        checkpoint = out / "checkpoint"
        argv = ["--config", str(args.recipe), "--model_name_or_path", str(base), "--dataset", str(train_path),
                "--output_dir", str(checkpoint), "--judge", args.judge, *grpo_overrides]
        if grpo.main(argv) != 0:
            raise RetrainError("Training stopped (see the messages above); nothing was registered.")

        log.info("3/4 Evaluating the new checkpoint against %s …", base)
        judge = make_judge(args.judge, settings)
        modes = tuple(m.strip() for m in args.eval_modes.split(",") if m.strip())
        reports = {name: evaluate_model(model, eval_path, out / "eval" / name, modes, judge, settings)
                   for name, model in (("current", str(base)), ("new", str(checkpoint)))}
        comparison = compare_reports(reports, modes)
        (out / "comparison.json").write_text(json.dumps({"base": str(base), "checkpoint": str(checkpoint),
                                                         "held_out": separate, "held_out_rows": held,
                                                         "modes": comparison,
                                                         "by_kind": compare_by_kind(reports, modes)}, indent=2))
        print(comparison_table(comparison, base, checkpoint, separate, compare_by_kind(reports, modes)))

        refusal = registration_refusal(separate, weights_changed(str(base), checkpoint))
        if refusal:
            print(f"\nNot registered: {refusal} The checkpoint and its evaluation stay in {out}.")
            return EXIT_NOT_REGISTERED
        if args.no_register:
            log.info("4/4 Not registering the checkpoint (--no-register).")
        else:
            log.info("4/4 Registering %s as a model version …", checkpoint)
            store.register_model_version(Actor.system(), str(checkpoint), "", f"retrain:{stamp}",
                                         notes=json.dumps({"base": str(base), "rows": exported.rows,
                                                           "held_out": held, "comparison": comparison}))
        print(f"\nServe it: VISIONTHINK_MODEL={checkpoint} make run")
    finally:
        store.close()
    return 0


EXIT_NOT_REGISTERED = 3


def registration_refusal(held_out_rows: bool, changed: bool | None) -> str | None:
    """Why a checkpoint must not become a model version, or None when it may."""
    if not held_out_rows:
        return ("it was evaluated only on the rows it was trained on (too few judged answers to hold any out), so "
                "nothing says it is better. Annotate more answers and run the loop again.")
    if changed is False:
        return ("its weights are identical to the base model's: training changed nothing (a zero learning rate, "
                "or every group's rewards were equal, so no rollout had an advantage). Check the run's log and "
                "completions.jsonl.")
    if changed is None:
        log.warning("The base model's weights are not on this machine as safetensors; could not check that "
                    "training changed them.")
    return None


def compare_reports(reports: dict[str, dict], modes: tuple[str, ...]) -> dict:
    out = {}
    for mode in modes:
        rows = {name: report["modes"][mode] for name, report in reports.items()}
        out[mode] = {name: {key: row.get(key) for key in ("accuracy", "high_res_ratio", "retained_ratio", "judged")}
                     for name, row in rows.items()}
    return out


def compare_by_kind(reports: dict[str, dict], modes: tuple[str, ...]) -> dict:
    """Request ratio and accuracy per kind of question (the evaluation's groups), current against new."""
    out: dict = {}
    for name, report in reports.items():
        for kind, by_mode in (report.get("by_kind") or {}).items():
            for mode in modes:
                row = by_mode.get(mode)
                if row:
                    out.setdefault(mode, {}).setdefault(kind, {})[name] = {
                        key: row.get(key) for key in ("items", "accuracy", "high_res_ratio")}
    return out


def comparison_table(comparison: dict, base, checkpoint, held_out: bool, by_kind: dict | None = None) -> str:
    def pct(value):
        return "—" if value is None else f"{value:.1%}"

    lines = [f"Current: {base}", f"New:     {checkpoint}",
             "Evaluated on held-out rows." if held_out else "Evaluated on the training rows (too few to hold out).",
             "", f"{'mode':<6} {'model':<8} {'accuracy':>9} {'high-res':>9} {'tokens':>8} {'judged':>7}"]
    for mode, rows in comparison.items():
        for name, row in rows.items():
            lines.append(f"{mode:<6} {name:<8} {pct(row['accuracy']):>9} {pct(row['high_res_ratio']):>9} "
                         f"{pct(row['retained_ratio']):>8} {row['judged'] or 0:>7}")
    for mode, kinds in (by_kind or {}).items():
        lines += ["", f"By kind of question ({mode}):",
                  f"{'kind':<16} {'model':<8} {'items':>6} {'accuracy':>9} {'high-res':>9}"]
        for kind, rows in kinds.items():
            for name, row in rows.items():
                lines.append(f"{kind:<16} {name:<8} {row['items'] or 0:>6} {pct(row['accuracy']):>9} "
                             f"{pct(row['high_res_ratio']):>9}")
    return "\n".join(lines)


@dataclass
class RetrainArguments:
    """The command's arguments (``python -m train.retrain --help``); what follows ``--`` goes to ``train.grpo``."""

    recipe: Path = field(default=DEFAULT_RECIPE, metadata={"help": "GRPO recipe (the default: LoRA on one GPU)"})
    base: str | None = field(default=None, metadata={
        "help": "model to start from; None: VISIONTHINK_MODEL, the one being served"})
    db: str | None = field(default=None, metadata={"help": "database URL; None: VISIONTHINK_DB_URL"})
    out: str | None = field(default=None, metadata={"help": "run folder; None: runs/retrain/<time>"})
    judge: str = field(default="env", metadata={"help": "judge for training and eval",
                                                "choices": ["rule", "llm", "env"]})
    eval_fraction: float = field(default=0.1, metadata={"help": "share of rows held out for evaluation"})
    eval_modes: str = field(default="auto", metadata={"help": "modes to evaluate, e.g. auto,low,high"})
    min_rows: int = field(default=8, metadata={"help": "refuse to train on fewer judged answers"})
    no_register: bool = field(default=False, metadata={"help": "do not register the checkpoint in the store"})


def main(argv: list[str] | None = None) -> int:
    from visionthink.args import CommandParser, fail

    argv = list(sys.argv[1:] if argv is None else argv)
    grpo_overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = CommandParser(RetrainArguments, prog="python -m train.retrain", description=__doc__.splitlines()[0],
                           named_errors=False)
    (args,) = parser.parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.recipe.is_file():
        return fail(None, f"there is no recipe {args.recipe}.", 2)
    from store.db import StoreError
    from train.evaluate import EvalError
    from visionthink.settings import SettingsError

    try:
        return run(args, grpo_overrides)
    except (RetrainError, StoreError, SettingsError, EvalError) as exc:
        return fail(None, str(exc), 1)


if __name__ == "__main__":
    raise SystemExit(main())
