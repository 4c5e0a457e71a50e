# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where metrics_adapter puts the rules: the ConfigMap the adapter mounts, the installs it refuses before any write,
and the prometheus-adapter chart release it installs and keeps (a fake API server and a fake helm)."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ansible_collections.kubeinfer.llm.plugins.module_utils import _adapter, _adapter_install
from ansible_collections.kubeinfer.llm.plugins.module_utils._adapter_install import (
    chart_fullname,
    chart_values,
    config_source,
    prometheus_values,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._adapter_rules import adapter_rule
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube
from ansible_collections.kubeinfer.llm.plugins.modules import metrics_adapter

from .fake_cluster import FakeCluster, metric_list
from .helm_records import keep_in
from .spec_params import spec_params
from .test_adapter import adapter_deployment

NS = "monitoring"
DEP = f"/apis/apps/v1/namespaces/{NS}/deployments/prometheus-adapter"
RULES_CM = f"/api/v1/namespaces/{NS}/configmaps/prometheus-adapter-rules"
CHART_CM = f"/api/v1/namespaces/{NS}/configmaps/prometheus-adapter"
APISERVICE = "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.custom.metrics.k8s.io"
METRIC = "/apis/custom.metrics.k8s.io/v1beta1/namespaces/llm/pods/*/vllm_queue_depth"
HELM_OWNED = {"meta.helm.sh/release-name": "prometheus-adapter", "meta.helm.sh/release-namespace": NS}
REPO = Path(__file__).resolve().parents[4]
# The chart archive the tests and make demo install (../shared/upstream, unmodified, sha256 checked); never an imitation.
_FOUND = subprocess.run([str(REPO / "tools" / "localcluster" / "upstream-chart.sh"), "prometheus-adapter"], capture_output=True, text=True,
                        check=False)
CHART = Path(_FOUND.stdout.strip() or "/nonexistent/prometheus-adapter-5.3.0.tgz")
_HELM_VERSION = re.search(r"^HELM_VERSION=(\S+)", (REPO / "tools" / "localcluster" / "versions.env").read_text(), re.M)
_CACHE = Path(os.environ.get("KUBEINFER_CACHE", str(Path.home() / ".cache" / "kubeinfer")))
HELM = (os.environ.get("HELM_BIN") or os.environ.get("HELM_BINARY")
        or str(_CACHE / f"helm-{_HELM_VERSION.group(1) if _HELM_VERSION else 'missing'}" / "helm"))


class FakeAdapterHelm:
    """helm upgrade --install / uninstall for one release, kept in the Secret helm stores it in; an install renders what
    the chart would: the Deployment (mounting rules.existing, or the chart's own ConfigMap) and the APIService, both Helm-owned."""

    def __init__(self, cluster: FakeCluster, values: dict[str, Any] | None = None, chart: str = "prometheus-adapter-5.3.0") -> None:
        self.cluster = cluster
        self.release: dict[str, Any] | None = None
        self.values: dict[str, Any] = {}
        self.argvs: list[list[str]] = []
        self.events: list[str] = []
        if values is not None:
            self._deploy(values, chart, 1)

    def __call__(self, argv: list[str], environ_update: dict[str, str] | None = None) -> tuple[int, str, str]:
        self.argvs.append(argv)
        verb = argv[1]
        if verb == "upgrade":
            with open(argv[argv.index("--values") + 1]) as f:
                values = json.load(f)
            self.events.append("helm upgrade")
            self._deploy(values, "prometheus-adapter-5.3.0", int((self.release or {"revision": "0"})["revision"]) + 1)
            return 0, "", ""
        if verb == "uninstall":
            self.release, self.values = None, {}
            keep_in(self.cluster, None, None, NS)
            for path in (DEP, APISERVICE):
                self.cluster.objects.pop(path, None)
            return 0, "", ""
        return 1, "", f"unexpected helm call {argv}"

    def _deploy(self, values: dict[str, Any], chart: str, revision: int) -> None:
        self.values = values
        self.release = {"name": "prometheus-adapter", "namespace": NS, "revision": str(revision), "status": "deployed",
                        "chart": chart, "app_version": "v0.12.0"}
        keep_in(self.cluster, self.release, values, NS)
        rules = values.get("rules") or {}
        dep = adapter_deployment(configmap=rules.get("existing") or "prometheus-adapter", labels={"app.kubernetes.io/managed-by": "Helm"},
                                 annotations=dict(HELM_OWNED))
        dep["spec"]["template"]["metadata"]["annotations"] = dict(values.get("podAnnotations") or {})
        self.cluster.add(dep)
        if rules.get("default", True) or rules.get("custom"):
            self.cluster.add({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                              "metadata": {"name": "v1beta1.custom.metrics.k8s.io", "annotations": dict(HELM_OWNED)},
                              "spec": {"service": {"name": "prometheus-adapter", "namespace": NS}},
                              "status": {"conditions": [{"type": "Available", "status": "True"}]}})
        if not rules.get("existing"):
            meta = {"name": "prometheus-adapter", "namespace": NS, "annotations": dict(HELM_OWNED)}
            self.cluster.add({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"config.yaml": "rules: []\n"}})


def fresh_cluster(namespace: bool = True) -> FakeCluster:
    cluster = FakeCluster()
    if namespace:
        cluster.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    cluster.answers[("GET", METRIC)] = lambda query: metric_list({})
    return cluster


def params(**over: Any) -> dict[str, Any]:
    base = {"release": "llama", "namespace": "llm", "metric_name": "vllm:num_requests_waiting", "verify": False,
            "chart_ref": str(CHART), "adapter_prometheus_url": "http://prometheus.monitoring.svc:9090", "grafana_dashboard": False}
    return spec_params(metrics_adapter, **{**base, **over})


def run(cluster: FakeCluster, helm: FakeAdapterHelm, check_mode: bool = False, **over: Any) -> dict[str, Any]:
    return _adapter.run(Kube(cluster), Helm(helm, "helm", {}), params(**over), check_mode, True)


def rules_of(cluster: FakeCluster, path: str = RULES_CM) -> list[dict[str, Any]]:
    return list(yaml.safe_load(cluster.objects[path]["data"]["config.yaml"])["rules"])


def upgrades(helm: FakeAdapterHelm) -> list[list[str]]:
    return [a for a in helm.argvs if a[1] == "upgrade"]


@pytest.fixture(autouse=True)
def chart_archive() -> None:
    if not CHART.is_file():
        pytest.fail(f"no prometheus-adapter chart: {_FOUND.stderr.strip()}", pytrace=False)


# -- pure pieces ----------------------------------------------------------------------------------------------------

def test_fullname_follows_the_chart_helper() -> None:
    assert chart_fullname("prometheus-adapter", {}) == "prometheus-adapter"
    assert chart_fullname("kubeinfer-prometheus-adapter", {}) == "kubeinfer-prometheus-adapter"
    assert chart_fullname("custom", {}) == "custom-prometheus-adapter"
    assert chart_fullname("custom", {"fullnameOverride": "pa-"}) == "pa"
    assert chart_fullname("custom", {"nameOverride": "cust"}) == "custom"


def test_config_source_reads_the_mounted_configmap() -> None:
    assert config_source(adapter_deployment(configmap="adapter-config")) == ("adapter-config", "config.yaml", "/etc/adapter/config.yaml")
    dep = adapter_deployment()
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["args"] = ["--config", "/etc/adapter/rules.yaml"]
    dep["spec"]["template"]["spec"]["volumes"][0]["configMap"]["items"] = [{"key": "adapter.yaml", "path": "rules.yaml"}]
    assert config_source(dep) == ("prometheus-adapter", "adapter.yaml", "/etc/adapter/rules.yaml")
    container["volumeMounts"] = [{"name": "config", "mountPath": "/etc/adapter/rules.yaml", "subPath": "rules.yaml"}]
    assert config_source(dep)[:2] == ("prometheus-adapter", "adapter.yaml")
    container["args"] = []
    with pytest.raises(KubeInferError, match="passes no --config"):
        config_source(dep)
    container["args"] = ["--config=/elsewhere/config.yaml"]
    with pytest.raises(KubeInferError, match="on no mounted volume"):
        config_source(dep)


def test_prometheus_values_split_the_url_as_the_chart_joins_it() -> None:
    assert prometheus_values("http://prometheus.monitoring.svc:9090") == {"url": "http://prometheus.monitoring.svc", "port": 9090, "path": ""}
    assert prometheus_values("https://thanos.example.com/prom/") == {"url": "https://thanos.example.com", "port": "", "path": "/prom"}
    with pytest.raises(KubeInferError, match="adapter_prometheus_url: must not carry credentials"):
        prometheus_values("http://user:pw@prometheus:9090")
    with pytest.raises(KubeInferError, match="adapter_prometheus_url: 'prometheus:9090' is not"):
        prometheus_values("prometheus:9090")


def test_chart_values_keep_the_rules_in_the_collection_configmap() -> None:
    values = chart_values("r", "http://p:9090", "abc", {"logLevel": 2, "rules": {"custom": []}})
    assert values == {"rules": {"default": True, "existing": "r", "custom": []}, "prometheus": {"url": "http://p", "port": 9090, "path": ""},
                      "podAnnotations": {"kubeinfer.io/config-checksum": "abc"}, "logLevel": 2}
    with pytest.raises(KubeInferError, match="chart_values: rules.existing='other' is not allowed.*set adapter_configmap"):
        chart_values("r", "http://p:9090", None, {"rules": {"existing": "other"}})
    with pytest.raises(KubeInferError, match="chart_values: rules.default=false without rules.custom"):
        chart_values("r", "http://p:9090", None, {"rules": {"default": False}})
    with pytest.raises(KubeInferError, match="^adapter_prometheus_url: the adapter needs the URL"):
        chart_values("r", None, None, {})
    assert chart_values("r", None, None, {"prometheus": {"url": "http://p"}})["prometheus"] == {"url": "http://p"}


def render(values: dict[str, Any], tmp_path: Path) -> dict[str, dict[str, Any]]:
    """The published chart rendered by the real helm, as ``{kind/name: object}``."""
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    done = subprocess.run([HELM, "template", "prometheus-adapter", str(CHART), "--namespace", NS, "--values", str(values_file)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(done.stdout) if d}


def test_the_real_chart_renders_the_computed_values(tmp_path: Path) -> None:
    rendered = render(chart_values("prometheus-adapter-rules", "http://prometheus.monitoring.svc:9090", "f" * 64, {}), tmp_path)
    assert "ConfigMap/prometheus-adapter" not in rendered, "rules.existing: the chart renders no ConfigMap that a helm upgrade would rewrite"
    dep = rendered["Deployment/prometheus-adapter"]
    assert config_source(dep) == ("prometheus-adapter-rules", "config.yaml", "/etc/adapter/config.yaml"), "what the module reads back"
    assert chart_fullname("prometheus-adapter", {}) == dep["metadata"]["name"]
    pod = dep["spec"]["template"]
    assert pod["metadata"]["annotations"]["kubeinfer.io/config-checksum"] == "f" * 64
    assert "--prometheus-url=http://prometheus.monitoring.svc:9090" in pod["spec"]["containers"][0]["args"]
    apiservice = rendered["APIService/v1beta1.custom.metrics.k8s.io"]
    assert apiservice["spec"]["service"] == {"name": "prometheus-adapter", "namespace": NS}
    svc = rendered["Service/prometheus-adapter"]["spec"]
    assert svc["ports"][0]["targetPort"] == "https" and pod["spec"]["containers"][0]["ports"][0]["name"] == "https"
    # The fact the refusal rests on: rules.default=false without custom rules renders no custom metrics APIService.
    bare = render({"rules": {"default": False, "existing": "mine"}}, tmp_path)
    assert "APIService/v1beta1.custom.metrics.k8s.io" not in bare


# -- install --------------------------------------------------------------------------------------------------------

def test_absent_adapter_is_installed_with_the_rules_in_a_collection_configmap() -> None:
    cluster = fresh_cluster()
    helm = FakeAdapterHelm(cluster)
    order = helm.events
    cluster.on_request.append(lambda method, path: order.append(f"{method} {path}") if method != "GET" else None)
    result = run(cluster, helm)
    assert order.index(f"POST /api/v1/namespaces/{NS}/configmaps") < order.index("helm upgrade"), \
        "the rules ConfigMap exists before the chart's Deployment mounts it"
    assert result["changed"] and result["adapter"]["managed"] and result["adapter"]["configmap"] == "prometheus-adapter-rules"
    cm = cluster.objects[RULES_CM]
    assert cm["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kubeinfer.llm"}
    assert rules_of(cluster) == [adapter_rule("vllm:num_requests_waiting", "vllm_queue_depth", ["llama"])]
    (argv,) = upgrades(helm)
    assert argv[2:5] == ["--install", "prometheus-adapter", str(CHART)] and argv[argv.index("--namespace") + 1] == NS
    assert "--wait" in argv and "--version" not in argv, "a local archive carries its own version"
    assert helm.values["rules"] == {"default": True, "existing": "prometheus-adapter-rules"}
    assert helm.values["prometheus"] == {"url": "http://prometheus.monitoring.svc", "port": 9090, "path": ""}
    assert helm.values["podAnnotations"] == {"kubeinfer.io/config-checksum": result["checksum"]}
    assert result["adapter_release"]["installed"] and result["adapter_release"]["chart"] == "prometheus-adapter-5.3.0"
    assert result["changes"] == ["release: (none) -> prometheus-adapter-5.3.0"] and result["restarted"] is False
    assert not any(DEP in line for line in order), "the release's Deployment is rolled through its values, never patched"


def test_rerun_of_an_installed_adapter_writes_nothing_and_runs_no_upgrade() -> None:
    cluster = fresh_cluster()
    helm = FakeAdapterHelm(cluster)
    run(cluster, helm)
    writes = len(cluster.writes())
    again = run(cluster, helm)
    assert not again["changed"] and len(cluster.writes()) == writes and len(upgrades(helm)) == 1
    assert again["adapter"]["managed"], "auto recognises the release it installed (rules.existing names a ConfigMap it owns)"
    assert again["helm_commands"] == [], "the release is read from the Secret helm stores it in"


def test_second_release_rolls_the_adapter_through_its_release() -> None:
    cluster = fresh_cluster()
    helm = FakeAdapterHelm(cluster)
    first = run(cluster, helm)
    result = run(cluster, helm, release="mistral")
    assert result["releases"] == ["llama", "mistral"] and result["restarted"]
    assert result["changed_values"] == ["podAnnotations.kubeinfer.io/config-checksum"]
    assert helm.values["podAnnotations"]["kubeinfer.io/config-checksum"] == result["checksum"] != first["checksum"]


def test_user_upgrade_that_keeps_rules_existing_keeps_the_rule() -> None:
    cluster = fresh_cluster()
    helm = FakeAdapterHelm(cluster)
    run(cluster, helm)
    helm._deploy(dict(helm.values, logLevel=6), "prometheus-adapter-5.3.0", 2)  # helm upgrade --reuse-values --set logLevel=6
    assert rules_of(cluster)[0]["name"]["as"] == "vllm_queue_depth", "the chart renders no ConfigMap over the collection's"
    assert CHART_CM not in cluster.objects


def test_check_mode_on_a_fresh_cluster_reports_the_install_and_sends_no_write() -> None:
    cluster = fresh_cluster(namespace=False)
    helm = FakeAdapterHelm(cluster)
    result = run(cluster, helm, check_mode=True, metric_name=None, verify=True, grafana_dashboard=True)
    assert result["changed"] and result["release_would_change"] and result["namespace_created"]
    assert result["metric_source"] == "candidates (check mode: the release has no pod yet)"
    assert result["changes"] == ["release: (none) -> prometheus-adapter-5.3.0"]
    assert cluster.writes() == [] and upgrades(helm) == []
    assert result["diff"]["after"]["rules"][0]["name"]["as"] == "vllm_queue_depth"


def test_check_mode_with_the_namespace_sends_only_dry_runs() -> None:
    cluster = fresh_cluster()
    helm = FakeAdapterHelm(cluster)
    result = run(cluster, helm, check_mode=True)
    assert result["release_would_change"] and upgrades(helm) == []
    assert cluster.writes() and all(c["query"].get("dryRun") == "All" for c in cluster.writes())
    assert RULES_CM not in cluster.objects


def test_missing_prometheus_url_is_refused_before_any_write() -> None:
    cluster = fresh_cluster()
    helm = FakeAdapterHelm(cluster)
    with pytest.raises(KubeInferError, match="^adapter_prometheus_url: the adapter needs"):
        run(cluster, helm, adapter_prometheus_url=None)
    assert cluster.writes() == [] and upgrades(helm) == []


def test_last_release_gone_uninstalls_the_adapter_it_installed() -> None:
    cluster = fresh_cluster()
    helm = FakeAdapterHelm(cluster)
    run(cluster, helm)
    result = run(cluster, helm, state="absent")
    assert result["adapter_uninstalled"] and helm.release is None and RULES_CM not in cluster.objects
    assert not result["adapter_release"]["installed"]
    assert not run(cluster, helm, state="absent")["changed"], "nothing left to remove"


def test_always_takes_over_a_release_whose_rules_live_in_the_chart_configmap() -> None:
    cluster = fresh_cluster()
    helm = FakeAdapterHelm(cluster, values={"prometheus": {"url": "http://prom"}})
    with pytest.raises(KubeInferError, match="rendered by Helm release monitoring/prometheus-adapter, so the next helm upgrade of that "
                                             "release rewrites it and drops the rule; set install=always"):
        run(cluster, helm)
    assert cluster.writes() == [] and upgrades(helm) == []
    result = run(cluster, helm, install="always")
    assert result["adapter"]["configmap"] == "prometheus-adapter-rules" and helm.values["rules"]["existing"] == "prometheus-adapter-rules"
    assert result["changes"][0].startswith("values.")


# -- other installs, refused before any write -----------------------------------------------------------------------

def kube_prometheus(cluster: FakeCluster) -> None:
    """kube-prometheus's adapter (manifests/prometheusAdapter-deployment.yaml): reads adapter-config, registers metrics.k8s.io only."""
    labels = {"app.kubernetes.io/part-of": "kube-prometheus", "app.kubernetes.io/component": "metrics-adapter"}
    cluster.add(adapter_deployment(configmap="adapter-config", labels=labels))
    cluster.add({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "adapter-config", "namespace": NS},
                 "data": {"config.yaml": "resourceRules: {}\n"}})


def test_kube_prometheus_is_refused_naming_adapter_release() -> None:
    cluster = fresh_cluster()
    kube_prometheus(cluster)
    helm = FakeAdapterHelm(cluster)
    with pytest.raises(KubeInferError, match="is kube-prometheus's .* reads ConfigMap adapter-config.* set adapter_release to another name"):
        run(cluster, helm)
    assert cluster.writes() == [] and helm.argvs == []
    result = run(cluster, helm, adapter_release="kubeinfer-prometheus-adapter")
    assert result["adapter"]["deployment"] == "kubeinfer-prometheus-adapter" and upgrades(helm)


def test_release_with_rules_default_false_is_refused_naming_install_always() -> None:
    cluster = fresh_cluster()
    helm = FakeAdapterHelm(cluster, values={"rules": {"default": False, "existing": "mine"}})
    with pytest.raises(KubeInferError, match="installed with rules.default=false and no rules.custom.*set install=always"):
        run(cluster, helm)
    assert cluster.writes() == [] and upgrades(helm) == []


def test_adapter_without_custom_metrics_apiservice_is_refused() -> None:
    cluster = fresh_cluster()
    cluster.add(adapter_deployment())
    with pytest.raises(KubeInferError, match="^no APIService v1beta1.custom.metrics.k8s.io"):
        run(cluster, FakeAdapterHelm(cluster))
    assert cluster.writes() == []


def test_configmap_other_than_the_mounted_one_is_refused() -> None:
    cluster = fresh_cluster()
    cluster.add(adapter_deployment(configmap="adapter-rules"))
    with pytest.raises(KubeInferError, match="adapter_configmap: the adapter monitoring/prometheus-adapter reads --config=/etc/adapter/config.yaml "
                                             "from ConfigMap adapter-rules key config.yaml, not 'prometheus-adapter'; set adapter_configmap=adapter-rules"):
        run(cluster, FakeAdapterHelm(cluster), adapter_configmap="prometheus-adapter")
    assert cluster.writes() == []


def test_install_refuses_a_custom_metrics_apiservice_of_another_adapter() -> None:
    cluster = fresh_cluster()
    cluster.add({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1beta1.custom.metrics.k8s.io"},
                 "spec": {"service": {"name": "datadog-cluster-agent", "namespace": "datadog"}}})
    helm = FakeAdapterHelm(cluster)
    with pytest.raises(KubeInferError, match="made by something outside Helm, routing to Service datadog/datadog-cluster-agent.*install=never"):
        run(cluster, helm)
    assert cluster.writes() == [] and upgrades(helm) == []


def test_install_never_and_always_on_a_plain_deployment() -> None:
    cluster = fresh_cluster()
    with pytest.raises(KubeInferError, match="does not exist; set install=auto"):
        run(cluster, FakeAdapterHelm(cluster), install="never")
    cluster.add(adapter_deployment())
    with pytest.raises(KubeInferError, match="install=always: the adapter Deployment monitoring/prometheus-adapter exists and belongs to "
                                             "something outside Helm"):
        run(cluster, FakeAdapterHelm(cluster), install="always")
    assert cluster.writes() == []


def test_bad_input_names_the_option() -> None:
    cluster = fresh_cluster()
    for over, message in (({"adapter_release": "Bad_Name"}, "adapter_release: 'Bad_Name' is not a valid Helm release name"),
                          ({"adapter_config_key": "rules.yaml"}, "adapter_config_key: the chart passes --config=/etc/adapter/config.yaml"),
                          ({"adapter_configmap": "prometheus-adapter"}, "adapter_configmap: prometheus-adapter is the name the chart gives"),
                          ({"chart_ref": "/nonexistent/prometheus-adapter-5.3.0.tgz"}, "chart_ref: local chart /nonexistent"),
                          ({"chart_version": "5.2.0"}, "chart_version: the local chart .* is version 5.3.0, not 5.2.0"),
                          ({"helm_timeout": 0}, "helm_timeout: must be a positive number")):
        with pytest.raises(KubeInferError, match=message):
            run(cluster, FakeAdapterHelm(cluster), **over)
    assert cluster.writes() == []


def test_install_choices_are_the_documented_ones() -> None:
    assert metrics_adapter.ARGUMENT_SPEC["install"]["choices"] == list(_adapter_install.INSTALL_CHOICES) == ["auto", "always", "never"]
