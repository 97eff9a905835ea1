"""The Admin tab in a real browser (Debian's chromium driven by playwright) against the whole app as served.

An admin opens the disagreements two annotators left, sees each item's images, turns and every rater's judgement,
finds the form pre-filled with the majority (empty where the raters tie), resolves one from its detail view and is
moved on to the next, then to "No disagreements to resolve"; the store holds the resolutions. An export that would
leave no rows asks before replacing the current one, whose files stay as they were until the admin confirms.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from store.api import Actor
from store.export import current_rows
from tests.app.conftest import serve_studio, sign_in
from tests.app.test_admin import ADA, ANN, CY, rate, record, store_at, tree
from tests.support.browser import chromium_page

pytestmark = pytest.mark.browser

#: Each step normally takes well under a second, and signing in until the page is filled 2-4 s; generous, because
#: the browser competes for CPU on shared machines (the first page load once took a minute there).
STEP_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def studio(tiny_model_dir, tmp_path_factory) -> Iterator[tuple[str, str, Path]]:
    """The whole app: (base URL, database URL, export folder)."""
    tmp = tmp_path_factory.mktemp("admin-browser")
    with serve_studio(tiny_model_dir, tmp) as url:
        yield url, f"sqlite:///{tmp / 'studio.db'}", tmp / "exports"


@contextmanager
def admin_page(url: str) -> Iterator[Page]:
    """A fresh chromium signed in to the studio as the admin, on the Admin tab."""
    with chromium_page(viewport=(1280, 1000), timeout_ms=STEP_TIMEOUT_MS) as page:
        page.goto(f"{url}/studio/")
        sign_in(page, "root")
        page.get_by_role("tab", name="Admin", exact=True).click()
        yield page


def reference_box(page: Page):
    return page.locator("#vt-resolve-reference").locator("textarea, input").first


def pick(page: Page, item: int) -> None:
    """Open an item from the list of disagreements."""
    page.locator("#vt-dispute-pick input").click()
    page.get_by_role("option", name=re.compile(rf"#{item} · ")).click()
    expect(page.locator("#vt-dispute-header")).to_contain_text(f"Item #{item} ")


def expect_form(page: Page, verdict: str | None, decision: str | None, reference: str) -> None:
    for name, chosen in (("verdict", verdict), ("decision", decision)):
        radios = page.locator(f"#vt-resolve-{name} input[type=radio]")
        expect(radios.first).to_be_visible()
        for value in radios.evaluate_all("inputs => inputs.map(i => i.value)"):
            radio = page.locator(f"#vt-resolve-{name} input[value={value}]")
            (expect(radio).to_be_checked if value == chosen else expect(radio).not_to_be_checked)()
    expect(reference_box(page)).to_have_value(reference)


def test_admin_resolves_disputes_from_their_detail_view(studio) -> None:
    url, db, _ = studio
    with store_at(db) as store:
        most = record(store, "Which quarter is lowest?", 21)
        rate(store, most, (ANN, "incorrect", "Q3", "needed_full"), (ADA, "incorrect", "q3.", "needed_full"),
             (CY, "correct", None, "low_enough"))
        tied = record(store, "What is the value of Beta?", 22)
        rate(store, tied, (ANN, "correct", "44.6", "needed_full"), (ADA, "incorrect", "12", "low_enough"))

    with admin_page(url) as page:
        # the first disagreement is open: both images, the model's turns and answer, every rater side by side
        header = page.locator("#vt-dispute-header")
        expect(header).to_contain_text(f"Item #{most} ")
        gallery = page.locator("#vt-dispute-images .gallery-item img")
        expect(gallery).to_have_count(2)
        expect(gallery.first).to_have_attribute("alt", "Seen first: 224×168")
        expect(gallery.last).to_have_attribute("alt", "Original: 448×336")
        chat = page.locator("#vt-dispute-chat")
        expect(chat.locator("[data-testid=user]")).to_have_text("Which quarter is lowest?")
        expect(chat.locator("[data-testid=bot]").last).to_contain_text("44.6")
        expect(chat).to_contain_text("Turn 1")
        votes = page.locator("#vt-dispute-votes")
        for row, (rater, verdict, reference) in enumerate((("ann", "incorrect", "Q3"), ("ada", "incorrect", "q3."),
                                                           ("cy", "correct", ""))):
            cells = votes.locator(f"[role=gridcell][data-row='{row}']")
            expect(cells.nth(0)).to_have_text(rater)
            expect(cells.nth(1)).to_have_text(verdict)
            expect(cells.nth(2)).to_have_text(reference)
        # pre-filled with the majority
        expect_form(page, "incorrect", "needed_full", "q3.")

        # the tied one, picked from the list: what the raters split on is left empty
        pick(page, tied)
        expect(chat.locator("[data-testid=user]")).to_have_text("What is the value of Beta?")
        expect(page.locator("#vt-resolve-prefill")).to_contain_text("left empty: the raters are tied")
        expect_form(page, None, None, "")

        # back to the first, and resolve it as the form suggests: the tied one opens next, its form refilled
        pick(page, most)
        expect_form(page, "incorrect", "needed_full", "q3.")
        page.locator("#vt-resolve").click()
        expect(page.locator("#vt-resolved")).to_have_text(
            f"Item #{most} is resolved (incorrect). Next: item #{tied}.")
        expect(header).to_contain_text(f"Item #{tied} ")
        expect_form(page, None, None, "")
        with store_at(db) as store:
            resolved = store.get_ask(Actor.system(), most).consensus
            assert (resolved.resolved, resolved.verdict, resolved.reference_answer, resolved.needs_high_res) == (
                True, "incorrect", "q3.", True)

        # resolve the last one by hand: the empty list says so in words
        page.locator("#vt-resolve-verdict input[value=correct]").check()
        reference_box(page).fill("44.6")
        page.locator("#vt-resolve").click()
        expect(page.locator("#vt-no-disputes")).to_have_text(
            f"Item #{tied} is resolved (correct). No disagreements to resolve.")
        expect(page.locator("#vt-dispute").first).to_be_hidden()
        with store_at(db) as store:
            assert store.disputed(Actor.system()) == []
            final = store.get_ask(Actor.system(), tied).consensus
            assert (final.verdict, final.reference_answer, final.needs_high_res) == ("correct", "44.6", None)


def test_an_empty_export_asks_before_replacing_the_current_one(studio) -> None:
    url, db, exports = studio
    with store_at(db) as store:
        rate(store, record(store, "How many bars are there?", 23),
             (ANN, "correct", "12", "low_enough"), (ADA, "correct", "12", "low_enough"))

    with admin_page(url) as page:
        page.locator("#vt-export").click()
        done = page.locator("#vt-export-done")
        expect(done).to_contain_text(re.compile(r"grpo \(\d+ rows?\)"))
        rows = current_rows(exports / "grpo")
        assert rows and rows >= 1
        expect(page.locator("#vt-export-counts")).to_contain_text(f"Rows{rows}")
        link, before = os.readlink(exports / "grpo"), tree(exports / "grpo")

        # nothing asked since the year 2999: the page asks, says why, and keeps the current export
        page.locator("#vt-export-since").locator("textarea, input").first.fill("2999-01-01")
        page.locator("#vt-export").click()
        plural = "row" if rows == 1 else "rows"
        expect(page.locator("#vt-export-ask")).to_contain_text(
            f"grpo: 0 rows would replace the current export of {rows} {plural}")
        expect(page.locator("#vt-export-reasons [data-reason=before_since]")).to_contain_text(
            "asked before the export's since-date")
        confirm = page.locator("#vt-export-confirm")
        expect(confirm).to_be_visible()
        expect(done).to_have_count(0)
        assert os.readlink(exports / "grpo") == link and tree(exports / "grpo") == before

        # only the confirmation replaces it
        confirm.click()
        expect(done).to_contain_text("grpo (0 rows)")
        expect(confirm).to_be_hidden()
        assert os.readlink(exports / "grpo") != link and current_rows(exports / "grpo") == 0
