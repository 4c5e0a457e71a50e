"""completion_check against the local control plane and the real llm-d-inference-sim.

The simulator runs as a host process, reachable only on 127.0.0.1 (it has no bind-address flag, so
the shared runner tools/localcluster/sim.py keeps it in a private network namespace behind a
loopback relay). A pod in a kwok cluster stands for a vLLM replica, and a kwok ``PortForward`` (the contract of
``tools/localcluster/cluster.sh forward``) points its port 8000 at the simulator. The module is run
with ``ansible-playbook``, so each request travels
Ansible -> kube-apiserver (pods/portforward websocket) -> kwok -> 127.0.0.1 relay -> simulator.

Needs the cluster from ``tools/localcluster/cluster.sh up`` and the simulator built by
``tools/localcluster/build.sh``; without them the tests fail, never skip.
Run: ``pytest tests/integration/test_completion_check.py`` with the venv python.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

if TYPE_CHECKING:
    from conftest import PlaybookRunner

REPO = Path(__file__).resolve().parents[2]
SIM_RUNNER = REPO / "tools" / "localcluster" / "sim.py"
MODEL = "kubeinfer/tiny-sim"
RELEASE = "cc-sim"


@pytest.fixture(scope="module")
def simulator() -> Iterator[int]:
    """llm-d-inference-sim on 127.0.0.1:<port returned>, run by the shared runner tools/localcluster/sim.py.

    The simulator listens on every IPv4 address and has no bind flag, so the runner keeps it in a
    private network namespace behind a relay on 127.0.0.1. It is stopped by its PID afterwards.
    """
    name = "it-completion-check"
    proc = subprocess.run([sys.executable, str(SIM_RUNNER), "start", name, "--model", MODEL, "--mode", "random"],
                          capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        pytest.fail(f"the simulator did not start: {proc.stderr[-2000:]}", pytrace=False)
    try:
        yield int(proc.stdout.strip())
    finally:
        subprocess.run([sys.executable, str(SIM_RUNNER), "stop", name], capture_output=True, timeout=60, check=True)


@pytest.fixture(scope="module")
def release(api: client.ApiClient, simulator: int) -> Iterator[tuple[str, str]]:
    """A namespace with one Ready pod of release RELEASE whose port 8000 kwok forwards to the simulator."""
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    ns = f"it-completion-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": ns}})
    try:
        name = f"{RELEASE}-vllm-0"
        core.create_namespaced_pod(ns, {
            "metadata": {"name": name, "labels": {"app.kubernetes.io/instance": RELEASE, "app.kubernetes.io/name": "vllm"}},
            "spec": {
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": "vllm", "image": "registry.k8s.io/pause:3.10",
                                "ports": [{"name": "http", "containerPort": 8000}]}],
            },
        })
        custom.create_namespaced_custom_object("kwok.x-k8s.io", "v1alpha1", ns, "portforwards", {
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "PortForward",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"forwards": [{"ports": [8000], "target": {"address": "127.0.0.1", "port": simulator}}]},
        })
        deadline = time.monotonic() + 60
        while True:
            pod = core.read_namespaced_pod(name, ns)
            conds = {c.type: c.status for c in (pod.status.conditions or [])}
            if pod.status.phase == "Running" and conds.get("Ready") == "True":
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"pod {ns}/{name} not Ready after 60s: phase {pod.status.phase}, {conds}")
            time.sleep(0.5)
        yield ns, name
    finally:
        try:
            core.delete_namespace(ns)
        except ApiException as e:
            if e.status != 404:
                raise


def test_completion_through_the_port_forward_api(playbook: PlaybookRunner,
                                                 release: tuple[str, str], simulator: int) -> None:
    ns, pod = release
    run = playbook([{
        "name": "Check the release",
        "kubeinfer.llm.completion_check": {
            "namespace": ns, "label_selector": f"app.kubernetes.io/instance={RELEASE}",
            "model": MODEL, "prompt": "Hello, my name is", "max_tokens": 8, "timeout": 30,
        },
    }], results=True, check=True)
    assert run.returncode == 0, run.output[-3000:]
    result = run.results[0]
    assert result["changed"] is False
    assert result["via"] == f"port-forward pod/{ns}/{pod}:8000"
    assert result["pod"] == pod
    assert result["model"] == MODEL and MODEL in result["models"]
    response = result["response"]
    assert response["choices"] and isinstance(response["choices"][0]["text"], str)
    assert response["model"] == MODEL
    usage = result["usage"]
    assert usage == {k: response["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert result["latency_ms"] > 0 and result["health_latency_ms"] > 0


def test_chat_api_and_direct_base_url(playbook: PlaybookRunner,
                                      release: tuple[str, str], simulator: int) -> None:
    ns, pod = release
    run = playbook([
        {"name": "Chat through the port-forward to the named pod",
         "kubeinfer.llm.completion_check": {"namespace": ns, "pod": pod, "api": "chat", "max_tokens": 4}},
        {"name": "Completion straight to the simulator",
         "kubeinfer.llm.completion_check": {"base_url": f"http://127.0.0.1:{simulator}/v1", "model": MODEL, "max_tokens": 4}},
    ], results=True)
    assert run.returncode == 0, run.output[-3000:]
    chat, direct = run.results
    assert chat["model"] == MODEL  # no model given: the one served
    assert chat["response"]["choices"][0]["message"]["role"] == "assistant"
    assert direct["via"] == f"http://127.0.0.1:{simulator}/v1"
    assert direct["usage"]["completion_tokens"] > 0


def test_model_mismatch_fails_with_the_served_models(
        playbook: PlaybookRunner, release: tuple[str, str]) -> None:
    ns = release[0]
    run = playbook([{
        "name": "Ask for a model the release does not serve",
        "kubeinfer.llm.completion_check": {"namespace": ns, "label_selector": f"app.kubernetes.io/instance={RELEASE}",
                                           "model": "meta-llama/Llama-3.1-8B-Instruct"},
    }], results=True)
    assert run.returncode != 0
    result = run.results[0]
    assert result["failed"] is True
    assert result["msg"] == f'model mismatch: expected meta-llama/Llama-3.1-8B-Instruct, served ["{MODEL}"]', run.output[-2000:]
    assert result["models"] == [MODEL]
    assert "response" not in result


def test_no_ready_pod_and_unforwarded_port_fail_clearly(playbook: PlaybookRunner,
                                                        release: tuple[str, str]) -> None:
    ns, pod = release
    results = playbook([
        {"name": "No pod of this release", "ignore_errors": True,
         "kubeinfer.llm.completion_check": {"namespace": ns, "label_selector": "app.kubernetes.io/instance=absent"}},
        {"name": "A port kwok does not forward", "ignore_errors": True,
         "kubeinfer.llm.completion_check": {"namespace": ns, "pod": pod, "port": 9000, "timeout": 10}},
    ], results=True).results
    none, unforwarded = results
    assert none["msg"] == f"no Ready pod to forward to: a Ready pod in {ns} matching app.kubernetes.io/instance=absent: no pod matches"
    assert unforwarded["msg"].startswith("GET /health failed:")
    assert "port-forward error:" in unforwarded["msg"] and "9000" in unforwarded["msg"]
    assert unforwarded["via"] == f"port-forward pod/{ns}/{pod}:9000"


def test_validate_role_prints_the_completion(
        playbook: PlaybookRunner, release: tuple[str, str]) -> None:
    ns = release[0]
    run = playbook([{
        "name": "Run the validate role",
        "ansible.builtin.include_role": {"name": "kubeinfer.llm.validate"},
        "vars": {"validate_namespace": ns, "validate_release": RELEASE, "validate_model": MODEL,
                 "validate_max_tokens": 6, "validate_ready_timeout": 30},
    }], results=True)
    assert run.returncode == 0, run.output[-3000:]
    # One debug item per release checked (validate_targets, here the one of validate_release).
    printed = [item for r in run.results for item in r.get("results", []) if "__validate_item.response" in item]
    assert len(printed) == 1
    response = printed[0]["__validate_item.response"]
    assert response["choices"] and response["usage"]["completion_tokens"] > 0
