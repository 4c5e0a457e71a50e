"""gpu_operator and gpu_operator_info against the local control plane, with the stand-in chart.

Each step runs ``ansible-playbook`` on a generated playbook that calls the module and writes its
result to a JSON file; the cluster is then checked with the kubernetes client and the helm binary.
Nothing reconciles the stand-in's ClusterPolicy, so the test sets ``status.state`` through the
status subresource, as the real operator does. The test pod carries the kwok label that makes a
bare pod succeed; kwok serves the canned nvidia-smi table as the log of any container named
``nvidia-smi``.

The ClusterPolicy ``cluster-policy`` is cluster-scoped, so only one GPU Operator release can exist
in the cluster at a time; the test fails early (never skips) when another release holds it.
Needs the cluster from ``tools/localcluster/cluster.sh up`` and helm (HELM_BINARY, default
~/.cache/kubeinfer/helm-v3.22.0/helm). Run: ``pytest tests/integration/test_gpu_operator.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

if TYPE_CHECKING:
    from conftest import PlaybookRunner

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "gpu-operator-standin"
HELM = os.environ.get("HELM_BINARY") or str(Path.home() / ".cache" / "kubeinfer" / "helm-v3.22.0" / "helm")
# The cluster's two standard GPU nodes; other tests may add (and remove) many more simulated ones.
GPU_NODES = ("kwok-gpu-0001", "kwok-gpu-0002")
NODE_SELECTOR = f"kubernetes.io/hostname in ({','.join(GPU_NODES)})"
SIM_LABELS = {"kubeinfer.io/sim-complete": "true"}
WRITES = ("apply", "patch", "create", "delete")


@pytest.fixture(scope="module", autouse=True)
def helm_present() -> None:
    if not os.access(HELM, os.X_OK):
        pytest.fail(f"helm not found at {HELM}; run tools/localcluster/build.sh or set HELM_BINARY", pytrace=False)


def cluster_policy(api: client.ApiClient) -> Any:
    try:
        return client.CustomObjectsApi(api).get_cluster_custom_object("nvidia.com", "v1", "clusterpolicies", "cluster-policy")
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def set_policy_state(api: client.ApiClient, state: str) -> None:
    """What the real operator does once its operands are (or are not) ready."""
    client.CustomObjectsApi(api).patch_cluster_custom_object_status(
        "nvidia.com", "v1", "clusterpolicies", "cluster-policy", {"status": {"state": state}})


def helm_release(kubeconfig: str, namespace: str) -> Any:
    out = subprocess.run([HELM, "list", "--namespace", namespace, "--all", "--output", "json", "--kubeconfig", kubeconfig],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    rows = json.loads(out or "[]")
    return rows[0] if rows else None


def namespace_exists(api: client.ApiClient, name: str) -> bool:
    try:
        client.CoreV1Api(api).read_namespace(name)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


@pytest.fixture
def namespace(api: client.ApiClient, kubeconfig: str) -> Iterator[str]:
    policy = cluster_policy(api)
    if policy is not None:
        owner = (policy["metadata"].get("annotations") or {}).get("meta.helm.sh/release-namespace")
        pytest.fail(f"ClusterPolicy cluster-policy already exists (release namespace {owner}); only one GPU Operator "
                    "release fits in a cluster - uninstall it first", pytrace=False)
    name = f"it-gpu-op-{uuid.uuid4().hex[:8]}"
    yield name
    if helm_release(kubeconfig, name):
        subprocess.run([HELM, "uninstall", "gpu-operator", "--namespace", name, "--wait", "--kubeconfig", kubeconfig],
                       capture_output=True, text=True, check=False, timeout=300)
    try:
        client.CoreV1Api(api).delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise


# Runs one module task in a generated playbook and returns its registered result.
Runner = Callable[..., "dict[str, Any]"]


@pytest.fixture
def run(playbook: PlaybookRunner) -> Runner:
    def call(module: str, args: dict[str, Any], *extra: str) -> dict[str, Any]:
        done = playbook([{"name": "Call the module", f"kubeinfer.llm.{module}": args, "register": "r", "ignore_errors": True}],
                        name=f"Run {module}", save="r", extra_args=extra, env={"HELM_BINARY": HELM}, timeout=900)
        assert done.saved is not None, done.output[-4000:]
        return done.saved

    return call


def install_args(namespace: str, **extra: Any) -> dict[str, Any]:
    return dict({"chart_ref": str(STANDIN), "namespace": namespace, "node_selector": NODE_SELECTOR,
                 "time_slicing_replicas": 4, "timeout": 600}, **extra)


def writes(result: dict[str, Any]) -> dict[str, int]:
    return {verb: n for verb, n in result["api_requests"].items() if verb in WRITES}


def test_install_rerun_check_mode_verify_and_remove(run: Runner, api: client.ApiClient, kubeconfig: str, namespace: str) -> None:
    core, custom = client.CoreV1Api(api), client.AppsV1Api(api)

    # 1. Install the stand-in chart.
    first = run("gpu_operator", install_args(namespace))
    assert not first.get("failed"), first.get("msg")
    assert first["changed"] is True
    assert first["release"]["status"] == "deployed" and first["release"]["revision"] == 1
    assert first["release"]["chart"] == "gpu-operator-v26.7.0"
    assert first["driver_enabled"] is False, "the simulated GPU nodes carry nvidia.com/gpu.present=true"
    assert any("upgrade --install" in c for c in first["helm_commands"])
    release = helm_release(kubeconfig, namespace)
    assert release and release["status"] == "deployed" and release["revision"] == "1"
    policy = cluster_policy(api)
    assert policy is not None
    assert policy["metadata"]["annotations"]["meta.helm.sh/release-namespace"] == namespace
    assert policy["spec"]["driver"]["enabled"] is False
    assert policy["spec"]["devicePlugin"]["config"] == {"name": "time-slicing-config", "default": "any"}
    configmap = core.read_namespaced_config_map("time-slicing-config", namespace)
    assert "replicas: 4" in configmap.data["any"]
    daemonsets = {d.metadata.name for d in custom.list_namespaced_daemon_set(namespace).items}
    assert "nvidia-device-plugin-daemonset" in daemonsets and "nvidia-driver-daemonset" not in daemonsets

    # 2. The same input again: no helm upgrade, no API write, nothing changed on the cluster.
    second = run("gpu_operator", install_args(namespace))
    assert not second.get("failed"), second.get("msg")
    assert second["changed"] is False and second["changes"] == []
    assert not any(" upgrade " in c for c in second["helm_commands"]), second["helm_commands"]
    assert writes(second) == {}
    assert helm_release(kubeconfig, namespace)["revision"] == "1"
    assert core.read_namespaced_config_map("time-slicing-config", namespace).metadata.resource_version == configmap.metadata.resource_version

    # 3. Check mode with a different value: reported, not done.
    checked = run("gpu_operator", install_args(namespace, mig_strategy="mixed"), "--check", "--diff")
    assert not checked.get("failed"), checked.get("msg")
    assert checked["changed"] is True and checked["release_would_change"] is True
    # The device-plugin config carries the MIG strategy too; its write was a server-side dry run.
    assert checked["changes"] == ["values.mig.strategy: single -> mixed", f"configmap {namespace}/time-slicing-config: updated"]
    assert checked["diff"]["after"]["values"]["mig"] == {"strategy": "mixed"}
    assert not any(" upgrade " in c for c in checked["helm_commands"])
    assert helm_release(kubeconfig, namespace)["revision"] == "1"
    assert cluster_policy(api)["spec"]["mig"]["strategy"] == "single"
    assert "migStrategy: single" in core.read_namespaced_config_map("time-slicing-config", namespace).data["any"]

    # 4. The operator reports notReady: the info module names it, and runs no test pod.
    set_policy_state(api, "notReady")
    not_ready = run("gpu_operator_info", {"namespace": namespace, "node_selector": NODE_SELECTOR, "fail_on_not_ready": True,
                                          "run_test_pod": True, "test_pod_labels": SIM_LABELS})
    assert not_ready.get("failed") is True
    assert "ClusterPolicy notReady" in not_ready["msg"]
    assert not_ready["test_pod"]["skipped"] is True
    assert not_ready["changed"] is False

    # 5. Ready: the test pod runs nvidia-smi on a GPU node, its output is parsed, and the pod is gone.
    set_policy_state(api, "ready")
    facts = run("gpu_operator_info", {"namespace": namespace, "node_selector": NODE_SELECTOR, "fail_on_not_ready": True,
                                      "wait_timeout": 180, "run_test_pod": True, "test_pod_labels": SIM_LABELS,
                                      "test_pod_timeout": 120})
    assert not facts.get("failed"), facts.get("msg")
    assert facts["ready"] is True and facts["changed"] is False
    assert facts["cluster_policy"]["state"] == "ready"
    assert sorted(n["name"] for n in facts["nodes"]) == list(GPU_NODES)
    assert all(n["allocatable_gpu"] > 0 for n in facts["nodes"])
    assert facts["test_pod"]["phase"] == "Succeeded" and facts["test_pod"]["node"] in GPU_NODES
    assert facts["nvidia_smi"]["driver_version"] == "550.127.05"
    assert facts["nvidia_smi"]["cuda_version"] == "12.4"
    assert facts["nvidia_smi"]["gpus"][0]["name"] == "NVIDIA A100-SXM4-80GB"
    assert facts["nvidia_smi"]["gpus"][0]["memory_total_mib"] == 81920
    deadline = time.monotonic() + 30
    while core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/component=gpu-smoke-test").items:
        assert time.monotonic() < deadline, "the test pod was not deleted"
        time.sleep(0.5)

    # 6. Check mode of the info module with the test pod: skipped, nothing written.
    dry = run("gpu_operator_info", {"namespace": namespace, "node_selector": NODE_SELECTOR, "run_test_pod": True}, "--check")
    assert dry["test_pod"]["skipped"] is True and writes(dry) == {}

    # 7. Remove: release and our ConfigMap go; a second removal does nothing.
    removed = run("gpu_operator", {"namespace": namespace, "state": "absent"})
    assert not removed.get("failed"), removed.get("msg")
    assert removed["changed"] is True
    assert helm_release(kubeconfig, namespace) is None
    assert cluster_policy(api) is None
    with pytest.raises(ApiException) as info:
        core.read_namespaced_config_map("time-slicing-config", namespace)
    assert info.value.status == 404
    assert run("gpu_operator", {"namespace": namespace, "state": "absent"})["changed"] is False


@pytest.mark.parametrize(("args", "message"), [
    ({"time_slicing_replicas": 1}, "time_slicing_replicas must be an integer of at least 2"),
    ({"mig_strategy": "all"}, "mig_strategy must be one of"),
    ({"chart_ref": "/nonexistent/gpu-operator-chart"}, "chart_ref: local chart /nonexistent/gpu-operator-chart does not exist"),
    ({"chart_version": "v1.0.0"}, "chart_version: the local chart"),
])
def test_bad_inputs_fail_before_any_write(run: Runner, api: client.ApiClient, kubeconfig: str, namespace: str,
                                          args: dict[str, Any], message: str) -> None:
    result = run("gpu_operator", dict(install_args(namespace), **args))
    assert result.get("failed") is True
    assert message in result["msg"]
    assert not namespace_exists(api, namespace), "nothing may be written before the inputs are checked"
    assert helm_release(kubeconfig, namespace) is None
    assert cluster_policy(api) is None
