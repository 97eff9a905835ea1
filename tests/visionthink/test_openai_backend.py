"""The OpenAI-compatible backend against a real HTTP server on 127.0.0.1 that speaks chat completions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.support.chat_server import ChatServer, Reply, decode_data_url, image_urls
from tests.support.forcing import ANSWER_TURN, TOOL_TURN
from tests.support.ports import refused_url
from visionthink import protocol
from visionthink.backends import BackendError, OpenAIBackend
from visionthink.engine import Engine, GenerationSettings, TextDelta
from visionthink.images import downsample


@pytest.fixture
def picture() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, size=(300, 500, 3), dtype=np.uint8))


def _text_of(content) -> str:
    return "".join(part.get("text", protocol.IMAGE_PLACEHOLDER) if part["type"] == "text" else protocol.IMAGE_PLACEHOLDER
                   for part in content)


def test_second_request_carries_both_images_and_the_tool_response(picture):
    with ChatServer([TOOL_TURN + protocol.IM_END, Reply(ANSWER_TURN, completion_tokens=17)], model="vt") as server:
        backend = OpenAIBackend(server.base_url, api_key="secret")
        assert backend.model_id == "vt"  # asked the server
        engine = Engine(backend, settings=GenerationSettings(max_new_tokens=321))
        events = list(engine.stream(picture, "What does the sign say?"))
        answer = events[-1].answer
        first, second = server.requests

    assert answer.requested_high_res and answer.final_answer == "The value is \\boxed{44.6}"
    assert answer.turns[0].turn.text == TOOL_TURN  # the end-of-turn token is stripped
    assert answer.turns[1].generated_tokens == 17
    assert "".join(e.text for e in events if isinstance(e, TextDelta) and e.index == 1) == ANSWER_TURN

    low = downsample(picture)
    assert [decode_data_url(u).size for u in image_urls(first)] == [low.size]
    urls = image_urls(second)
    assert [decode_data_url(u).size for u in urls] == [low.size, picture.size]
    assert np.array_equal(np.asarray(decode_data_url(urls[1])), np.asarray(picture))  # lossless, full resolution
    assert np.array_equal(np.asarray(decode_data_url(urls[0])), np.asarray(low))

    roles = [m["role"] for m in second["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    assert second["messages"][0]["content"] == protocol.SYSTEM_PROMPT
    assert _text_of(second["messages"][1]["content"]) == protocol.user_message("What does the sign say?").replace(
        protocol.IMAGE_MARKER, protocol.IMAGE_PLACEHOLDER
    )
    assert second["messages"][2]["content"] == TOOL_TURN
    assert _text_of(second["messages"][3]["content"]) == protocol.tool_response_message()
    assert second["max_tokens"] == 321 and second["temperature"] == 0 and second["stream"] is True
    assert second["model"] == "vt"


def test_direct_answer_is_one_request(picture):
    with ChatServer([ANSWER_TURN]) as server:
        answer = Engine(OpenAIBackend(server.base_url, "test-model")).ask(picture, "What is it?")
        assert len(server.requests) == 1
    assert answer.requested_high_res is False
    assert answer.tokens.used == answer.tokens.low_res


def test_length_finish_is_reported_as_truncated(picture):
    with ChatServer([Reply("<think>this goes on and on", finish_reason="length")]) as server:
        answer = Engine(OpenAIBackend(server.base_url, "test-model")).ask(picture, "What is it?")
    assert answer.stop_reason == "truncated"
    assert "cut off" in answer.turns[0].turn.reason


def test_server_errors_become_backend_errors(picture):
    with ChatServer([Reply("overloaded", status=500)]) as server:
        engine = Engine(OpenAIBackend(server.base_url, "test-model", max_retries=0))
        with pytest.raises(BackendError, match="refused the request"):
            engine.ask(picture, "What is it?")


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(BackendError, match="Could not list the models"):
        OpenAIBackend(refused_url("/v1"), max_retries=0, timeout_s=2)
