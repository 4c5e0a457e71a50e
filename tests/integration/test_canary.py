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
3. Split by HTTPRoute weights, on the real Gateway API CRDs (sigs.k8s.io/gateway-api v1.6.3 from the Go module proxy;
   no Gateway implementation runs here, so the route carries no traffic): while the canary is measured the route sends
   20% of its traffic to the release to the canary's own Service, and afterwards its rules are back as they were. The
   release's Service never sends a request to the canary pod, because in this mode the canary pods do not match it.
4. Check mode reports what it would deploy and writes nothing; bad options are refused before any write.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PLAYED_MODEL, Audit, Load, harness, helm_binary, played_release_args, route_stats, run_task, wait_until
from kubernetes import client, utils
from kubernetes.client.rest import ApiException

AGENTS = ("kubeinfer.llm", "Helm")
GATEWAY_API = "sigs.k8s.io/gateway-api@v1.6.3"
ROUTE = ("gateway.networking.k8s.io", "v1", "httproutes")
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


@pytest.fixture(scope="module")
def gateway_api_crds(api: client.ApiClient) -> Iterator[None]:
    """The HTTPRoute CRD of Gateway API v1.6.3, as published in its Go module (the same file its release installs)."""
    out = subprocess.run(["go", "mod", "download", "-json", GATEWAY_API], capture_output=True, text=True, check=False, timeout=300,
                         env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"})
    assert out.returncode == 0, f"go mod download {GATEWAY_API} failed (the Go module proxy is the source): {out.stderr[-2000:]}"
    crd = Path(json.loads(out.stdout)["Dir"]) / "config" / "crd" / "standard" / "gateway.networking.k8s.io_httproutes.yaml"
    ext = client.ApiextensionsV1Api(api)
    try:
        utils.create_from_yaml(api, str(crd))
    except utils.FailToCreateError as e:
        if not all(getattr(x, "status", None) == 409 for x in e.api_exceptions):
            raise

    def established() -> bool:
        status = ext.read_custom_resource_definition("httproutes.gateway.networking.k8s.io").status
        return any(c.type == "Established" and c.status == "True" for c in status.conditions or [])

    wait_until("the HTTPRoute CRD to be Established", established, 60)
    yield
    try:
        ext.delete_custom_resource_definition("httproutes.gateway.networking.k8s.io")
    except ApiException as e:
        if e.status != 404:
            raise


def test_a_canary_split_by_httproute_weights_restores_the_route(
        playbook: Any, api: client.ApiClient, core: client.CoreV1Api, gateway_api_crds: None, played_pool: str, namespace: str) -> None:
    url = serve(playbook, namespace, played_pool)
    routes = client.CustomObjectsApi(api)
    group, version, plural = ROUTE
    routes.create_namespaced_custom_object(group, version, namespace, plural, {
        "apiVersion": f"{group}/{version}", "kind": "HTTPRoute", "metadata": {"name": "chat"},
        "spec": {"parentRefs": [{"name": "gateway"}], "rules": [{"backendRefs": [{"name": "swap", "port": 8000}]}]}})
    original = routes.get_namespaced_custom_object(group, version, namespace, plural, "chat")["spec"]["rules"]
    seen: list[list[tuple[str, int]]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            rules = routes.get_namespaced_custom_object(group, version, namespace, plural, "chat")["spec"]["rules"]
            refs = [(r["name"], r.get("weight", 1)) for r in rules[0]["backendRefs"]]
            if not seen or seen[-1] != refs:
                seen.append(refs)
            time.sleep(0.3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with Load(url, PLAYED_MODEL) as load:
        run, result = run_task(playbook, "vllm_canary", canary_args(namespace, {"sim": {"interTokenLatency": "21ms"}}, httproute="chat", weight=20))
        assert run.returncode == 0 and result["decision"] == "promoted", result.get("msg") or result
        wait_until("the canary pods to be gone", lambda: not canary_pods(core, namespace), 60)
    done.set()
    watcher.join()
    print(f"\nroute weights seen: {seen}; steps {result.get('steps')}; stream {load.total} requests, {len(load.failures)} failed")
    assert run.returncode == 0 and result["decision"] == "promoted", result.get("msg") or result
    assert [("swap", 80), ("swap-canary", 20)] in seen, seen
    assert routes.get_namespaced_custom_object(group, version, namespace, plural, "chat")["spec"]["rules"] == original
    assert not any(name.startswith("swap-canary-") for name in route_stats(namespace)), "the release's Service sent traffic to the canary"
    assert not load.failures, load.failures[:5]
    assert core.list_namespaced_service(namespace, label_selector="kubeinfer.io/track=canary").items == [], "the canary's Service stayed"

    _run, missing = run_task(playbook, "vllm_canary", canary_args(namespace, {"sim": {"interTokenLatency": "30ms"}}, httproute="nope"))
    assert missing.get("failed") and missing["msg"] == f"httproute: HTTPRoute {namespace}/nope does not exist", missing["msg"]
