"""Turns answers into what the pages show: chat messages with collapsible thinking, the resolution badge and the
token report, for live episodes (engine events) and stored ones alike. Text from people and models is
HTML-escaped here, so it always renders as text.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass, field

from PIL import Image as PILImage

from visionthink.engine import Done, Event, HighResRequested, TextDelta, TurnFinished, TurnRecord, TurnStarted
from visionthink.images import TokenReport, downsample, full_res_size, full_resolution, low_res_size

BADGE_LOW = "Answered from the 1/4-resolution image"
BADGE_HIGH = "Asked for the full-resolution image"
BADGE_FORCED = {"low": "1/4-resolution image only (forced)", "high": "Full-resolution image only (forced)"}


def text(value: str | None) -> str:
    """User or model text made safe for a Markdown/HTML component: tags show as text and never run."""
    return html.escape(value or "", quote=False)


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


@dataclass
class Transcript:
    """The chat shown for one episode, built turn by turn."""

    question: str
    messages: list[dict] = field(default_factory=list)
    _raw: str = ""

    def __post_init__(self) -> None:
        self.messages.append({"role": "user", "content": text(self.question)})

    def apply(self, event: Event) -> None:
        if isinstance(event, TurnStarted):
            self.start_turn(event.index, event.image_sizes)
        elif isinstance(event, TextDelta):
            self._raw += event.text
            self.messages[-1]["content"] = text(self._raw)
        elif isinstance(event, TurnFinished):
            self.finish_turn(event.record)
        elif isinstance(event, HighResRequested):
            self.high_res(event.index, event.size, event.tokens)
        elif isinstance(event, Done):
            a = event.answer
            self.done(a.final_answer, a.boxed, a.stop_reason, a.turns[-1].turn.reason)

    def start_turn(self, index: int, image_sizes: tuple[tuple[int, int], ...]) -> None:
        self._raw = ""
        if index == 0:
            seen = f"the image at {_size(image_sizes[0])}"
        else:
            count = f"{len(image_sizes)} images" if len(image_sizes) > 1 else "1 image"
            seen = f"{count} ({', '.join(_size(s) for s in image_sizes)})"
        self.messages.append({
            "role": "assistant",
            "content": "",
            "metadata": {"title": f"Turn {index + 1} · thinking on {seen}", "status": "pending", "id": f"turn-{index}"},
        })

    def finish_turn(self, record: TurnRecord) -> None:
        message = self.messages[-1]
        turn = record.turn
        if turn.kind == "invalid":
            body = f"{text(turn.text)}\n\n**Invalid turn:** {text(turn.reason)}"
        else:
            body = text(turn.think)
            if turn.kind == "tool_call":
                body += "\n\n*Called `resize_image` to see the full-resolution image.*"
        message["content"] = body or "*(no reasoning)*"
        message["metadata"] = {**message["metadata"], "status": "done", "duration": round(record.latency_s, 2)}

    def high_res(self, index: int, size: tuple[int, int], tokens: int) -> None:
        self.messages.append({
            "role": "assistant",
            "content": f"The full-resolution image ({_size(size)}, {tokens} visual tokens) is added to the "
            "conversation for the next turn.",
            "metadata": {"title": f"🔍 {BADGE_HIGH}", "status": "done", "id": f"resize-{index}"},
        })

    def done(self, answer: str | None, boxed: str | None, stop_reason: str, reason: str | None) -> None:
        if answer is not None:
            content = text(answer)
            if boxed is not None:
                content += f"\n\n**Final value:** {text(boxed)}"
        else:
            why = stop_reason.replace("_", " ")
            content = f"*No answer ({why}).* {text(reason or why)}"
        self.messages.append({"role": "assistant", "content": content})


def stored_transcript(question: str, records: list[TurnRecord], *, mode: str, requested_high_res: bool,
                      answer: str | None, stop_reason: str, original_size: tuple[int, int],
                      high_res_tokens: int) -> list[dict]:
    """The chat of a stored answer, as it looked when it was asked."""
    transcript = Transcript(question)
    low, full = low_res_size(*original_size), full_res_size(*original_size)
    sizes: tuple[tuple[int, int], ...] = (full if mode == "high" else low,)
    for record in records:
        transcript.start_turn(record.index, sizes)
        transcript.finish_turn(record)
        kind = record.turn.kind
        if kind == "tool_call" and requested_high_res and len(sizes) == 1 and record.index < len(records) - 1:
            transcript.high_res(record.index, full, high_res_tokens)
            sizes = (*sizes, full)
    last = records[-1].turn if records else None
    transcript.done(answer, last.boxed if last and answer is not None else None, stop_reason, last.reason if last else None)
    return transcript.messages


def badge(mode: str, requested_high_res: bool) -> str:
    """The resolution decision as a coloured badge (HTML built from fixed strings only)."""
    if mode != "auto":
        label, colour = BADGE_FORCED[mode], "#6b7280"
    elif requested_high_res:
        label, colour = BADGE_HIGH, "#b45309"
    else:
        label, colour = BADGE_LOW, "#15803d"
    return (
        f'<div id="vt-badge" class="vt-badge" style="display:inline-block;padding:6px 12px;border-radius:999px;'
        f'background:{colour};color:white;font-weight:600">{label}</div>'
    )


def token_report(t: TokenReport, latency_s: float, turns: list[TurnRecord]) -> str:
    """Visual tokens used against a full-resolution pass, as numbers and two bars, plus latency."""
    scale = max(t.used, t.full_res, 1)
    used_pct, full_pct = 100 * t.used / scale, 100 * t.full_res / scale
    if t.saved >= 0:
        saved = f"saved <b>{t.saved}</b> ({t.saved / t.full_res:.0%})" if t.full_res else "saved 0"
    else:
        saved = f"<b>{-t.saved}</b> more than full resolution ({-t.saved / t.full_res:.0%} extra)"
    per_turn = ", ".join(f"turn {r.index + 1}: {r.latency_s:.2f} s, {r.generated_tokens} tokens" for r in turns)
    colour = "#15803d" if t.saved >= 0 else "#b45309"
    return f"""<div id="vt-tokens" class="vt-tokens">
<div><b>{t.used}</b> visual tokens used vs <b>{t.full_res}</b> at full resolution
 (<b>{t.retained_ratio:.1%}</b> of a full-resolution pass) — {saved}</div>
<div style="margin:6px 0 2px">This answer: low-res {t.low_res} + high-res {t.high_res}</div>
<div class="vt-bar-track"><div class="vt-bar" style="width:{used_pct:.1f}%;background:{colour}"></div></div>
<div style="margin:6px 0 2px">Single pass on the full image</div>
<div class="vt-bar-track"><div class="vt-bar" style="width:{full_pct:.1f}%;background:#6b7280"></div></div>
<div style="margin-top:6px">Latency {latency_s:.2f} s ({per_turn})</div>
</div>"""


def error_box(message: str) -> str:
    return f'<div class="vt-error" id="vt-error">{text(message)}</div>'


def note_box(message: str, elem_id: str = "vt-note") -> str:
    return f'<div class="vt-ok" id="{elem_id}">{text(message)}</div>'


def answer_line(answer: str | None, stop_reason: str) -> str:
    """A stored answer as one plain line for tables and lists: the answer, or why there is none. (A stored answer is
    None whenever the model's last turn was no valid ``<answer>``: cut off, malformed, or a call at the turn limit.)"""
    return answer if answer is not None else f"No answer ({stop_reason.replace('_', ' ')})"


def seen_gallery(first: PILImage.Image, original: PILImage.Image) -> list[tuple[PILImage.Image, str]]:
    """The image the model saw first and the original, captioned with their sizes, for a gallery."""
    return [(first, f"Seen first: {_size(first.size)}"), (original, f"Original: {_size(original.size)}")]


def seen_and_original(png: bytes, mode: str) -> list[tuple[PILImage.Image, str]]:
    """A stored answer's image as ``seen_gallery``: what the model saw first in ``mode`` (the 1/4 image, or the
    full image in "high"), then the original."""
    original = PILImage.open(io.BytesIO(png))
    original.load()
    return seen_gallery(full_resolution(original) if mode == "high" else downsample(original), original)
