# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verification of a GPU Operator install: ClusterPolicy, operands, allocatable GPUs, an nvidia-smi pod. Private to this collection: may change."""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Mapping

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_discovery import nfd_gpu_node
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_operator_values import CLUSTER_POLICY_NAME, CLUSTER_POLICY_READY_STATE
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import (
    COMPONENT_LABEL,
    GPU_RESOURCE,
    check_label_selector,
    check_labels,
    check_namespace,
    check_range,
    int_quantity,
    managed_labels,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._nvidia_smi import COMMAND, failure_hint, parse
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import ApiError, Kube
from ansible_collections.kubeinfer.llm.plugins.module_utils._waiter import pod_finished, pod_ready, poll, unschedulable_reason, wait_for

TEST_POD_CONTAINER = "nvidia-smi"
TEST_POD_PREFIX = "gpu-operator-smoke-"
COMPONENT = "gpu-smoke-test"
POLL_INTERVAL = 5.0


# -- observations (pure) ------------------------------------------------------------------
def cluster_policy_view(obj: Mapping[str, Any] | None, name: str = CLUSTER_POLICY_NAME) -> dict[str, Any]:
    status = (obj or {}).get("status") or {}
    return {"name": name, "exists": obj is not None, "state": status.get("state"),
            "conditions": status.get("conditions") or []}


def daemonset_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    status = obj.get("status") or {}
    desired = int_quantity(status.get("desiredNumberScheduled"))
    ready = int_quantity(status.get("numberReady"))
    available = int_quantity(status.get("numberAvailable"))
    updated = int_quantity(status.get("updatedNumberScheduled"))
    observed = int_quantity(status.get("observedGeneration")) >= int_quantity((obj.get("metadata") or {}).get("generation"))
    return {"name": (obj.get("metadata") or {}).get("name"), "desired": desired, "current": int_quantity(status.get("currentNumberScheduled")),
            "ready": ready, "available": available, "updated": updated,
            "is_ready": observed and ready >= desired and available >= desired}


def node_view(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    labels = meta.get("labels") or {}
    return {"name": meta.get("name"),
            "allocatable_gpu": int_quantity((status.get("allocatable") or {}).get(GPU_RESOURCE)),
            "capacity_gpu": int_quantity((status.get("capacity") or {}).get(GPU_RESOURCE)),
            "product": labels.get("nvidia.com/gpu.product"),
            "unschedulable": bool((obj.get("spec") or {}).get("unschedulable"))}


def is_operand(obj: Mapping[str, Any]) -> bool:
    """Whether a DaemonSet is an operand the operator made for the ClusterPolicy (its controller owner).

    The chart's own DaemonSets, such as the node-feature-discovery worker that runs on every node, are not:
    a CPU node whose NFD worker is unwell must not block the GPU verification.
    """
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(o.get("kind") == "ClusterPolicy" and str(o.get("apiVersion", "")).startswith("nvidia.com/") for o in owners)


def pod_waiting_reason(pod: Mapping[str, Any]) -> str | None:
    """Why a pod is not ready: the first waiting or failed (init) container, with its reason and message."""
    status = pod.get("status") or {}
    for kind, key in (("init container", "initContainerStatuses"), ("container", "containerStatuses")):
        for cs in status.get(key) or []:
            state = cs.get("state") or {}
            waiting = state.get("waiting") or {}
            term = state.get("terminated") or {}
            if waiting:
                return f"{kind} {cs.get('name')} waiting ({waiting.get('reason') or 'Waiting'}): {waiting.get('message') or ''}".rstrip(": ")
            if term and term.get("exitCode") not in (0, None):
                return f"{kind} {cs.get('name')} exited {term.get('exitCode')} ({term.get('reason') or 'Error'}): {term.get('message') or ''}".rstrip(": ")
            if kind == "container" and not cs.get("ready"):
                return f"container {cs.get('name')} not ready"
    for cond in status.get("conditions") or []:
        if cond.get("status") == "False" and cond.get("message"):
            return f"{cond.get('type')}: {cond['message']}"
    return None


def policy_message(policy: Mapping[str, Any]) -> str:
    """The message of the ClusterPolicy's first condition that is not fine, if any."""
    for cond in policy.get("conditions") or []:
        bad = (cond.get("type") == "Ready" and cond.get("status") != "True") or (cond.get("type") == "Error" and cond.get("status") == "True")
        if bad and cond.get("message"):
            return str(cond["message"])
    return ""


def problems_of(policy: Mapping[str, Any], daemonsets: list[dict[str, Any]], nodes: list[dict[str, Any]],
                node_selector: str | None) -> list[str]:
    """Every reason the operator is not ready yet, each naming its object."""
    problems = []
    if not policy["exists"]:
        problems.append(f"ClusterPolicy {policy['name']} does not exist (is the GPU Operator installed?)")
    elif not policy["state"]:
        problems.append(f"ClusterPolicy {policy['name']} has no status.state yet (the operator has not reconciled it)")
    elif policy["state"] != CLUSTER_POLICY_READY_STATE:
        message = policy_message(policy)
        problems.append(f"ClusterPolicy {policy['state']}" + (f" ({message})" if message else ""))
    if policy["exists"] and not daemonsets:
        problems.append("no operand DaemonSet owned by the ClusterPolicy exists yet (the operator has not created them)")
    for ds in daemonsets:
        if not ds["is_ready"]:
            text = f"operand DaemonSet {ds['name']} has {ds['ready']}/{ds['desired']} pods ready and {ds['available']} available"
            if ds.get("not_ready_pod"):
                text += f"; {ds['not_ready_pod']}"
            problems.append(text)
    if not nodes:
        problems.append(f"no node matches node_selector {node_selector!r}" if node_selector
                        else "no node carries a node-feature-discovery NVIDIA PCI label yet")
    for node in nodes:
        if node["allocatable_gpu"] < 1:
            problems.append(f"node {node['name']} has 0 allocatable {GPU_RESOURCE}")
    return problems


def _explain_daemonsets(kube: Kube, namespace: str, objs: list[dict[str, Any]], views: list[dict[str, Any]]) -> None:
    """For each operand that is not ready, name one of its pods that is not, and why (one pod list, only when needed)."""
    if all(v["is_ready"] for v in views):
        return
    pods = kube.list("v1", "Pod", namespace)
    for obj, view in zip(objs, views):
        if view["is_ready"]:
            continue
        match = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name"))):
            labels = (pod.get("metadata") or {}).get("labels") or {}
            if not match or any(labels.get(k) != v for k, v in match.items()) or pod_ready(pod):
                continue
            node = (pod.get("spec") or {}).get("nodeName") or "no node"
            view["not_ready_pod"] = f"pod {pod['metadata']['name']} on {node}: {pod_waiting_reason(pod) or 'not ready'}"
            break


def observe(kube: Kube, namespace: str, node_selector: str | None) -> dict[str, Any]:
    """One read of the ClusterPolicy, the operand DaemonSets and the GPU nodes (plus the pods of an operand not ready)."""
    policy = cluster_policy_view(kube.get("nvidia.com/v1", "ClusterPolicy", CLUSTER_POLICY_NAME))
    operands = sorted((d for d in kube.list("apps/v1", "DaemonSet", namespace) if is_operand(d)),
                      key=lambda d: str(d["metadata"]["name"]))
    daemonsets = [daemonset_view(d) for d in operands]
    _explain_daemonsets(kube, namespace, operands, daemonsets)
    listed = kube.list("v1", "Node", label_selector=node_selector or None)
    nodes = [node_view(n) for n in listed if node_selector or nfd_gpu_node(n)]
    return {"cluster_policy": policy, "daemonsets": daemonsets,
            "nodes": sorted(nodes, key=lambda n: str(n["name"])),
            "problems": problems_of(policy, daemonsets, nodes, node_selector)}


# -- the test pod ---------------------------------------------------------------------------
def smoke_pod(namespace: str, image: str, labels: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A pod that takes one GPU on a tainted GPU node, runs nvidia-smi once and stops."""
    all_labels = {str(k): str(v) for k, v in (labels or {}).items()}
    all_labels.update(managed_labels(**{COMPONENT_LABEL: COMPONENT}))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": TEST_POD_PREFIX, "namespace": namespace, "labels": all_labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 0,
            "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
            # Hardened like the vLLM pod; the CUDA base image runs as root, and nvidia-smi needs no capability.
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": TEST_POD_CONTAINER,
                "image": image,
                "command": list(COMMAND),
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "resources": {"limits": {GPU_RESOURCE: 1, "cpu": "100m", "memory": "64Mi"},
                              "requests": {GPU_RESOURCE: 1, "cpu": "10m", "memory": "32Mi"}},
            }],
        },
    }


def failure_reason(pod: Mapping[str, Any]) -> str:
    """Why a Failed pod failed: the container's termination reason, message and exit code."""
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term:
            parts = [term.get("reason") or "Error", f"exit code {term.get('exitCode')}"]
            if term.get("message"):
                parts.append(str(term["message"]).strip())
            return ", ".join(parts)
    return status.get("reason") or status.get("message") or "no container status"


def _pod_progress(kube: Kube, namespace: str, name: str, holder: dict[str, Any]) -> Callable[[], tuple[bool, str]]:
    def predicate() -> tuple[bool, str]:
        pod = kube.get("v1", "Pod", name, namespace)
        holder["pod"] = pod
        done, reason = pod_finished(pod)
        if not done and pod is not None:
            unschedulable = unschedulable_reason([pod])
            if unschedulable:
                reason = unschedulable
            else:
                for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                    waiting = (cs.get("state") or {}).get("waiting") or {}
                    if waiting.get("reason"):
                        reason = f"{reason}, container {waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
        return done, reason
    return predicate


def read_log(kube: Kube, namespace: str, name: str, container: str = TEST_POD_CONTAINER) -> str:
    """The container's log through the API server (the body is plain text)."""
    text = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}/log", query=[("container", container)], verb="get")
    if text is None:
        return ""
    return text if isinstance(text, str) else json.dumps(text)


def run_smoke_pod(kube: Kube, namespace: str, image: str, labels: Mapping[str, Any] | None, timeout: float,
                  interval: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Create the test pod, wait for it to finish, read and parse its log, delete it (also on failure).

    Returns ``{"test_pod": {...}, "nvidia_smi": {...} | None, "problem": str | None}``.
    """
    created = kube.create(smoke_pod(namespace, image, labels))
    name = created["metadata"]["name"]
    view: dict[str, Any] = {"name": name, "namespace": namespace, "image": image, "skipped": False,
                            "phase": None, "node": None, "reason": None, "deleted": False}
    out: dict[str, Any] = {"test_pod": view, "nvidia_smi": None, "problem": None}
    holder: dict[str, Any] = {"pod": created}
    try:
        try:
            wait_for(_pod_progress(kube, namespace, name, holder), timeout, f"test pod {namespace}/{name}",
                     interval=interval, sleep=sleep)
        except KubeInferError as e:
            out["problem"] = f"test pod did not finish: {e.msg}"
        pod = holder.get("pod") or {}
        view["phase"] = (pod.get("status") or {}).get("phase")
        view["node"] = (pod.get("spec") or {}).get("nodeName")
        if view["phase"] == "Failed":
            view["reason"] = failure_reason(pod)
            try:
                log = read_log(kube, namespace, name)
            except ApiError:
                log = ""
            hint = failure_hint(log)
            out["problem"] = (f"test pod Failed: {view['reason']}" + (f"; {hint}" if hint else "")
                              + (f"; output: {log.strip()[:500]}" if log.strip() else ""))
        elif view["phase"] == "Succeeded":
            log = read_log(kube, namespace, name)
            view["output"] = log
            try:
                out["nvidia_smi"] = parse(log)
            except KubeInferError as e:
                out["problem"] = f"test pod output is not usable nvidia-smi output: {e.msg}"
    finally:
        try:
            view["deleted"] = kube.delete("v1", "Pod", name, namespace)
        except ApiError as e:
            view["delete_error"] = e.msg
    return out


# -- the whole check ---------------------------------------------------------------------------
def validate(params: Mapping[str, Any]) -> None:
    """Check what the argument spec cannot, before any request; the message names the parameter and the value."""
    check_namespace(params["namespace"])
    check_label_selector(params["node_selector"], "node_selector")
    check_range(params["wait_timeout"], "wait_timeout", 0, unit="seconds")
    check_range(params["test_pod_timeout"], "test_pod_timeout", 1, unit="seconds")
    if params["test_pod_namespace"]:
        check_namespace(params["test_pod_namespace"], "test_pod_namespace")
    if params["run_test_pod"] and not str(params["test_pod_image"] or "").strip():
        raise KubeInferError("test_pod_image: must not be empty when run_test_pod is true")
    check_labels(params["test_pod_labels"], "test_pod_labels")


def run(kube: Kube, params: Mapping[str, Any], check_mode: bool, diff: bool) -> dict[str, Any]:
    """What gpu_operator_info returns; raises KubeInferError naming the causes when fail_on_not_ready.

    Only reads, so there is no diff. With wait_timeout, re-reads every POLL_INTERVAL seconds while a
    problem remains, then judges the last read.
    """
    namespace = params["namespace"]
    node_selector = params["node_selector"] or None
    validate(params)
    labels = params["test_pod_labels"]

    reads: list[dict[str, Any]] = []

    def settled() -> tuple[bool, str]:
        reads[:] = [observe(kube, namespace, node_selector)]
        return not reads[0]["problems"], "; ".join(reads[0]["problems"])

    poll(settled, params["wait_timeout"], interval=POLL_INTERVAL, clock=time.monotonic, sleep=time.sleep)
    state = reads[0]
    result: dict[str, Any] = {"changed": False, **state, "nvidia_smi": None, "test_pod": None}
    problems: list[str] = list(state["problems"])
    if params["run_test_pod"]:
        if check_mode:
            result["test_pod"] = {"skipped": True, "reason": "check mode: the test pod was not created"}
        elif problems:
            result["test_pod"] = {"skipped": True, "reason": "the GPU Operator is not ready (see problems), so the test pod was not run"}
        else:
            smoke = run_smoke_pod(kube, params["test_pod_namespace"] or namespace, params["test_pod_image"], labels,
                                  params["test_pod_timeout"])
            result["test_pod"], result["nvidia_smi"] = smoke["test_pod"], smoke["nvidia_smi"]
            if smoke["problem"]:
                problems.append(smoke["problem"])
    result["problems"] = problems
    result["ready"] = not problems
    result["api_requests"] = dict(kube.requests)
    if problems and params["fail_on_not_ready"]:
        raise KubeInferError("GPU Operator not ready: " + "; ".join(problems), **result)
    return result
