"""Publishing versions behind a link (``store.publish``), on real folders, links and locks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from store.publish import ExportError, check_out, new_version

ROOT = Path(__file__).resolve().parents[2]


def publish(out: Path, files: dict[str, str]) -> Path:
    with new_version(out) as draft:
        for name, text in files.items():
            (draft.folder / name).parent.mkdir(parents=True, exist_ok=True)
            (draft.folder / name).write_text(text)
        return draft.publish()


def test_versions_are_named_by_content_and_the_previous_one_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "export"
    versions = tmp_path / ".export.versions"
    first = publish(out, {"a.txt": "one", "sub/b.txt": "two"})
    assert first.parent == versions and out.is_symlink()
    assert os.readlink(out) == f".export.versions/{first.name}" and (out / "sub" / "b.txt").read_text() == "two"
    assert publish(out, {"sub/b.txt": "two", "a.txt": "one"}) == first  # the same content: the same version
    second = publish(out, {"a.txt": "changed"})
    third = publish(out, {"a.txt": "changed again"})
    assert len({first.name, second.name, third.name}) == 3
    assert sorted(p.name for p in versions.iterdir()) == sorted([".lock", second.name, third.name])
    assert (out / "a.txt").read_text() == "changed again"


def test_a_draft_that_is_not_published_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "export"
    current = publish(out, {"a.txt": "one"})
    with pytest.raises(RuntimeError, match="stopped"):
        with new_version(out) as draft:
            (draft.folder / "a.txt").write_text("half")
            raise RuntimeError("stopped")
    assert out.resolve() == current.resolve() and (out / "a.txt").read_text() == "one"
    assert sorted(p.name for p in (tmp_path / ".export.versions").iterdir()) == [".lock", current.name]


#: Holds the lock on ``sys.argv[1]`` from another process until its stdin closes.
HOLD = """
import sys
from pathlib import Path

from store.publish import new_version

with new_version(Path(sys.argv[1])):
    print("holding", flush=True)
    sys.stdin.read()
"""


def test_a_second_export_to_the_same_link_is_refused_while_one_runs(tmp_path: Path) -> None:
    out = tmp_path / "export"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n", holder.stderr.read()
        with pytest.raises(ExportError, match=re.escape(f"Another export to {out} is running; wait for it to finish.")):
            publish(out, {"a.txt": "one"})
    finally:
        holder.communicate(input="")  # closing its stdin lets it finish
    assert holder.returncode == 0
    assert publish(out, {"a.txt": "one"}).is_dir()  # free again


def test_only_links_made_by_an_export_are_replaced(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    with pytest.raises(ExportError, match="not an export link"):
        check_out(tmp_path / "mine")
    (tmp_path / "elsewhere").symlink_to(tmp_path / "mine")
    with pytest.raises(ExportError, match="not an export made by this tool"):
        check_out(tmp_path / "elsewhere")
    with pytest.raises(ExportError, match="not an export made by this tool"):
        publish(tmp_path / "elsewhere", {"a.txt": "one"})
    assert not (tmp_path / ".elsewhere.versions").exists()
    check_out(tmp_path / "new")  # a path that does not exist yet is fine
