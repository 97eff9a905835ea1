"""The Wilson score interval against values computed by hand and published ones."""

from __future__ import annotations

from math import sqrt

import pytest

from visionthink.intervals import wilson_interval


def test_three_of_four_matches_the_formula_worked_by_hand() -> None:
    # p = 0.75, n = 4, z = 1.959964 (z² = 3.841459):
    # centre = (0.75 + 3.841459 / 8) / (1 + 3.841459 / 4) = 1.230182 / 1.960365 = 0.627527
    # half   = 1.959964 / 1.960365 * sqrt(0.75 * 0.25 / 4 + 3.841459 / 64) = 0.999795 * 0.326952 = 0.326885
    z = 1.959964
    centre = (0.75 + z * z / 8) / (1 + z * z / 4)
    half = z / (1 + z * z / 4) * sqrt(0.75 * 0.25 / 4 + z * z / 64)
    assert wilson_interval(3, 4) == pytest.approx((centre - half, centre + half), abs=1e-6)
    assert wilson_interval(3, 4) == pytest.approx((0.3006, 0.9544), abs=1e-4)


def test_the_ends_stay_inside_zero_and_one_and_are_not_zero_width() -> None:
    # 0 of n: the upper bound reduces to z² / (n + z²) = 3.841459 / 13.841459 = 0.2775 for n = 10.
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(1 - 0.2775, abs=1e-4)


def test_more_confidence_gives_a_wider_interval() -> None:
    narrow, wide = wilson_interval(25, 40, 0.90), wilson_interval(25, 40, 0.99)
    assert wide[0] < narrow[0] < 25 / 40 < narrow[1] < wide[1]


def test_nothing_counted_has_no_interval_and_impossible_counts_are_refused() -> None:
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError, match="between 0 and n"):
        wilson_interval(5, 4)
