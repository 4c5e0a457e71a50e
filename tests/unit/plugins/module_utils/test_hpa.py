# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The inference_hpa logic: quantities, windows, the HPA and ScaledObject, idempotence and verification."""
from __future__ import annotations

import copy
from typing import Any

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils import _hpa
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube
from ansible_collections.kubeinfer.llm.plugins.modules import inference_hpa

from .fake_cluster import FakeCluster
from .spec_params import spec_params

HPA = "/apis/autoscaling/v2/namespaces/llm/horizontalpodautoscalers/llama"
SO = "/apis/keda.sh/v1alpha1/namespaces/llm/scaledobjects/llama"
CRD = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/scaledobjects.keda.sh"


# -- quantities ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, canonical", [
    (2, "2"), ("2", "2"), (2.0, "2"), ("0.5", "500m"), (0.25, "250m"), ("250m", "250m"), ("1500m", "1500m"),
    (1000, "1k"), (1500, "1500"), ("1500000", "1500k"), ("2k", "2k"), ("+3", "3"), (".5", "500m"),
])
def test_canonical_quantity(value: Any, canonical: str) -> None:
    assert _hpa.canonical_quantity(value) == canonical


@pytest.mark.parametrize("value, problem", [
    (0, "above 0"), ("0m", "above 0"), ("-1", "positive number"), ("abc", "positive number"), ("1Gi", "positive number"),
    ("0.0001", "finer than a milli-unit"), (True, "positive number"),
])
def test_canonical_quantity_rejects(value: Any, problem: str) -> None:
    with pytest.raises(KubeInferError, match=problem):
        _hpa.canonical_quantity(value)


def test_plain_number_for_keda() -> None:
    assert _hpa.plain_number("500m") == "0.5"
    assert _hpa.plain_number(5) == "5"
    assert _hpa.plain_number("2.50") == "2.5"
    assert _hpa.plain_number("2k") == "2000"


# -- windows ------------------------------------------------------------------------------------------------------

def test_window_is_derived_from_the_load_time() -> None:
    assert _hpa.scale_down_window(None, 135) == (300, "derived from startup_budget_seconds")
    assert _hpa.scale_down_window(None, 482) == (482, "derived from startup_budget_seconds")
    assert _hpa.scale_down_window(None, None) == (300, "minimum (no startup budget known)")
    assert _hpa.scale_down_window(600, 482) == (600, "scale_down.stabilization_window_seconds")
    assert _hpa.scale_down_window(60, None) == (60, "scale_down.stabilization_window_seconds")


def test_explicit_window_below_the_load_time_fails_naming_the_parameter() -> None:
    with pytest.raises(KubeInferError, match=r"scale_down.stabilization_window_seconds=200 is below the model load time "
                                             r"startup_budget_seconds=482.*at least 482"):
        _hpa.scale_down_window(200, 482)


def test_window_limits() -> None:
    with pytest.raises(KubeInferError, match="between 0 and 3600"):
        _hpa.scale_down_window(3601, None)
    with pytest.raises(KubeInferError, match="exceeds the longest HPA stabilization window"):
        _hpa.scale_down_window(None, 4000)


def test_startup_budget_from_option_then_annotation() -> None:
    dep = deployment()
    assert _hpa.startup_budget(params(startup_budget_seconds=90), dep) == (90, "startup_budget_seconds option")
    assert _hpa.startup_budget(params(), dep) == (480, "annotation kubeinfer.io/startup-budget-seconds of Deployment llama-vllm")
    del dep["spec"]["template"]["metadata"]["annotations"]
    assert _hpa.startup_budget(params(), dep) == (None, "none")


def test_behavior_writes_the_defaults_out_and_takes_policies() -> None:
    spec = _hpa.behavior(params(), 300)
    assert spec == {
        "scaleUp": {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
                    "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]},
        "scaleDown": {"stabilizationWindowSeconds": 300, "selectPolicy": "Max", "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]},
    }
    spec = _hpa.behavior(params(scale_up={"stabilization_window_seconds": 10, "pods": 2, "percent": 50, "period_seconds": 30, "select_policy": "Min"},
                                scale_down={"pods": 1}), 600)
    assert spec["scaleUp"] == {"stabilizationWindowSeconds": 10, "selectPolicy": "Min", "policies": [
        {"type": "Pods", "value": 2, "periodSeconds": 30}, {"type": "Percent", "value": 50, "periodSeconds": 30}]}
    assert spec["scaleDown"] == {"stabilizationWindowSeconds": 600, "selectPolicy": "Max", "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}
    with pytest.raises(KubeInferError, match="scale_down.percent must be at least 1"):
        _hpa.behavior(params(scale_down={"percent": 0}), 300)
    with pytest.raises(KubeInferError, match="scale_up.period_seconds must be between 1 and 1800"):
        _hpa.behavior(params(scale_up={"pods": 1, "period_seconds": 3600}), 300)


# -- the module logic on a fake cluster -------------------------------------------------------------------------------

def deployment(name: str = "llama-vllm", release: str = "llama") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "llm", "labels": {"app.kubernetes.io/instance": release}},
            "spec": {"template": {"metadata": {"annotations": {"kubeinfer.io/startup-budget-seconds": "480"}}}}}


def make_cluster(keda: bool = False) -> FakeCluster:
    cluster = FakeCluster()
    cluster.add(deployment())
    cluster.add(deployment("mistral-vllm", "mistral"))
    if keda:
        cluster.add({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "scaledobjects.keda.sh"}})
        cluster.answers[("GET", "/apis/keda.sh/v1alpha1")] = {"resources": [{"name": "scaledobjects", "kind": "ScaledObject", "namespaced": True},
                                                                            {"name": "scaledobjects/status", "kind": "ScaledObject", "namespaced": True}]}
    return cluster


def params(**over: Any) -> dict[str, Any]:
    return spec_params(inference_hpa, **{"release": "llama", "namespace": "llm", "target_queue_depth": "0.5", "verify": False, "verify_timeout": 0,
                                         **over})


def run(cluster: FakeCluster, check_mode: bool = False, diff: bool = False, **over: Any) -> dict[str, Any]:
    return _hpa.run(Kube(cluster), params(**over), check_mode, diff)


def with_status(cluster: FakeCluster, path: str, status: dict[str, Any]) -> None:
    obj = copy.deepcopy(cluster.objects[path])
    obj["status"] = status
    cluster.objects[path] = obj


READING = {"currentReplicas": 1, "desiredReplicas": 2, "currentMetrics": [
    {"type": "Pods", "pods": {"metric": {"name": "vllm_queue_depth"}, "current": {"averageValue": "1500m"}}}],
    "conditions": [{"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound", "message": "ok"}]}


def test_creates_the_hpa_on_the_per_pod_metric() -> None:
    cluster = make_cluster()
    result = run(cluster, diff=True)
    hpa = cluster.objects[HPA]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama-vllm"}
    pods_metric = {"metric": {"name": "vllm_queue_depth"}, "target": {"type": "AverageValue", "averageValue": "500m"}}
    assert hpa["spec"]["metrics"] == [{"type": "Pods", "pods": pods_metric}]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 480
    assert hpa["metadata"]["labels"]["kubeinfer.io/release"] == "llama"
    assert result["changed"] and result["target"] == "llama-vllm"
    assert result["scale_down_window_seconds"] == 480 and result["startup_budget_seconds"] == 480
    assert result["diff"]["before"] == {} and result["diff"]["after"]["spec"]["maxReplicas"] == 4
    apply = next(c for c in cluster.calls if c["method"] == "PATCH")
    assert apply["query"]["fieldValidation"] == "Strict" and apply["content_type"] == "application/apply-patch+yaml"
    assert "dryRun" not in apply["query"]
    # get: the KEDA CRD (are there ScaledObjects to look at?) and the HPA; list: the Deployment and the HPAs of the target.
    assert result["api_requests"] == {"list": 2, "get": 2, "apply": 1}


def test_rerun_makes_no_write_even_with_a_differently_written_target() -> None:
    cluster = make_cluster()
    run(cluster)
    writes = len(cluster.writes())
    again = run(cluster, target_queue_depth="500m")
    assert not again["changed"] and len(cluster.writes()) == writes
    changed = run(cluster, max_replicas=6)
    assert changed["changed"] and cluster.objects[HPA]["spec"]["maxReplicas"] == 6


def test_check_mode_is_a_server_side_dry_run() -> None:
    cluster = make_cluster()
    result = run(cluster, check_mode=True, verify=True, verify_timeout=60)
    assert result["changed"] and HPA not in cluster.objects
    assert [c["query"].get("dryRun") for c in cluster.writes()] == ["All"]
    assert result["hpa"]["spec"]["maxReplicas"] == 4


def test_explicit_target_and_name() -> None:
    cluster = make_cluster()
    result = run(cluster, target="mistral-vllm", name="custom")
    assert result["name"] == "custom"
    assert cluster.objects["/apis/autoscaling/v2/namespaces/llm/horizontalpodautoscalers/custom"]["spec"]["scaleTargetRef"]["name"] == "mistral-vllm"
    with pytest.raises(KubeInferError, match="target Deployment llm/nope does not exist"):
        run(cluster, target="nope")


def test_target_must_be_one_deployment() -> None:
    cluster = make_cluster()
    with pytest.raises(KubeInferError, match="expected one Deployment labelled app.kubernetes.io/instance=other in llm, found none"):
        run(cluster, release="other")
    cluster.add(deployment("llama-vllm-2"))
    with pytest.raises(KubeInferError, match="found llama-vllm, llama-vllm-2; set target"):
        run(cluster)
    assert cluster.writes() == []


@pytest.mark.parametrize("over, problem", [
    ({"min_replicas": 0}, "min_replicas must be at least 1 with kind=hpa; scale to zero needs kind=keda"),
    ({"min_replicas": 3, "max_replicas": 2}, r"max_replicas \(2\) must be at least 1 and at least min_replicas \(3\)"),
    ({"scale_down": {"stabilization_window_seconds": 120}}, "scale_down.stabilization_window_seconds=120 is below the model load time"),
    ({"target_queue_depth": "lots"}, "target_queue_depth must be a positive number"),
])
def test_invalid_input_fails_before_writing(over: dict[str, Any], problem: str) -> None:
    cluster = make_cluster()
    with pytest.raises(KubeInferError, match=problem):
        run(cluster, **over)
    assert cluster.writes() == []


def test_verify_returns_the_current_value() -> None:
    cluster = make_cluster()
    run(cluster)
    with_status(cluster, HPA, READING)
    result = run(cluster, verify=True, verify_timeout=30)
    assert result["current_value"] == "1500m" and result["desired_replicas"] == 2 and result["current_replicas"] == 1
    assert not result["changed"]


def test_verify_timeout_reports_the_conditions() -> None:
    cluster = make_cluster()
    run(cluster)
    with_status(cluster, HPA, {"currentMetrics": None, "conditions": [
        {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale", "message": "the HPA controller was able to get the target's current scale"},
        {"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric",
         "message": "the HPA was unable to compute the replica count: unable to get metric vllm_queue_depth: the server could not find the metric"}]})
    with pytest.raises(KubeInferError, match=r"timed out after 0s waiting for HPA llm/llama to read vllm_queue_depth: current value <unknown>; "
                                             r"conditions: ScalingActive False \(FailedGetPodsMetric\): the HPA was unable") as info:
        run(cluster, verify=True)
    assert info.value.result["conditions"][1]["reason"] == "FailedGetPodsMetric"
    assert info.value.result["target"] == "llama-vllm"


def test_current_value_ignores_other_metrics() -> None:
    hpa = {"status": {"currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageValue": "1"}}},
                                         {"type": "Pods", "pods": {"metric": {"name": "other"}, "current": {"averageValue": "2"}}}]}}
    assert _hpa.current_value(hpa, "vllm_queue_depth") is None
    assert _hpa.current_value(hpa, "other") == "2"
    assert _hpa.conditions_text(None) == "no conditions yet (the controller has not synced it)"


def test_absent_deletes_once() -> None:
    cluster = make_cluster()
    run(cluster)
    assert run(cluster, state="absent", check_mode=True)["changed"] and HPA in cluster.objects
    assert run(cluster, state="absent")["changed"] and HPA not in cluster.objects
    assert not run(cluster, state="absent")["changed"]


# -- KEDA -----------------------------------------------------------------------------------------------------------

def test_keda_needs_its_crd() -> None:
    cluster = make_cluster()
    with pytest.raises(KubeInferError, match="^KEDA is not installed: no scaledobjects.keda.sh CRD"):
        run(cluster, kind="keda", prometheus_url="http://prometheus:9090", min_replicas=0)
    assert cluster.writes() == []
    assert not run(cluster, kind="keda", state="absent")["changed"]


def test_keda_scaled_object_is_applied_with_strict_validation() -> None:
    cluster = make_cluster(keda=True)
    result = run(cluster, kind="keda", prometheus_url="http://prometheus:9090", min_replicas=0, metric_name="vllm_num_requests_waiting")
    so = cluster.objects[SO]
    assert so["spec"]["minReplicaCount"] == 0 and so["spec"]["maxReplicaCount"] == 4
    assert so["spec"]["cooldownPeriod"] == 480
    assert so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 480
    assert so["spec"]["triggers"] == [{"type": "prometheus", "metricType": "AverageValue", "metadata": {
        "serverAddress": "http://prometheus:9090",
        "query": 'sum(vllm_num_requests_waiting{namespace="llm",kubeinfer_io_release="llama"})',
        "threshold": "0.5"}}]
    assert result["query"] == so["spec"]["triggers"][0]["metadata"]["query"]
    applies = [c for c in cluster.calls if c["method"] == "PATCH"]
    assert [c["query"].get("dryRun") for c in applies] == [None]
    assert applies[0]["query"]["fieldValidation"] == "Strict"
    writes = len(cluster.writes())
    again = run(cluster, kind="keda", prometheus_url="http://prometheus:9090", min_replicas=0, metric_name="vllm_num_requests_waiting")
    assert not again["changed"] and len(cluster.writes()) == writes


def test_keda_needs_prometheus_and_reports_a_rejection() -> None:
    cluster = make_cluster(keda=True)
    with pytest.raises(KubeInferError, match="^prometheus_url is required with kind=keda"):
        run(cluster, kind="keda")
    from .fake_api import FakeApiException
    cluster.answers[("PATCH", SO)] = FakeApiException(422, 'ScaledObject.keda.sh "llama" is invalid: spec.minReplicaCount: Invalid value')
    with pytest.raises(KubeInferError, match="ScaledObject.keda.sh \"llama\" is invalid: spec.minReplicaCount"):
        run(cluster, kind="keda", prometheus_url="http://p:9090")


PROM = "http://prometheus.monitoring.svc:9090"
QUERY_PATH = "/api/v1/namespaces/monitoring/services/http:prometheus:9090/proxy/api/v1/query"
KEDA_HPA = "/apis/autoscaling/v2/namespaces/llm/horizontalpodautoscalers/keda-hpa-llama"
SO_OWNER = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "name": "llama", "controller": True, "blockOwnerDeletion": True}


def prometheus(cluster: FakeCluster, series: list[dict[str, str]], value: str = "3") -> None:
    """Prometheus behind the API server's service proxy, holding ``series``: enough PromQL for the trigger query
    (``sum(metric{...})``) and the diagnosis (``count(...)``, ``count by (label) (...)``)."""
    from ansible_collections.kubeinfer.llm.plugins.module_utils._promql import parse_matchers

    def answer(query: dict[str, str]) -> dict[str, Any]:
        promql = query["query"]
        metric = promql.split("(")[-1].split("{")[0].strip(" )")
        wanted = [m for m in parse_matchers(promql) if m[0] != "__name__"]
        hits = [s for s in series if s["__name__"] == metric and all(s.get(k) == v for k, _op, v in wanted)]
        if promql.startswith("count by ("):
            label = promql[len("count by ("):].split(")")[0]
            groups = sorted({h.get(label, "") for h in hits})
            result = [{"metric": {label: g} if g else {}, "value": [1, "1"]} for g in groups]
        else:
            result = [{"metric": {}, "value": [1, value if promql.startswith("sum(") else str(len(hits))]}] if hits else []
        return {"status": "success", "data": {"resultType": "vector", "result": result}}
    cluster.answers[("GET", QUERY_PATH)] = answer


def keda_params(**over: Any) -> dict[str, Any]:
    return {"kind": "keda", "prometheus_url": PROM, **over}


def keda_hpa(value: str | None = "1500m", owner: dict[str, Any] | None = None) -> dict[str, Any]:
    """The HPA KEDA makes for ScaledObject llama: its labels copied, itself the controller owner (controllers/keda/hpa.go)."""
    status: dict[str, Any] = {"currentReplicas": 1, "desiredReplicas": 1, "conditions": [
        {"type": "ScalingActive", "status": "False" if value is None else "True", "reason": "FailedGetExternalMetric" if value is None else "ValidMetricFound",
         "message": "unable to get external metric llm/s0-prometheus" if value is None else "ok"}]}
    if value is not None:
        status["currentMetrics"] = [{"type": "External", "external": {
            "metric": {"name": "s0-prometheus", "selector": {"matchLabels": {"scaledobject.keda.sh/name": "llama"}}},
            "current": {"averageValue": value}}}]
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "keda-hpa-llama", "namespace": "llm", "ownerReferences": [owner or SO_OWNER],
                         "labels": {"app.kubernetes.io/managed-by": "kubeinfer.llm", "scaledobject.keda.sh/name": "llama"}},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama-vllm"}, "minReplicas": 1, "maxReplicas": 4},
            "status": status}


SERIES = {"__name__": "vllm:num_requests_waiting", "namespace": "llm", "pod": "llama-vllm-0", "kubeinfer_io_release": "llama"}


def test_keda_verify_reads_the_query_and_kedas_hpa() -> None:
    cluster = make_cluster(keda=True)
    prometheus(cluster, [SERIES])
    run(cluster, **keda_params())
    with pytest.raises(KubeInferError, match=r"ScaledObject llm/llama is not Ready: no conditions yet .*is the KEDA operator running"):
        run(cluster, **keda_params(verify=True))
    with_status(cluster, SO, {"conditions": [{"type": "Ready", "status": "True", "reason": "ScaledObjectReady"}], "hpaName": "keda-hpa-llama"})
    with pytest.raises(KubeInferError, match=r"KEDA has not created its HPA llm/keda-hpa-llama"):
        run(cluster, **keda_params(verify=True))
    cluster.add(keda_hpa(None))
    with pytest.raises(KubeInferError, match=r"keda-hpa-llama has no current value for s0-prometheus .*FailedGetExternalMetric") as info:
        run(cluster, **keda_params(verify=True))
    assert info.value.result["query_value"] == "3"
    cluster.add(keda_hpa("1500m"))
    result = run(cluster, **keda_params(verify=True))
    assert result["conditions"][0]["type"] == "Ready" and result["query_value"] == "3"
    assert result["current_value"] == "1500m" and result["keda_hpa"] == "keda-hpa-llama" and result["desired_replicas"] == 1
    assert not result["changed"] and result["removed"] == []
    # Check mode reads KEDA's HPA too (the role's assertion needs the value), and writes nothing.
    writes = len(cluster.writes())
    assert run(cluster, check_mode=True, **keda_params(verify=True))["current_value"] == "1500m"
    assert len(cluster.writes()) == writes


def test_keda_verify_fails_on_an_empty_query_naming_the_missing_label() -> None:
    cluster = make_cluster(keda=True)
    unlabelled = {k: v for k, v in SERIES.items() if k != "kubeinfer_io_release"}
    prometheus(cluster, [unlabelled])
    with pytest.raises(KubeInferError) as info:
        run(cluster, **keda_params(verify=True))
    msg = info.value.msg
    assert msg.startswith('the KEDA query sum(vllm:num_requests_waiting{namespace="llm",kubeinfer_io_release="llama"}) returns no sample '
                          f"from Prometheus at {PROM} after 0s: "), msg
    assert 'series vllm:num_requests_waiting{namespace="llm"} exist, but none carries the label kubeinfer_io_release' in msg
    assert "podTargetLabels [kubeinfer.io/release]" in msg and "KEDA counts an empty result as 0" in msg
    assert info.value.result["changed"], "the ScaledObject was written; verification failed after"
    prometheus(cluster, [dict(SERIES, kubeinfer_io_release="other")])
    with pytest.raises(KubeInferError, match=r'none has kubeinfer_io_release="llama" \(kubeinfer_io_release is other\)'):
        run(cluster, **keda_params(verify=True))
    prometheus(cluster, [])
    with pytest.raises(KubeInferError, match=r"Prometheus has no series vllm:num_requests_waiting$|Prometheus has no series vllm:num_requests_waiting\. "):
        run(cluster, **keda_params(verify=True))


# -- switching between hpa and keda -----------------------------------------------------------------------------------

def test_hpa_to_keda_deletes_our_hpa_first_and_converges() -> None:
    cluster = make_cluster(keda=True)
    run(cluster)
    assert HPA in cluster.objects
    mark = len(cluster.calls)
    result = run(cluster, diff=True, **keda_params())
    writes = [(c["method"], c["path"]) for c in cluster.calls[mark:] if c["method"] in ("PATCH", "DELETE")]
    assert writes == [("DELETE", HPA), ("PATCH", SO)], "the HPA goes before KEDA's webhook sees the ScaledObject"
    assert result["changed"] and result["removed"] == ["HorizontalPodAutoscaler llm/llama"]
    assert HPA not in cluster.objects and SO in cluster.objects
    writes_before = len(cluster.writes())
    again = run(cluster, **keda_params())
    assert not again["changed"] and again["removed"] == [] and len(cluster.writes()) == writes_before


def test_keda_to_hpa_deletes_our_scaled_object_and_waits_for_kedas_hpa() -> None:
    cluster = make_cluster(keda=True)
    run(cluster, **keda_params())
    cluster.add(keda_hpa())
    # KEDA's finalizer runs, then the garbage collector removes the HPA the ScaledObject owned.
    cluster.on_request.append(lambda method, path: cluster.objects.pop(KEDA_HPA, None) if (method, path) == ("DELETE", SO) else None)
    mark = len(cluster.calls)
    result = run(cluster, verify_timeout=5)
    writes = [(c["method"], c["path"]) for c in cluster.calls[mark:] if c["method"] in ("PATCH", "DELETE")]
    assert writes == [("DELETE", SO), ("PATCH", HPA)]
    assert result["removed"] == ["ScaledObject llm/llama"] and result["changed"]
    hpas = [p for p in cluster.objects if "/horizontalpodautoscalers/" in p]
    assert hpas == [HPA], "exactly one autoscaler on the target afterwards"
    writes_before = len(cluster.writes())
    assert not run(cluster)["changed"] and len(cluster.writes()) == writes_before


def test_keda_to_hpa_without_the_operator_names_the_finalizer() -> None:
    cluster = make_cluster(keda=True)
    run(cluster, **keda_params())
    with_status(cluster, SO, {"hpaName": "keda-hpa-llama"})
    cluster.objects[SO]["metadata"]["finalizers"] = ["finalizer.keda.sh"]
    cluster.answers[("DELETE", SO)] = {"kind": "Status", "status": "Success"}  # the API server only marks it for deletion
    with pytest.raises(KubeInferError, match=r"ScaledObject llm/llama is held by the finalizer finalizer.keda.sh, which only the KEDA operator "
                                             r"removes \(is it running\?\)") as info:
        run(cluster)
    assert HPA not in cluster.objects, "no HPA of ours while KEDA may still drive the target"
    assert info.value.result["removed"] == ["ScaledObject llm/llama"]


def test_the_kept_scaled_objects_own_hpa_is_not_a_conflict() -> None:
    cluster = make_cluster(keda=True)
    run(cluster, **keda_params())
    cluster.add(keda_hpa())
    writes = len(cluster.writes())
    result = run(cluster, **keda_params())
    assert not result["changed"] and result["removed"] == [] and len(cluster.writes()) == writes
    assert result["current_value"] == "1500m"


@pytest.mark.parametrize("kind", ["hpa", "keda"])
def test_a_foreign_autoscaler_of_the_target_is_refused_before_any_write(kind: str) -> None:
    cluster = make_cluster(keda=True)
    cluster.add({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "hand-made", "namespace": "llm"},
                 "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama-vllm"}}})
    cluster.add({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "elsewhere", "namespace": "llm"},
                 "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mistral-vllm"}}})
    over = keda_params() if kind == "keda" else {}
    with pytest.raises(KubeInferError, match=rf"^kind={kind}: Deployment llm/llama-vllm is already scaled by HorizontalPodAutoscaler llm/hand-made, "
                                             r"which kubeinfer.llm does not manage \(no label app.kubernetes.io/managed-by=kubeinfer.llm\)") as info:
        run(cluster, **over)
    assert cluster.writes() == [] and info.value.result["foreign"] == ["HorizontalPodAutoscaler llm/hand-made"]
    del cluster.objects["/apis/autoscaling/v2/namespaces/llm/horizontalpodautoscalers/hand-made"]
    cluster.add({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "theirs", "namespace": "llm"},
                 "spec": {"scaleTargetRef": {"name": "llama-vllm"}}})
    with pytest.raises(KubeInferError, match=r"already scaled by ScaledObject llm/theirs"):
        run(cluster, **over)
    assert cluster.writes() == []


def test_check_mode_switch_sends_only_dry_runs_and_survives_the_webhook() -> None:
    from .fake_api import FakeApiException
    cluster = make_cluster(keda=True)
    run(cluster)
    mark = len(cluster.calls)
    # KEDA's webhook (verifyHpas) still sees the HPA a dry-run delete left in place.
    cluster.answers[("PATCH", SO)] = FakeApiException(403, 'admission webhook "vscaledobject.kb.io" denied the request: the workload '
                                                           "'llama-vllm' of type 'apps/v1.Deployment' is already managed by the hpa 'llama'")
    result = run(cluster, check_mode=True, diff=True, **keda_params())
    writes = [c for c in cluster.calls[mark:] if c["method"] in ("PATCH", "DELETE", "POST")]
    assert [(c["method"], c["query"].get("dryRun")) for c in writes] == [("DELETE", "All"), ("PATCH", "All")]
    assert HPA in cluster.objects and SO not in cluster.objects
    assert result["changed"] and result["removed"] == ["HorizontalPodAutoscaler llm/llama"]
    assert result["hpa"]["kind"] == "ScaledObject" and "which a real run deletes first" in result["warnings"][0]
    # Any other refusal is an error.
    cluster.answers[("PATCH", SO)] = FakeApiException(403, 'admission webhook "vscaledobject.kb.io" denied the request: something else')
    with pytest.raises(KubeInferError, match="something else"):
        run(cluster, check_mode=True, **keda_params())
