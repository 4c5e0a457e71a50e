# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The metric-name scanner and the vLLM metric detection, on real vLLM expositions."""
from __future__ import annotations

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._metrics import (
    QUEUE_METRIC_CANDIDATES,
    detect_metric,
    detect_vllm_metrics,
    metric_names,
)

from .fixture_text import fixture


# -- scanner ----------------------------------------------------------------------------------------
def test_names_of_a_vllm_exposition() -> None:
    names = metric_names(fixture("vllm_metrics.txt"))
    assert {"vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
            "process_resident_memory_bytes", "vllm:request_success_total"} <= names
    # A histogram is found by its family name and by each sample name.
    assert {"vllm:e2e_request_latency_seconds", "vllm:e2e_request_latency_seconds_bucket",
            "vllm:e2e_request_latency_seconds_count", "vllm:e2e_request_latency_seconds_sum"} <= names
    assert not any("{" in n or " " in n for n in names)


def test_openmetrics_families_and_suffixed_samples() -> None:
    text = (
        "# TYPE requests counter\n"
        "# UNIT requests requests\n"
        "requests_total 5\n"
        "requests_created 1.7e9\n"
        "# TYPE rpc summary\n"
        'rpc{quantile="0.5"} 0.1\n'
        "rpc_sum 10\n"
        "rpc_count 100\n"
        "# TYPE latency histogram\n"
        "# HELP idle a histogram with no observation yet\n"
        "# EOF\n"
    )
    assert metric_names(text) == {"requests", "requests_total", "requests_created", "rpc", "rpc_sum", "rpc_count", "latency", "idle"}


def test_label_values_and_spacing_are_not_names() -> None:
    text = (
        'm{path="C:\\\\dir",quote="say \\"hi\\" vllm:num_requests_waiting 1",} 1 1712345678000\n'
        'm { a = "1" , b="x,y}" }  NaN\n'
        '   untyped_metric 4e-3\n'
        "\n"
        "# a comment vllm:num_requests_waiting\n"
    )
    assert metric_names(text) == {"m", "untyped_metric"}


@pytest.mark.parametrize("text", ["<html>Not Found</html>\n", "9m 1\n", "m-x 1\n"])
def test_a_line_that_is_no_sample_is_named(text: str) -> None:
    with pytest.raises(KubeInferError, match="line 2 is not a sample") as info:
        metric_names("a 1\n" + text)
    assert info.value.result["line"] == 2


# -- detection --------------------------------------------------------------------------------------
def test_detect_queue_metric_colon_and_underscore_forms() -> None:
    assert detect_vllm_metrics(fixture("vllm_metrics.txt"))["queue"] == "vllm:num_requests_waiting"
    assert detect_vllm_metrics(fixture("vllm_metrics_underscore.txt"))["queue"] == "vllm_num_requests_waiting"


def test_detect_queue_metric_missing_lists_vllm_metrics() -> None:
    text = fixture("vllm_metrics.txt").replace("num_requests_waiting", "num_requests_queued")
    with pytest.raises(KubeInferError, match="vLLM metrics present: .*vllm:num_requests_queued") as info:
        detect_vllm_metrics(text)
    assert "vllm:kv_cache_usage_perc" in info.value.result["vllm_metrics"]


def test_detect_metric_on_non_vllm_endpoint() -> None:
    with pytest.raises(KubeInferError, match=r"no vLLM metrics at all .*2 other metrics, e.g. go_goroutines, up"):
        detect_metric(metric_names("go_goroutines 12\nup 1\n"), QUEUE_METRIC_CANDIDATES)
    with pytest.raises(KubeInferError, match="no metrics at all"):
        detect_metric(metric_names(""), QUEUE_METRIC_CANDIDATES)


def test_detect_metric_order_and_declared_family() -> None:
    names = metric_names("# TYPE b gauge\na 1\n")
    assert detect_metric(names, ["b", "a"]) == "b"  # declared by # TYPE, no samples yet
    assert detect_metric(names, ["c", "a"]) == "a"


def test_detect_vllm_metrics() -> None:
    assert detect_vllm_metrics(fixture("vllm_metrics.txt")) == {
        "queue": "vllm:num_requests_waiting",
        "running": "vllm:num_requests_running",
        "e2e_latency": "vllm:e2e_request_latency_seconds",
        "kv_cache": "vllm:kv_cache_usage_perc",
    }
    old = fixture("vllm_metrics.txt").replace("kv_cache_usage_perc", "gpu_cache_usage_perc").replace("num_requests_running", "x")
    detected = detect_vllm_metrics(old)
    assert detected["kv_cache"] == "vllm:gpu_cache_usage_perc"
    assert detected["running"] is None
