# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Grafana dashboard of a release, built from the metric names its pod shows."""
from __future__ import annotations

import json

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils._dashboard import dashboard_configmap, dashboard_names, grafana_dashboard
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._metrics import detect_vllm_metrics

from .fixture_text import fixture


def test_grafana_dashboard_uses_detected_names() -> None:
    names = detect_vllm_metrics(fixture("vllm_metrics_underscore.txt"))
    board = grafana_dashboard(names, "llama")
    json.dumps(board)  # serializable
    assert board["schemaVersion"] == 39
    assert board["uid"] == "kubeinfer-vllm"
    exprs = {p["title"]: p["targets"][0]["expr"] for p in board["panels"]}
    assert exprs == {
        "Queue depth (waiting requests)": 'sum by (pod) (vllm_num_requests_waiting{kubeinfer_io_release="llama"})',
        "Running requests": 'sum by (pod) (vllm_num_requests_running{kubeinfer_io_release="llama"})',
        "End-to-end request latency p95":
            'histogram_quantile(0.95, sum by (le) (rate(vllm_e2e_request_latency_seconds_bucket{kubeinfer_io_release="llama"}[5m])))',
        "KV cache usage": 'avg by (pod) (vllm_kv_cache_usage_perc{kubeinfer_io_release="llama"})',
        "GPU utilization (DCGM)": "avg by (Hostname, gpu) (DCGM_FI_DEV_GPU_UTIL)",
    }
    assert [p["id"] for p in board["panels"]] == [1, 2, 3, 4, 5]
    assert [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in board["panels"]] == [(0, 0), (12, 0), (0, 8), (12, 8), (0, 16)]
    units = {p["title"]: p["fieldConfig"]["defaults"]["unit"] for p in board["panels"]}
    assert units["KV cache usage"] == "percentunit"
    assert units["End-to-end request latency p95"] == "s"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in board["panels"])


def test_grafana_dashboard_defaults_and_dropped_panels() -> None:
    board = grafana_dashboard({"kv_cache": None, "e2e_latency": None}, title="t", uid="u")
    assert [p["title"] for p in board["panels"]] == ["Queue depth (waiting requests)", "Running requests", "GPU utilization (DCGM)"]
    assert board["panels"][0]["targets"][0]["expr"] == "sum by (pod) (vllm:num_requests_waiting)"
    assert (board["title"], board["uid"]) == ("t", "u")


@pytest.mark.parametrize("names, problem", [
    ({"latency": "x"}, "Unknown dashboard metric keys: latency"),
    ({"queue": "bad name"}, "Invalid metric name for queue"),
    ({"queue": None, "running": None, "e2e_latency": None, "kv_cache": None, "gpu_util": None}, "every panel"),
])
def test_grafana_dashboard_invalid(names: dict, problem: str) -> None:
    with pytest.raises(KubeInferError, match=problem):
        grafana_dashboard(names)


def test_dashboard_names_do_not_depend_on_the_request_history() -> None:
    before_first_request = {"queue": "vllm:num_requests_waiting", "running": "vllm:num_requests_running",
                            "e2e_latency": None, "kv_cache": None}
    after = dict(before_first_request, e2e_latency="vllm:e2e_request_latency_seconds", kv_cache="vllm:kv_cache_usage_perc")
    assert dashboard_names(before_first_request) == dashboard_names(after)
    old = dict(after, kv_cache="vllm:gpu_cache_usage_perc")
    assert dashboard_names(old)["kv_cache"] == "vllm:gpu_cache_usage_perc"


def test_dashboard_configmap_is_labelled_for_the_sidecar() -> None:
    board = grafana_dashboard(release="llama")
    cm = dashboard_configmap("llama", "monitoring", board)
    assert cm["metadata"]["name"] == "llama-vllm-dashboard" and cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"] == {"grafana_dashboard": "1", "app.kubernetes.io/managed-by": "kubeinfer.llm", "kubeinfer.io/release": "llama"}
    assert json.loads(cm["data"]["llama-vllm.json"]) == board
