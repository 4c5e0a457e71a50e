# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import json
import math
import os
import re

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._metrics import (
    RELEASE_SERIES_LABEL,
    adapter_rule,
    adapter_rules,
    detect_metric,
    detect_queue_metric,
    detect_vllm_metrics,
    grafana_dashboard,
    merge_adapter_rules,
    metric_names,
    parse_adapter_rule,
    parse_exposition,
    prometheus_label_name,
    release_selector_labels,
    sample_values,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def fixture(name: str) -> str:
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return f.read()


# -- parser -----------------------------------------------------------------------------------------
def test_parse_vllm_metrics() -> None:
    families = parse_exposition(fixture("vllm_metrics.txt"))
    waiting = families["vllm:num_requests_waiting"]
    assert waiting["type"] == "gauge"
    assert waiting["help"] == "Number of requests waiting to be processed."
    assert waiting["samples"] == [{
        "name": "vllm:num_requests_waiting",
        "labels": {"engine": "0", "model_name": "meta-llama/Llama-3.1-8B-Instruct"},
        "value": 7.0,
        "timestamp": None,
    }]
    histogram = families["vllm:e2e_request_latency_seconds"]
    assert histogram["type"] == "histogram"
    names = {s["name"] for s in histogram["samples"]}
    assert names == {"vllm:e2e_request_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_count",
                     "vllm:e2e_request_latency_seconds_sum"}
    buckets = [s for s in histogram["samples"] if s["name"].endswith("_bucket")]
    assert len(buckets) == 22
    assert buckets[-1]["labels"]["le"] == "+Inf"
    assert buckets[-1]["value"] == 992.0
    assert families["vllm:request_success_total"]["type"] == "counter"
    assert len(families["vllm:request_success_total"]["samples"]) == 3
    assert families["vllm:e2e_request_latency_seconds_created"]["type"] == "gauge"
    assert families["process_resident_memory_bytes"]["samples"][0]["value"] == 2.461925376e09


def test_label_escapes_spaces_timestamps_and_special_values() -> None:
    text = (
        '# TYPE m gauge\n'
        'm{path="C:\\\\dir",quote="say \\"hi\\"",nl="a\\nb",} 1 1712345678000\n'
        'm { a = "1" , b="x,y}" }  NaN\n'
        'm{a="2"} +Inf\n'
        'm{a="3"} -Inf\n'
        'untyped_metric 4e-3\n'
    )
    families = parse_exposition(text)
    samples = families["m"]["samples"]
    assert samples[0]["labels"] == {"path": "C:\\dir", "quote": 'say "hi"', "nl": "a\nb"}
    assert samples[0]["timestamp"] == 1712345678000
    assert samples[1]["labels"] == {"a": "1", "b": "x,y}"}
    assert math.isnan(samples[1]["value"])
    assert samples[2]["value"] == math.inf
    assert samples[3]["value"] == -math.inf
    assert families["untyped_metric"] == {"name": "untyped_metric", "type": "untyped", "help": "", "samples": [
        {"name": "untyped_metric", "labels": {}, "value": 0.004, "timestamp": None}]}


def test_openmetrics_counter_and_summary_suffixes() -> None:
    text = (
        "# TYPE requests counter\n"
        "requests_total 5\n"
        "requests_created 1.7e9\n"
        "# TYPE rpc summary\n"
        'rpc{quantile="0.5"} 0.1\n'
        "rpc_sum 10\n"
        "rpc_count 100\n"
        "# EOF\n"
    )
    families = parse_exposition(text)
    assert [s["name"] for s in families["requests"]["samples"]] == ["requests_total", "requests_created"]
    assert [s["name"] for s in families["rpc"]["samples"]] == ["rpc", "rpc_sum", "rpc_count"]
    assert set(families) == {"requests", "rpc"}


def test_help_unescaping() -> None:
    families = parse_exposition("# HELP x line one\\nline two \\\\ end\n# TYPE x gauge\nx 1\n")
    assert families["x"]["help"] == "line one\nline two \\ end"


@pytest.mark.parametrize("text, problem", [
    ("m{a=\"1\" 1\n", "expected ',' or '}'"),
    ("m{a=1} 1\n", "expected '\"'"),
    ("m{a=\"1\"}\n", "expected whitespace before the value"),
    ("m\n", "expected whitespace before the value"),
    ("m one\n", "invalid sample value 'one'"),
    ("m 1_000\n", "invalid sample value"),
    ("m 1 2 3\n", "expected a value and an optional timestamp"),
    ("m 1 soon\n", "invalid timestamp"),
    ("m{a=\"x\\q\"} 1\n", "invalid escape"),
    ("m{a=\"open} 1\n", "unterminated label value"),
    ("m{a=\"1\",a=\"2\"} 1\n", "duplicate label 'a'"),
    ("9m 1\n", "expected a metric name"),
    ("# TYPE m gauge\n# TYPE m counter\n", "second # TYPE line"),
    ("# TYPE m bogus\n", "unknown metric type"),
    ("# HELP 9bad text\n", "invalid metric name"),
    ("<html>Not Found</html>\n", "expected a metric name"),
])
def test_malformed(text: str, problem: str) -> None:
    with pytest.raises(KubeInferError, match=re.escape(problem)):
        parse_exposition(text)


def test_malformed_reports_line_number() -> None:
    with pytest.raises(KubeInferError, match="line 3") as info:
        parse_exposition("a 1\nb 2\nc{ 3\n")
    assert info.value.result["line"] == 3


def test_metric_names_and_sample_values() -> None:
    text = fixture("vllm_metrics.txt")
    names = metric_names(text)
    assert "vllm:e2e_request_latency_seconds" in names
    assert "vllm:e2e_request_latency_seconds_bucket" in names
    assert names == sorted(names)
    assert sample_values(text, "vllm:num_requests_waiting") == [7.0]
    assert sample_values(text, "vllm:request_success_total", {"finished_reason": "length"}) == [42.0]
    assert sample_values(text, "vllm:request_success_total", {"finished_reason": "nope"}) == []


# -- detection --------------------------------------------------------------------------------------
def test_detect_queue_metric_colon_form() -> None:
    assert detect_queue_metric(fixture("vllm_metrics.txt")) == "vllm:num_requests_waiting"


def test_detect_queue_metric_underscore_form() -> None:
    assert detect_queue_metric(fixture("vllm_metrics_underscore.txt")) == "vllm_num_requests_waiting"


def test_detect_queue_metric_missing_lists_vllm_metrics() -> None:
    text = fixture("vllm_metrics.txt").replace("num_requests_waiting", "num_requests_queued")
    with pytest.raises(KubeInferError, match="vLLM metrics present: .*vllm:num_requests_queued") as info:
        detect_queue_metric(text)
    assert "vllm:kv_cache_usage_perc" in info.value.result["vllm_metrics"]


def test_detect_metric_on_non_vllm_endpoint() -> None:
    with pytest.raises(KubeInferError, match=r"no vLLM metrics at all .*2 other metrics, e.g. go_goroutines, up"):
        detect_metric("go_goroutines 12\nup 1\n", ["vllm:num_requests_waiting"])
    with pytest.raises(KubeInferError, match="no metrics at all"):
        detect_metric("", ["vllm:num_requests_waiting"])


def test_detect_metric_order_and_declared_family() -> None:
    text = "# TYPE b gauge\na 1\n"
    assert detect_metric(text, ["b", "a"]) == "b"  # declared by # TYPE, no samples yet
    assert detect_metric(text, ["c", "a"]) == "a"
    with pytest.raises(KubeInferError):
        detect_metric(text, [])


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


# -- adapter rules ----------------------------------------------------------------------------------
def test_adapter_rule_is_per_pod_and_release_filtered() -> None:
    rules = adapter_rules("vllm:num_requests_waiting", "vllm_queue_depth", ["llama"])
    assert rules == [{
        "seriesQuery": '{__name__="vllm:num_requests_waiting",namespace!="",pod!="",kubeinfer_io_release=~"llama"}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "^vllm:num_requests_waiting$", "as": "vllm_queue_depth"},
        "metricsQuery": 'sum(<<.Series>>{<<.LabelMatchers>>,kubeinfer_io_release=~"llama"}) by (<<.GroupBy>>)',
    }]


def test_adapter_rule_lists_releases_sorted_and_escaped() -> None:
    rule = adapter_rule("vllm:num_requests_waiting", "vllm_queue_depth", ["b", "a.v2", "b"])
    assert rule["metricsQuery"] == 'sum(<<.Series>>{<<.LabelMatchers>>,kubeinfer_io_release=~"a\\\\.v2|b"}) by (<<.GroupBy>>)'
    # PromQL unquotes the string to a\.v2|b, a regex that does not match "aXv2".
    assert re.fullmatch(r"a\.v2|b", "a.v2") and not re.fullmatch(r"a\.v2|b", "aXv2")
    assert parse_adapter_rule(rule) == {"custom_metric_name": "vllm_queue_depth",
                                        "metric_names": ["vllm:num_requests_waiting"], "releases": ["a.v2", "b"]}


def test_adapter_rule_with_candidates_matches_each_form() -> None:
    rule = adapter_rule(["vllm_num_requests_waiting", "vllm:num_requests_waiting"], releases=["a"])
    assert rule["seriesQuery"].startswith('{__name__=~"vllm:num_requests_waiting|vllm_num_requests_waiting",')
    pattern = re.compile(rule["name"]["matches"])
    assert pattern.match("vllm:num_requests_waiting") and pattern.match("vllm_num_requests_waiting")
    assert not pattern.match("vllm_num_requests_waiting_total")
    assert parse_adapter_rule(rule)["metric_names"] == ["vllm:num_requests_waiting", "vllm_num_requests_waiting"]


def test_adapter_rule_name_regex_matches_only_the_metric() -> None:
    rule = adapter_rule("vllm_num_requests_waiting", releases=["a"])
    pattern = re.compile(rule["name"]["matches"])
    assert pattern.match("vllm_num_requests_waiting")
    assert not pattern.match("vllm_num_requests_waiting_total")
    assert not pattern.match("xvllm_num_requests_waiting")
    assert rule["name"]["as"] == "vllm_queue_depth"
    assert f'{RELEASE_SERIES_LABEL}=~"a"' in rule["seriesQuery"]


@pytest.mark.parametrize("args, problem", [
    (("vllm:num_requests_waiting", "vllm_queue_depth", []), "needs at least one release"),
    (("vllm:num_requests_waiting", "vllm_queue_depth", ["Bad_Name"]), "Invalid release name"),
    (("vllm:num_requests_waiting", "vllm_queue_depth", ['a"|.*']), "Invalid release name"),
    (("bad name", "vllm_queue_depth", ["x"]), "Invalid Prometheus metric name"),
    (([], "vllm_queue_depth", ["x"]), "at least one Prometheus metric name"),
    (("vllm:num_requests_waiting", "Queue-Depth", ["x"]), "Invalid custom metric name"),
])
def test_adapter_rules_invalid(args: tuple, problem: str) -> None:
    with pytest.raises(KubeInferError, match=problem):
        adapter_rules(*args)


def test_prometheus_label_name() -> None:
    assert prometheus_label_name("kubeinfer.io/release") == "kubeinfer_io_release"
    assert prometheus_label_name("app.kubernetes.io/instance") == "app_kubernetes_io_instance"
    assert prometheus_label_name("already_ok") == "already_ok"
    assert prometheus_label_name("9lives") == "_9lives"
    assert RELEASE_SERIES_LABEL == prometheus_label_name("kubeinfer.io/release")


OTHER = {"seriesQuery": '{__name__=~"^container_.*",namespace!=""}', "name": {"matches": "^container_(.*)$", "as": "${1}"},
         "resources": {"template": "<<.Resource>>"}, "metricsQuery": "sum(<<.Series>>) by (<<.GroupBy>>)"}
WAITING = "vllm:num_requests_waiting"


def test_merge_adds_releases_to_the_one_rule_per_name() -> None:
    merged = merge_adapter_rules([OTHER], WAITING, "vllm_queue_depth", "b")
    assert merged == [OTHER, adapter_rule(WAITING, "vllm_queue_depth", ["b"])]
    merged = merge_adapter_rules(merged, WAITING, "vllm_queue_depth", "a")
    assert merged == [OTHER, adapter_rule(WAITING, "vllm_queue_depth", ["a", "b"])]
    # Idempotent: merging again changes nothing.
    assert merge_adapter_rules(merged, WAITING, "vllm_queue_depth", "a") == merged
    # Another custom name gets its own rule, appended; the first one keeps its place.
    running = merge_adapter_rules(merged, "vllm:num_requests_running", "vllm_running", "a")
    assert running == merged + [adapter_rule("vllm:num_requests_running", "vllm_running", ["a"])]


def test_merge_unregisters_and_drops_the_empty_rule() -> None:
    rules = [adapter_rule(WAITING, "vllm_queue_depth", ["a", "b"]), OTHER]
    once = merge_adapter_rules(rules, None, "vllm_queue_depth", "a", present=False)
    assert once == [adapter_rule(WAITING, "vllm_queue_depth", ["b"]), OTHER]
    assert merge_adapter_rules(once, None, "vllm_queue_depth", "a", present=False) == once
    assert merge_adapter_rules(once, None, "vllm_queue_depth", "b", present=False) == [OTHER]


def test_merge_reads_an_equality_filter_as_one_release() -> None:
    old = dict(adapter_rule(WAITING, "vllm_queue_depth", ["a"]))
    old["seriesQuery"] = old["seriesQuery"].replace('=~"a"', '="a"')
    assert merge_adapter_rules([old], WAITING, "vllm_queue_depth", "b") == [adapter_rule(WAITING, "vllm_queue_depth", ["a", "b"])]


def test_merge_rejects_a_foreign_rule_with_the_same_name() -> None:
    foreign = dict(OTHER, name={"matches": "^x$", "as": "vllm_queue_depth"})
    with pytest.raises(KubeInferError, match="already has a rule that produces the custom metric 'vllm_queue_depth' without") as info:
        merge_adapter_rules([foreign], WAITING, "vllm_queue_depth", "a")
    assert info.value.result["conflicting_rule"] == foreign


def test_merge_rejects_another_source_metric_for_shared_name() -> None:
    rules = [adapter_rule(WAITING, "vllm_queue_depth", ["a"])]
    with pytest.raises(KubeInferError, match="maps vllm:num_requests_waiting for the releases a, but release 'b' exposes vllm_num_requests"):
        merge_adapter_rules(rules, "vllm_num_requests_waiting", "vllm_queue_depth", "b")
    # The only registered release may switch its source metric (an upgraded vLLM).
    assert merge_adapter_rules(rules, "vllm_num_requests_waiting", "vllm_queue_depth", "a") == [
        adapter_rule("vllm_num_requests_waiting", "vllm_queue_depth", ["a"])]


def test_merge_needs_a_metric_to_register_and_a_valid_release() -> None:
    with pytest.raises(KubeInferError, match="needs the source metric"):
        merge_adapter_rules([], None, "vllm_queue_depth", "a")
    with pytest.raises(KubeInferError, match="Invalid release name"):
        merge_adapter_rules([], WAITING, "vllm_queue_depth", "A")


def test_parse_adapter_rule_ignores_foreign_rules() -> None:
    assert parse_adapter_rule(OTHER) is None
    assert parse_adapter_rule("not a rule") is None  # type: ignore[arg-type]


# -- grafana ----------------------------------------------------------------------------------------
def test_grafana_dashboard_uses_detected_names() -> None:
    names = detect_vllm_metrics(fixture("vllm_metrics_underscore.txt"))
    board = grafana_dashboard(names, release_selector_labels("llama"))
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
