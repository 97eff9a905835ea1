"""The miniature's architecture: a real ``Qwen2_5_VLForConditionalGeneration`` small enough to train on 2 CPU cores.

Its tokenizer is a byte-level BPE trained on the task's text, with Qwen2.5's special tokens and every fixed text
of the protocol (``protocol.fixed_texts``: the system prompt with the tool schema, the user message's opening, the
tool-response and error turns, the tags) as one added token each: the model reads and writes the exact trained
protocol, at a few dozen positions per episode instead of hundreds, and every turn boundary is a token boundary.
The folder is laid out like the Hub checkpoint and loads through the same ``from_pretrained`` path.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from visionthink import protocol, tiny
from visionthink.miniature import task, turns

MODEL_NAME = "visionthink-miniature"
#: The shipped checkpoints: the trained miniature (the embedded default) and its uninformed warm start (the
#: feedback loop's "before"). ``make miniature`` rebuilds both.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
TRAINED_DIR = WEIGHTS_DIR / MODEL_NAME
START_DIR = WEIGHTS_DIR / f"{MODEL_NAME}-start"
#: What a checkpoint folder holds (the model card and figures are written beside them).
CHECKPOINT_FILES = tiny.REQUIRED_FILES
BPE_VOCAB_SIZE = 1024
#: The largest image the miniature's processor takes before scaling down (512 visual tokens): uploads in the app
#: stay quick on a CPU; the task's 224 x 224 images are far below it.
MAX_PIXELS = 512 * 28 * 28

TEXT = {
    "vocab_size": 1088,
    "hidden_size": 192,
    "intermediate_size": 576,
    "num_hidden_layers": 3,
    "num_attention_heads": 3,
    "num_key_value_heads": 1,
    "max_window_layers": 3,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
}
VISION = {
    "depth": 3,
    "hidden_size": 96,
    "intermediate_size": 192,
    "num_heads": 3,
    "out_hidden_size": 192,
    "window_size": 112,
    "fullatt_block_indexes": [0, 1, 2],
}


def corpus() -> list[str]:
    """The text the BPE is trained on: the tiny model's general sentences, every miniature turn and question, and
    rendered conversations (for the role names and the turn layout)."""
    text = list(tiny._tokenizer_corpus())
    for kind, answers in task.ANSWERS.items():
        for answer in answers:
            # The answer alone too: after the <answer> token the word starts a text segment of its own.
            text.extend([turns.answer_turn(kind, answer), answer] * 300)
        text.extend(list(task.QUESTIONS[kind]) * 300)
        text.extend([turns.request_turn(kind)] * 300)
    rng = random.Random(0)
    for _ in range(200):
        item_kind = rng.choice(task.KINDS)
        conversation = protocol.Conversation.start(rng.choice(task.QUESTIONS[item_kind]))
        conversation.add_model_turn(turns.request_turn(item_kind))
        conversation.add_tool_response()
        text.append(conversation.render())
    return text


def build_untrained(folder: str | Path, *, seed: int = 0) -> Path:
    """Write the randomly initialised miniature into ``folder`` (created) and return it."""
    out = Path(folder).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny.build_tokenizer(corpus(), BPE_VOCAB_SIZE, protocol.fixed_texts())
    if len(tokenizer) > TEXT["vocab_size"]:
        raise RuntimeError(f"The miniature's tokenizer has {len(tokenizer)} tokens; raise TEXT['vocab_size'].")
    config = tiny.build_config(tokenizer, TEXT, VISION)
    model = tiny.new_model(config, tokenizer, seed)
    tiny.write_folder(out, model, tokenizer, tiny.build_image_processor(MAX_PIXELS), name_or_path=out)
    return out


def save(model, processor, folder: str | Path, *, name_or_path: str | Path | None = None) -> Path:
    """Save a trained miniature in the Hub layout (with the stock chat template), like the untrained one; its
    config names ``name_or_path`` (default: the folder itself)."""
    out = Path(folder).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    tiny.write_folder(out, model, processor.tokenizer, processor.image_processor, name_or_path=name_or_path or out)
    return out


def parameter_count(folder: str | Path) -> dict[str, int]:
    """Parameters of a saved miniature, in all and in the vision tower."""
    from safetensors import safe_open

    counts = {"total": 0, "vision": 0}
    with safe_open(str(Path(folder) / "model.safetensors"), "pt") as weights:
        for name in weights.keys():
            n = weights.get_slice(name).get_shape()
            size = 1
            for d in n:
                size *= d
            counts["total"] += size
            if ".visual." in f".{name}" or name.startswith("visual") or "model.visual" in name:
                counts["vision"] += size
    return counts


def describe(folder: str | Path) -> str:
    config = json.loads((Path(folder) / "config.json").read_text())
    counts = parameter_count(folder)
    return f"{counts['total']:,} parameters ({counts['vision']:,} in the vision tower), vocab {config['text_config']['vocab_size']}"
