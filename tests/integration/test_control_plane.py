"""Proof that the local control plane is real, and that kwok's simulation works.

Runs against the cluster started by ``tools/localcluster/cluster.sh up``; the
kubeconfig comes from ``cluster.sh kubeconfig`` (the ``kubeconfig``, ``api`` and ``core``
fixtures of conftest.py). When no cluster is up the tests fail (they never skip): a
missing cluster is a broken test setup.

Run: ``pytest tests/integration/test_control_plane.py`` with the venv python.
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hostproc import kubectl, pinned  # tools/localcluster, on sys.path through conftest.py
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SH = REPO / "tools" / "localcluster" / "cluster.sh"
SIM_NODE_LABEL = "kubeinfer.io/sim-node"
IMAGE = "registry.k8s.io/pause:3.10"
T = TypeVar("T")


def _cluster_sh(*args: str) -> str:
    proc = subprocess.run([str(CLUSTER_SH), *args], capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"`{CLUSTER_SH.name} {' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()}\n"
            "Start the local cluster first: tools/localcluster/cluster.sh up (or make cluster-up).",
            pytrace=False,
        )
    return proc.stdout.strip()


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.25) -> T:
    """Poll probe until it returns something truthy; fail with what was last seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"it-control-plane-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={"kubeinfer.io/test": "integration"})))
    # The controller manager's serviceaccount controller must create "default"
    # before the ServiceAccount admission plugin lets pods in.
    wait_for(f"default ServiceAccount in {name}", lambda: _exists(lambda: core.read_namespaced_service_account("default", name)))
    yield name
    core.delete_namespace(name)


def _exists(read: Callable[[], Any]) -> bool:
    try:
        read()
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def _pod(name: str, *, gpus: int = 0, labels: dict[str, str] | None = None, container: str = "main", restart: str = "Always") -> client.V1Pod:
    resources = client.V1ResourceRequirements(limits={"nvidia.com/gpu": str(gpus)}) if gpus else None
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {}),
        spec=client.V1PodSpec(
            restart_policy=restart,
            containers=[client.V1Container(name=container, image=IMAGE, resources=resources)],
        ),
    )


def _sim_nodes(core: client.CoreV1Api) -> set[str]:
    return {n.metadata.name for n in core.list_node(label_selector=f"{SIM_NODE_LABEL}=true").items}


# --- The control plane is real ------------------------------------------------


def test_server_version_is_the_pinned_build(api: client.ApiClient) -> None:
    info = client.VersionApi(api).get_code()
    assert info.git_version == pinned("KUBERNETES_VERSION")


def test_pod_ips_are_in_this_clusters_own_slot_of_loopback(core: client.CoreV1Api, kubeconfig: str) -> None:
    """Every cluster on the host has its own /12 of 127.0.0.0/8 (cluster.sh pod_slot): no two clusters hand out one pod IP."""
    cluster = Path(kubeconfig).parent
    rows = [line.split() for line in Path("/tmp/kubeinfer-pod-network-slots").read_text().splitlines() if line.strip()]
    slots = {where: int(slot) for where, slot in rows}
    assert len(set(slots.values())) == len(slots), f"two clusters share a slot: {slots}"
    mine = ipaddress.ip_network(f"127.{16 * slots[str(cluster)]}.0.0/12")
    nodes = core.list_node(label_selector="kubeinfer.io/sim-node=true").items
    assert nodes and all(ipaddress.ip_network(n.spec.pod_cidr).subnet_of(mine) for n in nodes), [(n.metadata.name, n.spec.pod_cidr) for n in nodes]
    pods = [p for p in core.list_pod_for_all_namespaces().items if p.status.pod_ip and not p.spec.host_network]
    assert all(ipaddress.ip_address(p.status.pod_ip) in mine for p in pods), [(p.metadata.name, p.status.pod_ip) for p in pods]


def test_gpu_nodes_advertise_gpus_once_the_gpu_stack_runs(core: client.CoreV1Api, gpu_stack: None) -> None:
    """With the real GPU Operator chart installed, the simulated operator, GFD and device plugin label the GPU nodes
    and make their GPUs allocatable (tools/localcluster/gpu_sim.py); the GFD count matches what the plugin advertises."""
    gpu_nodes = core.list_node(label_selector="nvidia.com/gpu.present=true").items
    assert gpu_nodes, "no simulated GPU nodes"
    for node in gpu_nodes:
        labels = node.metadata.labels
        assert int(node.status.allocatable["nvidia.com/gpu"]) == int(labels["nvidia.com/gpu.count"]) > 0
        assert labels["nvidia.com/gpu.product"] and int(labels["nvidia.com/gpu.memory"]) > 0
        assert labels["kubernetes.io/hostname"] == node.metadata.name
        ready = [c.status for c in node.status.conditions if c.type == "Ready"]
        assert ready == ["True"]


def test_scheduler_refuses_more_gpus_than_a_node_has(core: client.CoreV1Api, namespace: str, gpu_stack: None) -> None:
    per_node = max(int(n.status.allocatable.get("nvidia.com/gpu", "0")) for n in core.list_node().items)
    core.create_namespaced_pod(namespace, _pod("too-many-gpus", gpus=per_node + 1))

    def unschedulable() -> str | None:
        pod = core.read_namespaced_pod("too-many-gpus", namespace)
        for cond in pod.status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
                return cond.message
        return None

    message = wait_for("the scheduler to mark the pod Unschedulable", unschedulable)
    assert "Insufficient nvidia.com/gpu" in message
    time.sleep(2)
    pod = core.read_namespaced_pod("too-many-gpus", namespace)
    assert pod.status.phase == "Pending"
    assert not pod.spec.node_name


def test_controller_manager_runs_a_deployment_on_simulated_nodes(api: client.ApiClient, core: client.CoreV1Api, namespace: str) -> None:
    apps = client.AppsV1Api(api)
    labels = {"app": "it-deploy"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="it-deploy"),
        spec=client.V1DeploymentSpec(
            replicas=3,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="main", image=IMAGE)]),
            ),
        ),
    )
    apps.create_namespaced_deployment(namespace, deployment)

    def running(count: int) -> Callable[[], list[client.V1Pod] | None]:
        def probe() -> list[client.V1Pod] | None:
            pods = [p for p in core.list_namespaced_pod(namespace, label_selector="app=it-deploy").items if not p.metadata.deletion_timestamp]
            ok = [p for p in pods if p.status.phase == "Running" and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
            return ok if len(ok) == count == len(pods) else None

        return probe

    pods = wait_for("3 Running and Ready pods", running(3))
    assert {p.spec.node_name for p in pods} <= _sim_nodes(core)
    # The pods were made by a ReplicaSet that the controller manager created.
    assert {ref.kind for p in pods for ref in p.metadata.owner_references} == {"ReplicaSet"}
    wait_for("deployment availableReplicas == 3", lambda: apps.read_namespaced_deployment_status("it-deploy", namespace).status.available_replicas == 3)

    apps.patch_namespaced_deployment_scale("it-deploy", namespace, {"spec": {"replicas": 1}})
    wait_for("scale down to 1 pod", running(1))


def test_server_side_apply_reports_field_manager_conflict(api: client.ApiClient, core: client.CoreV1Api, namespace: str) -> None:
    configmaps = DynamicClient(api).resources.get(api_version="v1", kind="ConfigMap")

    def apply(manager: str, value: str) -> None:
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "it-ssa", "namespace": namespace}, "data": {"owner": value}}
        configmaps.server_side_apply(body=body, field_manager=manager)

    apply("first-manager", "one")
    with pytest.raises(ConflictError) as raised:
        apply("second-manager", "two")
    assert raised.value.status == 409
    body = raised.value.body.decode() if isinstance(raised.value.body, bytes) else str(raised.value.body)
    assert "first-manager" in body and "conflict" in body.lower()
    assert core.read_namespaced_config_map("it-ssa", namespace).data == {"owner": "one"}


# --- kwok's simulation contract ----------------------------------------------


def _phase(core: client.CoreV1Api, name: str, namespace: str) -> str:
    return core.read_namespaced_pod(name, namespace).status.phase


def test_labelled_pod_succeeds_and_shows_nvidia_smi_logs(core: client.CoreV1Api, namespace: str, gpu_stack: None) -> None:
    pod = _pod("smi", gpus=1, labels={"kubeinfer.io/sim-complete": "true"}, container="nvidia-smi", restart="Never")
    core.create_namespaced_pod(namespace, pod)
    wait_for("pod Succeeded", lambda: _phase(core, "smi", namespace) == "Succeeded")
    status = core.read_namespaced_pod("smi", namespace).status.container_statuses[0]
    assert status.state.terminated.exit_code == 0
    logs = core.read_namespaced_pod_log("smi", namespace, container="nvidia-smi")
    assert "NVIDIA A100-SXM4-80GB, 550.127.05" in logs  # fixtures/nvidia-smi.txt, the test pod's CSV query answer


def test_unlabelled_pod_keeps_running(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_pod(namespace, _pod("stays", restart="Never"))
    wait_for("pod Running", lambda: _phase(core, "stays", namespace) == "Running")
    time.sleep(2)
    assert _phase(core, "stays", namespace) == "Running"


def test_job_completes(api: client.ApiClient, namespace: str) -> None:
    batch = client.BatchV1Api(api)
    job = client.V1Job(
        metadata=client.V1ObjectMeta(name="it-job"),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(spec=client.V1PodSpec(restart_policy="Never", containers=[client.V1Container(name="main", image=IMAGE)])),
        ),
    )
    batch.create_namespaced_job(namespace, job)
    wait_for("job succeeded", lambda: (batch.read_namespaced_job_status("it-job", namespace).status.succeeded or 0) == 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_port_forward_reaches_a_host_process(core: client.CoreV1Api, namespace: str, kubeconfig: str) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"hello from the host\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    local = _free_port()
    proc: subprocess.Popen[str] | None = None
    try:
        core.create_namespaced_pod(namespace, _pod("web"))
        wait_for("pod Running", lambda: _phase(core, "web", namespace) == "Running")
        _cluster_sh("forward", namespace, "web", str(server.server_address[1]), "8000")
        proc = subprocess.Popen(
            [str(kubectl()), "--kubeconfig", kubeconfig, "-n", namespace, "port-forward", "--address", "127.0.0.1", "pod/web", f"{local}:8000"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

        def fetch() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=3) as resp:
                    return resp.read().decode()
            except OSError:
                return None

        assert wait_for("an answer through port-forward", fetch, timeout=20) == "hello from the host\n"
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        server.shutdown()
        server.server_close()


def test_kwok_serves_per_pod_vllm_metrics(core: client.CoreV1Api, namespace: str) -> None:
    pod = _pod("vllm-0")
    pod.metadata.annotations = {"kubeinfer.io/sim-queue": "7", "kubeinfer.io/sim-model": "facebook/opt-125m"}
    core.create_namespaced_pod(namespace, pod)
    wait_for("pod Running", lambda: _phase(core, "vllm-0", namespace) == "Running")
    node = core.read_namespaced_pod("vllm-0", namespace).spec.node_name
    url = f"{_cluster_sh('kwok-url')}/metrics/nodes/{node}/metrics/vllm"
    want = f'vllm:num_requests_waiting{{model_name="facebook/opt-125m",namespace="{namespace}",pod="vllm-0"}} 7'

    def scrape() -> str | None:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        return text if want in text else None

    wait_for(f"{want} at {url}", scrape, timeout=20, interval=1)
    core.patch_namespaced_pod("vllm-0", namespace, {"metadata": {"annotations": {"kubeinfer.io/sim-queue": "2"}}})
    want = want[: -len(" 7")] + " 2"
    wait_for(f"{want} after the annotation changed", scrape, timeout=20, interval=1)
