# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one Prometheus Adapter rule per custom metric name: build, read back, merge."""
from __future__ import annotations

import re

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils._adapter_rules import adapter_rule, merge_adapter_rules, parse_adapter_rule, rule_for
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._promql import RELEASE_SERIES_LABEL


def test_adapter_rule_is_per_pod_and_release_filtered() -> None:
    rule = adapter_rule("vllm:num_requests_waiting", "vllm_queue_depth", ["llama"])
    assert rule == {
        "seriesQuery": '{__name__="vllm:num_requests_waiting",namespace!="",pod!="",kubeinfer_io_release=~"llama"}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "^vllm:num_requests_waiting$", "as": "vllm_queue_depth"},
        "metricsQuery": 'sum(<<.Series>>{<<.LabelMatchers>>,kubeinfer_io_release=~"llama"}) by (<<.GroupBy>>)',
    }


def test_adapter_rule_lists_releases_sorted_and_escaped() -> None:
    rule = adapter_rule("vllm:num_requests_waiting", "vllm_queue_depth", ["b", "a.v2", "b"])
    assert rule["metricsQuery"] == 'sum(<<.Series>>{<<.LabelMatchers>>,kubeinfer_io_release=~"a\\\\.v2|b"}) by (<<.GroupBy>>)'
    # PromQL unquotes the string to a\.v2|b, a regex that does not match "aXv2".
    assert re.fullmatch(r"a\.v2|b", "a.v2") and not re.fullmatch(r"a\.v2|b", "aXv2")
    assert parse_adapter_rule(rule) == {"custom_metric_name": "vllm_queue_depth",
                                        "metric_names": ["vllm:num_requests_waiting"], "releases": ["a.v2", "b"]}


def test_adapter_rule_with_candidates_matches_each_form() -> None:
    rule = adapter_rule(["vllm_num_requests_waiting", "vllm:num_requests_waiting"], "vllm_queue_depth", ["a"])
    assert rule["seriesQuery"].startswith('{__name__=~"vllm:num_requests_waiting|vllm_num_requests_waiting",')
    pattern = re.compile(rule["name"]["matches"])
    assert pattern.match("vllm:num_requests_waiting") and pattern.match("vllm_num_requests_waiting")
    assert not pattern.match("vllm_num_requests_waiting_total")
    assert parse_adapter_rule(rule)["metric_names"] == ["vllm:num_requests_waiting", "vllm_num_requests_waiting"]


def test_adapter_rule_name_regex_matches_only_the_metric() -> None:
    rule = adapter_rule("vllm_num_requests_waiting", "vllm_queue_depth", ["a"])
    pattern = re.compile(rule["name"]["matches"])
    assert pattern.match("vllm_num_requests_waiting")
    assert not pattern.match("vllm_num_requests_waiting_total")
    assert not pattern.match("xvllm_num_requests_waiting")
    assert rule["name"]["as"] == "vllm_queue_depth"
    assert f'{RELEASE_SERIES_LABEL}=~"a"' in rule["seriesQuery"]


@pytest.mark.parametrize("args, problem", [
    (("vllm:num_requests_waiting", "vllm_queue_depth", []), "^release: the rule needs at least one release"),
    (("vllm:num_requests_waiting", "vllm_queue_depth", ["Bad_Name"]), "^release: 'Bad_Name' is not a valid release name"),
    (("vllm:num_requests_waiting", "vllm_queue_depth", ['a"|.*']), "^release: .* is not a valid release name"),
    (("vllm:num_requests_waiting", "vllm_queue_depth", ["a" * 64]), "^release: .* is not a valid release name"),
    (("bad name", "vllm_queue_depth", ["x"]), "^metric_name: 'bad name' is not a valid Prometheus metric name"),
    (([], "vllm_queue_depth", ["x"]), "^metric_name: the rule needs at least one Prometheus metric name"),
    (("vllm:num_requests_waiting", "Queue-Depth", ["x"]), "^custom_metric_name: 'Queue-Depth' is not valid"),
])
def test_adapter_rule_invalid(args: tuple, problem: str) -> None:
    with pytest.raises(KubeInferError, match=problem):
        adapter_rule(*args)


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


def test_merge_candidates_share_the_names_other_releases_map() -> None:
    """Nothing read from a pod (check mode before the release exists): the guesses adopt the rule's names."""
    rules = [adapter_rule(WAITING, "vllm_queue_depth", ["a"])]
    both = ["vllm:num_requests_waiting", "vllm_num_requests_waiting"]
    assert merge_adapter_rules(rules, both, "vllm_queue_depth", "b", candidates=True) == [adapter_rule(WAITING, "vllm_queue_depth", ["a", "b"])]
    # Names read from a pod that differ still conflict.
    with pytest.raises(KubeInferError, match="give it its own custom_metric_name"):
        merge_adapter_rules(rules, both, "vllm_queue_depth", "b")
    with pytest.raises(KubeInferError, match="give it its own custom_metric_name"):
        merge_adapter_rules(rules, ["vllm_num_requests_waiting"], "vllm_queue_depth", "b", candidates=True)


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
    with pytest.raises(KubeInferError, match="^custom_metric_name: the Prometheus Adapter already has a rule that produces 'vllm_queue_depth' without") as info:
        merge_adapter_rules([foreign], WAITING, "vllm_queue_depth", "a")
    assert info.value.result["conflicting_rule"] == foreign


def test_merge_rejects_another_source_metric_for_shared_name() -> None:
    rules = [adapter_rule(WAITING, "vllm_queue_depth", ["a"])]
    with pytest.raises(KubeInferError, match="^custom_metric_name: 'vllm_queue_depth' maps vllm:num_requests_waiting for the releases a, "
                                             "but release 'b' exposes vllm_num_requests"):
        merge_adapter_rules(rules, "vllm_num_requests_waiting", "vllm_queue_depth", "b")
    # The only registered release may switch its source metric (an upgraded vLLM).
    assert merge_adapter_rules(rules, "vllm_num_requests_waiting", "vllm_queue_depth", "a") == [
        adapter_rule("vllm_num_requests_waiting", "vllm_queue_depth", ["a"])]


def test_merge_needs_a_metric_to_register_and_a_valid_release() -> None:
    with pytest.raises(KubeInferError, match="^metric_name: the source metric name is needed"):
        merge_adapter_rules([], None, "vllm_queue_depth", "a")
    with pytest.raises(KubeInferError, match="^release: 'A' is not a valid release name"):
        merge_adapter_rules([], WAITING, "vllm_queue_depth", "A")


def test_parse_adapter_rule_ignores_foreign_rules() -> None:
    assert parse_adapter_rule(OTHER) is None
    assert parse_adapter_rule("not a rule") is None  # type: ignore[arg-type]


def test_rule_for_finds_the_rule_of_a_custom_metric() -> None:
    rule = adapter_rule(WAITING, "vllm_queue_depth", ["a"])
    assert rule_for([OTHER, rule], "vllm_queue_depth") == rule
    assert rule_for([OTHER], "vllm_queue_depth") is None
