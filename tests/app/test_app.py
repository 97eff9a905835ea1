"""The demo page launched on 127.0.0.1 and driven end to end with gradio_client (`forced_app` is in conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_ask_streams_the_whole_loop(forced_app, chart):
    client = Client(forced_app, verbose=False)
    job = client.submit(handle_file(str(chart)), "What is the value of Beta in Q3?", "auto", api_name="/ask")
    updates = list(job)
    error, badge, chat, gallery, tokens, _status, _rated = job.result()

    assert len(updates) > 3  # streamed, not one final update
    assert error == ""
    assert "Asked for the full-resolution image" in badge
    titles = [m["metadata"]["title"] for m in chat if m.get("metadata") and m["metadata"].get("title")]
    assert titles[0].startswith("Turn 1 · thinking on the image at 224×168")
    assert any("Asked for the full-resolution image" in t for t in titles)
    assert titles[-1].startswith("Turn 2 · thinking on 2 images (224×168, 448×336)")
    thinking = [m for m in chat if m.get("metadata")]
    assert all(m["metadata"].get("status") == "done" for m in thinking)
    final = chat[-1]
    assert final["role"] == "assistant" and "44.6" in str(final["content"])
    assert "labels are too small" in str(thinking[0]["content"])

    assert len(gallery) == 2
    sizes = [Image.open(item["image"]).size for item in gallery]
    assert sizes == [(224, 168), (448, 336)]
    assert "<b>240</b> visual tokens used vs <b>192</b>" in tokens
    assert "125.0%" in tokens and "48</b> more than full resolution" in tokens


def test_forced_low_mode_badge(forced_app, chart):
    client = Client(forced_app, verbose=False)
    error, badge, _chat, _gallery, tokens, _, _ = client.predict(handle_file(str(chart)), "What is it?", "low",
                                                                api_name="/ask")
    assert error == ""
    assert "1/4-resolution image only" in badge
    assert "<b>48</b> visual tokens used vs <b>192</b>" in tokens


@pytest.mark.parametrize(
    "content, question, message",
    [
        (b"", "What is it?", "empty (0 bytes)"),
        (b"hello, I am text", "What is it?", "not an image this app can read"),
        (None, "   ", "The question is empty"),
    ],
)
def test_bad_input_shows_a_message_not_a_traceback(forced_app, tmp_path, chart, content, question, message):
    path = chart
    if content is not None:
        path = tmp_path / "upload.png"
        path.write_bytes(content)
    client = Client(forced_app, verbose=False)
    error, badge, chat, _gallery, tokens, *_ = client.predict(handle_file(str(path)), question, "auto",
                                                            api_name="/ask")
    assert message in error
    assert "Traceback" not in error
    assert badge == "" and tokens == "" and chat == []


def test_app_entry_point_falls_back_to_the_embedded_miniature(tmp_path):
    """`python app.py` with the default checkpoint offline: the page runs the miniature, says in one line what it
    is, and leads its examples with the miniature's own: a coarse question it answers from the 1/4 image and a
    fine one it asks the full image for."""
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VISIONTHINK_MODEL": "Senqiao/VisionThink-Efficient",
        "VISIONTHINK_EXAMPLES_DIR": str(tmp_path / "examples"),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "HF_HOME": str(tmp_path / "hf"),
        "VISIONTHINK_DB_URL": f"sqlite:///{tmp_path / 'studio.db'}",
    }
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        client = _connect(f"http://127.0.0.1:{port}/", process)
        examples = tmp_path / "examples"
        names = sorted(p.name for p in examples.iterdir())
        assert names == ["chart.png", "receipt.png", "scene.png", "shape-colour.png", "shape-pattern.png"]
        coarse = client.predict(handle_file(str(examples / "shape-colour.png")), "What colour is the shape?", "auto",
                                api_name="/ask")
        fine = client.predict(handle_file(str(examples / "shape-pattern.png")), "What pattern fills the shape?",
                              "auto", api_name="/ask")
        for error, badge, chat, _gallery, tokens, status, *_ in (coarse, fine):
            assert error == ""
            assert status == "⚠️ Running a miniature demonstration model, not VisionThink (`visionthink-miniature`)."
            assert "visual tokens used" in tokens and chat[-1]["role"] == "assistant"
        assert "Answered from the 1/4" in coarse[1] and "red" in str(coarse[2][-1]["content"])
        assert "Asked for the full-resolution image" in fine[1] and "checkerboard" in str(fine[2][-1]["content"])
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "Could not load Senqiao/VisionThink-Efficient" in output
    assert "trained on a synthetic shapes-and-textures task, not a general model" in output


def _connect(url: str, process: subprocess.Popen, timeout_s: float = 120.0) -> Client:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"app.py exited early:\n{process.stdout.read()}")
        try:
            return Client(url, verbose=False)
        except Exception:
            time.sleep(0.5)
    raise AssertionError("app.py did not come up in time")
