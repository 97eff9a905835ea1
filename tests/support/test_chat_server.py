"""Drives tests.support.chat_server with the real ``openai`` client over real HTTP."""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request

import openai
import pytest
from PIL import Image

from tests.support.chat_server import ChatServer, Reply, decode_data_url, image_urls


def _client(server: ChatServer, **kwargs) -> openai.OpenAI:
    kwargs.setdefault("timeout", 5.0)
    return openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, **kwargs)


def _png_data_url(color=(255, 0, 0), size=(4, 3)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


USER = [{"role": "user", "content": "say hello please"}]


def test_non_streamed_completion():
    with ChatServer(responses=["hello there world"]) as server:
        assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
        with _client(server) as client:
            resp = client.chat.completions.create(model="m1", messages=USER, max_tokens=16)
        assert resp.object == "chat.completion"
        assert resp.model == "m1"
        assert resp.choices[0].message.role == "assistant"
        assert resp.choices[0].message.content == "hello there world"
        assert resp.choices[0].finish_reason == "stop"
        assert resp.usage.completion_tokens == 3
        assert resp.usage.prompt_tokens == 3
        assert resp.usage.total_tokens == 6
        assert server.requests == [{"model": "m1", "messages": USER, "max_tokens": 16}]
        assert server.headers[0]["authorization"] == "Bearer x"
        assert server.headers[0]["content-type"].startswith("application/json")
        assert server.remaining == 0


def test_streamed_completion_with_usage():
    text = "The quick brown fox jumps over the lazy dog."
    reply = Reply(text, finish_reason="length", completion_tokens=7, prompt_tokens=11)
    with ChatServer(responses=[reply]) as server:
        with _client(server) as client:
            stream = client.chat.completions.create(
                model="test-model", messages=USER, stream=True, stream_options={"include_usage": True}
            )
            chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 5
    assert "".join(pieces) == text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    last = chunks[-1]
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (11, 7, 18)
    assert all(c.usage is None for c in chunks[:-1])
    assert server.requests[0]["stream"] is True
    assert server.requests[0]["stream_options"] == {"include_usage": True}


def test_streamed_without_usage_and_content_property():
    with ChatServer(responses=["abcdefghij"], model="served") as server:
        with _client(server) as client:
            chunks = list(client.chat.completions.create(model="served", messages=USER, stream=True))
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "abcdefghij"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_async_client_streams_too():
    import asyncio

    async def go(base_url: str) -> str:
        async with openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=5) as client:
            stream = await client.chat.completions.create(model="m", messages=USER, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    with ChatServer(responses=["async works fine"]) as server:
        assert asyncio.run(go(server.base_url)) == "async works fine"


def test_image_data_urls_recorded_and_decodable():
    red, blue = _png_data_url((255, 0, 0)), _png_data_url((0, 0, 255), size=(2, 5))
    messages = [
        {"role": "system", "content": "You are a vision model."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": red}},
                {"type": "text", "text": "compare these"},
                {"type": "image_url", "image_url": {"url": blue, "detail": "low"}},
            ],
        },
    ]
    with ChatServer(responses=["<answer>red</answer>"]) as server:
        with _client(server) as client:
            stream = client.chat.completions.create(model="test-model", messages=messages, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "<answer>red</answer>"
        body = server.requests[0]
    assert image_urls(body) == [red, blue]
    img = decode_data_url(image_urls(body)[0])
    assert img.size == (4, 3) and img.convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    img2 = decode_data_url(image_urls(body)[1])
    assert img2.size == (2, 5) and img2.convert("RGB").getpixel((1, 4)) == (0, 0, 255)
    with pytest.raises(ValueError):
        decode_data_url("https://example.com/x.png")


def test_server_error_and_rate_limit():
    script = [Reply(status=500), Reply("slow down", status=429, retry_after=2), "finally ok"]
    with ChatServer(responses=script) as server:
        with _client(server) as client:
            with pytest.raises(openai.InternalServerError) as err500:
                client.chat.completions.create(model="m", messages=USER)
            with pytest.raises(openai.RateLimitError) as err429:
                client.chat.completions.create(model="m", messages=USER, stream=True)
            resp = client.chat.completions.create(model="m", messages=USER)
        assert len(server.requests) == 3
    assert err500.value.status_code == 500
    assert err500.value.body["type"] == "server_error"
    assert err429.value.status_code == 429
    assert err429.value.response.headers["retry-after"] == "2"
    assert err429.value.body["message"] == "slow down"
    assert err429.value.code == "rate_limit_exceeded"
    assert resp.choices[0].message.content == "finally ok"


def test_client_retries_are_served_from_the_script():
    script = [Reply(status=429, retry_after=0.01), Reply(status=503, retry_after=0.01), "third time lucky"]
    with ChatServer(responses=script) as server:
        with openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=2, timeout=5) as client:
            resp = client.chat.completions.create(model="m", messages=USER)
        assert resp.choices[0].message.content == "third time lucky"
        assert [h["x-stainless-retry-count"] for h in server.headers] == ["0", "1", "2"]


def test_delay_beyond_client_timeout():
    # 60 s: longer than stop() waits for a handler (5 s), so only waking it can end the request in time
    with ChatServer(responses=[Reply("too late", delay_s=60.0)]) as server:
        with _client(server, timeout=0.3) as client:
            with pytest.raises(openai.APITimeoutError):
                client.chat.completions.create(model="m", messages=USER)
        assert len(server.requests) == 1 and server.in_flight == 1  # the handler still sleeps on its reply
    assert server.in_flight == 0  # stop() woke the sleeping handler


def test_script_runs_out():
    with ChatServer(responses=["only one"]) as server:
        with _client(server) as client:
            client.chat.completions.create(model="m", messages=USER)
            with pytest.raises(openai.InternalServerError) as err:
                client.chat.completions.create(model="m", messages=USER)
        assert len(server.requests) == 2
    assert "ran out" in err.value.message
    assert err.value.body["code"] == "script_error"


def test_callable_responses():
    def answer(body):
        last = body["messages"][-1]["content"]
        if last == "fail":
            return Reply(status=500)
        return f"echo: {last}"

    with ChatServer(responses=answer) as server:
        with _client(server) as client:
            resp = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "ping"}])
            assert resp.choices[0].message.content == "echo: ping"
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "fail"}])
        assert server.remaining is None
        assert len(server.requests) == 2


def test_models_unknown_path_and_malformed_json():
    with ChatServer(model="my-vlm") as server:
        with _client(server) as client:
            assert [m.id for m in client.models.list()] == ["my-vlm"]
            with pytest.raises(openai.NotFoundError):
                client.completions.create(model="my-vlm", prompt="hi")
        req = urllib.request.Request(
            server.base_url + "/chat/completions",
            data=b"{not json",
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 400
        assert "error" in json.loads(err.value.read())
        with pytest.raises(urllib.error.HTTPError) as err404:
            urllib.request.urlopen(server.base_url.rsplit("/v1", 1)[0] + "/nope", timeout=5)
        assert err404.value.code == 404
        assert json.loads(err404.value.read())["error"]["code"] == "not_found"
        assert server.requests == []


def test_concurrent_requests_and_clean_shutdown():
    before = set(threading.enumerate())
    with ChatServer(responses=[f"answer {i}" for i in range(8)]) as server:
        with _client(server) as client:
            results: list[str] = []
            lock = threading.Lock()

            def call() -> None:
                text = "".join(
                    c.choices[0].delta.content or ""
                    for c in client.chat.completions.create(model="m", messages=USER, stream=True)
                    if c.choices
                )
                with lock:
                    results.append(text)

            workers = [threading.Thread(target=call) for _ in range(8)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(10)
        assert sorted(results) == sorted(f"answer {i}" for i in range(8))
        assert len(server.requests) == 8
        # a keep-alive connection left open by a client must not block shutdown
        keepalive = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        keepalive.models.list()
    keepalive.close()
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leaked == []


def test_in_flight_counts_requests_answered_at_once():
    barrier = threading.Barrier(3, timeout=10)  # no request is answered until three are in flight together

    def together(body):
        barrier.wait()
        return "done"

    with ChatServer(together) as server:
        assert (server.in_flight, server.max_in_flight) == (0, 0)
        with _client(server) as client:
            workers = [threading.Thread(target=client.chat.completions.create, kwargs={"model": "m", "messages": USER})
                       for _ in range(3)]
            for w in workers:
                w.start()
            for w in workers:
                w.join(15)
        assert len(server.requests) == 3 and not barrier.broken
        assert (server.in_flight, server.max_in_flight) == (0, 3)


def test_token_delay_paces_a_reply_by_its_length_and_spreads_it_over_the_stream():
    long_reply = " ".join(["word"] * 30)  # 30 tokens: 3 s at 0.1 s a token
    with ChatServer(["ok", long_reply, long_reply], token_delay_s=0.1) as server:
        with _client(server, timeout=1.0) as client:
            assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == "ok"
            with pytest.raises(openai.APITimeoutError):  # answered only once all 30 tokens are "generated"
                client.chat.completions.create(model="m", messages=USER)
            # streamed, the same reply comes a chunk at a time, each well within the read timeout
            stream = client.chat.completions.create(model="m", messages=USER, stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == long_reply
    with pytest.raises(ValueError, match="token_delay_s"):
        ChatServer(token_delay_s=-1)
