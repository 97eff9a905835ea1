"""The studio (/studio, behind Gradio's login) in a real browser: Debian's chromium driven by playwright.

An annotator signs in through the login form, asks, rates the answer with 👍, judges it in the Annotate tab with
the keyboard shortcuts (F, then 1) and sees the rating counted on the Dashboard; the store confirms what the keys
did. HTML in a question, in a model answer and in a reference answer shows as text everywhere and never runs.
An admin sees the Admin tab, whose disagreements table shows such text inertly too.

Each server is module-scoped (the tiny forced model loads once per scenario); each test opens its own chromium.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Locator, Page, expect

from store.api import Actor, Store
from tests.app.conftest import serve_studio, sign_in
from tests.support.browser import chromium_page

pytestmark = pytest.mark.browser

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
XSS_TURNS = ["<think>t</think><answer>" + XSS + "</answer>"]
ANSWER = "The value is \\boxed{44.6}"  # the default forced answer (tests/support/forcing.py)
ANSWER_TIMEOUT_MS = 60_000  # a forced episode takes ~1-2 s on CPU; generous for slow CI machines

# Added before any page script runs: records every element that could carry the payload, even one inserted and
# removed again during streaming, so "never in the DOM" is checked over the page's whole life, not at one moment.
WATCH_INJECTIONS = """
window.__vtInjected = [];
new MutationObserver((records) => {
  for (const record of records) for (const node of record.addedNodes) {
    if (node.nodeType !== 1) continue;
    for (const el of [node, ...node.querySelectorAll("script, img")]) {
      if (el.tagName === "IMG" && el.getAttribute("src") === "x"
          || el.tagName === "SCRIPT" && (el.textContent || "").includes("__xss")) window.__vtInjected.push(el.outerHTML);
    }
  }
}).observe(document, {childList: true, subtree: true});
"""


@pytest.fixture(scope="module")
def studio(tiny_model_dir, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """The whole app, default forced turns (ask for the full image, then answer 44.6): (base URL, database URL)."""
    tmp = tmp_path_factory.mktemp("browser-studio")
    with serve_studio(tiny_model_dir, tmp) as url:
        yield url, f"sqlite:///{tmp / 'studio.db'}"


@pytest.fixture(scope="module")
def xss_studio(tiny_model_dir, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """The whole app with a model whose answer is the payload."""
    tmp = tmp_path_factory.mktemp("browser-studio-xss")
    with serve_studio(tiny_model_dir, tmp, turns=XSS_TURNS) as url:
        yield url, f"sqlite:///{tmp / 'studio.db'}"


@contextmanager
def signed_in(url: str, user: str) -> Iterator[Page]:
    """A fresh chromium signed in to the studio through Gradio's login form. Opened in the test body, so a missing
    chromium FAILS the test (with the `make system-test-deps` hint) rather than erroring in setup."""
    with chromium_page(viewport=(1280, 900)) as page:
        page.add_init_script(WATCH_INJECTIONS)
        page.goto(f"{url}/studio/")
        sign_in(page, user)
        yield page


def tab(page: Page, name: str) -> Locator:
    return page.get_by_role("tab", name=name, exact=True)


def ask(page: Page, image: Path, question: str) -> None:
    """Upload, type, allow training use (so the answer enters the annotation queue), ask, wait for the badge."""
    tab(page, "Ask").click()
    page.locator("#vt-image input[type=file]").set_input_files(str(image))
    # the upload is done once the component shows the server's copy of the file
    expect(page.locator("#vt-image .image-frame img")).to_have_attribute("src", re.compile("gradio_api/file="))
    page.locator("#vt-question textarea").fill(question)
    page.locator("#vt-consent input[type=checkbox]").check()
    page.locator("#ask-button").click()
    expect(page.locator("#vt-badge")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#vt-error")).to_have_count(0)


def open_annotate(page: Page) -> int:
    """Open the Annotate tab and return the number of the item it shows."""
    tab(page, "Annotate").click()
    header = page.locator("#vt-annotate-badge")
    expect(header).to_contain_text(re.compile(r"Item #\d+"))
    return int(re.search(r"Item #(\d+)", header.inner_text()).group(1))


def latest_row(page: Page, row: int = 0) -> dict[str, str]:
    """One row of the Dashboard's latest-ratings table, by column name (the newest rating is row 0)."""
    table = page.locator("#vt-dashboard-latest")
    heads = [h.strip() for h in table.locator("thead th").all_inner_texts()]
    cells = table.locator(f"[role=gridcell][data-row='{row}']").all_inner_texts()
    return dict(zip(heads, cells))


def assert_inert(page: Page) -> None:
    """The payload never became markup: nothing ran, no <img src=x> or payload <script> was ever in the DOM."""
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("img[src='x']").count() == 0
    assert page.evaluate("window.__vtInjected") == []


def annotations(db_url: str, item: int) -> list[tuple]:
    store = Store(db_url, upgrade=False)
    try:
        view = store.get_ask(Actor.system(), item)
    finally:
        store.close()
    return [(r.rater, r.verdict, r.decision, r.reference_answer) for r in view.ratings if r.source == "annotation"]


def ratings_count(db_url: str) -> int:
    store = Store(db_url, upgrade=False)
    try:
        return store.dashboard(Actor.system()).ratings
    finally:
        store.close()


def test_annotator_asks_rates_judges_with_the_keyboard_and_sees_the_dashboard(studio, chart: Path):
    url, db = studio
    with signed_in(url, "ann") as page:
        # 1. signed in: greeted by name and role; the annotator's tabs, not the admin's
        expect(page.locator("#vt-who")).to_have_text("Signed in as ann (annotator). · Sign out")
        for name in ("Ask", "Annotate", "Dashboard"):
            expect(tab(page, name)).to_be_visible()
        expect(tab(page, "Admin")).to_have_count(0)

        # 2. ask, then 👍 in the rating panel under the answer
        # Gradio 6.31 renders a Group's elem_id twice (an outer and an inner div): take the outer one
        panel = page.locator("#vt-rate-panel").first
        expect(panel).not_to_be_visible()
        ask(page, chart, "What is the value of Beta in Q3?")
        expect(page.locator("#vt-badge")).to_have_text("Asked for the full-resolution image")
        expect(page.locator("#vt-chat [data-testid=bot]").last).to_contain_text("44.6")
        expect(panel).to_be_visible()
        page.locator("#vt-thumbs-up").click()
        expect(page.locator("#vt-rate-saved")).to_have_text("Thank you: your rating is saved.")

        # 3. the Annotate tab shows the answer just stored (consent given), ready to judge
        item = open_annotate(page)
        progress = page.locator("#vt-progress")
        expect(progress).to_have_text("Item 1 of 1 · 0 done · 1 left")
        expect(page.locator("#vt-image-caption")).to_have_text("Original: 448×336")
        chat = page.locator("#vt-annotate-chat")
        expect(chat.locator("[data-testid=user]")).to_have_text("What is the value of Beta in Q3?")
        expect(chat.locator("[data-testid=bot]").last).to_contain_text("44.6")
        reference = page.locator("#vt-reference textarea")
        expect(reference).to_have_value(ANSWER)  # pre-filled with the model's answer
        needed_full = page.locator("#vt-decision input[value=needed_full]")
        expect(needed_full).not_to_be_checked()

        # keys typed into a text box are text, not shortcuts
        reference.click()
        page.keyboard.press("End")
        page.keyboard.type("1f")
        expect(reference).to_have_value(ANSWER + "1f")
        expect(needed_full).not_to_be_checked()
        page.wait_for_timeout(300)  # would be plenty for a (wrongly) submitted verdict to come back
        expect(page.locator("#vt-annotate-message")).to_be_empty()
        assert annotations(db, item) == []
        reference.fill(ANSWER)

        # outside a text box, F sets the decision and 1 submits "correct"
        progress.click()  # somewhere neutral: takes the focus out of the text box
        page.keyboard.press("f")
        expect(needed_full).to_be_checked()
        page.keyboard.press("1")
        expect(page.locator("#vt-annotate-message")).to_contain_text(f"Saved: #{item} is correct.")
        expect(progress).to_have_text("No item to do · 1 done · 0 left")
        assert annotations(db, item) == [("ann", "correct", "needed_full", ANSWER)]

        # 4. the Dashboard counts it after Refresh; annotators don't see who rated
        tab(page, "Dashboard").click()
        page.locator("#vt-dashboard-refresh").click()
        total = ratings_count(db)
        assert total >= 2  # the 👍 and the judgement
        expect(page.locator("#vt-dashboard-summary")).to_contain_text(re.compile(rf"\b{total} ratings on"))
        expect(page.locator("#vt-dashboard-latest [role=gridcell][data-row='0']").first).to_be_visible()
        newest, before = latest_row(page, 0), latest_row(page, 1)
        assert newest == {"time": newest["time"], "item": str(item), "source": "annotation", "verdict": "correct",
                          "decision": "needed_full", "reference": ANSWER, "rater": "—"}
        assert (before["item"], before["source"], before["verdict"]) == (str(item), "thumbs", "correct")


def test_html_in_questions_answers_and_references_stays_text(xss_studio, chart: Path):
    url, db = xss_studio
    with signed_in(url, "ann") as page:
        # Ask: the question and the streamed answer show the payload as text
        ask(page, chart, f"What is this? {XSS}")
        chat = page.locator("#vt-chat")
        expect(chat.locator("[data-testid=user]")).to_have_text(f"What is this? {XSS}")
        expect(chat.locator("[data-testid=bot]").last).to_have_text(XSS)
        assert chat.locator("[data-testid=bot] img, [data-testid=user] img").count() == 0
        assert_inert(page)

        # Annotate: the stored question and answer, and the reference box, show it as text too
        item = open_annotate(page)
        chat = page.locator("#vt-annotate-chat")
        expect(chat.locator("[data-testid=user]")).to_have_text(f"What is this? {XSS}")
        expect(chat.locator("[data-testid=bot]").last).to_have_text(XSS)
        reference = page.locator("#vt-reference textarea")
        expect(reference).to_have_value(XSS)
        reference.fill(f"fixed {XSS}")
        page.locator("#vt-verdict-incorrect").click()
        expect(page.locator("#vt-annotate-message")).to_contain_text(f"Saved: #{item} is incorrect.")
        assert annotations(db, item) == [("ann", "incorrect", None, f"fixed {XSS}")]
        assert_inert(page)

        # Dashboard: the reference in the latest ratings is text
        tab(page, "Dashboard").click()
        page.locator("#vt-dashboard-refresh").click()
        cell = page.locator("#vt-dashboard-latest [role=gridcell][data-row='0'][data-col='5']")
        expect(cell).to_have_text(f"fixed {XSS}")
        assert latest_row(page, 0)["item"] == str(item)
        assert_inert(page)


def test_admin_sees_the_admin_tab_and_disagreements_as_text(xss_studio, chart: Path):
    url, db = xss_studio
    with signed_in(url, "root") as page:
        expect(page.locator("#vt-who")).to_have_text("Signed in as root (admin). · Sign out")
        for name in ("Ask", "Annotate", "Dashboard", "Admin"):
            expect(tab(page, name)).to_be_visible()

        # a disputed item whose question and answer hold the payload
        ask(page, chart, f"Disputed? {XSS}")
        store = Store(db, upgrade=False)
        try:
            item = max(v.ask.id for v in store.rated_asks(Actor.system(), consented_only=False))
            store.rate(Actor("ann", "annotator"), item, verdict="correct", reference_answer="yes")
            store.rate(Actor("ada", "annotator"), item, verdict="incorrect", reference_answer=XSS)
        finally:
            store.close()
        page.reload()  # the disagreements table is filled when the page loads
        expect(page.locator("#vt-who")).to_have_text("Signed in as root (admin). · Sign out")
        tab(page, "Admin").click()
        disputes = page.locator("#vt-disputes")
        row = disputes.locator("[role=gridcell][data-row='0']")
        expect(row.first).to_have_text(str(item))
        expect(row.nth(1)).to_have_text(f"Disputed? {XSS}")
        expect(row.nth(2)).to_have_text(XSS)
        expect(row.nth(3)).to_contain_text(f"ada: incorrect / {XSS}")
        assert_inert(page)

        # admins see who rated on the Dashboard
        tab(page, "Dashboard").click()
        expect(page.locator("#vt-dashboard-annotators")).to_be_visible()
        assert latest_row(page, 0)["rater"] == "ada"
