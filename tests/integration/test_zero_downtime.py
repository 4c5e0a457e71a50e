"""Zero-downtime swaps and probes that mean something (issue 14, item 1), on the local control plane.

The release's pods carry ``kubeinfer.io/sim-kubelet=pod-sim``, so tools/localcluster/podkubelet.py plays
their kubelet: each pod runs its own llm-d-inference-sim with the container's args at <pod IP>:8000 after
a model load (``kubeinfer.io/sim-load-seconds``), its startup, readiness and liveness probes run as
the kubelet's prober runs them, deletion runs the preStop sleep then SIGTERM (the simulator drains its
open requests), and the pod's Service is routed the way kube-proxy routes it: new connections to
Ready endpoints only. The load below goes through that route (Service -> Ready endpoints), one new
connection per request, as a client inside the cluster would.

1. A change of the vLLM arguments rolls the release (maxSurge 1, maxUnavailable 0) under a steady
   stream of completions: 0 failed requests out of N (printed), with traffic answered by the old pods
   and then by the new ones, and each new pod Ready only after its model load.
2. The same load loses requests when a pod is killed without its drain (force-deleted): the counting
   can fail.
3. A load slower than the fixed probes a chart without a startup probe relies on (liveness only,
   3 x 10 s) but inside the computed startup budget is not killed: no restart, the release rolls out.
4. A load beyond the budget is restarted by the startup probe, and vllm_release fails at once naming
   the pod, the restart and the budget, with the kubelet's "Unhealthy" and "Killing" events on the pod.
"""
from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest
from conftest import PLAYED_MODEL as MODEL
from conftest import Load, harness, played_release_args, route_stats, run_task, wait_until
from kubernetes import client


@pytest.fixture
def namespace(played_namespace: str) -> str:
    return played_namespace


def release(playbook: Any, args: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    return run_task(playbook, "vllm_release", args)


def pods(core: client.CoreV1Api, namespace: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/instance=swap").items


def ready_at(pod: client.V1Pod) -> datetime | None:
    cond = next((c for c in pod.status.conditions or [] if c.type == "Ready" and c.status == "True"), None)
    return cond.last_transition_time if cond else None


def events(core: client.CoreV1Api, namespace: str, pod: str) -> list[client.CoreV1Event]:
    return core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={pod}").items


def test_an_argument_change_rolls_under_load_with_no_failed_request(
        playbook: Any, core: client.CoreV1Api, played_pool: str, namespace: str) -> None:
    load_seconds = 4
    first, result = release(playbook, played_release_args(namespace, played_pool, load_seconds))
    assert first.returncode == 0 and not result.get("failed"), result.get("msg") or first.stdout[-4000:]
    old = {p.metadata.name for p in pods(core, namespace)}
    assert len(old) == 2
    for p in pods(core, namespace):
        # the probes, not kwok, made the pod Ready: not before the model load was over
        assert (ready_at(p) - p.metadata.creation_timestamp).total_seconds() >= load_seconds, p.metadata.name
    spec = pods(core, namespace)[0].spec.containers[0]
    assert spec.lifecycle.pre_stop.sleep.seconds == 3 and pods(core, namespace)[0].spec.termination_grace_period_seconds == 20
    url = harness("podkubelet.py", "service-url", namespace, "swap").strip()

    with Load(url, MODEL) as load:
        time.sleep(3)
        before = load.total
        changed = played_release_args(namespace, played_pool, load_seconds, values={"sim": {"timeToFirstToken": "200ms", "interTokenLatency": "25ms"}})
        began = time.monotonic()
        second, rolled = release(playbook, changed)
        assert second.returncode == 0 and not rolled.get("failed"), rolled.get("msg") or second.stdout[-4000:]
        wait_until("the old pods to be gone", lambda: not old & {p.metadata.name for p in pods(core, namespace)}, 90)
        rollout = time.monotonic() - began
        time.sleep(3)
        during = load.total - before
    new = {p.metadata.name for p in pods(core, namespace)}
    stats = route_stats(namespace)
    print(f"\nrollout under load: {load.total} requests, {len(load.failures)} failed, {during} of them during the {rollout:.1f} s rollout; "
          f"connections per pod: {stats}")
    assert not load.failures, f"{len(load.failures)} of {load.total} requests failed: {load.failures[:10]}"
    assert len(new) == 2 and not new & old
    assert during >= 20, f"only {during} requests during the rollout: the stream was not steady"
    assert all(stats.get(p, 0) > 0 for p in old | new), f"traffic did not reach every old and new pod: {stats}"
    for p in pods(core, namespace):
        assert "--inter-token-latency" in p.spec.containers[0].args and "25ms" in p.spec.containers[0].args
        assert (ready_at(p) - p.metadata.creation_timestamp).total_seconds() >= load_seconds, p.metadata.name
        assert any(e.reason == "Unhealthy" and e.message.startswith("Startup probe failed") for e in events(core, namespace, p.metadata.name))


def test_a_pod_killed_without_its_drain_loses_requests_under_the_same_load(
        playbook: Any, core: client.CoreV1Api, played_pool: str, namespace: str) -> None:
    first, result = release(playbook, played_release_args(namespace, played_pool, 1))
    assert first.returncode == 0 and not result.get("failed"), result.get("msg") or first.stdout[-4000:]
    url = harness("podkubelet.py", "service-url", namespace, "swap").strip()
    with Load(url, MODEL) as load:
        for _kill in range(3):  # a request may by chance be in flight on the other pod only; three kills make a loss certain in practice
            time.sleep(2)
            victim = sorted(p.metadata.name for p in pods(core, namespace) if ready_at(p) and not p.metadata.deletion_timestamp)[0]
            core.delete_namespaced_pod(victim, namespace, grace_period_seconds=0)  # force: no preStop, no drain
            if load.failures:
                break
        time.sleep(1)
    print(f"\nforce-deleted pods under load: {len(load.failures)} of {load.total} requests failed")
    assert load.failures, "a pod killed without a drain lost no request: the load cannot see a failure"


def test_a_load_slower_than_fixed_probes_but_inside_the_budget_is_not_killed(
        playbook: Any, core: client.CoreV1Api, played_pool: str, namespace: str) -> None:
    # Without a startup probe, a liveness probe of the kubelet's defaults kills a pod that has not answered in
    # 3 x 10 s. This load takes 35 s; the startup budget computed for the 0.5B model is 93 s.
    args = played_release_args(namespace, played_pool, 35, replicas=1, values={"probes": {"startup": {"periodSeconds": 5}, "readiness": {"periodSeconds": 1}}})
    run, result = release(playbook, args)
    assert run.returncode == 0 and not result.get("failed"), result.get("msg") or run.stdout[-4000:]
    assert result["startup_budget_seconds"] == 93  # ceil((60 + 0.92 GiB / 0.5) * 1.5)
    (pod,) = pods(core, namespace)
    assert pod.status.container_statuses[0].restart_count == 0
    assert (ready_at(pod) - pod.metadata.creation_timestamp).total_seconds() >= 35
    assert pod.spec.containers[0].startup_probe.failure_threshold * pod.spec.containers[0].startup_probe.period_seconds >= 93


def test_a_load_beyond_the_budget_is_restarted_and_reported_with_the_reason(
        playbook: Any, core: client.CoreV1Api, played_pool: str, namespace: str) -> None:
    args = played_release_args(namespace, played_pool, 60, replicas=1, startup_budget_seconds=6, atomic=False, timeout=120,
                               values={"probes": {"startup": {"periodSeconds": 2}, "readiness": {"periodSeconds": 1}}})
    began = time.monotonic()
    run, result = release(playbook, args)
    took = time.monotonic() - began
    assert result.get("failed"), "a model load of 60 s passed a startup budget of 6 s"
    msg = result["msg"]
    (pod,) = pods(core, namespace)
    name = pod.metadata.name
    assert f"pod {name}: container server was restarted" in msg and "startup_budget_seconds" in msg and "6 s" in msg, msg
    assert took < 90, f"vllm_release waited {took:.0f} s instead of failing at the restart"
    status = pod.status.container_statuses[0]
    assert status.restart_count >= 1 and status.last_state.terminated.exit_code == 137 and not status.ready
    reasons = {(e.reason, e.message.split(":")[0]) for e in events(core, namespace, name)}
    assert ("Unhealthy", "Startup probe failed") in reasons, reasons
    assert ("Killing", "Container server failed startup probe, will be restarted") in reasons, reasons
