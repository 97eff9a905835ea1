"""A rollout read back from its tokens: the model's turns, parsed by the protocol, and what happened between them.

TRL hands reward functions the completion's token ids: the model's first turn, the injected tool or error turn
(masked out of the loss) and the model's second turn. Decoding those ids and splitting them at the turn markers
gives exactly the text the model wrote, which ``protocol.parse_turn`` then judges strictly.
"""

from __future__ import annotations

from dataclasses import dataclass

from visionthink import protocol

_ASSISTANT = f"{protocol.IM_START}assistant\n"


@dataclass(frozen=True)
class Episode:
    turns: list[protocol.Turn]
    #: What the environment answered after each non-final turn: "tool_response" (the full image) or "error".
    injected: list[str]
    truncated: bool  # the last turn never reached its end-of-turn token

    @property
    def requested_high_res(self) -> bool:
        """The model called ``resize_image`` correctly and got the full image."""
        return "tool_response" in self.injected

    @property
    def answer(self) -> str | None:
        last = self.turns[-1] if self.turns else None
        return last.answer if last is not None and last.kind == "answer" else None

    @property
    def well_formed(self) -> bool:
        """The format the checkpoints are rewarded for: a direct answer, or one valid call, the full image, then
        an answer (docs/rewards.md §3, with the project's stricter call rule)."""
        kinds = [t.kind for t in self.turns]
        if self.truncated:
            return False
        if kinds == ["answer"]:
            return not self.injected
        return kinds == ["tool_call", "answer"] and self.injected == ["tool_response"]


def split_turns(text: str) -> tuple[list[str], list[str], bool]:
    """Model turns (without end tokens), the kinds of the injected turns between them, and whether the last was cut."""
    turns: list[str] = []
    injected: list[str] = []
    rest = text
    while True:
        ends = [(i, stop) for stop in protocol.STOP_STRINGS if (i := rest.find(stop)) != -1]
        if not ends:
            turns.append(rest)
            return turns, injected, True
        end, stop = min(ends)
        turns.append(rest[:end])
        rest = rest[end + len(stop):]
        start = rest.find(_ASSISTANT)
        if start == -1:  # the episode ended after this turn
            return turns, injected, False
        between = rest[:start]
        injected.append("tool_response" if protocol.IMAGE_PAD in between else "error")
        rest = rest[start + len(_ASSISTANT):]


def read_episode(completion_ids: list[int], tokenizer) -> Episode:
    text = tokenizer.decode(completion_ids, skip_special_tokens=False)
    turns, injected, truncated = split_turns(text)
    return Episode([protocol.parse_turn(t) for t in turns], injected, truncated)
