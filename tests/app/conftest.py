"""The demo page served for the tests: with the tiny random model forced down the tool-call path (the gradio_client
and browser tests), or with any engine (`python -m tests.app.screenshot` serves the embedded miniature).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.examples import Example
from tests.support.ports import free_port


@contextmanager
def serve_page(engine, examples: list[Example] | None = None) -> Iterator[str]:
    """Launch the public page on 127.0.0.1 with ``engine``; yields its URL, and closes the server afterwards."""
    from app.model_slot import ModelSlot
    from app.ui import build_demo, launch_kwargs

    demo = build_demo(ModelSlot.ready(engine), examples)
    demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                        **launch_kwargs())
    try:
        yield demo.local_url
    finally:
        demo.close()


@contextmanager
def serve_forced_demo(tiny_model_dir: Path, examples: list[Example] | None = None) -> Iterator[str]:
    """The page with the tiny model forced to ask for the full image, then answer 44.6."""
    from tests.support.forcing import ANSWER_TURN, TOOL_TURN, forcing_factory
    from visionthink.backends import TransformersBackend
    from visionthink.engine import Engine, GenerationSettings
    from visionthink.hf import load_model, load_processor

    processor = load_processor(str(tiny_model_dir))
    backend = TransformersBackend(
        load_model(str(tiny_model_dir), device="cpu"), processor, "tiny-forced",
        logits_processor_factory=forcing_factory(processor.tokenizer, [TOOL_TURN, ANSWER_TURN]),
    )
    with serve_page(Engine(backend, settings=GenerationSettings(max_new_tokens=96)), examples) as url:
        yield url


@pytest.fixture(scope="module")
def forced_app(tiny_model_dir) -> Iterator[str]:
    """The page with a tiny model forced to ask for the full image, then answer."""
    with serve_forced_demo(tiny_model_dir) as url:
        yield url


@pytest.fixture
def chart(tmp_path) -> Path:
    """A 448x336 noise image: 192 visual tokens in full, 48 at 1/4 resolution."""
    rng = np.random.default_rng(11)
    path = tmp_path / "chart.png"
    Image.fromarray(rng.integers(0, 255, size=(336, 448, 3), dtype=np.uint8)).save(path)
    return path


def forced_engine(tiny_model_dir: Path, turns: list[str] | None = None):
    """An engine on the tiny model whose turns are forced (default: ask for the full image, then answer 44.6)."""
    from tests.support.forcing import ANSWER_TURN, TOOL_TURN, forcing_factory
    from visionthink.backends import TransformersBackend
    from visionthink.engine import Engine, GenerationSettings
    from visionthink.hf import load_model, load_processor

    processor = load_processor(str(tiny_model_dir))
    backend = TransformersBackend(
        load_model(str(tiny_model_dir), device="cpu"), processor, "tiny-forced",
        logits_processor_factory=forcing_factory(processor.tokenizer, turns or [TOOL_TURN, ANSWER_TURN]),
    )
    return Engine(backend, settings=GenerationSettings(max_new_tokens=160), model_source="tiny")


PASSWORDS = {"ada": "ada-pass", "ann": "ann-pass", "root": "root-pass"}
ROLES = {"ada": "annotator", "ann": "annotator", "root": "admin"}
# The studio's first load fills every tab the role allows: 2-4 s, once a minute on a busy 2-core machine.
SIGN_IN_TIMEOUT_MS = 120_000


def sign_in(page, user: str) -> None:
    """Sign in through the studio's login form (Gradio's own) on ``page``; returns once the studio greets them."""
    from playwright.sync_api import expect

    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(PASSWORDS[user])
    page.get_by_role("button", name="Login").click()
    expect(page.locator("#vt-who")).to_contain_text(f"Signed in as {user} ({ROLES[user]})",
                                                    timeout=SIGN_IN_TIMEOUT_MS)


@contextmanager
def serve_studio(tiny_model_dir: Path, tmp_path: Path, *, turns: list[str] | None = None,
                 db_url: str | None = None, engine=None, **settings_overrides) -> Iterator[str]:
    """The whole app as `python app.py` serves it (public page at /, studio at /studio behind the login), with
    a forced tiny model (or ``engine``), a real SQLite store (or ``db_url``) and three users. Yields the base
    URL."""
    import threading
    import time

    import uvicorn

    from app.model_slot import ModelSlot
    from app.server import build_pages, create_app
    from store.users import hash_password
    from visionthink.settings import Settings

    users = ";".join(f"{name}:{ROLES[name]}:{hash_password(pw)}" for name, pw in PASSWORDS.items())
    settings_overrides.setdefault("export_dir", tmp_path / "exports")  # not the repository's data/exports
    settings = Settings(db_url=db_url or f"sqlite:///{tmp_path / 'studio.db'}", users=users, ratings_per_item=2,
                        **settings_overrides)
    pages = build_pages(settings, slot=ModelSlot.ready(engine or forced_engine(tiny_model_dir, turns)), examples=[],
                        on_spaces=False)
    port = free_port()
    # A bounded graceful shutdown, waited for in full: on shutdown Gradio deletes every file the app made, and
    # files are named by content, so a server still stopping would delete the next test's identical images.
    server = uvicorn.Server(uvicorn.Config(create_app(pages), host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise AssertionError("the studio server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        assert not thread.is_alive(), "the studio server did not stop"
        pages.store.close()
