"""How long ``train.judge.parse_verdict`` takes on pathological judge replies (thousands of unclosed prediction
markers, repeated verdicts, nested reasoning), at three sizes, so that the time per kB shows whether parsing stays
linear. Many unclosed markers once took a regex scan each to the end of the reply: 17 s for 288 kB.

    python -m bench.judge_parse_bench [--repeats 3]   # prints the section for BENCHMARKS.md
"""

from __future__ import annotations

import statistics
import sys

from bench import timing

SECTION = "## Parsing pathological judge replies (CPU)"
NONCE = "5eed5eed5eed5eed"
SCALES = (1, 2, 4)
BASE = 5_000  # a reply at scale 1 repeats its pattern 1 to 4 times this often


def replies(scale: int) -> dict[str, str]:
    from train.judge import close_marker, open_marker

    n = BASE * scale
    return {
        "unclosed markers": (open_marker(NONCE) + " x ") * n + "Score: 1",
        "unopened markers": (close_marker(NONCE) + " Score: 1 ") * n,
        "repeated verdicts": "Score: 1 " * (2 * n),
        "bold verdict labels": "**Score:** " * (2 * n) + "1",
        "nested reasoning": "<think>" * (2 * n) + "</think>" * (2 * n) + "Score: 0",
        "spaces before the digit": "Score:" + " " * (4 * n) + "1",
    }


def section(repeats: int, measured: str) -> str:
    from train.judge import parse_verdict

    by_scale = {scale: replies(scale) for scale in SCALES}
    lines = [
        SECTION, "",
        f"{measured} `parse_verdict(reply, nonce, prediction)`, median of {repeats} calls; linear parsing keeps the "
        f"time per kB about the same across a row. At ×1 a reply repeats its pattern {BASE:,} to {4 * BASE:,} times "
        "(20 to 240 kB).", "",
        "| Reply | " + " | ".join(f"×{scale} (ms; µs per kB)" for scale in SCALES) + " |",
        "|---|" + "---:|" * len(SCALES),
    ]
    for kind in by_scale[SCALES[0]]:
        row = []
        for scale in SCALES:
            reply = by_scale[scale][kind]
            ms = statistics.median(timing.timed(lambda: parse_verdict(reply, NONCE, "Score: 1 x"))[1]
                                   for _ in range(repeats))
            row.append(f"{ms:,.1f}; {ms * 1000 / (len(reply) / 1000):,.1f}")
        lines.append(f"| {kind} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(timing.main("bench.judge_parse_bench", __doc__, 3, section))
