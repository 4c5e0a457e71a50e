"""GPU Operator verification against a recording fake API: the causes it names, the test pod's life and its cleanup."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils import _gpu_verify
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_verify import (
    daemonset_view,
    failure_reason,
    is_operand,
    pod_waiting_reason,
    policy_message,
    smoke_pod,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube

from .fake_api import FakeApiClient
from .fixture_text import fixture

CP_PATH = "/apis/nvidia.com/v1/clusterpolicies/cluster-policy"
DS_PATH = "/apis/apps/v1/namespaces/gpu-operator/daemonsets"
NODES_PATH = "/api/v1/nodes"
PODS_PATH = "/api/v1/namespaces/gpu-operator/pods"
POD = "gpu-operator-smoke-abcde"
POD_PATH = f"{PODS_PATH}/{POD}"
LOG_PATH = f"{POD_PATH}/log"


NFD_LABEL = "feature.node.kubernetes.io/pci-0302_10de.present"
# How the operator owns its operands (gpu-operator controllers: controllerutil.SetControllerReference to the ClusterPolicy).
POLICY_OWNER = {"apiVersion": "nvidia.com/v1", "kind": "ClusterPolicy", "name": "cluster-policy", "uid": "u-1",
                "controller": True, "blockOwnerDeletion": True}


def node(name: str, gpus: int, nfd: bool = True) -> dict[str, Any]:
    labels = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB", **({NFD_LABEL: "true"} if nfd else {})}
    return {"metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "capacity": {"nvidia.com/gpu": str(gpus)}}}


def daemonset(name: str, desired: int, ready: int, operand: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "generation": 1}
    if operand:
        meta["ownerReferences"] = [POLICY_OWNER]
    return {"metadata": meta, "spec": {"selector": {"matchLabels": {"app": name}}},
            "status": {"observedGeneration": 1, "desiredNumberScheduled": desired, "currentNumberScheduled": desired,
                       "numberReady": ready, "numberAvailable": ready, "updatedNumberScheduled": desired}}


# The chart's own NFD worker runs on every node, CPU nodes included; one of them is unwell.
NFD_WORKER = daemonset("gpu-operator-node-feature-discovery-worker", 5, 4, operand=False)


def answers(state: str | None = "ready", gpus: tuple[int, ...] = (8, 8), ds_ready: int = 2) -> dict[tuple[str, str], Any]:
    policy = {"metadata": {"name": "cluster-policy"}, "status": {"state": state} if state else {}}
    return {
        ("GET", CP_PATH): policy,
        ("GET", DS_PATH): {"items": [daemonset("nvidia-device-plugin-daemonset", 2, ds_ready), NFD_WORKER]},
        ("GET", NODES_PATH): {"items": [node(f"gpu-{i}", n) for i, n in enumerate(gpus)]},
    }


def waiting_pod(name: str, app: str, node_name: str, **state: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"app": app}}, "spec": {"nodeName": node_name},
            "status": {"phase": "Pending", "initContainerStatuses": [{"name": "toolkit-validation", "ready": False, "state": state}]}}


def verify(kube: Kube, params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    return _gpu_verify.run(kube, params, check_mode, False)


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
    assert [d["name"] for d in result["daemonsets"]] == ["nvidia-device-plugin-daemonset"], "the NFD worker is no operand"
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


def test_node_without_gpus_and_unready_daemonset_are_named_with_the_waiting_pod() -> None:
    base = answers(gpus=(8, 0), ds_ready=1)
    ready_pod = {"metadata": {"name": "nvidia-device-plugin-daemonset-aaaaa", "labels": {"app": "nvidia-device-plugin-daemonset"}},
                 "spec": {"nodeName": "gpu-0"},
                 "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
    stuck = waiting_pod("nvidia-device-plugin-daemonset-bbbbb", "nvidia-device-plugin-daemonset", "gpu-1",
                        waiting={"reason": "PodInitializing"})
    other = waiting_pod("gpu-operator-node-feature-discovery-worker-ccccc", "gpu-operator-node-feature-discovery-worker", "cpu-0",
                        waiting={"reason": "ImagePullBackOff"})
    base[("GET", PODS_PATH)] = {"items": [other, stuck, ready_pod]}
    api = FakeApiClient(base)
    result = verify(Kube(api), params(), check_mode=False)
    assert "node gpu-1 has 0 allocatable nvidia.com/gpu" in result["problems"]
    assert ("operand DaemonSet nvidia-device-plugin-daemonset has 1/2 pods ready and 1 available; pod "
            "nvidia-device-plugin-daemonset-bbbbb on gpu-1: init container toolkit-validation waiting (PodInitializing)") in result["problems"]
    assert result["daemonsets"][0]["not_ready_pod"].startswith("pod nvidia-device-plugin-daemonset-bbbbb on gpu-1")
    assert not any("node-feature-discovery" in p for p in result["problems"])
    assert result["ready"] is False
    assert [c["path"] for c in api.calls].count(PODS_PATH) == 1, "one pod list, only because an operand is not ready"


def test_a_ready_stack_lists_no_pods() -> None:
    api = FakeApiClient(answers())
    verify(Kube(api), params(), check_mode=False)
    assert PODS_PATH not in [c["path"] for c in api.calls]


def test_only_the_nfd_worker_is_no_operand_yet() -> None:
    base = answers()
    base[("GET", DS_PATH)] = {"items": [NFD_WORKER]}
    result = verify(Kube(FakeApiClient(base)), params(), check_mode=False)
    assert result["daemonsets"] == []
    assert result["problems"] == ["no operand DaemonSet owned by the ClusterPolicy exists yet (the operator has not created them)"]


def test_empty_node_selector_checks_only_nfd_gpu_nodes() -> None:
    base = answers()
    base[("GET", NODES_PATH)] = {"items": [node("gpu-0", 8), node("cpu-0", 0, nfd=False), node("gpu-1", 4)]}
    api = FakeApiClient(base)
    result = verify(Kube(api), params(node_selector=""), check_mode=False)
    assert [n["name"] for n in result["nodes"]] == ["gpu-0", "gpu-1"], "a CPU node with 0 GPUs is no problem"
    assert result["ready"] is True
    assert "labelSelector" not in api.calls[-1]["query"]
    base[("GET", NODES_PATH)] = {"items": [node("cpu-0", 0, nfd=False)]}
    result = verify(Kube(FakeApiClient(base)), params(node_selector=""), check_mode=False)
    assert result["problems"] == ["no node carries a node-feature-discovery NVIDIA PCI label yet"]


def test_not_ready_policy_shows_its_condition_message() -> None:
    base = answers(state="notReady")
    base[("GET", CP_PATH)]["status"]["conditions"] = [
        {"type": "Ready", "status": "False", "reason": "OperandNotReady", "message": "ClusterPolicy is not ready, states not ready: [state-driver]"},
        {"type": "Error", "status": "False", "message": "old"}]
    result = verify(Kube(FakeApiClient(base)), params(), check_mode=False)
    assert result["problems"] == ["ClusterPolicy notReady (ClusterPolicy is not ready, states not ready: [state-driver])"]


def test_missing_policy_and_no_matching_node() -> None:
    base = answers(gpus=())
    del base[("GET", CP_PATH)]
    result = verify(Kube(FakeApiClient(base)), params(), check_mode=False)
    assert result["cluster_policy"]["exists"] is False
    assert result["problems"][0].startswith("ClusterPolicy cluster-policy does not exist")
    assert "no node matches node_selector 'nvidia.com/gpu.present=true'" in result["problems"]


def fake_time(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    monkeypatch.setattr(_gpu_verify, "time", SimpleNamespace(monotonic=lambda: now[0], sleep=sleep))
    return now


def test_wait_timeout_rereads_until_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    states = iter(["notReady", "notReady", "ready"])
    base = answers()
    base[("GET", CP_PATH)] = lambda body: {"status": {"state": next(states)}}
    now = fake_time(monkeypatch)
    result = verify(Kube(FakeApiClient(base)), params(wait_timeout=60), False)
    assert result["ready"] is True and now[0] == 2 * _gpu_verify.POLL_INTERVAL


def test_wait_timeout_judges_the_last_read(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeApiClient(answers(state="notReady"))
    now = fake_time(monkeypatch)
    result = verify(Kube(api), params(wait_timeout=12), False)
    assert now[0] == 12 and result["problems"] == ["ClusterPolicy notReady"]
    assert sum(c["path"] == CP_PATH for c in api.calls) == 4, "reads at 0, 5, 10 and 12 seconds"


def test_test_pod_succeeds_is_parsed_and_deleted() -> None:
    log = "0, NVIDIA A100-SXM4-80GB, 550.127.05, 81920, 1, 00000000:07:00.0\n"
    api = FakeApiClient(with_pod(answers(), "Succeeded", log))
    result = verify(Kube(api), params(run_test_pod=True, test_pod_labels={"kubeinfer.io/sim-complete": "true"}), False)
    assert result["ready"] is True
    assert result["nvidia_smi"]["gpu_count"] == 1 and result["nvidia_smi"]["driver_version"] == "550.127.05"
    assert result["test_pod"]["phase"] == "Succeeded" and result["test_pod"]["deleted"] is True
    created = next(c["body"] for c in api.calls if c["method"] == "POST")
    assert created["metadata"]["labels"]["kubeinfer.io/sim-complete"] == "true"
    assert next(c for c in api.calls if c["path"] == LOG_PATH)["query"] == {"container": "nvidia-smi"}
    assert api.calls[-1]["method"] == "DELETE" and api.calls[-1]["path"] == POD_PATH
    assert result["changed"] is False


def test_failed_test_pod_names_the_reason_and_is_deleted() -> None:
    log = fixture("nvidia_smi_driver_failed.txt")
    terminated = {"terminated": {"reason": "Error", "exitCode": 9, "message": "nvml init failed"}}
    api = FakeApiClient(with_pod(answers(), "Failed", log, terminated))
    with pytest.raises(KubeInferError) as err:
        verify(Kube(api), params(run_test_pod=True, fail_on_not_ready=True), False)
    assert "test pod Failed: Error, exit code 9, nvml init failed; nvidia-smi could not talk to the NVIDIA driver" in err.value.msg
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


def test_bad_input_fails_before_requests() -> None:
    api = FakeApiClient(answers())
    with pytest.raises(KubeInferError, match="^wait_timeout: "):
        verify(Kube(api), params(wait_timeout=-1), False)
    with pytest.raises(KubeInferError, match="^test_pod_timeout: "):
        verify(Kube(api), params(test_pod_timeout=-5), False)
    with pytest.raises(KubeInferError, match="^test_pod_labels: invalid label key 'bad key'"):
        verify(Kube(api), params(run_test_pod=True, test_pod_labels={"bad key": "x"}), False)
    assert api.calls == []


def test_smoke_pod_shape() -> None:
    pod = smoke_pod("ns", "img", {"a": 1})
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    container = spec["containers"][0]
    assert container["name"] == "nvidia-smi" and container["image"] == "img"
    assert container["command"] == ["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total,memory.used,pci.bus_id",
                                    "--format=csv,noheader,nounits"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"} and spec["automountServiceAccountToken"] is False
    assert pod["metadata"]["labels"]["a"] == "1" and pod["metadata"]["generateName"]


@pytest.mark.parametrize("owners, operand", [
    ([POLICY_OWNER], True),
    ([dict(POLICY_OWNER, apiVersion="nvidia.com/v2")], True),
    ([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "gpu-operator"}], False),
    ([dict(POLICY_OWNER, apiVersion="example.com/v1")], False),  # a ClusterPolicy of another API group
    ([], False),
    (None, False),
])
def test_is_operand(owners: Any, operand: bool) -> None:
    assert is_operand({"metadata": {"name": "x", "ownerReferences": owners}}) is operand


@pytest.mark.parametrize("status, reason", [
    ({"initContainerStatuses": [{"name": "driver-validation", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m"}}}]},
     "init container driver-validation waiting (CrashLoopBackOff): back-off 5m"),
    ({"initContainerStatuses": [{"name": "driver-validation", "state": {"terminated": {"exitCode": 0}}}],
      "containerStatuses": [{"name": "nvidia-device-plugin", "ready": False, "state": {"waiting": {"reason": "ContainerCreating"}}}]},
     "container nvidia-device-plugin waiting (ContainerCreating)"),
    ({"initContainerStatuses": [{"name": "toolkit-validation", "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "no runtime"}}}]},
     "init container toolkit-validation exited 1 (Error): no runtime"),
    ({"containerStatuses": [{"name": "dcgm-exporter", "ready": False, "state": {"running": {}}}]}, "container dcgm-exporter not ready"),
    ({"conditions": [{"type": "PodScheduled", "status": "False", "message": "0/3 nodes are available"}]}, "PodScheduled: 0/3 nodes are available"),
    ({"containerStatuses": [{"name": "c", "ready": True, "state": {"running": {}}}]}, None),
])
def test_pod_waiting_reason(status: dict[str, Any], reason: str | None) -> None:
    assert pod_waiting_reason({"metadata": {"name": "p"}, "status": status}) == reason


def test_policy_message() -> None:
    assert policy_message({"conditions": [{"type": "Ready", "status": "True", "message": "fine"}]}) == ""
    assert policy_message({"conditions": [{"type": "Error", "status": "True", "message": "bad config"}]}) == "bad config"
    assert policy_message({"conditions": [{"type": "Ready", "status": "False"}, {"type": "Error", "status": "True", "message": "x"}]}) == "x"
    assert policy_message({}) == ""


def test_daemonset_view_and_failure_reason_edges() -> None:
    stale = daemonset("x", 2, 2)
    stale["metadata"]["generation"] = 2
    assert daemonset_view(stale)["is_ready"] is False, "an unobserved generation is not ready"
    assert daemonset_view({"metadata": {"name": "empty"}, "status": {}})["is_ready"] is True
    assert failure_reason({"status": {"reason": "Evicted"}}) == "Evicted"
