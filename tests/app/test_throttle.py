"""The sign-in throttle's window, on a clock the test moves (the HTTP behaviour is in test_hardening.py)."""

from __future__ import annotations

import pytest

from app import throttle as throttle_module
from app.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_name_is_refused_until_its_oldest_failure_leaves_the_window():
    clock = Clock()
    t = LoginThrottle(max_per_user=3, max_per_client=100, window_s=900, clock=clock)
    for step in range(3):
        assert t.retry_after("ann", "1.2.3.4") is None
        t.failed("ann", "1.2.3.4")
        clock.now += 100
    # failures at 1000, 1100, 1200; now 1300: the oldest leaves the window at 1900
    assert t.retry_after("ann", "5.6.7.8") == pytest.approx(600)  # from any client
    assert t.retry_after("ada", "1.2.3.4") is None
    clock.now = 1900.5
    assert t.retry_after("ann", "1.2.3.4") is None  # two failures left in the window
    t.failed("ann", "1.2.3.4")
    assert t.retry_after("ann", "1.2.3.4") == pytest.approx(1100 + 900 - 1900.5)


def test_a_client_is_refused_whatever_name_it_tries_and_success_clears_only_the_name():
    clock = Clock()
    t = LoginThrottle(max_per_user=2, max_per_client=4, window_s=60, clock=clock)
    t.failed("ann", "9.9.9.9")
    t.succeeded("ann")
    t.failed("ann", "9.9.9.9")
    assert t.retry_after("ann", "1.1.1.1") is None  # the success wiped the name's first failure
    for name in ("x", "y"):
        t.failed(name, "9.9.9.9")
    assert t.retry_after("new-name", "9.9.9.9") == pytest.approx(60)
    assert t.retry_after("new-name", "1.1.1.1") is None


def test_memory_is_bounded_under_a_flood_of_names(monkeypatch):
    monkeypatch.setattr(throttle_module, "MAX_KEYS", 100)
    t = LoginThrottle(max_per_user=5, max_per_client=50, window_s=60, clock=Clock())
    for i in range(1000):
        t.failed(f"name-{i}", "9.9.9.9")
    assert len(t._failures) <= 100
    assert len(t._failures["user:name-999"]) == 1  # recent keys are kept, one failure each
    assert len(t._failures["client:9.9.9.9"]) == 50  # the flooding client is kept (used last), its limit's worth
    assert t.retry_after("anyone", "9.9.9.9") == pytest.approx(60)
