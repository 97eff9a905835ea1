"""Local TCP ports for tests: one to serve on, a URL where every connection is refused, and a server that never
answers.

None of them needs a network or a host outside this machine, so a test of "the server is down" or "the server
hangs" behaves the same on a connected machine and offline: nothing listens on a port the system has just handed
out and taken back (connecting is refused at once), and a listener that never accepts leaves a client waiting
after the system has completed its connection.
"""

from __future__ import annotations

import contextlib
import socket


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now: the system picks it for a socket that is then closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refused_url(path: str = "") -> str:
    """``http://127.0.0.1:PORT`` followed by ``path``, on a free port: a client's connection is refused there."""
    return f"http://127.0.0.1:{free_port()}{path}"


class SilentServer:
    """Listens on 127.0.0.1 and never answers: clients connect (the system completes the handshake for up to
    ``backlog`` of them) and wait. ``url`` is ``http://127.0.0.1:PORT``; ``connections()`` counts the connections
    made so far. A context manager; leaving it closes every connection."""

    def __init__(self, backlog: int = 16) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self._listener.setblocking(False)
        self._accepted: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def connections(self) -> int:
        with contextlib.suppress(BlockingIOError):  # none left waiting in the backlog
            while True:
                self._accepted.append(self._listener.accept()[0])  # held open, never read or answered
        return len(self._accepted)

    def close(self) -> None:
        for sock in [*self._accepted, self._listener]:
            sock.close()

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
