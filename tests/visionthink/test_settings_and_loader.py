"""Settings from the environment, and choosing a model: the checkpoint, a server, or the embedded miniature."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.chat_server import ChatServer
from tests.support.ports import refused_url
from visionthink.loader import ModelLoadError, load_engine
from visionthink.settings import ENV_NAMES, Settings, SettingsError


def test_defaults_match_the_readme_table():
    s = Settings.from_env({})
    assert s.model == "Senqiao/VisionThink-Efficient"
    assert (s.backend, s.max_turns, s.temperature, s.max_image_pixels) == ("transformers", 2, 0.0, 50_000_000)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    for name in ENV_NAMES.values():
        assert f"`{name}`" in readme, f"{name} is not documented in README.md"


def test_environment_overrides_and_conversions(tmp_path):
    s = Settings.from_env({
        "VISIONTHINK_MODEL": "/models/vt", "VISIONTHINK_MAX_NEW_TOKENS": "8_192", "VISIONTHINK_TEMPERATURE": "0.7",
        "VISIONTHINK_FALLBACK_MODEL": str(tmp_path), "OPENAI_API_KEY": "sk-test", "VISIONTHINK_REVISION": "",
    })
    assert (s.model, s.max_new_tokens, s.temperature, s.fallback_model) == ("/models/vt", 8192, 0.7, tmp_path)
    assert s.api_key == "sk-test" and s.revision is None
    assert Settings.from_env({"VISIONTHINK_API_KEY": "a", "OPENAI_API_KEY": "b"}).api_key == "a"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"VISIONTHINK_MAX_TURNS": "two"}, "VISIONTHINK_MAX_TURNS must be a whole number"),
        ({"VISIONTHINK_MAX_TURNS": "0"}, "VISIONTHINK_MAX_TURNS must be at least 1"),
        ({"VISIONTHINK_BACKEND": "onnx"}, "VISIONTHINK_BACKEND must be 'transformers' or 'openai'"),
        ({"VISIONTHINK_TOP_P": "high"}, "VISIONTHINK_TOP_P must be a number"),
        ({"VISIONTHINK_FALLBACK": "maybe"}, "VISIONTHINK_FALLBACK must be 'miniature' or 'none'"),
        ({"VISIONTHINK_JUDGE": "gpt"}, "VISIONTHINK_JUDGE must be 'llm' or 'rule', not 'gpt'"),
        ({"VISIONTHINK_JUDGE_BASE_URL": "localhost:8000"}, "VISIONTHINK_JUDGE_BASE_URL must be an http"),
        ({"VISIONTHINK_JUDGE_AZURE_ENDPOINT": "a.azure.com"}, "VISIONTHINK_JUDGE_AZURE_ENDPOINT must be an http"),
        ({"VISIONTHINK_JUDGE_CONCURRENCY": "many"}, "VISIONTHINK_JUDGE_CONCURRENCY must be a whole number"),
        ({"VISIONTHINK_JUDGE_CONCURRENCY": "0"}, "VISIONTHINK_JUDGE_CONCURRENCY must be at least 1, not 0"),
        ({"VISIONTHINK_JUDGE_TIMEOUT": "nan"}, "VISIONTHINK_JUDGE_TIMEOUT must be a positive number of seconds"),
        ({"GRADIO_SERVER_PORT": "http"}, "GRADIO_SERVER_PORT must be a whole number, not 'http'"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_local_folder_loads_without_fallback(tiny_model_dir):
    messages: list[str] = []
    engine = load_engine(Settings(model=str(tiny_model_dir), device="cpu"), messages.append)
    assert engine.notice is None
    assert engine.model_id == str(tiny_model_dir)
    assert engine.settings.max_new_tokens == 2048
    assert messages[-1] == f"Ready: {tiny_model_dir}."


def test_unavailable_model_falls_back_to_the_embedded_miniature_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))  # a machine with it cached too
    messages: list[str] = []
    settings = Settings(model="Senqiao/VisionThink-Efficient", device="cpu", fallback_max_new_tokens=32)
    engine = load_engine(settings, messages.append)
    assert engine.model_id == "visionthink-miniature" and engine.model_source == "miniature"
    assert "Could not load Senqiao/VisionThink-Efficient" in engine.notice
    assert "trained on a synthetic shapes-and-textures task, not a general model" in engine.notice
    assert engine.notice in messages
    assert engine.settings.max_new_tokens == 32


def test_a_missing_fallback_is_a_load_error_that_names_both(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="nor the embedded miniature in .*never-built"):
        load_engine(Settings(fallback_model=tmp_path / "never-built", device="cpu"))


def test_fallback_none_raises_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Could not load Senqiao/VisionThink-Efficient"):
        load_engine(Settings(fallback="none"))


def test_openai_backend_asks_the_server_for_its_model():
    with ChatServer([], model="served-vt") as server:
        engine = load_engine(Settings(backend="openai", base_url=server.base_url, model="auto"))
    assert engine.model_id == "served-vt" and engine.notice is None


def test_unreachable_server_is_a_load_error():
    with pytest.raises(ModelLoadError, match="Could not list the models served at"):
        load_engine(Settings(backend="openai", base_url=refused_url("/v1"), model="auto", request_timeout_s=2))
