"""Who may sign in, with which role: read from ``VISIONTHINK_USERS`` or a users file, passwords as scrypt hashes.

    python -m store.users hash              # prompts for a password, prints its hash
    python -m store.users check             # reads the configured users and says what it found

``VISIONTHINK_USERS`` is ``name:role:hash;name:role:hash``. A users file (``VISIONTHINK_USERS_FILE``, JSON or TOML)
holds ``users = [{name, role, password_hash}]``. On Hugging Face Spaces people sign in with their Hugging Face
account, so entries there need no hash: ``VISIONTHINK_USERS=alice:admin;bob:annotator``.
"""

from __future__ import annotations

import argparse
import base64
import functools
import getpass
import hashlib
import hmac
import json
import os
import secrets
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from store.db import StoreError
from store.models import ROLES

_N, _R, _P = 2**14, 8, 1
_PREFIX = "scrypt"


@dataclass(frozen=True)
class UserEntry:
    name: str
    role: str
    password_hash: str | None = None


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A salted scrypt hash, as ``scrypt$n$r$p$salt$hash`` (base64)."""
    if not password:
        raise StoreError("The password is empty.")
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    encode = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"{_PREFIX}${_N}${_R}${_P}${encode(salt)}${encode(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """True when ``password`` matches ``stored``; constant-time, and False for anything malformed."""
    if not stored or not password:
        return False
    try:
        prefix, n, r, p, salt, digest = stored.split("$")
        if prefix != _PREFIX:
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def parse_users(spec: str = "", file: Path | None = None) -> list[UserEntry]:
    """Users from the env-var form and/or a file; a name given twice is an error."""
    entries: list[UserEntry] = []
    for item in filter(None, (part.strip() for part in spec.replace("\n", ";").split(";"))):
        parts = item.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise StoreError(
                f"VISIONTHINK_USERS entry {item.split(':')[0]!r} must be name:role or name:role:hash "
                "(make a hash with `python -m store.users hash`)."
            )
        entries.append(UserEntry(parts[0].strip(), parts[1].strip(), parts[2].strip() if len(parts) == 3 else None))
    if file is not None:
        entries.extend(_read_file(Path(file)))
    seen: set[str] = set()
    for entry in entries:
        if entry.role not in ROLES:
            raise StoreError(f"User {entry.name!r} has the role {entry.role!r}; use one of {', '.join(ROLES)}.")
        if entry.name in seen:
            raise StoreError(f"The user {entry.name!r} is configured twice.")
        if entry.name.startswith("anon:") or entry.name == "system":
            raise StoreError(f"The user name {entry.name!r} is reserved.")
        seen.add(entry.name)
    return entries


def _read_file(path: Path) -> list[UserEntry]:
    if not path.is_file():
        raise StoreError(f"The users file {path} does not exist (VISIONTHINK_USERS_FILE).")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise StoreError(f"The users file {path} cannot be read: {exc}") from exc
    rows = data.get("users") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise StoreError(f"The users file {path} must hold a list named 'users' of {{name, role, password_hash}}.")
    entries = []
    for row in rows:
        if not isinstance(row, dict) or not row.get("name") or not row.get("role"):
            raise StoreError(f"Every user in {path} needs a name and a role; found {row!r}.")
        entries.append(UserEntry(str(row["name"]), str(row["role"]), row.get("password_hash")))
    return entries


class Directory:
    """The configured users: roles by name, and password checks for Gradio's login form."""

    def __init__(self, entries: list[UserEntry]) -> None:
        self._entries = {e.name: e for e in entries}

    def role(self, name: str | None) -> str | None:
        entry = self._entries.get(name or "")
        return entry.role if entry else None

    def check_password(self, name: str, password: str) -> bool:
        """True for a configured user's right password. An unknown name (or one without a password) is checked
        against a decoy hash, so that refusing it takes as long as refusing a wrong password for a real name."""
        entry = self._entries.get(name)
        known = entry is not None and entry.password_hash is not None
        matches = verify_password(password, entry.password_hash if known else self._decoy)
        return known and matches

    @functools.cached_property
    def _decoy(self) -> str:
        return hash_password(secrets.token_urlsafe(16))

    @property
    def can_sign_in(self) -> bool:
        return any(e.password_hash for e in self._entries.values())

    def pairs(self) -> list[tuple[str, str]]:
        return [(e.name, e.role) for e in self._entries.values()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m store.users", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("hash", help="Prompt for a password and print its hash for VISIONTHINK_USERS.")
    commands.add_parser("check", help="Read the configured users and list them with their roles.")
    args = parser.parse_args(argv)
    if args.command == "hash":
        password = getpass.getpass("Password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        if sys.stdin.isatty() and getpass.getpass("Again: ") != password:
            print("error: the two passwords differ.", file=sys.stderr)
            return 2
        try:
            print(hash_password(password))
        except StoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    from visionthink.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
        entries = parse_users(settings.users, settings.users_file)
    except (StoreError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for entry in entries:
        print(f"{entry.name}\t{entry.role}\t{'password set' if entry.password_hash else 'no password (Spaces sign-in)'}")
    if not entries:
        print("No users configured: set VISIONTHINK_USERS or VISIONTHINK_USERS_FILE.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
