"""The Annotate tab in a real browser (Debian's chromium, 1280×900): the item and its verdict buttons fit one screen,
the image switches to the 1/4 image the model saw (enlarged to the original's size) and opens full screen, Back and
Undo work from the page, and the filters narrow the queue.

Each test gets its own server and SQLite store, filled through the store's API; the annotator works in the page, and
the store confirms what the page did.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import Locator, Page, expect
from sqlalchemy import select

from store.api import Actor, Store
from store.models import Rating
from tests.app.conftest import serve_studio, sign_in
from tests.support.browser import chromium_page
from tests.store.conftest import build_answer
from visionthink.images import downsample

pytestmark = pytest.mark.browser

VIEWPORT = (1280, 900)
ASKER = Actor.anonymous("visitor")
ANN = Actor("ann", "annotator")
OTHER_MODEL = "Senqiao/VisionThink-Efficient"
#: How long a page may take to answer: a round trip is well under a second, but CI machines can be busy.
WAIT_MS = 20_000


@pytest.fixture(autouse=True)
def patient_expectations() -> Iterator[None]:
    """``expect`` waits up to ``WAIT_MS`` in these tests (Playwright's default of 5 s is too short on a loaded
    2-core machine), and the default comes back afterwards."""
    expect.set_options(timeout=WAIT_MS)
    yield
    expect.set_options(timeout=5_000)  # Playwright's documented default


def receipt(lines: int = 28, size: tuple[int, int] = (1024, 768)) -> Image.Image:
    """Small black text on white: sharp in the original, blurred at 1/4 resolution."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for i in range(lines):
        draw.text((24, 20 + 24 * i), f"Line {i}: coffee 3.50  bagel 2.25  total {1.7 * i:.2f}", fill="black")
    return image


@pytest.fixture
def studio(tiny_model_dir, tmp_path) -> Iterator[tuple[str, Store]]:
    """The whole app with an empty store: (base URL, a Store on its database to fill and check)."""
    with serve_studio(tiny_model_dir, tmp_path) as url:
        store = Store(f"sqlite:///{tmp_path / 'studio.db'}", upgrade=False)
        try:
            yield url, store
        finally:
            store.close()


@contextmanager
def signed_in(url: str, user: str) -> Iterator[Page]:
    """A fresh chromium at 1280×900, signed in to the studio through Gradio's login form."""
    with chromium_page(viewport=VIEWPORT, timeout_ms=WAIT_MS) as page:
        page.goto(f"{url}/studio/")
        sign_in(page, user)
        yield page


def tab(page: Page, name: str) -> Locator:
    return page.get_by_role("tab", name=name, exact=True)


def record(store: Store, image: Image.Image, question: str, **answer) -> int:
    return store.record(build_answer(question, **answer), image, ASKER, consent=True)


def open_annotate(page: Page) -> int:
    """Open the Annotate tab; the number of the item it shows."""
    tab(page, "Annotate").click()
    return shown_item(page)


def shown_item(page: Page) -> int:
    header = page.locator("#vt-annotate-badge")
    expect(header).to_contain_text(re.compile(r"Item #\d+"))
    return int(re.search(r"Item #(\d+)", header.inner_text()).group(1))


def expect_item(page: Page, item: int) -> None:
    expect(page.locator("#vt-annotate-badge")).to_contain_text(f"Item #{item} ")


def inside_viewport(locator: Locator) -> bool:
    box = locator.bounding_box()
    return (box is not None and box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= VIEWPORT[0]
            and box["y"] + box["height"] <= VIEWPORT[1])


def shown_image(page: Page) -> tuple[Image.Image, dict]:
    """The image the page shows, as the server sent it, and its <img>'s natural and rendered sizes."""
    img = page.locator("#vt-annotate-image img").first
    expect(img).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    sizes = img.evaluate("img => ({natural: [img.naturalWidth, img.naturalHeight], "
                         "rendered: [img.getBoundingClientRect().width, img.getBoundingClientRect().height]})")
    response = page.request.get(img.get_attribute("src"))
    assert response.ok, response.status
    return Image.open(io.BytesIO(response.body())).convert("RGB"), sizes


def pick(page: Page, dropdown: str, option: str) -> None:
    page.locator(f"#{dropdown} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def my_verdicts(store: Store, item: int) -> list[str]:
    """Every annotation row ann wrote for ``item``, withdrawals included, oldest first."""
    with store.db.read() as s:
        return list(s.scalars(select(Rating.verdict).where(
            Rating.ask_id == item, Rating.rater == "ann", Rating.source == "annotation").order_by(Rating.id)))


def test_the_item_and_its_buttons_fit_one_screen(studio) -> None:
    url, store = studio
    first = record(store, receipt(), "What is the total on line 12?")
    record(store, receipt(20), "What does the bagel cost?")
    with signed_in(url, "ann") as page:
        assert page.viewport_size == {"width": VIEWPORT[0], "height": VIEWPORT[1]}
        assert open_annotate(page) == first
        expect(page.locator("#vt-progress")).to_have_text("Item 1 of 2 · 0 done · 2 left")
        needed = [page.locator(f"#{i}") for i in ("vt-verdict-correct", "vt-verdict-incorrect", "vt-verdict-unsure",
                                                     "vt-skip", "vt-back")]
        needed += [page.locator("#vt-reference textarea"), page.locator("#vt-decision"),
                   page.locator("#vt-annotate-image img").first, page.locator("#vt-annotate-chat")]
        assert page.evaluate("window.scrollY") == 0
        for locator in needed:
            assert inside_viewport(locator), (locator, locator.bounding_box())
        # Readable: the 1024×768 image is drawn at least 600 px wide, not as a gallery tile.
        _, sizes = shown_image(page)
        assert sizes["natural"] == [1024, 768] and sizes["rendered"][0] >= 600, sizes

        # After a verdict, with the "Saved" note above the next item, the buttons are still on screen.
        page.locator("#vt-verdict-correct").click()
        expect(page.locator("#vt-annotate-message")).to_contain_text(f"Saved: #{first} is correct.")
        expect(page.locator("#vt-progress")).to_have_text("Item 2 of 2 · 1 done · 1 left")
        assert page.evaluate("window.scrollY") == 0
        for locator in needed[:6]:
            assert inside_viewport(locator), (locator, locator.bounding_box())


def test_the_image_switches_to_what_the_model_saw_and_opens_full_screen(studio) -> None:
    url, store = studio
    original = receipt()
    record(store, original, "What is the total on line 12?")
    with signed_in(url, "ann") as page:
        open_annotate(page)
        caption = page.locator("#vt-image-caption")
        expect(caption).to_have_text("Original: 1024×768")
        sent, sizes = shown_image(page)
        assert sent.tobytes() == original.tobytes()

        page.get_by_label("As the model saw it first (1/4, enlarged)").check()
        expect(caption).to_have_text("1/4 image: 512×384, enlarged to 1024×768")
        seen, sizes = shown_image(page)
        assert sizes["natural"] == [1024, 768]  # the original's size, so the blur shows at the same scale
        assert seen.tobytes() != original.tobytes()
        assert seen.tobytes() == downsample(original).resize((1024, 768), Image.Resampling.NEAREST).tobytes()

        page.get_by_label("Original", exact=True).check()
        expect(caption).to_have_text("Original: 1024×768")
        assert shown_image(page)[0].tobytes() == original.tobytes()

        # A click on the image opens it full screen.
        before = page.locator("#vt-annotate-image img").first.bounding_box()
        page.locator("#vt-annotate-image img").first.click()
        expect(page.get_by_role("button", name="Exit fullscreen mode").or_(
            page.get_by_role("button", name="Exit fullscreen"))).to_be_visible()
        after = page.locator("#vt-annotate-image img").first.bounding_box()
        assert after["width"] > before["width"], (before, after)


def test_back_then_undo_from_the_page(studio) -> None:
    url, store = studio
    first = record(store, receipt(), "What is the total on line 12?")
    second = record(store, receipt(20), "What does the bagel cost?")
    with signed_in(url, "ann") as page:
        assert open_annotate(page) == first
        progress, message = page.locator("#vt-progress"), page.locator("#vt-annotate-message")
        reference = page.locator("#vt-reference textarea")
        reference.fill("20.40")
        progress.click()  # out of the text box, so keys are shortcuts
        page.keyboard.press("l")
        page.keyboard.press("2")
        expect(message).to_contain_text(f"Saved: #{first} is incorrect.")
        expect_item(page, second)

        # B goes back to the item just rated, filled in with the rating.
        page.keyboard.press("b")
        expect_item(page, first)
        expect(message).to_contain_text(f"Back to #{first}: you rated it incorrect.")
        expect(progress).to_have_text(f"Back to #{first} · 1 done · 1 left")
        expect(reference).to_have_value("20.40")
        expect(page.locator("#vt-decision input[value=low_enough]")).to_be_checked()

        # Rating it again replaces the rating: the latest counts.
        page.keyboard.press("u")
        page.keyboard.press("1")
        expect(message).to_contain_text(f"Saved: #{first} is correct. Your new rating replaces the earlier one.")
        expect_item(page, second)
        assert store.get_ask(ANN, first).consensus.raters == 1
        assert [(r.verdict, r.decision) for r in store.get_ask(ANN, first).ratings][-1] == ("correct", "unsure")

        # Back again, then Undo: a withdrawal is added and the item comes back to be rated afresh.
        page.locator("#vt-back").click()
        expect_item(page, first)
        expect(page.locator("#vt-decision input[value=unsure]")).to_be_checked()
        page.locator("#vt-undo").click()
        expect(message).to_contain_text(f"Undone: your rating of #{first} no longer counts, and the item is back in "
                                        "your queue.")
        expect_item(page, first)
        expect(progress).to_have_text("Item 1 of 2 · 0 done · 2 left")
        expect(reference).to_have_value("44.6")  # the model's answer again
        expect(page.locator("#vt-decision input[value=unsure]")).not_to_be_checked()
        assert my_verdicts(store, first) == ["incorrect", "correct", "withdrawn"]
        assert store.get_ask(ANN, first).ratings == [] and store.get_ask(ANN, first).consensus.raters == 0
        assert store.next_ask(ANN).id == first

        # Nothing is left to go back to; a new rating counts again.
        page.locator("#vt-back").click()
        expect(message).to_contain_text("There is no rating of yours yet to go back to.")
        page.locator("#vt-verdict-unsure").click()
        expect(message).to_contain_text(f"Saved: #{first} is unsure.")
        assert store.get_ask(ANN, first).consensus.raters == 1


def test_filters_narrow_the_queue(studio) -> None:
    url, store = studio
    full = record(store, receipt(), "What is the total on line 12?", mode="auto", requested_high_res=True)
    quarter = record(store, receipt(20), "Is this a receipt?", mode="auto", requested_high_res=False)
    low = record(store, receipt(10), "How many lines?", mode="low", requested_high_res=False, model=OTHER_MODEL)
    with signed_in(url, "ann") as page:
        assert open_annotate(page) == full
        progress, message = page.locator("#vt-progress"), page.locator("#vt-annotate-message")
        expect(progress).to_have_text("Item 1 of 3 · 0 done · 3 left")

        pick(page, "vt-filter-mode", "low: 1/4 image only")
        expect_item(page, low)
        expect(progress).to_have_text("Item 1 of 1 · 0 done · 1 left")

        pick(page, "vt-filter-asked", "Asked for the full image")
        expect(message).to_contain_text("No items match these filters. 3 items left in your queue without them")
        expect(page.locator("#vt-annotate-badge")).to_be_empty()

        pick(page, "vt-filter-mode", "Any mode")
        expect_item(page, full)
        expect(progress).to_have_text("Item 1 of 1 · 0 done · 1 left")

        pick(page, "vt-filter-asked", "Answered from the 1/4 image")
        expect_item(page, quarter)
        pick(page, "vt-filter-model", OTHER_MODEL)
        expect_item(page, low)
        # A verdict keeps to the filters: the next item is the next one that matches, here none.
        page.locator("#vt-verdict-correct").click()
        expect(message).to_contain_text(f"Saved: #{low} is correct.")
        expect(message).to_contain_text("No items match these filters. 2 items left in your queue without them")
        expect(progress).to_have_text("No item to do · 1 done · 0 left")
        assert my_verdicts(store, low) == ["correct"]
