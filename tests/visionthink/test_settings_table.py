"""Each setting is one field carrying its variable and its help; README's table is rendered from the fields."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from visionthink.settings import LOCAL_DB_URL, Settings, SettingsError, markdown_table

ROOT = Path(__file__).resolve().parents[2]


def readme_settings_table() -> list[str]:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").split("\n")
    start = lines.index("## Settings")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("## "))
    return [line for line in lines[start:end] if line.startswith("|")]


def test_readme_holds_exactly_the_table_the_fields_render():
    assert readme_settings_table() == markdown_table().split("\n"), (
        "README's settings table differs from the Settings fields: paste the output of "
        "`python -m visionthink.settings` into its '## Settings' section.")


def test_every_field_has_its_own_variable_and_help():
    variables = [f.metadata["env"] for f in fields(Settings)]
    assert len(set(variables)) == len(variables)
    assert all(f.metadata["help"].strip() for f in fields(Settings))
    table = markdown_table()
    assert all(f"| `{name}` |" in table for name in variables)


def test_the_module_prints_the_table():
    printed = subprocess.run([sys.executable, "-m", "visionthink.settings"], cwd=ROOT, capture_output=True,
                             text=True, check=True, timeout=60).stdout
    assert printed == markdown_table() + "\n"


def test_defaults_are_shown_as_their_values_unless_the_field_says_otherwise():
    rows = {line.split(" | ")[0]: line.split(" | ")[1] for line in markdown_table().split("\n")[2:]}
    assert rows["| `VISIONTHINK_MAX_NEW_TOKENS`"] == "`2048`"
    assert rows["| `VISIONTHINK_TEMPERATURE`"] == "`0`" and rows["| `VISIONTHINK_JUDGE_TIMEOUT`"] == "`120`"
    assert rows["| `VISIONTHINK_STORE`"] == "`1`" and rows["| `VISIONTHINK_ANONYMOUS_RATING`"] == "`0`"
    assert rows["| `VISIONTHINK_EXAMPLES_DIR`"] == "`~/.cache/visionthink/examples`"
    assert rows["| `VISIONTHINK_JUDGE_CACHE`"] == "(memory only)"


def test_the_judge_server_and_spaces_variables_are_settings(tmp_path):
    s = Settings.from_env({
        "VISIONTHINK_JUDGE": "llm", "VISIONTHINK_JUDGE_BASE_URL": " http://127.0.0.1:9/v1 ",
        "VISIONTHINK_JUDGE_CONCURRENCY": "4", "VISIONTHINK_JUDGE_TIMEOUT": "2.5",
        "VISIONTHINK_JUDGE_CACHE": str(tmp_path / "j.sqlite"), "OPENAI_API_KEY": "sk-shared",
        "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7861", "SPACE_ID": "owner/space",
        "VISIONTHINK_EXAMPLES_DIR": str(tmp_path / "examples"), "VISIONTHINK_DB_URL": "sqlite:///x.db",
    })
    assert (s.judge, s.judge_base_url) == ("llm", "http://127.0.0.1:9/v1")
    assert (s.judge_concurrency, s.judge_timeout_s) == (4, 2.5)
    assert s.judge_cache == tmp_path / "j.sqlite" and s.judge_api_key == s.api_key == "sk-shared"
    assert (s.server_name, s.server_port, s.space_id) == ("0.0.0.0", 7861, "owner/space")
    assert s.examples_dir == tmp_path / "examples" and s.db_url == "sqlite:///x.db"

    defaults = Settings.from_env({"GRADIO_SERVER_NAME": "  ", "VISIONTHINK_JUDGE": ""})
    assert (defaults.server_name, defaults.server_port, defaults.space_id, defaults.judge) == (None, 7860, None, None)
    assert defaults.judge_model == "gpt-4o-2024-11-20" and defaults.db_url == LOCAL_DB_URL

