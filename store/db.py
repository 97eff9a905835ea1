"""Database connections: SQLite (WAL, busy timeout) by default, PostgreSQL by URL, and schema upgrades.

SQLite allows one writer at a time; writes from threads of this process queue on a lock here instead of
spinning on SQLite's busy handler, which keeps latency flat under many concurrent annotators. Several app
replicas writing at once is what PostgreSQL is for.

A database error that escapes a session is told to people as a ``StoreError`` with a reference, never with its
own text (which holds the host, port, user, SQL and parameters); the full story is logged under that reference.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from visionthink.incidents import log_incident

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: How long a new PostgreSQL connection may take before the server counts as unreachable (unless the URL says).
PG_CONNECT_TIMEOUT_S = 10
#: Any number: the PostgreSQL advisory lock that serialises schema upgrades across replicas.
_UPGRADE_LOCK_ID = 0x56495354
#: Execution option marking the engine that write sessions use (SQLite begins their transactions IMMEDIATE).
_WRITER = "visionthink_writer"
#: Errors that mean the database cannot be reached (down, restarting, network, no free connection), not that
#: this request was wrong. psycopg reports a refused or lost connection as OperationalError.
_UNREACHABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError)

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """A store problem a person can act on; the message says what was wrong and what to do."""


class StoreFailure(StoreError):
    """The database refused or failed a request unexpectedly; ``reference`` finds the full error in the log."""

    def __init__(self, message: str, reference: str = "") -> None:
        super().__init__(message)
        self.reference = reference


class StoreUnavailable(StoreFailure):
    """The database cannot be reached right now; ``reference`` finds the full error in the log."""


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be reached, rather than that a statement failed."""
    return isinstance(exc, _UNREACHABLE) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


@contextlib.contextmanager
def errors_for_people(during: str, database: str) -> Iterator[None]:
    """Turn a database error escaping the block into ``StoreUnavailable`` or ``StoreFailure``: a plain message
    with a reference, the error itself logged under that reference with ``database`` (a URL without its
    password). ``StoreError``s pass through unchanged."""
    try:
        yield
    except SQLAlchemyError as exc:
        if unreachable(exc):
            reference = log_incident(log, f"The database {database} could not be reached ({during})", exc)
            raise StoreUnavailable(
                f"The database cannot be reached right now (reference {reference}). Try again in a minute; if it "
                f"keeps happening, give the operator this reference.", reference) from None
        reference = log_incident(log, f"Unexpected error from the database {database} ({during})", exc)
        raise StoreFailure(
            f"The database could not complete this request (reference {reference}). Try again; if it keeps "
            f"happening, give the operator this reference.", reference) from None


def make_engine(url: str) -> Engine:
    """An engine for ``url``. SQLite files get WAL, a busy timeout and their folder created."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"VISIONTHINK_DB_URL is not a database URL: {url!r} ({exc}).") from exc
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:
            # Transactions are begun below, not by the sqlite3 module: in its legacy mode it begins none before a
            # SELECT or a SAVEPOINT, so a released savepoint committed on its own and a failed write left its image
            # or user rows behind.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection) -> None:
            # Writers take the write lock at the start, waiting up to the busy timeout: a transaction that began as
            # a read cannot take it once another connection (another Store, another process) has committed, and
            # SQLite then fails at once with "database is locked" instead of waiting.
            writer = connection.get_execution_options().get(_WRITER)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
        return create_engine(parsed, pool_size=16, max_overflow=48, pool_pre_ping=True, connect_args=connect_args)
    raise StoreError(f"Unsupported database {parsed.get_backend_name()!r}: use a sqlite:/// or postgresql:// URL.")


class FairLock:
    """A lock taken in arrival order. ``threading.Lock`` lets the thread that releases it take it straight back,
    so with many writers some wait through dozens of others' writes (see BENCHMARKS.md: the p99 latency of 32
    concurrent writers); here the holder hands the lock to the longest waiter.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False

    def __enter__(self) -> FairLock:
        with self._mutex:
            if not self._held:
                self._held = True
                return self
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        try:
            turn.acquire()  # released by the holder when it hands over: the lock is then ours
        except BaseException:  # interrupted while waiting: leave the queue, or pass on a turn already handed over
            with self._mutex:
                if turn in self._waiters:
                    self._waiters.remove(turn)
                else:
                    self._hand_over()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        with self._mutex:
            self._hand_over()

    def _hand_over(self) -> None:
        if self._waiters:
            self._waiters.popleft().release()
        else:
            self._held = False


class Database:
    """An engine plus the write discipline for it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._logged_url = self.engine.url.render_as_string(hide_password=True)  # for the operator's log only
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._writer = self.engine.execution_options(**{_WRITER: True})
        self._write_lock = FairLock() if self.is_sqlite else contextlib.nullcontext()

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reading. Database errors that escape it are told as ``StoreUnavailable``/``StoreFailure``."""
        with errors_for_people("read", self._logged_url), Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error. Errors caught inside it (an
        ``IntegrityError`` in a savepoint) are the caller's; database errors that escape it, the commit's included,
        are told as ``StoreUnavailable``/``StoreFailure``."""
        with errors_for_people("write", self._logged_url), self._write_lock:
            with Session(self._writer, expire_on_commit=False) as session, session.begin():
                yield session

    def upgrade(self) -> None:
        """Bring the schema to the newest migration (safe to run from several replicas at once)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with errors_for_people("schema upgrade", self._logged_url), self._write_lock:
            with self._writer.begin() as connection:
                if not self.is_sqlite:
                    connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _UPGRADE_LOCK_ID})
                config.attributes["connection"] = connection
                command.upgrade(config, "head")

    def dispose(self) -> None:
        self.engine.dispose()
