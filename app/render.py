"""Turns engine events into what the page shows: chat messages with collapsible thinking, the resolution badge
and the token report. Text from people and models is HTML-escaped here, so it always renders as text.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from visionthink.engine import Answer, Done, Event, HighResRequested, TextDelta, TurnFinished, TurnStarted

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
    """The chat shown for one episode, updated event by event."""

    question: str
    messages: list[dict] = field(default_factory=list)
    _raw: str = ""

    def __post_init__(self) -> None:
        self.messages.append({"role": "user", "content": text(self.question)})

    def apply(self, event: Event) -> None:
        if isinstance(event, TurnStarted):
            self._raw = ""
            seen = "the full-resolution image" if len(event.image_sizes) > 1 else "the image"
            if event.index == 0:
                seen = f"the image at {_size(event.image_sizes[0])}"
            else:
                seen = f"{len(event.image_sizes)} images ({', '.join(_size(s) for s in event.image_sizes)})"
            self.messages.append(
                {
                    "role": "assistant",
                    "content": "",
                    "metadata": {"title": f"Turn {event.index + 1} · thinking on {seen}", "status": "pending",
                                 "id": f"turn-{event.index}"},
                }
            )
        elif isinstance(event, TextDelta):
            self._raw += event.text
            self.messages[-1]["content"] = text(self._raw)
        elif isinstance(event, TurnFinished):
            turn = event.turn
            message = self.messages[-1]
            if turn.kind == "invalid":
                body = f"{text(turn.text)}\n\n**Invalid turn:** {text(turn.reason)}"
            else:
                body = text(turn.think)
                if turn.kind == "tool_call":
                    body += "\n\n*Called `resize_image` to see the full-resolution image.*"
            message["content"] = body or "*(no reasoning)*"
            message["metadata"] = {**message["metadata"], "status": "done", "duration": round(turn.latency_s, 2)}
        elif isinstance(event, HighResRequested):
            self.messages.append(
                {
                    "role": "assistant",
                    "content": f"The full-resolution image ({_size(event.size)}, {event.tokens} visual tokens) is "
                    "added to the conversation for the next turn.",
                    "metadata": {"title": f"🔍 {BADGE_HIGH}", "status": "done", "id": f"resize-{event.index}"},
                }
            )
        elif isinstance(event, Done):
            answer = event.answer
            if answer.answer is not None:
                content = text(answer.answer)
                if answer.boxed is not None:
                    content += f"\n\n**Final value:** {text(answer.boxed)}"
            else:
                reason = answer.turns[-1].reason or answer.stop_reason.replace("_", " ")
                content = f"*No answer ({answer.stop_reason.replace('_', ' ')}).* {text(reason)}"
            self.messages.append({"role": "assistant", "content": content})


def badge(answer: Answer) -> str:
    """The resolution decision as a coloured badge (HTML built from fixed strings only)."""
    if answer.mode != "auto":
        label, colour = BADGE_FORCED[answer.mode], "#6b7280"
    elif answer.requested_high_res:
        label, colour = BADGE_HIGH, "#b45309"
    else:
        label, colour = BADGE_LOW, "#15803d"
    return (
        f'<div id="vt-badge" class="vt-badge" style="display:inline-block;padding:6px 12px;border-radius:999px;'
        f'background:{colour};color:white;font-weight:600">{label}</div>'
    )


def token_report(answer: Answer) -> str:
    """Visual tokens used against a full-resolution pass, as numbers and two bars, plus latency."""
    t = answer.tokens
    scale = max(t.used, t.full_res, 1)
    used_pct, full_pct = 100 * t.used / scale, 100 * t.full_res / scale
    if t.saved >= 0:
        saved = f"saved <b>{t.saved}</b> ({t.saved / t.full_res:.0%})" if t.full_res else "saved 0"
    else:
        saved = f"<b>{-t.saved}</b> more than full resolution ({-t.saved / t.full_res:.0%} extra)"
    turns = ", ".join(f"turn {r.index + 1}: {r.latency_s:.2f} s, {r.generated_tokens} tokens" for r in answer.turns)
    colour = "#15803d" if t.saved >= 0 else "#b45309"
    return f"""<div id="vt-tokens" class="vt-tokens">
<div><b>{t.used}</b> visual tokens used vs <b>{t.full_res}</b> at full resolution
 (<b>{t.retained_ratio:.1%}</b> of a full-resolution pass) — {saved}</div>
<div style="margin:6px 0 2px">This answer: low-res {t.low_res} + high-res {t.high_res}</div>
<div style="background:#e5e7eb;border-radius:4px;height:14px"><div style="width:{used_pct:.1f}%;background:{colour};height:14px;border-radius:4px"></div></div>
<div style="margin:6px 0 2px">Single pass on the full image</div>
<div style="background:#e5e7eb;border-radius:4px;height:14px"><div style="width:{full_pct:.1f}%;background:#6b7280;height:14px;border-radius:4px"></div></div>
<div style="margin-top:6px">Latency {answer.latency_s:.2f} s ({turns})</div>
</div>"""
