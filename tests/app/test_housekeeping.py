"""The file sweep on real files (the whole app deleting old answers and files is in test_hardening.py)."""

from __future__ import annotations

import os

from app.housekeeping import sweep_files


def test_sweep_deletes_old_files_and_empty_folders_but_keeps_what_pages_need(tmp_path):
    pages, studio = tmp_path / "gradio", tmp_path / "gradio-studio"
    shown = pages / "a1" / "image.png"
    example = pages / "b2" / "shape-colour.png"
    archive = studio / "export-x" / "visionthink-jsonl.zip"
    for path in (shown, example, archive):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x" * 1000)

    assert sweep_files([pages, studio], max_age_s=3600) == (0, 0)  # all new: nothing goes
    files, freed = sweep_files([pages, studio, tmp_path / "missing"], max_age_s=-1,
                               keep={os.path.abspath(example)})
    assert (files, freed) == (2, 2000)
    assert not shown.exists() and not archive.exists() and example.exists()
    assert not (pages / "a1").exists() and not (studio / "export-x").exists()
    assert pages.is_dir() and studio.is_dir()  # the roots stay
