# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pick a Ready pod and open Kubernetes port-forward streams to it through the API server. Private to this collection: the interface may change."""
from __future__ import annotations

import json
import threading
from typing import Any, Callable, Optional

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._http import Endpoint
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube
from ansible_collections.kubeinfer.llm.plugins.module_utils._waiter import pod_ready, wait_for

DEFAULT_PORT = 8000


def selector_of(service: dict[str, Any]) -> str:
    """The label selector of a Service, as a string; a Service without selector cannot be forwarded to."""
    sel = (service.get("spec") or {}).get("selector") or {}
    if not sel:
        name = service.get("metadata", {}).get("name")
        raise KubeInferError(f"service {name} has no selector, so it names no pod to forward to")
    return ",".join(f"{k}={v}" for k, v in sorted(sel.items()))


def describe_pods(pods: list[dict[str, Any]]) -> str:
    """One short phrase per pod: its name, phase and readiness."""
    if not pods:
        return "no pod matches"
    parts = []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        status = pod.get("status", {})
        ready = next((c.get("status") for c in status.get("conditions", []) if c.get("type") == "Ready"), "Unknown")
        parts.append(f"{pod['metadata']['name']} ({status.get('phase', 'Pending')}, Ready={ready})")
    return ", ".join(parts)


def pick_ready(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first Ready pod by name, so that repeated runs hit the same pod."""
    ready = sorted((p for p in pods if pod_ready(p)), key=lambda p: p["metadata"]["name"])
    return ready[0] if ready else None


def pod_port(pod: dict[str, Any], service: dict[str, Any] | None, port: int | None) -> int:
    """The pod port to forward: ``port`` if given, else the Service's first target port, else 8000.

    A named target port is looked up in the pod's container ports.
    """
    if port is not None:
        return port
    if service:
        ports = (service.get("spec") or {}).get("ports") or []
        if ports:
            target = ports[0].get("targetPort", ports[0].get("port"))
            if isinstance(target, int):
                return target
            if isinstance(target, str) and target.isdigit():
                return int(target)
            for container in pod.get("spec", {}).get("containers", []):
                for cp in container.get("ports", []) or []:
                    if cp.get("name") == target:
                        return int(cp["containerPort"])
            raise KubeInferError(f"target port {target} of service {service['metadata']['name']} "
                                 f"is not a container port of pod {pod['metadata']['name']}")
    return DEFAULT_PORT


def find_pod(kube: Kube, namespace: str, label_selector: str | None = None, service: str | None = None,
             pod: str | None = None, ready_timeout: float = 0) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Return a Ready pod (and the Service it was found through), waiting up to ``ready_timeout`` seconds."""
    svc = None
    if service:
        svc = kube.get("v1", "Service", service, namespace)
        if svc is None:
            raise KubeInferError(f"service: Service {namespace}/{service} does not exist")
        label_selector = selector_of(svc)
    found: dict[str, Any] = {}

    def ready() -> tuple[bool, str]:
        if pod:
            obj = kube.get("v1", "Pod", pod, namespace)
            pods = [obj] if obj else []
            if obj is None:
                return False, f"pod {namespace}/{pod} does not exist"
        else:
            pods = kube.list("v1", "Pod", namespace, label_selector=label_selector)
        chosen = pick_ready(pods)
        if chosen:
            found["pod"] = chosen
            return True, "ready"
        return False, describe_pods(pods)

    what = f"pod {namespace}/{pod}" if pod else f"a Ready pod in {namespace} matching {label_selector}"
    if ready_timeout > 0:
        wait_for(ready, ready_timeout, what, interval=2.0)
    else:
        done, reason = ready()
        if not done:
            raise KubeInferError(f"no Ready pod to forward to: {what}: {reason}")
    return found["pod"], svc


def handshake_reason(err: Exception) -> str:
    """A short reason from the client's handshake error: the status line and the API server's message.

    The websocket library formats a refused upgrade as ``status -+-+- headers -+-+- body``.
    """
    reason = str(getattr(err, "reason", None) or err)
    parts = reason.split(" -+-+- ")
    if len(parts) < 3:
        return reason
    try:
        message = json.loads(parts[-1]).get("message")
    except (ValueError, AttributeError):
        message = parts[-1].strip()[:200]
    return f"{parts[0]}: {message}" if message else parts[0]


def open_stream(api_client: Any, namespace: str, name: str, port: int, timeout: float) -> Any:
    """Open one port-forward stream (the v4.channel.k8s.io websocket through the API server).

    The websocket library offers no connect timeout here, so the handshake runs in a daemon thread and
    is abandoned after ``timeout`` seconds. Returns the kubernetes ``PortForward`` object.
    """
    # CoreV1Api alone: kubernetes.client's __init__ would import every API class and model (see _client._DeferredPackage)
    from kubernetes.client.api.core_v1_api import CoreV1Api
    from kubernetes.stream import portforward

    target = f"pod/{namespace}/{name}:{port}"
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            # kubernetes.stream swaps the request method of the ApiClient it is given while it opens the websocket and puts it
            # back afterwards. On a shared client, two streams opened at once (vllm_canary measures two versions side by side)
            # or a REST call in between can leave the swapped method in place. So each stream gets a client of its own.
            own = type(api_client)(configuration=api_client.configuration)
            own.default_headers.update(api_client.default_headers)
            api = CoreV1Api(own)
            box["pf"] = portforward(api.connect_get_namespaced_pod_portforward, name, namespace, ports=str(port))
        except Exception as e:  # ApiException(status=0) wraps handshake errors; keep the reason
            box["error"] = e

    worker = threading.Thread(target=run, name=f"port-forward {target}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise KubeInferError(f"timed out after {timeout:g}s opening the port-forward to {target}")
    if "error" in box:
        raise KubeInferError(f"port-forward to {target} failed: {handshake_reason(box['error'])}")
    return box["pf"]


class PortForwardTarget:
    """A socket factory that opens a fresh port-forward stream for each connection, like kubectl does."""

    def __init__(self, api_client: Any, namespace: str, name: str, port: int,
                 opener: Callable[[Any, str, str, int, float], Any] = open_stream) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.name = name
        self.port = port
        self.opener = opener
        self.last: Any = None

    def __call__(self, timeout: float) -> Any:
        self.last = self.opener(self.api_client, self.namespace, self.name, self.port, timeout)
        return self.last.socket(self.port)

    def error(self) -> Optional[str]:
        """What the kubelet (kwok) sent on the error channel of the last stream, if anything."""
        if self.last is None:
            return None
        err = self.last.error(self.port)
        return f"port-forward error: {err.strip()}" if err else None

    @property
    def via(self) -> str:
        return f"port-forward pod/{self.namespace}/{self.name}:{self.port}"


def pod_endpoint(kube: Kube, namespace: str, label_selector: str | None = None, service: str | None = None,
                 pod: str | None = None, port: int | None = None, ready_timeout: float = 0) -> tuple[Endpoint, dict[str, Any]]:
    """An Endpoint that reaches a Ready pod through port-forward, and the pod it chose."""
    chosen, svc = find_pod(kube, namespace, label_selector, service, pod, ready_timeout)
    target = PortForwardTarget(kube.api_client, namespace, chosen["metadata"]["name"], pod_port(chosen, svc, port))
    # The Host header a client would send through kubectl port-forward.
    return Endpoint(target, f"localhost:{target.port}", target.via, describe_close=target.error), chosen
