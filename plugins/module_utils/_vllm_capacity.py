# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The GPU capacity planner of vllm_release: eligible nodes and replica slots. Private to this collection: the interface may change without notice.

The node filters are the scheduler's for what the chart renders: allocatable nvidia.com/gpu, cordon, Ready,
the node selector, the GPU product affinity, and taints against tolerations (k8s.io/kubernetes
pkg/scheduler/framework/plugins/tainttoleration and nodeaffinity; k8s.io/api core/v1 toleration.go ToleratesTaint).
"""
from __future__ import annotations

import math
from typing import Any

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import GPU_RESOURCE, INSTANCE_LABEL, int_quantity

GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_REPLICAS_LABEL = "nvidia.com/gpu.replicas"
SHARED_SUFFIX = "-SHARED"
"""GFD appends it to the product label when the device plugin time-slices the GPUs (replicas > 1, resource not
renamed): NVIDIA/k8s-device-plugin v0.20 internal/lm/resource.go. The chart's affinity accepts both forms."""


def allocatable_gpus(node: dict[str, Any]) -> int:
    return int_quantity((node.get("status", {}).get("allocatable") or {}).get(GPU_RESOURCE))


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    """Whether one of ``tolerations`` matches ``taint`` (the scheduler's rules)."""
    for tol in tolerations:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol["key"] == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def pod_tolerations(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The tolerations the chart renders for ``values``."""
    scheduling = values.get("scheduling") or {}
    tolerations = list(scheduling.get("tolerations") or [])
    if scheduling.get("gpuToleration", True):
        tolerations.insert(0, {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def node_ineligible_reason(node: dict[str, Any], values: dict[str, Any]) -> str | None:
    """Why a replica of this release cannot run on ``node``, or None when it can."""
    meta, spec, status = node.get("metadata", {}), node.get("spec", {}), node.get("status", {})
    labels = meta.get("labels") or {}
    scheduling = values.get("scheduling") or {}
    if allocatable_gpus(node) < 1:
        return f"no allocatable {GPU_RESOURCE}"
    if spec.get("unschedulable"):
        return "cordoned"
    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])):
        return "not Ready"
    for key, value in (scheduling.get("nodeSelector") or {}).items():
        if labels.get(key) != str(value):
            return f"node selector {key}={value} does not match"
    products = scheduling.get("gpuProducts") or []
    product = labels.get(GPU_PRODUCT_LABEL)
    if products and product not in products and product not in [p + SHARED_SUFFIX for p in products]:
        return f"{GPU_PRODUCT_LABEL}={product} is not one of {products} (or their {SHARED_SUFFIX} forms)"
    shares = int_quantity(labels.get(GPU_REPLICAS_LABEL))
    utilization = float((values.get("vllm") or {}).get("gpuMemoryUtilization") or 0)
    if shares > 1 and utilization * shares > 1:
        # vLLM refuses to start when free device memory is below gpu_memory_utilization x total, and the device plugin
        # hands out time-sliced replicas of one GPU to different pods: all of them must fit in its memory together.
        return (f"its GPUs are time-sliced {shares} ways ({GPU_REPLICAS_LABEL}={shares}), and {shares} replicas at "
                f"gpu_memory_utilization {utilization:g} would need {utilization * shares:.2g} of one GPU's memory; "
                f"set gpu_memory_utilization to at most {math.floor(1000 / shares) / 1000:g}")  # rounded down: it must fit
    tolerations = pod_tolerations(values)
    for taint in spec.get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return f"taint {taint.get('key')}={taint.get('value', '')}:{taint.get('effect')} is not tolerated"
    return None


def eligible_nodes(nodes: list[dict[str, Any]], values: dict[str, Any], required: bool) -> list[dict[str, Any]]:
    """The nodes a replica may run on; with ``required``, raise saying why when there is none.

    The error comes before the sizing, which would only miss the GPU memory label of nodes it may not use.
    """
    eligible = [n for n in nodes if node_ineligible_reason(n, values) is None]
    if not eligible and required:
        ineligible = {n["metadata"]["name"]: node_ineligible_reason(n, values) for n in nodes if allocatable_gpus(n)}
        shown = "; ".join(f"{node}: {why}" for node, why in sorted(ineligible.items())[:5]) or f"no node has allocatable {GPU_RESOURCE}"
        raise KubeInferError(f"no GPU node can take a replica of this release ({shown})", ineligible_nodes=ineligible)
    return eligible


def pod_gpus(pod: dict[str, Any]) -> int:
    """GPUs a pod holds: the sum over its containers, or the largest init container when that is more."""
    spec = pod.get("spec", {})

    def of(c: dict[str, Any]) -> int:
        res = c.get("resources") or {}
        return int_quantity((res.get("requests") or {}).get(GPU_RESOURCE) or (res.get("limits") or {}).get(GPU_RESOURCE))

    main = sum(of(c) for c in spec.get("containers") or [])
    init = max([of(c) for c in spec.get("initContainers") or []] or [0])
    return max(main, init)


def plan_capacity(nodes: list[dict[str, Any]], pods: list[dict[str, Any]], replicas: int, gpus_per_replica: int,
                  values: dict[str, Any], namespace: str, release: str,
                  fleet: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """How many replicas fit on the eligible GPU nodes, each replica needing all its GPUs on one node.

    Free GPUs per node are allocatable minus what bound, unfinished pods request; the release's own
    pods are not counted, since an upgrade replaces them. Replica slots per node are free // gpus_per_replica.

    ``fleet`` lists the other releases deployed together with this one (``name``, ``namespace``,
    ``replicas``, ``gpus_per_replica``; placed like this release). Their pods are not counted either,
    and every replica of every member must then fit at once: see ``pack_fleet``.
    """
    members = [{"name": release, "namespace": namespace, "replicas": replicas, "gpus_per_replica": gpus_per_replica}]
    members += [dict(m) for m in fleet or [] if (m["namespace"], m["name"]) != (namespace, release)]
    replaced = {(m["namespace"], m["name"]) for m in members}
    used: dict[str, int] = {}
    for pod in pods:
        meta, node_name = pod.get("metadata", {}), pod.get("spec", {}).get("nodeName")
        if not node_name or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            continue
        if (meta.get("namespace"), (meta.get("labels") or {}).get(INSTANCE_LABEL)) in replaced:
            continue
        used[node_name] = used.get(node_name, 0) + pod_gpus(pod)
    report: dict[str, Any] = {}
    ineligible: dict[str, str] = {}
    slots = 0
    for node in nodes:
        name = node["metadata"]["name"]
        reason = node_ineligible_reason(node, values)
        if reason:
            if allocatable_gpus(node):
                ineligible[name] = reason  # GPU nodes only; CPU nodes are not worth listing
            continue
        allocatable = allocatable_gpus(node)
        free = max(allocatable - used.get(name, 0), 0)
        node_slots = free // gpus_per_replica
        slots += node_slots
        report[name] = {"allocatable": allocatable, "requested": used.get(name, 0), "free": free, "replica_slots": node_slots}
    plan: dict[str, Any] = {"replicas": replicas, "gpus_per_replica": gpus_per_replica, "replica_slots": slots,
                            "fits": slots >= replicas, "nodes": report, "ineligible_nodes": ineligible}
    if fleet is not None:
        plan["fleet"] = pack_fleet({n: v["free"] for n, v in report.items()}, members)
        plan["fits"] = plan["fits"] and plan["fleet"]["fits"]
    return plan


def pack_fleet(free: dict[str, int], members: list[dict[str, Any]]) -> dict[str, Any]:
    """Place every replica of every member on the free GPUs, all GPUs of a replica on one node.

    Best fit decreasing: the replicas with the most GPUs first (members in their order on ties),
    each on the node with the fewest free GPUs that still holds it, names breaking ties. The
    scheduler places pods one at a time, so a fleet this cannot place may still not fit there;
    one this places fits whenever the scheduler packs as tightly (it scores by least allocated
    by default, so a fleet near the limit can still strand GPUs).
    """
    left = dict(free)
    placed: dict[str, dict[str, int]] = {}
    unplaced: dict[str, int] = {}
    order = sorted(range(len(members)), key=lambda i: (-int(members[i]["gpus_per_replica"]), i))
    for i in order:
        member = members[i]
        key, gpus = f"{member['namespace']}/{member['name']}", int(member["gpus_per_replica"])
        for _replica in range(int(member["replicas"])):
            fitting = sorted((n for n, f in left.items() if f >= gpus), key=lambda n: (left[n], n))
            if not fitting:
                unplaced[key] = unplaced.get(key, 0) + 1
                continue
            left[fitting[0]] -= gpus
            node_count = placed.setdefault(key, {})
            node_count[fitting[0]] = node_count.get(fitting[0], 0) + 1
    requested = sum(int(m["replicas"]) * int(m["gpus_per_replica"]) for m in members)
    return {"members": [{"name": m["name"], "namespace": m["namespace"], "replicas": int(m["replicas"]),
                         "gpus_per_replica": int(m["gpus_per_replica"]),
                         "placed": placed.get(f"{m['namespace']}/{m['name']}", {})} for m in members],
            "requested_gpus": requested, "free_gpus": sum(free.values()), "fits": not unplaced, "unplaced": unplaced}


def check_capacity(plan: dict[str, Any]) -> None:
    """Raise with the per-node numbers when the replicas (of this release, then of the whole fleet) do not fit."""
    if plan["fits"]:
        return
    if plan["replica_slots"] >= plan["replicas"] and "fleet" in plan:
        fleet = plan["fleet"]
        asked = ", ".join(f"{m['namespace']}/{m['name']} {m['replicas']} x {m['gpus_per_replica']}" for m in fleet["members"])
        per_node = ", ".join(f"{n}: {v['free']} of {v['allocatable']} free" for n, v in plan["nodes"].items())
        short = ", ".join(f"{k}: {v} replica(s)" for k, v in fleet["unplaced"].items())
        allocatable = sum(v["allocatable"] for v in plan["nodes"].values())
        raise KubeInferError(
            f"fleet: not enough GPU capacity for the {len(fleet['members'])} releases together ({asked} GPUs, each replica on one "
            f"node: {fleet['requested_gpus']} GPUs), but the eligible GPU nodes have {fleet['free_gpus']} free of {allocatable} "
            f"allocatable {GPU_RESOURCE} ({per_node or 'no eligible GPU node'}); no room for {short}. Nothing was installed or "
            "changed: serve fewer replicas or GPUs, or add GPU nodes.",
            capacity=plan)
    largest = max((v["allocatable"] for v in plan["nodes"].values()), default=0)
    if plan["nodes"] and plan["gpus_per_replica"] > largest:
        raise KubeInferError(
            f"gpus_per_replica: {plan['gpus_per_replica']} GPUs per replica, but no eligible GPU node has more than {largest} "
            f"allocatable {GPU_RESOURCE} (all GPUs of a replica must be on one node; nodes: "
            + ", ".join(f"{n}: {v['allocatable']}" for n, v in plan["nodes"].items()) + ")",
            capacity=plan)
    per_node = ", ".join(f"{n}: {v['free']} of {v['allocatable']} free ({v['replica_slots']} replicas)" for n, v in plan["nodes"].items())
    skipped = "; ".join(f"{n}: {r}" for n, r in plan["ineligible_nodes"].items())
    raise KubeInferError(
        f"replicas: not enough GPU capacity: {plan['replicas']} replicas x {plan['gpus_per_replica']} GPUs, each replica on one node, "
        f"but the eligible GPU nodes have room for {plan['replica_slots']} "
        f"({per_node or 'no eligible GPU node'})" + (f"; not eligible: {skipped}" if skipped else "") + ".",
        capacity=plan,
    )
