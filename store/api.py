"""The store's API: what the app and ``train/`` may do with stored answers and ratings, and who may do it.

Every call takes an ``Actor``; roles are checked here, not only by hiding parts of the page. No SQLAlchemy object
leaves this module: callers get plain dataclasses. Every text written goes through ``visionthink.text`` first, so
SQLite and PostgreSQL keep the same text and neither refuses it.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone

from PIL import Image as PILImage
from sqlalchemy import delete, distinct, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from store.consensus import WITHDRAWN, Consensus, Vote, consensus, normalise
from store.db import Database, StoreError, StoreFailure, StoreUnavailable
from store.models import (
    DECISIONS,
    ROLES,
    SOURCES,
    VERDICTS,
    Ask,
    Judgement,
    ModelVersion,
    Rating,
    Skip,
    StoredImage,
    User,
    utcnow,
)
from visionthink.clock import as_utc
from visionthink.engine import MODES, Answer, TurnRecord, turns_from_json, turns_to_json
from visionthink.images import TokenReport
from visionthink.intervals import wilson_interval
from visionthink.text import MAX_QUESTION_CHARS, MAX_TEXT_CHARS, TextError, bounded_text, clean_text

LATEST_RATINGS = 50
#: Answers deleted per transaction by ``purge_unconsented``, so a big purge never holds one giant transaction.
PURGE_BATCH = 500


class PermissionDenied(StoreError):
    """The actor's role does not allow this; the message says which role would."""


class NotFound(StoreError):
    pass


@dataclass(frozen=True)
class Actor:
    """Who is calling: a signed-in user with a role, an anonymous visitor (one browser session), or the system."""

    name: str | None
    role: str
    session: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"Unknown role {self.role!r}; roles are {', '.join(ROLES)}.")

    @classmethod
    def anonymous(cls, session: str | None = None) -> Actor:
        return cls(None, "viewer", session)

    @classmethod
    def system(cls) -> Actor:
        """The operator on the machine (command-line tools, training): admin rights."""
        return cls("system", "admin")

    @property
    def rater(self) -> str:
        """The name stored and compared as ``asked_by`` and ``rater``, cleaned like every stored text."""
        return clean_text(self.name) if self.name else f"anon:{clean_text(self.session) or 'unknown'}"

    @property
    def signed_in(self) -> bool:
        return self.name is not None


def require(actor: Actor, *roles: str, to: str) -> None:
    if actor.role not in roles:
        you = f"signed in as {actor.name} ({actor.role})" if actor.signed_in else "not signed in"
        raise PermissionDenied(f"Only {' or '.join(roles)} users may {to}; you are {you}.")


# --- Views returned to callers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RatingView:
    id: int
    ask_id: int
    rater: str | None  # None when the caller may not see who rated
    source: str
    verdict: str
    reference_answer: str | None
    decision: str | None
    comment: str
    created_at: datetime


@dataclass(frozen=True)
class AskView:
    id: int
    image_sha256: str
    image_size: tuple[int, int]
    question: str
    model_id: str
    model_revision: str
    mode: str
    turns: list[TurnRecord]
    answer: str | None
    requested_high_res: bool
    stop_reason: str
    tokens: TokenReport
    latency_s: float
    consent: bool
    created_at: datetime
    ratings: list[RatingView] = field(default_factory=list)
    consensus: Consensus | None = None
    comparison: str | None = None  # shared by the answers of one comparison


@dataclass(frozen=True)
class QueueProgress:
    """Where an annotator stands: ``done`` items rated since a moment (midnight, or when they started working) and
    ``left`` in their queue, both among the items that match their filters."""

    done: int
    left: int

    @property
    def position(self) -> int:
        """The number of the item on screen in this stretch of work ("Item 3 of 12")."""
        return self.done + 1

    @property
    def total(self) -> int:
        return self.done + self.left


@dataclass(frozen=True)
class QueueFilter:
    """Which items of an annotator's queue to offer; None means any."""

    model_version: int | None = None  # a ``QueueModel.id``
    mode: str | None = None  # auto | low | high
    requested_high_res: bool | None = None  # whether the model asked for the full image

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise StoreError(f"Unknown mode {self.mode!r}; the modes are {', '.join(MODES)}.")


@dataclass(frozen=True)
class QueueModel:
    """A model version with answers for the annotation queue, as its filter offers it."""

    id: int
    model_id: str
    revision: str


@dataclass(frozen=True)
class ModeStats:
    """A model version's figures over its answers in one mode."""

    mode: str
    asks: int
    judged: int  # answers with a human consensus verdict
    correct: int
    accuracy: float | None
    accuracy_ci: tuple[float, float] | None  # 95% Wilson score interval of correct / judged
    high_res_requests: int
    high_res_ratio: float | None  # auto mode only: in low and high the model cannot ask for the full image
    tokens_saved_total: int
    mean_latency_s: float | None


@dataclass(frozen=True)
class VersionStats:
    model_id: str
    revision: str
    asks: int
    judged: int  # answers with a human consensus verdict
    correct: int
    accuracy: float | None
    auto_asks: int
    high_res_requests: int
    high_res_ratio: float | None
    tokens_saved_total: int
    tokens_saved: list[int]  # per ask, for the distribution
    mean_latency_s: float | None
    accuracy_ci: tuple[float, float] | None = None  # 95% Wilson score interval of correct / judged
    by_mode: list[ModeStats] = field(default_factory=list)  # auto, low, high first; modes without answers left out


@dataclass(frozen=True)
class JudgeAgreement:
    """How often an automatic judge agrees with the human consensus verdict, for one model version."""

    judge: str
    model_id: str
    revision: str
    items: int  # answers with both a human consensus verdict and a judge verdict
    agreement: float | None
    kappa: float | None  # Cohen's kappa; None when undefined (one class only on both sides)
    judge_failures: int


@dataclass(frozen=True)
class JudgeTarget:
    """A stored answer with a human consensus verdict, for a judge to score against the consensus reference."""

    ask_id: int
    question: str
    reference_answer: str
    prediction: str | None


@dataclass(frozen=True)
class AnnotatorStats:
    rater: str
    ratings: int
    today: int


@dataclass(frozen=True)
class Dashboard:
    asks: int
    consented: int
    rated: int
    ratings: int
    disputed: int
    versions: list[VersionStats]
    latest: list[RatingView]
    annotators: list[AnnotatorStats] | None  # admins only
    agreement: list[JudgeAgreement] = field(default_factory=list)


@dataclass(frozen=True)
class PurgeReport:
    """What ``Store.purge_unconsented`` deleted."""

    asks: int = 0
    ratings: int = 0
    skips: int = 0
    judgements: int = 0
    images: int = 0
    image_bytes: int = 0


@dataclass(frozen=True)
class RatedAsk:
    """An answer with its consensus and the votes behind it, as exports need it."""

    ask: AskView
    image_png: bytes
    votes: list[RatingView]
    consensus: Consensus


# --- The store -------------------------------------------------------------------------------------------------


class Store:
    """All reads and writes of stored answers and ratings.

    ``max_question_chars`` bounds the question ``record`` stores; ``max_text_chars`` bounds reference answers,
    comments and model notes. Longer texts are refused with a ``StoreError`` before anything is written.
    """

    def __init__(self, url: str, *, ratings_per_item: int = 2, anonymous_thumbs: bool = False,
                 upgrade: bool = True, max_question_chars: int = MAX_QUESTION_CHARS,
                 max_text_chars: int = MAX_TEXT_CHARS) -> None:
        if ratings_per_item < 1:
            raise StoreError(f"VISIONTHINK_RATINGS_PER_ITEM must be at least 1, not {ratings_per_item}.")
        for name, value in (("max_question_chars", max_question_chars), ("max_text_chars", max_text_chars)):
            if value < 1:
                raise StoreError(f"The store's {name} must be at least 1, not {value}.")
        self.db = Database(url)
        self.ratings_per_item = ratings_per_item
        self.anonymous_thumbs = anonymous_thumbs
        self.max_question_chars = max_question_chars
        self.max_text_chars = max_text_chars
        if upgrade:
            self.db.upgrade()

    def close(self) -> None:
        self.db.dispose()

    # --- users ---

    def sync_users(self, users: Iterable[tuple[str, str]]) -> None:
        """Make the users table match the configured (name, role) pairs; users are never deleted."""
        with self.db.write() as s:
            existing = {u.name: u for u in s.scalars(select(User))}
            for name, role in users:
                name = _bounded(name, _length(User.name), "user name")
                if role not in ROLES:
                    raise StoreError(f"User {name!r} has unknown role {role!r}; roles are {', '.join(ROLES)}.")
                if name in existing:
                    existing[name].role = role
                    continue
                try:
                    with s.begin_nested():
                        user = User(name=name, role=role)
                        s.add(user)
                except IntegrityError:  # another replica, starting at the same moment, added them first
                    user = s.scalars(select(User).where(User.name == name)).one()
                    user.role = role
                existing[name] = user

    def users(self) -> list[tuple[str, str]]:
        with self.db.read() as s:
            return [(u.name, u.role) for u in s.scalars(select(User).order_by(User.name))]

    # --- model versions ---

    def register_model_version(self, actor: Actor, model_id: str, revision: str = "", source: str = "hub",
                               notes: str = "") -> int:
        require(actor, "admin", to="register model versions")
        notes = _bounded(notes, self.max_text_chars, "model note")
        with self.db.write() as s:
            version = self._model_version(s, model_id, revision or "", source)
            if notes:
                version.notes = notes
            return version.id

    def model_versions(self) -> list[tuple[str, str, str, datetime]]:
        with self.db.read() as s:
            rows = s.scalars(select(ModelVersion).order_by(ModelVersion.created_at, ModelVersion.id))
            return [(v.model_id, v.revision, v.source, v.created_at) for v in rows]

    def _model_version(self, s: Session, model_id: str, revision: str, source: str) -> ModelVersion:
        model_id = _bounded(model_id, _length(ModelVersion.model_id), "model id")
        revision = _bounded(revision, _length(ModelVersion.revision), "model revision")
        source = _bounded(source, _length(ModelVersion.source), "model source")
        query = select(ModelVersion).where(ModelVersion.model_id == model_id, ModelVersion.revision == revision)
        version = s.scalars(query).first()
        if version is None:
            try:
                with s.begin_nested():
                    version = ModelVersion(model_id=model_id, revision=revision, source=source)
                    s.add(version)
            except IntegrityError:  # another writer created it first
                version = s.scalars(query).one()
        return version

    # --- recording answers ---

    def record(self, answer: Answer, original: PILImage.Image, actor: Actor, *, consent: bool,
               revision: str = "", source: str = "hub", comparison: str | None = None) -> int:
        """Store an answer and its image (as a metadata-free PNG); returns the stored answer's id. A question longer
        than ``max_question_chars`` is refused before anything is written. The answers of one comparison (the same
        image and question in each mode) are recorded with the same ``comparison`` key."""
        question = _bounded(answer.question, self.max_question_chars, "question")
        png = encode_png(original)
        sha = hashlib.sha256(png).hexdigest()
        turns = clean_json(turns_to_json(answer.turns))
        final = None if answer.final_answer is None else clean_text(answer.final_answer)
        t = answer.tokens
        with self.db.write() as s:
            image = self._image(s, sha, png, original.size)
            version = self._model_version(s, answer.model, revision or "", source)
            ask = Ask(
                image_id=image.id, question=question, question_key=question_key(question),
                model_version_id=version.id, mode=clean_text(answer.mode), turns=turns,
                requested_high_res=answer.requested_high_res, answer=final, stop_reason=clean_text(answer.stop_reason),
                low_res_tokens=t.low_res, high_res_tokens=t.high_res, full_res_tokens=t.full_res,
                saved_tokens=t.saved, latency_s=answer.latency_s, asked_by=actor.rater, consent=bool(consent),
                comparison=comparison,
            )
            s.add(ask)
            s.flush()
            return ask.id

    def _image(self, s: Session, sha: str, png: bytes, size: tuple[int, int]) -> StoredImage:
        # Locked (shared) until the answer is committed, so a concurrent purge cannot delete the image under it.
        query = select(StoredImage).where(StoredImage.sha256 == sha).with_for_update(read=True, key_share=True)
        image = s.scalars(query).first()
        if image is None:
            try:
                with s.begin_nested():
                    image = StoredImage(sha256=sha, width=size[0], height=size[1], byte_size=len(png), data=png)
                    s.add(image)
            except IntegrityError:
                image = s.scalars(query).one()
        return image

    def set_consent(self, actor: Actor, ask_id: int, consent: bool) -> None:
        """The asker (or an admin) changes their mind about training use."""
        with self.db.write() as s:
            asked_by = self._locked_asker(s, ask_id, for_update=True)
            if actor.role != "admin" and asked_by != actor.rater:
                raise PermissionDenied("Only the person who asked, or an admin, may change the consent of an answer.")
            s.execute(update(Ask).where(Ask.id == ask_id).values(consent=bool(consent)),
                      execution_options={"synchronize_session": False})

    @staticmethod
    def _locked_asker(s: Session, ask_id: int, *, for_update: bool = False) -> str:
        """Who asked ``ask_id``; its row stays locked until the transaction ends (shared, or for updating the ask),
        so a concurrent purge cannot delete it under a new rating. ``NotFound`` when there is no such answer."""
        query = select(Ask.asked_by).where(Ask.id == ask_id).with_for_update(read=not for_update, key_share=True)
        asked_by = s.scalar(query)
        if asked_by is None:
            raise NotFound(f"There is no stored answer #{ask_id}.")
        return asked_by

    # --- rating ---

    def rate(self, actor: Actor, ask_id: int, *, verdict: str, reference_answer: str | None = None,
             decision: str | None = None, comment: str = "", source: str = "annotation") -> int:
        """Add a rating; returns its id. Ratings are never overwritten: a later one supersedes.

        Thumbs are for rating one's own answers: only the actor who asked may give them.
        """
        return self.rate_many(actor, {ask_id: verdict}, reference_answer=reference_answer, decision=decision,
                              comment=comment, source=source)[0]

    def rate_many(self, actor: Actor, verdicts: dict[int, str], *, reference_answer: str | None = None,
                  decision: str | None = None, comment: str = "", source: str = "annotation") -> list[int]:
        """Rate several answers at once (``{ask id: verdict}``, e.g. the answers of one comparison) with the same
        reference, decision and comment, in one transaction: all are added or none. Returns the ratings' ids."""
        if source not in SOURCES:
            raise StoreError(f"Unknown rating source {source!r}.")
        if source == "annotation":
            require(actor, "annotator", "admin", to="annotate answers")
        elif source == "resolution":
            require(actor, "admin", to="resolve disagreements")
        elif not actor.signed_in and not self.anonymous_thumbs:
            raise PermissionDenied("Rating is for signed-in users here; sign in to rate answers.")
        for verdict in verdicts.values():
            if verdict not in VERDICTS:
                raise StoreError(f"The verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}.")
        if decision is not None and decision not in DECISIONS:
            raise StoreError(f"The decision must be one of {', '.join(DECISIONS)}, not {decision!r}.")
        reference_answer = _bounded(clean_text(reference_answer).strip(), self.max_text_chars, "reference answer")
        comment = _bounded(clean_text(comment).strip(), self.max_text_chars, "comment")
        with self.db.write() as s:
            ratings = []
            for ask_id, verdict in verdicts.items():
                asked_by = self._locked_asker(s, ask_id)
                if source == "thumbs" and asked_by != actor.rater:
                    raise PermissionDenied(
                        "You can rate only the answers you asked for on this page; annotators rate other answers in "
                        "the Annotate tab.")
                ratings.append(Rating(ask_id=ask_id, rater=actor.rater, source=source, verdict=verdict,
                                      reference_answer=reference_answer or None, decision=decision, comment=comment))
            s.add_all(ratings)
            s.flush()
            return [r.id for r in ratings]

    def skip(self, actor: Actor, ask_id: int) -> None:
        require(actor, "annotator", "admin", to="work through the annotation queue")
        with self.db.write() as s:
            self._locked_asker(s, ask_id)
            exists = s.scalars(select(Skip).where(Skip.ask_id == ask_id, Skip.rater == actor.rater)).first()
            if exists is None:
                try:
                    with s.begin_nested():
                        s.add(Skip(ask_id=ask_id, rater=actor.rater))
                except IntegrityError:  # the same annotator skipped it at the same moment, in another tab
                    pass

    def withdraw(self, actor: Actor, ask_id: int) -> int:
        """Undo the annotator's rating of ``ask_id``: a withdrawal is appended (nothing is deleted), after which none
        of their ratings of it counts anywhere (consensus, dashboard, exports) and it is back in their queue, until
        they rate it again. Returns the withdrawal's id; ``StoreError`` when they have no rating of it to undo."""
        require(actor, "annotator", "admin", to="work through the annotation queue")
        with self.db.write() as s:
            self._locked_asker(s, ask_id)
            latest = s.scalar(select(Rating.verdict).where(
                Rating.ask_id == ask_id, Rating.rater == actor.rater, Rating.source == "annotation",
            ).order_by(Rating.id.desc()).limit(1))
            if latest is None or latest == WITHDRAWN:
                raise StoreError(f"You have no rating of #{ask_id} to undo.")
            withdrawal = Rating(ask_id=ask_id, rater=actor.rater, source="annotation", verdict=WITHDRAWN, comment="")
            s.add(withdrawal)
            s.flush()
            return withdrawal.id

    def resolve(self, actor: Actor, ask_id: int, *, verdict: str, reference_answer: str | None,
                decision: str | None, comment: str = "") -> int:
        """An admin's final word on a disputed item."""
        return self.rate(actor, ask_id, verdict=verdict, reference_answer=reference_answer, decision=decision,
                         comment=comment, source="resolution")

    # --- the annotation queue ---

    def next_ask(self, actor: Actor, filters: QueueFilter | None = None) -> AskView | None:
        """The consented answer that most needs a rating from this annotator: fewest ratings first, oldest first;
        only answers that match ``filters``."""
        require(actor, "annotator", "admin", to="work through the annotation queue")
        with self.db.read() as s:
            ask_id = s.scalars(self._queue_query(actor, filters).limit(1)).first()
            return self._view(s, ask_id, actor) if ask_id is not None else None

    def progress(self, actor: Actor, filters: QueueFilter | None = None, *,
                 since: datetime | None = None) -> QueueProgress:
        """How many items the annotator rated since ``since`` (default: midnight today), each once, not counting
        ratings they withdrew; and how many are left in their queue. Both count only items that match ``filters``."""
        require(actor, "annotator", "admin", to="work through the annotation queue")
        start = self._db_time(since or datetime.combine(date.today(), time.min).astimezone(timezone.utc))
        with self.db.read() as s:
            done = s.scalar(_matching(
                select(func.count(distinct(Rating.ask_id))).join(Ask, Ask.id == Rating.ask_id).where(
                    Rating.rater == actor.rater, Rating.source == "annotation", Rating.created_at >= start,
                    _still_counts(),
                ), filters))
            left = s.scalar(select(func.count()).select_from(self._queue_query(actor, filters).subquery()))
        return QueueProgress(done=done or 0, left=left or 0)

    def queue_models(self, actor: Actor) -> list[QueueModel]:
        """The model versions that answered consented questions, for the queue's model filter."""
        require(actor, "annotator", "admin", to="work through the annotation queue")
        with self.db.read() as s:
            used = select(Ask.model_version_id).where(Ask.consent.is_(True))
            rows = s.scalars(select(ModelVersion).where(ModelVersion.id.in_(used))
                             .order_by(ModelVersion.model_id, ModelVersion.revision))
            return [QueueModel(v.id, v.model_id, v.revision) for v in rows]

    def last_rated(self, actor: Actor, *, before: int | None = None) -> AskView | None:
        """The item this annotator rated most recently (by their latest rating of it that counts), or, given one of
        their ratings' ids as ``before``, the item they rated last before that: to go back through their work. The
        view's ``ratings`` hold their ratings of it, oldest first; None when there is no such item."""
        require(actor, "annotator", "admin", to="work through the annotation queue")
        last = func.max(Rating.id)
        query = (select(Rating.ask_id)
                 .where(Rating.rater == actor.rater, Rating.source == "annotation", _still_counts())
                 .group_by(Rating.ask_id))
        if before is not None:
            query = query.having(last < before)
        with self.db.read() as s:
            ask_id = s.scalars(query.order_by(last.desc()).limit(1)).first()
            return self._view(s, ask_id, actor) if ask_id is not None else None

    def _queue_query(self, actor: Actor, filters: QueueFilter | None = None):
        counts = (
            select(Rating.ask_id, func.count(distinct(Rating.rater)).label("n"))
            .where(Rating.source == "annotation", _still_counts())
            .group_by(Rating.ask_id)
            .subquery()
        )
        mine = select(Rating.ask_id).where(Rating.rater == actor.rater, Rating.source == "annotation", _still_counts())
        skipped = select(Skip.ask_id).where(Skip.rater == actor.rater)
        resolved = select(Rating.ask_id).where(Rating.source == "resolution")  # an admin had the last word
        n = func.coalesce(counts.c.n, 0)
        query = (
            select(Ask.id)
            .outerjoin(counts, counts.c.ask_id == Ask.id)
            .where(Ask.consent.is_(True), n < self.ratings_per_item, Ask.id.not_in(mine), Ask.id.not_in(skipped),
                   Ask.id.not_in(resolved))
        )
        return _matching(query, filters).order_by(n, Ask.created_at, Ask.id)

    def get_ask(self, actor: Actor, ask_id: int) -> AskView:
        require(actor, "annotator", "admin", to="open stored answers")
        with self.db.read() as s:
            return self._view(s, ask_id, actor)

    def image_png(self, actor: Actor, sha256: str) -> bytes:
        require(actor, "annotator", "admin", to="open stored images")
        sha256 = clean_text(sha256)
        with self.db.read() as s:
            data = s.scalar(select(StoredImage.data).where(StoredImage.sha256 == sha256))
        if data is None:
            raise NotFound(f"There is no stored image {sha256[:12]}….")
        return data

    def disputed(self, actor: Actor) -> list[AskView]:
        require(actor, "admin", to="see disputed items")
        with self.db.read() as s:
            votes = self._votes(s)
            ids = sorted(i for i, v in votes.items() if consensus(v, self.ratings_per_item).disputed)
            return [self._view(s, i, actor, votes.get(i, [])) for i in ids]

    # --- dashboard ---

    def dashboard(self, actor: Actor) -> Dashboard:
        require(actor, "annotator", "admin", to="see the dashboard")
        admin = actor.role == "admin"
        with self.db.read() as s:
            votes = self._votes(s)
            verdicts = {ask_id: consensus(v, self.ratings_per_item) for ask_id, v in votes.items()}
            rows = s.execute(
                select(Ask.id, Ask.model_version_id, Ask.mode, Ask.requested_high_res, Ask.saved_tokens,
                       Ask.latency_s, Ask.consent).order_by(Ask.id)
            ).all()
            versions = {v.id: v for v in s.scalars(select(ModelVersion).order_by(ModelVersion.id))}
            per_version: dict[int, list] = defaultdict(list)
            for row in rows:
                per_version[row.model_version_id].append(row)
            stats = [self._version_stats(versions[vid], asks, verdicts) for vid, asks in per_version.items()]
            latest_rows = s.scalars(
                select(Rating).where(_still_counts()).order_by(Rating.id.desc()).limit(LATEST_RATINGS)).all()
            annotators = None
            if admin:
                start = datetime.combine(date.today(), time.min).astimezone(timezone.utc)
                totals = s.execute(
                    select(Rating.rater, func.count(), func.count().filter(Rating.created_at >= start))
                    .where(Rating.source == "annotation", _still_counts()).group_by(Rating.rater)
                    .order_by(Rating.rater)
                ).all()
                annotators = [AnnotatorStats(r, n, today) for r, n, today in totals]
            agreement = self._agreement(s, verdicts, versions)
            return Dashboard(
                agreement=agreement,
                asks=len(rows),
                consented=sum(1 for r in rows if r.consent),
                rated=sum(1 for v in votes.values() if v),
                ratings=s.scalar(select(func.count()).select_from(Rating).where(_still_counts())) or 0,
                disputed=sum(1 for c in verdicts.values() if c.disputed),
                versions=stats,
                latest=[_rating_view(r, show_rater=admin) for r in latest_rows],
                annotators=annotators,
            )

    @staticmethod
    def _version_stats(version: ModelVersion, asks: list, verdicts: dict[int, Consensus]) -> VersionStats:
        judged = [verdicts[a.id].verdict for a in asks if a.id in verdicts and verdicts[a.id].complete]
        correct = sum(1 for v in judged if v == "correct")
        auto = [a for a in asks if a.mode == "auto"]
        high = sum(1 for a in auto if a.requested_high_res)
        saved = [a.saved_tokens for a in asks]
        modes = [m for m in MODES if any(a.mode == m for a in asks)]
        modes += sorted({a.mode for a in asks} - set(modes))  # a mode this code does not know still shows
        return VersionStats(
            model_id=version.model_id, revision=version.revision, asks=len(asks), judged=len(judged), correct=correct,
            accuracy=correct / len(judged) if judged else None, auto_asks=len(auto), high_res_requests=high,
            high_res_ratio=high / len(auto) if auto else None, tokens_saved_total=sum(saved), tokens_saved=saved,
            mean_latency_s=sum(a.latency_s for a in asks) / len(asks) if asks else None,
            accuracy_ci=wilson_interval(correct, len(judged)),
            by_mode=[Store._mode_stats(m, [a for a in asks if a.mode == m], verdicts) for m in modes],
        )

    @staticmethod
    def _mode_stats(mode: str, asks: list, verdicts: dict[int, Consensus]) -> ModeStats:
        judged = [verdicts[a.id].verdict for a in asks if a.id in verdicts and verdicts[a.id].complete]
        correct = sum(1 for v in judged if v == "correct")
        high = sum(1 for a in asks if a.requested_high_res)
        return ModeStats(
            mode=mode, asks=len(asks), judged=len(judged), correct=correct,
            accuracy=correct / len(judged) if judged else None, accuracy_ci=wilson_interval(correct, len(judged)),
            high_res_requests=high, high_res_ratio=high / len(asks) if mode == "auto" and asks else None,
            tokens_saved_total=sum(a.saved_tokens for a in asks),
            mean_latency_s=sum(a.latency_s for a in asks) / len(asks) if asks else None,
        )

    # --- automatic judges against people ---

    def judge_targets(self, actor: Actor, judge: str, *, rejudge: bool = False) -> list[JudgeTarget]:
        """Answers with a complete human consensus and a reference, that ``judge`` has not scored yet."""
        require(actor, "admin", to="score stored answers with a judge")
        judge = clean_text(judge)
        with self.db.read() as s:
            votes = self._votes(s)
            done = set() if rejudge else set(s.scalars(select(Judgement.ask_id).where(Judgement.judge == judge)))
            targets = []
            for ask in s.scalars(select(Ask).order_by(Ask.id)):
                agreed = consensus(votes.get(ask.id, []), self.ratings_per_item)
                if ask.id in done or not agreed.complete or not agreed.reference_answer:
                    continue
                targets.append(JudgeTarget(ask.id, ask.question, agreed.reference_answer, ask.answer))
            return targets

    def record_judgement(self, actor: Actor, ask_id: int, judge: str, verdict: int | None,
                         reference_answer: str) -> None:
        require(actor, "admin", to="store judge verdicts")
        if verdict not in (0, 1, None):
            raise StoreError(f"A judge verdict is 0, 1 or None (failed), not {verdict!r}.")
        judge = _bounded(judge, _length(Judgement.judge), "judge name")
        with self.db.write() as s:
            self._locked_asker(s, ask_id)
            s.add(Judgement(ask_id=ask_id, judge=judge, verdict=verdict, reference_answer=clean_text(reference_answer)))

    def _agreement(self, s: Session, verdicts: dict[int, Consensus],
                   versions: dict[int, ModelVersion]) -> list[JudgeAgreement]:
        latest: dict[tuple[str, int], int | None] = {}
        for judge, ask_id, verdict in s.execute(
                select(Judgement.judge, Judgement.ask_id, Judgement.verdict).order_by(Judgement.id)):
            latest[(judge, ask_id)] = verdict
        version_of = dict(s.execute(select(Ask.id, Ask.model_version_id)).all())
        pairs: dict[tuple[str, int], list[tuple[int, int | None]]] = defaultdict(list)
        for (judge, ask_id), verdict in latest.items():
            human = verdicts.get(ask_id)
            if human is not None and human.complete:
                pairs[(judge, version_of[ask_id])].append((int(human.verdict == "correct"), verdict))
        out = []
        for (judge, vid), items in sorted(pairs.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            judged = [(h, j) for h, j in items if j is not None]
            agreement, kappa = cohen(judged)
            version = versions[vid]
            out.append(JudgeAgreement(judge, version.model_id, version.revision, len(judged), agreement, kappa,
                                      len(items) - len(judged)))
        return out

    # --- retention ---

    def purge_unconsented(self, actor: Actor, *, older_than: datetime) -> PurgeReport:
        """Delete every answer stored without training consent before ``older_than`` (such answers are never
        exported), with its ratings, skips and judgements, then every image no answer refers to any more.

        Works in transactions of ``PURGE_BATCH`` answers. Safe while people ask and rate, and while another replica
        purges: on PostgreSQL each takes answers the other has not locked, and an image gaining a new answer
        meanwhile is kept.
        """
        require(actor, "admin", to="purge stored answers")
        cutoff = self._db_time(older_than)
        counts: Counter[str] = Counter()
        while True:
            with self.db.write() as s:
                if not self._purge_asks(s, cutoff, counts):
                    break
        after = 0
        while after is not None:
            with self.db.write() as s:
                after = self._purge_images(s, after, counts)
        return PurgeReport(**counts)

    @staticmethod
    def _purge_asks(s: Session, cutoff: datetime, counts: Counter[str]) -> int:
        """Delete one batch of unconsented answers older than ``cutoff`` and what hangs on them; how many."""
        ids = list(s.scalars(
            select(Ask.id).where(Ask.consent.is_(False), Ask.created_at < cutoff).order_by(Ask.id)
            .limit(PURGE_BATCH).with_for_update(skip_locked=True)  # another purge's batch, or an answer being rated
        ))
        if ids:
            quick = {"synchronize_session": False}
            for model, key in ((Rating, "ratings"), (Skip, "skips"), (Judgement, "judgements")):
                counts[key] += s.execute(delete(model).where(model.ask_id.in_(ids)), execution_options=quick).rowcount
            counts["asks"] += s.execute(delete(Ask).where(Ask.id.in_(ids)), execution_options=quick).rowcount
        return len(ids)

    @staticmethod
    def _purge_images(s: Session, after: int, counts: Counter[str]) -> int | None:
        """Delete one batch of images, with ids above ``after``, that no answer refers to; the last id looked at,
        or None when there were none left."""
        unused = ~select(Ask.id).where(Ask.image_id == StoredImage.id).exists()
        rows = s.execute(select(StoredImage.id, StoredImage.byte_size).where(StoredImage.id > after, unused)
                         .order_by(StoredImage.id).limit(PURGE_BATCH)).all()
        for image_id, byte_size in rows:
            try:
                with s.begin_nested():
                    gone = s.execute(delete(StoredImage).where(StoredImage.id == image_id, unused),
                                     execution_options={"synchronize_session": False}).rowcount
            except IntegrityError:  # someone asked about this image again while we looked: it stays
                gone = 0
            if gone:
                counts["images"] += 1
                counts["image_bytes"] += byte_size
        return rows[-1].id if rows else None

    # --- export ---

    def rated_asks(self, actor: Actor, *, since: datetime | None = None,
                        consented_only: bool = True) -> Iterator[RatedAsk]:
        """Every stored answer (consented ones only, by default) with its votes and consensus, oldest first."""
        require(actor, "admin", to="export data")  # here, not in the generator: refused at the call, not later
        return self._consensus_items(since, consented_only)

    def _consensus_items(self, since: datetime | None, consented_only: bool) -> Iterator[RatedAsk]:
        with self.db.read() as s:
            ratings: dict[int, list[Rating]] = defaultdict(list)
            for rating in s.scalars(select(Rating).where(_still_counts()).order_by(Rating.id)):
                ratings[rating.ask_id].append(rating)
            query = self._asks_query(select(Ask), since, consented_only).order_by(Ask.id)
            last_image: tuple[int, bytes] | None = None  # answers about the same image usually come together
            for ask in s.scalars(query).yield_per(500):
                if last_image is None or last_image[0] != ask.image_id:
                    last_image = (ask.image_id, s.scalar(select(StoredImage.data).where(StoredImage.id == ask.image_id)))
                rows = ratings.get(ask.id, [])
                votes = [Vote(r.rater, r.source, r.verdict, r.reference_answer, r.decision, r.id) for r in rows]
                yield RatedAsk(ask=_ask_view(ask), image_png=last_image[1],
                                    votes=[_rating_view(r, True) for r in rows],
                                    consensus=consensus(votes, self.ratings_per_item))

    def count_asks(self, actor: Actor, *, consented_only: bool = True, since: datetime | None = None) -> int:
        require(actor, "admin", to="export data")
        with self.db.read() as s:
            return s.scalar(self._asks_query(select(func.count()).select_from(Ask), since, consented_only)) or 0

    def _asks_query(self, query, since: datetime | None, consented_only: bool):
        if consented_only:
            query = query.where(Ask.consent.is_(True))
        if since is not None:
            query = query.where(Ask.created_at >= self._db_time(since))
        return query

    def _db_time(self, moment: datetime) -> datetime:
        """A time to compare with stored ones: UTC, and naive on SQLite, which keeps times as UTC text."""
        moment = as_utc(moment)
        return moment.replace(tzinfo=None) if self.db.is_sqlite else moment

    # --- helpers ---

    def _votes(self, s: Session) -> dict[int, list[Vote]]:
        """The votes behind every answer's consensus, from the ratings that count (withdrawn ones never do)."""
        votes: dict[int, list[Vote]] = defaultdict(list)
        rows = s.execute(select(Rating.ask_id, Rating.rater, Rating.source, Rating.verdict, Rating.reference_answer,
                                Rating.decision, Rating.id).where(_still_counts()))
        for ask_id, rater, source, verdict, reference, decision, order in rows:
            votes[ask_id].append(Vote(rater, source, verdict, reference, decision, order))
        return votes

    def _ratings(self, s: Session, ask_id: int) -> list[Rating]:
        """The ratings of ``ask_id`` that count, oldest first."""
        return list(s.scalars(select(Rating).where(Rating.ask_id == ask_id, _still_counts()).order_by(Rating.id)))

    def _view(self, s: Session, ask_id: int, actor: Actor, votes: list[Vote] | None = None) -> AskView:
        ask = s.get(Ask, ask_id)
        if ask is None:
            raise NotFound(f"There is no stored answer #{ask_id}.")
        ratings = self._ratings(s, ask_id)
        admin = actor.role == "admin"
        visible = [r for r in ratings if admin or r.rater == actor.rater]
        if votes is None:
            votes = [Vote(r.rater, r.source, r.verdict, r.reference_answer, r.decision, r.id) for r in ratings]
        return _ask_view(ask, [_rating_view(r, show_rater=True) for r in visible],
                         consensus(votes, self.ratings_per_item))


def _ask_view(ask: Ask, ratings: list[RatingView] | None = None, agreed: Consensus | None = None) -> AskView:
    return AskView(
        id=ask.id, image_sha256=ask.image.sha256, image_size=(ask.image.width, ask.image.height),
        question=ask.question, model_id=ask.model_version.model_id, model_revision=ask.model_version.revision,
        mode=ask.mode, turns=turns_from_json(ask.turns), answer=ask.answer, requested_high_res=ask.requested_high_res,
        stop_reason=ask.stop_reason,
        tokens=TokenReport.build(low_res=ask.low_res_tokens, high_res=ask.high_res_tokens, full_res=ask.full_res_tokens),
        latency_s=ask.latency_s, consent=ask.consent, created_at=as_utc(ask.created_at), ratings=ratings or [],
        consensus=agreed, comparison=ask.comparison,
    )


def _rating_view(r: Rating, show_rater: bool) -> RatingView:
    return RatingView(id=r.id, ask_id=r.ask_id, rater=r.rater if show_rater else None, source=r.source,
                      verdict=r.verdict, reference_answer=r.reference_answer, decision=r.decision,
                      comment=r.comment, created_at=as_utc(r.created_at))


def _still_counts():
    """SQL: the ``Rating`` row counts: it is no withdrawal, and its rater has not withdrawn it since (a withdrawal
    takes back every earlier rating of the answer by the same rater from the same source)."""
    later = aliased(Rating)
    withdrawn = (select(later.id)
                 .where(later.ask_id == Rating.ask_id, later.rater == Rating.rater, later.source == Rating.source,
                        later.verdict == WITHDRAWN, later.id > Rating.id)
                 .exists())
    return (Rating.verdict != WITHDRAWN) & ~withdrawn


def _matching(query, filters: QueueFilter | None):
    """``query`` (over ``Ask``) narrowed to the answers that match ``filters``."""
    if filters is None:
        return query
    if filters.model_version is not None:
        query = query.where(Ask.model_version_id == filters.model_version)
    if filters.mode is not None:
        query = query.where(Ask.mode == filters.mode)
    if filters.requested_high_res is not None:
        query = query.where(Ask.requested_high_res.is_(filters.requested_high_res))
    return query


def _bounded(value: str | None, limit: int, what: str) -> str:
    """``value`` cleaned for storage, or ``StoreError`` when it is longer than ``limit`` characters."""
    try:
        return bounded_text(value, limit=limit, what=what)
    except TextError as exc:
        raise StoreError(str(exc)) from None


def _length(attribute) -> int:
    """The length of a ``String(n)`` column: longer text fits SQLite but PostgreSQL refuses it."""
    return attribute.property.columns[0].type.length


def clean_json(value):
    """``value`` (JSON-like: dicts, lists, strings, numbers) with every string in it, keys included, cleaned for
    storage by ``clean_text``; anything else is left for the database to accept or refuse."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_json(key): clean_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(item) for item in value]
    return value


def cohen(pairs: list[tuple[int, int]]) -> tuple[float | None, float | None]:
    """Agreement rate and Cohen's kappa of two binary raters over ``pairs``; kappa is None when undefined."""
    if not pairs:
        return None, None
    n = len(pairs)
    observed = sum(1 for a, b in pairs if a == b) / n
    a1, b1 = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
    expected = a1 * b1 + (1 - a1) * (1 - b1)
    return observed, (None if expected == 1 else (observed - expected) / (1 - expected))


def encode_png(image: PILImage.Image) -> bytes:
    """The image as a PNG with no metadata (EXIF, text chunks, ICC profile all dropped), deterministically."""
    buffer = io.BytesIO()
    # Rebuilt from raw pixels: ``convert`` copies ``info``, and PNG saving writes the ICC profile it finds there.
    pixels = image if image.mode in ("RGB", "L") else image.convert("RGB")
    clean = PILImage.frombytes(pixels.mode, pixels.size, pixels.tobytes())
    clean.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def question_key(question: str) -> str:
    return hashlib.sha256(normalise(question).encode("utf-8")).hexdigest()


__all__ = [
    "Actor", "AskView", "RatedAsk", "Dashboard", "ModeStats", "NotFound", "PermissionDenied", "PurgeReport", "QueueFilter",
    "QueueModel", "QueueProgress", "RatingView", "Store", "StoreError", "StoreFailure", "StoreUnavailable", "VersionStats", "clean_json",
    "encode_png", "question_key", "require", "utcnow",
]
