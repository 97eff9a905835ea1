"""The model card of a built miniature: what it is, how it was trained, and what it measured (from ``figures``,
the dictionary ``train.miniature`` writes as ``figures.json``)."""

from __future__ import annotations

from visionthink.miniature import task

_KINDS = ("colour", "shape", "pattern")


def _pct(value) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def _kind_table(rows: dict, columns: tuple[tuple[str, str], ...]) -> list[str]:
    lines = ["| kind | " + " | ".join(title for title, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for kind in _KINDS:
        if kind in rows:
            lines.append(f"| {kind} | " + " | ".join(_pct(rows[kind].get(key)) for _, key in columns) + " |")
    return lines


def model_card(name: str, figures: dict) -> str:
    trained = name == "trained"
    title = "visionthink-miniature" if trained else "visionthink-miniature-start"
    params = figures["parameters"]
    premise = figures["premise"]
    tokens = figures["visual_token_probe"]
    recipe = figures["recipe"]
    lines = [
        "---",
        "license: apache-2.0",
        "library_name: transformers",
        "pipeline_tag: image-text-to-text",
        "tags: [visionthink, qwen2_5_vl, miniature, synthetic]",
        "---",
        "",
        f"# {title}",
        "",
        "A miniature of VisionThink (arXiv 2507.13348) trained on a synthetic shapes-and-textures task, **not a "
        "general model**: it answers questions about one coloured shape filled with a fine texture, and nothing "
        "else usefully." if trained else
        "The uninformed warm start of the VisionThink miniature, trained on a synthetic shapes-and-textures task, "
        "**not a general model**: it knows the protocol and reads what each image shows, but asks for the full "
        "image about half the time on every kind of question. It is the \"before\" of the feedback loop "
        "(`make demo-loop`); `visionthink-miniature` is what GRPO makes of it.",
        "",
        f"- Architecture: `Qwen2_5_VLForConditionalGeneration`, {params['total']:,} parameters "
        f"({params['vision']:,} in the vision tower), fp32, {figures['weights_bytes'] / 1e6:.1f} MB. It loads "
        "through the same `from_pretrained` path as `Senqiao/VisionThink-Efficient` and speaks its exact "
        "protocol (`visionthink/protocol.py`): system prompt with the `resize_image` tool, user template, "
        "tool-response and error turns.",
        "- Tokenizer: a byte-level BPE on the task's text with Qwen2.5's special tokens; each fixed text of the "
        "protocol (the system prompt, the user message's opening, the tool-response and error turns, the tags) "
        "is one token, so every turn boundary is a token boundary.",
        f"- Built {figures['written_at']} on {figures['machine']}, by `make miniature` (`python -m "
        f"train.miniature build`, seed {recipe['seed']}) in {figures['total_s'] / 60:.1f} minutes; peak memory "
        f"{figures['peak_rss_mib']:.0f} MiB.",
        "",
        "## The task",
        "",
        f"A {task.IMAGE_SIZE}×{task.IMAGE_SIZE} image: one large circle, square or triangle in red, green, blue or "
        "yellow on a light, noisy background, its interior filled with horizontal stripes, vertical stripes or a "
        "checkerboard of period 2 px (1 px dark, 1 px light), faded in inside the edge. At half width and height "
        "(the 1/4 image the model sees first) the shape and its colour stay and the texture is gone.",
        "",
        "Questions (canonical first; paraphrases are drawn too): \"What colour is the shape?\", \"What shape is "
        "it?\", \"What pattern fills the shape?\". Answers are single lower-case words.",
        "",
        f"The premise, measured by a CNN probe trained on {premise['train_items']} images and scored on "
        f"{premise['test_items']} others (chance: 25% colour, 33.3% shape and pattern):",
        "",
        "| kind | full image | 1/4 image |",
        "|---|---:|---:|",
        *[f"| {k} | {_pct(premise['full'][k])} | {_pct(premise['low'][k])} |" for k in _KINDS],
        "",
        "A linear probe on the model's own pooled visual tokens (held-out accuracy; mean token norm):",
        "",
        "| model | pattern, full | pattern, 1/4 | shape, 1/4 | colour, 1/4 | token norm |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {m} | {_pct(tokens[m]['full']['pattern'])} | {_pct(tokens[m]['low']['pattern'])} | "
          f"{_pct(tokens[m]['low']['shape'])} | {_pct(tokens[m]['low']['colour'])} | {tokens[m]['feature_norm']:.2f} |"
          for m in ("untrained", "start", "trained")],
        "",
        "## How it was trained",
        "",
        f"1. Supervised warm start (`train.sft`, the engine's own rendering): {recipe['pattern_steps']} steps of "
        f"pattern questions with the full image, {recipe['shape_steps']} of shape questions ("
        f"{recipe['shape_rehearsal']:.0%} of them pattern questions with the full image, so that the texture "
        "is not forgotten), then "
        f"{recipe['mixed_steps']} steps of uninformed transcripts of every kind (in auto mode half answer from "
        "the 1/4 image and half ask and answer after the full image, leaning on the shape's colour, which no "
        "question's need depends on: red and yellow shapes ask "
        f"{recipe['ask_share_warm']:.0%} of the time, green and blue ones {recipe['ask_share_cool']:.0%}; a "
        "direct answer to a pattern question is a uniform guess; a few see the full image from the start or are "
        f"refused it). Batch {recipe['batch_size']}, AdamW, learning rate {recipe['learning_rate']:g} "
        f"(vision tower {recipe['vision_learning_rate']:g}), {figures['sft']['seconds'] / 60:.1f} minutes.",
        f"2. GRPO with TRL (`python -m train.grpo --config train/recipes/miniature.yaml`): rule judge, 0.5 format "
        f"reward, penalty control (Eq. 5, θ 0.2), G 8, vision tower frozen; {figures['grpo']['steps']} steps, "
        f"{figures['grpo']['seconds_per_step']:.2f} s a step.",
        "",
        f"## What it measured (held-out items from a seed training never used, greedy, `train.evaluate`)",
        "",
    ]
    if trained:
        lines += ["The trained model, auto mode (VisionThink):", "",
                  *_kind_table(figures["trained"]["auto"], (("asks for the full image", "high_res_ratio"),
                                                            ("accuracy", "accuracy"),
                                                            ("valid format", "well_formed_ratio"))),
                  "", "Per mode (all kinds):", "", "| mode | accuracy | asks | visual tokens vs high | valid format |",
                  "|---|---:|---:|---:|---:|"]
        for mode, row in figures["trained_modes"].items():
            lines.append(f"| {mode} | {_pct(row['accuracy'])} | {_pct(row['high_res_ratio'])} | "
                         f"{_pct(row['retained_ratio'])} | {_pct(row['well_formed_ratio'])} |")
        lines.append("")
    lines += ["The warm start, auto mode, greedy and sampled (temperature 1):", "",
              *_kind_table({k: {"greedy": figures["start"]["greedy"][k]["high_res_ratio"],
                                "sampled": figures["start"]["sampled"][k]["high_res_ratio"],
                                "accuracy": figures["start"]["greedy"][k]["accuracy"]}
                            for k in figures["start"]["greedy"]},
                           (("asks, greedy", "greedy"), ("asks, sampled", "sampled"), ("accuracy, greedy", "accuracy"))),
              "", "Figures in `figures.json` beside this card.", ""]
    return "\n".join(lines)
