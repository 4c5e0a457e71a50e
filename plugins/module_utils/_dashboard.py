# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Grafana dashboard of a vLLM release and the ConfigMap that ships it. Private to this collection: the interface may change without notice."""
from __future__ import annotations

import json
from typing import Any, Mapping

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import RELEASE_POD_LABEL, managed_labels
from ansible_collections.kubeinfer.llm.plugins.module_utils._metrics import (
    E2E_LATENCY_METRIC_CANDIDATES,
    KV_CACHE_METRIC_CANDIDATES,
    QUEUE_METRIC_CANDIDATES,
    RUNNING_METRIC_CANDIDATES,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._promql import METRIC_NAME, RELEASE_SERIES_LABEL, selector

DCGM_GPU_UTIL_METRIC = "DCGM_FI_DEV_GPU_UTIL"
DASHBOARD_LABEL = "grafana_dashboard"  # the label the Grafana sidecar of kube-prometheus-stack watches

# key, title, query ({m}: the series selector), series name suffix, legend, unit, maximum, filtered by release
_PANELS = (
    ("queue", "Queue depth (waiting requests)", "sum by (pod) ({m})", "", "{{pod}}", "short", None, True),
    ("running", "Running requests", "sum by (pod) ({m})", "", "{{pod}}", "short", None, True),
    ("e2e_latency", "End-to-end request latency p95", "histogram_quantile(0.95, sum by (le) (rate({m}[5m])))", "_bucket", "p95", "s", None, True),
    ("kv_cache", "KV cache usage", "avg by (pod) ({m})", "", "{{pod}}", "percentunit", 1, True),
    # The DCGM exporter's series carry the exporter pod's labels, not the workload's: no release filter.
    ("gpu_util", "GPU utilization (DCGM)", "avg by (Hostname, gpu) ({m})", "", "{{Hostname}} GPU {{gpu}}", "percent", 100, False),
)


def grafana_dashboard(
    metric_names: Mapping[str, str | None] | None = None,
    release: str | None = None,
    title: str = "kubeinfer.llm vLLM",
    uid: str = "kubeinfer-vllm",
) -> dict[str, Any]:
    """A Grafana dashboard (JSON model, schemaVersion 39) for one vLLM release.

    ``metric_names`` has the keys of _metrics.detect_vllm_metrics() plus ``gpu_util``; a missing key
    takes the current vLLM name (or DCGM_FI_DEV_GPU_UTIL), a key set to None drops its panel. Panels:
    queue depth and running requests per pod, end-to-end latency p95 from the histogram buckets, KV
    cache usage per pod (0-1, shown as percent) and GPU utilization per node and GPU from the DCGM
    exporter. The vLLM queries are filtered to ``release`` when given. The data source is a
    ``datasource`` variable.
    """
    names: dict[str, str | None] = {
        "queue": QUEUE_METRIC_CANDIDATES[0],
        "running": RUNNING_METRIC_CANDIDATES[0],
        "e2e_latency": E2E_LATENCY_METRIC_CANDIDATES[0],
        "kv_cache": KV_CACHE_METRIC_CANDIDATES[0],
        "gpu_util": DCGM_GPU_UTIL_METRIC,
    }
    unknown = set(metric_names or {}) - set(names)
    if unknown:
        raise KubeInferError(f"Unknown dashboard metric keys: {', '.join(sorted(unknown))}; known: {', '.join(names)}")
    names.update(metric_names or {})
    for key, value in names.items():
        if value is not None and not METRIC_NAME.fullmatch(value):
            raise KubeInferError(f"Invalid metric name for {key}: {value!r}")
    release_filter = [(RELEASE_SERIES_LABEL, "=", release)] if release else []
    panels: list[dict[str, Any]] = []
    for key, panel_title, template, suffix, legend, unit, maximum, filtered in _PANELS:
        metric = names[key]
        if metric is None:
            continue
        series = selector(metric + suffix, *(release_filter if filtered else []))
        position = len(panels)
        defaults: dict[str, Any] = {"unit": unit, "min": 0}
        if maximum is not None:
            defaults["max"] = maximum
        panels.append({
            "id": position + 1,
            "type": "timeseries",
            "title": panel_title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (position % 2), "y": 8 * (position // 2)},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "none"}},
            "targets": [{
                "refId": "A",
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": template.replace("{m}", series),
                "legendFormat": legend,
            }],
        })
    if not panels:
        raise KubeInferError("grafana_dashboard: every panel was switched off")
    return {
        "uid": uid,
        "title": title,
        "tags": ["kubeinfer", "vllm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "options": [],
        }]},
        "annotations": {"list": []},
        "panels": panels,
    }


def dashboard_names(detected: Mapping[str, Any]) -> dict[str, str]:
    """The metric names of the dashboard: those the pod shows, and for the ones it does not show yet
    (a latency histogram has no series before the first request) the current name in the pod's style
    (``vllm:`` or ``vllm_``), so that the dashboard does not change with the pod's request history."""
    underscore = str(detected["queue"]).startswith("vllm_")
    defaults = {"running": RUNNING_METRIC_CANDIDATES, "e2e_latency": E2E_LATENCY_METRIC_CANDIDATES, "kv_cache": KV_CACHE_METRIC_CANDIDATES}
    names = {"queue": str(detected["queue"])}
    for key, candidates in defaults.items():
        names[key] = detected.get(key) or candidates[1 if underscore else 0]
    return names


def dashboard_configmap_name(release: str) -> str:
    return f"{release}-vllm-dashboard"


def dashboard_configmap(release: str, namespace: str, dashboard: dict[str, Any]) -> dict[str, Any]:
    """The ConfigMap that ships the release's dashboard to Grafana's sidecar."""
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": dashboard_configmap_name(release), "namespace": namespace,
                     "labels": managed_labels(**{DASHBOARD_LABEL: "1", RELEASE_POD_LABEL: release})},
        "data": {f"{release}-vllm.json": json.dumps(dashboard, indent=1, sort_keys=True)},
    }
