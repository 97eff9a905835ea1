"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

# No model hub is reachable in tests or CI: fail fast instead of waiting on the network. Tests of the online path
# switch this off for themselves.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL (seed 0, the checkpoint's pixel limits), built once per test session."""
    from visionthink.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2.5-vl"), seed=0)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The PostgreSQL server's admin URL (able to CREATE DATABASE), for the whole session: ``VISIONTHINK_TEST_PG_URL``
    when set (CI), else a throwaway server started from Debian's binaries (``tests/support/postgres.py``)."""
    from tests.support.postgres import PostgresUnavailable, postgres_admin_url

    problem = None
    try:
        with postgres_admin_url() as url:
            yield url
    except PostgresUnavailable as exc:
        problem = str(exc)
    if problem:  # outside the except block, so the report is the message, not a chain of tracebacks
        pytest.fail(f"The tests on PostgreSQL need a server. {problem}", pytrace=False)
