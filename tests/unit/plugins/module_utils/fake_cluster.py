"""A small stateful stand-in for an API server behind kubernetes.client.ApiClient: objects by path, apply, merge patch
with resourceVersion preconditions, create, delete, dry runs and label-selected lists. For unit tests of the
adapter and HPA logic; the real behaviour is covered by the integration tests."""
from __future__ import annotations

import copy
import json
import socket
from typing import Any, Callable

from .fake_api import FakeApiException, FakeResponse

PLURALS = {"ConfigMap": "configmaps", "Deployment": "deployments", "Pod": "pods", "HorizontalPodAutoscaler": "horizontalpodautoscalers",
           "APIService": "apiservices", "CustomResourceDefinition": "customresourcedefinitions", "ScaledObject": "scaledobjects"}


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
            name = body["metadata"]["name"]
            target = f"{path}/{name}"
            if target in self.objects:
                raise FakeApiException(409, f"{name} already exists")
            return FakeResponse(self._store(target, copy.deepcopy(body), dry))
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
