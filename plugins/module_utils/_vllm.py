# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The vllm_release runner: preflight, the Helm release lifecycle, the rollout. Private to this collection: the interface may change without notice."""
from __future__ import annotations

import re
from typing import Any

from ansible_collections.kubeinfer.llm.plugins.module_utils import _helm_release
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import (
    GPU_RESOURCE,
    INSTANCE_LABEL,
    INVENTORY_LABEL,
    check_dns_label,
    check_namespace,
    label_value_error,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._manifests import parse_manifests, served_workload, validate_manifests
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube
from ansible_collections.kubeinfer.llm.plugins.module_utils._vllm_capacity import allocatable_gpus, check_capacity, eligible_nodes, plan_capacity
from ansible_collections.kubeinfer.llm.plugins.module_utils._vllm_values import build_values, hook_timeout, schema_problem, sizing, validate
from ansible_collections.kubeinfer.llm.plugins.module_utils._waiter import deployment_rolled_out, restarted_before_ready, unschedulable_reason, wait_for

TIMEOUT_MARGIN_SECONDS = 120
"""Default rollout deadline: the startup probe budget plus this margin for scheduling and image pulls."""
UNINSTALL_TIMEOUT_SECONDS = 300
POLL_INTERVAL_SECONDS = 2.0
CLUSTER_DOMAIN = "cluster.local"


def run(kube: Kube, helm: Helm, params: dict[str, Any], check_mode: bool, diff: bool) -> dict[str, Any]:
    """Make the release match the options: preflight (reads only), then at most one helm write, then the rollout wait.

    A failure carries the partial result, always with ``api_requests`` and ``helm_commands``, so it shows what was (not) done.
    """
    result: dict[str, Any] = {"changed": False}
    planned = None
    try:
        params = with_fleet(params)
        validate(params)
        if params["state"] == "absent":
            current = _helm_release.read(kube, helm, params["name"], params["namespace"])
            result["release"] = _helm_release.release_view(current.row, current.name, current.namespace)
            result["changed"] = _helm_release.remove(helm, current, check_mode, params["wait"], params["timeout"] or UNINSTALL_TIMEOUT_SECONDS)
        else:
            planned = _present(kube, helm, params, check_mode, diff, result)
    except KubeInferError as e:
        merged = dict(result, **e.result)
        merged.update(_helm_release.result(helm, merged.get("release") or _helm_release.release_view(None, params["name"], params["namespace"])),
                      api_requests=dict(kube.requests))
        raise KubeInferError(e.msg, **merged) from e
    result.update(_helm_release.result(helm, result["release"], planned), api_requests=dict(kube.requests))
    return result


def _present(kube: Kube, helm: Helm, p: dict[str, Any], check_mode: bool, diff: bool, result: dict[str, Any]) -> _helm_release.Plan:
    name, namespace = p["name"], p["namespace"]
    # Preflight: reads and a local render only. Nothing is written before it has passed.
    chart = _helm_release.read_chart(helm, p["chart_ref"], p["chart_version"])
    result["chart"] = {"ref": p["chart_ref"], "name": chart.name, "version": chart.version, "app_version": chart.app_version}
    result["hf_token_secret"] = _token_secret(kube, p["hf_token_secret"], namespace, check_mode)
    nodes = kube.list("v1", "Node")
    pods = kube.list("v1", "Pod", field_selector="status.phase!=Succeeded,status.phase!=Failed")
    # Check mode on a cluster that advertises no GPU at all (site.yml --check before the GPU Operator is installed):
    # the GPU checks have nothing to check yet. They are reported as pending; a real run makes them.
    gpus_pending = check_mode and not any(allocatable_gpus(n) for n in nodes)
    if gpus_pending:
        result["preflight_pending"] = (f"check mode: no node has allocatable {GPU_RESOURCE} yet (the GPU Operator is not installed, or "
                                       "has not advertised the GPUs), so the VRAM and GPU capacity checks wait for a real run")
    gpu_nodes = eligible_nodes(nodes, build_values(p, 1), p["preflight_capacity"] and not gpus_pending)  # placement does not depend on the budget
    result["gpu_nodes"] = sorted(n["metadata"]["name"] for n in gpu_nodes)
    estimate, budget = sizing(p, gpu_nodes, pending=gpus_pending)
    result.update(sizing=estimate, startup_budget=budget, startup_budget_seconds=budget["seconds"],
                  load_throughput_gib_s=budget["load_throughput_gib_s"])
    desired = build_values(p, budget["seconds"])
    result["values"] = desired
    capacity = plan_capacity(nodes, pods, int(desired.get("replicaCount", 1)), int(desired.get("gpusPerReplica", 1)),
                             desired, namespace, name, fleet=p["fleet"])
    capacity["checked"] = p["preflight_capacity"] and not gpus_pending
    result["capacity"] = capacity
    if capacity["checked"]:
        check_capacity(capacity)
    if p["inventory"]:
        result["inventory"] = inventory_view(kube.list("apps/v1", "Deployment", label_selector=INFERENCE_SERVER_SELECTOR),
                                             p["inventory"], p["fleet"] or [], namespace, name)
    # Idempotence: the chart version and the user-supplied values against the release's last revision. When a plan
    # would change nothing, the manifests helm stored for that revision are what a render would give: the converged
    # re-run reads them instead of running helm template and validating its output again.
    current = _helm_release.read(kube, helm, name, namespace)
    deployed = (current.row or {}).get("status") == "deployed"
    if current.manifest is not None and deployed and not _helm_release.plan(current, chart, desired).reasons:
        docs = parse_manifests(current.manifest)
    else:
        docs = _render(kube, helm, chart, p, desired, result)
    workload = served_workload(docs)
    host = f"{workload['service']}.{namespace}.svc.{CLUSTER_DOMAIN}"
    result["endpoint"] = {"service": workload["service"], "namespace": namespace, "host": host, "port": workload["port"],
                          "url": f"http://{host}:{workload['port']}"}

    current = _helm_release.read_for_upgrade(kube, helm, name, namespace, check_mode, current=current)
    planned = _helm_release.plan(current, chart, desired)
    result.update(changed=bool(planned.reasons), change_reasons=planned.reasons,
                  release=_helm_release.release_view(current.row, name, namespace))
    if diff:
        result["diff"] = {"before": current.values, "after": desired}
    timeout = int(p["timeout"] or budget["seconds"] + TIMEOUT_MARGIN_SECONDS)

    def rolled_out() -> None:
        result["waited_seconds"] = wait_rolled_out(kube, namespace, workload, timeout, budget["seconds"])

    job = prefetch_job(docs)
    if planned.reasons and not check_mode:
        try:
            result["release"] = _helm_release.apply(kube, helm, planned, p["create_namespace"], p["atomic"],
                                                    wait=rolled_out if p["wait"] else None, hook_timeout=hook_timeout(desired))
        except KubeInferError as e:
            if job is None:
                raise
            view = prefetch_view(kube.get("batch/v1", "Job", job, namespace), kube.list("v1", "Pod", namespace, label_selector=f"job-name={job}"))
            result["prefetch"] = view
            if view.get("failed"):
                raise KubeInferError(prefetch_failure(view, namespace) + f" (helm: {e.msg})", **dict(e.result, prefetch=view)) from e
            raise
    elif p["wait"] and not check_mode and current.row is not None:
        rolled_out()  # nothing to change, but the caller asked for a rolled-out release: wait for it without writing

    if job is not None:
        # A read only: on a converged re-run helm runs no hook, and the Job of the last install or upgrade is reported.
        result["prefetch"] = prefetch_view(kube.get("batch/v1", "Job", job, namespace), None)
    pods_now = live_pods(kube, namespace, workload["selector"])
    result["pods"] = [x["metadata"]["name"] for x in pods_now]
    result["placement"] = placement(pods_now)
    result["rollout"] = _rollout_status(kube.get("apps/v1", "Deployment", workload["deployment"], namespace))
    return planned


def _render(kube: Kube, helm: Helm, chart: _helm_release.Chart, p: dict[str, Any], desired: dict[str, Any],
            result: dict[str, Any]) -> list[dict[str, Any]]:
    """``helm template`` for the API server's version, its objects strictly validated (``result["validation"]``); a
    values schema error is reported against the option that set the value."""
    kube_version = str((kube.request("GET", "/version", verb="get") or {}).get("gitVersion") or "")
    if not kube_version:
        raise KubeInferError("could not read the API server version from /version")
    try:
        rendered = helm.template(p["name"], chart.ref, p["namespace"], desired, version=chart.version_arg, repo=chart.repo,
                                 kube_version=kube_version)
    except KubeInferError as e:
        problem = schema_problem(e.msg, desired, p)
        if problem is None:
            raise
        raise KubeInferError(problem, **e.result) from e
    docs = parse_manifests(rendered)
    result["validation"] = validate_manifests(docs, kube_version)
    return docs


PREFETCH_COMPONENT = "model-prefetch"
"""app.kubernetes.io/component of the chart's prefetch Job (modelCache.prefetch; templates/prefetch-job.yaml)."""


def prefetch_job(docs: list[dict[str, Any]]) -> str | None:
    """The name of the prefetch Job in the rendered chart, None when prefetch is off."""
    for doc in docs:
        labels = (doc.get("metadata") or {}).get("labels") or {}
        if doc.get("kind") == "Job" and labels.get("app.kubernetes.io/component") == PREFETCH_COMPONENT:
            return str(doc["metadata"]["name"])
    return None


def prefetch_view(job: dict[str, Any] | None, pods: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The prefetch Job as reported: its revision, Complete/Failed condition, completion time and, for a failure,
    each failed pod's exit code and the last line of its termination message (the download CLI's own error)."""
    if job is None:
        return {"exists": False}
    md, status = job["metadata"], job.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if c.get("status") == "True"}
    failed = conditions.get("Failed")
    view: dict[str, Any] = {
        "exists": True, "name": md["name"], "revision": (md.get("annotations") or {}).get("kubeinfer.io/model-revision"),
        "complete": "Complete" in conditions, "failed": failed is not None, "completion_time": status.get("completionTime"),
        "start_time": status.get("startTime"), "succeeded": status.get("succeeded", 0), "failed_pods": status.get("failed", 0),
    }
    if failed is not None:
        view["reason"] = failed.get("reason")
        view["message"] = failed.get("message")
    if pods is not None:
        view["pods"] = []
        for pod in sorted(pods, key=lambda x: x["metadata"]["name"]):
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                term = (cs.get("state") or {}).get("terminated")
                if term and term.get("exitCode"):
                    view["pods"].append({"name": pod["metadata"]["name"], "exit_code": term["exitCode"],
                                         "error": last_error(str(term.get("message") or "")) or term.get("reason")})
    return view


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b[^:\s]*:")


def last_error(message: str) -> str:
    """The error in a termination message (the log's tail): a Python traceback's last exception line and what follows it
    (huggingface_hub appends the Hub's own message), else the last line; one line, at most 500 characters."""
    lines = [x.rstrip() for x in message.splitlines() if x.strip()]
    start = max((i for i, x in enumerate(lines) if _EXCEPTION_LINE.match(x)), default=len(lines) - 1)
    return " ".join(x.strip() for x in lines[start:])[:500] if lines else ""


def prefetch_failure(view: dict[str, Any], namespace: str) -> str:
    """The failure message: the option, the Job and its reason, the pods' errors, and that the Deployment was kept."""
    msg = f"model_cache.prefetch: the prefetch Job {namespace}/{view['name']} failed: {view.get('reason')}"
    if view.get("message"):
        msg += f" ({view['message']})"
    errors = [f"pod {x['name']} exited {x['exit_code']}: {x['error']}" for x in view.get("pods") or []]
    if errors:
        msg += "; " + "; ".join(errors)
    return msg + "; the Deployment was not changed (helm stops before it when a pre-install/pre-upgrade hook fails)"


INFERENCE_SERVER_SELECTOR = "app.kubernetes.io/part-of=kubeinfer,app.kubernetes.io/component=inference-server"
"""The labels the collection's chart puts on every Deployment it renders (vllm.labels)."""


def with_fleet(p: dict[str, Any]) -> dict[str, Any]:
    """Check ``fleet`` and ``inventory`` (before any request) and return the parameters with both resolved.

    Fleet members default to this release's namespace; the inventory label joins ``pod_labels``.
    """
    if p["state"] == "absent":
        return p
    fleet = None
    if p.get("fleet") is not None:
        fleet, seen = [], set()
        for i, member in enumerate(p["fleet"]):
            ns = member.get("namespace") or p["namespace"]
            check_dns_label(member["name"], f"fleet[{i}].name", "release name", 53)
            check_namespace(ns, f"fleet[{i}].namespace")
            for option in ("replicas", "gpus_per_replica"):
                minimum = 0 if option == "replicas" else 1
                if member[option] < minimum:
                    raise KubeInferError(f"fleet[{i}].{option}: must be >= {minimum}, got {member[option]}")
            if (ns, member["name"]) in seen:
                raise KubeInferError(f"fleet[{i}].name: {ns}/{member['name']} is listed twice")
            seen.add((ns, member["name"]))
            fleet.append({"name": member["name"], "namespace": ns, "replicas": member["replicas"],
                          "gpus_per_replica": member["gpus_per_replica"]})
    labels = dict(p["pod_labels"] or {})
    if p.get("inventory") is not None:
        err = label_value_error(p["inventory"])
        if err or not p["inventory"]:
            raise KubeInferError(f"inventory: {p['inventory']!r} is not a valid label value ({err or 'empty'})")
        if str(labels.get(INVENTORY_LABEL, p["inventory"])) != p["inventory"]:
            raise KubeInferError(f"pod_labels: {INVENTORY_LABEL} is set by inventory; do not set it in pod_labels")
        labels[INVENTORY_LABEL] = p["inventory"]
    return dict(p, fleet=fleet, inventory=p.get("inventory"), pod_labels=labels)


def inventory_view(deployments: list[dict[str, Any]], inventory: str, fleet: list[dict[str, Any]],
                   namespace: str, name: str) -> dict[str, Any]:
    """The releases whose pods carry ``kubeinfer.io/inventory=<inventory>``, split into listed and unlisted.

    Listed means this release or a fleet member. An unlisted one was deployed from the same model list and has
    since been taken out of it: the vllm role removes it. Releases are found by their Deployment's pod template,
    which is where the chart puts the label (the Deployment is named after the release, labelled with its instance).
    """
    listed = {(namespace, name)} | {(m["namespace"], m["name"]) for m in fleet}
    found = []
    for dep in deployments:
        meta = dep.get("metadata") or {}
        template_labels = (((dep.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
        if template_labels.get(INVENTORY_LABEL) != inventory:
            continue
        found.append((meta.get("namespace", ""), (meta.get("labels") or {}).get(INSTANCE_LABEL) or meta.get("name", "")))
    return {"name": inventory, "label": f"{INVENTORY_LABEL}={inventory}",
            "listed": [{"namespace": ns, "name": n} for ns, n in sorted(listed)],
            "unlisted": [{"namespace": ns, "name": n} for ns, n in sorted(set(found) - listed)]}


def _token_secret(kube: Kube, secret: dict[str, Any] | None, namespace: str, check_mode: bool) -> dict[str, Any] | None:
    """The token Secret and key the pods read must exist, unless marked optional.

    Otherwise the kubelet holds every pod in CreateContainerConfigError until the rollout times out
    (k8s.io/kubernetes pkg/kubelet/kubelet_pods.go, makeEnvironmentVariables: a missing secretKeyRef).
    In check mode the Secret may be one this same run would create, so a missing one is reported, not refused.
    Only the Secret's key names are read into the result, never its data.
    """
    if not secret:
        return None
    obj = kube.get("v1", "Secret", secret["name"], namespace)
    keys = sorted(set((obj or {}).get("data") or {}) | set((obj or {}).get("stringData") or {}))
    view = {"name": secret["name"], "key": secret["key"], "optional": secret["optional"], "exists": obj is not None,
            "has_key": secret["key"] in keys}
    if secret["optional"] or check_mode:
        return view
    if obj is None:
        raise KubeInferError(f"hf_token_secret.name: Secret {namespace}/{secret['name']} does not exist; create it first "
                             "(the hf_token role or kubeinfer.llm.hf_token_secret), or set hf_token_secret.optional=true")
    if not view["has_key"]:
        raise KubeInferError(f"hf_token_secret.key: Secret {namespace}/{secret['name']} has no key {secret['key']!r} "
                             f"(its keys: {', '.join(keys) or 'none'})")
    return view


def placement(pods: list[dict[str, Any]]) -> dict[str, str | None]:
    """{pod name: node name (None while Pending)}."""
    return {p["metadata"]["name"]: p.get("spec", {}).get("nodeName") for p in pods}


def live_pods(kube: Kube, namespace: str, selector: str) -> list[dict[str, Any]]:
    pods = kube.list("v1", "Pod", namespace, label_selector=selector)
    pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def wait_rolled_out(kube: Kube, namespace: str, workload: dict[str, Any], timeout: int, budget_seconds: int) -> float:
    """Seconds until the Deployment rolled out.

    Raises at once when a pod that never became ready has been restarted (the kubelet killed it for a failed
    startup or liveness probe, or it crashed): waiting longer only repeats the restart. On the deadline, raises
    with the scheduler's reason for a Pending pod.
    """
    name = workload["deployment"]

    def rolled_out() -> tuple[bool, str]:
        done, reason = deployment_rolled_out(kube.get("apps/v1", "Deployment", name, namespace))
        if not done:
            restarted = restarted_before_ready(live_pods(kube, namespace, workload["selector"]))
            if restarted:
                raise KubeInferError(
                    f"Deployment {namespace}/{name} did not roll out: {restarted}. The startup probe allows {budget_seconds} s "
                    "(startup_budget_seconds): if the model takes longer to load, raise startup_budget_seconds or lower "
                    "load_throughput_gib_s; the pod's events give the probe's own message", restarted=restarted)
        return done, reason

    try:
        return round(wait_for(rolled_out, timeout, f"Deployment {namespace}/{name} to roll out", interval=POLL_INTERVAL_SECONDS), 3)
    except KubeInferError as e:
        if "restarted" in e.result:
            raise
        pods = live_pods(kube, namespace, workload["selector"])
        reason = unschedulable_reason([x for x in pods if x.get("status", {}).get("phase") == "Pending"])
        raise KubeInferError(e.msg + (f"; the scheduler says: {reason}" if reason else ""),
                             pods=[x["metadata"]["name"] for x in pods], placement=placement(pods),
                             unschedulable_reason=reason, waited_seconds=e.result.get("waited")) from e


def _rollout_status(deployment: dict[str, Any] | None) -> dict[str, Any]:
    if deployment is None:
        return {"exists": False}
    status = deployment.get("status", {})
    done, reason = deployment_rolled_out(deployment)
    return {"exists": True, "name": deployment["metadata"]["name"], "replicas": deployment.get("spec", {}).get("replicas", 1),
            "ready_replicas": status.get("readyReplicas", 0), "available_replicas": status.get("availableReplicas", 0),
            "updated_replicas": status.get("updatedReplicas", 0), "rolled_out": done, "reason": reason}
