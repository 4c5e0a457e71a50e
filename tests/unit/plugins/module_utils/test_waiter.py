from __future__ import annotations

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._waiter import (
    deployment_rolled_out,
    poll,
    restarted_before_ready,
    unschedulable_reason,
    wait_for,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_wait_returns_elapsed_and_times_out_with_last_reason() -> None:
    clock = Clock()
    states = iter([(False, "a"), (False, "b"), (True, "ok")])
    assert wait_for(lambda: next(states), 10, "x", interval=2, clock=clock, sleep=clock.sleep) == 4
    clock = Clock()
    with pytest.raises(KubeInferError, match="timed out after 5s waiting for rollout: still 0/1"):
        wait_for(lambda: (False, "still 0/1"), 5, "rollout", interval=2, clock=clock, sleep=clock.sleep)
    assert clock.now == 5


def test_deployment_rollout_predicate() -> None:
    dep = {"metadata": {"generation": 2}, "spec": {"replicas": 2},
           "status": {"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 2, "replicas": 2}}
    assert deployment_rolled_out(dep)[0]
    dep["status"]["availableReplicas"] = 1
    assert deployment_rolled_out(dep) == (False, "2 updated, 1 available of 2 replicas")
    dep["status"]["observedGeneration"] = 1
    assert "generation" in deployment_rolled_out(dep)[1]


def test_unschedulable_reason_names_the_pod() -> None:
    pod = {"metadata": {"name": "p"}, "status": {"conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes: 2 Insufficient nvidia.com/gpu"}]}}
    assert unschedulable_reason([pod]) == "pod p unschedulable: 0/3 nodes: 2 Insufficient nvidia.com/gpu"
    assert unschedulable_reason([]) is None


def test_restarted_before_ready_names_a_pod_the_kubelet_restarted_that_never_became_ready() -> None:
    def pod(name: str, ready: bool, restarts: int) -> dict:
        status = {"name": "server", "restartCount": restarts, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}
        if restarts:
            status["lastState"] = {"terminated": {"exitCode": 137, "reason": "Error"}}
        return {"metadata": {"name": name}, "status": {"phase": "Running", "containerStatuses": [status],
                                                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
    assert restarted_before_ready([pod("ok", True, 2), pod("loading", False, 0)]) is None, "a ready pod's old restarts do not count"
    assert restarted_before_ready([pod("ok", True, 0), pod("slow", False, 1)]) == (
        "pod slow: container server was restarted 1 time(s) before it became ready (last exit code 137, Error; now waiting)")


def test_poll_reports_the_last_reason_instead_of_raising() -> None:
    clock = Clock()
    calls: list[int] = []

    def never() -> tuple[bool, str]:
        calls.append(1)
        return False, f"read {len(calls)}"

    assert poll(never, 0, interval=5, clock=clock, sleep=clock.sleep) == (False, "read 1", 0), "timeout 0 reads once"
    assert poll(never, 12, interval=5, clock=clock, sleep=clock.sleep) == (False, "read 5", 12)
    states = iter([(False, "a"), (True, "ok")])
    assert poll(lambda: next(states), 60, interval=5, clock=clock, sleep=clock.sleep)[:2] == (True, "ok")
