"""The database schema: users, model versions, images, asked questions with their answers, ratings and skips.

Ratings are append-only: a rater's later rating of the same answer supersedes the earlier one in every count, and an
undo is a withdrawal row (see ``Rating``). Nothing is ever overwritten or deleted, with one exception:
``Store.purge_unconsented`` deletes answers stored without training consent (which are never exported) once they
are older than a cutoff, with their ratings, skips and judgements, and the images no remaining answer refers to.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column, relationship

from visionthink.clock import utcnow

ROLES = ("viewer", "annotator", "admin")
VERDICTS = ("correct", "incorrect", "unsure")
DECISIONS = ("needed_full", "low_enough", "unsure")
SOURCES = ("annotation", "thumbs", "resolution")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "revision", name="uq_model_versions_model_revision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[str] = mapped_column(String(300))
    revision: Mapped[str] = mapped_column(String(100), default="")
    source: Mapped[str] = mapped_column(String(100))  # hub | local | server | miniature | retrain:<run>
    notes: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StoredImage(Base):
    """An uploaded image as a metadata-free PNG, stored once per content hash."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    byte_size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = deferred(mapped_column(LargeBinary, nullable=False))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Ask(Base):
    """One question about one image and the model's whole answer (every turn, the decision, tokens, latency)."""

    __tablename__ = "asks"
    __table_args__ = (Index("ix_asks_image_question", "image_id", "question_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    question: Mapped[str] = mapped_column(Text)
    question_key: Mapped[str] = mapped_column(String(64))  # hash of the normalised question, to group repeats
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    mode: Mapped[str] = mapped_column(String(8))
    turns: Mapped[list] = mapped_column(JSON)
    requested_high_res: Mapped[bool] = mapped_column(Boolean)
    answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    stop_reason: Mapped[str] = mapped_column(String(32))
    low_res_tokens: Mapped[int] = mapped_column(Integer)
    high_res_tokens: Mapped[int] = mapped_column(Integer)
    full_res_tokens: Mapped[int] = mapped_column(Integer)
    saved_tokens: Mapped[int] = mapped_column(Integer)
    latency_s: Mapped[float] = mapped_column(Float)
    asked_by: Mapped[str] = mapped_column(String(200))
    consent: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    #: The answers of one "Compare" (the same image and question in every mode) share this key; None otherwise.
    comparison: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)

    image: Mapped[StoredImage] = relationship(lazy="joined")
    model_version: Mapped[ModelVersion] = relationship(lazy="joined")


class Rating(Base):
    """A judgement of one answer by one rater. Append-only; the latest per (ask, rater, source) counts.

    A row whose verdict is ``store.consensus.WITHDRAWN`` takes back the rater's earlier ratings of the answer from
    that source (an annotator's undo): from then on none of them counts, until the rater rates the answer again.
    """

    __tablename__ = "ratings"
    __table_args__ = (Index("ix_ratings_ask_rater", "ask_id", "rater"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ask_id: Mapped[int] = mapped_column(ForeignKey("asks.id"), index=True)
    rater: Mapped[str] = mapped_column(String(200))  # a user name, or "anon:<session>" for visitors' thumbs
    source: Mapped[str] = mapped_column(String(16))
    verdict: Mapped[str] = mapped_column(String(16))
    reference_answer: Mapped[str | None] = mapped_column(Text, nullable=True)
    decision: Mapped[str | None] = mapped_column(String(16), nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class Skip(Base):
    """An annotator passed on an item; it leaves their queue (others still see it)."""

    __tablename__ = "skips"
    __table_args__ = (UniqueConstraint("ask_id", "rater", name="uq_skips_ask_rater"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ask_id: Mapped[int] = mapped_column(ForeignKey("asks.id"))
    rater: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Judgement(Base):
    """An automatic judge's verdict on a stored answer against its human consensus reference. Append-only; the
    latest per (ask, judge) counts. ``verdict`` is None when the judgement failed."""

    __tablename__ = "judgements"
    __table_args__ = (Index("ix_judgements_ask_judge", "ask_id", "judge"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ask_id: Mapped[int] = mapped_column(ForeignKey("asks.id"))
    judge: Mapped[str] = mapped_column(String(200))
    verdict: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reference_answer: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
