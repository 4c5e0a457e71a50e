"""metrics_adapter with no adapter at the start: it installs the real prometheus-adapter chart, and refuses other installs.

The chart is the published prometheus-adapter 5.3.0 archive (``../shared/upstream``, found and checked by
``tools/localcluster/upstream-chart.sh prometheus-adapter``; without it the tests fail, never fall back). The real helm
installs it; the harness's sync loop (``tools/localcluster/metrics.py``) is the kubelet of the chart's Deployment: it runs
the real prometheus-adapter binary with the config of the ConfigMap the Deployment's pod template mounts, restarts it on
a pod-template change, and routes the chart's APIService to it once the chart's Service would reach the pod.

The module first removes the harness's own adapter, a release of the same chart marked by the release label
``app.kubernetes.io/managed-by=kubeinfer-localcluster`` (``metrics.sh adapter-remove``: helm uninstall, and its rules
ConfigMap), and restores it at the end (``metrics.sh up``). What stays imitated is the chart's pod: kwok simulates it
and the sync loop runs the adapter binary as a host process in its place.
Writes are read from the API server's audit log (user agents ``kubeinfer.llm`` and ``Helm/``).
Run: ``pytest tests/integration/test_adapter_install.py`` with the venv python, on a cluster from ``make cluster-up``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from conftest import TOOLS, Audit, helm_binary
from kubernetes import client
from test_autoscaling import (  # noqa: F401  # pylint: disable=unused-import
    # module fixtures shared with test_autoscaling (the simulator, Prometheus and a vllm release), used here by name
    QUEUE,
    RELEASE,
    prometheus_url,
    raw,
    release,
    sh,
    simulator,
)

if TYPE_CHECKING:
    from conftest import PlaybookRunner

NS = "monitoring"
ADAPTER = "prometheus-adapter"
RULES = "prometheus-adapter-rules"
HELM = helm_binary()
AGENTS = ("kubeinfer.llm", "Helm/")


@pytest.fixture(scope="module")
def chart() -> str:
    """The published chart archive; fails (never skips, never imitates) without it."""
    proc = subprocess.run([str(TOOLS / "upstream-chart.sh"), "prometheus-adapter"], capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        pytest.fail(proc.stderr.strip(), pytrace=False)
    return proc.stdout.strip()


def helm(kubeconfig: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh([HELM, *args, "--namespace", NS], env=dict(os.environ, KUBECONFIG=kubeconfig), timeout=300, check=check)


def helm_release(kubeconfig: str) -> dict[str, Any] | None:
    rows = json.loads(helm(kubeconfig, "list", "--all", "--filter", f"^{ADAPTER}$", "--output", "json").stdout or "[]")
    return rows[0] if rows else None


@pytest.fixture(scope="module")
def no_adapter(kubeconfig: str, prometheus_url: str) -> Iterator[None]:  # noqa: F811
    """A cluster with the metrics chain but no adapter; afterwards the module's release is gone and the harness's is back."""
    sh([str(TOOLS / "metrics.sh"), "adapter-remove"], timeout=120)
    try:
        yield
    finally:
        helm(kubeconfig, "uninstall", ADAPTER, "--wait", check=False)
        sh([str(TOOLS / "metrics.sh"), "up"], timeout=300)


@pytest.fixture(scope="module")
def chain(no_adapter: None, release: tuple[str, str]) -> tuple[str, str]:  # noqa: F811
    """The vllm release (pod serving the simulator's /metrics) on a cluster without an adapter."""
    return release


def install_task(ns: str, prometheus: str, chart: str, **over: Any) -> dict[str, Any]:
    args = {"release": RELEASE, "namespace": ns, "prometheus_url": prometheus, "chart_ref": chart, "verify_timeout": 180,
            "chart_values": {"metricsRelistInterval": "15s"}}
    args.update(over)
    return {"name": "Serve the queue depth", "kubeinfer.llm.metrics_adapter": args}


def served(kubeconfig: str, ns: str) -> dict[str, str]:
    try:
        listing = raw(kubeconfig, f"/apis/custom.metrics.k8s.io/v1beta1/namespaces/{ns}/pods/*/vllm_queue_depth")
    except AssertionError:
        return {}
    return {item["describedObject"]["name"]: item["value"] for item in listing.get("items") or []}


def wait_served(kubeconfig: str, ns: str, pod: str, timeout: float = 150) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        values = served(kubeconfig, ns)
        if values.get(pod) == str(QUEUE) or time.monotonic() > deadline:
            return values
        time.sleep(3)


def snapshot(api: client.ApiClient) -> dict[str, Any]:
    """The monitoring namespace's ConfigMaps (by resourceVersion) and Deployments (by generation: their status moves on).
    The APIService is left out: the harness routes it and the aggregator writes its status."""
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    out = {f"cm/{c.metadata.name}": c.metadata.resource_version for c in core.list_namespaced_config_map(NS).items}
    out.update({f"deploy/{d.metadata.name}": d.metadata.generation for d in apps.list_namespaced_deployment(NS).items})
    return out


def refused(playbook: PlaybookRunner, audit: Audit, api: client.ApiClient, task: dict[str, Any]) -> str:
    """Run ``task``; it must fail with no write by the collection or helm (audit log) and no object changed; return its msg."""
    before, mark = snapshot(api), audit.mark()
    task = dict(task, ignore_errors=True)
    run = playbook([task], results=True)
    result = run.results[0]
    assert result.get("failed"), run.output[-3000:]
    assert [w for agent in AGENTS for w in audit.writes(mark, agent)] == [], result["msg"]
    assert audit.requests(mark, "kubeinfer.llm"), "the audit log saw none of the module's reads: the check proves nothing"
    assert snapshot(api) == before
    assert not [c for c in result.get("helm_commands", []) if " upgrade " in c or " install " in c]
    return str(result["msg"])


def kube_prometheus_objects() -> list[dict[str, Any]]:
    """kube-prometheus's adapter as its manifests shape it (prometheus-operator/kube-prometheus
    manifests/prometheusAdapter-deployment.yaml and -configMap.yaml): names, labels, args, volume; no custom metrics."""
    labels = {"app.kubernetes.io/component": "metrics-adapter", "app.kubernetes.io/name": ADAPTER, "app.kubernetes.io/part-of": "kube-prometheus"}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "adapter-config", "namespace": NS, "labels": labels},
         "data": {"config.yaml": yaml.safe_dump({"resourceRules": {"window": "5m"}})}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": ADAPTER, "namespace": NS, "labels": labels},
         "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
             "nodeSelector": {"kubernetes.io/os": "linux"}, "serviceAccountName": ADAPTER,
             "containers": [{"name": ADAPTER, "image": "registry.k8s.io/prometheus-adapter/prometheus-adapter:v0.12.0",
                             "args": ["--cert-dir=/var/run/serving-cert", "--config=/etc/adapter/config.yaml", "--metrics-relist-interval=1m",
                                      "--prometheus-url=http://prometheus-k8s.monitoring.svc:9090/", "--secure-port=6443"],
                             "ports": [{"containerPort": 6443, "name": "https"}],
                             "volumeMounts": [{"mountPath": "/tmp", "name": "tmpfs"}, {"mountPath": "/etc/adapter", "name": "config"}]}],
             "volumes": [{"name": "tmpfs", "emptyDir": {}}, {"name": "config", "configMap": {"name": "adapter-config"}}]}}}},
    ]


# -- (iii) other installs are refused before any write ----------------------------------------------------------------

def test_other_installs_are_refused_before_any_write(playbook: PlaybookRunner, audit: Audit, api: client.ApiClient, kubeconfig: str,
                                                     chart: str, prometheus_url: str, chain: tuple[str, str]) -> None:  # noqa: F811
    ns = chain[0]
    task = install_task(ns, prometheus_url, chart)
    objects = kube_prometheus_objects()
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    core.create_namespaced_config_map(NS, objects[0])
    apps.create_namespaced_deployment(NS, objects[1])
    try:
        msg = refused(playbook, audit, api, task)
        assert "is kube-prometheus's" in msg and "reads ConfigMap adapter-config" in msg and "set adapter_release to another name" in msg, msg
    finally:
        apps.delete_namespaced_deployment(ADAPTER, NS)
        core.delete_namespaced_config_map("adapter-config", NS)

    # An adapter outside Helm and kube-prometheus, registered for no custom metrics API.
    plain = kube_prometheus_objects()[1]
    plain["metadata"]["labels"] = plain["spec"]["selector"]["matchLabels"] = plain["spec"]["template"]["metadata"]["labels"] = {"app": "adapter"}
    plain["spec"]["template"]["spec"]["volumes"][1]["configMap"]["name"] = "plain-adapter"
    apps.create_namespaced_deployment(NS, plain)
    try:
        msg = refused(playbook, audit, api, task)
        assert msg.startswith("no APIService v1beta1.custom.metrics.k8s.io: the adapter monitoring/prometheus-adapter is not registered"), msg
    finally:
        apps.delete_namespaced_deployment(ADAPTER, NS)

    # The chart installed by a user with rules.default=false (no APIService), then with its default rules (the chart's
    # own ConfigMap, which its next helm upgrade rewrites).
    for values, expected in ((["--set", "rules.default=false"], "installed with rules.default=false and no rules.custom"),
                             ([], "is rendered by Helm release monitoring/prometheus-adapter, so the next helm upgrade")):
        helm(kubeconfig, "install", ADAPTER, chart, "--set", f"prometheus.url={prometheus_url}", "--set", "prometheus.port=", *values, "--wait")
        try:
            msg = refused(playbook, audit, api, task)
            assert expected in msg and "set install=always" in msg, msg
        finally:
            helm(kubeconfig, "uninstall", ADAPTER, "--wait")


# -- (i) installed from the chart, (iv) a re-run writes nothing, (ii) a user's helm upgrade keeps the rule --------------

def test_absent_adapter_is_installed_from_the_chart(playbook: PlaybookRunner, audit: Audit, api: client.ApiClient, kubeconfig: str,
                                                    chart: str, prometheus_url: str, chain: tuple[str, str]) -> None:  # noqa: F811
    ns, pod = chain
    assert helm_release(kubeconfig) is None and served(kubeconfig, ns) == {}, "the test starts without an adapter"
    run = playbook([install_task(ns, prometheus_url, chart)], results=True)
    assert run.returncode == 0, run.output[-4000:]
    result = run.results[0]
    assert result["adapter"] == {"namespace": NS, "deployment": ADAPTER, "configmap": RULES, "config_key": "config.yaml", "managed": True,
                                 "exists": False}
    assert result["changes"] == ["release: (none) -> prometheus-adapter-5.3.0"]
    assert float(result["served"][pod]) == QUEUE

    row = helm_release(kubeconfig)
    assert row and row["chart"] == "prometheus-adapter-5.3.0" and row["status"] == "deployed"
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    cm = core.read_namespaced_config_map(RULES, NS)
    assert cm.metadata.labels["app.kubernetes.io/managed-by"] == "kubeinfer.llm"
    rules = yaml.safe_load(cm.data["config.yaml"])["rules"]
    assert [r["name"]["as"] for r in rules] == ["vllm_queue_depth"] and RELEASE in rules[0]["metricsQuery"]
    names = {c.metadata.name for c in core.list_namespaced_config_map(NS).items}
    assert ADAPTER not in names, "with rules.existing the chart renders no ConfigMap of its own"
    dep = apps.read_namespaced_deployment(ADAPTER, NS)
    assert dep.metadata.annotations["meta.helm.sh/release-name"] == ADAPTER
    assert {v.name: v.config_map.name for v in dep.spec.template.spec.volumes if v.config_map} == {"config": RULES}
    assert dep.spec.template.metadata.annotations["kubeinfer.io/config-checksum"] == result["checksum"]
    assert f"--prometheus-url={prometheus_url}" in dep.spec.template.spec.containers[0].args
    status = sh([str(TOOLS / "metrics.sh"), "status"], check=False).stdout
    assert f"adapter pod {NS}/{ADAPTER} (ConfigMap {RULES} key config.yaml)" in status, status
    apisvc = client.ApiregistrationV1Api(api).read_api_service("v1beta1.custom.metrics.k8s.io")
    assert apisvc.metadata.annotations["meta.helm.sh/release-name"] == ADAPTER, "the chart's own APIService serves the metric"
    assert served(kubeconfig, ns) == {pod: str(QUEUE)}

    # (iv) A re-run: no write by the module or helm, no helm upgrade.
    mark = audit.mark()
    run = playbook([install_task(ns, prometheus_url, chart)], results=True)
    assert run.returncode == 0, run.output[-4000:]
    again = run.results[0]
    assert again["changed"] is False and again["adapter"]["managed"] and again["adapter"]["exists"]
    assert [w for agent in AGENTS for w in audit.writes(mark, agent)] == []
    assert again["helm_commands"] == [], "the release is read from the Secret helm stores it in: no helm process"
    assert audit.requests(mark, "kubeinfer.llm")


def test_user_helm_upgrade_keeps_the_rule(playbook: PlaybookRunner, api: client.ApiClient, kubeconfig: str, chart: str,
                                          chain: tuple[str, str]) -> None:
    ns, pod = chain
    before = helm_release(kubeconfig)
    assert before is not None, "needs the release test_absent_adapter_is_installed_from_the_chart installed"
    helm(kubeconfig, "upgrade", ADAPTER, chart, "--reuse-values", "--set", "logLevel=6", "--wait")
    assert int(helm_release(kubeconfig)["revision"]) == int(before["revision"]) + 1  # type: ignore[index]
    dep = client.AppsV1Api(api).read_namespaced_deployment(ADAPTER, NS)
    assert "--v=6" in dep.spec.template.spec.containers[0].args, "the upgrade rolled the adapter (a new pod template)"
    rules = yaml.safe_load(client.CoreV1Api(api).read_namespaced_config_map(RULES, NS).data["config.yaml"])["rules"]
    assert [r["name"]["as"] for r in rules] == ["vllm_queue_depth"]
    # The restarted adapter (new pod template) read the collection's ConfigMap: the metric is still served.
    assert wait_served(kubeconfig, ns, pod) == {pod: str(QUEUE)}


def test_last_release_gone_uninstalls_the_adapter(playbook: PlaybookRunner, api: client.ApiClient, kubeconfig: str,
                                                  chain: tuple[str, str]) -> None:
    ns = chain[0]
    run = playbook([{"name": "Unregister", "kubeinfer.llm.metrics_adapter": {"release": RELEASE, "namespace": ns, "state": "absent"}}],
                   results=True)
    assert run.returncode == 0, run.output[-4000:]
    assert run.results[0]["adapter_uninstalled"] is True
    assert helm_release(kubeconfig) is None
    names = {c.metadata.name for c in client.CoreV1Api(api).list_namespaced_config_map(NS).items}
    assert RULES not in names
    with pytest.raises(client.ApiException) as info:
        client.ApiregistrationV1Api(api).read_api_service("v1beta1.custom.metrics.k8s.io")
    assert info.value.status == 404, "no APIService is left without an adapter behind it"
