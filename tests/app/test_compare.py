"""Compare over the app's API (gradio_client against the whole app as served): one upload, three modes, three
linked stored answers, and one rating for the set."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gradio_client import Client, handle_file

from store.api import Actor, Store
from tests.app.conftest import PASSWORDS, serve_studio


@pytest.fixture(scope="module")
def studio(tiny_model_dir, tmp_path_factory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("compare-studio")
    with serve_studio(tiny_model_dir, tmp) as url:
        yield url, f"sqlite:///{tmp / 'studio.db'}"


def stored(db: str):
    store = Store(db, upgrade=False)
    try:
        return list(store.rated_asks(Actor.system(), consented_only=False))
    finally:
        store.close()


def test_compare_runs_every_mode_and_stores_three_linked_answers(studio, chart):
    url, db = studio
    ann = Client(f"{url}/studio/", auth=("ann", PASSWORDS["ann"]), verbose=False)
    data, error, *_ = ann.predict(handle_file(str(chart)), "Which modes agree?", True, api_name="/compare")
    assert error == ""
    answers = data["answers"]
    assert list(answers) == ["auto", "low", "high"]
    # the forced model asks for the full image in every mode: only auto may give it
    assert [answers[m]["requested_high_res"] for m in answers] == [True, False, False]
    assert [answers[m]["tokens"]["used"] for m in answers] == [48 + 192, 48, 192]
    assert all(a["answer"] == "The value is \\boxed{44.6}" for a in answers.values())

    items = [i for i in stored(db) if i.ask.question == "Which modes agree?"]
    assert sorted(i.ask.mode for i in items) == ["auto", "high", "low"]
    assert {i.ask.comparison for i in items} == {data["comparison"]} and data["comparison"]
    assert {i.ask.id for i in items} == {a["stored_id"] for a in answers.values()}
    assert all(i.ask.consent for i in items)

    saved = ann.predict(["auto", "high"], "needed_full", "44.6", api_name="/rate_comparison")
    assert "your ratings are saved (right: VisionThink (auto), Full image only)" in saved
    votes = {i.ask.mode: [(v.source, v.verdict, v.decision, v.reference_answer) for v in i.votes]
             for i in stored(db) if i.ask.question == "Which modes agree?"}
    assert votes == {"auto": [("thumbs", "correct", "needed_full", "44.6")],
                     "low": [("thumbs", "incorrect", "needed_full", "44.6")],
                     "high": [("thumbs", "correct", "needed_full", "44.6")]}


def test_a_comparison_does_not_mix_with_single_answers(studio, chart):
    """Answers asked one at a time carry no comparison key; a second comparison gets its own."""
    url, db = studio
    ann = Client(f"{url}/studio/", auth=("ann", PASSWORDS["ann"]), verbose=False)
    ann.predict(handle_file(str(chart)), "Alone?", "low", False, api_name="/ask")
    first, *_ = ann.predict(handle_file(str(chart)), "Twice?", False, api_name="/compare")
    second, *_ = ann.predict(handle_file(str(chart)), "Twice?", False, api_name="/compare")
    assert first["comparison"] != second["comparison"]
    items = stored(db)
    assert [i.ask.comparison for i in items if i.ask.question == "Alone?"] == [None]
    keys = [i.ask.comparison for i in items if i.ask.question == "Twice?"]
    assert sorted(keys) == sorted([first["comparison"]] * 3 + [second["comparison"]] * 3)


def test_bad_input_to_compare_is_a_message(studio, tmp_path):
    url, _ = studio
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"not an image at all")
    public = Client(f"{url}/", verbose=False)
    data, error, *_ = public.predict(handle_file(str(fake)), "What?", False, api_name="/compare")
    assert "not an image" in error and "Traceback" not in error
    assert data is None


def test_rating_a_comparison_needs_one(studio):
    url, _ = studio
    ann = Client(f"{url}/studio/", auth=("ann", PASSWORDS["ann"]), verbose=False)
    refused = ann.predict(["auto"], None, "", api_name="/rate_comparison")
    assert "There is no stored comparison to rate; compare the modes first." in refused
