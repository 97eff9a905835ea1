"""Draw docs/screenshot.png: the demo page after one full VisionThink episode, thinking sections opened; and
docs/compare.png: the same question compared in the three modes.

    python -m tests.app.screenshot docs/screenshot.png docs/compare.png     (what `make screenshot` runs)

Runs fully offline: the embedded miniature answers the pattern example by itself (nothing is scripted): it asks
for the full image, then reads the texture. A `.jpg`/`.jpeg` output is written as JPEG.
"""

from __future__ import annotations

import argparse
import logging
import re
import tempfile
import time
from pathlib import Path

from playwright.sync_api import Page, expect

from app.examples import ensure_examples
from tests.app.conftest import serve_page
from tests.support.browser import chromium_page

WIDTH = 1400
HEIGHT = 1000
ANSWER_TIMEOUT_MS = 120_000


def ask_and_open_thinking(page: Page, image: Path, question: str) -> None:
    page.locator("input[type=file]").first.set_input_files(str(image))
    expect(page.locator("[data-testid=image] .image-frame img")).to_have_attribute("src", re.compile("gradio_api/file="))
    page.get_by_label("Question").fill(question)
    page.locator("#ask-button").click()
    expect(page.locator("#vt-tokens")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#vt-seen .gallery-item img")).to_have_count(2)

    groups = page.locator("#vt-chat .thought-group")
    expect(groups).to_have_count(3)  # turn 1, the resize step, turn 2
    for i in range(groups.count()):
        group = groups.nth(i)
        body = group.locator(".content")
        if body.count() == 0 or not body.is_visible():
            group.locator(".title").click()
        expect(group.locator(".content")).to_be_visible()
    page.mouse.move(0, 0)  # no hover highlight in the picture


def settle(page: Page) -> None:
    """Make the viewport as tall as the page (so lazy images load) and wait for images and fonts."""
    height = page.evaluate("document.documentElement.scrollHeight")
    page.set_viewport_size({"width": WIDTH, "height": max(HEIGHT, height)})
    page.wait_for_function("Array.from(document.images).every(img => img.complete && img.naturalWidth > 0)")
    page.evaluate("document.fonts.ready")
    page.wait_for_timeout(500)  # the thinking sections' open animation


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="docs/screenshot.png", type=Path)
    parser.add_argument("compare_out", nargs="?", default="docs/compare.png", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from visionthink.loader import load_engine
    from visionthink.settings import Settings

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vt-screenshot-") as tmp:
        # The default checkpoint is not here (offline): the page runs the embedded miniature and says so.
        engine = load_engine(Settings(device="cpu"))
        examples = ensure_examples(Path(tmp) / "examples")
        fine = next(e for e in examples if e.name == "shape-pattern")
        with serve_page(engine, examples) as url, chromium_page(viewport=(WIDTH, HEIGHT)) as page:
            page.goto(url)
            expect(page.locator("#ask-button")).to_be_visible()
            ask_and_open_thinking(page, fine.path, fine.question)
            settle(page)
            save(page, args.out)
            page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
            page.locator("#vt-compare-button").click()
            expect(page.locator("#vt-compare-high-summary .vt-badge")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
            page.mouse.move(0, 0)
            settle(page)
            save(page, args.compare_out, clip="#vt-compare")
    for out in (args.out, args.compare_out):
        print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")
    print(f"in {time.monotonic() - started:.1f} s")


def save(page: Page, out: Path, clip: str | None = None) -> None:
    """The whole page (or the element ``clip`` names) as PNG, or JPEG for a .jpg/.jpeg name."""
    out.parent.mkdir(parents=True, exist_ok=True)
    jpeg = out.suffix.lower() in (".jpg", ".jpeg")
    options = {"type": "jpeg", "quality": 85} if jpeg else {"type": "png"}
    if clip is None:
        page.screenshot(path=str(out), full_page=True, **options)
    else:
        page.locator(clip).screenshot(path=str(out), **options)


if __name__ == "__main__":
    main()
