"""The Ask tab's controls in a real browser (Debian's chromium through playwright), against the whole app as
`python app.py` serves it: Compare on one upload, Stop, Enter and Shift+Enter, Retry and Clear, the answer
scrolled into view on a phone, the way into and out of the studio, and dark mode.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from app.ask_tab import FALLBACK_SENTENCE
from store.api import Actor, Store
from tests.app.conftest import forced_engine, serve_studio, sign_in
from tests.support.browser import chromium_page
from tests.support.forcing import CountSteps
from visionthink.engine import GenerationSettings

pytestmark = pytest.mark.browser

ANSWER_TIMEOUT_MS = 60_000
OPERATOR_DETAIL = "Could not load Senqiao/VisionThink-Efficient: the hub is unreachable (operator detail)."
# About 1,500 forced tokens: long enough to be stopped halfway on any machine.
LONG_TURN = "<think>" + "step " * 1500 + "</think>\n<answer>\\boxed{1}</answer>"


@pytest.fixture(scope="module")
def studio(tiny_model_dir, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """The whole app; the forced model asks for the full image, then answers 44.6. Its engine carries a fallback
    notice, as when the miniature stands in for a checkpoint that could not be loaded."""
    tmp = tmp_path_factory.mktemp("browser-ask")
    engine = forced_engine(tiny_model_dir)
    engine.notice = OPERATOR_DETAIL
    with serve_studio(tiny_model_dir, tmp, engine=engine) as url:
        yield url, f"sqlite:///{tmp / 'studio.db'}"


@pytest.fixture(scope="module")
def slow_studio(tiny_model_dir, tmp_path_factory) -> Iterator[tuple[str, list[int], int]]:
    """The whole app with a model whose first turn is about 1,500 tokens long. Yields its URL, the list its model
    appends to at every generation step, and the number of steps the whole turn takes."""
    tmp = tmp_path_factory.mktemp("browser-ask-slow")
    engine = forced_engine(tiny_model_dir, [LONG_TURN])
    engine.settings = GenerationSettings(max_new_tokens=4000)
    steps: list[int] = []
    forced = engine.backend.logits_processor_factory
    engine.backend.logits_processor_factory = lambda turn: [*forced(turn), CountSteps(steps)]
    whole_turn = len(engine.backend.processor.tokenizer.encode(LONG_TURN, add_special_tokens=False)) + 1  # + end
    with serve_studio(tiny_model_dir, tmp, engine=engine) as url:
        yield url, steps, whole_turn


@contextmanager
def open_page(url: str, viewport: tuple[int, int] = (1280, 900), *, user: str | None = None) -> Iterator[Page]:
    """A fresh chromium on ``url``; with ``user``, signed in through the studio's login form first."""
    with chromium_page(viewport=viewport) as page:
        page.goto(url)
        if user is not None:
            sign_in(page, user)
        expect(page.locator("#ask-button")).to_be_visible()
        yield page


def upload(page: Page, image: Path, question: str | None = None) -> None:
    page.locator("#vt-image input[type=file]").set_input_files(str(image))
    expect(page.locator("#vt-image .image-frame img")).to_have_attribute("src", re.compile("gradio_api/file="))
    if question is not None:
        page.locator("#vt-question textarea").fill(question)


def stored(db: str) -> list:
    store = Store(db, upgrade=False)
    try:
        return [i.ask for i in store.rated_asks(Actor.system(), consented_only=False)]
    finally:
        store.close()


def generating(steps: list[int], window_s: float = 0.5) -> bool:
    """Whether the model takes generation steps within ``window_s`` (it decodes on the page's worker thread)."""
    before = len(steps)
    time.sleep(window_s)
    return len(steps) > before


def test_compare_shows_three_columns_and_stores_three_linked_answers(studio, chart):
    url, db = studio
    with open_page(f"{url}/studio/", user="ann") as page:
        upload(page, chart, "How do the modes differ?")
        page.locator("#vt-compare-button").click()
        expect(page.locator("#vt-compare-save")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
        expected = {"auto": ("Asked for the full-resolution image", "240 visual tokens"),
                    "low": ("1/4-resolution image only (forced)", "48 visual tokens"),
                    "high": ("Full-resolution image only (forced)", "192 visual tokens")}
        boxes = {}
        for mode, (decision, cost) in expected.items():
            summary = page.locator(f"#vt-compare-{mode}-summary")
            expect(summary).to_contain_text(decision)
            expect(summary).to_contain_text(cost)
            expect(summary).to_contain_text("Answer: The value is")
            expect(page.locator(f"#vt-compare-{mode}-chat")).to_contain_text("Turn 1")
            boxes[mode] = page.locator(f"#vt-compare-{mode}").bounding_box()
        # three columns side by side (each overlaps the others' height), left to right in mode order
        assert boxes["auto"]["x"] < boxes["low"]["x"] < boxes["high"]["x"]
        for a, b in (("auto", "low"), ("low", "high")):
            assert boxes[a]["y"] < boxes[b]["y"] + boxes[b]["height"] and boxes[b]["y"] < boxes[a]["y"] + boxes[a]["height"]

        page.locator("#vt-compare-right").get_by_label("VisionThink (auto)").check()
        page.locator("#vt-compare-decision").get_by_label("It needed the full-resolution image").check()
        page.locator("#vt-compare-save").click()
        expect(page.locator("#vt-compare-saved")).to_contain_text("right: VisionThink (auto)")
    asks = [a for a in stored(db) if a.question == "How do the modes differ?"]
    assert sorted(a.mode for a in asks) == ["auto", "high", "low"]
    assert len({a.comparison for a in asks}) == 1 and asks[0].comparison
    store = Store(db, upgrade=False)
    try:
        verdicts = {i.ask.mode: [(v.verdict, v.decision) for v in i.votes]
                    for i in store.rated_asks(Actor.system(), consented_only=False)
                    if i.ask.question == "How do the modes differ?"}
    finally:
        store.close()
    assert verdicts == {"auto": [("correct", "needed_full")], "low": [("incorrect", "needed_full")],
                        "high": [("incorrect", "needed_full")]}


def test_stop_ends_the_generation_before_the_turn_is_written(slow_studio, chart):
    url, steps, whole_turn = slow_studio
    with open_page(f"{url}/") as page:
        upload(page, chart, "Will you stop?")
        page.locator("#ask-button").click()
        chat = page.locator("#vt-chat")
        expect(chat).to_contain_text("step step step", timeout=ANSWER_TIMEOUT_MS)
        # while it answers, neither Ask, Compare nor Enter in the question can start another
        expect(page.locator("#ask-button")).to_be_disabled()
        expect(page.locator("#vt-compare-button")).to_be_disabled()
        expect(page.locator("#vt-question textarea")).to_be_disabled()
        assert generating(steps)
        page.locator("#vt-stop").click()
        expect(page.locator("#ask-button")).to_be_enabled(timeout=ANSWER_TIMEOUT_MS)
        deadline = time.monotonic() + ANSWER_TIMEOUT_MS / 1000
        while generating(steps) and time.monotonic() < deadline:
            pass
        assert not generating(steps), "the model was still generating a minute after Stop"
        assert len(steps) < whole_turn, "the model wrote the whole turn: Stop did not stop it"
        expect(page.locator("#vt-stop")).to_be_hidden()
        expect(page.locator("#vt-question textarea")).to_be_enabled()
        expect(page.locator("#vt-tokens")).to_have_count(0)  # it never finished


def test_enter_asks_and_shift_enter_adds_a_line(studio, chart):
    url, db = studio
    with open_page(f"{url}/") as page:
        upload(page, chart)
        box = page.locator("#vt-question textarea")
        box.fill("First line")
        box.press("Shift+Enter")
        box.type("second line")
        assert box.input_value() == "First line\nsecond line"
        box.press("Enter")
        expect(page.locator("#vt-tokens")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
        expect(page.locator("#vt-chat [data-testid=user]").first).to_contain_text("second line")
    assert "First line\nsecond line" in [a.question for a in stored(db)]


def test_retry_asks_again_and_clear_starts_over(studio, chart):
    url, db = studio
    with open_page(f"{url}/") as page:
        expect(page.locator("#vt-retry")).to_be_disabled()
        upload(page, chart, "Once more?")
        page.locator("#ask-button").click()
        expect(page.locator("#vt-tokens")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
        expect(page.locator("#vt-retry")).to_be_enabled()
        page.locator("#vt-retry").click()
        deadline = time.monotonic() + ANSWER_TIMEOUT_MS / 1000
        while [a.question for a in stored(db)].count("Once more?") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [a.question for a in stored(db)].count("Once more?") == 2  # asked again, same image and question
        expect(page.locator("#ask-button")).to_be_enabled(timeout=ANSWER_TIMEOUT_MS)
        expect(page.locator("#vt-tokens")).to_be_visible()
        # a second question about the same upload, without uploading it again
        page.locator("#vt-question textarea").fill("And now?")
        page.locator("#ask-button").click()
        expect(page.locator("#vt-chat [data-testid=user]").first).to_contain_text("And now?",
                                                                                timeout=ANSWER_TIMEOUT_MS)
        expect(page.locator("#vt-tokens")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
        page.locator("#vt-clear").click()
        expect(page.locator("#vt-question textarea")).to_have_value("")
        expect(page.locator("#vt-tokens")).to_have_count(0)
        expect(page.locator("#vt-chat [data-testid=user]")).to_have_count(0)
        expect(page.locator("#vt-image .image-frame img")).to_have_count(0)
        expect(page.locator("#vt-retry")).to_be_disabled()
    assert "And now?" in [a.question for a in stored(db)]


def test_on_a_phone_the_answer_scrolls_into_view(studio, chart):
    url, _ = studio
    with open_page(f"{url}/", viewport=(390, 844)) as page:
        upload(page, chart, "Where is the answer?")
        page.evaluate("window.scrollTo(0, 0)")
        assert page.locator("#vt-chat").bounding_box()["y"] > 844  # below the fold before asking
        page.locator("#ask-button").click()
        expect(page.locator("#vt-tokens")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
        top = page.locator("#vt-result").bounding_box()["y"]
        assert -1 <= top < 844 / 2, f"the answer starts at y={top}, not in view"


def test_the_way_into_and_out_of_the_studio(studio):
    url, _ = studio
    with open_page(f"{url}/") as page:
        link = page.locator("#vt-studio-link")
        expect(link).to_have_text("sign in to the studio")
        expect(link).to_have_attribute("href", "/studio/")
        link.click()  # in the same tab
        expect(page.get_by_text("VisionThink Studio").first).to_be_visible()
        expect(page.get_by_text("Sign in to annotate answers")).to_be_visible()
        sign_in(page, "ada")
        page.locator("#vt-sign-out").click()
        expect(page.get_by_label("username")).to_be_visible()
        page.goto(f"{url}/studio/")
        expect(page.get_by_label("username")).to_be_visible()  # signed out for good, not just sent to a page


def test_visitors_read_one_sentence_and_admins_get_the_detail(studio):
    url, _ = studio
    with open_page(f"{url}/") as page:
        notice = page.locator("#vt-notice")
        expect(notice).to_have_text(f"⚠️ {FALLBACK_SENTENCE}")
        expect(page.locator("#vt-operator-detail")).to_have_count(0)
        expect(page.locator("#vt-status")).to_contain_text("Running a miniature demonstration model")
        expect(page.locator("body")).not_to_contain_text("hub is unreachable")
    with open_page(f"{url}/studio/", user="root") as page:
        detail = page.locator("#vt-operator-detail")
        expect(detail).to_be_visible()
        expect(detail.get_by_text(OPERATOR_DETAIL)).to_be_hidden()  # folded away
        detail.locator("summary").click()
        expect(detail.get_by_text(OPERATOR_DETAIL)).to_be_visible()


LUMINANCE_JS = """(el) => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  let node = el, bg = null;
  while (node && node.nodeType === 1) {
    const c = rgb(getComputedStyle(node).backgroundColor);
    if (c.length >= 3 && (c.length < 4 || c[3] > 0.5)) { bg = c; break; }
    node = node.parentElement;
  }
  const fg = rgb(getComputedStyle(el).color);
  const [hi, lo] = [lum(fg), lum(bg)].sort((a, b) => b - a);
  return {background: lum(bg), contrast: (hi + 0.05) / (lo + 0.05)};
}"""


def test_dark_mode_has_no_light_panels(studio, chart):
    url, _ = studio
    with open_page(f"{url}/?__theme=dark") as page:
        assert page.locator("gradio-app").evaluate(LUMINANCE_JS)["background"] < 0.1  # dark mode is on
        page.locator("#ask-button").click()  # no image: an error box
        expect(page.locator("#vt-error")).to_be_visible()
        error = page.locator("#vt-error").evaluate(LUMINANCE_JS)
        upload(page, chart, "Dark?")
        page.locator("#ask-button").click()
        expect(page.locator("#vt-tokens")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
        panels = {"error": error, "notice": page.locator("#vt-notice").evaluate(LUMINANCE_JS)}
        for i, track in enumerate(page.locator("#vt-tokens .vt-bar-track").all()):
            panels[f"token bar {i}"] = track.evaluate(LUMINANCE_JS)
        panels["token report"] = page.locator("#vt-tokens").evaluate(LUMINANCE_JS)
    assert len(panels) == 5
    for name, measured in panels.items():
        assert measured["background"] < 0.1, f"{name} has a light background in dark mode: {measured}"
    for name in ("error", "notice", "token report"):
        assert panels[name]["contrast"] >= 4.5, f"{name} text is hard to read in dark mode: {panels[name]}"
