"""The harness's own adapter (``tools/localcluster/metrics.py up``, ADAPTER=present) is the real prometheus-adapter chart.

``up`` installs the published chart archive (``upstream-chart.sh prometheus-adapter``) as Helm release
monitoring/prometheus-adapter, marked the harness's by the release label ``app.kubernetes.io/managed-by=kubeinfer-localcluster``
(on the release's storage Secret); the objects in the cluster are the chart's rendering, and only the pod is imitated
(kwok plays it, the sync loop runs the host adapter binary for it). A second ``up`` makes no helm write (audit log); an
``up`` after the chart's APIService was deleted (as ``down`` does) restores it through a helm upgrade.
Run: ``pytest tests/integration/test_harness_adapter.py`` with the venv python, on a cluster from ``make cluster-up``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from conftest import TOOLS, Audit, helm_binary
from kubernetes import client
from test_autoscaling import sh

NS = "monitoring"
NAME = "prometheus-adapter"
APISERVICE = "v1beta1.custom.metrics.k8s.io"
RELEASE_LABEL = "app.kubernetes.io/managed-by=kubeinfer-localcluster"


def up() -> str:
    proc = sh([str(TOOLS / "metrics.sh"), "up"], timeout=300, check=False)
    if proc.returncode != 0:
        pytest.fail(f"metrics.sh up failed: {proc.stderr[-3000:]}", pytrace=False)
    return proc.stderr


def helm_rows(kubeconfig: str, *selector: str) -> list[dict[str, Any]]:
    proc = sh([helm_binary(), "list", "-n", NS, "--all", "-o", "json", *selector], env=dict(os.environ, KUBECONFIG=kubeconfig))
    return json.loads(proc.stdout or "[]")


@pytest.fixture(scope="module")
def harness(kubeconfig: str) -> dict[str, Any]:
    """The chain with the harness's adapter; the harness's release row."""
    up()
    rows = helm_rows(kubeconfig, "--selector", RELEASE_LABEL)
    assert [r["name"] for r in rows] == [NAME], f"no harness-labelled release {NS}/{NAME}: {rows}"
    return rows[0]


def test_the_harness_adapter_is_the_chart_release(api: client.ApiClient, harness: dict[str, Any]) -> None:
    assert harness["chart"] == "prometheus-adapter-5.3.0" and harness["status"] == "deployed"
    apps, reg = client.AppsV1Api(api), client.ApiregistrationV1Api(api)
    dep = apps.read_namespaced_deployment(NAME, NS)
    assert dep.metadata.annotations["meta.helm.sh/release-name"] == NAME
    assert dep.metadata.labels["helm.sh/chart"] == "prometheus-adapter-5.3.0"
    spec = dep.spec.template.spec
    args = spec.containers[0].args
    prometheus = sh([str(TOOLS / "metrics.sh"), "prometheus-url"]).stdout.strip()
    for arg in (f"--prometheus-url={prometheus}", "--metrics-relist-interval=15s", "--metrics-max-age=1m", "--config=/etc/adapter/config.yaml"):
        assert arg in args, args
    assert spec.node_selector == {"node-role.kubernetes.io/cpu-worker": ""}
    assert {v.name: v.config_map.name for v in spec.volumes if v.config_map} == {"config": NAME}
    pods = client.CoreV1Api(api).list_namespaced_pod(NS, label_selector=f"app.kubernetes.io/instance={NAME}").items
    assert len(pods) == 1 and pods[0].spec.node_name.startswith("kwok-cpu-"), [(p.metadata.name, p.spec.node_name) for p in pods]
    apisvc = reg.read_api_service(APISERVICE)
    assert apisvc.metadata.annotations["meta.helm.sh/release-name"] == NAME, "the APIService is the chart's"
    assert apisvc.spec.service.name == "kubeinfer-localcluster-adapter", "routed to the host adapter by the sync loop"
    assert any(c.type == "Available" and c.status == "True" for c in apisvc.status.conditions)
    names = [a.metadata.name for a in reg.list_api_service().items if a.spec.group == "custom.metrics.k8s.io"]
    assert names == [APISERVICE], f"the chart renders only {APISERVICE}: {names}"
    status = sh([str(TOOLS / "metrics.sh"), "status"], check=False).stdout
    assert f"adapter pod {NS}/{NAME} (ConfigMap {NAME} key config.yaml)" in status, status


def test_second_up_makes_no_helm_upgrade(kubeconfig: str, audit: Audit, harness: dict[str, Any]) -> None:
    before = helm_rows(kubeconfig, "--selector", RELEASE_LABEL)[0]
    mark = audit.mark()
    log = up()
    assert "is up to date; no helm upgrade" in log, log[-2000:]
    assert audit.writes(mark, "Helm/") == []
    assert audit.requests(mark, "Helm/"), "the audit log saw none of helm's reads: the check proves nothing"
    assert helm_rows(kubeconfig, "--selector", RELEASE_LABEL)[0]["revision"] == before["revision"]


def test_up_restores_a_deleted_apiservice(kubeconfig: str, api: client.ApiClient, audit: Audit, harness: dict[str, Any]) -> None:
    reg = client.ApiregistrationV1Api(api)
    before = helm_rows(kubeconfig, "--selector", RELEASE_LABEL)[0]
    reg.delete_api_service(APISERVICE)  # as metrics.sh down does
    mark = audit.mark()
    log = up()
    assert "(APIService missing)" in log, log[-2000:]
    assert f"create apiservices /{APISERVICE}" in audit.writes(mark, "Helm/")
    assert int(helm_rows(kubeconfig, "--selector", RELEASE_LABEL)[0]["revision"]) == int(before["revision"]) + 1
    deadline = time.monotonic() + 60
    while not any(c.type == "Available" and c.status == "True" for c in reg.read_api_service(APISERVICE).status.conditions or []):
        assert time.monotonic() < deadline, "the restored APIService did not become Available"
        time.sleep(1)
