# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The metrics_adapter logic against a stateful fake API server and a fake port-forward."""
from __future__ import annotations

import functools
import http.server
import json
import threading
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from ansible_collections.kubeinfer.llm.plugins.module_utils import _adapter, _waiter
from ansible_collections.kubeinfer.llm.plugins.module_utils._adapter_rules import adapter_rule
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm
from ansible_collections.kubeinfer.llm.plugins.module_utils._portforward import PortForwardTarget
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube
from ansible_collections.kubeinfer.llm.plugins.modules import metrics_adapter

from .fake_api import FakeApiException
from .fake_cluster import FakeCluster, forward_opener, metric_list
from .fixture_text import fixture
from .spec_params import spec_params

CM = "/api/v1/namespaces/monitoring/configmaps/prometheus-adapter"
DEP = "/apis/apps/v1/namespaces/monitoring/deployments/prometheus-adapter"
METRIC = "/apis/custom.metrics.k8s.io/v1beta1/namespaces/llm/pods/*/vllm_queue_depth"
DISCOVERY = "/apis/custom.metrics.k8s.io/v1beta1"
APISERVICE = "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.custom.metrics.k8s.io"
OTHER = {"seriesQuery": '{__name__=~"^container_.*",namespace!=""}', "resources": {"template": "<<.Resource>>"},
         "name": {"matches": "^container_(.*)$", "as": "${1}"}, "metricsQuery": "sum(<<.Series>>) by (<<.GroupBy>>)"}


def pod(name: str, release: str, ready: bool = True) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "llm", "labels": {"kubeinfer.io/release": release, "app.kubernetes.io/instance": release},
                         "annotations": {"prometheus.io/port": "8000", "prometheus.io/path": "/metrics"}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def adapter_deployment(name: str = "prometheus-adapter", configmap: str = "prometheus-adapter", labels: dict[str, str] | None = None,
                       annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """An adapter Deployment as the chart and the local cluster shape it: --config on a ConfigMap volume."""
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "monitoring", "labels": labels or {}, "annotations": annotations or {}},
            "spec": {"template": {"metadata": {"labels": {"app": "prometheus-adapter"}}, "spec": {
                "containers": [{"name": "prometheus-adapter", "args": ["/adapter", "--secure-port=6443", "--config=/etc/adapter/config.yaml"],
                                "volumeMounts": [{"name": "config", "mountPath": "/etc/adapter/"}, {"name": "tmp", "mountPath": "/tmp"}]}],
                "volumes": [{"name": "config", "configMap": {"name": configmap}}, {"name": "tmp", "emptyDir": {}}]}}}}


def no_helm() -> Helm:
    """A Helm without a binary: any helm command fails the test's run, naming helm_binary."""
    return Helm(lambda argv, **kw: (1, "", "no helm here"), "", {}, missing="helm_binary: helm was not found on PATH")


def make_cluster(rules: list[dict[str, Any]] | None = None, served: dict[str, str] | None = None) -> FakeCluster:
    cluster = FakeCluster()
    cluster.add(pod("llama-0", "llama"))
    cluster.add(pod("llama-1", "llama"))
    cluster.add(pod("mistral-0", "mistral"))
    cluster.add(adapter_deployment())
    config = {"rules": rules if rules is not None else [OTHER], "resourceRules": {"cpu": {"containerQuery": "x"}}}
    cluster.add({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "prometheus-adapter", "namespace": "monitoring"},
                 "data": {"config.yaml": yaml.safe_dump(config, sort_keys=False)}})
    cluster.add({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1beta1.custom.metrics.k8s.io"},
                 "spec": {"service": {"name": "prometheus-adapter", "namespace": "monitoring"}},
                 "status": {"conditions": [{"type": "Available", "status": "True", "reason": "Passed"}]}})
    values = served if served is not None else {"llama-0": "0", "llama-1": "3"}
    cluster.answers[("GET", METRIC)] = lambda query: metric_list({p: v for p, v in values.items() if p.startswith("llama")})
    cluster.answers[("GET", DISCOVERY)] = {"kind": "APIResourceList", "resources": [{"name": "pods/vllm_queue_depth", "namespaced": True}]}
    return cluster


@pytest.fixture
def metrics_text(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Serve a /metrics body through a fake port-forward; the dict's 'opened' lists each stream's (ns, pod, port)."""
    state: dict[str, Any] = {"body": fixture("vllm_metrics.txt"), "status": 200, "opened": []}

    def target(api_client: Any, namespace: str, name: str, port: int) -> PortForwardTarget:
        opener, opened = forward_opener(state["body"], state["status"])
        state["opened"] = opened
        return PortForwardTarget(api_client, namespace, name, port, opener=opener)

    monkeypatch.setattr(_adapter, "PortForwardTarget", target)
    yield state


def params(**over: Any) -> dict[str, Any]:
    return spec_params(metrics_adapter, **{"release": "llama", "namespace": "llm", "ready_timeout": 0, "request_timeout": 5, "verify_timeout": 0, **over})


def live_config(cluster: FakeCluster) -> dict[str, Any]:
    return yaml.safe_load(cluster.objects[CM]["data"]["config.yaml"])


def run(cluster: FakeCluster, check_mode: bool = False, diff: bool = False, **over: Any) -> dict[str, Any]:
    return _adapter.run(Kube(cluster), no_helm(), params(**over), check_mode, diff)


# -- present ------------------------------------------------------------------------------------------------------

def test_detects_writes_restarts_and_verifies(metrics_text: dict[str, Any]) -> None:
    cluster = make_cluster()
    result = run(cluster, diff=True)
    assert result["metric_name"] == "vllm:num_requests_waiting"
    assert result["metric_source"] == "/metrics of pod llm/llama-0" and result["pod"] == "llama-0"
    assert metrics_text["opened"] == [("llm", "llama-0", 8000)]
    want = adapter_rule("vllm:num_requests_waiting", "vllm_queue_depth", ["llama"])
    config = live_config(cluster)
    assert config["rules"] == [OTHER, want]
    assert config["resourceRules"] == {"cpu": {"containerQuery": "x"}}, "other sections of the config are kept"
    assert result["rule"] == want and result["releases"] == ["llama"]
    assert result["configmap_changed"] and result["restarted"] and result["changed"]
    annotations = cluster.objects[DEP]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["kubeinfer.io/config-checksum"] == _adapter.checksum(cluster.objects[CM]["data"]["config.yaml"]) == result["checksum"]
    assert result["served"] == {"llama-0": "0", "llama-1": "3"}
    assert result["diff"] == {"before": {"rules": [OTHER]}, "after": {"rules": [OTHER, want]}}
    cm_patch = next(c for c in cluster.calls if c["method"] == "PATCH" and c["path"] == CM)
    assert cm_patch["content_type"] == "application/merge-patch+json"
    assert cm_patch["body"]["metadata"]["resourceVersion"], "the write is conditional on the version read"
    metric_call = next(c for c in cluster.calls if c["path"] == METRIC)
    assert metric_call["query"] == {"labelSelector": "kubeinfer.io/release=llama"}


def test_rerun_writes_nothing_and_does_not_restart(metrics_text: dict[str, Any]) -> None:
    cluster = make_cluster()
    run(cluster)
    before = len(cluster.writes())
    again = run(cluster)
    assert len(cluster.writes()) == before
    assert not again["changed"] and not again["configmap_changed"] and not again["restarted"]
    assert again["served"] == {"llama-0": "0", "llama-1": "3"}
    assert set(again["api_requests"]) <= {"get", "list", "discovery"}


def test_check_mode_is_a_dry_run_and_waits_for_nothing(metrics_text: dict[str, Any]) -> None:
    cluster = make_cluster()
    original = json.dumps(cluster.objects, sort_keys=True)
    result = run(cluster, check_mode=True, diff=True)
    assert result["changed"] and result["restarted"]
    assert json.dumps(cluster.objects, sort_keys=True) == original
    assert all(c["query"].get("dryRun") == "All" for c in cluster.writes())
    assert len(cluster.writes()) == 3  # rules ConfigMap, adapter restart, dashboard ConfigMap: all dry runs
    assert not any(c["path"] == METRIC for c in cluster.calls)
    assert result["diff"]["after"]["rules"][-1]["name"]["as"] == "vllm_queue_depth"


def test_dashboard_uses_the_names_seen_on_the_pod_and_is_shipped_once(metrics_text: dict[str, Any]) -> None:
    metrics_text["body"] = fixture("vllm_metrics_underscore.txt")
    cluster = make_cluster()
    result = run(cluster)
    cm = cluster.objects["/api/v1/namespaces/monitoring/configmaps/llama-vllm-dashboard"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(cm["data"]["llama-vllm.json"])
    assert shipped == result["dashboard"]
    queries = [t["expr"] for panel in shipped["panels"] for t in panel.get("targets", [])]
    assert any("vllm_num_requests_waiting" in q and 'kubeinfer_io_release="llama"' in q for q in queries)
    assert not any("vllm:" in q for q in queries), "every panel follows the pod's underscore style"
    writes = len(cluster.writes())
    assert not run(cluster)["changed"] and len(cluster.writes()) == writes
    # Without a look at a pod (metric_name given) the dashboard built from the pod is kept.
    again = run(cluster, metric_name="vllm_num_requests_waiting")
    assert not again["changed"] and again["dashboard"] == shipped and len(cluster.writes()) == writes
    run(cluster, state="absent")
    assert "/api/v1/namespaces/monitoring/configmaps/llama-vllm-dashboard" not in cluster.objects


def test_underscore_name_is_detected_and_used(metrics_text: dict[str, Any]) -> None:
    metrics_text["body"] = fixture("vllm_metrics_underscore.txt")
    cluster = make_cluster()
    result = run(cluster)
    assert result["metric_name"] == "vllm_num_requests_waiting"
    assert live_config(cluster)["rules"][-1] == adapter_rule("vllm_num_requests_waiting", "vllm_queue_depth", ["llama"])


def test_second_release_joins_the_one_rule(metrics_text: dict[str, Any]) -> None:
    cluster = make_cluster(served={"llama-0": "0", "llama-1": "0"})
    run(cluster)
    cluster.answers[("GET", METRIC)] = lambda query: metric_list({"mistral-0": "1"})
    result = run(cluster, release="mistral")
    assert metrics_text["opened"] == [("llm", "mistral-0", 8000)]
    assert result["releases"] == ["llama", "mistral"]
    assert live_config(cluster)["rules"] == [OTHER, adapter_rule("vllm:num_requests_waiting", "vllm_queue_depth", ["llama", "mistral"])]
    assert result["served"] == {"mistral-0": "1"}


def test_explicit_metric_name_skips_detection(metrics_text: dict[str, Any]) -> None:
    cluster = make_cluster()
    result = run(cluster, metric_name="vllm_num_requests_waiting", verify=False)
    assert metrics_text["opened"] == []
    assert result["metric_source"] == "metric_name option"
    assert live_config(cluster)["rules"][-1]["name"]["matches"] == "^vllm_num_requests_waiting$"


def test_without_detection_the_rule_matches_every_candidate(metrics_text: dict[str, Any]) -> None:
    cluster = make_cluster()
    result = run(cluster, detect_from_pod=False, verify=False)
    assert metrics_text["opened"] == []
    assert result["metric_name"] is None
    assert result["metric_names"] == ["vllm:num_requests_waiting", "vllm_num_requests_waiting"]
    assert '__name__=~"vllm:num_requests_waiting|vllm_num_requests_waiting"' in live_config(cluster)["rules"][-1]["seriesQuery"]


def test_missing_configmap_is_created(metrics_text: dict[str, Any]) -> None:
    cluster = make_cluster()
    del cluster.objects[CM]
    result = run(cluster, verify=False)
    assert result["configmap_changed"]
    created = cluster.objects[CM]
    assert created["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "kubeinfer.llm"}
    assert live_config(cluster) == {"rules": [adapter_rule("vllm:num_requests_waiting", "vllm_queue_depth", ["llama"])]}


def test_concurrent_writer_is_merged_not_overwritten(metrics_text: dict[str, Any]) -> None:
    cluster = make_cluster()
    key = ("PATCH", CM)

    def conflict(query: dict[str, Any]) -> Any:
        # Another task registers mistral between our read and our write.
        del cluster.answers[key]
        text = yaml.safe_dump({"rules": [OTHER, adapter_rule("vllm:num_requests_waiting", "vllm_queue_depth", ["mistral"])]})
        cluster.add(dict(cluster.objects[CM], data={"config.yaml": text}))
        raise FakeApiException(409, "the object has been modified")

    cluster.answers[key] = conflict
    result = run(cluster, verify=False)
    assert result["releases"] == ["llama", "mistral"]
    assert live_config(cluster)["rules"][-1] == adapter_rule("vllm:num_requests_waiting", "vllm_queue_depth", ["llama", "mistral"])


# -- absent -----------------------------------------------------------------------------------------------------

def test_absent_removes_the_release_then_the_rule(metrics_text: dict[str, Any]) -> None:
    both = adapter_rule("vllm:num_requests_waiting", "vllm_queue_depth", ["llama", "mistral"])
    cluster = make_cluster(rules=[both, OTHER])
    result = run(cluster, state="absent")
    assert metrics_text["opened"] == [], "unregistering needs no detection"
    assert result["changed"] and result["restarted"] and result["releases"] == ["mistral"]
    assert live_config(cluster)["rules"] == [adapter_rule("vllm:num_requests_waiting", "vllm_queue_depth", ["mistral"]), OTHER]
    result = run(cluster, state="absent", release="mistral")
    assert live_config(cluster)["rules"] == [OTHER] and result["rule"] is None and result["releases"] == []
    writes = len(cluster.writes())
    again = run(cluster, state="absent", release="mistral")
    assert not again["changed"] and len(cluster.writes()) == writes


# -- failures before any write -------------------------------------------------------------------------------

def test_missing_adapter_deployment_fails_before_writing(metrics_text: dict[str, Any]) -> None:
    cluster = make_cluster()
    del cluster.objects[DEP]
    with pytest.raises(KubeInferError, match="adapter Deployment monitoring/prometheus-adapter does not exist; set install=auto"):
        run(cluster, install="never")
    assert cluster.writes() == []
    with pytest.raises(KubeInferError, match=r"helm_binary: helm was not found on PATH \(helm is needed to look up the adapter's Helm release"):
        run(cluster)
    assert cluster.writes() == []


def test_foreign_rule_with_the_name_fails_before_writing(metrics_text: dict[str, Any]) -> None:
    foreign = dict(OTHER, name={"matches": "^x$", "as": "vllm_queue_depth"})
    cluster = make_cluster(rules=[foreign])
    with pytest.raises(KubeInferError, match="without a kubeinfer_io_release filter") as info:
        run(cluster)
    assert cluster.writes() == []
    assert info.value.result["metric_name"] == "vllm:num_requests_waiting", "the partial result is kept"


def test_pod_without_vllm_metrics_fails_naming_the_pod(metrics_text: dict[str, Any]) -> None:
    metrics_text["body"] = "# TYPE go_goroutines gauge\ngo_goroutines 12\n"
    cluster = make_cluster()
    with pytest.raises(KubeInferError, match="pod llm/llama-0: None of the metrics vllm:num_requests_waiting, vllm_num_requests_waiting"):
        run(cluster)
    assert cluster.writes() == []


def test_metrics_http_error_is_reported(metrics_text: dict[str, Any]) -> None:
    metrics_text["status"] = 503
    with pytest.raises(KubeInferError, match="GET /metrics of pod llm/llama-0 returned HTTP 503"):
        run(make_cluster())


def test_no_ready_pod(metrics_text: dict[str, Any]) -> None:
    cluster = make_cluster()
    for name in ("llama-0", "llama-1"):
        cluster.objects[f"/api/v1/namespaces/llm/pods/{name}"]["status"]["conditions"][0]["status"] = "False"
    with pytest.raises(KubeInferError, match="no Ready pod to forward to"):
        run(cluster)


def test_invalid_config_yaml(metrics_text: dict[str, Any]) -> None:
    cluster = make_cluster()
    cluster.objects[CM]["data"]["config.yaml"] = "rules: {not: a list}\n"
    with pytest.raises(KubeInferError, match="'rules' must be a list"):
        run(cluster)
    cluster.objects[CM]["data"]["config.yaml"] = "rules: [\n"
    with pytest.raises(KubeInferError, match="is not valid YAML"):
        run(cluster)


# -- verification says what is missing ---------------------------------------------------------------------------

def not_found(query: dict[str, Any]) -> Any:
    raise FakeApiException(404, 'the server could not find the metric vllm_queue_depth for pods')


def test_no_apiservice(metrics_text: dict[str, Any]) -> None:
    cluster = make_cluster()
    del cluster.objects[APISERVICE]
    with pytest.raises(KubeInferError, match="^no APIService v1beta1.custom.metrics.k8s.io: the adapter monitoring/prometheus-adapter is not "
                                             "registered .* or set install=auto with adapter_release"):
        run(cluster)
    assert cluster.writes() == [], "refused before any write"


def test_apiservice_not_available(metrics_text: dict[str, Any]) -> None:
    cluster = make_cluster()
    cluster.objects[APISERVICE]["status"]["conditions"] = [
        {"type": "Available", "status": "False", "reason": "FailedDiscoveryCheck", "message": "failing or missing response from https://x"}]
    cluster.answers[("GET", METRIC)] = FakeApiException(503, "service unavailable")
    with pytest.raises(KubeInferError, match="APIService v1beta1.custom.metrics.k8s.io not Available: FailedDiscoveryCheck: failing or missing"):
        run(cluster)


def test_rule_does_not_match(metrics_text: dict[str, Any]) -> None:
    cluster = make_cluster()
    cluster.answers[("GET", METRIC)] = not_found
    cluster.answers[("GET", DISCOVERY)] = {"kind": "APIResourceList", "resources": [{"name": "pods/other", "namespaced": True}]}
    with pytest.raises(KubeInferError, match="rule does not match: adapter lists no vllm_queue_depth metric") as info:
        run(cluster)
    assert info.value.result["configmap_changed"] is True, "the partial result says what was done"


def test_value_missing_for_one_pod(metrics_text: dict[str, Any]) -> None:
    cluster = make_cluster(served={"llama-0": "1"})
    with pytest.raises(KubeInferError, match="vllm_queue_depth is served for llama-0 but not for llama-1") as info:
        run(cluster)
    assert info.value.result["served"] == {"llama-0": "1"}


class _Prometheus(http.server.BaseHTTPRequestHandler):
    series: list[dict[str, str]] = []
    seen: list[dict[str, list[str]]] = []
    empty_answers = 0
    """How many /api/v1/series requests get no series before ``series`` is answered (a target not scraped yet)."""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        type(self).seen.append(parse_qs(parts.query))
        data = type(self).series if len(type(self).seen) > type(self).empty_answers else []
        body = json.dumps({"status": "success", "data": data}).encode()
        self.send_response(200 if parts.path == "/api/v1/series" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def prometheus() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Prometheus)
    _Prometheus.seen = []
    _Prometheus.empty_answers = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_series_not_found_in_prometheus(metrics_text: dict[str, Any], prometheus: str) -> None:
    _Prometheus.series = []
    cluster = make_cluster()
    cluster.answers[("GET", METRIC)] = not_found
    with pytest.raises(KubeInferError, match=r'series \{__name__="vllm:num_requests_waiting",kubeinfer_io_release="llama",namespace="llm"\} '
                                             "not found in Prometheus"):
        run(cluster, prometheus_url=prometheus)
    assert _Prometheus.seen[0] == {"match[]": ['{__name__="vllm:num_requests_waiting",kubeinfer_io_release="llama",namespace="llm"}']}


def test_series_present_points_at_the_rule(metrics_text: dict[str, Any], prometheus: str) -> None:
    _Prometheus.series = [{"__name__": "vllm:num_requests_waiting", "pod": "llama-0", "namespace": "llm", "kubeinfer_io_release": "llama"}]
    cluster = make_cluster()
    cluster.answers[("GET", METRIC)] = not_found
    cluster.answers[("GET", DISCOVERY)] = {"kind": "APIResourceList", "resources": []}
    with pytest.raises(KubeInferError, match="rule does not match"):
        run(cluster, prometheus_url=prometheus)


SERIES = [{"__name__": "vllm:num_requests_waiting", "pod": "llama-0", "namespace": "llm", "kubeinfer_io_release": "llama"}]


def test_the_adapter_restarts_only_once_prometheus_holds_the_series(metrics_text: dict[str, Any], prometheus: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The restarted adapter lists the series at start-up, then only after its relist interval: it restarts after the
    series is there. A re-run, which changes no rule, asks Prometheus nothing before the check."""
    _Prometheus.series, _Prometheus.empty_answers = SERIES, 2
    cluster = make_cluster()
    order: list[str] = []
    cluster.on_request.append(lambda method, path: order.append("restart") if method == "PATCH" and path == DEP else None)
    original = _adapter.prometheus_series

    def counted(*args: Any) -> Any:
        order.append("series")
        return original(*args)

    monkeypatch.setattr(_adapter, "prometheus_series", counted)
    result = run(cluster, prometheus_url=prometheus, verify_timeout=30)
    assert result["series_wait"]["found"] is True and result["series_wait"]["waited_seconds"] >= 1.5
    assert order[:4] == ["series", "series", "series", "restart"], order
    order.clear()
    again = run(cluster, prometheus_url=prometheus, verify_timeout=30)
    assert "series_wait" not in again and "restart" not in order


def test_no_series_wait_without_prometheus_or_when_it_does_not_answer(metrics_text: dict[str, Any]) -> None:
    result = run(make_cluster(), verify_timeout=30)
    assert result["series_wait"] == {"waited_seconds": 0, "found": None, "reason": "no prometheus_url"}
    result = run(make_cluster(), verify_timeout=30, prometheus_url="http://127.0.0.1:9")
    assert result["series_wait"]["found"] is None and result["series_wait"]["reason"].startswith("cannot query Prometheus")


def test_verification_waits_until_served(metrics_text: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = make_cluster()
    answers = iter([None, {"llama-0": "0"}, {"llama-0": "0", "llama-1": "2"}])

    def later(query: dict[str, Any]) -> Any:
        values = next(answers)
        if values is None:
            raise FakeApiException(404, "the server could not find the metric")
        return metric_list(values)

    cluster.answers[("GET", METRIC)] = later
    monkeypatch.setattr(_adapter, "wait_for", functools.partial(_waiter.wait_for, sleep=lambda seconds: None))
    result = run(cluster, verify_timeout=60)
    assert result["served"] == {"llama-0": "0", "llama-1": "2"}
