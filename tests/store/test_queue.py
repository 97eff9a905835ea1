"""The annotation queue on SQLite and PostgreSQL: filters, "item x of N" progress, going back to what one rated, and
undoing a rating (a withdrawal, appended: what it takes back never counts in the queue, the consensus, the dashboard
or an export, and a later rating counts again)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from store.api import Actor, PermissionDenied, QueueFilter, QueueProgress, Store, StoreError, utcnow
from store.consensus import WITHDRAWN
from store.export import export
from store.models import Rating
from tests.store.conftest import build_answer, sample_image

ADMIN = Actor("ann", "admin")
BOB = Actor("bob", "annotator")
CAROL = Actor("carol", "annotator")
VIEWER = Actor("vic", "viewer")
ASKER = Actor.anonymous("session-1")
SYSTEM = Actor.system()
OTHER_MODEL = "Senqiao/VisionThink-Efficient"


def record(store: Store, seed: int, *, consent: bool = True, **answer) -> int:
    return store.record(build_answer(**answer), sample_image(seed), ASKER, consent=consent)


def rating_rows(store: Store) -> int:
    with store.db.read() as s:
        return s.scalar(select(func.count()).select_from(Rating))


def queue(store: Store, actor: Actor, filters: QueueFilter | None = None) -> list[int]:
    """Every item in the actor's queue, in the order the queue offers them."""
    with store.db.read() as s:
        return list(s.scalars(store._queue_query(actor, filters)))


# --- Filters ---------------------------------------------------------------------------------------------------


@pytest.fixture
def mixed(store: Store) -> dict[str, int]:
    """Five consented answers from two model versions, in every mode, with and without the full image; and one
    answer without consent, which no filter may bring into the queue."""
    return {
        "auto_full": record(store, 0, mode="auto", requested_high_res=True),
        "auto_quarter": record(store, 1, mode="auto", requested_high_res=False),
        "low": record(store, 2, mode="low", requested_high_res=False),
        "high": record(store, 3, mode="high", requested_high_res=False),
        "other_model": record(store, 4, mode="auto", requested_high_res=True, model=OTHER_MODEL),
        "private": record(store, 5, consent=False, mode="auto", requested_high_res=True),
    }


def test_filters_narrow_the_queue_in_the_database(store: Store, mixed: dict[str, int]) -> None:
    models = {m.model_id: m.id for m in store.queue_models(BOB)}
    assert list(models) == ["Senqiao/VisionThink-Efficient", "Senqiao/VisionThink-General"]
    general = models["Senqiao/VisionThink-General"]

    everything = [mixed[k] for k in ("auto_full", "auto_quarter", "low", "high", "other_model")]
    assert queue(store, BOB) == everything == queue(store, BOB, QueueFilter())
    assert queue(store, BOB, QueueFilter(model_version=models[OTHER_MODEL])) == [mixed["other_model"]]
    assert queue(store, BOB, QueueFilter(mode="low")) == [mixed["low"]]
    assert queue(store, BOB, QueueFilter(requested_high_res=True)) == [mixed["auto_full"], mixed["other_model"]]
    assert queue(store, BOB, QueueFilter(requested_high_res=False)) == [mixed["auto_quarter"], mixed["low"],
                                                                         mixed["high"]]
    both = QueueFilter(model_version=general, mode="auto", requested_high_res=True)
    assert queue(store, BOB, both) == [mixed["auto_full"]]
    assert store.next_ask(BOB, both).id == mixed["auto_full"]
    assert store.progress(BOB, both) == QueueProgress(done=0, left=1)
    assert store.next_ask(BOB, QueueFilter(mode="high")).id == mixed["high"]

    # Rated items leave the filtered queue too; nothing matching is None, not an unfiltered item.
    store.rate(BOB, mixed["auto_full"], verdict="correct")
    assert store.next_ask(BOB, both) is None
    assert store.progress(BOB, both) == QueueProgress(done=1, left=0)
    assert store.progress(BOB) == QueueProgress(done=1, left=4)
    assert store.next_ask(BOB).id == mixed["auto_quarter"]


def test_filters_refuse_an_unknown_mode_and_only_annotators_list_models(store: Store, mixed) -> None:
    with pytest.raises(StoreError, match="Unknown mode 'medium'; the modes are auto, low, high"):
        QueueFilter(mode="medium")
    with pytest.raises(PermissionDenied):
        store.queue_models(VIEWER)


def test_the_model_filter_offers_only_versions_with_consented_answers(store: Store) -> None:
    record(store, 0, consent=False, model="org/private-only")
    record(store, 1, model="org/shared")
    assert [m.model_id for m in store.queue_models(BOB)] == ["org/shared"]


# --- Progress --------------------------------------------------------------------------------------------------


def test_progress_says_which_item_of_how_many(store: Store) -> None:
    a1, a2, a3, a4 = (record(store, seed) for seed in range(4))
    start = store.progress(BOB)
    assert (start.done, start.left, start.position, start.total) == (0, 4, 1, 4)
    store.rate(BOB, a1, verdict="correct")
    store.rate(BOB, a1, verdict="incorrect", reference_answer="46.4")  # re-rated: still one item done
    store.rate(BOB, a2, verdict="unsure")
    now = store.progress(BOB)
    assert (now.done, now.left, now.position, now.total) == (2, 2, 3, 4)
    store.skip(BOB, a3)  # a skipped item leaves the work: not done, not left
    assert store.progress(BOB) == QueueProgress(done=2, left=1)
    store.withdraw(BOB, a2)  # undone: back to do, so the position goes back and the total stays
    undone = store.progress(BOB)
    assert (undone.done, undone.left, undone.position, undone.total) == (1, 2, 2, 3)
    assert store.next_ask(BOB).id == a2


def test_progress_counts_what_was_done_since_the_session_started(store: Store) -> None:
    a1, a2, a3 = (record(store, seed) for seed in range(3))
    store.rate(BOB, a1, verdict="correct")
    session = utcnow()
    store.rate(BOB, a2, verdict="correct")
    assert store.progress(BOB, since=session) == QueueProgress(done=1, left=1)
    assert store.progress(BOB) == QueueProgress(done=2, left=1)  # since midnight
    assert store.progress(BOB, since=utcnow() + timedelta(minutes=1)) == QueueProgress(done=0, left=1)
    store.rate(BOB, a1, verdict="incorrect", reference_answer="46.4")  # gone back to an earlier item and re-rated
    assert store.progress(BOB, since=session) == QueueProgress(done=2, left=1)


# --- Going back and undoing ------------------------------------------------------------------------------------


def test_back_goes_through_what_the_annotator_rated_newest_first(store: Store) -> None:
    a1, a2, a3 = (record(store, seed) for seed in range(3))
    assert store.last_rated(BOB) is None
    store.rate(BOB, a1, verdict="correct", reference_answer="44.6", decision="needed_full", comment="zoomed")
    store.rate(BOB, a2, verdict="incorrect", reference_answer="7")
    store.rate(CAROL, a3, verdict="correct")  # someone else's work is not Bob's to go back to

    last = store.last_rated(BOB)
    assert last.id == a2
    mine = last.ratings[-1]
    assert (mine.rater, mine.verdict, mine.reference_answer) == ("bob", "incorrect", "7")
    before = store.last_rated(BOB, before=mine.id)
    assert before.id == a1
    assert [(r.verdict, r.reference_answer, r.decision, r.comment) for r in before.ratings] == [
        ("correct", "44.6", "needed_full", "zoomed")]
    assert store.last_rated(BOB, before=before.ratings[-1].id) is None

    # Re-rating an item makes it the latest; an undone rating is nothing to go back to.
    store.rate(BOB, a1, verdict="incorrect", reference_answer="46.4")
    assert store.last_rated(BOB).id == a1
    store.withdraw(BOB, a1)
    assert store.last_rated(BOB).id == a2
    with pytest.raises(PermissionDenied):
        store.last_rated(VIEWER)


def test_undo_appends_a_withdrawal_and_returns_the_item_to_the_queue(store: Store) -> None:
    ask = record(store, 0)
    with pytest.raises(StoreError, match=f"You have no rating of #{ask} to undo"):
        store.withdraw(BOB, ask)
    store.rate(BOB, ask, verdict="correct", reference_answer="44.6")
    store.rate(BOB, ask, verdict="incorrect", reference_answer="46.4")
    assert store.next_ask(BOB) is None
    rows = rating_rows(store)

    store.withdraw(BOB, ask)
    assert rating_rows(store) == rows + 1  # appended; both ratings are still stored
    with store.db.read() as s:
        assert list(s.scalars(select(Rating.verdict).where(Rating.ask_id == ask).order_by(Rating.id))) == [
            "correct", "incorrect", WITHDRAWN]
    assert store.next_ask(BOB).id == ask  # back in the queue, and neither earlier rating came back
    assert store.get_ask(BOB, ask).ratings == []
    with pytest.raises(StoreError, match="no rating of"):
        store.withdraw(BOB, ask)  # nothing left to undo
    with pytest.raises(PermissionDenied):
        store.withdraw(VIEWER, ask)


def test_a_withdrawn_rating_counts_nowhere_and_a_later_rating_counts_again(store: Store, tmp_path) -> None:
    ask = record(store, 0)
    store.rate(BOB, ask, verdict="correct", reference_answer="44.6", decision="needed_full")
    store.rate(CAROL, ask, verdict="correct", reference_answer="44.6", decision="needed_full")
    agreed = store.get_ask(ADMIN, ask).consensus
    assert (agreed.raters, agreed.verdict, agreed.needs_high_res) == (2, "correct", True)
    board = store.dashboard(ADMIN)
    assert (board.rated, board.ratings) == (1, 2)
    assert store.next_ask(BOB) is None and store.next_ask(Actor("dave", "annotator")) is None

    store.withdraw(BOB, ask)
    # The consensus: only Carol counts, one rating of two.
    agreed = store.get_ask(ADMIN, ask).consensus
    assert (agreed.raters, agreed.verdict, agreed.needs_high_res, agreed.complete) == (1, None, None, False)
    # The queue: back for Bob, and open again for others (it needs two raters).
    assert store.next_ask(BOB).id == ask
    assert store.next_ask(Actor("dave", "annotator")).id == ask
    # The dashboard: neither the withdrawn rating nor the withdrawal is a rating.
    board = store.dashboard(ADMIN)
    assert (board.rated, board.ratings) == (1, 1)
    assert [(r.rater, r.verdict) for r in board.latest] == [("carol", "correct")]
    assert [(a.rater, a.ratings) for a in board.annotators] == [("carol", 1)]
    # Exports: the votes behind an item leave both out, and so does the audit dump.
    item = next(store.rated_asks(SYSTEM))
    assert [(v.rater, v.verdict) for v in item.votes] == [("carol", "correct")]
    assert not item.consensus.complete
    audit = export(store, SYSTEM, "jsonl", tmp_path / "audit")
    [line] = (audit.path / "items.jsonl").read_text(encoding="utf-8").splitlines()
    assert [(r["rater"], r["verdict"]) for r in json.loads(line)["ratings"]] == [("carol", "correct")]
    grpo = export(store, SYSTEM, "grpo", tmp_path / "grpo")
    assert (grpo.rows, grpo.skipped) == (0, {"awaiting_ratings": 1})

    # Rating again counts again, everywhere.
    store.rate(BOB, ask, verdict="correct", reference_answer="44.6", decision="needed_full")
    agreed = store.get_ask(ADMIN, ask).consensus
    assert (agreed.raters, agreed.verdict, agreed.complete) == (2, "correct", True)
    assert store.next_ask(BOB) is None
    assert store.dashboard(ADMIN).ratings == 2
    assert export(store, SYSTEM, "grpo", tmp_path / "grpo").rows == 1


def test_withdrawing_ends_a_dispute_it_caused(store: Store) -> None:
    ask = record(store, 0)
    store.rate(BOB, ask, verdict="correct")
    store.rate(CAROL, ask, verdict="incorrect", reference_answer="46.4")
    assert [v.id for v in store.disputed(ADMIN)] == [ask]
    assert store.dashboard(ADMIN).disputed == 1
    store.withdraw(BOB, ask)
    assert store.disputed(ADMIN) == []
    assert store.dashboard(ADMIN).disputed == 0
    assert [(r.rater, r.verdict) for r in store.get_ask(ADMIN, ask).ratings] == [("carol", "incorrect")]


def test_a_withdrawal_takes_back_annotations_only(store: Store) -> None:
    """Bob asked, gave a thumb on the Ask tab and annotated; undoing the annotation leaves his thumb standing."""
    ask = store.record(build_answer(), sample_image(0), BOB, consent=True)
    store.rate(BOB, ask, verdict="incorrect", source="thumbs")
    store.rate(BOB, ask, verdict="correct")
    store.withdraw(BOB, ask)
    assert [(r.source, r.verdict) for r in store.get_ask(BOB, ask).ratings] == [("thumbs", "incorrect")]
    assert store.dashboard(ADMIN).ratings == 1
