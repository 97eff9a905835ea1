"""Purging answers stored without training consent, on SQLite and PostgreSQL: what goes, what stays, batches, two
replicas purging at once, and an answer about the same image arriving mid-purge.
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime, timedelta

import pytest
from PIL import Image
from sqlalchemy import func, select, update

from store import api as store_api
from store.api import Actor, NotFound, PermissionDenied, PurgeReport, Store, encode_png, utcnow
from store.export import export
from store.models import Ask, Judgement, ModelVersion, Rating, Skip, StoredImage, User
from tests.store.conftest import build_answer, sample_image
from tests.store.test_concurrency import _wait_for_a_blocked_writer

SYSTEM, ADMIN = Actor.system(), Actor("ann", "admin")
BOB, CAROL, DAVE = Actor("bob", "annotator"), Actor("carol", "annotator"), Actor("dave", "annotator")
ASKER = Actor("vic", "viewer")


def record(store: Store, image: Image.Image, *, consent: bool, question: str = "How many?") -> int:
    return store.record(build_answer(question), image, ASKER, consent=consent)


def age(store: Store, days: int, *asks: int) -> None:
    """Make ``asks`` as old as ``days`` days."""
    moment = store._db_time(utcnow() - timedelta(days=days))
    with store.db.write() as s:
        s.execute(update(Ask).where(Ask.id.in_(asks)).values(created_at=moment))


def ids(store: Store, model) -> set[int]:
    with store.db.read() as s:
        return set(s.scalars(select(model.id)))


def row_counts(store: Store) -> dict[str, int]:
    with store.db.read() as s:
        return {model.__tablename__: s.scalar(select(func.count()).select_from(model))
                for model in (User, ModelVersion, StoredImage, Ask, Rating, Skip, Judgement)}


def month_ago() -> datetime:
    return utcnow() - timedelta(days=30)


def test_a_purge_deletes_old_unconsented_answers_and_the_images_left_unused(store: Store, tmp_path) -> None:
    shared, alone, fresh_image, kept_image = (sample_image(seed) for seed in range(4))
    purged_shared = record(store, shared, consent=False)  # its image stays: a kept answer is about it too
    kept_shared = record(store, shared, consent=True)
    purged_alone = record(store, alone, consent=False)
    purged_again = record(store, alone, consent=False, question="What colour?")  # the same image: it goes
    fresh = record(store, fresh_image, consent=False)  # unconsented, but newer than the cutoff
    kept = record(store, kept_image, consent=True)
    age(store, 40, purged_shared, kept_shared, purged_alone, purged_again, kept)
    # What hangs on the answers that go...
    store.rate(ASKER, purged_alone, verdict="incorrect", source="thumbs")
    store.rate(BOB, purged_alone, verdict="correct")
    store.skip(BOB, purged_shared)
    store.record_judgement(SYSTEM, purged_alone, "rule", 1, "44.6")
    # ...and on those that stay.
    store.rate(BOB, kept, verdict="correct", reference_answer="44.6")
    store.rate(CAROL, kept, verdict="correct")
    store.rate(BOB, fresh, verdict="incorrect")
    store.skip(DAVE, kept_shared)
    store.record_judgement(SYSTEM, kept, "rule", 1, "44.6")
    staying = {ask: store.get_ask(SYSTEM, ask) for ask in (kept_shared, fresh, kept)}
    kept_rows = row_counts(store)

    report = store.purge_unconsented(SYSTEM, older_than=month_ago())

    assert report == PurgeReport(asks=3, ratings=2, skips=1, judgements=1, images=1,
                                 image_bytes=len(encode_png(alone)))
    assert ids(store, Ask) == {kept_shared, fresh, kept}
    assert {ask: store.get_ask(SYSTEM, ask) for ask in staying} == staying  # untouched, ratings and all
    assert row_counts(store) == {**kept_rows, "asks": 3, "ratings": 3, "skips": 1, "judgements": 1, "images": 3}
    with pytest.raises(NotFound, match="no stored image"):
        store.image_png(SYSTEM, hashlib.sha256(encode_png(alone)).hexdigest())
    for ask, picture in ((kept_shared, shared), (fresh, fresh_image), (kept, kept_image)):
        assert store.image_png(SYSTEM, staying[ask].image_sha256) == encode_png(picture)
    with pytest.raises(NotFound, match=f"#{purged_alone}"):
        store.rate(BOB, purged_alone, verdict="correct")

    # Everything else still works.
    assert store.next_ask(Actor("erin", "annotator")).id == kept_shared
    assert store.next_ask(DAVE) is None  # skipped kept_shared; kept has its two raters
    assert store.progress(BOB).left == 1
    board = store.dashboard(SYSTEM)
    assert (board.asks, board.consented, board.ratings) == (3, 2, 3)
    assert [a.items for a in board.agreement] == [1]
    assert [item.ask.id for item in store.rated_asks(SYSTEM)] == [kept_shared, kept]
    result = export(store, SYSTEM, "jsonl", tmp_path / "out")
    assert result.rows == 2 and result.skipped.get("no_consent") == 1
    lines = (result.path / "items.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == [kept_shared, kept]

    assert store.purge_unconsented(ADMIN, older_than=month_ago()) == PurgeReport()  # nothing left to purge
    # A naive cutoff is UTC, like every stored time.
    assert store.purge_unconsented(ADMIN, older_than=utcnow().replace(tzinfo=None) + timedelta(minutes=1)).asks == 1
    assert ids(store, Ask) == {kept_shared, kept}


def test_only_admins_purge(store: Store) -> None:
    ask = record(store, sample_image(), consent=False)
    age(store, 40, ask)
    for actor in (BOB, ASKER, Actor.anonymous("s")):
        with pytest.raises(PermissionDenied, match="Only admin users may purge stored answers"):
            store.purge_unconsented(actor, older_than=month_ago())
    assert ids(store, Ask) == {ask}


def test_a_big_purge_runs_in_batches(make_store, monkeypatch) -> None:
    monkeypatch.setattr(store_api, "PURGE_BATCH", 2)
    batches: list[int] = []
    purge_asks = Store._purge_asks

    def counted(s, cutoff, counts) -> int:
        batches.append(purge_asks(s, cutoff, counts))
        return batches[-1]

    monkeypatch.setattr(Store, "_purge_asks", staticmethod(counted))
    store = make_store()
    asks = [record(store, sample_image(seed), consent=False) for seed in range(5)]
    age(store, 40, *asks)
    report = store.purge_unconsented(SYSTEM, older_than=month_ago())
    assert (report.asks, report.images) == (5, 5)
    assert batches == [2, 2, 1, 0]  # one transaction each
    assert set(row_counts(store).values()) == {0, 1}  # the model version stays


def test_two_replicas_purging_at_once_delete_everything_once(make_store, monkeypatch) -> None:
    monkeypatch.setattr(store_api, "PURGE_BATCH", 3)
    first, second = make_store(), make_store()
    images = [sample_image(seed) for seed in range(6)]
    asks = [record(first, images[i % 6], consent=False, question=f"Question {i}?") for i in range(30)]
    age(first, 40, *asks)
    start = threading.Barrier(2)
    reports, errors = [], []

    def purge(store: Store) -> None:
        start.wait()
        try:
            reports.append(store.purge_unconsented(SYSTEM, older_than=month_ago()))
        except Exception as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=purge, args=(store,)) for store in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(reports) == 2
    assert sum(r.asks for r in reports) == 30 and sum(r.images for r in reports) == 6
    assert sum(r.image_bytes for r in reports) == sum(len(encode_png(image)) for image in images)
    assert ids(first, Ask) == ids(first, StoredImage) == set()


def test_an_image_asked_about_again_during_a_purge_stays(store: Store, monkeypatch) -> None:
    """Someone asks about an image while a purge removes the last old answer about it: their answer keeps it."""
    image = sample_image(7)
    old = record(store, image, consent=False)
    age(store, 40, old)
    outcome: list = []
    purger = threading.Thread(target=lambda: outcome.append(store.purge_unconsented(SYSTEM,
                                                                                     older_than=month_ago())))
    find_version = store._model_version

    def purge_meanwhile(s, *args):
        """Called by ``record`` after it found the stored image, before it adds the answer."""
        purger.start()
        _wait_for_a_blocked_writer(store)  # the purge waits for this answer (SQLite: for the write lock)
        return find_version(s, *args)

    monkeypatch.setattr(store, "_model_version", purge_meanwhile)
    new = record(store, image, consent=False, question="Again?")
    purger.join(timeout=30)
    assert outcome and outcome[0].asks == 1 and outcome[0].images == 0
    assert ids(store, Ask) == {new}
    assert store.image_png(SYSTEM, store.get_ask(SYSTEM, new).image_sha256) == encode_png(image)
