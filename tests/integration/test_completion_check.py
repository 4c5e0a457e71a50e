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

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "tools" / "localcluster" / "cluster.sh"
SIM_RUNNER = REPO / "tools" / "localcluster" / "sim.py"
BIN = Path(sys.executable).parent
MODEL = "kubeinfer/tiny-sim"
RELEASE = "cc-sim"


@pytest.fixture(scope="module")
def kubeconfig() -> str:
    proc = subprocess.run([str(CLUSTER_SH), "kubeconfig"], capture_output=True, text=True, timeout=60, check=False)
    path = proc.stdout.strip()
    if proc.returncode != 0 or not Path(path).is_file():
        pytest.fail(f"no local cluster ({proc.stderr.strip()}); run tools/localcluster/cluster.sh up", pytrace=False)
    return path


@pytest.fixture(scope="module")
def api(kubeconfig: str) -> client.ApiClient:
    return config.new_client_from_config(config_file=kubeconfig)


@pytest.fixture(scope="module")
def collections_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An ansible_collections tree whose kubeinfer.llm is this checkout, whatever else is installed."""
    base = tmp_path_factory.mktemp("collections")
    (base / "ansible_collections" / "kubeinfer").mkdir(parents=True)
    (base / "ansible_collections" / "kubeinfer" / "llm").symlink_to(REPO)
    return str(base)


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


def run_playbook(tmp_path: Path, kubeconfig: str, collections_path: str, tasks: list[dict[str, Any]],
                 check: bool = False) -> tuple[int, list[dict[str, Any]], str]:
    """Run the tasks in a local play; return the rc, every task result (json callback) and the raw output."""
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps([{"hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": tasks}]))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_path, K8S_AUTH_KUBECONFIG=kubeconfig,
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable, ANSIBLE_NOCOLOR="1")
    argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", str(playbook)]
    if check:
        argv.append("--check")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, check=False)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"ansible-playbook printed no JSON (rc {proc.returncode}): {proc.stdout[-3000:]} {proc.stderr[-3000:]}") from None
    results = [task["hosts"]["localhost"] for play in doc["plays"] for task in play["tasks"]]
    return proc.returncode, results, proc.stdout + proc.stderr


def test_completion_through_the_port_forward_api(tmp_path: Path, kubeconfig: str, collections_path: str,
                                                 release: tuple[str, str], simulator: int) -> None:
    ns, pod = release
    rc, results, out = run_playbook(tmp_path, kubeconfig, collections_path, [{
        "name": "Check the release",
        "kubeinfer.llm.completion_check": {
            "namespace": ns, "label_selector": f"app.kubernetes.io/instance={RELEASE}",
            "model": MODEL, "prompt": "Hello, my name is", "max_tokens": 8, "timeout": 30,
        },
    }], check=True)
    assert rc == 0, out[-3000:]
    result = results[0]
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


def test_chat_api_and_direct_base_url(tmp_path: Path, kubeconfig: str, collections_path: str,
                                      release: tuple[str, str], simulator: int) -> None:
    ns, pod = release
    rc, results, out = run_playbook(tmp_path, kubeconfig, collections_path, [
        {"name": "Chat through the port-forward to the named pod",
         "kubeinfer.llm.completion_check": {"namespace": ns, "pod": pod, "api": "chat", "max_tokens": 4}},
        {"name": "Completion straight to the simulator",
         "kubeinfer.llm.completion_check": {"base_url": f"http://127.0.0.1:{simulator}/v1", "model": MODEL, "max_tokens": 4}},
    ])
    assert rc == 0, out[-3000:]
    chat, direct = results
    assert chat["model"] == MODEL  # no model given: the one served
    assert chat["response"]["choices"][0]["message"]["role"] == "assistant"
    assert direct["via"] == f"http://127.0.0.1:{simulator}/v1"
    assert direct["usage"]["completion_tokens"] > 0


def test_model_mismatch_fails_with_the_served_models(
        tmp_path: Path, kubeconfig: str, collections_path: str, release: tuple[str, str]) -> None:
    ns = release[0]
    rc, results, out = run_playbook(tmp_path, kubeconfig, collections_path, [{
        "name": "Ask for a model the release does not serve",
        "kubeinfer.llm.completion_check": {"namespace": ns, "label_selector": f"app.kubernetes.io/instance={RELEASE}",
                                           "model": "meta-llama/Llama-3.1-8B-Instruct"},
    }])
    assert rc != 0
    result = results[0]
    assert result["failed"] is True
    assert result["msg"] == f'model mismatch: expected meta-llama/Llama-3.1-8B-Instruct, served ["{MODEL}"]', out[-2000:]
    assert result["models"] == [MODEL]
    assert "response" not in result


def test_no_ready_pod_and_unforwarded_port_fail_clearly(tmp_path: Path, kubeconfig: str, collections_path: str,
                                                        release: tuple[str, str]) -> None:
    ns, pod = release
    results = run_playbook(tmp_path, kubeconfig, collections_path, [
        {"name": "No pod of this release", "ignore_errors": True,
         "kubeinfer.llm.completion_check": {"namespace": ns, "label_selector": "app.kubernetes.io/instance=absent"}},
        {"name": "A port kwok does not forward", "ignore_errors": True,
         "kubeinfer.llm.completion_check": {"namespace": ns, "pod": pod, "port": 9000, "timeout": 10}},
    ])[1]
    none, unforwarded = results
    assert none["msg"] == f"no Ready pod to forward to: a Ready pod in {ns} matching app.kubernetes.io/instance=absent: no pod matches"
    assert unforwarded["msg"].startswith("GET /health failed:")
    assert "port-forward error:" in unforwarded["msg"] and "9000" in unforwarded["msg"]
    assert unforwarded["via"] == f"port-forward pod/{ns}/{pod}:9000"


def test_validate_role_prints_the_completion(
        tmp_path: Path, kubeconfig: str, collections_path: str, release: tuple[str, str]) -> None:
    ns = release[0]
    rc, results, out = run_playbook(tmp_path, kubeconfig, collections_path, [{
        "name": "Run the validate role",
        "ansible.builtin.include_role": {"name": "kubeinfer.llm.validate"},
        "vars": {"validate_namespace": ns, "validate_release": RELEASE, "validate_model": MODEL,
                 "validate_max_tokens": 6, "validate_ready_timeout": 30},
    }])
    assert rc == 0, out[-3000:]
    printed = [r for r in results if "__validate_result.response" in r]
    assert len(printed) == 1
    response = printed[0]["__validate_result.response"]
    assert response["choices"] and response["usage"]["completion_tokens"] > 0
