# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Readiness predicates and a monotonic-deadline wait loop. Private to this collection: the interface may change without notice."""
from __future__ import annotations

import time
from typing import Any, Callable

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError

# A predicate returns (done, reason); reason says what is still missing.
Predicate = Callable[[], "tuple[bool, str]"]


def poll(predicate: Predicate, timeout: float, interval: float = 1.0, clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> tuple[bool, str, float]:
    """Call ``predicate`` until it holds or ``timeout`` seconds have passed (at least once).

    Returns (done, the last reason, the seconds waited).
    """
    start = clock()
    deadline = start + timeout
    while True:
        done, reason = predicate()
        now = clock()
        if done or now >= deadline:
            return done, reason, now - start
        sleep(min(interval, max(deadline - now, 0.0)))


def wait_for(predicate: Predicate, timeout: float, what: str, interval: float = 1.0,
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> float:
    """Poll ``predicate`` until it holds; return the seconds waited, or raise with the last reason."""
    done, reason, waited = poll(predicate, timeout, interval, clock, sleep)
    if not done:
        raise KubeInferError(f"timed out after {timeout:g}s waiting for {what}: {reason}", waited=round(waited, 3))
    return waited


def deployment_rolled_out(obj: dict[str, Any] | None) -> tuple[bool, str]:
    """The Deployment controller has observed the latest spec and every replica is updated and available."""
    if obj is None:
        return False, "Deployment does not exist"
    spec, status = obj.get("spec", {}), obj.get("status", {})
    want = spec.get("replicas", 1)
    if status.get("observedGeneration", 0) < obj.get("metadata", {}).get("generation", 0):
        return False, "the controller has not observed the latest generation"
    for cond in status.get("conditions", []):
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return False, f"progress deadline exceeded: {cond.get('message', '')}"
    updated = status.get("updatedReplicas", 0)
    available = status.get("availableReplicas", 0)
    total = status.get("replicas", 0)
    if updated < want or available < want or total > want:
        return False, f"{updated} updated, {available} available of {want} replicas"
    return True, f"{available}/{want} available"


def pod_finished(obj: dict[str, Any] | None) -> tuple[bool, str]:
    """The pod reached Succeeded or Failed."""
    if obj is None:
        return False, "pod does not exist"
    phase = obj.get("status", {}).get("phase", "Pending")
    return phase in ("Succeeded", "Failed"), f"phase {phase}"


def pod_ready(obj: dict[str, Any]) -> bool:
    """The pod is Running with its Ready condition true."""
    status = obj.get("status", {})
    if status.get("phase") != "Running" or obj.get("metadata", {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))


def restarted_before_ready(pods: list[dict[str, Any]]) -> str | None:
    """The first pod that is not ready and whose container has been restarted, said with its last exit; else None.

    A failed startup or liveness probe makes the kubelet kill and restart the container
    (kuberuntime_manager.go computePodActions); the pod status keeps the count and the last termination.
    """
    for pod in pods:
        if pod_ready(pod):
            continue
        for cs in pod.get("status", {}).get("containerStatuses") or []:
            last = (cs.get("lastState") or {}).get("terminated")
            if cs.get("restartCount", 0) > 0 and last:
                state = next(iter(cs.get("state") or {"unknown": {}}))
                return (f"pod {pod['metadata']['name']}: container {cs.get('name')} was restarted {cs['restartCount']} time(s) "
                        f"before it became ready (last exit code {last.get('exitCode')}, {last.get('reason') or 'no reason'}; now {state})")
    return None


def unschedulable_reason(pods: list[dict[str, Any]]) -> str | None:
    """The scheduler's message for the first pod it could not place, if any."""
    for pod in pods:
        for cond in pod.get("status", {}).get("conditions", []):
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
                return f"pod {pod['metadata']['name']} unschedulable: {cond.get('message', '')}"
    return None
