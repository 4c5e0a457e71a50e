"""vllm_release and the vllm role against the local control plane (real API server, scheduler, controllers and helm).

Every test brings its own GPU pool: two kwok nodes with 8 ``nvidia.com/gpu`` each and A100 80GB labels, carrying a
label and a NoSchedule taint unique to the test. The release selects and tolerates exactly that pool, so GPUs used
by other tests on the shared cluster change nothing here, and nothing else lands on the pool. Nodes and
namespaces are deleted afterwards.

Needs the cluster from ``tools/localcluster/cluster.sh up``; without one the tests fail, never skip.
Run: ``pytest tests/integration/test_vllm_release.py`` with the venv python.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from conftest import POOL_LABEL, helm_binary, pool_args
from kubernetes import client
from kubernetes.client.rest import ApiException

if TYPE_CHECKING:
    from conftest import Audit, PlaybookRun, PlaybookRunner


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"it-vllm-{uuid.uuid4().hex[:8]}"
    yield name  # the module creates it
    try:
        client.CoreV1Api(api).delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise


class Runner:
    """Runs one task (the module or the role) with ansible-playbook and returns (the run, registered result)."""

    def __init__(self, playbook: PlaybookRunner) -> None:
        self.playbook = playbook

    def _play(self, tasks: list[dict[str, Any]], save: str, extra: tuple[str, ...]) -> PlaybookRun:
        return self.playbook(tasks, name="vllm_release", save=save, extra_args=extra, env={"HELM_BINARY": helm_binary()})

    def module(self, args: dict[str, Any], *extra: str) -> tuple[PlaybookRun, dict[str, Any]]:
        proc = self._play([{"name": "Release", "kubeinfer.llm.vllm_release": args, "register": "r", "ignore_errors": True}], "r", extra)
        assert proc.saved is not None, proc.stdout[-4000:] + proc.stderr[-4000:]
        return proc, proc.saved

    def role(self, role_vars: dict[str, Any], *extra: str) -> tuple[PlaybookRun, dict[str, Any]]:
        tasks = [{"name": "Apply the role", "ansible.builtin.include_role": {"name": "kubeinfer.llm.vllm"}, "vars": role_vars}]
        # The role registers one loop result per model; the single-model variables make one.
        proc = self._play(tasks, "vllm_result.results[0]", extra)
        return proc, proc.saved if proc.saved is not None else {}


@pytest.fixture
def run(playbook: PlaybookRunner) -> Runner:
    return Runner(playbook)


def helm_history(kubeconfig: str, name: str, namespace: str) -> list[dict[str, Any]]:
    proc = subprocess.run([helm_binary(), "history", name, "--namespace", namespace, "--output", "json", "--kubeconfig", kubeconfig],
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        assert "not found" in proc.stderr, proc.stderr
        return []
    return json.loads(proc.stdout)


def ran_upgrade(result: dict[str, Any]) -> bool:
    """Whether helm_commands (full command lines) hold a helm upgrade."""
    return any(" upgrade --install " in c for c in result["helm_commands"])


def release_pods(api: client.ApiClient, namespace: str, name: str) -> list[client.V1Pod]:
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/instance={name}").items
    return [p for p in pods if p.metadata.deletion_timestamp is None]


def test_role_installs_a_sim_release_on_gpu_nodes_then_reruns_and_checks_without_writing(
        run: Runner, api: client.ApiClient, kubeconfig: str, pool: str, namespace: str) -> None:
    role_vars = {"vllm_release_name": "sim", "vllm_namespace": namespace, "vllm_model": "facebook/opt-125m", "vllm_engine": "sim",
                 "vllm_replicas": 2, "vllm_gpus_per_replica": 2, "vllm_node_selector": pool_args(pool)["node_selector"],
                 "vllm_tolerations": pool_args(pool)["tolerations"]}
    first, result = run.role(role_vars)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    assert result["changed"] and ran_upgrade(result)
    assert result["startup_budget_seconds"] == 91 and result["load_throughput_gib_s"] == 0.5  # ceil((60 + 0.233/0.5) * 1.5)
    assert result["sizing"]["gpu_memory_mib_source"].startswith("nvidia.com/gpu.memory label")
    assert result["validation"]["kube_version"].startswith("v1.36") and "Deployment/sim" in result["validation"]["validated"]
    assert result["endpoint"] == {"service": "sim", "namespace": namespace, "host": f"sim.{namespace}.svc.cluster.local",
                                  "port": 8000, "url": f"http://sim.{namespace}.svc.cluster.local:8000"}
    assert "pods on GPU nodes" in first.stdout

    deployment = client.AppsV1Api(api).read_namespaced_deployment("sim", namespace)
    container = deployment.spec.template.spec.containers[0]
    assert container.resources.requests["nvidia.com/gpu"] == container.resources.limits["nvidia.com/gpu"] == "2"
    assert deployment.status.ready_replicas == 2
    pool_nodes = {n.metadata.name for n in client.CoreV1Api(api).list_node(label_selector=f"{POOL_LABEL}={pool}").items}
    pods = release_pods(api, namespace, "sim")
    assert len(pods) == 2 and {p.spec.node_name for p in pods} <= pool_nodes
    assert result["placement"] == {p.metadata.name: p.spec.node_name for p in pods}
    assert helm_history(kubeconfig, "sim", namespace)[-1]["revision"] == 1
    version = deployment.metadata.resource_version

    second, again = run.role(role_vars)
    assert second.returncode == 0, second.stdout[-6000:]
    assert second.recap()["changed"] == 0
    assert not again["changed"] and not ran_upgrade(again)
    # Converged: the release and its manifests come from the Secret helm stores them in; nothing is rendered again.
    assert again["helm_commands"] == [] and "validation" not in again and again["endpoint"] == result["endpoint"]
    assert not set(again["api_requests"]) & {"apply", "patch", "create", "delete"}
    assert len(helm_history(kubeconfig, "sim", namespace)) == 1
    assert client.AppsV1Api(api).read_namespaced_deployment("sim", namespace).metadata.resource_version == version

    checked, diff = run.role(dict(role_vars, vllm_replicas=3), "--check", "--diff")
    assert checked.returncode == 0, checked.stdout[-6000:]
    assert diff["changed"] and diff["changed_values"] == ["replicaCount"] and not ran_upgrade(diff)
    assert diff["diff"]["before"]["replicaCount"] == 2 and diff["diff"]["after"]["replicaCount"] == 3
    assert len(helm_history(kubeconfig, "sim", namespace)) == 1
    assert client.AppsV1Api(api).read_namespaced_deployment("sim", namespace).spec.replicas == 2


def test_scheduler_places_four_replicas_of_four_gpus_and_reports_why_the_fifth_stays_pending(
        run: Runner, api: client.ApiClient, kubeconfig: str, pool: str, namespace: str) -> None:
    args = dict(name="packed", namespace=namespace, create_namespace=True, model="facebook/opt-125m", engine="sim",
                gpus_per_replica=4, **pool_args(pool))
    proc, four = run.module(dict(args, replicas=4))
    assert not four.get("failed"), four.get("msg") or proc.stdout[-4000:]
    assert four["capacity"]["replica_slots"] == 4 and four["capacity"]["fits"]
    assert sorted(Counter(four["placement"].values()).values()) == [2, 2], "two 4-GPU replicas on each 8-GPU node"

    # The preflight sees that a fifth replica does not fit and writes nothing.
    proc, refused = run.module(dict(args, replicas=5))
    assert refused["failed"] and "replicas: not enough GPU capacity: 5 replicas x 4 GPUs" in refused["msg"]
    assert "room for 4" in refused["msg"] and not ran_upgrade(refused)
    assert len(helm_history(kubeconfig, "packed", namespace)) == 1

    # Left to the scheduler, the fifth replica stays Pending; the wait fails with the scheduler's own reason,
    # and atomic rolls the release back to four replicas.
    proc, pending = run.module(dict(args, replicas=5, preflight_capacity=False, timeout=20, atomic=True))
    assert pending["failed"], proc.stdout[-4000:]
    assert "timed out after 20s waiting for Deployment" in pending["msg"]
    assert "the scheduler says: pod packed-" in pending["msg"] and "Insufficient nvidia.com/gpu" in pending["msg"]
    assert "Insufficient nvidia.com/gpu" in pending["unschedulable_reason"]
    assert list(pending["placement"].values()).count(None) == 1 and len(pending["placement"]) == 5
    assert pending["rolled_back"] == "rolled back to revision 1"
    history = helm_history(kubeconfig, "packed", namespace)
    assert [h["revision"] for h in history] == [1, 2, 3] and history[-1]["status"] == "deployed"
    assert client.AppsV1Api(api).read_namespaced_deployment("packed", namespace).spec.replicas == 4


def test_too_large_model_fails_in_preflight_with_numbers_and_installs_nothing(
        run: Runner, api: client.ApiClient, kubeconfig: str, pool: str, namespace: str) -> None:
    proc, result = run.module(dict(name="huge", namespace=namespace, create_namespace=True, model="meta-llama/Llama-3.1-405B-Instruct",
                                   engine="sim", gpus_per_replica=8, **pool_args(pool)))
    assert result["failed"], proc.stdout[-4000:]
    msg = result["msg"]
    assert msg.startswith("model: 'meta-llama/Llama-3.1-405B-Instruct' does not fit: 405B parameters in auto need") and "at tensor_parallel=8" in msg
    assert "GiB per GPU is usable (81920 MiB x gpu_memory_utilization 0.9)" in msg
    assert result["sizing"]["per_gpu_weights_gib"] > 80 and result["sizing"]["fits"] is False
    assert helm_history(kubeconfig, "huge", namespace) == []
    with pytest.raises(ApiException) as info:
        client.CoreV1Api(api).read_namespace(namespace)
    assert info.value.status == 404, "not even the namespace may be created"


def test_a_token_secret_that_does_not_exist_is_refused_before_any_write(
        run: Runner, api: client.ApiClient, kubeconfig: str, pool: str, namespace: str, audit: Audit) -> None:
    """kwok never resolves Secrets, so without this check the release would install and report changed; on a real
    cluster every pod would then wait in CreateContainerConfigError until the rollout timed out."""
    mark = audit.mark()
    args = dict(name="gated", namespace=namespace, create_namespace=True, model="facebook/opt-125m", engine="sim",
                hf_token_secret={"name": "no-such-token"}, **pool_args(pool))
    proc, result = run.module(args)
    assert result["failed"], proc.stdout[-4000:]
    assert result["msg"].startswith(f"hf_token_secret.name: Secret {namespace}/no-such-token does not exist")
    assert helm_history(kubeconfig, "gated", namespace) == []
    assert audit.writes(mark, "kubeinfer.llm") == [] and audit.writes(mark, "Helm") == []
    with pytest.raises(ApiException) as info:
        client.CoreV1Api(api).read_namespace(namespace)
    assert info.value.status == 404

    # Marked optional, the same release installs: the pod would start without the token.
    proc, result = run.module(dict(args, hf_token_secret={"name": "no-such-token", "optional": True}))
    assert not result.get("failed"), proc.stdout[-4000:]
    assert result["hf_token_secret"]["exists"] is False and result["changed"]
