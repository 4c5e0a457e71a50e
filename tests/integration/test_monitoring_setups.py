"""The two ways clusters scrape vLLM, each end to end: the release label reaches the series, the adapter rule and the
KEDA query find them.

(a) prometheus-operator, as kube-prometheus-stack runs it: the real operator v0.93.0 turns the chart's PodMonitor into
    scrape config, and Prometheus 3 (built from source, real Kubernetes service discovery) runs it. The chart lists
    kubeinfer.io/release in podTargetLabels; a PodMonitor that does not (the chart before the fix) is installed next
    to it as the control, and its series must lack the label: the fault this test exists for.
(b) annotation scraping, as the community ``prometheus`` chart's ``kubernetes-pods`` job does it (labelmap of every pod
    label).

Pods are scraped at their own IPs, loopback addresses from the nodes' podCIDRs, answered by the simulator
(tools/localcluster/podnet.py). Needs the cluster and the binaries; the module switches the setup with
``MONITORING=... metrics.sh up`` and leaves setup (a) in force.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import helm_binary
from kubernetes import client

from ansible_collections.kubeinfer.llm.plugins.module_utils._hpa import keda_query

if TYPE_CHECKING:
    from conftest import PlaybookRunner

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools" / "localcluster"
HELM = helm_binary()
MODEL = "kubeinfer/tiny-sim"
RELEASE = "msim"
FULLNAME = "msim-vllm"
QUEUE = 4
SETTLE = 90  # s: operator reconcile + Prometheus reload + 15 s scrape interval, with room for a loaded machine


def sh(argv: list[str], timeout: float = 120, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return proc


def metrics_up(setup: str) -> str:
    proc = sh([str(TOOLS / "metrics.sh"), "up"], timeout=300, check=False, env=dict(os.environ, MONITORING=setup))
    assert proc.returncode == 0, f"metrics.sh up ({setup}) failed: {proc.stderr[-2000:]}"
    return sh([str(TOOLS / "metrics.sh"), "prometheus-url"]).stdout.strip()


def query(prom: str, promql: str) -> list[dict[str, Any]]:
    url = f"{prom}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return list(json.load(resp)["data"]["result"])


def targets(prom: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{prom}/api/v1/targets?state=active", timeout=10) as resp:
        return list(json.load(resp)["data"]["activeTargets"])


def wait_series(prom: str, promql: str, want: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + SETTLE
    while True:
        found = query(prom, promql)
        if len(found) >= want or time.monotonic() > deadline:
            return found
        time.sleep(2)


@pytest.fixture(scope="module")
def release(api: client.ApiClient, kubeconfig: str, gpu_stack: None,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The vllm chart (engine sim, its PodMonitor on) plus a control PodMonitor without podTargetLabels."""
    core = client.CoreV1Api(api)
    name = f"it-monitoring-{uuid.uuid4().hex[:6]}"
    runner = [sys.executable, str(TOOLS / "sim.py")]
    port = int(sh(runner + ["start", name, "--model", MODEL, "--fake-metrics",
                            json.dumps({"waiting-requests": QUEUE, "running-requests": 1})]).stdout.strip())
    ns = name
    core.create_namespace({"metadata": {"name": ns}})
    values = tmp_path_factory.mktemp("values") / "values.json"
    values.write_text(json.dumps({
        "engine": "sim", "model": {"name": MODEL}, "replicaCount": 1, "gpusPerReplica": 1,
        "podAnnotations": {"kubeinfer.io/sim-metrics-port": str(port)},
        "metrics": {"podMonitor": {"enabled": True}},
    }))
    control = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
               "metadata": {"name": "control-without-pod-target-labels", "namespace": ns},
               "spec": {"selector": {"matchLabels": {"app.kubernetes.io/instance": RELEASE}},
                        "podMetricsEndpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}]}}
    env = dict(os.environ, KUBECONFIG=kubeconfig)
    try:
        metrics_up("operator")  # the CRDs must exist before the chart's PodMonitor
        sh([str(HELM), "install", RELEASE, str(REPO / "charts" / "vllm"), "--namespace", ns, "--values", str(values),
            "--wait", "--timeout", "90s"], env=env, timeout=150)
        client.CustomObjectsApi(api).create_namespaced_custom_object("monitoring.coreos.com", "v1", ns, "podmonitors", control)
        pods = core.list_namespaced_pod(ns, label_selector=f"app.kubernetes.io/instance={RELEASE}").items
        assert len(pods) == 1 and pods[0].status.pod_ip, [(p.metadata.name, p.status.pod_ip) for p in pods]
        yield ns, pods[0].metadata.name
    finally:
        core.delete_namespace(ns)
        sh(runner + ["stop", name], timeout=60)
        metrics_up("operator")


def test_pods_get_loopback_ips_from_their_nodes_pod_cidr(core: client.CoreV1Api, release: tuple[str, str]) -> None:
    ns, pod_name = release
    pod = core.read_namespaced_pod(pod_name, ns)
    node = core.read_node(pod.spec.node_name)
    cidr = node.spec.pod_cidr
    assert cidr and cidr.startswith("127."), f"node {node.metadata.name} podCIDR {cidr!r}"
    assert pod.status.pod_ip.rsplit(".", 1)[0] == cidr.rsplit(".", 1)[0], (pod.status.pod_ip, cidr)
    # The pod answers at its own IP (the relay to its simulator), on the chart's container port.
    with urllib.request.urlopen(f"http://{pod.status.pod_ip}:8000/metrics", timeout=10) as resp:
        assert b"vllm:num_requests_waiting" in resp.read()


def test_operator_setup_carries_the_release_label_only_through_pod_target_labels(release: tuple[str, str]) -> None:
    ns, pod = release
    prom = metrics_up("operator")
    series = wait_series(prom, f'vllm:num_requests_waiting{{namespace="{ns}"}}', want=2)
    by_job = {s["metric"]["job"]: s["metric"] for s in series}
    chart, bare = by_job.get(f"{ns}/{FULLNAME}"), by_job.get(f"{ns}/control-without-pod-target-labels")
    assert chart and bare, f"want a series from each PodMonitor, got {series}; targets {targets(prom)}"
    assert chart["kubeinfer_io_release"] == RELEASE and chart["kubeinfer_io_model"] and chart["pod"] == pod
    assert "kubeinfer_io_release" not in bare, "without podTargetLabels the operator must not copy the pod label"
    # Scraped through the operator's config (scrape pool podMonitor/<ns>/<name>/<endpoint>) at the pod's own IP.
    pools = {t["scrapePool"]: t for t in targets(prom) if t["labels"].get("namespace") == ns}
    chart_target = pools[f"podMonitor/{ns}/{FULLNAME}/0"]
    assert chart_target["health"] == "up" and chart_target["labels"]["instance"].startswith("127."), chart_target

    q = keda_query("vllm:num_requests_waiting", ns, RELEASE)
    assert [float(r["value"][1]) for r in query(prom, q)] == [QUEUE], f"KEDA's query {q}"


def test_annotation_setup_carries_the_release_label_by_labelmap(playbook: PlaybookRunner, release: tuple[str, str]) -> None:
    ns, pod = release
    prom = metrics_up("annotations")
    series = wait_series(prom, f'vllm:num_requests_waiting{{namespace="{ns}",job="kubernetes-pods"}}', want=1)
    assert [s["metric"].get("kubeinfer_io_release") for s in series] == [RELEASE], series
    assert not [t for t in targets(prom) if t["scrapePool"].startswith("podMonitor/")], "the operator's jobs are gone"
    q = keda_query("vllm:num_requests_waiting", ns, RELEASE)
    assert [float(r["value"][1]) for r in query(prom, q)] == [QUEUE], f"KEDA's query {q}"

    # The adapter rule serves it in this setup too.
    task = {"name": "Serve the queue depth", "kubeinfer.llm.metrics_adapter": {
        "release": RELEASE, "namespace": ns, "prometheus_url": prom, "verify_timeout": 150, "grafana_dashboard": False}}
    run = playbook([task], results=True)
    try:
        assert run.returncode == 0, run.output[-4000:]
        assert float(run.results[0]["served"][pod]) == QUEUE
    finally:
        playbook([{"name": "Unregister", "kubeinfer.llm.metrics_adapter": {
            "release": RELEASE, "namespace": ns, "state": "absent", "grafana_dashboard": False}}])


def test_harness_scrapes_nothing_outside_loopback(release: tuple[str, str]) -> None:
    prom = metrics_up("operator")
    wait_series(prom, f'up{{namespace="{release[0]}"}}', want=1)
    for t in targets(prom):
        host = urllib.parse.urlsplit(t["scrapeUrl"]).hostname or ""
        assert host.startswith("127.") or host == "localhost", t["scrapeUrl"]

