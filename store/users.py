"""Who may sign in, with which role: read from ``VISIONTHINK_USERS`` or a users file, passwords as scrypt hashes.

    python -m store.users add NAME ROLE     # prompts for a password twice, writes the user into the users file
    python -m store.users hash              # prompts for a password, prints its hash
    python -m store.users check             # reads the configured users and says what it found

``VISIONTHINK_USERS`` is ``name:role:hash;name:role:hash`` (single-quote it in a shell: a hash holds ``$``). A users
file (``VISIONTHINK_USERS_FILE``, JSON or TOML) holds ``users = [{name, role, password_hash}]``. On Hugging Face
Spaces people sign in with their Hugging Face account, so entries there need no hash:
``VISIONTHINK_USERS=alice:admin;bob:annotator``.
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
from visionthink.files import atomic_write

_N, _R, _P = 2**14, 8, 1
_PREFIX = "scrypt"
_SALT_BYTES, _DIGEST_BYTES = 16, 32
MIN_PASSWORD_CHARS = 8


@dataclass(frozen=True)
class UserEntry:
    name: str
    role: str
    password_hash: str | None = None


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A salted scrypt hash, as ``scrypt$n$r$p$salt$hash`` (base64)."""
    if not password:
        raise StoreError("The password is empty.")
    salt = salt or os.urandom(_SALT_BYTES)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_N, r=_R, p=_P, dklen=_DIGEST_BYTES)
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


def check_hash_shape(name: str, stored: object) -> None:
    """Refuse a stored hash that is not a whole ``scrypt$n$r$p$salt$hash`` as ``hash_password`` writes it.

    A shell or a .env file expands ``$16384``, ``$8`` … inside double quotes, so a pasted hash loses its ``$`` parts
    and no password would ever match it; saying so at start beats a login form that refuses everyone."""
    parts = stored.split("$") if isinstance(stored, str) else []
    whole = len(parts) == 6 and parts[0] == _PREFIX and all(p.isdigit() and p.isascii() for p in parts[1:4])
    if whole:
        n, r, p = (int(x) for x in parts[1:4])
        whole = n > 1 and n & (n - 1) == 0 and r > 0 and p > 0
    if whole:
        try:
            salt, digest = (base64.b64decode(x, validate=True) for x in parts[4:])
            whole = len(salt) == _SALT_BYTES and len(digest) == _DIGEST_BYTES
        except ValueError:  # binascii.Error is a ValueError
            whole = False
    if not whole:
        raise StoreError(
            f"The password hash of user {name!r} is not a whole scrypt hash: it should read "
            f"{_PREFIX}${_N}${_R}${_P}$<salt>$<hash>, and it begins {str(stored)[:14]!r}. A shell or a .env file "
            "expands the '$' parts of a value in double quotes: put the value in single quotes, or write the user "
            f"into the users file with `python -m store.users add {name} ROLE`."
        )


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
        if entry.password_hash is not None:
            check_hash_shape(entry.name, entry.password_hash)
        seen.add(entry.name)
    return entries


def _read_file(path: Path) -> list[UserEntry]:
    if not path.is_file():
        raise StoreError(f"The users file {path} does not exist (VISIONTHINK_USERS_FILE).")
    return _entries_from_text(path, path.read_text(encoding="utf-8"))


def _entries_from_text(path: Path, text: str) -> list[UserEntry]:
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


def write_user(path: Path, entry: UserEntry, *, replace: bool = False) -> bool:
    """Put ``entry`` into the users file at ``path`` (JSON, or TOML by its suffix; created when missing), keeping
    every other user and, in TOML, every other line. Returns True when it replaced a user of the same name.

    The new text is read back before it is written: the file changes only if it then holds exactly the users it
    held, with this one added or replaced."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    existing = _file_entries(path)
    replaced = any(e.name == entry.name for e in existing)
    if replaced and not replace:
        raise StoreError(f"The user {entry.name!r} is already in {path}; add --replace to give them a new password "
                         "and role.")
    new_text = (_toml_with if path.suffix == ".toml" else _json_with)(text, entry)
    expected = [entry if e.name == entry.name else e for e in existing] + ([] if replaced else [entry])
    try:
        written = _entries_from_text(path, new_text)
    except StoreError:
        written = None
    if written != expected:
        raise StoreError(f"{path} is laid out in a way this command cannot edit in place, so it was left unchanged. "
                         f"Add the user by hand, with these values:\n{_toml_block(entry)}")
    # password hashes: private unless the file was made otherwise
    atomic_write(path, new_text, mode=None if path.exists() else 0o600)
    return replaced


def _file_entries(path: Path) -> list[UserEntry]:
    """The users in a file as written, hashes unchecked (so a mangled one can be replaced); none when it is missing
    or empty."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    return _entries_from_text(path, text) if text.strip() else []


def _json_with(text: str, entry: UserEntry) -> str:
    data = json.loads(text) if text.strip() else {"users": []}
    row = {"name": entry.name, "role": entry.role, "password_hash": entry.password_hash}
    rows = data["users"]
    for index, old in enumerate(rows):
        if str(old["name"]) == entry.name:
            rows[index] = {**old, **row}  # other keys of the row stay
            break
    else:
        rows.append(row)
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _toml_value(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string


def _toml_block(entry: UserEntry) -> str:
    return (f"[[users]]\nname = {_toml_value(entry.name)}\nrole = {_toml_value(entry.role)}\n"
            f"password_hash = {_toml_value(entry.password_hash or '')}\n")


def _toml_with(text: str, entry: UserEntry) -> str:
    """The TOML text with the user's ``[[users]]`` table updated line by line, or a new table appended."""
    lines = text.splitlines(keepends=True)
    headers = [i for i, line in enumerate(lines) if line.lstrip().startswith("[")]
    for begin, end in zip(headers, [*headers[1:], len(lines)]):
        if lines[begin].split("#")[0].replace(" ", "").strip() != "[[users]]":
            continue
        try:
            table = tomllib.loads("".join(lines[begin + 1:end]))
        except tomllib.TOMLDecodeError:
            continue
        if str(table.get("name")) != entry.name:
            continue
        values = {"role": entry.role, "password_hash": entry.password_hash or ""}
        last_key = begin
        for i in range(begin + 1, end):
            key = lines[i].split("=")[0].strip() if "=" in lines[i] and not lines[i].lstrip().startswith("#") else None
            if key:
                last_key = i
            if key in values:
                lines[i] = f"{key} = {_toml_value(values.pop(key))}\n"
        lines[last_key + 1:last_key + 1] = [f"{key} = {_toml_value(value)}\n" for key, value in values.items()]
        return "".join(lines)
    separator = "" if not text.strip() or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    return text + separator + _toml_block(entry)


def read_new_password(name: str | None = None) -> str:
    """A new password: asked twice without echo on a terminal, otherwise the first line of standard input."""
    if sys.stdin.isatty():
        password = getpass.getpass(f"Password for {name}: " if name else "Password: ")
        if getpass.getpass("Again: ") != password:
            raise StoreError("The two passwords differ.")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise StoreError("The password is empty.")
    if len(password) < MIN_PASSWORD_CHARS:
        raise StoreError(f"The password is too short: use at least {MIN_PASSWORD_CHARS} characters.")
    return password


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
    add = commands.add_parser(
        "add", help="Add a user to the users file (asks for the password twice).",
        description="Add a user, or with --replace give an existing one a new password and role, in the users file "
                    "the app reads (VISIONTHINK_USERS_FILE, JSON or TOML by its suffix; created when missing). The "
                    "password is asked twice without echo; without a terminal it is the first line of standard "
                    f"input. Passwords need at least {MIN_PASSWORD_CHARS} characters.")
    add.add_argument("name", help="The user name people sign in with.")
    add.add_argument("role", help=f"One of {', '.join(ROLES)}.")
    add.add_argument("--file", type=Path, help="The users file (default: VISIONTHINK_USERS_FILE).")
    add.add_argument("--replace", action="store_true", help="Replace a user of that name already in the file.")
    commands.add_parser("hash", help="Prompt for a password and print its hash for VISIONTHINK_USERS.")
    commands.add_parser("check", help="Read the configured users and list them with their roles.")
    args = parser.parse_args(argv)
    try:
        if args.command == "add":
            return _add(args)
        if args.command == "hash":
            print(hash_password(read_new_password()))
            return 0
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot use {exc.filename or 'the users file'}: {exc.strerror or exc}.", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, EOFError):
        print("\nCancelled; nothing was written.", file=sys.stderr)
        return 130
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


def _add(args) -> int:
    from visionthink.settings import Settings, SettingsError

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise StoreError(str(exc)) from exc
    if args.role not in ROLES:
        raise StoreError(f"Unknown role {args.role!r}; the roles are {', '.join(ROLES)}.")
    name = args.name
    if not name.strip() or name != name.strip() or any(c in name for c in ":;") or name == "system":
        raise StoreError(f"The user name {name!r} cannot be used: it must be non-empty, without spaces at its ends, "
                         "':' or ';', and not 'system'.")
    path = args.file or settings.users_file
    if path is None:
        raise StoreError("No users file: pass --file PATH, or set VISIONTHINK_USERS_FILE to the file the app reads.")
    if path.is_dir():
        raise StoreError(f"{path} is a folder; --file needs the path of a .json or .toml file.")
    if any(e.name == name for e in _file_entries(path)) and not args.replace:  # before asking for a password in vain
        raise StoreError(f"The user {name!r} is already in {path}; add --replace to give them a new password and role.")
    entry = UserEntry(name, args.role, hash_password(read_new_password(name)))
    replaced = write_user(path, entry, replace=args.replace)
    print(f"{'Replaced' if replaced else 'Added'} {name} ({args.role}) {'in' if replaced else 'to'} {path}.")
    if settings.users_file is None or Path(settings.users_file).resolve() != path.resolve():
        print(f"The app reads this file when VISIONTHINK_USERS_FILE={path.resolve()} is set.")
    if name in {item.split(":")[0].strip() for item in settings.users.replace("\n", ";").split(";")}:
        print(f"warning: {name} is also in VISIONTHINK_USERS; remove them there, or the app refuses to start "
              "(a user configured twice).", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
