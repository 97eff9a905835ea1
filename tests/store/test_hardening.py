"""The store against hostile or unlucky input, on SQLite and PostgreSQL: thumbs on other people's answers, texts
no database can keep (NUL, lone surrogates), a database that cannot be reached, and texts too long to take.
"""

from __future__ import annotations

import json
import logging

import pytest
from sqlalchemy import func, select

from store.api import (
    Actor,
    PermissionDenied,
    Store,
    StoreError,
    StoreFailure,
    StoreUnavailable,
)
from store.export import export
from store.models import Ask, Judgement, ModelVersion, Rating, Skip, StoredImage, User
from tests.store.conftest import build_answer, sample_image
from tests.support.ports import free_port
from visionthink import protocol
from visionthink.text import MAX_QUESTION_CHARS, MAX_TEXT_CHARS
from visionthink.text import clean_text

ADMIN = Actor("ann", "admin")
BOB = Actor("bob", "annotator")
VIEWER = Actor("vic", "viewer")
VISITOR = Actor.anonymous("session-1")
OTHER_VISITOR = Actor.anonymous("session-2")


def record(store: Store, seed: int = 0, *, by: Actor = VISITOR, consent: bool = True, **answer) -> int:
    return store.record(build_answer(**answer), sample_image(seed), by, consent=consent)


def row_counts(store: Store) -> dict[str, int]:
    with store.db.read() as s:
        return {model.__tablename__: s.scalar(select(func.count()).select_from(model))
                for model in (User, ModelVersion, StoredImage, Ask, Rating, Skip, Judgement)}


# --- Thumbs are for one's own answers ----------------------------------------------------------------------------


def test_thumbs_rate_only_the_raters_own_answers(make_store) -> None:
    store = make_store(anonymous_thumbs=True)
    mine, theirs, vics = record(store, 0), record(store, 1, by=OTHER_VISITOR), record(store, 2, by=VIEWER)
    before = row_counts(store)
    for actor, ask in [(VISITOR, theirs), (VISITOR, vics), (VIEWER, mine), (Actor.anonymous(), mine),
                       (BOB, vics), (ADMIN, mine)]:
        with pytest.raises(PermissionDenied) as refused:
            store.rate(actor, ask, verdict="incorrect", reference_answer="no", source="thumbs")
        assert str(refused.value) == ("You can rate only the answers you asked for on this page; annotators rate "
                                      "other answers in the Annotate tab.")
    assert row_counts(store) == before

    store.rate(VISITOR, mine, verdict="correct", source="thumbs")
    store.rate(VIEWER, vics, verdict="incorrect", source="thumbs")
    # Annotations and resolutions of other people's answers are what annotators and admins are for.
    store.rate(BOB, theirs, verdict="correct")
    store.resolve(ADMIN, theirs, verdict="incorrect", reference_answer="no", decision=None)
    assert [(r.rater, r.source) for a in (mine, vics, theirs) for r in store.get_ask(ADMIN, a).ratings] == [
        ("anon:session-1", "thumbs"), ("vic", "thumbs"), ("bob", "annotation"), ("ann", "resolution")]


# --- Texts no database can keep ------------------------------------------------------------------------------------

BAD = {"nul": "\x00", "lone_surrogate": "\ud800", "half_a_pair": "a\ud83dz"}


@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
def test_every_stored_text_is_cleaned_and_reads_back(make_store, tmp_path, bad: str) -> None:
    def dirty(text: str) -> str:
        return f"{text}{bad}!"

    def clean(text: str) -> str:
        return clean_text(dirty(text))

    assert clean("x") != dirty("x")  # there is something to clean
    store = make_store(anonymous_thumbs=True)
    store.sync_users([(dirty("ann"), "admin"), (dirty("bob"), "annotator")])
    admin, bob, visitor = Actor(dirty("ann"), "admin"), Actor(dirty("bob"), "annotator"), Actor.anonymous(dirty("s"))

    answer = build_answer(dirty("How many?"), model=dirty("org/model"), answer=dirty("44.6"))
    answer.turns[0].turn = protocol.parse_turn(protocol.tool_call_turn_text(dirty("Too small.")))
    answer.turns[-1].turn = protocol.parse_turn(dirty("<answer>44.6</answer>"))
    ask = store.record(answer, sample_image(), visitor, consent=False, revision=dirty("r1"), source=dirty("local"))
    store.set_consent(visitor, ask, True)  # the visitor is still recognised as the asker...
    store.rate(visitor, ask, verdict="incorrect", reference_answer=dirty("45"), comment=dirty("close"),
               source="thumbs")  # ...and may give thumbs
    store.rate(bob, ask, verdict="incorrect", reference_answer=dirty("46"), comment=dirty("off"),
               decision="needed_full")
    store.skip(bob, ask)
    store.resolve(admin, ask, verdict="incorrect", reference_answer=dirty("47"), decision="needed_full",
                  comment=dirty("final"))
    store.register_model_version(admin, dirty("org/model"), dirty("r1"), notes=dirty("notes"))
    assert [t.reference_answer for t in store.judge_targets(admin, dirty("judge"))] == [clean("47")]
    store.record_judgement(admin, ask, dirty("judge"), 1, dirty("47"))

    assert store.users() == [(clean("ann"), "admin"), (clean("bob"), "annotator")]
    view = store.get_ask(admin, ask)
    assert (view.question, view.answer, view.model_id, view.model_revision, view.consent) == (
        clean("How many?"), clean("44.6"), clean("org/model"), clean("r1"), True)
    assert view.turns[0].turn.think == clean("Too small.")
    assert view.turns[-1].turn.text == clean("<answer>44.6</answer>")
    assert [(r.rater, r.reference_answer, r.comment) for r in view.ratings] == [
        ("anon:" + clean("s"), clean("45"), clean("close")), (clean("bob"), clean("46"), clean("off")),
        (clean("ann"), clean("47"), clean("final"))]
    assert [(m, r, source) for m, r, source, _ in store.model_versions()] == [(clean("org/model"), clean("r1"),
                                                                             clean("local"))]
    with store.db.read() as s:
        assert s.scalar(select(Ask.asked_by)) == "anon:" + clean("s")
        assert s.scalar(select(ModelVersion.notes)) == clean("notes")
        assert s.execute(select(Judgement.judge, Judgement.reference_answer)).one() == (clean("judge"), clean("47"))
        assert s.scalar(select(Skip.rater)) == clean("bob")
    assert store.judge_targets(admin, dirty("judge")) == []  # the judge is found again under its dirty name
    assert store.next_ask(bob) is None and store.progress(bob).done == 1
    assert [a.judge for a in store.dashboard(admin).agreement] == [clean("judge")]

    result = export(store, admin, "jsonl", tmp_path / "out")
    [item] = [json.loads(line) for line in (result.path / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    assert (item["question"], item["answer"], item["model"]) == (
        clean("How many?"), clean("44.6"), {"id": clean("org/model"), "revision": clean("r1")})
    assert [r["comment"] for r in item["ratings"]] == [clean("close"), clean("off"), clean("final")]


# --- A database that cannot be reached -----------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def unreachable(request: pytest.FixtureRequest, tmp_path) -> tuple[str, list[str]]:
    """A database URL nothing answers at, and the parts of it no message for people may name."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}", [str(tmp_path), "sqlite3"]  # a folder: SQLite cannot open it
    port = str(free_port())  # nothing listens there
    url = f"postgresql+psycopg://vtuser:hunter2@127.0.0.1:{port}/vt_nowhere"
    return url, ["127.0.0.1", port, "vtuser", "hunter2", "vt_nowhere", "psycopg", "postgres"]


def _told_plainly(refused: pytest.ExceptionInfo, secrets: list[str], caplog: pytest.LogCaptureFixture) -> None:
    error = refused.value
    message = str(error)
    assert message.startswith(f"The database cannot be reached right now (reference {error.reference}).")
    for secret in [*secrets, "SELECT", "INSERT", "SQL", "[parameters"]:
        assert secret not in message
    assert error.__cause__ is None and error.__suppress_context__  # no chained traceback to show by mistake
    assert error.reference in caplog.text and secrets[0] in caplog.text  # the operator's story is in the log


def test_an_unreachable_database_is_told_without_its_address(unreachable, caplog) -> None:
    url, secrets = unreachable
    caplog.set_level(logging.ERROR, logger="store.db")
    store = Store(url, upgrade=False)
    calls = {
        "read": lambda: store.users(),
        "write": lambda: record(store),
        "dashboard": lambda: store.dashboard(ADMIN),
        "export": lambda: list(store.rated_asks(ADMIN)),
    }
    try:
        for name, call in calls.items():
            caplog.clear()
            with pytest.raises(StoreUnavailable) as refused:
                call()
            _told_plainly(refused, secrets, caplog)
    finally:
        store.close()


def test_starting_on_an_unreachable_database_is_refused_plainly(unreachable, caplog) -> None:
    url, secrets = unreachable
    caplog.set_level(logging.ERROR, logger="store.db")
    with pytest.raises(StoreUnavailable) as refused:
        Store(url)  # runs the schema upgrade
    _told_plainly(refused, secrets, caplog)


def test_an_unexpected_database_error_is_told_without_sql_or_parameters(store: Store, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="store.db")
    with pytest.raises(StoreFailure) as failed:
        with store.db.write() as s:  # a rating of an answer that does not exist: a foreign key violation
            s.add(Rating(ask_id=4242, rater="hunter2", source="annotation", verdict="correct", comment=""))
    message = str(failed.value)
    assert message == (f"The database could not complete this request (reference {failed.value.reference}). Try "
                       f"again; if it keeps happening, give the operator this reference.")
    assert failed.value.__cause__ is None and failed.value.__suppress_context__
    assert failed.value.reference in caplog.text and "hunter2" in caplog.text and "IntegrityError" in caplog.text
    assert row_counts(store)["ratings"] == 0


# --- Text limits -------------------------------------------------------------------------------------------------


def test_a_huge_question_is_refused_before_anything_is_written(store: Store) -> None:
    assert (store.max_question_chars, store.max_text_chars) == (MAX_QUESTION_CHARS, MAX_TEXT_CHARS)
    with pytest.raises(StoreError) as refused:
        store.record(build_answer("x" * 1_000_000), sample_image(), VISITOR, consent=True)
    assert str(refused.value) == (f"The question is 1,000,000 characters long; the limit is "
                                  f"{MAX_QUESTION_CHARS:,}. Shorten it and try again.")
    assert not isinstance(refused.value, (StoreFailure, StoreUnavailable))
    assert set(row_counts(store).values()) == {0}


def test_text_limits_are_store_options(make_store) -> None:
    store = make_store(max_question_chars=10, max_text_chars=5, anonymous_thumbs=True)
    ask = store.record(build_answer("q" * 9 + "\x00" + "?"), sample_image(), VISITOR, consent=True)  # 10 once clean
    with pytest.raises(StoreError, match="The question is 11 characters long; the limit is 10"):
        store.record(build_answer("q" * 11), sample_image(), VISITOR, consent=True)
    store.rate(BOB, ask, verdict="correct", reference_answer=" 12345 ", comment="abcde")  # exactly at the limit
    before = row_counts(store)
    too_long = {
        "reference answer": lambda: store.rate(BOB, ask, verdict="correct", reference_answer="123456"),
        "comment": lambda: store.rate(BOB, ask, verdict="correct", comment="abcdef"),
        "thumbs reference": lambda: store.rate(VISITOR, ask, verdict="incorrect", reference_answer="123456",
                                               source="thumbs"),
        "resolution reference": lambda: store.resolve(ADMIN, ask, verdict="correct", reference_answer="123456",
                                                      decision=None),
        "resolution comment": lambda: store.resolve(ADMIN, ask, verdict="correct", reference_answer=None,
                                                    decision=None, comment="abcdef"),
    }
    for name, call in too_long.items():
        with pytest.raises(StoreError, match="is 6 characters long; the limit is 5") as refused:
            call()
        assert str(refused.value).split(" is 6")[0] in ("The reference answer", "The comment"), name
    assert row_counts(store) == before


@pytest.mark.parametrize("option", ["max_question_chars", "max_text_chars"])
def test_a_text_limit_must_be_positive(store_url: str, option: str) -> None:
    with pytest.raises(StoreError, match=f"The store's {option} must be at least 1, not 0"):
        Store(store_url, **{option: 0})
