"""The Dashboard tab reads on its own: every figure shows its n, accuracy carries its 95% Wilson interval, figures
are broken down by mode, a request ratio of 0 is a bar at 0, and a chart with nothing to draw says why.

``render`` runs on a store filled through its API, on SQLite and on PostgreSQL; one test drives the served
``/dashboard`` endpoint with gradio_client.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gradio_client import Client

from app.dashboard_tab import render, saved_histogram
from store.api import Actor, Store
from tests.app.conftest import PASSWORDS, serve_studio
from tests.store.conftest import build_answer, sample_image
from tests.support.postgres import fresh_database

ADMIN = Actor("root", "admin")
BOB = Actor("bob", "annotator")
CAROL = Actor("carol", "annotator")
ASKER = Actor.anonymous("asker")

# 3 of 4 correct, worked by hand (z = 1.959964): centre 0.627527 ± 0.326885 -> 0.30–0.95.
THREE_OF_FOUR = "0.75 (0.30–0.95), n=4"
# 2 of 3: centre (2/3 + z²/6) / (1 + z²/3) = 0.573138 ± 0.365367 -> 0.21–0.94.
TWO_OF_THREE = "0.67 (0.21–0.94), n=3"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:
    """An empty store where one annotation rating makes a verdict, on a SQLite file or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        opened = Store(f"sqlite:///{tmp_path / 'store.db'}", ratings_per_item=1)
        yield opened
        opened.close()
        return
    with fresh_database(request.getfixturevalue("postgres_url")) as url:
        opened = Store(url, ratings_per_item=1)
        yield opened
        opened.close()


def record(store: Store, seed: int, **answer) -> int:
    return store.record(build_answer(**answer), sample_image(seed), ASKER, consent=True)


def fill(store: Store) -> None:
    """org/a: three auto answers (one asked for the full image) and one low, all judged, 3 of 4 correct.
    org/b: two auto answers that never asked for the full image, not judged."""
    for seed, (mode, high, verdict) in enumerate([("auto", True, "correct"), ("auto", False, "correct"),
                                                  ("auto", False, "incorrect"), ("low", False, "correct")]):
        store.rate(BOB, record(store, seed, model="org/a", mode=mode, requested_high_res=high), verdict=verdict)
    for seed in (10, 11):
        record(store, seed, model="org/b", requested_high_res=False)


def test_every_figure_shows_its_n_and_accuracy_its_wilson_interval(store: Store) -> None:
    fill(store)
    view = render(store.dashboard(ADMIN))

    table = {(r["version"], r["mode"]): r for r in view.versions.to_dict("records")}
    # a row over all modes, then one per mode; org/b answered in auto mode only, so one row says it all
    assert list(table) == [("org/a", "all modes"), ("org/a", "auto"), ("org/a", "low"), ("org/b", "auto")]
    a, a_auto, a_low = table[("org/a", "all modes")], table[("org/a", "auto")], table[("org/a", "low")]
    assert a["accuracy (95% interval)"] == THREE_OF_FOUR
    assert a_auto["accuracy (95% interval)"] == TWO_OF_THREE
    assert a_low["accuracy (95% interval)"] == "1.00 (0.21–1.00), n=1"
    assert table[("org/b", "auto")]["accuracy (95% interval)"] == "—, n=0"
    # the ratio counts auto answers only: the low answer neither adds to n nor to the requests
    assert a["high-res ratio (auto answers)"] == a_auto["high-res ratio (auto answers)"] == "0.33, n=3"
    assert a_low["high-res ratio (auto answers)"] == "—"
    assert table[("org/b", "auto")]["high-res ratio (auto answers)"] == "0.00, n=2"
    # saved = full 256 - used (64, plus 256 when the full image was asked for): -64 once, 192 three times
    assert a["tokens saved"] == "512 total, 128.0 per answer, n=4"
    assert [a["answers"], a_auto["answers"], a_low["answers"]] == [4, 3, 1]

    assert view.accuracy_title == "Human-judged accuracy by version and mode (n = 4 judged answers)"
    assert view.accuracy.to_dict("records") == [
        {"version · mode": "org/a · auto (n=3)", "accuracy": pytest.approx(2 / 3), "mode": "auto", "judged": 3,
         "95% interval": "0.21–0.94"},
        {"version · mode": "org/a · low (n=1)", "accuracy": 1.0, "mode": "low", "judged": 1,
         "95% interval": "0.21–1.00"},
    ]
    assert view.accuracy_note == ""
    assert view.high_res_title == "High-resolution request ratio, auto mode (n = 5 auto answers)"
    assert view.saved_title == "Visual tokens saved per answer (n = 6 answers)"


def test_a_ratio_of_zero_is_a_bar_at_zero_and_the_note_names_it(store: Store) -> None:
    fill(store)
    view = render(store.dashboard(ADMIN))
    assert view.high_res.to_dict("records") == [
        {"version": "org/a (n=3)", "ratio": pytest.approx(1 / 3), "auto answers": 3, "asked for the full image": 1},
        {"version": "org/b (n=2)", "ratio": 0.0, "auto answers": 2, "asked for the full image": 0},
    ]
    assert view.high_res_note == ("A ratio of 0 draws a bar of no height: no auto-mode answer of org/b (n=2) asked "
                                  "for the full image.")


def test_the_tokens_saved_histogram_bins_with_numpy_and_keeps_empty_bins(store: Store) -> None:
    fill(store)
    board = store.dashboard(ADMIN)
    frame, bins = saved_histogram(board)
    # -64 .. 192 is 257 whole tokens: 12 bins of 22, the first "-64 to -43", the last "178 to 199"
    assert len(bins) == 12 and bins[0] == "-64 to -43" and bins[-1] == "178 to 199"
    counts = {(r["version"], r["saved"]): r["answers"] for r in frame.to_dict("records")}
    assert counts[("org/a (n=4)", "-64 to -43")] == 1 and counts[("org/a (n=4)", "178 to 199")] == 3
    assert counts[("org/b (n=2)", "178 to 199")] == 2 and counts[("org/b (n=2)", "-64 to -43")] == 0
    assert sum(counts.values()) == 6 and len(counts) == 2 * 12  # every bin of every version, empty ones as 0


def test_an_empty_store_explains_every_chart(store: Store) -> None:
    view = render(store.dashboard(ADMIN))
    assert view.versions.empty and view.accuracy.empty and view.high_res.empty and view.saved.empty
    assert "Nothing to show yet: the figures appear once someone asks a question" in view.summary
    assert view.accuracy_note == ("No answers judged yet: accuracy appears once annotators have rated answers and "
                                  "agree on a verdict.")
    assert view.high_res_note.startswith("No answers yet: the request ratio appears once someone asks a question in "
                                         "auto mode")
    assert view.saved_note.startswith("No answers stored yet: the tokens saved appear once someone asks")
    assert view.accuracy_title.endswith("(n = 0 judged answers)")


def test_answers_in_low_mode_only_explain_the_missing_ratio(store: Store) -> None:
    record(store, 0, model="org/a", mode="low", requested_high_res=False)
    view = render(store.dashboard(ADMIN))
    assert view.high_res.empty
    assert view.high_res_note.startswith("No auto-mode answers yet: only in auto mode does the model decide")
    assert view.saved_note == "" and view.versions["mode"].tolist() == ["low"]


def test_rated_but_not_agreed_says_so(store: Store) -> None:
    record(store, 0, model="org/a")
    ask = record(store, 1, model="org/a")
    store.rate(BOB, ask, verdict="unsure")  # rated, but "unsure" abstains: no verdict
    view = render(store.dashboard(ADMIN))
    assert view.accuracy.empty
    assert view.accuracy_note.startswith("No answers judged yet: 1 answer rated, but none has a verdict")


def test_the_served_dashboard_shows_the_notes_then_the_figures(tiny_model_dir, tmp_path) -> None:
    db = f"sqlite:///{tmp_path / 'studio.db'}"
    with serve_studio(tiny_model_dir, tmp_path, db_url=db) as url:
        ada = Client(f"{url}/studio/", auth=("ada", PASSWORDS["ada"]), verbose=False)
        summary, versions, accuracy, accuracy_note, high_res, high_res_note, saved, saved_note, *_rest = ada.predict(
            api_name="/dashboard")
        assert "Nothing to show yet" in summary and versions["data"] == []
        # an empty chart is hidden, and the note that replaces it is shown
        assert accuracy["visible"] is False and accuracy_note["visible"] is True
        assert accuracy_note["value"].startswith("No answers judged yet")
        assert high_res["visible"] is False and high_res_note["value"].startswith("No answers yet")
        assert saved["visible"] is False and saved_note["value"].startswith("No answers stored yet")

        store = Store(db, upgrade=False)  # the server's store needs two ratings per item
        try:
            for seed, verdict in enumerate(["correct", "correct", "incorrect", "correct"]):
                ask = record(store, seed, model="org/a", requested_high_res=seed == 0)
                store.rate(BOB, ask, verdict=verdict)
                store.rate(CAROL, ask, verdict=verdict)
        finally:
            store.close()
        summary, versions, accuracy, accuracy_note, high_res, high_res_note, *_rest = ada.predict(
            api_name="/dashboard")
    rows = [dict(zip(versions["headers"], row)) for row in versions["data"]]
    assert [(r["version"], r["mode"], r["accuracy (95% interval)"]) for r in rows] == [
        ("org/a", "auto", THREE_OF_FOUR)]
    assert accuracy["visible"] is True and accuracy["title"].endswith("(n = 4 judged answers)")
    assert accuracy["value"]["data"] == [["org/a · auto (n=4)", 0.75, "auto", 4, "0.30–0.95"]]
    assert high_res["visible"] is True and high_res["title"].endswith("(n = 4 auto answers)")
    assert high_res["value"]["data"] == [["org/a (n=4)", 0.25, 4, 1]]
    assert accuracy_note["visible"] is False and high_res_note["visible"] is False
