"""End-to-end autoscaling under real load, with two models in one namespace (issue 5, section 4).

Releases A and B of the vllm chart (engine sim) in one fresh namespace, each backed by its own
llm-d-inference-sim on 127.0.0.1 started with ``--max-num-seqs 1 --time-to-first-token 2s``;
both registered by metrics_adapter under ``vllm_queue_depth`` (one adapter rule listing both) and
autoscaled by inference_hpa (min 1, max 3, target 2, scale-down window WINDOW s). Six concurrent
/v1/completions requests from host threads against A's simulator keep five requests waiting. The
real Prometheus, prometheus-adapter and HPA controller of the local cluster do the rest.

The test fails when A's HPA does not scale up within the limit (scrape 15 s + HPA sync 15 s + 5 s
after the simulator's queue rose), when A's new pods do not become Ready, when A scales down before
the window or not at all, or when B's HPA moves off 1 replica (or reads no value) at any point,
observed for more than two HPA sync periods after A scaled.

The scenario code is bench/autoscale_bench.py (the benchmark runs the same cycle three times).
Runs on the cluster named by KUBEINFER_CLUSTER (default kubeinfer), which must be up with its
metrics chain (``make integration`` runs cluster-up); this test creates no cluster. It removes its
namespace, its simulators and its releases from the adapter rule at the end. About 2.5 minutes.
"""

from __future__ import annotations

import os
from types import ModuleType

import pytest
from conftest import load_bench

BUDGET = 15  # startup_budget_seconds of both releases
WINDOW = 20  # scale-down stabilization window (inference_hpa refuses less than BUDGET)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench()


def test_load_on_model_a_scales_a_only(bench: ModuleType, gpu_stack: None) -> None:
    cluster = os.environ.get("KUBEINFER_CLUSTER") or "kubeinfer"
    try:
        bench.tool("metrics.sh", "prometheus-url", cluster=cluster)
        bench.tool("cluster.sh", "kubeconfig", cluster=cluster)
    except RuntimeError as e:
        pytest.fail(f"cluster {cluster} with its metrics chain is not up (make cluster-up): {e}", pytrace=False)
    scenario = bench.Scenario(cluster=cluster, window=WINDOW, budget=BUDGET)
    try:
        scenario.setup()
        run = scenario.run()
    finally:
        scenario.teardown()
    print(bench.report([run], WINDOW))
    a_name, b_name = scenario.releases[0].name, scenario.releases[1].name

    assert run["t1"] is not None, f"{a_name}'s HPA never raised desiredReplicas under load"
    assert run["desired_after_scale_up"] > 1
    assert run["t1-t_sim"] <= bench.REACTION_LIMIT, f"scale-up took {run['t1-t_sim']}s after the queue rose (limit {bench.REACTION_LIMIT}s)"
    assert run["t2"] is not None, f"{a_name}'s new pods never became Ready"
    assert run["t4"] is not None and run["desired_after_scale_down"] < run["peak_desired"], f"{a_name} did not scale down after the load"
    assert run["scale_down_stabilized_seen"], "the HPA never held the scale-down back (AbleToScale=ScaleDownStabilized)"
    assert run["t4-t3"] >= WINDOW - bench.HPA_SYNC_PERIOD, f"scale-down {run['t4-t3']}s after the queue fell, window {WINDOW}s"
    assert run["b_desired_values"] == [1], f"{b_name} scaled with load on {a_name} only: desiredReplicas {run['b_desired_values']}"
    assert run["b_observed_after_a_scaled_s"] >= 2 * bench.HPA_SYNC_PERIOD
    assert run["checks"]["B's desiredReplicas and currentReplicas stayed 1"]
    assert run["checks"]["B's HPA read a metric value (not <unknown>) throughout"], f"{b_name}'s HPA showed <unknown>"
    assert run["ok"], [name for name, ok in run["checks"].items() if not ok]
