# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Labels and taints on many nodes: one list call, one patch per node that changes, sent concurrently.

Private to this collection: the interface may change without notice.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_discovery import nfd_gpu_node, probe_nodes, probe_options
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import (
    check_label_selector,
    check_labels,
    check_names,
    label_key_error,
    label_value_error,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube, retry_on_conflict


def validate(params: Mapping[str, Any]) -> None:
    """Check what the argument spec cannot, before any request; the message names the offending parameter."""
    if params["parallel"] < 1:
        raise KubeInferError(f"parallel: must be at least 1 (1 patches one node at a time), got {params['parallel']}")
    check_names(params["names"], "names", "node name")
    check_label_selector(params["label_selector"], "label_selector")
    check_labels(params["labels"], "labels")
    seen: dict[tuple[str, str], int] = {}
    for i, taint in enumerate(params["taints"]):
        ident = (taint["key"], taint["effect"])
        if ident in seen:
            raise KubeInferError(f"taints[{i}]: taint {taint['key']!r} with effect {taint['effect']} is already taints[{seen[ident]}]; "
                                 "a node holds one taint per key and effect")
        seen[ident] = i
        err = label_key_error(taint["key"])
        if err:
            raise KubeInferError(f"taints[{i}].key: invalid taint key {taint['key']!r}: {err}")
        err = label_value_error(taint["value"] or "")
        if err:
            raise KubeInferError(f"taints[{i}].value: invalid taint value {taint['value']!r}: {err}")


def desired_labels(current: dict[str, str], labels: dict[str, Any], state: str) -> dict[str, str]:
    """The node's labels after the change: null values and state=absent remove."""
    out = dict(current)
    for key, value in labels.items():
        if state == "absent" or value is None:
            out.pop(key, None)
        else:
            out[key] = str(value)
    return out


def desired_taints(current: list[dict[str, Any]], taints: list[dict[str, Any]], state: str) -> list[dict[str, Any]]:
    """The node's taints after the change; a taint is identified by key and effect."""
    out = [dict(t) for t in current]
    for taint in taints:
        ident = (taint["key"], taint["effect"])
        out = [t for t in out if (t["key"], t.get("effect")) != ident]
        if state == "present" and taint["state"] == "present":
            new = {"key": taint["key"], "effect": taint["effect"]}
            if taint.get("value"):
                new["value"] = str(taint["value"])
            # keep the position of an existing taint so that a no-op stays a no-op
            pos = next((i for i, t in enumerate(current) if (t["key"], t.get("effect")) == ident), len(out))
            out.insert(min(pos, len(out)), new)
    return out


def _comparable(taints: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return sorted((t["key"], t.get("value") or "", t.get("effect", "")) for t in taints)


def discover(kube: Kube, probe: Mapping[str, Any], check_mode: bool) -> tuple[list[dict[str, Any]], str, list[str]]:
    """The GPU nodes when no selection is given, and how they were found.

    Returns (nodes, how they were found, the nodes check mode would have probed).
    The nodes node-feature-discovery labelled with an NVIDIA PCI device; on a cluster without those labels
    (a fresh one, before the GPU Operator chart installs NFD), the nodes on which the probe pod finds one.
    Check mode runs no probe pod, so it then selects nothing and says so; run() reports that as a change,
    since a real run would probe those nodes and label and taint the GPU nodes among them.
    """
    nodes = kube.list("v1", "Node")
    labelled = [n for n in nodes if nfd_gpu_node(n)]
    if labelled or not nodes:
        return labelled, "node-feature-discovery labels", []
    names = sorted(n["metadata"]["name"] for n in nodes)
    if check_mode:
        return [], "none: no node has a node-feature-discovery GPU label, and check mode runs no probe pod", names
    answers = probe_nodes(kube, names, **probe)
    return [n for n in nodes if answers[n["metadata"]["name"]]["nvidia_pci"]], "probe pods (NVIDIA PCI device in sysfs)", []


def run(kube: Kube, params: Mapping[str, Any], check_mode: bool, diff: bool) -> dict[str, Any]:
    """Apply labels and taints to the selected nodes and report per node what changed.

    With neither ``names`` nor ``label_selector``, the GPU nodes are discovered (see discover) with the
    probe_* options. At most ``parallel`` patches are in flight at a time; results and diffs are in
    node-name order whatever order they complete in.
    """
    validate(params)
    probe = probe_options(params)
    names, label_selector, require_match = params["names"], params["label_selector"], params["require_match"]
    selected_by = "names" if names else "label_selector"
    would_probe: list[str] = []
    if not names and not label_selector:
        nodes, selected_by, would_probe = discover(kube, probe, check_mode)
        if not nodes and require_match and not check_mode:
            raise KubeInferError("names: no node has an NVIDIA PCI device, by node-feature-discovery's labels or the probe; "
                                 "select the GPU nodes with names or label_selector", matched=[], changed=False)
    else:
        nodes = kube.list("v1", "Node", label_selector=label_selector)
    if names:
        wanted = set(names)
        nodes = [n for n in nodes if n["metadata"]["name"] in wanted]
        missing = sorted(wanted - {n["metadata"]["name"] for n in nodes})
        if missing and require_match:
            where = f" matching label_selector {label_selector!r}" if label_selector else ""
            raise KubeInferError(f"names: no node{where} is named {', '.join(missing)}", matched=[], changed=False)
    if not nodes and require_match and label_selector:
        raise KubeInferError(f"label_selector: no node matches {label_selector!r}", matched=[], changed=False)

    nodes = sorted(nodes, key=lambda n: n["metadata"]["name"])
    outcomes = _reconcile_all(kube, nodes, params, check_mode, diff)
    done = [o for o in outcomes if isinstance(o, tuple)]
    results = [result for result, _diff in done]
    errors = [o for o in outcomes if isinstance(o, KubeInferError)]
    if errors:
        # The first failure in node-name order; the nodes patched meanwhile are reported with it.
        raise KubeInferError(errors[0].msg, nodes=results, changed=any(r["changed"] for r in results),
                             api_requests=dict(kube.requests)) from errors[0]
    changed = [r for r in results if r["changed"]]
    out: dict[str, Any] = {
        # In check mode, nodes still to be probed would be labelled and tainted (or the run would fail): a change.
        "changed": bool(changed) or bool(would_probe),
        "matched": [r["name"] for r in results],
        "selected_by": selected_by,
        "changed_nodes": [r["name"] for r in changed],
        "nodes": results,
        "api_requests": dict(kube.requests),
    }
    if would_probe:
        out["would_probe"] = would_probe
    if diff:
        out["diff"] = [d for _result, d in done if d is not None]
    return out


Outcome = Union[Tuple[Dict[str, Any], Optional[Dict[str, Any]]], KubeInferError, None]


def _reconcile_all(kube: Kube, nodes: list[dict[str, Any]], params: Mapping[str, Any], check_mode: bool,
                   diff: bool) -> list[Outcome]:
    """Reconcile every node with at most ``parallel`` in flight; one outcome per node, in the order of ``nodes``.

    An outcome is (result, diff), the error the node failed with, or None for a node not started
    because another one had failed (as a sequential run stops at its first failure).
    """
    failed = threading.Event()

    def one(node: dict[str, Any]) -> Outcome:
        if failed.is_set():
            return None
        try:
            return _reconcile_with_retry(kube, node, params, check_mode, diff)
        except KubeInferError as e:
            failed.set()
            return e
        except Exception:
            failed.set()
            raise

    parallel = params["parallel"]
    if parallel == 1 or len(nodes) <= 1:
        return [one(node) for node in nodes]
    with ThreadPoolExecutor(max_workers=min(parallel, len(nodes)), thread_name_prefix="gpu_node") as pool:
        return list(pool.map(one, nodes))


def _reconcile_with_retry(kube: Kube, node: dict[str, Any], params: Mapping[str, Any], check_mode: bool,
                          diff: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Patch one node; when a taint patch meets a concurrent write (409), re-read the node and recompute.

    Only a patch that replaces the taint list carries a resourceVersion, so only it can conflict.
    Each conflict costs one more get and one more patch; the recomputed patch never overwrites
    the concurrent change, because it is made from the node as it is now.
    """
    name = node["metadata"]["name"]

    def write(attempt: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        current = node if attempt == 1 else kube.get("v1", "Node", name)
        if current is None:
            raise KubeInferError(f"node {name} was deleted while it was being patched")
        return _reconcile_one(kube, current, params, check_mode, diff)

    return retry_on_conflict(write, f"node {name}")


def _reconcile_one(kube: Kube, node: dict[str, Any], params: Mapping[str, Any], check_mode: bool,
                   diff: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Patch one node if it needs it; return its result and, when asked for and it changed, its diff."""
    meta = node["metadata"]
    name = meta["name"]
    cur_labels = meta.get("labels") or {}
    cur_taints = node.get("spec", {}).get("taints") or []
    new_labels = desired_labels(cur_labels, params["labels"], params["state"])
    new_taints = desired_taints(cur_taints, params["taints"], params["state"])
    label_patch: dict[str, Any] = {k: new_labels.get(k) for k in set(cur_labels) | set(new_labels)
                                   if cur_labels.get(k) != new_labels.get(k)}
    taints_changed = _comparable(cur_taints) != _comparable(new_taints)
    result: dict[str, Any] = {
        "name": name,
        "changed": bool(label_patch or taints_changed),
        "labels_set": sorted(k for k, v in label_patch.items() if v is not None),
        "labels_removed": sorted(k for k, v in label_patch.items() if v is None),
        "taints": new_taints,
    }
    if not result["changed"]:
        return result, None
    # A merge patch of only the changed label keys cannot clobber a concurrent change to other keys, so it
    # carries no precondition. The taint list is replaced whole: it carries the node's resourceVersion, so
    # that it fails (409) instead of overwriting a taint written since the node was read. In check mode the
    # patch is a server-side dry run: the API server validates it (admission included) and stores nothing.
    metadata: dict[str, Any] = {}
    patch: dict[str, Any] = {"metadata": metadata}
    if taints_changed:
        metadata["resourceVersion"] = meta["resourceVersion"]
        patch["spec"] = {"taints": new_taints or None}
    if label_patch:
        metadata["labels"] = label_patch
    # The answer is not read: it comes back as metadata only, so that the API server does not encode each node's status.
    kube.patch("v1", "Node", name, patch, dry_run=check_mode, metadata_only=True)
    if not diff:
        return result, None
    return result, {
        "before_header": f"node/{name}", "after_header": f"node/{name}",
        "before": {"labels": cur_labels, "taints": cur_taints},
        "after": {"labels": new_labels, "taints": new_taints},
    }
