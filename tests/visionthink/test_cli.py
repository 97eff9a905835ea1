"""`python -m visionthink ask` as a person runs it: real subprocesses, real files, a real local server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.support.chat_server import ChatServer, Reply, image_urls
from tests.support.forcing import ANSWER_TURN, TOOL_TURN
from tests.support.ports import refused_url
from visionthink import protocol

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "visionthink", "ask", *args],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.new("RGB", (640, 480), (120, 30, 200)).save(path)
    return path


BAD_FILES = {"missing.png": None, "empty.png": b"", "text.png": b"hello, I am text"}


@pytest.mark.parametrize(
    "name, question, message",
    [
        ("missing.png", "What?", "does not exist"),
        ("empty.png", "What?", "empty (0 bytes)"),
        ("text.png", "What?", "not an image"),
        ("photo.png", "   ", "question is empty"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, photo, name, question, message):
    if BAD_FILES.get(name) is not None:
        (tmp_path / name).write_bytes(BAD_FILES[name])
    result = run_cli("--image", str(tmp_path / name), "--question", question)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_setting_exits_2(photo):
    result = run_cli("--image", str(photo), "--question", "What?", env={"VISIONTHINK_MAX_NEW_TOKENS": "lots"})
    assert result.returncode == 2
    assert "VISIONTHINK_MAX_NEW_TOKENS must be a whole number" in result.stderr
    assert "Traceback" not in result.stderr


def test_json_output_against_an_openai_compatible_server(photo):
    with ChatServer([TOOL_TURN, ANSWER_TURN], model="vt-served") as server:
        result = run_cli("--image", str(photo), "--question", "What is the value?", "--backend", "openai",
                         "--base-url", server.base_url, "--model", "auto", "--json")
        second = server.requests[1]
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # exactly one JSON object and nothing else
    assert {"answer", "requested_high_res", "turns", "tokens", "latency_s", "model"} <= set(data)
    assert data["answer"] == "The value is \\boxed{44.6}"
    assert data["requested_high_res"] is True
    assert data["model"] == "vt-served"
    assert [t["kind"] for t in data["turns"]] == ["tool_call", "answer"]
    assert data["turns"][0]["think"] == "The labels are too small to read at this size."
    assert set(data["turns"][0]) >= {"kind", "think", "text", "answer"}
    assert data["tokens"] == {"low_res": 99, "high_res": 391, "used": 490, "full_res": 391, "saved": -99,
                              "retained_ratio": pytest.approx(490 / 391)}
    assert data["stop_reason"] == "answer" and data["mode"] == "auto"
    assert data["fallback"] is False
    assert len(image_urls(second)) == 2


def test_compare_runs_every_mode_on_one_image(photo):
    """`--mode compare`: auto asks for the full image (two requests), low and high answer at once, in that order,
    each with the images its mode allows; the JSON holds the three answers by mode."""
    with ChatServer([TOOL_TURN, ANSWER_TURN, ANSWER_TURN, ANSWER_TURN], model="vt-served") as server:
        result = run_cli("--image", str(photo), "--question", "What is the value?", "--backend", "openai",
                         "--base-url", server.base_url, "--model", "auto", "--mode", "compare", "--json")
        requests = server.requests
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["mode"] == "compare" and data["model"] == "vt-served" and data["fallback"] is False
    answers = data["answers"]
    assert list(answers) == ["auto", "low", "high"]
    assert [answers[m]["mode"] for m in answers] == ["auto", "low", "high"]
    assert answers["auto"]["requested_high_res"] is True
    assert answers["low"]["requested_high_res"] is False and answers["high"]["requested_high_res"] is False
    assert [answers[m]["tokens"]["used"] for m in answers] == [490, 99, 391]
    assert [len(image_urls(r)) for r in requests] == [1, 2, 1, 1]


def test_compare_text_output_ends_with_a_side_by_side_table(photo):
    with ChatServer([TOOL_TURN, ANSWER_TURN, ANSWER_TURN, ANSWER_TURN]) as server:
        result = run_cli("--image", str(photo), "--question", "What is the value?", "--backend", "openai",
                         "--base-url", server.base_url, "--model", "test-model", "--mode", "compare")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    headings = [out.index(f"════ {mode}: ") for mode in ("auto", "low", "high")]
    assert headings == sorted(headings)
    table = out[out.index("── Comparison ──"):].splitlines()[1:]
    assert table[0].split() == ["mode", "full", "image", "answer", "visual", "tokens", "latency"]
    assert table[1].startswith("auto") and "asked" in table[1] and "490 of 391" in table[1]
    assert table[2].startswith("low") and "never" in table[2] and "99 of 391" in table[2]
    assert table[3].startswith("high") and "always" in table[3] and "391 of 391" in table[3]
    assert all("The value is" in row for row in table[1:])


def test_json_tokens_match_the_spec_table(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (1024, 768), "white").save(path)
    with ChatServer([ANSWER_TURN]) as server:
        result = run_cli("--image", str(path), "--question", "What?", "--backend", "openai",
                         "--base-url", server.base_url, "--model", "test-model", "--json")
    assert result.returncode == 0, result.stderr
    tokens = json.loads(result.stdout)["tokens"]
    assert tokens == {"low_res": 252, "high_res": 0, "used": 252, "full_res": 999, "saved": 747,
                      "retained_ratio": pytest.approx(252 / 999)}


def test_text_output_shows_reasoning_decision_answer_and_tokens(photo):
    with ChatServer([TOOL_TURN, ANSWER_TURN]) as server:
        result = run_cli("--image", str(photo), "--question", "What is the value?", "--backend", "openai",
                         "--base-url", server.base_url, "--model", "test-model")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "── Turn 1 (images in context: 320x240) ──" in out
    assert "The labels are too small to read at this size." in out
    assert "→ Asked for the full-resolution image (640x480, 391 visual tokens)" in out
    assert "── Turn 2 (images in context: 320x240, 640x480) ──" in out
    assert "Answer: The value is \\boxed{44.6}" in out
    assert "Visual tokens: 490 used vs 391 at full resolution (125.3%; saved -99)" in out


@pytest.mark.parametrize("model", ["auto", "Senqiao/VisionThink-Efficient"])
def test_unreachable_server_is_one_line_exit_1(photo, model):
    """Named or not, the model is looked up on the server first: nothing claims to be "Using" a dead server."""
    result = run_cli("--image", str(photo), "--question", "What?", "--backend", "openai", "--base-url",
                     refused_url("/v1"), "--model", model)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Could not list the models served at" in errors[0]
    assert "Using" not in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def test_a_model_the_server_does_not_serve_is_one_line_exit_1(photo):
    with ChatServer([ANSWER_TURN], model="vt-served") as server:
        result = run_cli("--image", str(photo), "--question", "What?", "--backend", "openai",
                         "--base-url", server.base_url, "--model", "some-other-model")
        assert server.requests == []
    assert result.returncode == 1
    assert "error: The server at" in result.stderr and "serves vt-served, not some-other-model" in result.stderr
    assert "Using" not in result.stderr and "Traceback" not in result.stderr


def test_a_server_failing_mid_episode_is_one_line_exit_1(photo):
    with ChatServer([TOOL_TURN, Reply("overloaded", status=400)]) as server:
        result = run_cli("--image", str(photo), "--question", "What?", "--backend", "openai",
                         "--base-url", server.base_url, "--model", "test-model")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refused the request" in errors[0]
    assert "Traceback" not in result.stderr


# A 20-byte fake PNG (signature, IHDR length and type, 6 bytes of header): Pillow raised a bare OSError for it.
FAKE_PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\x00\x00"


@pytest.mark.parametrize("data", [FAKE_PNG, b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01"])
def test_a_truncated_image_is_one_line_exit_2(tmp_path, data):
    path = tmp_path / "fake.png"
    path.write_bytes(data)
    result = run_cli("--image", str(path), "--question", "What?")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert "Upload" in lines[0]


def test_default_model_offline_falls_back_to_the_embedded_miniature(photo, tmp_path):
    result = run_cli("--image", str(photo), "--question", "What colour is the shape?", "--json",
                     env={"VISIONTHINK_MODEL": "Senqiao/VisionThink-Efficient", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 0, result.stderr
    assert "WARNING: Could not load Senqiao/VisionThink-Efficient" in result.stderr
    assert "a miniature VisionThink trained on a synthetic shapes-and-textures task" in result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "visionthink-miniature" and data["fallback"] is True
    assert data["turns"][0]["kind"] in ("answer", "tool_call") and data["stop_reason"] == "answer"
    assert data["tokens"]["full_res"] == 391 and data["turns"][0]["generated_tokens"] <= 64
    assert not any(t in data["turns"][0]["text"] for t in protocol.VISION_TOKENS)
