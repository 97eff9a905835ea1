"""The paper's Fig. 3a in miniature: GRPO from the same warm start and seed with each penalty variant.

    python -m train.miniature ablations [--out runs/miniature]     (make miniature-ablations)

Needs a finished ``python -m train.miniature build`` in ``--out`` (its start, splits and trained run). For each
variant (Eq. 5 as trained; no penalty; a penalty on every high-resolution answer; the released code's variant) it
reads the request ratio and the accuracy per kind over the steps from the run's ``completions.jsonl`` (sampled
rollouts, temperature 1), evaluates the final model greedily on the held-out split, and writes
``docs/miniature-ablations.png``, ``docs/miniature-ablations.json`` and the table in
``docs/miniature-ablations.md``.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

from visionthink.clock import utcnow

log = logging.getLogger("train.ablations")
ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
KINDS = ("colour", "shape", "pattern")
#: Variant name -> (label, train.grpo overrides). "paper" is the build's own run.
VARIANTS = {
    "paper": ("Eq. 5 (θ 0.2), as trained", []),
    "none": ("no penalty", ["--penalty_mode", "none"]),
    "always": ("penalty on every high-resolution answer", ["--penalty_mode", "always"]),
    "released": ("the released code's variant", ["--penalty_mode", "released"]),
}
WINDOW = 10


def curves(completions: Path, window: int = WINDOW) -> dict:
    """Per window of steps: the share of rollouts that got the full image and the share judged right, per kind."""
    bins: dict[int, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for line in completions.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("kind") and row.get("step") is not None:
            bins[row["step"] // window][row["kind"]].append(row)
    out = {"steps": [], **{f"{m}/{k}": [] for m in ("high_res_ratio", "accuracy") for k in KINDS}}
    for b in sorted(bins):
        out["steps"].append(b * window + window / 2)
        for kind in KINDS:
            rows = bins[b][kind]
            out[f"high_res_ratio/{kind}"].append(sum(r["requested_high_res"] for r in rows) / len(rows) if rows else None)
            judged = [r["correct"] for r in rows if r["correct"] is not None]
            out[f"accuracy/{kind}"].append(sum(judged) / len(judged) if judged else None)
    return out


def plot(results: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colours = {"colour": "#d62728", "shape": "#2ca02c", "pattern": "#1f77b4"}
    figure = Figure(figsize=(4 * len(results), 6.4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, len(results), sharex=True, sharey=True, squeeze=False)
    for column, (name, result) in enumerate(results.items()):
        curve = result["curves"]
        for row, metric in enumerate(("high_res_ratio", "accuracy")):
            ax = axes[row][column]
            for kind in KINDS:
                points = [(s, v) for s, v in zip(curve["steps"], curve[f"{metric}/{kind}"], strict=True) if v is not None]
                if points:
                    ax.plot(*zip(*points), color=colours[kind], label=kind, linewidth=1.6)
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(VARIANTS[name][0], fontsize=10)
            if column == 0:
                ax.set_ylabel("asks for the full image" if metric == "high_res_ratio" else "accuracy")
            if row == 1:
                ax.set_xlabel("GRPO step")
    axes[0][0].legend(loc="center right", fontsize=8)
    figure.suptitle("The miniature under GRPO from one warm start and seed: sampled rollouts, "
                    f"{WINDOW}-step windows, per kind of question")
    figure.savefig(path, format="png")


def table(results: dict) -> str:
    lines = ["| penalty | " + " | ".join(f"{k}: asks / right" for k in KINDS) + " | valid format |",
             "|---|" + "---:|" * (len(KINDS) + 1)]
    for name, result in results.items():
        final = result["final"]
        cells = [f"{final[k]['high_res_ratio'] * 100:.0f}% / {final[k]['accuracy'] * 100:.0f}%" for k in KINDS]
        formats = [final[k]["well_formed_ratio"] for k in KINDS]
        lines.append(f"| {VARIANTS[name][0]} | " + " | ".join(cells) + f" | {min(formats) * 100:.0f}% (worst kind) |")
    return "\n".join(lines)


def run(out: Path) -> int:
    from train.miniature import evaluate, machine, per_kind, run_grpo

    start, train_dir, test_dir = out / "start", out / "data" / "train", out / "data" / "test"
    if not (start / "model.safetensors").is_file() or not train_dir.is_dir():
        log.error("No finished build in %s: run `python -m train.miniature build --out %s` first.", out, out)
        return 2
    results = {}
    for name, (label, overrides) in VARIANTS.items():
        run_dir = out / "trained" if name == "paper" else out / "ablations" / name
        if name != "paper":
            log.info("GRPO with %s …", label)
            run_grpo(start, train_dir, run_dir, overrides=overrides)
        report = evaluate(run_dir, test_dir, out / "eval" / f"ablation-{name}", ("auto",))
        results[name] = {"label": label, "curves": curves(run_dir / "completions.jsonl"), "final": per_kind(report)}
    DOCS.mkdir(exist_ok=True)
    plot(results, DOCS / "miniature-ablations.png")
    document = {"written_at": utcnow().isoformat(timespec="seconds"), "machine": machine(),
                "results": results}
    (DOCS / "miniature-ablations.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    text = table(results)
    (DOCS / "miniature-ablations.md").write_text(
        "# Penalty ablations in miniature\n\n"
        f"Measured {document['written_at']} on {document['machine']} by `make miniature-ablations`. Each row is GRPO "
        "from the same warm start and seed, then a greedy evaluation of the final model on the held-out split "
        "(auto mode): the share of episodes that asked for the full image, and the share answered right.\n\n"
        f"{text}\n\n![Request ratio and accuracy per kind over the GRPO steps](miniature-ablations.png)\n",
        encoding="utf-8")
    print(text)
    return 0
