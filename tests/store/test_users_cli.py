"""`python -m store.users add` run for real, on a pseudo-terminal where it asks for passwords, and the check that
refuses a password hash mangled by shell quoting. The files written are read back with the parser the app uses."""

from __future__ import annotations

import base64
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store.db import StoreError
from store.users import Directory, UserEntry, check_hash_shape, hash_password, parse_users

ROOT = Path(__file__).resolve().parents[2]
# Made once: scrypt is deliberately slow.
BOB_HASH = hash_password("bob's password")


def with_part(index: int, value: str) -> str:
    """BOB_HASH with one of its ``$`` parts replaced."""
    parts = BOB_HASH.split("$")
    parts[index] = value
    return "$".join(parts)


def environment(users_file: Path | None = None, users: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VISIONTHINK_USERS")}
    if users_file is not None:
        env["VISIONTHINK_USERS_FILE"] = str(users_file)
    if users is not None:
        env["VISIONTHINK_USERS"] = users
    return env


def on_terminal(args: list[str], answers: list[tuple[str, str]], env: dict[str, str],
                timeout: float = 60) -> tuple[int, str]:
    """Run ``python -m store.users ARGS`` on a new pseudo-terminal, typing each answer once its prompt has appeared.
    Returns the exit code and everything the terminal showed (which includes any echo of what was typed)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session of its own, with the pseudo-terminal as its controlling terminal
        try:
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, "-m", "store.users", *args], env)
        finally:
            os._exit(127)
    shown, pending, searched_to = b"", list(answers), 0
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"no answer within {timeout}s; the terminal showed {shown.decode()!r}")
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the command ended and closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if pending and pending[0][0].encode() in shown[searched_to:]:
                prompt, answer = pending.pop(0)
                searched_to = shown.index(prompt.encode(), searched_to) + len(prompt)
                os.write(fd, answer.encode() + b"\n")
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode().replace("\r\n", "\n")


def bob_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"users": [{"name": "bob", "role": "annotator", "password_hash": BOB_HASH}]}))
    return path


def test_add_asks_twice_without_echo_and_writes_a_user_the_app_accepts(tmp_path) -> None:
    users_file = bob_file(tmp_path)  # the file the app is configured with: the default of `add`
    code, shown = on_terminal(["add", "ann", "admin"],
                              [("Password for ann: ", "correct horse"), ("Again: ", "correct horse")],
                              environment(users_file))
    assert code == 0, shown
    assert "correct horse" not in shown  # no echo
    assert f"Added ann (admin) to {users_file}" in shown
    entries = parse_users(file=users_file)
    assert [(e.name, e.role) for e in entries] == [("bob", "annotator"), ("ann", "admin")]
    assert entries[0] == UserEntry("bob", "annotator", BOB_HASH)  # the other user is kept as it was
    directory = Directory(entries)
    assert directory.check_password("ann", "correct horse") and not directory.check_password("ann", "correct hors")
    check = subprocess.run([sys.executable, "-m", "store.users", "check"], cwd=ROOT, env=environment(users_file),
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "ann\tadmin\tpassword set" in check.stdout, check.stderr


@pytest.mark.parametrize(
    ("first", "again", "message"),
    [
        ("correct horse", "correct hosre", "The two passwords differ"),
        ("short", "short", "too short: use at least 8 characters"),
        ("", "", "The password is empty"),
    ],
)
def test_a_bad_password_is_refused_and_the_file_is_unchanged(tmp_path, first: str, again: str, message: str) -> None:
    users_file = bob_file(tmp_path)
    before = users_file.read_bytes()
    code, shown = on_terminal(["add", "ann", "admin", "--file", str(users_file)],
                              [("Password for ann: ", first), ("Again: ", again)], environment())
    assert code == 2
    assert message in shown and "Traceback" not in shown
    assert users_file.read_bytes() == before


def test_a_new_file_is_created_private(tmp_path) -> None:
    users_file = tmp_path / "config" / "users.toml"
    code, shown = on_terminal(["add", "ann", "viewer", "--file", str(users_file)],
                              [("Password for ann: ", "correct horse"), ("Again: ", "correct horse")], environment())
    assert code == 0, shown
    assert "VISIONTHINK_USERS_FILE=" in shown  # not the configured file: it says how to make the app read it
    assert users_file.stat().st_mode & 0o077 == 0  # password hashes: readable by the owner only
    [entry] = parse_users(file=users_file)
    assert (entry.name, entry.role) == ("ann", "viewer") and Directory([entry]).check_password("ann", "correct horse")


def test_replacing_a_user_needs_the_flag_and_keeps_every_other_line(tmp_path) -> None:
    users_file = tmp_path / "team.toml"
    users_file.write_text('# The team\n[[users]]  # lead\nname = "ann"\nrole = "viewer"\nemail = "ann@example.org"\n\n'
                          f'# The rest\n[[users]]\nname = "bob"\nrole = "annotator"\npassword_hash = "{BOB_HASH}"\n')
    before = users_file.read_text()
    refused = subprocess.run([sys.executable, "-m", "store.users", "add", "ann", "admin", "--file", str(users_file)],
                             cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    assert refused.returncode == 2 and "already in" in refused.stderr and "--replace" in refused.stderr
    assert users_file.read_text() == before

    code, shown = on_terminal(["add", "ann", "admin", "--file", str(users_file), "--replace"],
                              [("Password for ann: ", "new password"), ("Again: ", "new password")], environment())
    assert code == 0, shown
    after = users_file.read_text()
    for line in ("# The team", "[[users]]  # lead", 'email = "ann@example.org"', "# The rest", 'name = "bob"'):
        assert line in after
    ann, bob = parse_users(file=users_file)
    assert (ann.name, ann.role) == ("ann", "admin") and Directory([ann]).check_password("ann", "new password")
    assert bob == UserEntry("bob", "annotator", BOB_HASH)


def test_an_unknown_role_is_refused_with_the_valid_ones_before_any_prompt(tmp_path) -> None:
    users_file = bob_file(tmp_path)
    before = users_file.read_bytes()
    result = subprocess.run([sys.executable, "-m", "store.users", "add", "ann", "boss", "--file", str(users_file)],
                            cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "Unknown role 'boss'; the roles are viewer, annotator, admin." in result.stderr
    assert "Password" not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert users_file.read_bytes() == before


def test_without_a_users_file_it_says_how_to_name_one() -> None:
    result = subprocess.run([sys.executable, "-m", "store.users", "add", "ann", "admin"], cwd=ROOT,
                            env=environment(), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "pass --file PATH, or set VISIONTHINK_USERS_FILE" in result.stderr


def test_without_a_terminal_the_password_is_the_first_line_of_standard_input(tmp_path) -> None:
    users_file = tmp_path / "users.json"
    result = subprocess.run([sys.executable, "-m", "store.users", "add", "ann", "annotator", "--file", str(users_file)],
                            cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=60,
                            input="from a pipe\nignored\n")
    assert result.returncode == 0, result.stderr
    assert Directory(parse_users(file=users_file)).check_password("ann", "from a pipe")


def test_a_hash_mangled_by_double_quotes_in_a_shell_is_refused_by_name(tmp_path) -> None:
    """The same value through a real shell: double quotes expand its ``$`` parts, single quotes keep it whole."""
    command = f"{sys.executable} -m store.users check"
    mangled = subprocess.run(f'VISIONTHINK_USERS="ann:admin:{BOB_HASH}" {command}', shell=True, cwd=ROOT,
                             env=environment(), capture_output=True, text=True, timeout=60)
    assert mangled.returncode == 2, mangled.stdout
    assert "The password hash of user 'ann' is not a whole scrypt hash" in mangled.stderr
    assert "single quotes" in mangled.stderr and "python -m store.users add ann ROLE" in mangled.stderr
    assert "Traceback" not in mangled.stderr
    whole = subprocess.run(f"VISIONTHINK_USERS='ann:admin:{BOB_HASH}' {command}", shell=True, cwd=ROOT,
                           env=environment(), capture_output=True, text=True, timeout=60)
    assert whole.returncode == 0 and "ann\tadmin\tpassword set" in whole.stdout, whole.stderr


@pytest.mark.parametrize(
    "broken",
    [
        "",
        "scrypt6384",  # what a shell leaves of "$16384$8$1$…" when the salt starts with a letter
        BOB_HASH.rsplit("$", 1)[0],  # the digest cut off
        with_part(1, ""),
        with_part(1, "16383"),  # scrypt's N must be a power of two
        with_part(0, "bcrypt"),
        with_part(5, base64.b64encode(b"x" * 16).decode()),  # a 16-byte digest: hash_password writes 32
        with_part(4, "!!!!" + BOB_HASH.split("$")[4][4:]),  # not base64
        BOB_HASH + "$",
    ],
)
def test_hash_shapes_that_could_never_match_are_refused(tmp_path, broken: str) -> None:
    with pytest.raises(StoreError, match="The password hash of user 'ann' is not a whole scrypt hash"):
        check_hash_shape("ann", broken)
    users_file = tmp_path / "users.json"
    users_file.write_text(json.dumps({"users": [{"name": "ann", "role": "admin", "password_hash": broken}]}))
    with pytest.raises(StoreError, match="user 'ann'.*single quotes"):
        parse_users(file=users_file)


def test_a_mangled_hash_in_the_users_file_can_be_replaced_with_add(tmp_path) -> None:
    users_file = tmp_path / "users.json"
    users_file.write_text(json.dumps({"users": [{"name": "ann", "role": "admin", "password_hash": "scrypt6384"}]}))
    result = subprocess.run([sys.executable, "-m", "store.users", "add", "ann", "admin", "--file", str(users_file),
                             "--replace"], cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=60,
                            input="correct horse\n")
    assert result.returncode == 0, result.stderr
    assert Directory(parse_users(file=users_file)).check_password("ann", "correct horse")
