"""Every store test runs twice: on a real SQLite file and on a real PostgreSQL server (a fresh database each).

The server is ``VISIONTHINK_TEST_PG_URL`` when set (CI), else a throwaway one this session starts from Debian's
binaries (see ``tests/support/postgres.py``). Without either, the PostgreSQL half fails, saying how to fix it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from store.api import Store
from tests.support.postgres import fresh_database
from visionthink import protocol
from visionthink.engine import Answer, TurnRecord
from visionthink.images import TokenReport

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty database: a SQLite file in ``tmp_path``, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with fresh_database(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
def make_store(store_url: str) -> Iterator[Callable[..., Store]]:
    """``make_store(**options)``: a ``Store`` on this test's database, closed at teardown."""
    stores: list[Store] = []

    def make(**options) -> Store:
        stores.append(Store(store_url, **options))
        return stores[-1]

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store) -> Store:
    """A ``Store`` with the defaults (2 ratings per item, no anonymous thumbs), schema upgraded."""
    return make_store()


# --- Data to store -------------------------------------------------------------------------------------------


def sample_image(seed: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A random RGB image; different seeds give different content hashes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def build_answer(question: str = "What is the reading on the gauge?", *, mode: str = "auto",
                 model: str = "Senqiao/VisionThink-General", requested_high_res: bool = True,
                 answer: str | None = "44.6", low_res: int = 64, full_res: int = 256,
                 latency_s: float = 1.5) -> Answer:
    """A finished episode as the engine returns it: a tool call for the full image (when asked for), then an answer."""
    high_res = full_res if requested_high_res else 0
    turns = []
    if requested_high_res:
        turns.append(TurnRecord(index=0, turn=protocol.parse_turn(protocol.tool_call_turn_text("Too small.")),
                                latency_s=0.5, generated_tokens=30, finish_reason="stop", prompt_tokens=120,
                                image_tokens=[low_res]))
    turns.append(TurnRecord(index=len(turns), turn=protocol.parse_turn(protocol.answer_turn_text("Legible.", answer)),
                            latency_s=1.0, generated_tokens=12, finish_reason="stop", prompt_tokens=300,
                            image_tokens=[low_res, high_res] if requested_high_res else [low_res]))
    return Answer(
        question=question, mode=mode, model=model, turns=turns, final_answer=answer,
        requested_high_res=requested_high_res,
        tokens=TokenReport.build(low_res=low_res, high_res=high_res, full_res=full_res),
        latency_s=latency_s, stop_reason="answer", original_size=(64, 48),
    )
