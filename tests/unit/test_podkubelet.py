"""tools/localcluster/podkubelet.py: endpoint selection (kube-proxy's) and probe thresholds (the kubelet's), pure logic."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "localcluster"))
import podkubelet  # tools/localcluster, on the path above


def pod(name: str, ready: bool, deleting: bool = False, phase: str = "Running", ip: str = "127.20.0.2") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": f"uid-{name}", "labels": {"app": "x"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-03T13:00:00Z"
    return {"metadata": meta, "spec": {"nodeName": "n", "containers": [{"name": "server", "ports": [{"name": "http", "containerPort": 8000}]}]},
            "status": {"phase": phase, "podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_routes_go_to_ready_endpoints_only_while_there_are_any() -> None:
    pods = [pod("a", True), pod("b", False), pod("c", True, deleting=True), pod("d", True, phase="Succeeded"), pod("e", True, ip="")]
    assert podkubelet.targets(pods) == [("a", "127.20.0.2")]


def test_with_no_ready_endpoint_the_serving_terminating_ones_take_the_traffic() -> None:
    # pkg/proxy/topology.go CategorizeEndpoints: serving && terminating endpoints only as a fallback
    assert podkubelet.targets([pod("b", False), pod("c", True, deleting=True), pod("f", False, deleting=True)]) == [("c", "127.20.0.2")]
    assert podkubelet.targets([pod("b", False), pod("f", False, deleting=True)]) == []


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def call(self, method: str, path: str, body: Any = None, content_type: str = "") -> None:
        self.calls.append((method, path, body))


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch) -> Any:
    p = pod("a", False)
    p["spec"]["containers"][0].update(
        startupProbe={"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1, "failureThreshold": 3},
        readinessProbe={"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1, "failureThreshold": 2})
    w = podkubelet.PodWorker(FakeApi(), p)  # type: ignore[arg-type]
    w.running_since = 0.0
    killed: list[str] = []
    monkeypatch.setattr(w, "kill_container", killed.append)
    w.killed = killed
    w.clock = [1000.0]
    return w


def run_probes(worker: Any, monkeypatch: pytest.MonkeyPatch, answers: list[bool]) -> None:
    clock = worker.clock
    monkeypatch.setattr(podkubelet.time, "monotonic", lambda: clock[0])
    for ok in answers:
        monkeypatch.setattr(podkubelet, "http_probe", lambda *a, ok=ok: (ok, "" if ok else "connection refused"))
        for kind in ("startup", "readiness", "liveness"):
            worker.probe(worker.probes[kind], deleting=False)
        clock[0] += 1.0


def test_startup_failures_below_the_threshold_do_not_kill_and_readiness_waits_for_startup(worker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    run_probes(worker, monkeypatch, [False, False])
    assert worker.killed == [] and not worker.started and not worker.ready()
    run_probes(worker, monkeypatch, [True])
    assert worker.started and worker.ready(), "readiness runs once the startup probe has succeeded"
    unhealthy = [c[2]["message"] for c in worker.api.calls if c[2] and c[2].get("reason") == "Unhealthy"]
    assert unhealthy == ["Startup probe failed: connection refused"] * 2


def test_the_startup_threshold_of_failures_kills_the_container(worker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    run_probes(worker, monkeypatch, [False, False, False])
    assert worker.killed == ["failed startup probe"] and not worker.started


def test_readiness_turns_false_only_after_its_failure_threshold(worker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    run_probes(worker, monkeypatch, [True, True])
    assert worker.ready()
    run_probes(worker, monkeypatch, [False])
    assert worker.ready(), "one failure of a threshold of 2 keeps the pod ready"
    run_probes(worker, monkeypatch, [False])
    assert not worker.ready()
