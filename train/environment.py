"""The training environment: TRL's ``environment_factory`` gets one of these per rollout.

``reset`` keeps the row's full-resolution image; ``resize_image`` is the tool the model calls. Its result is the
trained tool response (text, the full image, the follow-up text), which the training chat template renders byte
for byte; a wrong action gets the trained error text, rendered as the error turn. TRL masks every token of the
tool turn (text and image pads) out of the loss.
"""

from __future__ import annotations

from PIL import Image as PILImage

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
    """One rollout's state: the full-resolution image and how often the tool was called."""

    def __init__(self) -> None:
        self.full_image: PILImage.Image | None = None
        self.calls = 0
        self.served_full_image = False

    def reset(self, **row) -> None:
        self.full_image = as_image(row["full_image"])
        self.calls = 0
        self.served_full_image = False
        return None

    def resize_image(self, action: str) -> list | str:
        """Resize the image resolution.

        Args:
            action: The action to perform. The only available action is `resize`: double the resolution of the
                current image. Only use it if the critical information cannot be read at the current resolution.

        Returns:
            The image at full resolution, between the tool-response texts.
        """
        self.calls += 1
        if action != protocol.TOOL_ACTION:
            return protocol.unknown_action_error(action)
        if self.calls > 1 or self.served_full_image:
            return protocol.ONE_CALL_ERROR
        self.served_full_image = True
        before, after = protocol.tool_response_parts()
        return [
            {"type": "text", "text": before},
            {"type": "image", "image": self.full_image},
            {"type": "text", "text": after},
        ]
