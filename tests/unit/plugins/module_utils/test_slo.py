from __future__ import annotations

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils._canary import canary_values, check_prefetch, validate, weighted_rules
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._slo import Sample, judge, percentile, summarize


def test_percentile_is_nearest_rank() -> None:
    values = [float(x) for x in range(1, 21)]  # 1..20
    assert percentile(values, 50) == 10 and percentile(values, 95) == 19 and percentile(values, 99) == 20
    assert percentile([], 95) is None


def test_summary_counts_failures_apart_from_latency() -> None:
    samples = [Sample(True, 100.0), Sample(True, 300.0), Sample(False, 0.0, "pod/x: HTTP 500"), Sample(True, 200.0)]
    s = summarize(samples, 95)
    assert (s["requests"], s["errors"], s["error_rate"]) == (4, 1, 0.25)
    assert s["p50_ms"] == 200 and s["percentile_ms"] == 300 and s["first_errors"] == ["pod/x: HTTP 500"]


def stats(p: float | None, errors: int = 0, requests: int = 20) -> dict:
    return {"percentile_ms": p, "errors": errors, "requests": requests, "error_rate": errors / requests, "first_errors": ["e"] * errors}


def test_judge_passes_within_ratio_plus_slack_and_names_each_missed_threshold() -> None:
    assert judge(stats(500), stats(640), 95, 1.2, 50, 0.01) == []  # 640 <= 500 * 1.2 + 50
    slow = judge(stats(500), stats(1800), 95, 1.2, 50, 0.01)
    assert slow == ["p95 latency 1800 ms above 650 ms (stable p95 500 ms x max_latency_ratio 1.2 + latency_slack_ms 50)"]
    failing = judge(stats(500), stats(500, errors=2), 95, 1.2, 50, 0.05)
    assert len(failing) == 1 and failing[0].startswith("error rate 10.00% above max_error_rate 5.00% (2 of 20 requests failed")
    assert judge(stats(None, errors=20), stats(500), 95, 1.2, 50, 0.01)[0].startswith("the stable version answered no request")


def params(**over: object) -> dict:
    p = {"name": "llama", "namespace": "llm", "changes": {"model": {"revision": "abc"}}, "replicas": 1, "requests": 30, "percentile": 95.0,
         "max_latency_ratio": 1.2, "latency_slack_ms": 50.0, "max_error_rate": 0.01, "max_tokens": 16, "timeout": 60,
         "weight": 10, "httproute": None}
    p.update(over)
    return p


@pytest.mark.parametrize("over, message", [
    ({"changes": {}}, "changes: empty"),
    ({"changes": {"replicaCount": 3, "gpusPerReplica": 2}}, "changes: gpusPerReplica, replicaCount cannot differ in a canary"),
    ({"replicas": 0}, "replicas"),
    ({"requests": 2}, "requests"),
    ({"max_latency_ratio": 0.5}, "max_latency_ratio"),
    ({"max_error_rate": 2}, "max_error_rate"),
    ({"name": "Bad_Name"}, "name"),
    ({"weight": 100}, "weight"),
    ({"httproute": "Not A Route"}, "httproute"),
])
def test_bad_options_are_refused_naming_the_option(over: dict, message: str) -> None:
    with pytest.raises(KubeInferError) as err:
        validate(params(**over))
    assert err.value.msg.startswith(message)


def test_canary_values_give_each_changed_section_whole() -> None:
    stable = {"model": {"name": "m", "revision": "old"}, "replicaCount": 2, "sim": {"timeToFirstToken": "200ms"}}
    out = canary_values(stable, {"model": {"revision": "new"}, "extraEnv": [{"name": "A", "value": "b"}]}, 1)
    assert out["canary"] == {"enabled": True, "replicas": 1, "split": "service",
                             "values": {"model": {"name": "m", "revision": "new"}, "extraEnv": [{"name": "A", "value": "b"}]}}
    assert out["model"] == stable["model"] and out["replicaCount"] == 2, "the release's own values are unchanged"


def test_route_weights_move_a_share_of_each_backend_of_the_release_only() -> None:
    rules = [{"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
              "backendRefs": [{"name": "llama", "port": 8000}, {"name": "other", "port": 8000, "weight": 5}]}]
    out = weighted_rules(rules, "llama", "llama-canary", 20)
    assert out[0]["backendRefs"] == [{"name": "llama", "port": 8000, "weight": 80}, {"name": "llama-canary", "port": 8000, "weight": 20},
                                     {"name": "other", "port": 8000, "weight": 5}]
    assert out[0]["matches"] == rules[0]["matches"] and rules[0]["backendRefs"][0] == {"name": "llama", "port": 8000}, "the input is kept"


def test_a_prefetching_release_refuses_a_canary_of_another_revision_only() -> None:
    stable = {"model": {"name": "m", "revision": "a"}, "modelCache": {"prefetch": {"enabled": True}}}
    with pytest.raises(KubeInferError, match="^changes: the release prefetches its model"):
        check_prefetch(stable, {"model": {"name": "m", "revision": "b"}})
    check_prefetch(stable, {"vllm": {"extraArgs": ["--enable-chunked-prefill"]}})
    check_prefetch(stable, {"model": {"name": "m", "revision": "a"}})
    check_prefetch({"model": {"name": "m", "revision": "a"}}, {"model": {"revision": "b"}})
