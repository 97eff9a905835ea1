"""Test-only constrained decoding: make the tiny random model write a chosen turn, token by token.

Used to drive the engine down the tool-call path with a real model, real processor and the backend's real decoding
loop (or ``model.generate``: both call logits processors alike), and to count the steps decoding runs.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from visionthink import protocol

TOOL_TURN = "<think>The labels are too small to read at this size.</think>\n" + protocol.tool_call_text()
ANSWER_TURN = "<think>Now the labels are readable.</think>\n<answer>The value is \\boxed{44.6}</answer>"
BAD_TOOL_TURN = (
    '<think>Let me zoom.</think>\n<tool_call>\n{"name": "annotate_image", "arguments": {"action": "resize"}}\n'
    "</tool_call>"
)


class ForceText(LogitsProcessor):
    """Forces the generated continuation to be ``token_ids``, then the end-of-turn token."""

    def __init__(self, token_ids: list[int], end_id: int) -> None:
        self.token_ids = token_ids + [end_id]
        self.start: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        step = input_ids.shape[1] - self.start
        target = self.token_ids[min(step, len(self.token_ids) - 1)]
        forced = torch.full_like(scores, float("-inf"))
        forced[:, target] = 0.0
        return forced


class CountSteps(LogitsProcessor):
    """Changes nothing; appends to ``steps`` the sequence length at each generation step (one per new token)."""

    def __init__(self, steps: list[int]) -> None:
        self.steps = steps

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps.append(input_ids.shape[1])
        return scores


class Record(LogitsProcessor):
    """Keeps a copy of the scores of every step, unchanged."""

    def __init__(self, into: list) -> None:
        self.into = into

    def __call__(self, input_ids, scores):
        self.into.append(scores.detach().clone())
        return scores


def forcing_factory(tokenizer, turns: list[str]):
    """A ``logits_processor_factory`` that makes turn ``i`` read ``turns[i]`` (the last entry repeats)."""
    end_id = tokenizer.convert_tokens_to_ids(protocol.IM_END)

    def factory(turn_index: int) -> list:
        text = turns[min(turn_index, len(turns) - 1)]
        return [ForceText(tokenizer.encode(text, add_special_tokens=False), end_id)]

    return factory


class ForceEpisodes(LogitsProcessor):
    """For training tests: in a batch, row i writes ``first_turns[i % len(first_turns)]``; a row that already holds
    the full image (two images in context) writes ``after_tool``. Each turn ends with the end-of-turn token."""

    def __init__(self, tokenizer, first_turns: list[str], after_tool: str) -> None:
        self.end_id = tokenizer.convert_tokens_to_ids(protocol.IM_END)
        self.vision_start = tokenizer.convert_tokens_to_ids(protocol.VISION_START)
        self.first = [tokenizer.encode(t, add_special_tokens=False) + [self.end_id] for t in first_turns]
        self.after = tokenizer.encode(after_tool, add_special_tokens=False) + [self.end_id]
        self.start: int | None = None
        self.targets: list[list[int]] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None:
            self.start = input_ids.shape[1]
            self.targets = [
                self.after if int((row == self.vision_start).sum()) >= 2 else self.first[i % len(self.first)]
                for i, row in enumerate(input_ids)
            ]
        step = input_ids.shape[1] - self.start
        forced = torch.full_like(scores, float("-inf"))
        for row, target in enumerate(self.targets):
            forced[row, target[min(step, len(target) - 1)]] = 0.0
        return forced


def force_training_episodes(model, tokenizer, first_turns: list[str], after_tool: str = ANSWER_TURN):
    """Wrap ``model.generate`` (as TRL calls it) so every generation call is forced by a fresh ``ForceEpisodes``."""
    original = model.generate

    def generate(*args, **kwargs):
        processors = list(kwargs.pop("logits_processor", None) or [])
        processors.append(ForceEpisodes(tokenizer, first_turns, after_tool))
        return original(*args, logits_processor=processors, **kwargs)

    model.generate = generate
    return model
