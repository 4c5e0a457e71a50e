"""completion_check against the local control plane and the real llm-d-inference-sim.

The simulator runs as a host process, reachable only on 127.0.0.1 (it has no bind-address flag, so
it runs in a private network namespace behind a loopback relay; see NETNS_CHILD). A pod in a kwok
cluster stands for a vLLM replica, and a kwok ``PortForward`` (the contract of
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
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "tools" / "localcluster" / "cluster.sh"
VERSIONS_ENV = REPO / "tools" / "localcluster" / "versions.env"
BIN = Path(sys.executable).parent
MODEL = "kubeinfer/tiny-sim"
RELEASE = "cc-sim"


def pinned(name: str) -> str:
    for line in VERSIONS_ENV.read_text().splitlines():
        if line.startswith(name + "="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"{name} not pinned in {VERSIONS_ENV}")


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


# llm-d-inference-sim v0.10.2 has no bind-address flag: it listens on every IPv4 address
# (net.Listen("tcp4", ":<port>") in pkg/communication/http.go). To keep everything on loopback it
# runs in a private network namespace (unshare --net) whose only interface is its own loopback.
# Inside, a relay joins that loopback to a Unix socket; outside, a relay on 127.0.0.1 joins the
# Unix socket, and kwok forwards the pod's port to that 127.0.0.1 port.
NETNS_CHILD = r"""
import ctypes, os, signal, socket, subprocess, sys, threading, time
sock_path, port, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
# PR_SET_PDEATHSIG: the simulator dies with this relay, even if the relay is killed.
sim = subprocess.Popen(argv, preexec_fn=lambda: ctypes.CDLL(None).prctl(1, signal.SIGKILL))
signal.signal(signal.SIGTERM, lambda *_: (sim.terminate(), sim.wait(10), os._exit(0)))

def pipe(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

def serve(conn):
    for _ in range(50):
        try:
            up = socket.create_connection(("127.0.0.1", port))
            break
        except OSError:
            time.sleep(0.1)
    else:
        conn.close()
        return
    threading.Thread(target=pipe, args=(conn, up), daemon=True).start()
    pipe(up, conn)

server = socket.socket(socket.AF_UNIX)
server.bind(sock_path)
server.listen(16)
threading.Thread(target=lambda: (sim.wait(), os._exit(3)), daemon=True).start()
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def loopback_relay(sock_path: str) -> tuple[int, socket.socket]:
    """Listen on 127.0.0.1:<free port> and join each connection to the Unix socket."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def serve(conn: socket.socket) -> None:
        try:
            inner = socket.socket(socket.AF_UNIX)
            inner.connect(sock_path)
        except OSError:
            conn.close()
            return
        threading.Thread(target=pipe, args=(conn, inner), daemon=True).start()
        pipe(inner, conn)
        inner.close()
        conn.close()

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return int(server.getsockname()[1]), server


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """llm-d-inference-sim reachable on 127.0.0.1:<port returned>; stopped by its PID afterwards."""
    cache = Path(os.environ.get("KUBEINFER_CACHE", Path.home() / ".cache" / "kubeinfer"))
    default = cache / f"inference-sim-{pinned('INFERENCE_SIM_VERSION')}" / "llm-d-inference-sim"
    binary = Path(os.environ.get("INFERENCE_SIM_BINARY", default))
    if not binary.is_file():
        pytest.fail(f"{binary} is missing; build it with tools/localcluster/build.sh", pytrace=False)
    work = tmp_path_factory.mktemp("sim")
    sock_path = str(work / "sim.sock")
    log = work / "sim.log"
    inner_port = 8000  # the namespace is private, so the port is free
    argv = ["unshare", "--net", "--", sys.executable, "-c", NETNS_CHILD, sock_path, str(inner_port),
            str(binary), "--port", str(inner_port), "--model", MODEL, "--force-dummy-tokenizer", "--mode", "random"]
    with open(log, "wb") as out:
        # unshare execs the child, so proc.pid is the relay that owns the simulator; it stops it on SIGTERM.
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    port, relay = loopback_relay(sock_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the simulator exited with {proc.returncode}: {log.read_text()[-2000:]}", pytrace=False)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the simulator did not answer /health within 60s: {log.read_text()[-2000:]}", pytrace=False)
            time.sleep(0.3)
        yield port
    finally:
        relay.close()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


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


def test_model_mismatch_fails_with_the_served_models(tmp_path: Path, kubeconfig: str, collections_path: str,
                                                    release: tuple[str, str]) -> None:
    ns, _ = release
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
    rc, results, _ = run_playbook(tmp_path, kubeconfig, collections_path, [
        {"name": "No pod of this release", "ignore_errors": True,
         "kubeinfer.llm.completion_check": {"namespace": ns, "label_selector": "app.kubernetes.io/instance=absent"}},
        {"name": "A port kwok does not forward", "ignore_errors": True,
         "kubeinfer.llm.completion_check": {"namespace": ns, "pod": pod, "port": 9000, "timeout": 10}},
    ])
    none, unforwarded = results
    assert none["msg"] == f"no Ready pod to forward to: a Ready pod in {ns} matching app.kubernetes.io/instance=absent: no pod matches"
    assert unforwarded["msg"].startswith("GET /health failed:")
    assert "port-forward error:" in unforwarded["msg"] and "9000" in unforwarded["msg"]
    assert unforwarded["via"] == f"port-forward pod/{ns}/{pod}:9000"


def test_validate_role_prints_the_completion(tmp_path: Path, kubeconfig: str, collections_path: str,
                                            release: tuple[str, str]) -> None:
    ns, _ = release
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
