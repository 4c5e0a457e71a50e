"""A small stateful stand-in for an API server behind kubernetes.client.ApiClient: objects by path, apply, merge patch
with resourceVersion preconditions, create, delete, dry runs and label-selected lists. For unit tests of the
adapter, HPA and GPU node probe logic; the real behaviour is covered by the integration tests.

A POST without ``metadata.name`` takes ``generateName`` plus a counter, as the API server names such objects
(with random letters there). ``on_create`` hooks run on every stored POST and may change the object, the way a
kubelet later fills in a pod's status; ``on_request`` hooks run before each request."""
from __future__ import annotations

import copy
import json
import socket
from typing import Any, Callable

from .fake_api import FakeApiException, FakeResponse

PLURALS = {"ConfigMap": "configmaps", "Deployment": "deployments", "Pod": "pods", "HorizontalPodAutoscaler": "horizontalpodautoscalers",
           "APIService": "apiservices", "CustomResourceDefinition": "customresourcedefinitions", "ScaledObject": "scaledobjects",
           "Node": "nodes", "DaemonSet": "daemonsets", "Namespace": "namespaces", "Secret": "secrets"}


def merge(base: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386): null deletes, dicts merge, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


def _matches(obj: dict[str, Any], selector: str | None) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, (selector or "").split(",")):
        key, _sep, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeCluster:
    """Objects keyed by their REST path; ``answers`` add fixed or computed answers for other paths."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.answers: dict[tuple[str, str], Any] = {}
        self.calls: list[dict[str, Any]] = []
        self.version = 100
        self.generated = 0
        self.on_create: list[Callable[[dict[str, Any]], None]] = []
        self.on_request: list[Callable[[str, str], None]] = []

    # -- setup helpers ----------------------------------------------------------------------------
    @staticmethod
    def path_of(obj: dict[str, Any]) -> str:
        plural = PLURALS
        api = obj["apiVersion"]
        base = "/api/v1" if api == "v1" else f"/apis/{api}"
        ns = obj["metadata"].get("namespace")
        return f"{base}{'/namespaces/' + ns if ns else ''}/{plural[obj['kind']]}/{obj['metadata']['name']}"

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.objects[self.path_of(obj)] = obj
        return obj

    def writes(self) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["method"] in ("PATCH", "POST", "PUT", "DELETE")]

    # -- ApiClient ----------------------------------------------------------------------------------
    def call_api(self, path: str, method: str, query_params: Any = None, header_params: Any = None, body: Any = None,
                 **_: Any) -> FakeResponse:
        query = dict(query_params or [])
        headers = header_params or {}
        self.calls.append({"path": path, "method": method, "query": query, "body": copy.deepcopy(body),
                           "content_type": headers.get("Content-Type")})
        for hook in self.on_request:
            hook(method, path)
        answer = self.answers.get((method, path))
        if answer is not None:
            if isinstance(answer, Exception):
                raise answer
            return FakeResponse(answer(query) if callable(answer) else answer)
        dry = query.get("dryRun") == "All"
        if method == "GET":
            if path in self.objects:
                return FakeResponse(self.objects[path])
            if path.rsplit("/", 1)[-1] in PLURALS.values():
                prefix = path + "/"
                items = [o for p, o in self.objects.items() if p.startswith(prefix) and "/" not in p[len(prefix):]]
                return FakeResponse({"items": [o for o in items if _matches(o, query.get("labelSelector"))]})
            raise FakeApiException(404, f"{path} not found")
        if method == "POST":
            body = copy.deepcopy(body)
            meta = body.setdefault("metadata", {})
            if not meta.get("name"):
                if not meta.get("generateName"):
                    raise FakeApiException(422, "name or generateName is required")
                self.generated += 1
                meta["name"] = f"{meta['generateName']}{self.generated:05d}"
            name = meta["name"]
            target = f"{path}/{name}"
            if target in self.objects:
                raise FakeApiException(409, f"{name} already exists")
            stored = self._store(target, body, dry)
            if not dry:
                for created in self.on_create:
                    created(stored)
            return FakeResponse(stored)
        if method == "PATCH":
            kind = headers.get("Content-Type")
            current = self.objects.get(path)
            if kind == "application/apply-patch+yaml":
                return FakeResponse(self._store(path, merge(current, body), dry))
            if current is None:
                raise FakeApiException(404, f"{path} not found")
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != current["metadata"].get("resourceVersion"):
                raise FakeApiException(409, "the object has been modified; please apply your changes to the latest version")
            return FakeResponse(self._store(path, merge(current, body), dry))
        if method == "DELETE":
            if path not in self.objects:
                raise FakeApiException(404, f"{path} not found")
            if not dry:
                del self.objects[path]
            return FakeResponse({"kind": "Status", "status": "Success"})
        raise FakeApiException(405, f"{method} not supported by the fake")

    def _store(self, path: str, obj: dict[str, Any], dry: bool) -> dict[str, Any]:
        if dry:
            return obj
        self.version += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.version)
        self.objects[path] = obj
        return obj


# -- the kubelet's part for the GPU node probe pods (_gpu_discovery.probe_nodes) ---------------------------
def probe_pods(cluster: FakeCluster, namespace: str = "kube-system") -> list[dict[str, Any]]:
    prefix = f"/api/v1/namespaces/{namespace}/pods/"
    return [o for p, o in cluster.objects.items() if p.startswith(prefix) and o["metadata"]["name"].startswith("kubeinfer-gpu-probe-")]


def pod_succeeded(message: str) -> Callable[[dict[str, Any]], None]:
    """A pod's end: exit 0, with ``message`` as the container's termination message."""
    def finish(pod: dict[str, Any]) -> None:
        pod["status"] = {"phase": "Succeeded", "containerStatuses": [
            {"name": "probe", "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message}}}]}
    return finish


def pod_failed(code: int, reason: str, message: str = "") -> Callable[[dict[str, Any]], None]:
    def finish(pod: dict[str, Any]) -> None:
        pod["status"] = {"phase": "Failed", "containerStatuses": [
            {"name": "probe", "state": {"terminated": {"exitCode": code, "reason": reason, "message": message}}}]}
    return finish


def answer_probes(cluster: FakeCluster, answers: dict[str, Callable[[dict[str, Any]], None]], after_lists: int = 0,
                  namespace: str = "kube-system") -> None:
    """End each probe pod that has no status yet by its node's entry in ``answers`` (see pod_succeeded), once the pods of
    ``namespace`` have been listed more than ``after_lists`` times. A node without an entry keeps its pod pending."""
    lists = [0]
    collection = f"/api/v1/namespaces/{namespace}/pods"

    def on_request(method: str, path: str) -> None:
        if method != "GET" or path != collection:
            return
        lists[0] += 1
        if lists[0] > after_lists:
            for pod in probe_pods(cluster, namespace):
                finish = answers.get(pod["spec"]["nodeName"])
                if finish is not None and not pod.get("status"):
                    finish(pod)

    cluster.on_request.append(on_request)


def probe_answer(pci: str = "0302", smi: str = "none", driver: str = "none") -> str:
    """The probe's termination message (see _gpu_discovery.PROBE_SCRIPT)."""
    return f"nvidia-pci={pci}\nnvidia-smi={smi}\ndriver={driver}\n"


class FakeForward:
    """A port-forward whose socket answers one HTTP request with a fixed response (a socketpair, no network)."""

    def __init__(self, status: int, body: str, opened: list[tuple[str, str, int]], where: tuple[str, str, int]) -> None:
        self.ends = socket.socketpair()
        data = body.encode()
        head = f"HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        self.ends[1].sendall(head + data)
        opened.append(where)

    def socket(self, port: int) -> socket.socket:
        return self.ends[0]

    def error(self, port: int) -> str | None:
        return None


def forward_opener(body: str, status: int = 200) -> tuple[Callable[..., FakeForward], list[tuple[str, str, int]]]:
    """An ``opener`` for PortForwardTarget that serves ``body``; the list records (namespace, pod, port) per stream."""
    opened: list[tuple[str, str, int]] = []

    def opener(api_client: Any, namespace: str, name: str, port: int, timeout: float) -> FakeForward:
        return FakeForward(status, body, opened, (namespace, name, port))

    return opener, opened


def metric_list(values: dict[str, str], name: str = "vllm_queue_depth", namespace: str = "llm") -> dict[str, Any]:
    """A custom.metrics.k8s.io MetricValueList."""
    return {"kind": "MetricValueList", "apiVersion": "custom.metrics.k8s.io/v1beta1", "metadata": {}, "items": [
        {"describedObject": {"kind": "Pod", "namespace": namespace, "name": pod, "apiVersion": "/v1"},
         "metricName": name, "timestamp": "2026-01-01T00:00:00Z", "value": value} for pod, value in values.items()]}


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
