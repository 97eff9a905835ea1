"""Confidence intervals for the proportions we report (accuracy, request ratios), shared by the dashboard and the
evaluation report so both give the same interval for the same counts.
"""

from __future__ import annotations

from math import sqrt
from statistics import NormalDist


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """The Wilson score interval of ``successes`` out of ``n``; None when ``n`` is 0 (nothing to estimate).

    Unlike the normal approximation it stays inside [0, 1] and is not zero-width at 0/n or n/n, which is what
    small counts (a few dozen judged answers) need.
    """
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n ({n}), not {successes}.")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At 0/n and n/n one end is exactly 0 or 1; rounding would leave it a hair off.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high
