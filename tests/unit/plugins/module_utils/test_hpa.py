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
    assert result["api_requests"] == {"list": 1, "get": 1, "apply": 1}


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
    ({"min_replicas": 0}, "min_replicas: must be at least 1 with kind=hpa, got 0; scale to zero needs kind=keda"),
    ({"min_replicas": 3, "max_replicas": 2}, r"max_replicas: must be at least 1 and at least min_replicas \(3\), got 2"),
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


def test_keda_verify_waits_for_ready() -> None:
    cluster = make_cluster(keda=True)
    run(cluster, kind="keda", prometheus_url="http://p:9090")
    with pytest.raises(KubeInferError, match=r"ScaledObject llm/llama to be Ready: conditions: no conditions yet .*is the KEDA operator running"):
        run(cluster, kind="keda", prometheus_url="http://p:9090", verify=True)
    with_status(cluster, SO, {"conditions": [{"type": "Ready", "status": "True", "reason": "ScaledObjectReady"}]})
    assert run(cluster, kind="keda", prometheus_url="http://p:9090", verify=True)["conditions"][0]["type"] == "Ready"
