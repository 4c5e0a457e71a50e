"""tools/localcluster/gpu_sim.py as the collection sees it: bare nodes, and the node probe contract.

These tests need gpu_sim.py running for the cluster (``make cluster-up`` starts it) and do not install
the GPU Operator; the operator, NFD and device-plugin rules are exercised by the GPU Operator tests.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from kubernetes import client

REPO = Path(__file__).resolve().parents[2]
GPU_SIM = REPO / "tools" / "localcluster" / "gpu_sim.py"


@pytest.fixture(scope="module")
def gpu_sim(cluster_name: str) -> ModuleType:
    """gpu_sim.py imported for this cluster; fails when its loop is not running."""
    env = dict(os.environ, KUBEINFER_CLUSTER=cluster_name)
    proc = subprocess.run([sys.executable, str(GPU_SIM), "status"], capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        pytest.fail(f"gpu_sim.py is not running for {cluster_name!r}: {proc.stdout.strip()}\n"
                    f"Start it: KUBEINFER_CLUSTER={cluster_name} {GPU_SIM} start", pytrace=False)
    os.environ["KUBEINFER_CLUSTER"] = cluster_name
    if str(GPU_SIM.parent) not in sys.path:
        sys.path.insert(0, str(GPU_SIM.parent))  # gpu_sim.py imports kubeapi.py next to it, as its script run does
    spec = importlib.util.spec_from_file_location("gpu_sim", GPU_SIM)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected_message(hw: dict[str, Any]) -> str:
    drv = hw.get("host_driver")
    pci = ",".join(d["class"] for d in hw.get("pci") or [] if d.get("vendor") == "10de")
    return f"nvidia-pci={pci}\nnvidia-smi={'/usr/bin/nvidia-smi' if drv else 'none'}\ndriver={drv or 'none'}"


def probe(core: client.CoreV1Api, node: str, timeout: float = 20) -> client.V1Pod:
    name = f"gpu-probe-{uuid.uuid4().hex[:8]}"
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "gpu-node-probe",
                                                  "app.kubernetes.io/managed-by": "kubeinfer.llm"}},
            "spec": {"nodeName": node, "restartPolicy": "Never", "containers": [{"name": "probe", "image": "busybox"}]}}
    core.create_namespaced_pod("default", body)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pod = core.read_namespaced_pod(name, "default")
            if pod.status.phase in ("Succeeded", "Failed"):
                return pod
            time.sleep(0.3)
        pytest.fail(f"probe pod on {node} still {pod.status.phase} after {timeout}s")
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_probe_reports_each_nodes_hardware(core: client.CoreV1Api, gpu_sim: ModuleType) -> None:
    hardware = gpu_sim.load_hw()
    assert hardware, f"no simulated hardware in {gpu_sim.HARDWARE}"
    for node, hw in sorted(hardware.items()):
        pod = probe(core, node)
        term = pod.status.container_statuses[0].state.terminated
        assert pod.status.phase == "Succeeded" and term.exit_code == 0
        assert term.message == expected_message(hw), node


def test_hardware_swap_reaches_the_probe(core: client.CoreV1Api, gpu_sim: ModuleType, cluster_name: str) -> None:
    hardware = gpu_sim.load_hw()
    node = next((n for n, hw in sorted(hardware.items()) if hw.get("gpus")), None)
    if node is None:
        pytest.fail("the cluster has no simulated GPU node")
    before = hardware[node].get("host_driver")
    env = dict(os.environ, KUBEINFER_CLUSTER=cluster_name)
    try:
        subprocess.run([sys.executable, str(GPU_SIM), "hardware", node, "--host-driver", "535.161.08"], env=env, check=True,
                       capture_output=True)
        term = probe(core, node).status.container_statuses[0].state.terminated
        assert term.message.splitlines()[1:] == ["nvidia-smi=/usr/bin/nvidia-smi", "driver=535.161.08"]
    finally:
        subprocess.run([sys.executable, str(GPU_SIM), "hardware", node, "--host-driver", before or "none"], env=env, check=True,
                       capture_output=True)
