from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._openai import (
    Deadline,
    Endpoint,
    check_completion,
    completion_request,
    endpoint_from_url,
    http_request,
    match_model,
    run_checks,
    served_models,
)

MODEL = "tiny-llm"


def completion(doc: dict[str, Any]) -> dict[str, Any]:
    return {"id": "cmpl-1", "object": "text_completion", "model": doc["model"],
            "choices": [{"index": 0, "text": " Bob", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 4, "completion_tokens": doc["max_tokens"], "total_tokens": 4 + doc["max_tokens"]}}


class FakeVLLM:
    """A thread HTTP server on 127.0.0.1 that answers like vLLM; routes can be overridden per test."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.routes: dict[tuple[str, str], Callable[[Any], tuple[int, str, bytes]]] = {
            ("GET", "/health"): lambda _: (200, "text/plain", b""),
            ("GET", "/v1/models"): lambda _: (200, "application/json",
                                              json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()),
            ("POST", "/v1/completions"): lambda doc: (200, "application/json", json.dumps(completion(doc)).encode()),
            ("POST", "/v1/chat/completions"): lambda doc: (200, "application/json", json.dumps(completion(doc)).encode()),
        }
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def handle_one(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                doc = json.loads(raw) if raw else None
                fake.seen.append({"method": method, "path": self.path, "headers": dict(self.headers), "body": doc})
                route = fake.routes.get((method, self.path))
                status, ctype, body = route(doc) if route else (404, "text/plain", b"not found")
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def do_GET(self) -> None:
                self.handle_one("GET")

            def do_POST(self) -> None:
                self.handle_one("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def vllm() -> Iterator[FakeVLLM]:
    server = FakeVLLM()
    yield server
    server.stop()


def check(vllm: FakeVLLM, url: str | None = None, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"model": MODEL, "api": "completions", "prompt": "Hi", "max_tokens": 5, "timeout": 5, "overall_timeout": 20}
    args.update(kw)
    ep = endpoint_from_url(url or f"http://127.0.0.1:{vllm.port}")
    return run_checks(ep, **args)


def test_run_checks_sends_the_three_requests_and_returns_usage(vllm: FakeVLLM) -> None:
    result = check(vllm, f"http://127.0.0.1:{vllm.port}/v1/", api_key="sk-test")
    assert [(s["method"], s["path"]) for s in vllm.seen] == [
        ("GET", "/health"), ("GET", "/v1/models"), ("POST", "/v1/completions")]
    post = vllm.seen[2]
    assert post["body"] == {"model": MODEL, "prompt": "Hi", "max_tokens": 5, "temperature": 0}
    assert post["headers"]["Connection"] == "close"
    assert post["headers"]["Content-Length"] == str(len(json.dumps(post["body"])))
    assert post["headers"]["Authorization"] == "Bearer sk-test"
    assert post["headers"]["Host"] == f"127.0.0.1:{vllm.port}"
    assert result["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
    assert result["models"] == [MODEL] and result["model"] == MODEL
    assert result["response"]["choices"][0]["text"] == " Bob"
    assert result["latency_ms"] >= 0 and result["health_latency_ms"] >= 0
    assert result["via"].endswith("/v1/")


def test_chat_api_sends_messages(vllm: FakeVLLM) -> None:
    check(vllm, api="chat")
    assert vllm.seen[-1]["path"] == "/v1/chat/completions"
    assert vllm.seen[-1]["body"]["messages"] == [{"role": "user", "content": "Hi"}]


def test_model_mismatch_fails_with_the_served_list(vllm: FakeVLLM) -> None:
    with pytest.raises(KubeInferError, match=r'model mismatch: expected other-model, served \["tiny-llm"\]') as err:
        check(vllm, model="other-model")
    assert err.value.result["models"] == [MODEL]
    assert "health_latency_ms" in err.value.result
    assert len(vllm.seen) == 2  # no completion was sent


def test_without_model_the_first_served_is_used(vllm: FakeVLLM) -> None:
    assert check(vllm, model=None)["model"] == MODEL


def test_non_json_completion_fails_with_an_excerpt(vllm: FakeVLLM) -> None:
    vllm.routes[("POST", "/v1/completions")] = lambda _: (200, "text/html", b"<html>" + b"x" * 500)
    with pytest.raises(KubeInferError) as err:
        check(vllm)
    assert err.value.msg == "response of /v1/completions is not JSON: <html>" + "x" * 194


def test_missing_usage_fails(vllm: FakeVLLM) -> None:
    vllm.routes[("POST", "/v1/completions")] = lambda _: (200, "application/json", b'{"choices": [{"text": "a"}]}')
    with pytest.raises(KubeInferError, match="response of /v1/completions has no usage object"):
        check(vllm)


def test_http_error_reports_status_and_body(vllm: FakeVLLM) -> None:
    vllm.routes[("GET", "/v1/models")] = lambda _: (401, "application/json", b'{"error": "Unauthorized"}')
    with pytest.raises(KubeInferError) as err:
        check(vllm)
    assert err.value.msg == 'GET /v1/models returned HTTP 401 Unauthorized: {"error": "Unauthorized"}'
    assert err.value.result["status"] == 401


def test_unhealthy_server_fails_before_models(vllm: FakeVLLM) -> None:
    vllm.routes[("GET", "/health")] = lambda _: (503, "text/plain", b"loading")
    with pytest.raises(KubeInferError, match="GET /health returned HTTP 503 Service Unavailable: loading"):
        check(vllm)
    assert len(vllm.seen) == 1


# -- HTTP over a bare socket (what a port-forward stream is) ---------------------------------------------------

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


def test_run_checks_over_a_socket_factory() -> None:
    models = json.dumps({"data": [{"id": MODEL}]}).encode()
    answers = iter([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(models), models)])

    def serve(sock: socket.socket) -> None:
        read_request(sock)
        sock.sendall(next(answers, b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom"))
        sock.close()

    ep = Endpoint(socketpair_factory(serve), "localhost:8000", "test")
    with pytest.raises(KubeInferError) as err:
        run_checks(ep, MODEL, "completions", "Hi", 3, 5, 20)
    # /health and /v1/models passed, the completion got the 500.
    assert err.value.msg == "POST /v1/completions returned HTTP 500 Internal Server Error: boom"
    assert err.value.result["models"] == [MODEL] and err.value.result["via"] == "test"


# -- pure checks ---------------------------------------------------------------------------------------------------

def test_check_completion_rejects_bad_shapes() -> None:
    good = {"choices": [{"text": "x"}], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    assert check_completion(good, "/v1/completions") == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    with pytest.raises(KubeInferError, match="has no choices"):
        check_completion({**good, "choices": []}, "/v1/completions")
    with pytest.raises(KubeInferError, match="is not a JSON object"):
        check_completion([good], "/v1/completions")
    with pytest.raises(KubeInferError, match=r"usage.total_tokens is not a count: '3'"):
        check_completion({**good, "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": "3"}}, "/v1/completions")


def test_served_models_and_matching() -> None:
    assert served_models({"data": [{"id": "a"}, {"id": "b"}, "junk"]}) == ["a", "b"]
    with pytest.raises(KubeInferError, match="has no 'data' list"):
        served_models({"models": []})
    assert match_model("b", ["a", "b"]) == "b"
    with pytest.raises(KubeInferError, match="lists no model"):
        match_model(None, [])


def test_completion_request_shapes() -> None:
    assert completion_request("completions", "m", "p", 7) == (
        "/v1/completions", {"model": "m", "max_tokens": 7, "temperature": 0, "prompt": "p"})
    path, body = completion_request("chat", "m", "p", 7)
    assert path == "/v1/chat/completions" and "prompt" not in body
    with pytest.raises(KubeInferError):
        completion_request("embeddings", "m", "p", 7)


def test_endpoint_from_url() -> None:
    ep = endpoint_from_url("https://llm.example.com:8443/gw/v1")
    assert ep.host == "llm.example.com:8443" and ep.prefix == "/gw"
    assert endpoint_from_url("http://llm.example.com").prefix == ""
    with pytest.raises(KubeInferError, match="must be an http"):
        endpoint_from_url("llm.example.com")
