# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""metrics_adapter and inference_hpa through AnsibleModule: argument specs, defaults, check mode and fail_json."""
from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from ansible.module_utils import basic
from ansible.module_utils.common.text.converters import to_bytes

from ansible_collections.kubeinfer.llm.plugins.module_utils import _module
from ansible_collections.kubeinfer.llm.plugins.modules import inference_hpa, metrics_adapter

from ..module_utils.fake_cluster import FakeCluster, metric_list


def run_module(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], module: Any, cluster: FakeCluster,
               args: dict[str, Any], check_mode: bool = False) -> dict[str, Any]:
    module_args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=True)
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": module_args})))
    monkeypatch.setattr(_module, "build_api_client", lambda params: cluster)
    with pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


def adapter_cluster() -> FakeCluster:
    cluster = FakeCluster()
    cluster.add({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "llama-0", "namespace": "llm", "labels": {"kubeinfer.io/release": "llama"}},
                 "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
    cluster.add({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "prometheus-adapter", "namespace": "monitoring"},
                 "spec": {"template": {"spec": {
                     "containers": [{"name": "adapter", "args": ["--config=/etc/adapter/config.yaml"],
                                     "volumeMounts": [{"name": "config", "mountPath": "/etc/adapter"}]}],
                     "volumes": [{"name": "config", "configMap": {"name": "prometheus-adapter"}}]}}}})
    cluster.add({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1beta1.custom.metrics.k8s.io"},
                 "spec": {"service": {"name": "prometheus-adapter", "namespace": "monitoring"}},
                 "status": {"conditions": [{"type": "Available", "status": "True"}]}})
    cluster.add({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "prometheus-adapter", "namespace": "monitoring"},
                 "data": {"config.yaml": "rules: []\n"}})
    cluster.answers[("GET", "/apis/custom.metrics.k8s.io/v1beta1/namespaces/llm/pods/*/vllm_queue_depth")] = \
        lambda query: metric_list({"llama-0": "0"})
    return cluster


def test_metrics_adapter_module(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = adapter_cluster()
    args = {"release": "llama", "namespace": "llm", "metric_name": "vllm:num_requests_waiting"}
    result = run_module(monkeypatch, capsys, metrics_adapter, cluster, args)
    assert result["changed"] and result["restarted"] and result["served"] == {"llama-0": "0"}
    assert result["custom_metric_name"] == "vllm_queue_depth"
    text = cluster.objects["/api/v1/namespaces/monitoring/configmaps/prometheus-adapter"]["data"]["config.yaml"]
    assert yaml.safe_load(text)["rules"][0]["name"]["as"] == "vllm_queue_depth"
    again = run_module(monkeypatch, capsys, metrics_adapter, cluster, args)
    assert not again["changed"]


def test_metrics_adapter_module_fails_with_the_partial_result(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = adapter_cluster()
    cluster.answers[("GET", "/apis/custom.metrics.k8s.io/v1beta1/namespaces/llm/pods/*/vllm_queue_depth")] = lambda query: metric_list({})
    cluster.objects["/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.custom.metrics.k8s.io"]["status"]["conditions"] = [
        {"type": "Available", "status": "False", "reason": "FailedDiscoveryCheck", "message": "no response"}]
    args = {"release": "llama", "namespace": "llm", "metric_name": "vllm:num_requests_waiting", "verify_timeout": 0}
    result = run_module(monkeypatch, capsys, metrics_adapter, cluster, args)
    assert result["failed"] and result["msg"].endswith("APIService v1beta1.custom.metrics.k8s.io not Available: FailedDiscoveryCheck: no response")
    assert result["configmap_changed"] is True and "api_requests" in result


def hpa_cluster() -> FakeCluster:
    cluster = FakeCluster()
    cluster.add({"apiVersion": "apps/v1", "kind": "Deployment",
                 "metadata": {"name": "llama-vllm", "namespace": "llm", "labels": {"app.kubernetes.io/instance": "llama"}}, "spec": {}})
    return cluster


def test_inference_hpa_module_defaults(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = hpa_cluster()
    args = {"release": "llama", "namespace": "llm", "max_replicas": 3, "startup_budget_seconds": 400, "verify": False,
            "scale_down": {"percent": 50}}
    result = run_module(monkeypatch, capsys, inference_hpa, cluster, args)
    spec = cluster.objects["/apis/autoscaling/v2/namespaces/llm/horizontalpodautoscalers/llama"]["spec"]
    assert spec["metrics"][0]["pods"]["target"]["averageValue"] == "5"
    policies = [{"type": "Percent", "value": 50, "periodSeconds": 60}]
    assert spec["behavior"]["scaleDown"] == {"stabilizationWindowSeconds": 400, "selectPolicy": "Max", "policies": policies}
    assert spec["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert result["scale_down_window_source"] == "derived from startup_budget_seconds"


def test_inference_hpa_module_rejects_a_short_window(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = hpa_cluster()
    args = {"release": "llama", "namespace": "llm", "max_replicas": 3, "startup_budget_seconds": 400,
            "scale_down": {"stabilization_window_seconds": 60}}
    result = run_module(monkeypatch, capsys, inference_hpa, cluster, args, check_mode=True)
    assert result["failed"] and "scale_down.stabilization_window_seconds=60 is below the model load time" in result["msg"]
    assert cluster.writes() == []


def test_inference_hpa_module_absent_needs_no_deployment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_module(monkeypatch, capsys, inference_hpa, FakeCluster(), {"release": "llama", "namespace": "llm", "state": "absent"})
    assert not result["changed"] and result["hpa"] is None
