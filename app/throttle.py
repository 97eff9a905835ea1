"""Sign-in throttling for the studio's password login: failed attempts are counted per user name and per client
address, and past a limit that key is refused (HTTP 429, with the wait) until its oldest failure leaves the window.

Gradio's login route gives its ``auth`` callable only the name and password, so the counting sits in front of the
route, as ASGI middleware that sees the client address, the submitted name and the route's answer (200: signed in,
anything else: refused). A name that exists and one that does not are counted alike, so the throttle reveals no
more about who exists than the (equal-time) password check does.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from starlette.requests import Request

#: Keys remembered at most (names and addresses), so that a flood of made-up names cannot grow memory for ever.
MAX_KEYS = 50_000
#: A sign-in form is a name and a password: a larger body is refused before it is read further.
MAX_LOGIN_BODY = 16_384


class LoginThrottle:
    """Counts failed sign-ins per user name and per client within a sliding window of ``window_s`` seconds."""

    def __init__(self, *, max_per_user: int, max_per_client: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_per_user = max_per_user
        self.max_per_client = max_per_client
        self.window_s = window_s
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, user: str, client: str) -> float | None:
        """Seconds until ``user`` may try again from ``client``; None when they may try now."""
        now = self._clock()
        with self._lock:
            waits = [self._wait(key, limit, now) for key, limit in self._keys(user, client)]
        return max((w for w in waits if w is not None), default=None)

    def failed(self, user: str, client: str) -> None:
        now = self._clock()
        with self._lock:
            for key, limit in self._keys(user, client):
                times = self._failures.pop(key, None) or deque(maxlen=limit)  # older ones never decide anything
                times.append(now)
                self._failures[key] = times  # most recently used last
            while len(self._failures) > MAX_KEYS:
                self._failures.popitem(last=False)

    def succeeded(self, user: str) -> None:
        """A right password clears the name's failures (the client's stay: it may have tried other names)."""
        with self._lock:
            self._failures.pop(f"user:{user}", None)

    def _keys(self, user: str, client: str) -> list[tuple[str, int]]:
        return [(f"user:{user}", self.max_per_user), (f"client:{client}", self.max_per_client)]

    def _wait(self, key: str, limit: int, now: float) -> float | None:
        times = self._failures.get(key)
        if not times:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        if len(times) < limit:
            return None
        return times[-limit] + self.window_s - now


class LoginThrottleMiddleware:
    """ASGI middleware throttling ``POST`` to the given login paths with a ``LoginThrottle``."""

    def __init__(self, app, *, throttle: LoginThrottle, paths: set[str]) -> None:
        self.app = app
        self.throttle = throttle
        self.paths = {p.rstrip("/") for p in paths}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") not in self.paths:
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_LOGIN_BODY:
                await _respond(send, 413, "The sign-in form is too large.")
                return

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        user = (await _form_field(scope, replay, "username")).strip()
        client = (scope.get("client") or ("unknown", 0))[0]
        wait = self.throttle.retry_after(user, client)
        if wait is not None:
            minutes = max(1, math.ceil(wait / 60))
            await _respond(send, 429, f"Too many failed sign-ins. Try again in {minutes} minute"
                                      f"{'s' if minutes > 1 else ''}.", retry_after=math.ceil(wait))
            return
        status: list[int] = []

        async def watch(message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        sent = False

        async def once():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return await replay()

        await self.app(scope, once, watch)
        if status and status[0] == 200:
            self.throttle.succeeded(user)
        elif status and 400 <= status[0] < 500:
            self.throttle.failed(user, client)


async def _form_field(scope, receive, name: str) -> str:
    """A field of the (urlencoded or multipart) form in the request body; empty when there is none."""
    try:
        form = await Request(scope, receive).form(max_files=0, max_fields=8)
    except Exception:  # a malformed form: the route itself will refuse it
        return ""
    value = form.get(name)
    return value if isinstance(value, str) else ""


async def _respond(send, status: int, detail: str, retry_after: int | None = None) -> None:
    headers = [(b"content-type", b"application/json")]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps({"detail": detail}).encode()})
