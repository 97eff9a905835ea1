"""The store's API on SQLite and PostgreSQL: schema, recording, ratings, the queue, consensus, the dashboard and
who may do what. Also the users module (hashes and configuration parsing), which needs no database.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
import io
import json

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from PIL import Image, ImageCms
from PIL.PngImagePlugin import PngInfo
from sqlalchemy import func, inspect, select, text

from visionthink.text import MAX_TEXT_CHARS as MAX_TEXT
from store.api import Actor, NotFound, PermissionDenied, QueueProgress, Store, StoreError, StoreFailure
from store.db import MIGRATIONS
from store.models import Ask, Base, Judgement, ModelVersion, Rating, Skip, StoredImage, User
from store.users import Directory, UserEntry, hash_password, parse_users, verify_password
from tests.store.conftest import build_answer, sample_image

ADMIN = Actor("ann", "admin")
BOB = Actor("bob", "annotator")
CAROL = Actor("carol", "annotator")
DAVE = Actor("dave", "annotator")
VIEWER = Actor("vic", "viewer")
ANON = Actor.anonymous("session-1")
SYSTEM = Actor.system()


def record(store: Store, seed: int = 0, *, consent: bool = True, by: Actor = ANON, **answer) -> int:
    return store.record(build_answer(**answer), sample_image(seed), by, consent=consent)


def row_counts(store: Store) -> dict[str, int]:
    """Rows per table, to show that a refused call wrote nothing."""
    with store.db.read() as s:
        return {model.__tablename__: s.scalar(select(func.count()).select_from(model))
                for model in (User, ModelVersion, StoredImage, Ask, Rating, Skip, Judgement)}


# --- Schema ----------------------------------------------------------------------------------------------------


def test_the_schema_comes_from_alembic_and_upgrading_again_changes_nothing(make_store) -> None:
    store = make_store()
    ask = record(store)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    with store.db.engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) == {
            "alembic_version", "users", "model_versions", "images", "asks", "ratings", "skips", "judgements"}
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
        # The migrations build exactly what the models describe (no drift between the two).
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []

    before = row_counts(store)
    again = make_store()
    again.db.upgrade()
    with again.db.engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
    assert row_counts(again) == before
    assert again.get_ask(ADMIN, ask).question == build_answer().question


def test_a_store_needs_at_least_one_rating_per_item(store_url: str) -> None:
    with pytest.raises(StoreError, match="VISIONTHINK_RATINGS_PER_ITEM must be at least 1, not 0"):
        Store(store_url, ratings_per_item=0)


# --- Recording answers -----------------------------------------------------------------------------------------


def _with_metadata(image: Image.Image, fmt: str, comment: str) -> Image.Image:
    """``image`` saved with EXIF, an ICC profile and (PNG) text chunks, then opened again as an upload would be."""
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x8298] = comment  # Copyright
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buffer = io.BytesIO()
    if fmt == "PNG":
        info = PngInfo()
        info.add_text("Comment", comment)
        info.add_itxt("Author", "Ann Example")
        image.save(buffer, "PNG", pnginfo=info, exif=exif, icc_profile=icc)
    else:
        image.save(buffer, fmt, exif=exif, icc_profile=icc, quality=95)
    uploaded = Image.open(io.BytesIO(buffer.getvalue()))
    uploaded.load()
    assert uploaded.getexif()[0x010F] == "SecretCam" and uploaded.info.get("icc_profile")  # the metadata is there
    return uploaded


def _assert_clean_png(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    for chunk in (b"eXIf", b"tEXt", b"iTXt", b"zTXt", b"iCCP", b"tIME", b"SecretCam", b"Ann Example"):
        assert chunk not in png, f"{chunk!r} survived in the stored PNG"
    stored = Image.open(io.BytesIO(png))
    assert stored.format == "PNG" and stored.text == {} and len(stored.getexif()) == 0
    assert "icc_profile" not in stored.info and "exif" not in stored.info
    return stored


def test_record_stores_the_image_once_per_content_as_a_png_without_metadata(store: Store) -> None:
    original = sample_image(1)
    first = store.record(build_answer("first question"), _with_metadata(original, "PNG", "home"), ANON, consent=True)
    # The same pixels with different metadata are the same image.
    second = store.record(build_answer("second question"), _with_metadata(original, "PNG", "office"), ANON,
                          consent=False)
    third = store.record(build_answer("third question"), sample_image(2), ANON, consent=True)

    views = [store.get_ask(ADMIN, ask) for ask in (first, second, third)]
    assert views[0].image_sha256 == views[1].image_sha256 != views[2].image_sha256
    assert views[0].image_size == (64, 48)
    assert row_counts(store)["images"] == 2 and row_counts(store)["asks"] == 3

    png = store.image_png(ADMIN, views[0].image_sha256)
    assert hashlib.sha256(png).hexdigest() == views[0].image_sha256
    stored = _assert_clean_png(png)
    assert stored.mode == "RGB"
    assert np.array_equal(np.asarray(stored), np.asarray(original))


@pytest.mark.parametrize("mode", ["RGBA", "P", "L"])
def test_other_image_modes_are_stored_clean_too(store: Store, mode: str) -> None:
    upload = _with_metadata(sample_image(3).convert(mode), "PNG", "x")
    sha = store.get_ask(ADMIN, store.record(build_answer(), upload, ANON, consent=True)).image_sha256
    stored = _assert_clean_png(store.image_png(ADMIN, sha))
    expected = upload if mode == "L" else upload.convert("RGB")
    assert np.array_equal(np.asarray(stored), np.asarray(expected))


def test_a_jpeg_upload_is_stored_as_a_clean_png_of_its_decoded_pixels(store: Store) -> None:
    upload = _with_metadata(sample_image(4), "JPEG", "holiday")
    sha = store.get_ask(ADMIN, store.record(build_answer(), upload, ANON, consent=True)).image_sha256
    stored = _assert_clean_png(store.image_png(ADMIN, sha))
    assert np.array_equal(np.asarray(stored), np.asarray(upload.convert("RGB")))


def test_record_keeps_the_whole_answer(store: Store) -> None:
    answer = build_answer("How many cars?", answer="3", low_res=100, full_res=400, latency_s=2.25)
    ask = store.record(answer, sample_image(), BOB, consent=True, revision="r1", source="local")
    view = store.get_ask(ADMIN, ask)
    assert (view.question, view.answer, view.mode, view.requested_high_res, view.stop_reason) == (
        "How many cars?", "3", "auto", True, "answer")
    assert (view.model_id, view.model_revision, view.latency_s, view.consent) == (answer.model, "r1", 2.25, True)
    assert view.tokens == answer.tokens and view.tokens.saved == -100
    assert [t.turn.kind for t in view.turns] == ["tool_call", "answer"]
    assert view.turns[1].image_tokens == [100, 400] and view.turns[1].prompt_tokens == 300
    assert view.created_at.tzinfo is not None


def test_a_record_that_fails_leaves_nothing_behind(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    """The image and model version are written first, inside savepoints; the failed ask must take them along."""
    answer = build_answer(model="org/new-model")
    answer.turns[0].prompt_tokens = object()  # not JSON: the INSERT fails after the image and model version went in
    # SQLite's driver reports it as a database error, which people are told without the SQL (and the log has the
    # rest); psycopg raises the encoder's TypeError itself.
    with pytest.raises((StoreFailure, TypeError)) as failed:
        store.record(answer, sample_image(5), ANON, consent=True)
    told = caplog.text if isinstance(failed.value, StoreFailure) else str(failed.value)
    assert "not JSON serializable" in told
    assert set(row_counts(store).values()) == {0}


def test_consent_is_changed_by_the_asker_or_an_admin_only(store: Store) -> None:
    ask = record(store, by=BOB, consent=False)
    with pytest.raises(PermissionDenied, match="person who asked"):
        store.set_consent(CAROL, ask, True)
    assert store.get_ask(ADMIN, ask).consent is False
    store.set_consent(BOB, ask, True)
    assert store.get_ask(ADMIN, ask).consent is True
    store.set_consent(ADMIN, ask, False)
    assert store.get_ask(ADMIN, ask).consent is False
    with pytest.raises(NotFound, match="#9999"):
        store.set_consent(ADMIN, 9999, True)


# --- Model versions --------------------------------------------------------------------------------------------


def test_model_versions_are_created_once_per_model_and_revision(store: Store) -> None:
    first = store.register_model_version(ADMIN, "org/model", "abc", source="hub")
    again = store.register_model_version(SYSTEM, "org/model", "abc", source="hub", notes="the first upload")
    other = store.register_model_version(ADMIN, "org/model", "def", source="retrain:run-1")
    assert first == again != other

    store.record(build_answer(model="org/model"), sample_image(), ANON, consent=True, revision="abc")
    store.record(build_answer(model="org/other"), sample_image(), ANON, consent=True, source="server")
    versions = [(m, r, s) for m, r, s, _ in store.model_versions()]
    assert versions == [("org/model", "abc", "hub"), ("org/model", "def", "retrain:run-1"), ("org/other", "", "server")]


# --- Ratings ---------------------------------------------------------------------------------------------------


def test_ratings_are_append_only_and_a_later_one_supersedes(make_store) -> None:
    store = make_store(ratings_per_item=1)
    ask = record(store)
    first = store.rate(BOB, ask, verdict="incorrect", reference_answer=" 46.4 ", decision="needed_full",
                       comment=" too small ")
    second = store.rate(BOB, ask, verdict="correct", decision="low_enough")
    assert second > first

    view = store.get_ask(ADMIN, ask)
    assert [(r.id, r.verdict, r.reference_answer, r.decision, r.comment) for r in view.ratings] == [
        (first, "incorrect", "46.4", "needed_full", "too small"), (second, "correct", None, "low_enough", "")]
    assert (view.consensus.raters, view.consensus.verdict, view.consensus.needs_high_res) == (1, "correct", False)
    assert store.dashboard(ADMIN).ratings == 2

    store.rate(CAROL, ask, verdict="correct")
    # Annotators see their own ratings only; admins see everyone's.
    assert {r.rater for r in store.get_ask(BOB, ask).ratings} == {"bob"}
    assert {r.rater for r in store.get_ask(ADMIN, ask).ratings} == {"bob", "carol"}


def test_rating_an_unknown_answer_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="There is no stored answer #4242"):
        store.rate(BOB, 4242, verdict="correct")
    with pytest.raises(NotFound, match="#4242"):
        store.skip(BOB, 4242)
    with pytest.raises(NotFound, match="#4242"):
        store.get_ask(BOB, 4242)
    with pytest.raises(NotFound, match="no stored image"):
        store.image_png(BOB, "0" * 64)
    assert row_counts(store)["ratings"] == row_counts(store)["skips"] == 0


BAD_RATINGS = [
    (dict(verdict="maybe"), "The verdict must be one of correct, incorrect, unsure, not 'maybe'"),
    (dict(verdict="Correct"), "The verdict must be one of"),
    (dict(verdict="correct", decision="full"),
     "The decision must be one of needed_full, low_enough, unsure, not 'full'"),
    (dict(verdict="correct", reference_answer="x" * (MAX_TEXT + 1)),
     f"The reference answer is {MAX_TEXT + 1:,} characters long; the limit is {MAX_TEXT:,}"),
    (dict(verdict="correct", comment="y" * (MAX_TEXT + 5)),
     f"The comment is {MAX_TEXT + 5:,} characters long; the limit is {MAX_TEXT:,}"),
    (dict(verdict="correct", source="email"), "Unknown rating source 'email'"),
]


def test_bad_ratings_are_refused_with_a_clear_message_and_nothing_is_written(store: Store) -> None:
    ask = record(store)
    before = row_counts(store)
    for fields, message in BAD_RATINGS:
        with pytest.raises(StoreError) as refused:
            store.rate(BOB, ask, **fields)
        assert message in str(refused.value)
        assert not isinstance(refused.value, PermissionDenied)
    assert row_counts(store) == before
    # Exactly at the limit is fine.
    store.rate(BOB, ask, verdict="unsure", reference_answer="x" * MAX_TEXT, comment="y" * MAX_TEXT, decision="unsure")
    assert row_counts(store)["ratings"] == 1


# --- The annotation queue --------------------------------------------------------------------------------------


def test_the_queue_gives_fewest_ratings_first_then_oldest(store: Store) -> None:
    a1, a2, a3 = (record(store, seed) for seed in range(3))
    assert store.next_ask(BOB).id == a1
    store.rate(BOB, a1, verdict="correct")
    # a1 has a rating now: the unrated ones come first, oldest first.
    assert store.next_ask(CAROL).id == a2
    store.rate(DAVE, a2, verdict="correct")
    assert store.next_ask(CAROL).id == a3
    store.rate(DAVE, a3, verdict="correct")
    # All have one rating: the oldest again.
    assert store.next_ask(CAROL).id == a1


def test_an_annotator_never_gets_an_item_they_rated_or_skipped(store: Store) -> None:
    a1, a2, a3 = (record(store, seed) for seed in range(3))
    store.rate(BOB, a1, verdict="correct")
    store.skip(BOB, a2)
    store.skip(BOB, a2)  # skipping twice is harmless
    assert store.next_ask(BOB).id == a3
    store.rate(BOB, a3, verdict="incorrect")
    assert store.next_ask(BOB) is None
    # Others still see what Bob skipped.
    assert store.next_ask(CAROL).id == a2
    assert row_counts(store)["skips"] == 1


def test_items_leave_the_queue_once_they_have_enough_raters(make_store) -> None:
    store = make_store(ratings_per_item=2)
    a1, a2 = record(store, 0, by=VIEWER), record(store, 1)
    store.rate(BOB, a1, verdict="correct")
    store.rate(BOB, a1, verdict="incorrect")  # the same rater twice is still one rater
    assert store.next_ask(DAVE).id == a2  # a2 has fewer raters
    store.rate(CAROL, a1, verdict="correct")
    store.rate(CAROL, a2, verdict="correct")
    assert store.next_ask(DAVE).id == a2  # a1 has its two raters and is gone
    store.rate(BOB, a2, verdict="correct")
    assert store.next_ask(DAVE) is None
    # Thumbs are not annotations: they neither fill nor empty the queue.
    more = make_store(ratings_per_item=3)
    more.rate(VIEWER, a1, verdict="correct", source="thumbs")
    assert more.next_ask(DAVE).id == a1


def test_only_consented_answers_are_queued(store: Store) -> None:
    private = record(store, 0, consent=False, by=BOB)
    public = record(store, 1, consent=True)
    assert store.next_ask(CAROL).id == public
    store.skip(CAROL, public)
    assert store.next_ask(CAROL) is None
    store.set_consent(BOB, private, True)
    assert store.next_ask(CAROL).id == private


def test_progress_counts_todays_answers_and_whats_left(store: Store) -> None:
    a1, a2, a3 = (record(store, seed) for seed in range(3))
    record(store, 9, consent=False)
    assert store.progress(BOB) == QueueProgress(done=0, left=3)
    store.rate(BOB, a1, verdict="correct")
    store.rate(BOB, a1, verdict="incorrect")
    assert store.progress(BOB) == QueueProgress(done=1, left=2)
    store.skip(BOB, a2)
    assert store.progress(BOB) == QueueProgress(done=1, left=1)
    store.rate(CAROL, a3, verdict="correct")
    store.rate(DAVE, a3, verdict="correct")
    assert store.progress(BOB) == QueueProgress(done=1, left=0)
    assert store.progress(CAROL) == QueueProgress(done=1, left=2)


# --- Consensus, disputes and resolution ------------------------------------------------------------------------


def test_disputes_are_found_and_an_admin_resolves_them(store: Store) -> None:
    verdicts, agreed, references = (record(store, seed) for seed in range(3))
    store.rate(BOB, verdicts, verdict="correct")
    store.rate(CAROL, verdicts, verdict="incorrect", reference_answer="46.4")
    store.rate(BOB, agreed, verdict="incorrect", reference_answer="46.4")
    store.rate(CAROL, agreed, verdict="incorrect", reference_answer="46.4.", decision="needed_full")
    store.rate(BOB, references, verdict="incorrect", reference_answer="1")
    store.rate(CAROL, references, verdict="incorrect", reference_answer="2")

    assert [v.id for v in store.disputed(ADMIN)] == [verdicts, references]
    assert store.dashboard(ADMIN).disputed == 2
    assert store.get_ask(ADMIN, agreed).consensus.verdict == "incorrect"
    assert store.get_ask(ADMIN, verdicts).consensus.disputed

    store.resolve(ADMIN, verdicts, verdict="incorrect", reference_answer="46.4", decision="needed_full",
                  comment="checked the gauge")
    assert [v.id for v in store.disputed(ADMIN)] == [references]
    resolved = store.get_ask(ADMIN, verdicts).consensus
    assert (resolved.verdict, resolved.reference_answer, resolved.needs_high_res, resolved.resolved) == (
        "incorrect", "46.4", True, True)

    items = {item.ask.id: item for item in store.rated_asks(SYSTEM)}
    assert set(items) == {verdicts, agreed, references}
    assert [v.source for v in items[verdicts].votes] == ["annotation", "annotation", "resolution"]
    assert items[verdicts].consensus == resolved
    assert items[agreed].consensus.reference_answer == "46.4."  # the latest rater's spelling
    assert items[references].consensus.disputed
    assert hashlib.sha256(items[agreed].image_png).hexdigest() == items[agreed].ask.image_sha256


def test_a_resolved_item_leaves_the_queue(store: Store) -> None:
    ask = record(store)
    store.rate(BOB, ask, verdict="correct")
    assert store.next_ask(CAROL).id == ask  # one rating of two: still wanted
    store.resolve(ADMIN, ask, verdict="incorrect", reference_answer="46.4", decision=None)
    assert store.next_ask(CAROL) is None and store.progress(CAROL).left == 0


def test_since_compares_instants_whatever_the_time_zone(store: Store) -> None:
    ask = record(store)
    plus_five = timezone(timedelta(hours=5))
    minute_ago, minute_later = datetime.now(plus_five) - timedelta(minutes=1), datetime.now(plus_five) + timedelta(minutes=1)
    assert [i.ask.id for i in store.rated_asks(SYSTEM, since=minute_ago)] == [ask]
    assert list(store.rated_asks(SYSTEM, since=minute_later)) == []
    assert store.count_asks(SYSTEM, since=minute_ago.replace(tzinfo=None) - timedelta(hours=5)) == 1  # naive = UTC


def test_consensus_items_are_consented_only_unless_asked(store: Store) -> None:
    public, private = record(store, 0), record(store, 1, consent=False)
    assert [i.ask.id for i in store.rated_asks(SYSTEM)] == [public]
    assert [i.ask.id for i in store.rated_asks(SYSTEM, consented_only=False)] == [public, private]
    assert store.count_asks(SYSTEM) == 1 and store.count_asks(SYSTEM, consented_only=False) == 2
    with pytest.raises(PermissionDenied):
        store.count_asks(BOB)


# --- The dashboard ---------------------------------------------------------------------------------------------


def test_dashboard_numbers(store: Store) -> None:
    a = "org/model-a"
    high = record(store, 0, model=a, requested_high_res=True, low_res=64, full_res=256, latency_s=1.0)  # saved -64
    low1 = record(store, 1, model=a, requested_high_res=False, low_res=64, full_res=256, latency_s=2.0)  # saved 192
    low2 = record(store, 2, model=a, requested_high_res=False, low_res=64, full_res=256, latency_s=3.0)
    fixed = record(store, 3, model=a, mode="low", requested_high_res=False, low_res=64, full_res=256, latency_s=2.0)
    b1 = record(store, 4, model="org/model-b", requested_high_res=True, low_res=64, full_res=256)
    record(store, 5, model="org/model-b", requested_high_res=False, consent=False, low_res=100, full_res=400)

    for ask, bob, carol in [(high, "correct", "correct"), (low1, "incorrect", "incorrect"),
                            (fixed, "correct", "incorrect"), (b1, "correct", "correct")]:
        store.rate(BOB, ask, verdict=bob)
        store.rate(CAROL, ask, verdict=carol)
    store.rate(BOB, low2, verdict="correct")  # one rater of two: not judged yet

    board = store.dashboard(ADMIN)
    assert (board.asks, board.consented, board.rated, board.ratings, board.disputed) == (6, 5, 5, 9, 1)
    stats = {v.model_id: v for v in board.versions}
    va, vb = stats[a], stats["org/model-b"]
    assert (va.asks, va.judged, va.correct, va.accuracy) == (4, 2, 1, 0.5)
    # The high-resolution ratio is over auto-mode asks only (the "low" mode ask cannot request it).
    assert (va.auto_asks, va.high_res_requests, va.high_res_ratio) == (3, 1, pytest.approx(1 / 3))
    assert va.tokens_saved == [-64, 192, 192, 192] and va.tokens_saved_total == 512
    assert va.mean_latency_s == pytest.approx(2.0)
    assert (vb.asks, vb.judged, vb.accuracy, vb.auto_asks, vb.high_res_ratio, vb.tokens_saved_total) == (
        2, 1, 1.0, 2, 0.5, -64 + 300)

    assert [(s.rater, s.ratings, s.today) for s in board.annotators] == [("bob", 5, 5), ("carol", 4, 4)]
    assert [r.rater for r in board.latest][:2] == ["bob", "carol"]  # newest first, raters shown to admins
    seen_by_annotator = store.dashboard(BOB)
    assert seen_by_annotator.annotators is None
    assert {r.rater for r in seen_by_annotator.latest} == {None}
    assert len(seen_by_annotator.latest) == 9


# --- Roles -----------------------------------------------------------------------------------------------------


ADMIN_ONLY = {
    "disputed": lambda store, actor, ask: store.disputed(actor),
    "resolve": lambda store, actor, ask: store.resolve(actor, ask, verdict="correct", reference_answer="44.6",
                                                        decision=None),
    "rate as a resolution": lambda store, actor, ask: store.rate(actor, ask, verdict="correct", source="resolution"),
    "register_model_version": lambda store, actor, ask: store.register_model_version(actor, "org/sneaky"),
    "rated_asks": lambda store, actor, ask: store.rated_asks(actor),
}

ANNOTATOR_ONLY = {
    "rate": lambda store, actor, ask: store.rate(actor, ask, verdict="correct"),
    "skip": lambda store, actor, ask: store.skip(actor, ask),
    "next_ask": lambda store, actor, ask: store.next_ask(actor),
    "progress": lambda store, actor, ask: store.progress(actor),
    "item": lambda store, actor, ask: store.get_ask(actor, ask),
    "image_png": lambda store, actor, ask: store.image_png(actor, store.get_ask(ADMIN, ask).image_sha256),
    "dashboard": lambda store, actor, ask: store.dashboard(actor),
}


def test_admin_only_calls_refuse_anonymous_viewers_and_annotators(store: Store) -> None:
    ask = record(store)
    store.rate(BOB, ask, verdict="correct")
    store.rate(CAROL, ask, verdict="incorrect")  # disputed, so there is something to see
    before = row_counts(store)
    for actor, who in [(ANON, "not signed in"), (VIEWER, "signed in as vic (viewer)"),
                       (BOB, "signed in as bob (annotator)")]:
        for name, call in ADMIN_ONLY.items():
            with pytest.raises(PermissionDenied, match="Only admin users may") as refused:
                call(store, actor, ask)
            assert who in str(refused.value), name
    assert row_counts(store) == before
    for name, call in ADMIN_ONLY.items():  # the same calls work for an admin
        call(store, ADMIN, ask)


def test_annotation_calls_refuse_anonymous_and_viewers(store: Store) -> None:
    ask = record(store)
    before = row_counts(store)
    for actor in (ANON, Actor.anonymous(), VIEWER):
        for name, call in ANNOTATOR_ONLY.items():
            with pytest.raises(PermissionDenied, match="Only annotator or admin users may"):
                call(store, actor, ask)
    assert row_counts(store) == before
    for actor in (BOB, ADMIN):
        for call in ANNOTATOR_ONLY.values():
            call(store, actor, ask)


def test_thumbs_from_anonymous_visitors_only_when_allowed(make_store) -> None:
    strict = make_store()
    ask = record(strict, 0, by=Actor.anonymous("s-42"))
    vics = record(strict, 1, by=VIEWER)
    with pytest.raises(PermissionDenied, match="sign in to rate"):
        strict.rate(Actor.anonymous("s-42"), ask, verdict="correct", source="thumbs")
    assert row_counts(strict)["ratings"] == 0
    strict.rate(VIEWER, vics, verdict="correct", source="thumbs")  # signed-in viewers may always give thumbs

    open_ = make_store(anonymous_thumbs=True)
    open_.rate(Actor.anonymous("s-42"), ask, verdict="incorrect", source="thumbs")
    with pytest.raises(PermissionDenied):  # thumbs, yes; annotations, no
        open_.rate(Actor.anonymous("s-42"), ask, verdict="incorrect")
    ratings = [(r.rater, r.source, r.verdict) for a in (ask, vics) for r in open_.get_ask(ADMIN, a).ratings]
    assert ratings == [("anon:s-42", "thumbs", "incorrect"), ("vic", "thumbs", "correct")]


def test_actor_roles_are_checked() -> None:
    with pytest.raises(ValueError, match="Unknown role 'owner'"):
        Actor("ann", "owner")
    assert Actor.anonymous().rater == "anon:unknown" and not Actor.anonymous().signed_in
    assert (SYSTEM.name, SYSTEM.role) == ("system", "admin")


# --- Users -----------------------------------------------------------------------------------------------------


def test_sync_users_adds_and_updates_but_never_deletes(store: Store) -> None:
    store.sync_users([("ann", "admin"), ("bob", "annotator")])
    assert store.users() == [("ann", "admin"), ("bob", "annotator")]
    store.sync_users([("bob", "admin"), ("carol", "viewer")])
    assert store.users() == [("ann", "admin"), ("bob", "admin"), ("carol", "viewer")]
    with pytest.raises(StoreError, match="User 'eve' has unknown role 'boss'"):
        store.sync_users([("dave", "annotator"), ("eve", "boss")])
    assert store.users() == [("ann", "admin"), ("bob", "admin"), ("carol", "viewer")]  # dave rolled back too


def test_password_hashes_verify_only_the_right_password() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$16384$8$1$")
    assert verify_password("correct horse", stored)
    assert not verify_password("correct hors", stored)
    assert not verify_password("", stored) and not verify_password("correct horse", None)
    assert hash_password("correct horse") != stored  # salted
    assert hash_password("pw", salt=b"0" * 16) == hash_password("pw", salt=b"0" * 16)
    for broken in ("not a hash", "bcrypt$16384$8$1$AAAA$AAAA", stored.rsplit("$", 1)[0] + "$!!notbase64!!",
                   stored.replace("$16384$", "$x$")):
        assert not verify_password("correct horse", broken)
    with pytest.raises(StoreError, match="The password is empty"):
        hash_password("")


def test_users_from_the_environment_string() -> None:
    digest = hash_password("pw")
    entries = parse_users(f" ann:admin:{digest} ; bob:annotator\ncarol:viewer; ")
    assert entries == [UserEntry("ann", "admin", digest), UserEntry("bob", "annotator"),
                       UserEntry("carol", "viewer")]
    directory = Directory(entries)
    assert directory.role("bob") == "annotator" and directory.role("nobody") is None and directory.role(None) is None
    assert directory.check_password("ann", "pw") and not directory.check_password("ann", "nope")
    assert not directory.check_password("bob", "")  # no hash: Spaces sign-in only
    assert directory.can_sign_in and not Directory(entries[1:]).can_sign_in
    assert directory.pairs() == [("ann", "admin"), ("bob", "annotator"), ("carol", "viewer")]
    assert parse_users("") == []


def test_users_from_json_and_toml_files(tmp_path) -> None:
    digest = hash_password("pw")
    as_json = tmp_path / "users.json"
    as_json.write_text(json.dumps({"users": [{"name": "ann", "role": "admin", "password_hash": digest},
                                             {"name": "bob", "role": "annotator"}]}))
    as_toml = tmp_path / "users.toml"
    as_toml.write_text(f'[[users]]\nname = "ann"\nrole = "admin"\npassword_hash = "{digest}"\n\n'
                       '[[users]]\nname = "bob"\nrole = "annotator"\n')
    expected = [UserEntry("ann", "admin", digest), UserEntry("bob", "annotator")]
    assert parse_users(file=as_json) == parse_users(file=as_toml) == expected
    assert parse_users("carol:viewer", as_toml)[0] == UserEntry("carol", "viewer")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ann", "entry 'ann' must be name:role or name:role:hash"),
        ("ann:admin:hash:extra", "entry 'ann' must be name:role or name:role:hash"),
        (":admin", "must be name:role"),
        ("ann:owner", "User 'ann' has the role 'owner'; use one of viewer, annotator, admin"),
        ("ann:admin;ann:viewer", "The user 'ann' is configured twice"),
        ("system:admin", "The user name 'system' is reserved"),
    ],
)
def test_bad_user_entries_are_refused_clearly(spec: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        parse_users(spec)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("users.json", "{not json", "cannot be read"),
        ("users.toml", "users = [", "cannot be read"),
        ("users.json", json.dumps({"people": []}), "must hold a list named 'users'"),
        ("users.json", json.dumps([{"name": "ann", "role": "admin"}]), "must hold a list named 'users'"),
        ("users.json", json.dumps({"users": [{"name": "ann"}]}), "needs a name and a role"),
        ("users.toml", '[[users]]\nrole = "admin"\n', "needs a name and a role"),
        # Visitors' thumbs are stored as "anon:<session>"; no configured user may take such a name.
        ("users.json", json.dumps({"users": [{"name": "anon:s1", "role": "admin"}]}), "'anon:s1' is reserved"),
    ],
)
def test_bad_users_files_are_refused_clearly(tmp_path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(StoreError, match=message):
        parse_users(file=path)


def test_a_missing_users_file_is_named(tmp_path) -> None:
    with pytest.raises(StoreError, match="users file .*missing.json does not exist"):
        parse_users(file=tmp_path / "missing.json")


def test_a_set_of_ratings_is_added_whole_or_not_at_all(store: Store) -> None:
    """`rate_many` (a comparison's three answers rated at once): every rating in one transaction; one answer the
    rater may not rate refuses the whole set, and nothing is written."""
    mine = [record(store, seed, by=BOB) for seed in range(3)]
    theirs = record(store, 7, by=CAROL)
    ids = store.rate_many(BOB, {mine[0]: "correct", mine[1]: "incorrect", mine[2]: "correct"},
                          reference_answer="44.6", decision="needed_full", source="thumbs")
    assert len(set(ids)) == 3
    with store.db.read() as s:
        rows = s.execute(select(Rating.ask_id, Rating.verdict, Rating.decision, Rating.reference_answer)
                         .order_by(Rating.ask_id)).all()
    assert [tuple(r) for r in rows] == [(mine[0], "correct", "needed_full", "44.6"),
                                        (mine[1], "incorrect", "needed_full", "44.6"),
                                        (mine[2], "correct", "needed_full", "44.6")]
    before = row_counts(store)
    with pytest.raises(PermissionDenied):
        store.rate_many(BOB, {mine[0]: "incorrect", theirs: "correct"}, source="thumbs")
    with pytest.raises(StoreError, match="verdict"):
        store.rate_many(BOB, {mine[0]: "incorrect", mine[1]: "maybe"}, source="thumbs")
    assert row_counts(store) == before
