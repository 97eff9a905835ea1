"""The Dashboard in a real browser (Debian's chromium driven by playwright): with no answers each chart's place holds
the sentence that says why it is empty; once answers are judged the table shows accuracy with its interval and n,
the charts' titles and bars carry their n, and a request ratio of 0 is named under its chart.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from store.api import Actor, Store
from tests.app.conftest import serve_studio, sign_in
from tests.store.conftest import build_answer, sample_image
from tests.support.browser import chromium_page

pytestmark = pytest.mark.browser

ASKER = Actor.anonymous("asker")


def fill(db: str) -> None:
    """org/a: four auto answers, one asked for the full image, 3 of 4 judged correct by two annotators.
    org/b: two auto answers that never asked for the full image."""
    store = Store(db, upgrade=False)
    try:
        for seed, verdict in enumerate(["correct", "correct", "incorrect", "correct"]):
            ask = store.record(build_answer(model="org/a", requested_high_res=seed == 0), sample_image(seed), ASKER,
                               consent=True)
            for rater in ("ada", "ann"):
                store.rate(Actor(rater, "annotator"), ask, verdict=verdict)
        for seed in (10, 11):
            store.record(build_answer(model="org/b", requested_high_res=False), sample_image(seed), ASKER,
                         consent=True)
    finally:
        store.close()


def test_the_dashboard_explains_empty_charts_then_shows_n_and_intervals(tiny_model_dir, tmp_path) -> None:
    db = f"sqlite:///{tmp_path / 'studio.db'}"
    with serve_studio(tiny_model_dir, tmp_path, db_url=db) as url, chromium_page() as page:
        page.goto(f"{url}/studio/")
        sign_in(page, "ann")
        page.get_by_role("tab", name="Dashboard", exact=True).click()

        # no answers: every chart is replaced by the sentence saying why
        expect(page.locator("#vt-dashboard-accuracy-note")).to_contain_text(
            "No answers judged yet: accuracy appears once annotators have rated answers")
        expect(page.locator("#vt-dashboard-highres-note")).to_contain_text(
            "No answers yet: the request ratio appears once someone asks a question in auto mode")
        expect(page.locator("#vt-dashboard-saved-note")).to_contain_text("No answers stored yet")
        for chart in ("#vt-plot-accuracy", "#vt-plot-highres", "#vt-plot-saved"):
            expect(page.locator(chart)).to_be_hidden()

        fill(db)
        page.locator("#vt-dashboard-refresh").click()
        versions = page.locator("#vt-dashboard-versions")
        expect(versions.get_by_role("gridcell", name="0.75 (0.30–0.95), n=4", exact=True).first).to_be_visible()
        expect(versions.get_by_role("gridcell", name="0.00, n=2", exact=True).first).to_be_visible()
        expect(page.locator("#vt-dashboard-accuracy-note")).to_be_hidden()

        accuracy = page.locator("#vt-plot-accuracy")
        expect(accuracy).to_be_visible()
        expect(accuracy.locator("svg")).to_contain_text("Human-judged accuracy by version and mode (n = 4 judged")
        expect(accuracy.locator("svg")).to_contain_text("org/a · auto (n=4)")
        high_res = page.locator("#vt-plot-highres svg")
        expect(high_res).to_contain_text("(n = 6 auto answers)")
        expect(high_res).to_contain_text("org/b (n=2)")  # the ratio of 0 keeps its place on the axis
        expect(page.locator("#vt-dashboard-highres-note")).to_contain_text(
            "no auto-mode answer of org/b (n=2) asked for the full image")
        expect(page.locator("#vt-plot-saved svg")).to_contain_text("(n = 6 answers)")
