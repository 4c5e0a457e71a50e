# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP/1.1 over any socket, and the checks of an OpenAI-compatible (vLLM) endpoint. Private to this collection: the interface may change."""
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
APIS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


def excerpt(data: bytes | str, limit: int = EXCERPT) -> str:
    """The first ``limit`` characters of a body, for error messages."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text[:limit]


# -- transport ------------------------------------------------------------------------------------------------

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
    hdrs = {"Accept": "application/json", "Connection": "close", "User-Agent": "kubeinfer.llm-completion_check"}
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


# -- checks ----------------------------------------------------------------------------------------------------

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


def served_models(doc: Any) -> list[str]:
    """The model ids of a /v1/models answer."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise KubeInferError(f"response of /v1/models has no 'data' list: {excerpt(json.dumps(doc))}")
    ids = [m.get("id") for m in doc["data"] if isinstance(m, dict)]
    return [i for i in ids if isinstance(i, str)]


def match_model(expected: str | None, served: list[str]) -> str:
    """The model to query: ``expected`` when served, the only/first served one when not given."""
    if not served:
        raise KubeInferError("/v1/models lists no model", models=served)
    if expected is None:
        return served[0]
    if expected not in served:
        raise KubeInferError(f"model mismatch: expected {expected}, served {json.dumps(served)}", models=served)
    return expected


def completion_request(api: str, model: str, prompt: str, max_tokens: int) -> tuple[str, dict[str, Any]]:
    """The path and body of a deterministic (temperature 0) completion or chat request."""
    if api not in APIS:
        raise KubeInferError(f"api must be one of {', '.join(APIS)}, got {api}")
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": 0}
    if api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return APIS[api], body


USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def check_completion(doc: Any, path: str) -> dict[str, int]:
    """Check that a completion answer has non-empty ``choices`` and a ``usage`` object; return the token counts."""
    if not isinstance(doc, dict):
        raise KubeInferError(f"response of {path} is not a JSON object: {excerpt(json.dumps(doc))}")
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices:
        raise KubeInferError(f"response of {path} has no choices: {excerpt(json.dumps(doc))}", response=doc)
    usage = doc.get("usage")
    if not isinstance(usage, dict):
        raise KubeInferError(f"response of {path} has no usage object: {excerpt(json.dumps(doc))}", response=doc)
    counts: dict[str, int] = {}
    for key in USAGE_KEYS:
        value = usage.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise KubeInferError(f"response of {path}: usage.{key} is not a count: {value!r}", response=doc)
        counts[key] = value
    return counts


@dataclass
class Endpoint:
    """Where to send the requests: a socket factory, the Host header, a path prefix and a description."""

    factory: SocketFactory
    host: str
    via: str
    prefix: str = ""
    describe_close: Callable[[], Optional[str]] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def endpoint_from_url(base_url: str, validate_certs: bool = True, ca_cert: str | None = None) -> Endpoint:
    """An endpoint for a direct URL (an ingress). A trailing ``/v1`` is dropped: /health lives at the root."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KubeInferError(f"base_url must be an http:// or https:// URL, got {base_url}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    prefix = parts.path.rstrip("/")
    if prefix.endswith("/v1"):
        prefix = prefix[:-3]
    host = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    return Endpoint(tcp_factory(parts.hostname, port, tls, validate_certs, ca_cert), host, base_url, prefix)


def run_checks(endpoint: Endpoint, model: str | None, api: str, prompt: str, max_tokens: int,
               timeout: float, overall_timeout: float, api_key: str | None = None) -> dict[str, Any]:
    """GET /health, GET /v1/models, then one completion; return the result or raise with the partial result."""
    deadline = Deadline(overall_timeout, timeout)
    headers = dict(endpoint.headers)
    if api_key:
        headers["Authorization"] = "Bearer " + api_key
    result: dict[str, Any] = {"via": endpoint.via}

    def call(method: str, path: str, body: Any = None) -> Reply:
        t = deadline.next_timeout(f"{method} {path}")
        return http_request(endpoint.factory, endpoint.host, method, endpoint.prefix + path, t, body, headers,
                            endpoint.describe_close)

    try:
        health = call("GET", "/health")
        check_status(health)
        result["health_latency_ms"] = health.latency_ms

        listing = call("GET", "/v1/models")
        check_status(listing)
        result["models"] = served_models(parse_json(listing))
        result["model"] = match_model(model, result["models"])

        path, body = completion_request(api, result["model"], prompt, max_tokens)
        reply = call("POST", path, body)
        check_status(reply)
        doc = parse_json(reply)
        result["response"] = doc
        result["latency_ms"] = reply.latency_ms
        result["usage"] = check_completion(doc, path)
    except KubeInferError as e:
        # The partial result says how far the check got.
        raise KubeInferError(e.msg, **{**result, **e.result}) from e
    return result
