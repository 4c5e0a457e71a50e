# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vllm_canary runner: a canary next to a serving release, measured against it, then promoted or rolled back.

Private to this collection: the interface may change without notice.

The canary is the chart's own second Deployment (values ``canary``): its pods carry the release's selector labels,
so the release's Service gives it ``replicas / (stable replicas + replicas)`` of the traffic, and the label
``kubeinfer.io/track: canary``. Three helm writes at most: the canary in, then either the release upgraded to the
canary's values with the canary out (promote), or the canary out (roll back). Each goes through _helm_release
(Lease, pending-release recovery) and waits for its Deployment like vllm_release does.
"""
from __future__ import annotations

from typing import Any

from ansible_collections.kubeinfer.llm.plugins.module_utils import _helm_release
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm
from ansible_collections.kubeinfer.llm.plugins.module_utils._http import Endpoint
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import check_dns_label, check_namespace, check_range
from ansible_collections.kubeinfer.llm.plugins.module_utils._manifests import TRACK_LABEL, parse_manifests, served_workload
from ansible_collections.kubeinfer.llm.plugins.module_utils._portforward import PortForwardTarget, pod_port
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube
from ansible_collections.kubeinfer.llm.plugins.module_utils._slo import judge, measure, summarize
from ansible_collections.kubeinfer.llm.plugins.module_utils._vllm import live_pods, wait_rolled_out
from ansible_collections.kubeinfer.llm.plugins.module_utils._waiter import pod_ready

CANARY_KEYS = ("model", "image", "vllm", "sim", "probes", "resources", "podAnnotations", "extraEnv")
"""What a canary may change (the chart schema's canary.values): the version and how it runs, never its size or its wiring."""
DEFAULT_ROLLOUT_TIMEOUT = 600


def validate(p: dict[str, Any]) -> None:
    """Check the options before any request; the message names the option."""
    check_dns_label(p["name"], "name", "release name", 53)
    check_namespace(p["namespace"])
    changes = p["changes"] or {}
    if not changes:
        raise KubeInferError("changes: empty; give the chart values the canary changes (for example model.revision, image, vllm.extraArgs)")
    wrong = sorted(set(changes) - set(CANARY_KEYS))
    if wrong:
        raise KubeInferError(f"changes: {', '.join(wrong)} cannot differ in a canary; it may change only {', '.join(CANARY_KEYS)}")
    check_range(p["replicas"], "replicas", 1, unit="replicas")
    check_range(p["requests"], "requests", 5, unit="requests per version")
    check_range(p["percentile"], "percentile", 50, 99.9)
    check_range(p["max_latency_ratio"], "max_latency_ratio", 1)
    check_range(p["latency_slack_ms"], "latency_slack_ms", 0, unit="ms")
    check_range(p["max_error_rate"], "max_error_rate", 0, 1)
    check_range(p["max_tokens"], "max_tokens", 1, unit="tokens")
    check_range(p["timeout"], "timeout", 1, unit="seconds")
    check_range(p["weight"], "weight", 1, 99, unit="percent")
    if p["httproute"] is not None:
        check_dns_label(p["httproute"], "httproute", "HTTPRoute name", 253)


def check_prefetch(stable: dict[str, Any], changes: dict[str, Any]) -> None:
    """Refuse a canary of another model or revision on a release that prefetches: its pods load offline what the Job fetched."""
    prefetched = ((stable.get("modelCache") or {}).get("prefetch") or {}).get("enabled")
    new_model = changes.get("model") or {}
    if prefetched and any(new_model.get(k) not in (None, (stable.get("model") or {}).get(k)) for k in ("name", "revision")):
        raise KubeInferError("changes: the release prefetches its model into the cache and its pods load offline (modelCache.prefetch), "
                             "so a canary of another model or revision would find nothing to load; roll the new revision out with "
                             "kubeinfer.llm.vllm_release, which prefetches it first")


ROUTE_API = "gateway.networking.k8s.io/v1"


def read_route(kube: Kube, name: str, namespace: str, service: str) -> dict[str, Any]:
    """The HTTPRoute the weights go into; it must exist and send traffic to the release's Service."""
    try:
        kube.ref(ROUTE_API, "HTTPRoute")
    except KubeInferError as e:
        raise KubeInferError(f"httproute: the cluster has no Gateway API HTTPRoute ({e.msg}); install the Gateway API CRDs and an "
                             "implementation, or leave httproute unset to split by replica ratio") from e
    route = kube.get(ROUTE_API, "HTTPRoute", name, namespace)
    if route is None:
        raise KubeInferError(f"httproute: HTTPRoute {namespace}/{name} does not exist")
    if not any(is_backend(ref, service) for rule in route.get("spec", {}).get("rules") or [] for ref in rule.get("backendRefs") or []):
        raise KubeInferError(f"httproute: HTTPRoute {namespace}/{name} has no backendRef to Service {service}, so it does not route to the release")
    return route


def is_backend(ref: dict[str, Any], service: str) -> bool:
    return ref.get("name") == service and ref.get("kind", "Service") == "Service" and ref.get("group", "") in ("", "core")


def weighted_rules(rules: list[dict[str, Any]], service: str, canary_service: str, weight: int) -> list[dict[str, Any]]:
    """The route's rules with ``weight`` percent of each backendRef to the release's Service moved to the canary's Service."""
    out = []
    for rule in rules:
        refs = []
        for ref in rule.get("backendRefs") or []:
            if is_backend(ref, service):
                total = int(ref.get("weight", 1))
                scale = 100 if total == 1 else total
                refs.append(dict(ref, weight=scale - scale * weight // 100))
                refs.append(dict(ref, name=canary_service, weight=scale * weight // 100))
            else:
                refs.append(ref)
        out.append(dict(rule, backendRefs=refs))
    return out


def set_route(kube: Kube, route: dict[str, Any], rules: list[dict[str, Any]]) -> None:
    """Replace the route's rules; its resourceVersion makes a concurrent change fail instead of being overwritten."""
    md = route["metadata"]
    kube.patch(ROUTE_API, "HTTPRoute", md["name"], {"metadata": {"resourceVersion": md["resourceVersion"]}, "spec": {"rules": rules}},
               md["namespace"])


def canary_values(stable: dict[str, Any], changes: dict[str, Any], replicas: int, split: str = "service") -> dict[str, Any]:
    """The release's values with the canary on. Each changed section is given whole (the schema checks it as the release's)."""
    sections = {k: _helm_release.deep_merge(stable.get(k) or {}, v) if isinstance(v, dict) else v for k, v in changes.items()}
    return dict(stable, canary={"enabled": True, "replicas": int(replicas), "split": split, "values": sections})


def track_endpoints(kube: Kube, namespace: str, selector: str, port: int) -> list[Endpoint]:
    """A port-forward Endpoint per Ready pod of one version (the chart's container port is its Service port)."""
    pods = [x for x in live_pods(kube, namespace, selector) if pod_ready(x)]
    out = []
    for pod in pods:
        target = PortForwardTarget(kube.api_client, namespace, pod["metadata"]["name"], pod_port(pod, None, port or None))
        out.append(Endpoint(target, f"localhost:{target.port}", target.via, describe_close=target.error))
    return out


def run(kube: Kube, helm: Helm, params: dict[str, Any], check_mode: bool, diff: bool) -> dict[str, Any]:
    """Canary in, measure both versions, then promote or roll back; a rollback fails the module unless told otherwise."""
    p = params
    result: dict[str, Any] = {"changed": False, "decision": None}
    try:
        validate(p)
        result.update(_run(kube, helm, p, check_mode, diff, result))
    except KubeInferError as e:
        merged = dict(result, **e.result)
        merged.update(_helm_release.result(helm, merged.get("release") or _helm_release.release_view(None, p["name"], p["namespace"])),
                      api_requests=dict(kube.requests))
        raise KubeInferError(e.msg, **merged) from e
    result.update(_helm_release.result(helm, result["release"]), api_requests=dict(kube.requests))
    if result["decision"] == "rolled_back" and p["fail_on_rollback"]:
        raise KubeInferError(f"canary of {p['namespace']}/{p['name']} rolled back: {'; '.join(result['missed'])}", **result)
    return result


def _run(kube: Kube, helm: Helm, p: dict[str, Any], check_mode: bool, diff: bool, result: dict[str, Any]) -> dict[str, Any]:
    name, namespace = p["name"], p["namespace"]
    chart = _helm_release.read_chart(helm, p["chart_ref"], p["chart_version"])
    current = _helm_release.read_for_upgrade(kube, helm, name, namespace, check_mode)
    result["release"] = _helm_release.release_view(current.row, name, namespace)
    if current.row is None:
        raise KubeInferError(f"name: release {namespace}/{name} is not installed; a canary needs a serving release (kubeinfer.llm.vllm_release)")
    stable = {k: v for k, v in current.values.items() if k != "canary"}
    check_prefetch(stable, p["changes"])
    promoted = _helm_release.deep_merge(stable, p["changes"])
    with_canary = canary_values(stable, p["changes"], p["replicas"], "httproute" if p["httproute"] else "service")
    result["values"] = {"stable": stable, "canary": with_canary["canary"]["values"]}
    if not _helm_release.value_changes(stable, promoted) and not (current.values.get("canary") or {}).get("enabled"):
        result["decision"] = "already_promoted"  # the release already runs these values: nothing to try
        return result

    kube_version = str((kube.request("GET", "/version", verb="get") or {}).get("gitVersion") or "")
    docs = parse_manifests(helm.template(name, chart.ref, namespace, with_canary, version=chart.version_arg, repo=chart.repo,
                                         kube_version=kube_version or None))
    workload = served_workload(docs)
    canary_name = f"{workload['deployment']}-canary"
    route = read_route(kube, p["httproute"], namespace, workload["service"]) if p["httproute"] else None
    planned = _helm_release.plan(current, chart, with_canary)
    result["changed"] = True
    if diff:
        result["diff"] = {"before": current.values, "after": with_canary}
    if check_mode:
        result["decision"] = "would_measure"
        return result

    timeout = int(p["rollout_timeout"] or DEFAULT_ROLLOUT_TIMEOUT)
    budget = int(((with_canary.get("probes") or {}).get("startup") or {}).get("budgetSeconds") or 600)
    # The canary's pods: its own track label and the release label (their instance label is the release's, or with an
    # HTTPRoute split <name>-canary); the release's pods: its selector without the track label.
    canary_workload = dict(workload, deployment=canary_name, selector=f"kubeinfer.io/release={name},{TRACK_LABEL}=canary")
    stable_selector = f"{workload['selector']},!{TRACK_LABEL}"
    steps: list[str] = []
    result["steps"] = steps
    try:
        _helm_release.apply(kube, helm, planned, False, False, wait=lambda: wait_rolled_out(kube, namespace, canary_workload, timeout, budget))
        steps.append(f"canary {canary_name} rolled out with {p['replicas']} replica(s)")
        if route is not None:
            set_route(kube, route, weighted_rules(route["spec"]["rules"], workload["service"], f"{workload['service']}-canary", p["weight"]))
            steps.append(f"HTTPRoute {namespace}/{p['httproute']}: {p['weight']}% to {workload['service']}-canary")
        tracks = {"stable": track_endpoints(kube, namespace, stable_selector, workload["port"]),
                  "canary": track_endpoints(kube, namespace, canary_workload["selector"], workload["port"])}
        samples = measure(tracks, None, p["requests"], p["prompt"], p["max_tokens"], p["timeout"])
        result["measured"] = {k: dict(summarize(v, p["percentile"]), pods=len(tracks[k])) for k, v in samples.items()}
        missed = judge(result["measured"]["stable"], result["measured"]["canary"], p["percentile"], p["max_latency_ratio"],
                       p["latency_slack_ms"], p["max_error_rate"])
    except KubeInferError as e:
        missed = [f"the canary did not get through: {e.msg}"]
    if route is not None:  # the route goes back to the release's Service alone before the canary goes
        now = kube.get(ROUTE_API, "HTTPRoute", p["httproute"], namespace)
        if now is not None:
            set_route(kube, now, route["spec"]["rules"])
            steps.append(f"HTTPRoute {namespace}/{p['httproute']}: its rules restored")
    result["missed"] = missed
    result["thresholds"] = {"percentile": p["percentile"], "max_latency_ratio": p["max_latency_ratio"],
                            "latency_slack_ms": p["latency_slack_ms"], "max_error_rate": p["max_error_rate"]}
    after = _helm_release.read_for_upgrade(kube, helm, name, namespace, False)
    final = promoted if not missed else stable
    _helm_release.apply(kube, helm, _helm_release.plan(after, chart, final), False, False,
                        wait=lambda: wait_rolled_out(kube, namespace, workload, timeout, budget))
    result["decision"] = "rolled_back" if missed else "promoted"
    steps.append(f"{'rolled back: the canary removed' if missed else 'promoted: the release runs the canary values'}, "
                 f"{workload['deployment']} rolled out")
    result["release"] = _helm_release.release_view(_helm_release.read(kube, helm, name, namespace).row, name, namespace)
    return result
