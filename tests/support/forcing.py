"""Test-only constrained decoding: make the tiny random model write a chosen turn, token by token.

Used to drive the engine down the tool-call path with a real model, real processor and real generate().
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


def forcing_factory(tokenizer, turns: list[str]):
    """A ``logits_processor_factory`` that makes turn ``i`` read ``turns[i]`` (the last entry repeats)."""
    end_id = tokenizer.convert_tokens_to_ids(protocol.IM_END)

    def factory(turn_index: int) -> list:
        text = turns[min(turn_index, len(turns) - 1)]
        return [ForceText(tokenizer.encode(text, add_special_tokens=False), end_id)]

    return factory
