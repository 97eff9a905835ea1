"""``python -m visionthink ask``: ask one question about one image from the terminal.

Bad input (a missing or unreadable image, an empty question, a bad setting) ends with exit code 2 and one line on
stderr; the model is not loaded until the input has been checked.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from visionthink.engine import (
    COMPARE,
    MODE_LABELS,
    MODES,
    Answer,
    Done,
    HighResRequested,
    QuestionError,
    TextDelta,
    TurnFinished,
    TurnStarted,
    prepare_inputs,
)
from visionthink.images import ImageError
from visionthink.settings import Settings, SettingsError

EXIT_BAD_INPUT = 2
EXIT_MODEL = 1  # the model could not be loaded, or its server could not be reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m visionthink", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ask = commands.add_parser("ask", help="Ask a question about an image and show the VisionThink loop.")
    ask.add_argument("--image", required=True, help="Path of the image.")
    ask.add_argument("--question", required=True, help="The question about the image.")
    ask.add_argument("--model", help="Hub id or folder of the checkpoint (VISIONTHINK_MODEL); 'auto' asks the server.")
    ask.add_argument("--revision", help="Hub revision of the checkpoint (VISIONTHINK_REVISION).")
    ask.add_argument("--backend", choices=("transformers", "openai"), help="VISIONTHINK_BACKEND.")
    ask.add_argument("--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (VISIONTHINK_BASE_URL).")
    ask.add_argument("--device", help="auto, cpu, cuda or cuda:N (VISIONTHINK_DEVICE).")
    ask.add_argument("--mode", choices=(*MODES, COMPARE), default="auto",
                     help="auto (VisionThink), low (1/4 image), high (full image), or compare (all three in turn).")
    ask.add_argument("--max-new-tokens", type=int, help="Tokens per turn at most (VISIONTHINK_MAX_NEW_TOKENS).")
    ask.add_argument("--temperature", type=float, help="0 is greedy (VISIONTHINK_TEMPERATURE).")
    ask.add_argument("--json", action="store_true",
                     help="Print exactly one JSON object and nothing else on stdout (with \"fallback\": true when "
                          "the embedded miniature answered because the model could not be loaded).")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        settings = _settings(args)
        comparing = args.mode == COMPARE
        inputs = prepare_inputs(args.image, args.question, "auto" if comparing else args.mode, settings.input_limits)
    except (ImageError, QuestionError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from visionthink.backends import BackendError
    from visionthink.loader import ModelLoadError, load_engine

    try:
        engine = load_engine(settings, progress=lambda message: print(message, file=sys.stderr))
        if engine.notice:
            print(f"WARNING: {engine.notice}", file=sys.stderr)
        fallback = engine.notice is not None
        if args.json and comparing:
            answers = {mode: e.answer.to_json() for mode, e in engine.compare(inputs) if isinstance(e, Done)}
            print(json.dumps({"mode": COMPARE, "model": engine.model_id, "answers": answers, "fallback": fallback},
                             ensure_ascii=False))
        elif args.json:
            answer = next(e.answer for e in engine.run(inputs) if isinstance(e, Done))
            print(json.dumps({**answer.to_json(), "fallback": fallback}, ensure_ascii=False))
        elif comparing:
            answers = _print_stream(engine.compare(inputs))
            sys.stdout.write(comparison_table(answers))
        else:
            _print_stream(engine.run(inputs))
    except (ModelLoadError, BackendError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_MODEL
    return 0


def _settings(args: argparse.Namespace) -> Settings:
    return Settings.from_env().override(model=args.model, revision=args.revision, backend=args.backend,
                                        base_url=args.base_url, device=args.device,
                                        max_new_tokens=args.max_new_tokens, temperature=args.temperature)


def _print_stream(events) -> list[Answer]:
    """Print an episode's events as they come; ``events`` may also be ``(mode, event)`` pairs from a comparison,
    printed under a heading per mode. Returns the answers."""
    out = sys.stdout
    answers: list[Answer] = []
    current = None
    for event in events:
        if isinstance(event, tuple):
            mode, event = event
            if mode != current:
                current = mode
                out.write(f"\n════ {mode}: {MODE_LABELS[mode]} ════\n")
        if isinstance(event, TurnStarted):
            sizes = ", ".join(f"{w}x{h}" for w, h in event.image_sizes)
            out.write(f"\n── Turn {event.index + 1} (images in context: {sizes}) ──\n")
        elif isinstance(event, TextDelta):
            out.write(event.text)
        elif isinstance(event, TurnFinished):
            record, turn = event.record, event.record.turn
            out.write(f"\n[{turn.kind}; {record.generated_tokens} tokens in {record.latency_s:.2f} s]\n")
            if turn.kind == "invalid":
                out.write(f"Invalid turn: {turn.reason}\n")
        elif isinstance(event, HighResRequested):
            w, h = event.size
            out.write(f"→ Asked for the full-resolution image ({w}x{h}, {event.tokens} visual tokens)\n")
        elif isinstance(event, Done):
            answers.append(event.answer)
            out.write(summary(event.answer))
        out.flush()
    return answers


def comparison_table(answers: list[Answer]) -> str:
    """The modes side by side: decision, answer, visual tokens and latency, one row each."""
    rows = [("mode", "full image", "answer", "visual tokens", "latency")]
    for a in answers:
        final = a.final_answer if a.final_answer is not None else f"(no answer: {a.stop_reason.replace('_', ' ')})"
        if len(final) > 40:
            final = final[:39] + "…"
        full = {"auto": "asked" if a.requested_high_res else "not asked", "low": "never", "high": "always"}[a.mode]
        rows.append((a.mode, full, final, f"{a.tokens.used} of {a.tokens.full_res}", f"{a.latency_s:.2f} s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n── Comparison ──\n" + "\n".join(lines) + "\n"


def summary(answer: Answer) -> str:
    t = answer.tokens
    decision = (
        "Asked for the full-resolution image"
        if answer.requested_high_res
        else {"auto": "Answered from the 1/4-resolution image", "low": "1/4-resolution image only (forced)",
              "high": "Full-resolution image only (forced)"}[answer.mode]
    )
    final = answer.final_answer
    if final is None:
        final = f"(no answer: {answer.stop_reason.replace('_', ' ')})"
    return (
        f"\nModel: {answer.model}\n"
        f"Decision: {decision}\n"
        f"Answer: {final}\n"
        f"Visual tokens: {t.used} used vs {t.full_res} at full resolution "
        f"({t.retained_ratio:.1%}; saved {t.saved}); low-res {t.low_res}, high-res {t.high_res}\n"
        f"Latency: {answer.latency_s:.2f} s ("
        + ", ".join(f"turn {r.index + 1}: {r.latency_s:.2f} s" for r in answer.turns)
        + ")\n"
    )
