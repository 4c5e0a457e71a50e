"""The GPU layer end to end on the published NVIDIA GPU Operator chart, from bare nodes to a verified stack and back.

The chart is the real v26.7.0 package (``tools/localcluster/upstream-chart.sh`` finds it and checks its digest),
installed by the collection's roles and modules with the real helm. Nothing runs inside kwok's pods, so
``tools/localcluster/gpu_sim.py`` does on the nodes what the operator, NFD, GFD and the device plugin do: NFD labels
once the chart's NFD worker runs, the operator's labels and operand DaemonSets from the ClusterPolicy, allocatable GPUs
once a device-plugin pod runs next to a driver, ClusterPolicy status from operand readiness, NFD's prune on uninstall,
and the answers of the collection's probe pods from each node's simulated hardware. So every check here can fail:
with the driver off on driverless nodes the operands never become ready, and the verification must say which and why.

Write counts come from the API server's audit log (tools/localcluster/kwok/audit-policy.yaml), by user agent: the
collection's modules send ``kubeinfer.llm``, helm sends ``Helm/...``; the simulation's own writes are not counted.

The ClusterPolicy is cluster-scoped, so these tests own the cluster's one GPU Operator release while they run: they
uninstall any release first and leave none behind (tests that only need GPUs install it again through the
``gpu_stack`` fixture). Run: ``pytest tests/integration/test_gpu_operator.py`` on a cluster from ``make cluster-up``.
"""
from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import TOOLS, Audit, cluster_nodes, gpu_stack_down, helm_binary, sim_hardware
from kubernetes import client
from kubernetes.client.rest import ApiException

if TYPE_CHECKING:
    from conftest import PlaybookRunner

GPU_NODES = ("kwok-gpu-0000", "kwok-gpu-0001")
NAMESPACE = "gpu-operator"
SIM_LABELS = {"kubeinfer.io/sim-complete": "true"}
HOST_DRIVER = "550.54.15"
NFD_PREFIX = "feature.node.kubernetes.io/"


def chart() -> str:
    return subprocess.run([str(TOOLS / "upstream-chart.sh")], capture_output=True, text=True, check=True, timeout=300).stdout.strip()


def node_state(core: client.CoreV1Api) -> dict[str, Any]:
    """Labels and taints of the cluster's own simulated nodes."""
    return {n.metadata.name: {"labels": dict(n.metadata.labels or {}),
                              "taints": sorted((t.key, t.value or "", t.effect) for t in (n.spec.taints or []))}
            for n in core.list_node(label_selector="kubeinfer.io/sim-node=true").items}


def cluster_policy(api: client.ApiClient) -> Any:
    try:
        return client.CustomObjectsApi(api).get_cluster_custom_object("nvidia.com", "v1", "clusterpolicies", "cluster-policy")
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def helm_values(kubeconfig: str) -> dict[str, Any]:
    out = subprocess.run([helm_binary(), "get", "values", "gpu-operator", "-n", NAMESPACE, "-o", "json", "--kubeconfig", kubeconfig],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return json.loads(out or "{}") or {}


def helm_release(kubeconfig: str) -> Any:
    out = subprocess.run([helm_binary(), "list", "-n", NAMESPACE, "--all", "-o", "json", "--kubeconfig", kubeconfig],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    rows = [r for r in json.loads(out or "[]") if r["name"] == "gpu-operator"]
    return rows[0] if rows else None


def daemonsets(api: client.ApiClient) -> set[str]:
    return {d.metadata.name for d in client.AppsV1Api(api).list_namespaced_daemon_set(NAMESPACE).items}


@pytest.fixture(scope="module")
def fresh(api: client.ApiClient, core: client.CoreV1Api) -> Iterator[dict[str, Any]]:
    """No GPU Operator release, and the GPU nodes as cluster.sh creates them: deleted and created again, so that
    whatever an earlier run left on them is gone. Yields their state before anything ran."""
    gpu_stack_down()
    for name in GPU_NODES:
        try:
            core.delete_node(name)
        except ApiException as e:
            if e.status != 404:
                raise
    deadline = time.monotonic() + 60
    while any(n.metadata.name in GPU_NODES for n in core.list_node().items):
        assert time.monotonic() < deadline, "the GPU nodes were not deleted"
        time.sleep(0.5)
    cluster_nodes()
    for name in GPU_NODES:
        sim_hardware(name, "none")
    before = node_state(core)
    yield before
    gpu_stack_down()
    for name in GPU_NODES:
        sim_hardware(name, "none")


@pytest.fixture
def uninstall_after(kubeconfig: str) -> Iterator[None]:
    yield
    gpu_stack_down()


Runner = Callable[..., "dict[str, Any]"]


@pytest.fixture
def run(playbook: PlaybookRunner) -> Runner:
    """One module task in a generated playbook; returns its registered result."""
    def call(module: str, args: dict[str, Any], *extra: str) -> dict[str, Any]:
        done = playbook([{"name": "Call the module", f"kubeinfer.llm.{module}": args, "register": "r", "ignore_errors": True}],
                        name=f"Run {module}", save="r", extra_args=extra, env={"HELM_BINARY": helm_binary()}, timeout=900)
        assert done.saved is not None, done.output[-4000:]
        return done.saved

    return call


def role_vars(**extra: Any) -> dict[str, Any]:
    return dict({"gpu_operator_chart_ref": chart(), "gpu_operator_test_pod_labels": SIM_LABELS,
                 "gpu_operator_verify_timeout": 180, "gpu_operator_timeout": 300}, **extra)


def roles_play(playbook: PlaybookRunner, tasks_from: str = "main.yml", **extra: Any) -> Any:
    tasks = [{"name": f"Role {role}", "ansible.builtin.include_role": {"name": f"kubeinfer.llm.{role}", "tasks_from": tasks_from}}
             for role in (("gpu_nodes", "gpu_operator") if tasks_from == "main.yml" else ("gpu_operator", "gpu_nodes"))]
    return playbook(tasks, name="GPU layer", env={"HELM_BINARY": helm_binary()}, timeout=900,
                    extra_args=("-e", json.dumps(role_vars(**extra))))


def test_nodes_start_bare(fresh: dict[str, Any], core: client.CoreV1Api) -> None:
    """As on a fresh cluster: no NFD or nvidia.com label and no allocatable GPU before the GPU layer runs."""
    for name, state in fresh.items():
        assert not [k for k in state["labels"] if k.startswith((NFD_PREFIX, "nvidia.com/"))], (name, state["labels"])
    for node in core.list_node(label_selector="kubeinfer.io/sim-node=true").items:
        assert "nvidia.com/gpu" not in (node.status.allocatable or {}), node.metadata.name


def test_bare_nodes_site_steps_rerun_without_writes_and_teardown_restores(
        fresh: dict[str, Any], playbook: PlaybookRunner, api: client.ApiClient, core: client.CoreV1Api,
        kubeconfig: str, audit: Audit, uninstall_after: None) -> None:
    # 1. Steps 1 and 2 of site.yml on bare nodes without NFD: the probe finds the GPU nodes, the driver goes on.
    first = roles_play(playbook)
    assert first.returncode == 0, first.output[-6000:]
    assert "selected by probe pods" in first.output
    assert helm_values(kubeconfig)["driver"]["enabled"] is True
    policy = cluster_policy(api)
    assert policy["spec"]["driver"]["enabled"] is True
    assert policy["status"]["state"] == "ready"
    assert "nvidia-driver-daemonset" in daemonsets(api)
    nodes = {n.metadata.name: n for n in core.list_node(label_selector="kubeinfer.io/sim-node=true").items}
    for name in GPU_NODES:
        labels = nodes[name].metadata.labels
        assert labels["kubeinfer.io/accelerator"] == "nvidia"
        assert labels[NFD_PREFIX + "pci-10de.present"] == "true" and labels["nvidia.com/gpu.present"] == "true"
        assert int(nodes[name].status.allocatable["nvidia.com/gpu"]) == 8
        assert ("nvidia.com/gpu", "present", "NoSchedule") in [(t.key, t.value, t.effect) for t in nodes[name].spec.taints]
    cpu = next(n for n in nodes if n.startswith("kwok-cpu-"))
    assert "kubeinfer.io/accelerator" not in nodes[cpu].metadata.labels and not nodes[cpu].spec.taints
    assert "nvidia-smi saw 1 GPU(s) (NVIDIA A100-SXM4-80GB)" in first.output  # kwok serves one canned log
    assert not core.list_pod_for_all_namespaces(label_selector="app.kubernetes.io/component=gpu-node-probe").items

    # 2. The converged re-run: nothing changed, and the audit log shows no write from the collection or from helm;
    #    the nvidia-smi pod runs only when the release changed (gpu_operator_verify_test_pod: auto).
    mark = audit.mark()
    second = roles_play(playbook)
    assert second.returncode == 0, second.output[-6000:]
    assert second.recap()["changed"] == 0, second.output[-4000:]
    assert audit.writes(mark, "kubeinfer.llm") == [] and audit.writes(mark, "Helm/") == []
    assert audit.requests(mark, "kubeinfer.llm"), "the audit log saw none of the collection's reads: the count proves nothing"

    # 3. Teardown: release gone, NFD pruned, and every node's labels and taints exactly as before.
    down = roles_play(playbook, tasks_from="teardown.yml")
    assert down.returncode == 0, down.output[-6000:]
    assert helm_release(kubeconfig) is None and cluster_policy(api) is None
    assert node_state(core) == fresh


def test_preinstalled_driver_turns_the_driver_off(
        fresh: dict[str, Any], run: Runner, api: client.ApiClient, kubeconfig: str, uninstall_after: None) -> None:
    for name in GPU_NODES:
        sim_hardware(name, HOST_DRIVER)
    try:
        result = run("gpu_operator", {"chart_ref": chart(), "namespace": NAMESPACE, "timeout": 300})
        assert not result.get("failed"), result.get("msg")
        assert result["driver_enabled"] is False
        assert "pre-installed driver" in result["driver_reason"] and HOST_DRIVER in result["driver_reason"]
        assert sorted(n for n, a in result["driver_probe"].items() if a["nvidia_pci"]) == list(GPU_NODES)
        assert helm_values(kubeconfig)["driver"]["enabled"] is False
        facts = run("gpu_operator_info", {"namespace": NAMESPACE, "wait_timeout": 180, "fail_on_not_ready": True,
                                          "run_test_pod": True, "test_pod_labels": SIM_LABELS})
        assert not facts.get("failed"), facts.get("msg")
        assert facts["cluster_policy"]["state"] == "ready"
        assert "nvidia-driver-daemonset" not in {d["name"] for d in facts["daemonsets"]}
        assert sorted(n["name"] for n in facts["nodes"]) == list(GPU_NODES)
        assert all(n["allocatable_gpu"] == 8 for n in facts["nodes"])
    finally:
        for name in GPU_NODES:
            sim_hardware(name, "none")


def test_driver_forced_off_on_bare_nodes_names_the_operand(
        fresh: dict[str, Any], run: Runner, api: client.ApiClient, uninstall_after: None) -> None:
    result = run("gpu_operator", {"chart_ref": chart(), "namespace": NAMESPACE, "driver_enabled": "false", "timeout": 300})
    assert not result.get("failed"), result.get("msg")
    assert result["driver_reason"] == "driver_enabled set to false" and "driver_probe" not in result
    facts = run("gpu_operator_info", {"namespace": NAMESPACE, "wait_timeout": 30, "fail_on_not_ready": True,
                                      "run_test_pod": True, "test_pod_labels": SIM_LABELS})
    assert facts.get("failed") is True
    assert "ClusterPolicy notReady" in facts["msg"]
    assert "operand DaemonSet nvidia-" in facts["msg"] and "driver" in facts["msg"].split("operand DaemonSet", 1)[1]
    waiting = [d for d in facts["daemonsets"] if not d["is_ready"]]
    assert waiting and all(d.get("not_ready_pod", "").split(" on ", 1)[1].startswith(GPU_NODES) for d in waiting), waiting
    assert all(n["allocatable_gpu"] == 0 for n in facts["nodes"])
    assert facts["test_pod"]["skipped"] is True


def test_a_mix_of_driver_and_driverless_nodes_is_refused_before_the_install(
        fresh: dict[str, Any], run: Runner, api: client.ApiClient, kubeconfig: str, core: client.CoreV1Api) -> None:
    sim_hardware(GPU_NODES[0], HOST_DRIVER)
    try:
        result = run("gpu_operator", {"chart_ref": chart(), "namespace": NAMESPACE})
    finally:
        sim_hardware(GPU_NODES[0], "none")
    assert result.get("failed") is True
    assert result["msg"].startswith(f"driver_enabled: auto found a pre-installed NVIDIA driver on {GPU_NODES[0]} but none on {GPU_NODES[1]}")
    assert helm_release(kubeconfig) is None and cluster_policy(api) is None
    assert not core.list_pod_for_all_namespaces(label_selector="app.kubernetes.io/component=gpu-node-probe").items


@pytest.mark.parametrize(("args", "message"), [
    ({"time_slicing_replicas": 1}, "time_slicing_replicas must be an integer of at least 2"),
    ({"mig_strategy": "mixed"}, "mig_strategy: mixed is not supported"),
    ({"chart_ref": "/nonexistent/gpu-operator-chart"}, "chart_ref: local chart /nonexistent/gpu-operator-chart does not exist"),
    ({"chart_version": "v1.0.0"}, "chart_version: the local chart"),
    ({"probe_timeout": 0}, "probe_timeout: must be a positive number"),
])
def test_bad_inputs_fail_before_any_write(fresh: dict[str, Any], run: Runner, api: client.ApiClient, kubeconfig: str,
                                          audit: Audit, args: dict[str, Any], message: str) -> None:
    mark = audit.mark()
    result = run("gpu_operator", dict({"chart_ref": chart(), "namespace": "it-gpu-bad-input"}, **args))
    assert result.get("failed") is True
    assert message in result["msg"]
    assert audit.writes(mark, "kubeinfer.llm") == [] and audit.writes(mark, "Helm/") == []
    assert cluster_policy(api) is None


def test_time_slicing_shares_gpus_and_the_vllm_planner_follows(
        fresh: dict[str, Any], run: Runner, api: client.ApiClient, core: client.CoreV1Api, playbook: PlaybookRunner,
        uninstall_after: None, tmp_path: Path) -> None:
    result = run("gpu_operator", {"chart_ref": chart(), "namespace": NAMESPACE, "time_slicing_replicas": 4, "timeout": 300})
    assert not result.get("failed"), result.get("msg")
    facts = run("gpu_operator_info", {"namespace": NAMESPACE, "wait_timeout": 180, "fail_on_not_ready": True})
    assert not facts.get("failed"), facts.get("msg")
    assert all(n["allocatable_gpu"] == 32 for n in facts["nodes"]), facts["nodes"]
    labels = core.read_node(GPU_NODES[0]).metadata.labels
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB-SHARED" and labels["nvidia.com/gpu.replicas"] == "4"

    namespace = f"it-ts-{int(time.time())}"
    base = {"name": "ts", "namespace": namespace, "create_namespace": True,
            "model": "Qwen/Qwen2.5-0.5B-Instruct", "gpu_products": ["NVIDIA-A100-SXM4-80GB"], "timeout": 120}
    try:
        # The real engine reserves gpu_memory_utilization of each GPU it gets: refused in preflight, before any write.
        refused = run("vllm_release", dict(base, engine="vllm", gpu_memory_utilization=0.9))
        assert refused.get("failed") is True
        assert "time-sliced 4 ways" in refused["msg"] and "at most 0.25" in refused["msg"]
        with pytest.raises(ApiException):
            core.read_namespace(namespace)
        # The chart's affinity takes GFD's -SHARED product label: the replica lands on a shared GPU node.
        served = run("vllm_release", dict(base, engine="sim"))
        assert not served.get("failed"), served.get("msg")
        pods = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/instance=ts").items
        assert pods and all(p.spec.node_name in GPU_NODES for p in pods)
    finally:
        run("vllm_release", {"name": "ts", "namespace": namespace, "state": "absent"})
        try:
            core.delete_namespace(namespace)
        except ApiException as e:
            if e.status != 404:
                raise
