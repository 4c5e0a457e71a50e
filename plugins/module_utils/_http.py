# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP/1.1 over any socket (TCP, TLS or a port-forward stream), with deadlines and error excerpts. Private to this collection: the interface may change."""
from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError

EXCERPT = 200


def excerpt(data: bytes | str, limit: int = EXCERPT) -> str:
    """The first ``limit`` characters of a body, for error messages."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text[:limit]


class Deadline:
    """An overall deadline; each request gets the smaller of its own timeout and the time left."""

    def __init__(self, total: float, per_request: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.total = total
        self.per_request = per_request
        self.end = clock() + total

    def next_timeout(self, what: str) -> float:
        left = self.end - self.clock()
        if left <= 0:
            raise KubeInferError(f"timed out: the overall timeout of {self.total:g}s ran out before {what}")
        return min(self.per_request, left)


# A socket factory: given a timeout, return a connected socket-like object (socket, ssl socket, port-forward socket).
SocketFactory = Callable[[float], Any]


class SocketConnection(http.client.HTTPConnection):
    """An HTTPConnection whose socket comes from a factory, e.g. a Kubernetes port-forward stream.

    ``host`` is only used for the Host header.
    """

    def __init__(self, factory: SocketFactory, host: str, timeout: float) -> None:
        super().__init__(host, timeout=timeout)
        self._factory = factory
        self._timeout = timeout

    def connect(self) -> None:
        sock = self._factory(self._timeout)
        sock.settimeout(self._timeout)
        self.sock = sock


def tcp_factory(host: str, port: int, tls: bool, validate_certs: bool = True, ca_cert: str | None = None) -> SocketFactory:
    """A factory for a plain or TLS TCP connection to ``host:port`` (the direct ``base_url`` case)."""
    def connect(timeout: float) -> Any:
        sock = socket.create_connection((host, port), timeout=timeout)
        if not tls:
            return sock
        ctx = ssl.create_default_context(cafile=ca_cert)
        if not validate_certs:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx.wrap_socket(sock, server_hostname=host)
    return connect


@dataclass
class Reply:
    """One HTTP exchange."""

    method: str
    path: str
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    latency_ms: float


def http_request(factory: SocketFactory, host: str, method: str, path: str, timeout: float,
                 body: Any = None, headers: dict[str, str] | None = None,
                 describe_close: Callable[[], Optional[str]] | None = None) -> Reply:
    """Send one HTTP/1.1 request on a fresh connection and read the whole answer.

    ``Connection: close`` is sent; the body is read by Content-Length or chunked encoding, or until the
    peer closes. ``latency_ms`` covers sending the request and reading the answer, not opening the
    connection. ``describe_close`` may explain an early close (a port-forward error channel).
    """
    hdrs = {"Accept": "application/json", "Connection": "close", "User-Agent": "kubeinfer.llm"}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    hdrs.update(headers or {})
    conn = SocketConnection(factory, host, timeout)
    what = f"{method} {path}"
    try:
        try:
            conn.connect()
        except KubeInferError:
            raise
        except (socket.timeout, TimeoutError) as e:
            raise KubeInferError(f"timed out after {timeout:g}s connecting for {what}") from e
        except OSError as e:
            raise KubeInferError(f"{what}: cannot connect: {e}") from e
        start = time.monotonic()
        try:
            # http.client adds Host and Content-Length (from the bytes body).
            conn.request(method, path, body=payload, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
        except (socket.timeout, TimeoutError) as e:
            raise KubeInferError(f"timed out after {timeout:g}s waiting for the answer to {what}") from e
        except (http.client.HTTPException, OSError) as e:
            extra = describe_close() if describe_close else None
            detail = f"{e.__class__.__name__}: {e}" if str(e) else e.__class__.__name__
            if extra:
                detail += f" ({extra})"
            raise KubeInferError(f"{what} failed: {detail}") from e
        latency = (time.monotonic() - start) * 1000.0
        return Reply(method, path, resp.status, resp.reason, {k.lower(): v for k, v in resp.getheaders()}, data,
                     round(latency, 1))
    finally:
        conn.close()


def check_status(reply: Reply, expect: int = 200) -> None:
    """Raise on an HTTP error, with the status and the start of the body."""
    if reply.status != expect:
        raise KubeInferError(f"{reply.method} {reply.path} returned HTTP {reply.status} {reply.reason}: {excerpt(reply.body)}",
                             status=reply.status)


def parse_json(reply: Reply) -> Any:
    """The decoded JSON body, or an error naming the path and showing the start of the body."""
    try:
        return json.loads(reply.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise KubeInferError(f"response of {reply.path} is not JSON: {excerpt(reply.body)}") from e


@dataclass
class Endpoint:
    """Where to send requests: a socket factory, the Host header, a path prefix and a description."""

    factory: SocketFactory
    host: str
    via: str
    prefix: str = ""
    describe_close: Callable[[], Optional[str]] | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, timeout: float, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
        """http_request() to ``prefix + path`` with the endpoint's headers (then ``headers``)."""
        return http_request(self.factory, self.host, method, self.prefix + path, timeout, body, {**self.headers, **(headers or {})},
                            self.describe_close)


def endpoint_from_url(url: str, param: str, validate_certs: bool = True, ca_cert: str | None = None) -> Endpoint:
    """An endpoint for a direct URL (an ingress, Prometheus); its path is the prefix of every request path."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KubeInferError(f"{param} must be an http:// or https:// URL, got {url}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    return Endpoint(tcp_factory(parts.hostname, port, tls, validate_certs, ca_cert), host, url, parts.path.rstrip("/"))
