"""tests.support.ports: a free port can be served on, a refused URL refuses, a silent server never answers."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.support.ports import SilentServer, free_port, refused_url


def test_a_free_port_can_be_listened_on():
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


def test_a_refused_url_refuses_the_connection():
    url = refused_url("/v1/models")
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1/models")
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=5)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", httpx.URL(url).port), timeout=5)


def test_a_silent_server_counts_connections_and_never_answers():
    with SilentServer() as server:
        assert server.connections() == 0
        with pytest.raises(httpx.ReadTimeout):  # connected, then nothing comes back
            httpx.get(server.url, timeout=httpx.Timeout(5, read=0.2))
        assert server.connections() == 1
