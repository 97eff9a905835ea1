"""A real PostgreSQL server for the store tests and benchmarks, and a fresh database on it per test.

The server comes from ``VISIONTHINK_TEST_PG_URL`` when it is set (CI starts Debian's cluster and sets it; the
role needs CREATEDB). Otherwise ``PostgresServer`` initdb's a throwaway cluster from Debian's binaries into a
temporary folder, listening on 127.0.0.1 on a free port with trust authentication, and deletes it afterwards:

    with PostgresServer() as server:
        with fresh_database(server.url) as url:   # CREATE DATABASE vt_<random>; DROP ... WITH (FORCE) after
            Store(url)

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` system user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from tests.support.ports import free_port

ENV_URL = "VISIONTHINK_TEST_PG_URL"
SETUP_HINT = "run `make system-test-deps` (installs Debian's postgresql) or set VISIONTHINK_TEST_PG_URL"

#: For a throwaway test server durability is worthless; benchmarks pass ``durable=True`` to keep the defaults.
_FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be reached or started; the message says why and what to do."""


def find_bindir() -> Path:
    """The folder holding initdb, pg_ctl and postgres: the newest of Debian's versions, else the PATH's."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version_key(p.parent.name))
    for bindir in reversed(candidates):
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    raise PostgresUnavailable(
        f"No PostgreSQL server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin or on the PATH: {SETUP_HINT}."
    )


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1; ``url`` reaches its ``postgres`` database as superuser."""

    def __init__(self, *, durable: bool = False, bindir: Path | None = None) -> None:
        self.durable = durable
        self.bindir = bindir
        self.port: int | None = None
        self.root: Path | None = None
        self._user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def version(self) -> str:
        out = subprocess.run([str(self.bindir / "postgres"), "--version"], capture_output=True, text=True, check=True)
        return out.stdout.strip()

    def start(self) -> PostgresServer:
        self.bindir = self.bindir or find_bindir()
        self._user = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix="visionthink-pg-"))
        data = self.root / "data"
        try:
            data.mkdir()
            if self._user:
                ids = pwd.getpwnam(self._user)
                for path in (self.root, data):
                    os.chown(path, ids.pw_uid, ids.pw_gid)
            self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale",
                      "--no-sync")
            settings = {"listen_addresses": "'127.0.0.1'", "unix_socket_directories": "''", "max_connections": "200",
                        **({} if self.durable else _FAST_SETTINGS)}
            with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
                conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
            for _attempt in range(3):  # another process may take the free port between asking and listening
                self.port = free_port()
                started = self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(data), "-l", str(self.root / "log"),
                                    "-o", f"-p {self.port}", check=False)
                if started.returncode == 0:
                    return self
            raise PostgresUnavailable(f"PostgreSQL did not start:\n{started.stdout}{started.stderr}\n{self.log()}")
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        log = self.root / "log" if self.root else None
        return log.read_text(errors="replace")[-4000:] if log and log.is_file() else ""

    def stop(self) -> None:
        if self.root is None:
            return
        data = self.root / "data"
        if (data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(data), "-m", "fast", "-w", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        extra = {"user": self._user, "group": pwd.getpwnam(self._user).pw_gid, "extra_groups": []} if self._user else {}
        result = subprocess.run([str(self.bindir / tool), *args], capture_output=True, text=True, cwd=self.root,
                                env={**os.environ, "LC_ALL": "C"}, **extra)
        if check and result.returncode != 0:
            raise PostgresUnavailable(f"`{tool} {' '.join(args)}` failed:\n{result.stdout}{result.stderr}")
        return result

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()


def _server_user() -> str | None:
    """The user to run the server as: ``postgres`` when we are root (PostgreSQL refuses root), else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(f"Running as root and there is no `postgres` system user: {SETUP_HINT}.") from None
    return "postgres"


def admin_url_from_env() -> str | None:
    """``VISIONTHINK_TEST_PG_URL`` if set, checked to be a PostgreSQL URL."""
    url = os.environ.get(ENV_URL, "").strip()
    if not url:
        return None
    if make_url(url).get_backend_name() != "postgresql":
        raise PostgresUnavailable(f"{ENV_URL} must be a postgresql:// URL, not {url!r}.")
    return url


def _admin_engine(url: str | URL):
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, isolation_level="AUTOCOMMIT", poolclass=NullPool)


def check_reachable(url: str) -> str:
    """The server's version; raises ``PostgresUnavailable`` saying how to fix an unreachable ``ENV_URL``."""
    engine = _admin_engine(url)
    try:
        with engine.connect() as connection:
            return connection.scalar(text("SHOW server_version"))
    except Exception as exc:
        safe = make_url(url).render_as_string(hide_password=True)
        raise PostgresUnavailable(
            f"Cannot reach PostgreSQL at {safe} ({ENV_URL}): {type(exc).__name__}: {exc}\nStart that server, or "
            f"unset {ENV_URL} to let the tests start their own (`make system-test-deps` installs PostgreSQL)."
        ) from exc
    finally:
        engine.dispose()


@contextlib.contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new, empty database on the server behind ``admin_url``; yields its URL and drops it afterwards."""
    name = f"vt_{uuid.uuid4().hex[:16]}"
    engine = _admin_engine(admin_url)
    try:
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            _drop(engine, name)
        finally:
            engine.dispose()


def _drop(engine, name: str, attempts: int = 50) -> None:
    """Drop database ``name``, ending its sessions. An autovacuum worker busy in it cannot be ended by a role that
    is not a superuser (PostgreSQL answers "must be a member of the role whose process is being terminated"); it
    finishes within moments on a test's database, so that refusal is retried."""
    from sqlalchemy.exc import ProgrammingError

    for attempt in range(attempts):
        try:
            with engine.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except ProgrammingError as exc:
            if getattr(exc.orig, "sqlstate", None) != "42501" or attempt == attempts - 1:  # insufficient_privilege
                raise
            time.sleep(0.2)


@contextlib.contextmanager
def postgres_admin_url(*, durable: bool = False) -> Iterator[str]:
    """The env var's server, or a throwaway one for the duration; raises ``PostgresUnavailable`` when neither."""
    url = admin_url_from_env()
    if url is not None:
        check_reachable(url)
        yield url
        return
    with PostgresServer(durable=durable) as server:
        yield server.url
