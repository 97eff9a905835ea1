"""Many writers at once, on SQLite and PostgreSQL: no rating lost or doubled, no image or model version stored twice.

Correctness only; how fast is in ``bench/store_bench.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, text

from store.api import Actor, Store, encode_png
from store.db import FairLock
from store.models import ModelVersion, Rating, Skip, StoredImage, User
from tests.store.conftest import build_answer, sample_image

WRITERS = 32
RATINGS_EACH = 50
ASKS = 4


def run_together(count: int, work: Callable[[int], object]) -> list:
    """``work(0..count-1)`` on ``count`` threads released at the same moment; re-raises the first error."""
    start = threading.Barrier(count)

    def run(index: int):
        start.wait()
        return work(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def test_32_writers_store_exactly_1600_ratings(store: Store) -> None:
    asks = [store.record(build_answer(f"question {i}"), sample_image(i), Actor.anonymous("s"), consent=True)
            for i in range(ASKS)]

    def write(writer: int) -> list[int]:
        actor = Actor(f"annotator-{writer:02d}", "annotator")
        return [store.rate(actor, asks[(writer + i) % ASKS], verdict=("correct", "incorrect")[i % 2],
                           comment=f"{writer}:{i}")
                for i in range(RATINGS_EACH)]

    ids = [rating_id for batch in run_together(WRITERS, write) for rating_id in batch]
    assert len(ids) == len(set(ids)) == WRITERS * RATINGS_EACH

    items = list(store.rated_asks(Actor.system()))
    stored = [(vote.rater, vote.comment, vote.ask_id, vote.id) for item in items for vote in item.votes]
    assert len(stored) == WRITERS * RATINGS_EACH == store.dashboard(Actor.system()).ratings
    assert {row[3] for row in stored} == set(ids)
    expected = {(f"annotator-{w:02d}", f"{w}:{i}", asks[(w + i) % ASKS]) for w in range(WRITERS)
                for i in range(RATINGS_EACH)}
    assert Counter(row[:3] for row in stored) == Counter(expected)  # every (rater, i) once, on the right answer
    assert all(item.consensus.raters == WRITERS for item in items)


def test_concurrent_records_of_the_same_image_store_it_once(store: Store) -> None:
    image = sample_image(7)
    threads = 16

    def record(index: int) -> int:
        return store.record(build_answer(f"question {index}", model="org/brand-new"), image.copy(),
                            Actor.anonymous(f"s{index}"), consent=True, revision="r1")

    asks = run_together(threads, record)
    assert len(set(asks)) == threads
    assert len({store.get_ask(Actor.system(), ask).image_sha256 for ask in asks}) == 1
    assert _count(store, StoredImage) == 1 and _count(store, ModelVersion) == 1


def test_two_stores_on_one_database_can_write_at_once(make_store) -> None:
    """Two ``Store`` objects (two app replicas, or the app and a training job) have separate in-process locks.

    The first reads, then writes, in one transaction, as ``Store.rate`` does; the second writes in between. On
    SQLite a write transaction that began as a read cannot take the write lock once someone else has committed
    ("database is locked" at once, no busy wait), so write transactions must start with BEGIN IMMEDIATE.
    """
    first, second = make_store(), make_store()
    ask = first.record(build_answer(), sample_image(), Actor.anonymous("s"), consent=True)
    result: list[int] = []
    bob = Actor("bob", "annotator")
    other = threading.Thread(target=lambda: result.append(second.rate(bob, ask, verdict="correct")))
    with first.db.write() as s:
        s.scalar(select(func.count()).select_from(Rating))
        other.start()
        other.join(timeout=1)  # PostgreSQL: the other write commits now; SQLite: it waits for this transaction
        s.add(Rating(ask_id=ask, rater="carol", source="annotation", verdict="incorrect", comment=""))
    other.join(timeout=30)
    assert result, "the second store's rating failed (see the thread's traceback above)"
    assert _count(first, Rating) == 2


def lose_insert_race(store: Store, winner, call: Callable[[], object]) -> object:
    """``call()`` while another writer has inserted ``winner`` and not yet committed; commit once ``call`` waits.

    On PostgreSQL the call's own INSERT of the same unique key blocks on the index until the other transaction
    commits, then fails with a unique violation, which the store must absorb. On SQLite the in-process write lock
    makes the call wait before it even looks. Returns what ``call`` returned; fails if it raised.
    """
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(("ok", call()))
        except Exception as exc:  # reported below, in the test's thread
            outcome.append(("error", exc))

    racer = threading.Thread(target=run)
    with store.db.write() as s:
        s.add(winner)
        s.flush()
        racer.start()
        _wait_for_a_blocked_writer(store)
    racer.join(timeout=30)
    assert outcome, "the racing call never finished"
    kind, value = outcome[0]
    if kind == "error":
        raise AssertionError(f"the call that lost the insert race failed: {value!r}") from value
    return value


@pytest.mark.parametrize("contested", ["image", "model version"])
def test_a_record_that_loses_the_insert_race_uses_the_winners_row(store: Store, contested: str) -> None:
    image = sample_image(11)
    png = encode_png(image)
    sha = hashlib.sha256(png).hexdigest()
    winner = (StoredImage(sha256=sha, width=64, height=48, byte_size=len(png), data=png) if contested == "image"
              else ModelVersion(model_id="org/race", revision="", source="hub"))
    ask = lose_insert_race(store, winner, lambda: store.record(build_answer(model="org/race"), image,
                                                               Actor.anonymous("s"), consent=True))
    assert _count(store, StoredImage) == 1 and _count(store, ModelVersion) == 1
    view = store.get_ask(Actor.system(), ask)
    assert (view.model_id, view.image_sha256) == ("org/race", sha)


def test_a_skip_that_loses_the_insert_race_is_still_one_skip(store: Store) -> None:
    """The same annotator skipping in two tabs at once."""
    ask = store.record(build_answer(), sample_image(), Actor.anonymous("s"), consent=True)
    bob = Actor("bob", "annotator")
    lose_insert_race(store, Skip(ask_id=ask, rater="bob"), lambda: store.skip(bob, ask))
    assert _count(store, Skip) == 1
    assert store.next_ask(bob) is None


def test_sync_users_that_loses_the_insert_race_still_applies_the_roles(store: Store) -> None:
    """Two app replicas starting at once with the same users."""
    lose_insert_race(store, User(name="ann", role="viewer"), lambda: store.sync_users([("ann", "admin")]))
    assert store.users() == [("ann", "admin")]


def _wait_for_a_blocked_writer(store: Store) -> None:
    """Until another writer waits for the open write transaction, at most 10 s: on SQLite in the store's write-lock
    queue, on PostgreSQL on a database lock (the racing INSERT on the unique index)."""
    deadline = time.monotonic() + 10
    # Autocommit: inside one transaction PostgreSQL would show the same pg_stat_activity snapshot every time.
    with store.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        while time.monotonic() < deadline:
            if store.db.is_sqlite:
                waiting = len(store.db._write_lock._waiters)
            else:
                waiting = connection.scalar(text("SELECT count(*) FROM pg_stat_activity "
                                                 "WHERE datname = current_database() AND wait_event_type = 'Lock'"))
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("the racing writer never waited for the open write transaction")


def _count(store: Store, model) -> int:
    with store.db.read() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_the_sqlite_write_lock_is_taken_in_arrival_order() -> None:
    """Writers queue fairly: a thread that just wrote cannot jump ahead of those already waiting."""
    lock = FairLock()
    order: list[int] = []

    def write(index: int) -> None:
        with contextlib.suppress(RuntimeError), lock:
            order.append(index)
            if index % 2:
                raise RuntimeError("a failed write still hands the lock over")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    with lock:
        for queued, thread in enumerate(threads, start=1):
            thread.start()
            deadline = time.monotonic() + 10
            while len(lock._waiters) < queued and time.monotonic() < deadline:  # until it waits in the queue
                time.sleep(0.001)
    for thread in threads:
        thread.join(timeout=10)
    assert order == list(range(8))
    with lock:  # free again
        assert not lock._waiters
