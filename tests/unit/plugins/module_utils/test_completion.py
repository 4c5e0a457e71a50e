from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils import _completion
from ansible_collections.kubeinfer.llm.plugins.module_utils._completion import check_completion, completion_request, match_model, run_checks, served_models
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._http import Endpoint
from ansible_collections.kubeinfer.llm.plugins.modules import completion_check

from .spec_params import spec_params
from .test_http import read_request, socketpair_factory

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
    """The completion_check runner on ``base_url``, which needs no Kubernetes client."""
    args: dict[str, Any] = {"base_url": url or f"http://127.0.0.1:{vllm.port}", "model": MODEL, "prompt": "Hi", "max_tokens": 5, "timeout": 5,
                            "overall_timeout": 20, **kw}
    return _completion.run(None, spec_params(completion_check, **args), False, False)


def test_run_checks_sends_the_three_requests_and_returns_usage(vllm: FakeVLLM) -> None:
    result = check(vllm, f"http://127.0.0.1:{vllm.port}/v1/", vllm_api_key="sk-test")
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
    assert result["via"].endswith("/v1/") and result["changed"] is False and "pod" not in result


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
