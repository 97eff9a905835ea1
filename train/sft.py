"""Supervised fine-tuning on whole VisionThink episodes, rendered exactly as the engine and GRPO render them.

An ``Example`` is a question, its image, the engine mode and the text of each model turn. ``encode`` rebuilds the
conversation the model sees before each turn with the engine's own rule (``engine.replay``: a valid call in
"auto" mode gets the tool response with the full image, a call the mode cannot honour gets the trained error
turn), renders it with ``protocol.Conversation.render`` and tokenises it with the checkpoint's processor, so the
tokens are the ones the engine feeds the model and TRL's tool loop concatenates. The loss covers the model's own
tokens (each turn and its ``<|im_end|>``); the system prompt, the user turn and every injected turn (text and image
pads) are masked out, as in GRPO.

``train`` is a plain PyTorch loop: AdamW with its own (lower) learning rate for the vision tower, warmup then
cosine decay, batches drawn by a callback so the data can change every epoch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image as PILImage

from visionthink import protocol
from visionthink.engine import replay
from visionthink.images import downsample, full_resolution

log = logging.getLogger("train.sft")

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One episode to imitate. ``image`` is the original; the mode decides what the model sees first."""

    question: str
    image: PILImage.Image
    mode: str  # auto | low | high, as in the engine
    turns: tuple[str, ...]  # the model's turns, without their end-of-turn token


def episode_text(example: Example) -> tuple[str, list[PILImage.Image]]:
    """The whole episode as the model sees and writes it, and its images in slot order."""
    records = [protocol.parse_turn(text) for text in example.turns]
    conversation = replay(example.question, example.mode, records)  # type: ignore[arg-type]
    if conversation is None:
        raise ValueError(f"These turns cannot follow each other in {example.mode!r} mode: {list(example.turns)}")
    full = full_resolution(example.image)
    images = [full if example.mode == "high" else downsample(example.image)]
    if conversation.image_count > 1:
        images.append(full)
    return conversation.render() + example.turns[-1] + protocol.IM_END, images


def model_token_mask(input_ids: Sequence[int], tokenizer) -> list[bool]:
    """True for the model's own tokens: from each generation prompt (``<|im_start|>assistant\\n``) to the next
    ``<|im_end|>``, that token included."""
    opening = tokenizer.encode(f"{protocol.IM_START}assistant\n", add_special_tokens=False)
    end = tokenizer.convert_tokens_to_ids(protocol.IM_END)
    mask = [False] * len(input_ids)
    i, n = 0, len(opening)
    while i <= len(input_ids) - n:
        if list(input_ids[i:i + n]) != opening:
            i += 1
            continue
        j = i + n
        while j < len(input_ids):
            mask[j] = True
            if input_ids[j] == end:
                break
            j += 1
        i = j + 1
    return mask


def encode(examples: Sequence[Example], processor):
    """A padded batch: the processor's outputs (ids, attention, ``mm_token_type_ids``, pixels, grids) and
    ``labels`` with everything but the model's own tokens set to -100."""
    import torch

    texts, images = zip(*(episode_text(e) for e in examples), strict=True)
    batch = processor(text=list(texts), images=[list(i) for i in images], padding=True, padding_side="right",
                      return_tensors="pt")
    labels = torch.full_like(batch["input_ids"], IGNORE)
    for row, ids in enumerate(batch["input_ids"].tolist()):
        mask = torch.tensor(model_token_mask(ids, processor.tokenizer)) & batch["attention_mask"][row].bool()
        labels[row][mask] = batch["input_ids"][row][mask]
    batch["labels"] = labels
    return batch


@dataclass
class SFTConfig:
    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 1e-3
    #: The vision tower's learning rate: a high one destroys the fine detail its features carry (a linear probe on a
    #: random-init tower's visual tokens read fine stripes at 0.99; after training it at 2e-3, at chance).
    vision_learning_rate: float = 1e-4
    warmup_steps: int = 50
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    log_every: int = 50


@dataclass
class SFTLog:
    """What the run measured: the loss per logged step, tokens trained on, and the wall time."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    model_tokens: int = 0
    seconds: float = 0.0


def train(model, processor, batches: Callable[[int], Sequence[Example]], config: SFTConfig,
          callback: Callable[[int, float], None] | None = None) -> SFTLog:
    """Train ``model`` in place for ``config.steps`` steps; ``batches(step)`` gives each step's examples and
    ``callback(step, loss)`` runs after every logged step (evaluations, checkpoints)."""
    import torch

    vision = [p for n, p in model.named_parameters() if ".visual." in f".{n}"]
    others = [p for n, p in model.named_parameters() if ".visual." not in f".{n}"]
    optimiser = torch.optim.AdamW(
        [{"params": others, "lr": config.learning_rate}, {"params": vision, "lr": config.vision_learning_rate}],
        weight_decay=config.weight_decay,
    )

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return config.final_lr_fraction + (1 - config.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
    record = SFTLog()
    started = time.perf_counter()
    model.train()
    running, counted = 0.0, 0
    for step in range(config.steps):
        batch = encode(batches(step), processor)
        loss = model(**batch).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimiser.step()
        schedule.step()
        running += loss.item()
        counted += 1
        record.model_tokens += int((batch["labels"] != IGNORE).sum())
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            mean = running / counted
            record.steps.append(step + 1)
            record.losses.append(mean)
            log.info("step %d/%d loss %.4f (%.1f s)", step + 1, config.steps, mean, time.perf_counter() - started)
            running, counted = 0.0, 0
            if callback is not None:
                model.eval()
                callback(step + 1, mean)
                model.train()
    model.eval()
    record.seconds = time.perf_counter() - started
    return record
