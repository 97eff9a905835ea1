"""The Admin tab driven with gradio_client against the whole app as served (real HTTP, real SQLite): a disagreement
opens with its images, turns and every rater's judgement, the form pre-filled with the majority (empty where the
raters tie), and resolving it moves on to the next one; an export says what it holds and why answers were left out,
asks before an empty export replaces a good one, and comes in all formats at once. The majority rule is checked on
votes first."""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from gradio_client import Client

from app.admin_tab import DECISION_LABELS
from store.api import Actor, Store
from store.consensus import WITHDRAWN, Majority, Vote, majority
from store.export import current_rows
from tests.app.conftest import PASSWORDS, serve_studio
from tests.store.conftest import build_answer, sample_image

ANN, ADA, CY = Actor("ann", "annotator"), Actor("ada", "annotator"), Actor("cy", "annotator")
NEEDED, ENOUGH = DECISION_LABELS["needed_full"], DECISION_LABELS["low_enough"]


def vote(rater: str, verdict: str, reference: str | None = None, decision: str | None = None, *, order: int,
         source: str = "annotation") -> Vote:
    return Vote(rater, source, verdict, reference, decision, order)


# --- The majority the form starts from ----------------------------------------------------------------------------


def test_majority_is_what_most_raters_chose_in_the_latest_spelling() -> None:
    votes = [vote("a", "incorrect", "Q3", "needed_full", order=1), vote("b", "incorrect", "q3.", "needed_full", order=2),
             vote("c", "correct", "Q4", "low_enough", order=3)]
    assert majority(votes) == Majority("incorrect", "q3.", "needed_full")


def test_majority_leaves_every_tie_empty() -> None:
    votes = [vote("a", "correct", "44.6", "needed_full", order=1), vote("b", "incorrect", "12", "low_enough", order=2)]
    assert majority(votes) == Majority(None, None, None)
    # a tie on one field leaves only that field empty
    votes = [vote("a", "incorrect", "1", "needed_full", order=1), vote("b", "incorrect", "2", "needed_full", order=2)]
    assert majority(votes) == Majority("incorrect", None, "needed_full")
    assert majority([]) == Majority(None, None, None)


def test_majority_counts_each_raters_latest_annotation_once() -> None:
    votes = [
        vote("a", "correct", "1", "low_enough", order=1), vote("a", "incorrect", "2", "needed_full", order=2),
        vote("b", "incorrect", "2", order=3),
        vote("c", "correct", "1", "low_enough", order=4), vote("c", WITHDRAWN, order=5),  # taken back: not counted
        vote("d", "correct", "1", "low_enough", order=6, source="thumbs"),  # thumbs are no annotation
    ]
    assert majority(votes) == Majority("incorrect", "2", "needed_full")


def test_majority_reference_comes_from_raters_who_judged_the_answer() -> None:
    # An unsure rater's reference is usually the pre-filled model answer: it does not outvote a correction.
    votes = [vote("a", "incorrect", "Q3", order=1), vote("b", "unsure", "Q4", order=2),
             vote("c", "unsure", "Q4", order=3)]
    assert majority(votes) == Majority("unsure", "Q3", None)


# --- Disagreements in the served app ------------------------------------------------------------------------------


def login(url: str, name: str) -> Client:
    return Client(f"{url}/studio/", auth=(name, PASSWORDS[name]), verbose=False)


@contextmanager
def store_at(db: str) -> Iterator[Store]:
    store = Store(db, upgrade=False)
    try:
        yield store
    finally:
        store.close()


def record(store: Store, question: str, seed: int, *, consent: bool = True) -> int:
    """A stored resize episode (answer 44.6) about a 448×336 image."""
    return store.record(build_answer(question), sample_image(seed, (448, 336)), Actor.system(), consent=consent)


def rate(store: Store, ask_id: int, *judgements: tuple[Actor, str, str | None, str | None]) -> None:
    for actor, verdict, reference, decision in judgements:
        store.rate(actor, ask_id, verdict=verdict, reference_answer=reference, decision=decision)


@pytest.fixture(scope="module")
def dispute_studio(tiny_model_dir, tmp_path_factory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("admin-disputes")
    with serve_studio(tiny_model_dir, tmp) as url:
        yield url, f"sqlite:///{tmp / 'studio.db'}"


ITEM_OUTPUTS = ["status", "picker", "table", "header", "gallery", "chat", "votes", "prefill", "verdict", "decision",
                "reference"]


def shown(values) -> dict:
    """The outputs of /disputes, /open_dispute and /resolve by name."""
    assert len(values) == len(ITEM_OUTPUTS)
    return dict(zip(ITEM_OUTPUTS, values))


def test_a_dispute_opens_prefilled_and_resolving_moves_to_the_next(dispute_studio) -> None:
    url, db = dispute_studio
    with store_at(db) as store:
        agreed = record(store, "Which quarter is highest?", 1)
        rate(store, agreed, (ANN, "incorrect", "Q3", "needed_full"), (ADA, "incorrect", "Q3", "needed_full"))
        most = record(store, "Which quarter is lowest?", 2)
        rate(store, most, (ANN, "incorrect", "Q3", "needed_full"), (ADA, "incorrect", "q3.", "needed_full"),
             (CY, "correct", None, "low_enough"))
        tied = record(store, "What is the value of Beta?", 3)
        rate(store, tied, (ANN, "correct", "44.6", "needed_full"), (ADA, "incorrect", "12", "low_enough"))
    root = login(url, "root")

    # the list holds the two disputes (not the agreed item); the first is open, pre-filled with the majority
    first = shown(root.predict(None, api_name="/disputes"))
    assert [value for _, value in first["picker"]["choices"]] == [most, tied]
    assert first["picker"]["value"] == most
    assert [row[0] for row in first["table"]["data"]] == [most, tied]
    assert first["table"]["data"][0][2] == "44.6"  # the model's answer
    assert f"Item #{most}" in first["header"] and "Asked for the full-resolution image" in first["header"]
    assert [image["caption"] for image in first["gallery"]] == ["Seen first: 224×168", "Original: 448×336"]
    chat = [(m["role"], m["content"][0]["text"]) for m in first["chat"]]
    assert chat[0] == ("user", "Which quarter is lowest?") and chat[-1] == ("assistant", "44.6")
    assert any("Turn 1" in (m["metadata"] or {}).get("title", "") for m in first["chat"])
    assert first["votes"]["data"] == [["ann", "incorrect", "Q3", NEEDED, ""], ["ada", "incorrect", "q3.", NEEDED, ""],
                                      ["cy", "correct", "", ENOUGH, ""]]
    assert (first["verdict"], first["decision"], first["reference"]) == ("incorrect", "needed_full", "q3.")

    # the tied dispute: every field the raters split on stays empty, and the note says why
    opened = shown(root.predict(tied, api_name="/open_dispute"))
    assert f"Item #{tied}" in opened["header"]
    assert (opened["verdict"], opened["decision"], opened["reference"]) == (None, None, "")
    assert opened["prefill"].count("the raters are tied") == 3

    # resolving the first moves on to the tied one, its form refilled for it
    after = shown(root.predict(most, "incorrect", "needed_full", "q3.", api_name="/resolve"))
    assert f"Item #{most} is resolved (incorrect). Next: item #{tied}." in after["status"]
    assert [value for _, value in after["picker"]["choices"]] == [tied] and after["picker"]["value"] == tied
    assert f"Item #{tied}" in after["header"]
    assert (after["verdict"], after["decision"], after["reference"]) == (None, None, "")
    with store_at(db) as store:
        agreed_now = store.get_ask(Actor.system(), most).consensus
        assert (agreed_now.resolved, agreed_now.verdict, agreed_now.reference_answer, agreed_now.needs_high_res) == (
            True, "incorrect", "q3.", True)

    # resolving the last leaves an empty list that says so
    last = shown(root.predict(tied, "correct", None, "44.6", api_name="/resolve"))
    assert "No disagreements to resolve." in last["status"]
    assert last["picker"]["choices"] == [] and last["picker"]["value"] is None
    assert last["table"]["data"] in ([], [[None, None, None, None]], [["", "", "", ""]])
    assert (last["verdict"], last["reference"], last["header"]) == (None, "", "")
    with store_at(db) as store:
        assert store.disputed(Actor.system()) == []
        assert store.get_ask(Actor.system(), tied).consensus.verdict == "correct"


def test_resolving_needs_a_verdict_and_an_admin(dispute_studio) -> None:
    url, db = dispute_studio
    with store_at(db) as store:
        item = record(store, "Is the bar red?", 4)
        rate(store, item, (ANN, "correct", None, None), (ADA, "incorrect", "blue", None))
    root = login(url, "root")
    refused = shown(root.predict(item, None, None, "", api_name="/resolve"))
    assert "choose a final verdict" in refused["status"]
    typed = shown(root.predict("not a number", "correct", None, "", api_name="/resolve"))
    assert "Pick an item" in typed["status"]
    ann = login(url, "ann")
    for values in (ann.predict(None, api_name="/disputes"), ann.predict(item, api_name="/open_dispute"),
                   ann.predict(item, "correct", None, "", api_name="/resolve")):
        assert "Only admin users may" in shown(values)["status"]
    with store_at(db) as store:
        assert item in [v.id for v in store.disputed(Actor.system())]  # nothing was resolved


# --- Exports that explain themselves ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export_studio(tiny_model_dir, tmp_path_factory) -> Iterator[tuple[str, str, Path]]:
    """Four stored answers: one agreed on, one disputed, one with a single rating, one without consent."""
    tmp = tmp_path_factory.mktemp("admin-exports")
    with serve_studio(tiny_model_dir, tmp) as url:
        db = f"sqlite:///{tmp / 'studio.db'}"
        with store_at(db) as store:
            rate(store, record(store, "What is the value of Beta?", 11),
                 (ANN, "correct", "44.6", "needed_full"), (ADA, "correct", "44.6", "needed_full"))
            rate(store, record(store, "Which quarter is highest?", 12),
                 (ANN, "correct", None, None), (ADA, "incorrect", "Q3", None))
            rate(store, record(store, "How many bars are there?", 13), (ANN, "correct", "12", None))
            rate(store, record(store, "A private question?", 14, consent=False),
                 (ANN, "correct", "44.6", None), (ADA, "correct", "44.6", None))
        yield url, db, tmp / "exports"


def counts(report: str) -> dict[str, list[int]]:
    """The report's numbers by row: "Rows", "Stored answers behind the rows", … and each left-out reason's code."""
    table = {label: [int(n) for n in re.findall(r"<td>(\d+)</td>", cells)]
             for label, cells in re.findall(r"<tr><td>([^<]+)</td>((?:<td>\d+</td>)+)</tr>", report)}
    table.update({reason: [int(n) for n in re.findall(r"<td>(\d+)</td>", cells)]
                  for reason, cells in re.findall(r'<tr data-reason="(\w+)"><td>.*?</td>((?:<td>\d+</td>)+)</tr>',
                                                  report)})
    return table


def formats(report: str) -> list[str]:
    head = re.search(r'<table id="vt-export-counts"><thead><tr><th></th>(.*?)</tr>', report).group(1)
    return re.findall(r"<th>(\w+)</th>", head)


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_export_shows_its_counts_and_why_answers_were_left_out(export_studio) -> None:
    url, _, exports = export_studio
    message, archive, report = login(url, "root").predict("grpo", "", api_name="/export")
    assert "Exported to" in message and "grpo (1 row)" in message
    assert formats(report) == ["grpo"]
    assert counts(report) == {"Rows": [1], "Stored answers behind the rows": [1], "Consented answers considered": [3],
                              "awaiting_ratings": [1], "disputed": [1], "no_consent": [1]}
    assert "the annotators disagree on the verdict or the reference answer" in report
    card = (exports / "grpo" / "README.md").read_text(encoding="utf-8")  # the same numbers as the dataset card
    for line in ("| Rows | 1 |", "| Consented stored answers considered | 3 |", "| `disputed` | 1 |",
                 "| `awaiting_ratings` | 1 |", "| `no_consent` | 1 |"):
        assert line in card
    with zipfile.ZipFile(archive) as zipped:
        assert {"README.md", "data.parquet"} <= set(zipped.namelist())


def test_an_empty_export_asks_before_replacing_a_good_one(export_studio) -> None:
    url, _, exports = export_studio
    root = login(url, "root")
    message, _, _ = root.predict("grpo", "", api_name="/export")
    assert "grpo (1 row)" in message
    link, before = os.readlink(exports / "grpo"), tree(exports / "grpo")

    # a since-date in the future: nothing to export, and the page asks instead of replacing
    message, archive, report = root.predict("grpo", "2999-01-01", api_name="/export")
    assert "grpo: 0 rows would replace the current export of 1 row" in message and "Nothing was replaced" in message
    assert "Exported" not in message and archive is None
    assert counts(report) == {"Rows": [0], "Stored answers behind the rows": [0], "Consented answers considered": [0],
                              "before_since": [4]}
    assert "asked before the export's since-date" in report
    assert os.readlink(exports / "grpo") == link and tree(exports / "grpo") == before

    # confirmed: now the empty export replaces it
    message, archive, report = root.predict(api_name="/export_confirm")
    assert "grpo (0 rows)" in message and "No rows: the table below says why." in message
    assert os.readlink(exports / "grpo") != link and current_rows(exports / "grpo") == 0
    assert counts(report)["before_since"] == [4]
    message, _, _ = root.predict(api_name="/export_confirm")
    assert "There is no export waiting" in message  # one confirmation per question

    # an export with rows replaces an empty one without asking
    message, _, _ = root.predict("grpo", "", api_name="/export")
    assert "grpo (1 row)" in message and current_rows(exports / "grpo") == 1


def test_all_formats_at_once_in_one_zip_with_a_folder_each(export_studio) -> None:
    url, _, exports = export_studio
    message, archive, report = login(url, "root").predict("all", "", api_name="/export")
    assert formats(report) == ["grpo", "kto", "dpo", "jsonl"]
    numbers = counts(report)
    assert numbers["Rows"] == [1, 1, 0, 3] and numbers["Consented answers considered"] == [3, 3, 3, 3]
    assert numbers["no_consent"] == [1, 1, 1, 1] and numbers["disputed"] == [1, 1, 1, 0]
    # every considered answer is behind a row or left out for a reason
    for column, fmt in enumerate(formats(report)):
        skipped = sum(values[column] for reason, values in numbers.items()
                      if reason not in ("Rows", "Stored answers behind the rows", "Consented answers considered",
                                        "no_consent", "before_since"))
        assert numbers["Stored answers behind the rows"][column] + skipped == 3, fmt
        assert current_rows(exports / fmt) == numbers["Rows"][column], fmt
    assert "grpo (1 row), kto (1 row), dpo (0 rows), jsonl (3 rows)" in message
    with zipfile.ZipFile(archive) as zipped:
        names = set(zipped.namelist())
        assert Path(archive).name == "visionthink-all.zip"
        assert {name.split("/")[0] for name in names} == {"grpo", "kto", "dpo", "jsonl"}
        assert {"grpo/README.md", "grpo/data.parquet", "kto/README.md", "dpo/README.md", "jsonl/README.md",
                "jsonl/items.jsonl"} <= names
        assert zipped.read("jsonl/items.jsonl") == (exports / "jsonl" / "items.jsonl").read_bytes()
