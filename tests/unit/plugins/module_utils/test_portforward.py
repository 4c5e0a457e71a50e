from __future__ import annotations

import json
import socket
import threading
from typing import Any, Iterator

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils import _completion, _portforward
from ansible_collections.kubeinfer.llm.plugins.module_utils._completion import run_checks
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._http import Endpoint
from ansible_collections.kubeinfer.llm.plugins.module_utils._portforward import (
    PortForwardTarget,
    find_pod,
    open_stream,
    pod_endpoint,
    pod_port,
)
from ansible_collections.kubeinfer.llm.plugins.modules import completion_check

from .spec_params import spec_params


def pod(name: str, ready: bool = True, phase: str = "Running", ports: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "llm", "labels": {"app": "vllm"}},
            "spec": {"containers": [{"name": "vllm", "ports": ports or [{"name": "http", "containerPort": 8000}]}]},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


class FakeKube:
    def __init__(self, pods: list[dict[str, Any]], services: dict[str, dict[str, Any]] | None = None) -> None:
        self.pods = pods
        self.services = services or {}
        self.api_client = object()
        self.calls: list[tuple[str, ...]] = []

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        self.calls.append(("get", kind, name))
        if kind == "Service":
            return self.services.get(name)
        return next((p for p in self.pods if p["metadata"]["name"] == name), None)

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict[str, Any]]:
        self.calls.append(("list", kind, label_selector or ""))
        return list(self.pods)


def test_find_pod_picks_the_first_ready_pod_by_name() -> None:
    kube = FakeKube([pod("vllm-c"), pod("vllm-a", ready=False), pod("vllm-b")])
    chosen, svc = find_pod(kube, "llm", label_selector="app=vllm")
    assert chosen["metadata"]["name"] == "vllm-b" and svc is None
    assert kube.calls == [("list", "Pod", "app=vllm")]


def test_find_pod_without_a_ready_pod_says_why() -> None:
    kube = FakeKube([pod("vllm-a", ready=False), pod("vllm-b", ready=False, phase="Pending")])
    with pytest.raises(KubeInferError) as err:
        find_pod(kube, "llm", label_selector="app=vllm")
    assert err.value.msg == ("no Ready pod to forward to: a Ready pod in llm matching app=vllm: "
                             "vllm-a (Running, Ready=False), vllm-b (Pending, Ready=False)")
    with pytest.raises(KubeInferError, match="no pod matches"):
        find_pod(FakeKube([]), "llm", label_selector="app=vllm")


def test_find_pod_waits_with_a_deadline() -> None:
    kube = FakeKube([pod("vllm-a", ready=False)])
    with pytest.raises(KubeInferError, match=r"timed out after 0.1s waiting for pod llm/vllm-a: vllm-a \(Running, Ready=False\)"):
        find_pod(kube, "llm", pod="vllm-a", ready_timeout=0.1)
    with pytest.raises(KubeInferError, match="pod llm/missing does not exist"):
        find_pod(kube, "llm", pod="missing")


def test_service_gives_selector_and_target_port() -> None:
    svc = {"metadata": {"name": "llama"}, "spec": {"selector": {"b": "2", "a": "1"},
                                                   "ports": [{"port": 80, "targetPort": "http"}]}}
    kube = FakeKube([pod("vllm-a", ports=[{"name": "http", "containerPort": 8080}])], {"llama": svc})
    chosen, found = find_pod(kube, "llm", service="llama")
    assert kube.calls[-1] == ("list", "Pod", "a=1,b=2")
    assert pod_port(chosen, found, None) == 8080
    assert pod_port(chosen, found, 9000) == 9000
    assert pod_port(chosen, None, None) == 8000
    assert pod_port(chosen, {"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80, "targetPort": 8001}]}}, None) == 8001
    with pytest.raises(KubeInferError, match="target port metrics of service s is not a container port of pod vllm-a"):
        pod_port(chosen, {"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80, "targetPort": "metrics"}]}}, None)
    with pytest.raises(KubeInferError, match="^service: Service llm/nope does not exist"):
        find_pod(kube, "llm", service="nope")
    with pytest.raises(KubeInferError, match="has no selector"):
        find_pod(FakeKube([], {"x": {"metadata": {"name": "x"}, "spec": {}}}), "llm", service="x")


class FakePortForward:
    """Stands in for kubernetes.stream.ws_client.PortForward: one socketpair per stream, served by a thread."""

    streams: list[tuple[str, str, int]] = []

    def __init__(self, name: str, namespace: str, port: int, error: str | None = None) -> None:
        self.port = port
        self._error = error
        ours, theirs = socket.socketpair()
        self._socket = ours
        FakePortForward.streams.append((namespace, name, port))
        threading.Thread(target=self.serve, args=(theirs,), daemon=True).start()

    def serve(self, sock: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        head, sep, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
        while len(body) < length:
            body += sock.recv(4096)
        if self._error:  # kwok answers on the error channel and closes the data stream
            sock.close()
            return
        path = head.split(b" ")[1].decode()
        doc: Any = {"/health": None, "/v1/models": {"data": [{"id": "sim"}]}}.get(path)
        if path == "/v1/completions":
            doc = {"choices": [{"text": "x"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        payload = json.dumps(doc).encode() if doc is not None else b""
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
        sock.close()

    def socket(self, port: int) -> socket.socket:
        assert port == self.port
        return self._socket

    def error(self, port: int) -> str | None:
        return self._error


@pytest.fixture
def streams() -> Iterator[list[tuple[str, str, int]]]:
    FakePortForward.streams = []
    yield FakePortForward.streams


def test_each_request_opens_its_own_stream(streams: list[tuple[str, str, int]]) -> None:
    target = PortForwardTarget(object(), "llm", "vllm-a", 8000,
                               opener=lambda _c, ns, name, port, _t: FakePortForward(name, ns, port))
    ep = Endpoint(target, "localhost:8000", target.via, describe_close=target.error)
    result = run_checks(ep, "sim", "completions", "Hi", 2, 5, 20)
    assert result["via"] == "port-forward pod/llm/vllm-a:8000"
    assert result["usage"]["total_tokens"] == 2
    assert streams == [("llm", "vllm-a", 8000)] * 3


def test_error_channel_is_reported(streams: list[tuple[str, str, int]]) -> None:
    target = PortForwardTarget(object(), "llm", "vllm-a", 8000,
                               opener=lambda _c, ns, name, port, _t: FakePortForward(name, ns, port, error="no forward for port 8000\n"))
    ep = Endpoint(target, "localhost:8000", target.via, describe_close=target.error)
    with pytest.raises(KubeInferError) as err:
        run_checks(ep, "sim", "completions", "Hi", 2, 5, 20)
    assert err.value.msg.startswith("GET /health failed: RemoteDisconnected")
    assert err.value.msg.endswith("(port-forward error: no forward for port 8000)")
    assert err.value.result == {"via": "port-forward pod/llm/vllm-a:8000"}


def test_completion_runner_goes_through_a_ready_pod(streams: list[tuple[str, str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    def target(api_client: Any, namespace: str, name: str, port: int) -> PortForwardTarget:
        return PortForwardTarget(api_client, namespace, name, port, opener=lambda _c, ns, pod_name, p, _t: FakePortForward(pod_name, ns, p))

    monkeypatch.setattr(_portforward, "PortForwardTarget", target)
    kube = FakeKube([pod("vllm-b"), pod("vllm-a", ready=False)])
    params = spec_params(completion_check, namespace="llm", label_selector="app=vllm", model="sim")
    result = _completion.run(kube, params, True, True)  # type: ignore[arg-type]
    assert result["pod"] == "vllm-b" and result["changed"] is False and "diff" not in result
    assert result["via"] == "port-forward pod/llm/vllm-b:8000" and result["usage"]["total_tokens"] == 2
    assert streams == [("llm", "vllm-b", 8000)] * 3


def test_pod_endpoint_describes_the_route() -> None:
    kube = FakeKube([pod("vllm-a")])
    ep, chosen = pod_endpoint(kube, "llm", label_selector="app=vllm", port=8001)
    assert ep.via == "port-forward pod/llm/vllm-a:8001" and ep.host == "localhost:8001"
    assert chosen["metadata"]["name"] == "vllm-a"


# -- the real kubernetes client against a fake API server on 127.0.0.1 ------------------------------------------

class OneShotServer:
    """Accepts connections on 127.0.0.1; answers each with ``reply`` (or holds it open when None)."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.requests: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                conn = self.sock.accept()[0]
            except OSError:
                return
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            self.requests.append(data)
            if self.reply is None:
                self.held.append(conn)
            else:
                conn.sendall(self.reply)
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        for conn in self.held:
            conn.close()


def api_client(port: int) -> Any:
    from kubernetes import client as k8s_client
    cfg = k8s_client.Configuration()
    cfg.host = f"http://127.0.0.1:{port}"
    cfg.api_key = {"authorization": "Bearer t0ken"}
    return k8s_client.ApiClient(cfg)


def test_open_stream_speaks_the_portforward_websocket_and_reports_refusal() -> None:
    status = json.dumps({"kind": "Status", "message": 'pods "vllm-a" is forbidden: no create on pods/portforward'}).encode()
    server = OneShotServer(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                           % (len(status), status))
    try:
        with pytest.raises(KubeInferError) as err:
            open_stream(api_client(server.port), "llm", "vllm-a", 8000, 5)
    finally:
        server.close()
    assert err.value.msg == ('port-forward to pod/llm/vllm-a:8000 failed: Handshake status 403 Forbidden: '
                             'pods "vllm-a" is forbidden: no create on pods/portforward')
    head = server.requests[0].decode()
    assert head.startswith("GET /api/v1/namespaces/llm/pods/vllm-a/portforward?ports=8000 HTTP/1.1")
    assert "Upgrade: websocket" in head
    assert "sec-websocket-protocol: v4.channel.k8s.io" in head
    assert "authorization: Bearer t0ken" in head


def test_open_stream_gives_up_after_the_timeout() -> None:
    server = OneShotServer(None)
    try:
        with pytest.raises(KubeInferError, match=r"timed out after 0.5s opening the port-forward to pod/llm/vllm-a:8000"):
            open_stream(api_client(server.port), "llm", "vllm-a", 8000, 0.5)
    finally:
        server.close()
