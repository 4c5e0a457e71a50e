# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The HTTP transport over a bare socket (what a port-forward stream is): framing, timeouts, early closes, the overall deadline."""
from __future__ import annotations

import json
import socket
import threading
from typing import Any, Callable

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._http import Deadline, endpoint_from_url, http_request


def socketpair_factory(serve: Callable[[socket.socket], None]) -> Callable[[float], Any]:
    """A factory whose socket's peer is served by ``serve`` in a thread."""
    def factory(_timeout: float) -> Any:
        ours, theirs = socket.socketpair()
        threading.Thread(target=serve, args=(theirs,), daemon=True).start()
        return ours
    return factory


def read_request(sock: socket.socket) -> bytes:
    """Read one request: the head, then a Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_chunked_answer_over_a_socketpair() -> None:
    seen: list[bytes] = []

    def serve(sock: socket.socket) -> None:
        seen.append(read_request(sock))
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
                     b"5\r\n{\"a\":\r\n3\r\n 1}\r\n0\r\n\r\n")
        # Keep the socket open: the body must be complete by its framing, not by a close.
        read_request(sock)
        sock.close()

    reply = http_request(socketpair_factory(serve), "localhost:8000", "GET", "/v1/models", 5)
    assert reply.status == 200 and json.loads(reply.body) == {"a": 1}
    assert seen[0].startswith(b"GET /v1/models HTTP/1.1\r\n")
    assert b"Host: localhost:8000\r\n" in seen[0] and b"Connection: close\r\n" in seen[0]


def test_answer_without_length_is_read_until_close() -> None:
    def serve(sock: socket.socket) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\n\r\nhello ")
        sock.sendall(b"world")
        sock.close()

    assert http_request(socketpair_factory(serve), "h", "GET", "/health", 5).body == b"hello world"


def test_silent_peer_times_out() -> None:
    done = threading.Event()

    def serve(sock: socket.socket) -> None:
        read_request(sock)
        done.wait(10)  # holds the connection open and never answers; the client must give up
        sock.close()

    try:
        with pytest.raises(KubeInferError, match=r"timed out after 0.3s waiting for the answer to GET /health"):
            http_request(socketpair_factory(serve), "h", "GET", "/health", 0.3)
    finally:
        done.set()


def test_early_close_is_explained() -> None:
    def serve(sock: socket.socket) -> None:
        read_request(sock)
        sock.close()

    with pytest.raises(KubeInferError) as err:
        http_request(socketpair_factory(serve), "h", "GET", "/health", 5,
                     describe_close=lambda: "port-forward error: connection refused")
    assert err.value.msg.startswith("GET /health failed: RemoteDisconnected")
    assert err.value.msg.endswith("(port-forward error: connection refused)")


def test_overall_deadline_runs_out() -> None:
    now = [0.0]
    deadline = Deadline(10, 4, clock=lambda: now[0])
    assert deadline.next_timeout("a") == 4
    now[0] = 8
    assert deadline.next_timeout("b") == 2
    now[0] = 10
    with pytest.raises(KubeInferError, match="overall timeout of 10s ran out before c"):
        deadline.next_timeout("c")


def test_endpoint_from_url() -> None:
    ep = endpoint_from_url("https://llm.example.com:8443/gw/v1/", "base_url")
    assert ep.host == "llm.example.com:8443" and ep.prefix == "/gw/v1" and ep.via == "https://llm.example.com:8443/gw/v1/"
    assert endpoint_from_url("http://llm.example.com", "base_url").prefix == ""
    with pytest.raises(KubeInferError, match="^prometheus_url must be an http"):
        endpoint_from_url("llm.example.com", "prometheus_url")
