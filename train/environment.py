"""The training environment: TRL's ``environment_factory`` gets one of these per rollout.

``reset`` keeps the row's full-resolution image; ``resize_image`` is the tool. What follows a model turn is decided by
``visionthink.protocol`` exactly as serving decides it (``tool_calls_after``, which the trainer applies before TRL's
tool loop runs): a valid call gets the trained tool response (text, the full image, the follow-up text); a turn that
attempted a call but is invalid gets the trained error turn with ``protocol.call_error``'s message; anything else
ends the episode. The training chat template renders both byte for byte, and TRL masks every token of the injected
turn (text and image pads) out of the loss.
"""

from __future__ import annotations

from PIL import Image as PILImage

from train.episodes import read_episode
from visionthink import protocol


def as_image(value) -> PILImage.Image:
    """A PIL image from what a ``datasets`` row holds (a decoded image, or a dict with bytes or a path)."""
    if isinstance(value, PILImage.Image):
        return value
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        import io

        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        image = PILImage.open(source)
        image.load()
        return image.convert("RGB")
    raise TypeError(f"Expected an image, got {type(value).__name__}.")


class ResizeEnvironment:
    """One rollout's state: the full-resolution image, whether it was handed over, and the protocol's error for the
    model's turn when that turn's call is invalid (set by ``tool_calls_after``)."""

    def __init__(self) -> None:
        self.full_image: PILImage.Image | None = None
        self.served_full_image = False
        self.refusal: str | None = None

    def reset(self, **row) -> None:
        self.full_image = as_image(row["full_image"])
        self.served_full_image = False
        self.refusal = None
        return None

    def resize_image(self, action: str) -> list | str:
        """Resize the image resolution.

        Args:
            action: The action to perform. The only available action is `resize`: double the resolution of the
                current image. Only use it if the critical information cannot be read at the current resolution.

        Returns:
            The image at full resolution, between the tool-response texts.
        """
        # A text-only result is rendered as the error turn. The first two cases only arise without
        # ``tool_calls_after`` (TRL's own parsed calls), which the trainer always applies.
        if self.refusal is not None:
            return self.refusal
        if action != protocol.TOOL_ACTION:
            return protocol.unknown_action_error(action)
        if self.served_full_image:
            return protocol.ONE_CALL_ERROR
        self.served_full_image = True
        before, after = protocol.tool_response_parts()
        return [
            {"type": "text", "text": before},
            {"type": "image", "image": self.full_image},
            {"type": "text", "text": after},
        ]


def tool_calls_after(environment: ResizeEnvironment, completion_ids: list[int], tokenizer) -> list[dict] | None:
    """The tool calls TRL's loop runs after the model's first turn (``completion_ids``), decided by
    ``visionthink.protocol`` as the engine decides them (``engine.continue_conversation``):

    - a valid ``resize_image`` call: one call, which ``environment`` answers with the full image;
    - a turn that attempted a call but is invalid (``protocol.call_error``): one call, which ``environment``
      answers with that error, rendered as the trained error turn, never TRL's "Tool X not found." or silence;
    - no attempted call, or an invalid turn cut off at its token limit: none, so the episode ends.

    TRL's own parse (JSON inside ``<tool_call>``, possibly several calls, any name) is replaced, so a malformed call
    can neither end the episode silently nor reach the environment as something the protocol would refuse.
    """
    episode = read_episode(completion_ids, tokenizer)
    turn = episode.turns[0]
    if turn.kind == "tool_call":
        environment.refusal = None
    elif turn.attempted_tool_call and not episode.truncated:
        environment.refusal = protocol.call_error(turn)
    else:
        return None
    return [{"type": "function",
             "function": {"name": protocol.TOOL_NAME, "arguments": {"action": protocol.TOOL_ACTION}}}]
