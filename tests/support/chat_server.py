"""A scripted, real-HTTP stand-in for an OpenAI-compatible chat-completions server.

It plays the part of a vLLM/SGLang server or a paid API in tests: the official
``openai`` client talks to it over a real socket on 127.0.0.1, unmodified.

    with ChatServer(responses=["hello there", Reply(status=429, retry_after=1)]) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        ...
        server.requests   # JSON bodies received on POST /v1/chat/completions, in order
        server.headers    # the matching request headers (keys lower-cased)

``responses`` is either a script (a list consumed one item per chat request; each
item a ``str`` -- the assistant content -- or a :class:`Reply`) or a callable
``fn(body) -> str | Reply`` answering every request.  When the script runs out the
server answers 500 with a message saying so.

Wire format (mirrors the OpenAI API as read by ``openai`` 3.52.0):

* non-streamed: a ``chat.completion`` object with ``choices[0].message.content``,
  ``finish_reason`` and ``usage``;
* ``"stream": true``: ``text/event-stream`` (chunked transfer encoding) of
  ``chat.completion.chunk`` objects -- a role chunk, content deltas of
  ``chunk_size`` characters, a chunk carrying ``finish_reason``, then, when
  ``stream_options.include_usage`` is true, a chunk with empty ``choices`` and
  ``usage`` -- and finally ``data: [DONE]``;
* errors: ``{"error": {"message", "type", "code"}}`` with the scripted status
  (and a ``retry-after`` header when :attr:`Reply.retry_after` is set).

Malformed replies, for clients that must survive a broken server or proxy:

* ``Reply(body=b"{not json")``: the scripted status (200) with exactly that body
  (``str``/``bytes`` as is, a ``dict``/``list`` JSON-encoded, e.g. a completion
  without ``choices``) under ``content_type`` (``application/json``);
* ``Reply(content=None)``: a completion whose ``message.content`` is ``null``;
* ``Reply(headers={"retry-after-ms": "1"})``: extra headers on any response.

Speed and load, for throughput tests and benchmarks:

* ``ChatServer(token_delay_s=0.01)``: every completion takes that long per
  completion token (the pieces ``usage`` counts), like a server generating at a
  fixed speed: a streamed reply spreads the time evenly over its content
  chunks, a non-streamed one waits before it answers;
* ``server.in_flight`` / ``server.max_in_flight``: chat requests being answered
  now / the most at once since the server started.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import socket
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Union

__all__ = ["ChatServer", "Reply", "image_urls", "decode_data_url"]


@dataclass
class Reply:
    """One scripted answer.

    ``status != 200`` produces an OpenAI-style JSON error; its message is
    ``content`` when given, else a generic "scripted <status> error".
    ``body`` replaces the whole response body (see the module docstring).
    """

    content: str | None = ""
    status: int = 200
    delay_s: float = 0.0
    finish_reason: str = "stop"
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    retry_after: float | int | str | None = None
    chunk_delay_s: float = 0.0  # pause between streamed chunks (slow-stream tests)
    body: str | bytes | dict | list | None = None  # the raw response body, sent instead of the usual one
    content_type: str = "application/json"  # of ``body``
    headers: dict[str, str] | None = None  # extra response headers


Responses = Union[Iterable[Union[str, Reply]], Callable[[dict], Union[str, Reply]]]

_ERROR_KINDS = {
    400: ("invalid_request_error", "bad_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def _error_kind(status: int) -> tuple[str, str]:
    if status in _ERROR_KINDS:
        return _ERROR_KINDS[status]
    if status >= 500:
        return ("server_error", "internal_error")
    return ("invalid_request_error", f"http_{status}")


def _error_body(status: int, message: str, code: str | None = None) -> dict:
    err_type, default_code = _error_kind(status)
    return {"error": {"message": message, "type": err_type, "param": None, "code": code or default_code}}


def _message_texts(body: dict) -> list[str]:
    texts: list[str] = []
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    return texts


def _count_pieces(text: str) -> int:
    return len(text.split())


def image_urls(body: dict) -> list[str]:
    """Every ``image_url.url`` in the request's messages, in order."""
    urls: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict):
                continue
            image_url = part.get("image_url")
            if isinstance(image_url, dict) and isinstance(image_url.get("url"), str):
                urls.append(image_url["url"])
            elif isinstance(image_url, str):  # lenient: some clients send the bare string
                urls.append(image_url)
    return urls


def decode_data_url(url: str):
    """Decode a ``data:image/...;base64,...`` URL into a loaded ``PIL.Image.Image``."""
    from PIL import Image

    if not url.startswith("data:"):
        raise ValueError(f"not a data URL: {url[:40]!r}")
    header, sep, payload = url.partition(",")
    if not sep:
        raise ValueError("data URL has no ',' separator")
    meta = header[len("data:"):].split(";")
    if not meta[0].startswith("image/"):
        raise ValueError(f"data URL is not an image: {meta[0]!r}")
    if "base64" not in meta[1:]:
        raise ValueError("data URL is not base64-encoded")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"bad base64 in data URL: {exc}") from exc
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # safety net only; ChatServer joins its threads itself
    block_on_close = False
    allow_reuse_address = True
    # A listen backlog like a real server's: socketserver's default of 5 overflows when dozens of clients connect at
    # once (an evaluation with --concurrency 64), and Linux then drops their connection attempts for a second.
    request_queue_size = 128

    def __init__(self, owner: "ChatServer") -> None:
        self.owner = owner
        super().__init__((owner.host, 0), _Handler)

    def process_request(self, request, client_address):  # type: ignore[override]
        thread = threading.Thread(
            target=self._serve_one, args=(request, client_address), name="chat-server-conn", daemon=True
        )
        self.owner._track(thread, request)
        thread.start()

    def _serve_one(self, request, client_address) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            self.owner._untrack(threading.current_thread(), request)

    def handle_error(self, request, client_address) -> None:  # quiet on client disconnects
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr logging
        pass

    # ---- plumbing -------------------------------------------------------------------
    @property
    def owner(self) -> "ChatServer":
        return self.server.owner

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, status: int, payload: dict, extra_headers: dict | None = None) -> None:
        self._send_raw(status, json.dumps(payload).encode(), "application/json", extra_headers)

    def _send_raw(self, status: int, data: bytes, content_type: str, extra_headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", f"req-{uuid.uuid4().hex[:12]}")
        for key, value in (extra_headers or {}).items():
            self.send_header(key, str(value))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_error_json(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        self._send_json(status, _error_body(status, message, code), extra)

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    # ---- routing --------------------------------------------------------------------
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/v1/models":
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": self.owner.model, "object": "model", "created": self.owner.created, "owned_by": "test"}
                    ],
                },
            )
        else:
            self._send_error_json(404, f"Unknown path: GET {self.path}", "not_found")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        raw = self._read_body()
        if path != "/v1/chat/completions":
            self._send_error_json(404, f"Unknown path: POST {self.path}", "not_found")
            return
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("request body must be a JSON object")
        except ValueError as exc:
            self._send_error_json(400, f"Malformed JSON body: {exc}", "invalid_json")
            return
        headers = {key.lower(): value for key, value in self.headers.items()}
        self.owner._begin_request()
        try:
            try:
                reply = self.owner._next_reply(body, headers)
            except _ScriptError as exc:
                self._send_error_json(500, str(exc), "script_error")
                return
            try:
                self._answer(body, reply)
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout, OSError):
                self.close_connection = True  # client gave up (e.g. its timeout fired)
        finally:
            self.owner._end_request()

    def do_PUT(self) -> None:
        self._read_body()
        self._send_error_json(404, f"Unknown path: PUT {self.path}", "not_found")

    do_DELETE = do_PATCH = do_PUT

    # ---- answering ------------------------------------------------------------------
    def _answer(self, body: dict, reply: Reply) -> None:
        owner = self.owner
        if reply.delay_s > 0 and owner._stopping.wait(reply.delay_s):
            self.close_connection = True
            return
        extra = dict(reply.headers or {})
        if reply.body is not None:
            data = reply.body
            if isinstance(data, (dict, list)):
                data = json.dumps(data)
            if isinstance(data, str):
                data = data.encode()
            self._send_raw(reply.status, data, reply.content_type, extra)
            return
        if reply.status != 200:
            if reply.retry_after is not None:
                extra["retry-after"] = reply.retry_after
            message = reply.content or f"scripted {reply.status} error"
            self._send_error_json(reply.status, message, extra=extra or None)
            return

        model = body.get("model") or owner.model
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        prompt_tokens = (
            reply.prompt_tokens
            if reply.prompt_tokens is not None
            else sum(_count_pieces(t) for t in _message_texts(body))
        )
        completion_tokens = (
            reply.completion_tokens if reply.completion_tokens is not None else _count_pieces(reply.content or "")
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        generation_s = owner.token_delay_s * completion_tokens

        if not body.get("stream"):
            if generation_s > 0 and owner._stopping.wait(generation_s):
                self.close_connection = True
                return
            self._send_json(
                200,
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": reply.content},
                            "logprobs": None,
                            "finish_reason": reply.finish_reason,
                        }
                    ],
                    "usage": usage,
                },
                extra or None,
            )
            return

        stream_options = body.get("stream_options") or {}
        include_usage = bool(isinstance(stream_options, dict) and stream_options.get("include_usage"))

        def chunk(choices: list, usage_value: dict | None = None) -> dict:
            obj = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if include_usage:
                obj["usage"] = usage_value  # null on every chunk but the last, like OpenAI
            return obj

        def choice(delta: dict, finish_reason: str | None = None) -> dict:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

        events: list[dict] = [chunk([choice({"role": "assistant"})])]
        size = max(1, owner.chunk_size)
        content = reply.content or ""
        for start in range(0, len(content), size):
            events.append(chunk([choice({"content": content[start : start + size]})]))
        generating = max(1, len(events) - 1)  # the content chunks (or the finish chunk when there is no content)
        events.append(chunk([choice({}, reply.finish_reason)]))
        if include_usage:
            events.append(chunk([], usage))

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", f"req-{uuid.uuid4().hex[:12]}")
        for key, value in extra.items():
            self.send_header(key, str(value))
        self.end_headers()
        for index, event in enumerate(events):
            if index and reply.chunk_delay_s > 0 and owner._stopping.wait(reply.chunk_delay_s):
                self.close_connection = True
                return
            if 1 <= index <= generating and generation_s > 0 and owner._stopping.wait(generation_s / generating):
                self.close_connection = True
                return
            self._write_chunk(f"data: {json.dumps(event)}\n\n".encode())
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")  # terminating zero-length chunk


class _ScriptError(Exception):
    pass


class ChatServer:
    """Context manager running the scripted chat server on ``127.0.0.1:<free port>``.

    Attributes while running: ``base_url`` (``http://127.0.0.1:PORT/v1``), ``port``,
    ``requests`` / ``headers`` (snapshots, in arrival order), ``remaining`` (unused
    script items; ``None`` for a callable), ``in_flight`` / ``max_in_flight``.
    ``token_delay_s`` paces every completion (see the module docstring).
    """

    def __init__(
        self,
        responses: Responses | None = None,
        *,
        model: str = "test-model",
        chunk_size: int = 3,
        host: str = "127.0.0.1",
        token_delay_s: float = 0.0,
    ) -> None:
        if token_delay_s < 0:
            raise ValueError(f"token_delay_s must be 0 or more, not {token_delay_s}")
        self.model = model
        self.chunk_size = chunk_size
        self.token_delay_s = token_delay_s  # seconds per completion token (see the module docstring)
        self.host = host
        self.created = int(time.time())
        if responses is None:
            responses = []
        self._fn: Callable[[dict], str | Reply] | None = None
        self._script: deque[str | Reply] = deque()
        if callable(responses):
            self._fn = responses
        else:
            self._script.extend(responses)
        self._lock = threading.Lock()
        self._requests: list[dict] = []
        self._headers: list[dict] = []
        self._served = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._stopping = threading.Event()
        self._conns: dict[threading.Thread, socket.socket] = {}
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> "ChatServer":
        if self._httpd is not None:
            raise RuntimeError("ChatServer already started")
        self._stopping.clear()
        self._httpd = _Server(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="chat-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._stopping.set()  # wakes handlers sleeping in delay_s / chunk_delay_s
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            conns = list(self._conns.items())
        for _, sock in conns:  # unblock keep-alive handlers waiting for the next request
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for conn_thread, _ in conns:
            conn_thread.join(max(0.0, deadline - time.monotonic()))
        self._httpd = None
        self._thread = None

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- inspection -----------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("ChatServer is not running")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def requests(self) -> list[dict]:
        with self._lock:
            return list(self._requests)

    @property
    def headers(self) -> list[dict]:
        with self._lock:
            return list(self._headers)

    @property
    def in_flight(self) -> int:
        """Chat requests being answered now."""
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most chat requests answered at once since the server started."""
        with self._lock:
            return self._max_in_flight

    @property
    def remaining(self) -> int | None:
        if self._fn is not None:
            return None
        with self._lock:
            return len(self._script)

    # ---- internals ------------------------------------------------------------------
    def _track(self, thread: threading.Thread, sock: socket.socket) -> None:
        with self._lock:
            self._conns[thread] = sock

    def _untrack(self, thread: threading.Thread, sock: socket.socket) -> None:
        with self._lock:
            self._conns.pop(thread, None)

    def _begin_request(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _end_request(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _next_reply(self, body: dict, headers: dict) -> Reply:
        with self._lock:
            self._requests.append(body)
            self._headers.append(headers)
            self._served += 1
            number = self._served
            if self._fn is None:
                if not self._script:
                    raise _ScriptError(
                        f"ChatServer script ran out: request #{number} arrived but only "
                        f"{number - 1} scripted response(s) were given"
                    )
                item: str | Reply = self._script.popleft()
        if self._fn is not None:
            try:
                item = self._fn(body)
            except Exception as exc:  # surface the test's bug as a 500 the client sees
                raise _ScriptError(f"ChatServer responses callable raised {type(exc).__name__}: {exc}") from exc
        if isinstance(item, str):
            return Reply(content=item)
        if isinstance(item, Reply):
            return item
        raise _ScriptError(f"ChatServer script item must be str or Reply, got {type(item).__name__}")
