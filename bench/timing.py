"""What the small timing benches share (``hub_check_bench``, ``sign_in_bench``, ``judge_parse_bench``): a command
line with ``--repeats`` that prints one section for BENCHMARKS.md, headed by when, where and under what load it ran.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone


def timed(call: Callable[[], object]) -> tuple[object, float]:
    """What ``call()`` returned, and the wall milliseconds it took."""
    started = time.perf_counter()
    result = call()
    return result, (time.perf_counter() - started) * 1000


def cells(ms: list[float]) -> str:
    """Two table cells: the median, and the least and most, of ``ms``."""
    return f"{statistics.median(ms):,.2f} | {min(ms):,.2f}–{max(ms):,.2f}"


def main(module: str, doc: str, default_repeats: int, section: Callable[[int, str], str],
         argv: list[str] | None = None) -> int:
    """Parse ``--repeats``, then print ``section(repeats, measured)``; ``measured`` is the sentence that says when
    and on what machine the run began, and the machine's load average then."""
    from bench.image_bench import machine

    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=default_repeats,
                        help=f"calls per case (default {default_repeats})")
    args = parser.parse_args(argv)
    measured = (f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC with `python -m {module}` on {machine()}. "
                f"Python {platform.python_version()}. The 1-minute load average before the run was "
                f"{os.getloadavg()[0]:.1f}.")
    sys.stdout.write(section(args.repeats, measured))
    return 0
