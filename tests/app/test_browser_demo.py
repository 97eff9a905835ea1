"""The demo page in a real browser (Debian's chromium through playwright): what a person sees and can click.

`forced_app` (tests/app/conftest.py) serves the page with the tiny random model forced to call `resize_image` and
then answer 44.6, so the whole two-turn loop runs with a real model, processor and decoding loop.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.support.browser import chromium_page

pytestmark = pytest.mark.browser

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
ANSWER_TIMEOUT_MS = 60_000  # the forced two-turn episode takes ~1-2 s on CPU; generous for slow CI machines


@contextmanager
def open_demo(url: str) -> Iterator[Page]:
    """The page in a fresh chromium. Opened in the test body, so a missing chromium FAILS the test (with the
    `make system-test-deps` hint) rather than erroring in setup or being skipped."""
    with chromium_page(viewport=(1280, 900)) as page:
        page.goto(url)
        expect(page.locator("#ask-button")).to_be_visible()
        yield page


def upload_and_ask(page: Page, image: Path, question: str) -> None:
    """Upload through the image component's file input, type the question and press Ask."""
    page.locator("input[type=file]").first.set_input_files(str(image))
    # the upload is done once the component shows the server's copy of the file
    preview = page.locator("[data-testid=image] .image-frame img")
    expect(preview).to_have_attribute("src", re.compile("gradio_api/file="))
    page.get_by_label("Question").fill(question)
    page.locator("#ask-button").click()


def test_ask_shows_the_whole_loop(forced_app, chart: Path):
    with open_demo(forced_app) as page:
        upload_and_ask(page, chart, "What is the value of Beta in Q3?")

        tokens = page.locator("#vt-tokens")
        expect(tokens).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
        expect(page.locator("#vt-badge")).to_have_text("Asked for the full-resolution image")
        expect(page.locator("#vt-error")).to_have_count(0)

        chat = page.locator("#vt-chat")
        turn1 = chat.get_by_role("button", name=re.compile(r"^Turn 1 · thinking on the image at 224×168"))
        resize = chat.get_by_role("button", name=re.compile("Asked for the full-resolution image"))
        turn2 = chat.get_by_role("button", name=re.compile(r"^Turn 2 · thinking on 2 images \(224×168, 448×336\)"))
        for section in (turn1, resize, turn2):
            expect(section).to_be_visible()

        # done thinking sections are collapsed; a click opens them and shows the reasoning
        reasoning1 = chat.get_by_text("The labels are too small to read at this size.")
        expect(reasoning1).not_to_be_visible()
        turn1.click()
        expect(reasoning1).to_be_visible()
        expect(chat.get_by_text("Called resize_image to see the full-resolution image.")).to_be_visible()
        resize.click()
        added = chat.get_by_text(re.compile(r"The full-resolution image \(448×336, 192 visual tokens\) is added"))
        expect(added).to_be_visible()
        turn2.click()
        expect(chat.get_by_text("Now the labels are readable.")).to_be_visible()

        final = chat.locator("[data-testid=bot]").last
        expect(final).to_contain_text("44.6")
        expect(final.locator(".thought-group")).to_have_count(0)  # the answer itself is not a thinking section

        gallery = page.locator("#vt-seen")
        expect(gallery.locator(".gallery-item img")).to_have_count(2)
        expect(gallery.locator(".gallery-item img").first).to_have_attribute("alt", "Seen first: 224×168")
        expect(gallery.locator(".gallery-item img").last).to_have_attribute("alt", "Original: 448×336")

        report = " ".join(tokens.inner_text().split())
        assert "240 visual tokens used vs 192 at full resolution (125.0% of a full-resolution pass)" in report
        assert "48 more than full resolution (25% extra)" in report
        assert "low-res 48 + high-res 192" in report
        assert re.search(r"Latency \d+\.\d\d s \(turn 1: .* turn 2: ", report)


def test_a_text_file_named_png_shows_a_message_not_a_traceback(forced_app, tmp_path: Path):
    with open_demo(forced_app) as page:
        fake = tmp_path / "notes.png"
        fake.write_text("hello, I am text, not a picture\n")
        upload_and_ask(page, fake, "What is it?")

        error = page.locator("#vt-error")
        expect(error).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
        expect(error).to_contain_text("not an image this app can read")
        expect(page.locator("#vt-badge")).to_have_count(0)
        expect(page.locator("#vt-tokens")).to_have_count(0)
        expect(page.locator("[data-testid=toast-body]")).to_have_count(0)  # no Gradio "Error" pop-up either
        body = page.locator("body").inner_text()
        for leak in ("Traceback", 'File "', "Exception", "PIL."):
            assert leak not in body, f"{leak!r} shown on the page:\n{body}"


def test_html_in_the_question_is_shown_as_text_and_never_runs(forced_app, chart: Path):
    with open_demo(forced_app) as page:
        upload_and_ask(page, chart, f"What is this? {XSS}")
        expect(page.locator("#vt-tokens")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)

        user = page.locator("#vt-chat [data-testid=user]")
        expect(user).to_have_count(1)
        expect(user).to_contain_text(f"What is this? {XSS}")
        expect(user.get_by_text("<script>window.__xss=1</script>", exact=False)).to_be_visible()
        assert user.locator("script, img").count() == 0
        assert page.locator("img[src=x]").count() == 0
        assert page.evaluate("typeof window.__xss") == "undefined"


def test_an_upload_above_the_size_limit_is_refused_with_a_message(forced_app, tmp_path: Path):
    """VISIONTHINK_MAX_UPLOAD_MB (20 MB by default): the page says why, and nothing reaches the server."""
    big = tmp_path / "huge.png"
    big.write_bytes(b"\0" * 21 * 1024 * 1024)
    with open_demo(forced_app) as page:
        page.locator("input[type=file]").first.set_input_files(str(big))
        expect(page.get_by_text('File(s) exceed the maximum allowed size of 20.0 Mb: "huge.png"')).to_be_visible()
        expect(page.locator("[data-testid=image] .image-frame img")).to_have_count(0)


def test_the_question_box_stops_at_the_length_limit(forced_app):
    with open_demo(forced_app) as page:
        box = page.get_by_label("Question")
        box.fill("x" * 2_500)
        assert len(box.input_value()) == 2_000
