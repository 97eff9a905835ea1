"""The shared small helpers: atomic writes, one-writer locks, paths against Hub ids, UTC, days, the command parser."""

from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from visionthink.args import EXIT_BAD_INPUT, CommandParser, fail
from visionthink.clock import as_utc, parse_day, utcnow
from visionthink.files import atomic_write, exclusive, looks_like_path


def test_atomic_write_replaces_whole_files_and_keeps_permissions(tmp_path):
    path = tmp_path / "sub" / "users.toml"
    atomic_write(path, "first\n", mode=0o600)
    assert path.read_text() == "first\n" and path.stat().st_mode & 0o777 == 0o600
    atomic_write(path, b"second")
    assert path.read_bytes() == b"second" and path.stat().st_mode & 0o777 == 0o600  # the old file's mode
    atomic_write(path, lambda handle: handle.write(b"third"))
    assert path.read_bytes() == b"third"
    previous = os.umask(0o027)
    try:
        atomic_write(tmp_path / "summary.json", "{}")  # a new file: what open() would give it under the umask
    finally:
        os.umask(previous)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in path.parent.iterdir()] == ["users.toml"]  # no temporary left behind


def test_a_failed_atomic_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write(path, "{}")

    def broken(handle):
        handle.write(b'{"half": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def _hold(lock_path: str, started, release) -> None:
    with exclusive(lock_path, lambda: RuntimeError("busy")):
        started.set()
        release.wait(30)


def test_a_second_writer_is_refused_while_another_process_holds_the_lock(tmp_path):
    lock_path = str(tmp_path / ".lock")
    context = multiprocessing.get_context("spawn")
    started, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(lock_path, started, release))
    holder.start()
    try:
        assert started.wait(60)
        with pytest.raises(RuntimeError, match="busy"):
            with exclusive(lock_path, lambda: RuntimeError("busy")):
                pass
    finally:
        release.set()
        holder.join(60)
    with exclusive(lock_path, lambda: RuntimeError("busy")):  # free again once the holder is done
        pass


@pytest.mark.parametrize(("name", "path"), [
    ("Senqiao/VisionThink-Efficient", False), ("Qwen/Qwen2.5-VL-7B-Instruct", False), ("gpt2", False),
    ("./model", True), ("../data/export", True), ("/abs/folder", True), ("~/model", True), (".", True),
    ("runs/exports/grpo", True), ("items.parquet", True), ("rows.jsonl", True),
])
def test_looks_like_path_tells_local_paths_from_hub_ids(name, path):
    assert looks_like_path(name) is path
    assert looks_like_path(Path(name)) is True


def test_utc_helpers():
    now = utcnow()
    assert now.tzinfo is not None and abs(now - datetime.now(timezone.utc)) < timedelta(minutes=1)
    naive = datetime(2026, 12, 7, 10, 0)
    assert as_utc(naive) == datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc)
    plus_two = datetime(2026, 12, 7, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert as_utc(plus_two).hour == 10 and as_utc(plus_two).tzinfo == timezone.utc
    assert as_utc(None) is None


def test_parse_day():
    assert parse_day(" 2026-03-01 ") == datetime(2026, 3, 1, tzinfo=timezone.utc)
    for bad in ("2026-3-1", "2026-02-30", "yesterday", ""):
        with pytest.raises(ValueError, match="YYYY-MM-DD"):
            parse_day(bad)


@dataclass
class _Args:
    out: str = field(metadata={"help": "where"})
    limit: int | None = field(default=None, metadata={"help": "how many"})


def test_command_parser_reads_dataclasses_and_fails_in_one_line(capsys):
    parser = CommandParser(_Args, prog="python -m thing")
    (args,) = parser.parse(["--out", "x", "--limit", "3"])
    assert args == _Args(out="x", limit=3)
    for bad in (["--out", "x", "--unknown"], ["--limit", "many", "--out", "x"], []):
        with pytest.raises(SystemExit) as stop:
            parser.parse(bad)
        assert stop.value.code == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert err.startswith("python -m thing: error: ") and err.count("\n") == 1, err
    assert "how many" in parser.format_help()
    unnamed = CommandParser(_Args, prog="python -m thing", named_errors=False)
    with pytest.raises(SystemExit):
        unnamed.parse([])
    assert capsys.readouterr().err.startswith("error: ")
    assert fail(None, "no such file", 1) == 1 and capsys.readouterr().err == "error: no such file\n"
    assert fail("python -m thing", "bad") == EXIT_BAD_INPUT
    assert capsys.readouterr().err == "python -m thing: error: bad\n"


