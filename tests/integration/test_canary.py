"""vllm_canary on the local control plane (issue 14, item 3): a canary gated by measured SLOs, both outcomes.

Release ``swap`` runs two played pods (tools/localcluster/podkubelet.py: each pod its own llm-d-inference-sim,
probes as the kubelet runs them, a drain on deletion, the Service routed to Ready endpoints). A steady stream of
completions goes through the Service route for the whole of each canary, so "the stable version keeps serving"
is counted, not assumed.

1. A canary whose only change is 1 ms more per token passes (p95 within 1.5 x stable + 250 ms, no error): it is
   promoted. The release then runs its values, the canary Deployment and pods are gone, the Service sent the
   canary pod a share of the traffic, and no request of the stream failed. A re-run through the role is
   ``already_promoted`` and sends no write (audit log).
2. A canary with a 1.5 s time to first token (the stable one: 200 ms) misses the latency threshold: it is rolled
   back and the task fails naming the threshold and the numbers. The release keeps its values, the canary is gone,
   and again no request of the stream failed.
3. Check mode reports what it would deploy and writes nothing.
"""
from __future__ import annotations

import json
import time
from typing import Any

import pytest
from conftest import PLAYED_MODEL, Audit, Load, harness, helm_binary, played_release_args, run_task
from kubernetes import client

AGENTS = ("kubeinfer.llm", "Helm")
WRITES = ("create", "update", "patch", "delete", "deletecollection")


@pytest.fixture
def namespace(played_namespace: str) -> str:
    return played_namespace


def writes(audit: Audit, since: int) -> list[str]:
    out = []
    for e in audit.events(since, ""):
        ref = e.get("objectRef") or {}
        if str(e.get("userAgent", "")).startswith(AGENTS) and e.get("verb") in WRITES and "dryRun=All" not in str(e.get("requestURI", "")) \
                and ref.get("subresource") != "portforward":
            out.append(f"{e['verb']} {ref.get('resource')} {ref.get('namespace', '')}/{ref.get('name', '')}")
    return out


def canary_args(namespace: str, changes: dict[str, Any], **over: Any) -> dict[str, Any]:
    args = {"name": "swap", "namespace": namespace, "changes": changes, "replicas": 1, "requests": 20,
            "max_latency_ratio": 1.5, "latency_slack_ms": 250, "rollout_timeout": 180}
    args.update(over)
    return args


def deployments(api: client.ApiClient, namespace: str) -> dict[str, list[str]]:
    apps = client.AppsV1Api(api)
    return {d.metadata.name: d.spec.template.spec.containers[0].args for d in apps.list_namespaced_deployment(namespace).items}


def canary_pods(core: client.CoreV1Api, namespace: str) -> list[str]:
    return [p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector="kubeinfer.io/track=canary").items]


def route_stats(namespace: str) -> dict[str, int]:
    stats = json.loads(harness("podkubelet.py", "route-stats"))
    return next((v for k, v in stats.items() if k.startswith(f"{namespace}/swap:")), {})


def wait_until(what: str, predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.5)


def serve(playbook: Any, namespace: str, pool: str) -> str:
    first, result = run_task(playbook, "vllm_release", played_release_args(namespace, pool, 2))
    assert first.returncode == 0 and not result.get("failed"), result.get("msg") or first.stdout[-4000:]
    return harness("podkubelet.py", "service-url", namespace, "swap").strip()


def test_a_canary_within_the_slo_is_promoted_under_load_and_a_rerun_writes_nothing(
        playbook: Any, api: client.ApiClient, core: client.CoreV1Api, audit: Audit, played_pool: str, namespace: str) -> None:
    url = serve(playbook, namespace, played_pool)
    changes = {"sim": {"interTokenLatency": "21ms"}}
    with Load(url, PLAYED_MODEL) as load:
        run, result = run_task(playbook, "vllm_canary", canary_args(namespace, changes))
        assert run.returncode == 0 and not result.get("failed"), result.get("msg") or run.stdout[-4000:]
        wait_until("the canary pods to be gone", lambda: not canary_pods(core, namespace), 60)
        time.sleep(2)
    print(f"\npromoted: {json.dumps(result['measured'])}; stream {load.total} requests, {len(load.failures)} failed; routes {route_stats(namespace)}")
    assert result["decision"] == "promoted" and result["missed"] == [], result
    assert result["measured"]["canary"]["pods"] == 1 and result["measured"]["stable"]["pods"] == 2
    assert result["measured"]["canary"]["requests"] == result["measured"]["stable"]["requests"] == 20
    assert not load.failures, f"{len(load.failures)} of {load.total} requests failed: {load.failures[:5]}"
    assert load.total >= 30
    deps = deployments(api, namespace)
    assert list(deps) == ["swap"], deps
    args = deps["swap"]
    assert args[args.index("--inter-token-latency") + 1] == "21ms", args
    assert any(name.startswith("swap-canary-") and n > 0 for name, n in route_stats(namespace).items()), \
        "the Service sent the canary pod no traffic"

    # The re-run goes through the role, as an AWX schedule would run it.
    mark = audit.mark()
    role_vars = {"vllm_canary_release": "swap", "vllm_canary_namespace": namespace, "vllm_canary_changes": changes}
    again = playbook([{"name": "Canary role", "ansible.builtin.include_role": {"name": "kubeinfer.llm.vllm_canary"}, "vars": role_vars}],
                     save="vllm_canary_result", env={"HELM_BINARY": helm_binary()})
    assert again.returncode == 0, again.stdout[-4000:]
    assert again.saved["decision"] == "already_promoted" and not again.saved["changed"] and again.recap()["changed"] == 0
    assert writes(audit, mark) == []


def test_a_slow_canary_is_rolled_back_while_the_stable_version_keeps_serving(
        playbook: Any, api: client.ApiClient, core: client.CoreV1Api, played_pool: str, namespace: str) -> None:
    url = serve(playbook, namespace, played_pool)
    before = deployments(api, namespace)
    with Load(url, PLAYED_MODEL) as load:
        run, result = run_task(playbook, "vllm_canary", canary_args(namespace, {"sim": {"timeToFirstToken": "1500ms"}}))
        wait_until("the canary pods to be gone", lambda: not canary_pods(core, namespace), 60)
        time.sleep(2)
    print(f"\nrolled back: {json.dumps(result.get('measured'))}; stream {load.total} requests, {len(load.failures)} failed")
    assert result.get("failed") and result["decision"] == "rolled_back", result
    assert "p95 latency" in result["msg"] and "max_latency_ratio 1.5" in result["msg"], result["msg"]
    assert result["measured"]["canary"]["p95_ms"] > result["measured"]["stable"]["p95_ms"] * 1.5 + 250
    assert deployments(api, namespace) == before, "the rollback changed the stable version"
    assert not load.failures, f"{len(load.failures)} of {load.total} requests failed: {load.failures[:5]}"


def test_check_mode_reports_the_canary_and_writes_nothing(
        playbook: Any, api: client.ApiClient, audit: Audit, played_pool: str, namespace: str) -> None:
    serve(playbook, namespace, played_pool)
    mark = audit.mark()
    run = playbook([{"name": "Canary", "kubeinfer.llm.vllm_canary": canary_args(namespace, {"sim": {"interTokenLatency": "30ms"}}),
                     "register": "r"}], check=True, diff=True, save="r", env={"HELM_BINARY": helm_binary()})
    assert run.returncode == 0, run.stdout[-4000:]
    assert run.saved["decision"] == "would_measure" and run.saved["changed"]
    assert run.saved["diff"]["after"]["canary"]["values"]["sim"]["interTokenLatency"] == "30ms"
    assert writes(audit, mark) == []
    assert list(deployments(api, namespace)) == ["swap"]


def test_bad_changes_are_refused_before_any_write(playbook: Any, audit: Audit, namespace: str) -> None:
    mark = audit.mark()
    _run, result = run_task(playbook, "vllm_canary", canary_args(namespace, {"replicaCount": 5}))
    assert result.get("failed") and result["msg"].startswith("changes: replicaCount cannot differ in a canary"), result["msg"]
    _run, result = run_task(playbook, "vllm_canary", canary_args("no-such-ns-x", {"sim": {"interTokenLatency": "30ms"}}))
    assert result.get("failed") and "name: release no-such-ns-x/swap is not installed" in result["msg"], result["msg"]
    assert writes(audit, mark) == []
