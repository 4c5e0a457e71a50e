"""GPU Operator verification against a recording fake API: the causes it names, the test pod's life and its cleanup."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_verify import (
    daemonset_view,
    failure_reason,
    smoke_pod,
    verify,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube

from .fake_api import FakeApiClient

FIXTURES = Path(__file__).parent / "fixtures"
CP_PATH = "/apis/nvidia.com/v1/clusterpolicies/cluster-policy"
DS_PATH = "/apis/apps/v1/namespaces/gpu-operator/daemonsets"
NODES_PATH = "/api/v1/nodes"
PODS_PATH = "/api/v1/namespaces/gpu-operator/pods"
POD = "gpu-operator-smoke-abcde"
POD_PATH = f"{PODS_PATH}/{POD}"
LOG_PATH = f"{POD_PATH}/log"


def node(name: str, gpus: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "capacity": {"nvidia.com/gpu": str(gpus)}}}


def daemonset(name: str, desired: int, ready: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "generation": 1},
            "status": {"observedGeneration": 1, "desiredNumberScheduled": desired, "currentNumberScheduled": desired,
                       "numberReady": ready, "numberAvailable": ready, "updatedNumberScheduled": desired}}


def answers(state: str | None = "ready", gpus: tuple[int, ...] = (8, 8), ds_ready: int = 2) -> dict[tuple[str, str], Any]:
    policy = {"metadata": {"name": "cluster-policy"}, "status": {"state": state} if state else {}}
    return {
        ("GET", CP_PATH): policy,
        ("GET", DS_PATH): {"items": [daemonset("nvidia-device-plugin-daemonset", 2, ds_ready)]},
        ("GET", NODES_PATH): {"items": [node(f"gpu-{i}", n) for i, n in enumerate(gpus)]},
    }


def params(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"namespace": "gpu-operator", "node_selector": "nvidia.com/gpu.present=true", "wait_timeout": 0,
                            "fail_on_not_ready": False, "run_test_pod": False, "test_pod_image": "cuda:test",
                            "test_pod_namespace": None, "test_pod_labels": {}, "test_pod_timeout": 30}
    base.update(overrides)
    return base


def with_pod(base: dict[tuple[str, str], Any], phase: str, log: str, container_state: dict[str, Any] | None = None) -> dict[tuple[str, str], Any]:
    pod = {"metadata": {"name": POD, "namespace": "gpu-operator"}, "spec": {"nodeName": "gpu-0"},
           "status": {"phase": phase, "containerStatuses": [{"name": "nvidia-smi", "state": container_state or {}}]}}
    base.update({
        ("POST", PODS_PATH): lambda body: dict(body, metadata=dict(body["metadata"], name=POD)),
        ("GET", POD_PATH): pod,
        ("GET", LOG_PATH): log,
        ("DELETE", POD_PATH): {},
    })
    return base


def test_ready_stack_reports_facts_with_reads_only() -> None:
    api = FakeApiClient(answers())
    result = verify(Kube(api), params(), check_mode=False)
    assert result["ready"] is True and result["problems"] == [] and result["changed"] is False
    assert result["cluster_policy"]["state"] == "ready"
    assert [n["allocatable_gpu"] for n in result["nodes"]] == [8, 8]
    assert result["daemonsets"][0]["is_ready"] is True
    assert {c["method"] for c in api.calls} == {"GET"}
    assert api.calls[-1]["query"]["labelSelector"] == "nvidia.com/gpu.present=true"


def test_not_ready_policy_names_the_cause_and_fails_on_request() -> None:
    api = FakeApiClient(answers(state="notReady"))
    with pytest.raises(KubeInferError) as err:
        verify(Kube(api), params(fail_on_not_ready=True, run_test_pod=True), check_mode=False)
    assert "ClusterPolicy notReady" in err.value.msg
    assert err.value.result["test_pod"]["skipped"] is True
    assert not any(c["method"] == "POST" for c in api.calls), "no test pod on a stack that is not ready"


def test_node_without_gpus_and_unready_daemonset_are_named() -> None:
    result = verify(Kube(FakeApiClient(answers(gpus=(8, 0), ds_ready=1))), params(), check_mode=False)
    assert "node gpu-1 has 0 allocatable nvidia.com/gpu" in result["problems"]
    assert "DaemonSet nvidia-device-plugin-daemonset has 1/2 pods ready and 1 available" in result["problems"]
    assert result["ready"] is False


def test_missing_policy_and_no_matching_node() -> None:
    base = answers(gpus=())
    del base[("GET", CP_PATH)]
    result = verify(Kube(FakeApiClient(base)), params(), check_mode=False)
    assert result["cluster_policy"]["exists"] is False
    assert result["problems"][0].startswith("ClusterPolicy cluster-policy does not exist")
    assert "no node matches node_selector 'nvidia.com/gpu.present=true'" in result["problems"]


def test_wait_timeout_rereads_until_ready() -> None:
    states = iter(["notReady", "notReady", "ready"])
    base = answers()
    base[("GET", CP_PATH)] = lambda body: {"status": {"state": next(states)}}
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    result = verify(Kube(FakeApiClient(base)), params(wait_timeout=60), False, clock=lambda: now[0], sleep=sleep, interval=5)
    assert result["ready"] is True and now[0] == 10


def test_test_pod_succeeds_is_parsed_and_deleted() -> None:
    log = (FIXTURES / "nvidia_smi_a100_80gb_x1.txt").read_text()
    api = FakeApiClient(with_pod(answers(), "Succeeded", log))
    result = verify(Kube(api), params(run_test_pod=True, test_pod_labels={"kubeinfer.io/sim-complete": "true"}), False)
    assert result["ready"] is True
    assert result["nvidia_smi"]["gpu_count"] == 1 and result["nvidia_smi"]["driver_version"]
    assert result["test_pod"]["phase"] == "Succeeded" and result["test_pod"]["deleted"] is True
    created = next(c["body"] for c in api.calls if c["method"] == "POST")
    assert created["metadata"]["labels"]["kubeinfer.io/sim-complete"] == "true"
    assert next(c for c in api.calls if c["path"] == LOG_PATH)["query"] == {"container": "nvidia-smi"}
    assert api.calls[-1]["method"] == "DELETE" and api.calls[-1]["path"] == POD_PATH
    assert result["changed"] is False


def test_failed_test_pod_names_the_reason_and_is_deleted() -> None:
    log = (FIXTURES / "nvidia_smi_driver_failed.txt").read_text()
    terminated = {"terminated": {"reason": "Error", "exitCode": 9, "message": "nvml init failed"}}
    api = FakeApiClient(with_pod(answers(), "Failed", log, terminated))
    with pytest.raises(KubeInferError) as err:
        verify(Kube(api), params(run_test_pod=True, fail_on_not_ready=True), False)
    assert "test pod Failed: Error, exit code 9, nvml init failed" in err.value.msg
    assert err.value.result["test_pod"]["deleted"] is True
    assert api.calls[-1]["method"] == "DELETE"


def test_unparseable_output_is_a_problem() -> None:
    api = FakeApiClient(with_pod(answers(), "Succeeded", "exec: nvidia-smi: executable file not found in $PATH"))
    result = verify(Kube(api), params(run_test_pod=True), False)
    assert result["ready"] is False
    assert result["problems"][0].startswith("test pod output is not usable nvidia-smi output: nvidia-smi is not present")
    assert result["test_pod"]["deleted"] is True


def test_check_mode_skips_the_test_pod_and_writes_nothing() -> None:
    api = FakeApiClient(answers())
    result = verify(Kube(api), params(run_test_pod=True), check_mode=True)
    assert result["test_pod"] == {"skipped": True, "reason": "check mode: the test pod was not created"}
    assert {c["method"] for c in api.calls} == {"GET"}


def test_bad_timeouts_fail_before_requests() -> None:
    api = FakeApiClient(answers())
    with pytest.raises(KubeInferError, match="^wait_timeout: "):
        verify(Kube(api), params(wait_timeout=-1), False)
    with pytest.raises(KubeInferError, match="^test_pod_timeout: "):
        verify(Kube(api), params(test_pod_timeout=-5), False)
    assert api.calls == []


def test_smoke_pod_shape() -> None:
    pod = smoke_pod("ns", "img", {"a": 1})
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    container = spec["containers"][0]
    assert container["name"] == "nvidia-smi" and container["command"] == ["nvidia-smi"] and container["image"] == "img"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 1}
    assert pod["metadata"]["labels"]["a"] == "1" and pod["metadata"]["generateName"]


def test_daemonset_view_and_failure_reason_edges() -> None:
    stale = daemonset("x", 2, 2)
    stale["metadata"]["generation"] = 2
    assert daemonset_view(stale)["is_ready"] is False, "an unobserved generation is not ready"
    assert daemonset_view({"metadata": {"name": "empty"}, "status": {}})["is_ready"] is True
    assert failure_reason({"status": {"reason": "Evicted"}}) == "Evicted"
