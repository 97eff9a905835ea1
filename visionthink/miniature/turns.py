"""What the miniature writes: one sentence of reasoning, then its answer or the call for the full image.

The sentences are the miniature's own (the released checkpoints reason in free text); the format around them is
the protocol's (``protocol.answer_turn_text``, ``protocol.tool_call_turn_text``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from visionthink import protocol
from visionthink.miniature import task

#: Each turn's reasoning opens with the decision, taken right after the model has written what the question is
#: about: "The colour can be read from this image." (answer) or "The pattern needs the full image." (ask). The
#: kind's own word comes just before the decision, so GRPO can move the decision for one kind without dragging
#: the others along.
_CAN_READ = "The {kind} can be read from this image."
_NEEDS_FULL = "The {kind} needs the full image."

#: What the model says it sees; each kind's sentence starts differently, so learning one does not overwrite another.
_OBSERVATIONS = {
    "colour": "Its colour is {answer}.",
    "shape": "It is a {answer}.",
    "pattern": "Its texture is {answer}.",
}


def observation(kind: str, answer: str) -> str:
    return _OBSERVATIONS[kind].format(answer=answer)


def answer_turn(kind: str, answer: str) -> str:
    """A turn that answers: the question's kind can be read, what it sees, then the answer."""
    return protocol.answer_turn_text(f"{_CAN_READ.format(kind=kind)} {observation(kind, answer)}", answer)


def request_turn(kind: str) -> str:
    """A turn that asks for the full image."""
    return protocol.tool_call_turn_text(_NEEDS_FULL.format(kind=kind))


#: How an episode goes, and the engine mode it runs in: answer from the 1/4 image; ask, get the full image and
#: answer; see the full image from the start and answer; ask where the full image cannot be given (the trained
#: error turn follows) and answer from the 1/4 image.
PATHS = {"direct": "auto", "request": "auto", "high": "high", "refused": "low"}


@dataclass(frozen=True)
class Transcript:
    """One episode as the model should write it: the mode it runs in and the text of each model turn."""

    mode: str
    turns: tuple[str, ...]


def transcript(item: task.Item, path: str, rng: random.Random) -> Transcript:
    """The turns of ``item`` along ``path``. Where the model answers without having seen the full image, a fine
    question gets a uniform guess: the 1/4 image does not show the pattern."""
    seen_full = path in ("request", "high")
    legible = seen_full or item.kind in task.COARSE_KINDS
    answer = item.answer if legible else rng.choice(task.ANSWERS[item.kind])
    final = answer_turn(item.kind, answer)
    if path in ("direct", "high"):
        return Transcript(PATHS[path], (final,))
    if path in ("request", "refused"):
        return Transcript(PATHS[path], (request_turn(item.kind), final))
    raise ValueError(f"Unknown path {path!r}; choose one of {', '.join(PATHS)}.")
