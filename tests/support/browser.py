"""Debian's chromium driven by playwright (sync API) for the browser tests and the screenshot.

Playwright never downloads a browser here (no `playwright install`): it starts the system binary that
`make system-test-deps` installs. When that binary is missing, ``chromium_page`` raises an AssertionError that
says so, so a test using it fails instead of being skipped.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# The real binary; /usr/bin/chromium is a shell wrapper around it.
CHROMIUM = Path(os.environ.get("VISIONTHINK_CHROMIUM", "/usr/lib/chromium/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",  # needed as root (CI containers)
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def require_chromium() -> Path:
    """The chromium binary, or an AssertionError telling how to install it."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        raise AssertionError(
            f"Debian's chromium is missing ({CHROMIUM} not found). Run `make system-test-deps` to install it "
            "(never `playwright install`)."
        )
    return CHROMIUM


@contextmanager
def chromium_page(viewport: tuple[int, int] = (1280, 900), *, timeout_ms: float = 20_000) -> Iterator:
    """A fresh page in a headless chromium with its own throw-away profile; everything is closed afterwards."""
    binary = require_chromium()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="vt-chromium-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(binary),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]},
        )
        try:
            context.set_default_timeout(timeout_ms)
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()
