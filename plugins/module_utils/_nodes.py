# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Labels and taints on many nodes: one list call, one patch per node that changes, sent concurrently.

Private to this collection: the interface may change without notice.
"""
from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_discovery import nfd_gpu_node, probe_nodes
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import ApiError, Kube

EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def label_key_error(key: str) -> str | None:
    """Why ``key`` is not a valid label or taint key, or None."""
    prefix, sep, name = key.rpartition("/")
    if not name or len(name) > 63 or not _NAME.match(name):
        return "the name part must be 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
    if sep and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return "the prefix must be a DNS subdomain of at most 253 characters"
    return None


def label_value_error(value: str) -> str | None:
    """Why ``value`` is not a valid label or taint value, or None."""
    if len(value) > 63 or not _NAME.match(value):
        return "it must be at most 63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric"
    return None


def validate(labels: dict[str, Any], taints: list[dict[str, Any]]) -> None:
    """Check every input before any write; the message names the offending parameter."""
    for key, value in labels.items():
        err = label_key_error(key)
        if err:
            raise KubeInferError(f"labels: invalid label key {key!r}: {err}")
        if value is not None:
            err = label_value_error(str(value))
            if err:
                raise KubeInferError(f"labels: invalid value {value!r} for label {key!r}: {err}")
    for i, taint in enumerate(taints):
        err = label_key_error(taint["key"])
        if err:
            raise KubeInferError(f"taints[{i}].key: invalid taint key {taint['key']!r}: {err}")
        if taint.get("value"):
            err = label_value_error(str(taint["value"]))
            if err:
                raise KubeInferError(f"taints[{i}].value: invalid taint value {taint['value']!r}: {err}")
        if taint["effect"] not in EFFECTS:
            raise KubeInferError(f"taints[{i}].effect: {taint['effect']!r} is not one of {', '.join(EFFECTS)}")


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
        if state == "present" and taint.get("state", "present") == "present":
            new = {"key": taint["key"], "effect": taint["effect"]}
            if taint.get("value"):
                new["value"] = str(taint["value"])
            # keep the position of an existing taint so that a no-op stays a no-op
            pos = next((i for i, t in enumerate(current) if (t["key"], t.get("effect")) == ident), len(out))
            out.insert(min(pos, len(out)), new)
    return out


def _comparable(taints: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return sorted((t["key"], t.get("value") or "", t.get("effect", "")) for t in taints)


def discover(kube: Kube, probe: Mapping[str, Any], check_mode: bool) -> tuple[list[dict[str, Any]], str]:
    """The GPU nodes when no selection is given, and how they were found.

    The nodes node-feature-discovery labelled with an NVIDIA PCI device; on a cluster without those labels
    (a fresh one, before the GPU Operator chart installs NFD), the nodes on which the probe pod finds one.
    Check mode runs no probe pod, so it then selects nothing and says so.
    """
    nodes = kube.list("v1", "Node")
    labelled = [n for n in nodes if nfd_gpu_node(n)]
    if labelled or not nodes:
        return labelled, "node-feature-discovery labels"
    if check_mode:
        return [], "none: no node has a node-feature-discovery GPU label, and check mode runs no probe pod"
    answers = probe_nodes(kube, [n["metadata"]["name"] for n in nodes], **probe)
    return [n for n in nodes if answers[n["metadata"]["name"]]["nvidia_pci"]], "probe pods (NVIDIA PCI device in sysfs)"


PARALLEL = 32


def reconcile(kube: Kube, names: list[str] | None, label_selector: str | None, labels: dict[str, Any],
              taints: list[dict[str, Any]], state: str, require_match: bool, check_mode: bool,
              want_diff: bool, probe: Mapping[str, Any] | None = None, parallel: int = PARALLEL) -> dict[str, Any]:
    """Apply labels and taints to the selected nodes and report per node what changed.

    With neither ``names`` nor ``label_selector``, the GPU nodes are discovered (see discover) with the
    probe options ``probe`` (as _gpu_discovery.probe_options returns them). At most ``parallel`` patches
    are in flight at a time; results and diffs are in node-name order whatever order they complete in.
    """
    if parallel < 1:
        raise KubeInferError(f"parallel: must be at least 1 (1 patches one node at a time), got {parallel}")
    validate(labels, taints)
    selected_by = "names" if names else "label_selector"
    if not names and not label_selector:
        if probe is None:
            raise KubeInferError("names: give names, label_selector or both to select nodes")
        nodes, selected_by = discover(kube, probe, check_mode)
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
    outcomes = _reconcile_all(kube, nodes, labels, taints, state, check_mode, want_diff, parallel)
    done = [o for o in outcomes if isinstance(o, tuple)]
    results = [result for result, _diff in done]
    errors = [o for o in outcomes if isinstance(o, ApiError)]
    if errors:
        # The first failure in node-name order; the nodes patched meanwhile are reported with it.
        raise KubeInferError(errors[0].msg, nodes=results, changed=any(r["changed"] for r in results),
                             api_requests=dict(kube.requests)) from errors[0]
    changed = [r for r in results if r["changed"]]
    out: dict[str, Any] = {
        "changed": bool(changed),
        "matched": [r["name"] for r in results],
        "selected_by": selected_by,
        "changed_nodes": [r["name"] for r in changed],
        "nodes": results,
        "api_requests": dict(kube.requests),
    }
    if want_diff:
        out["diff"] = [d for _result, d in done if d is not None]
    return out


Outcome = Union[Tuple[Dict[str, Any], Optional[Dict[str, Any]]], ApiError, None]


def _reconcile_all(kube: Kube, nodes: list[dict[str, Any]], labels: dict[str, Any], taints: list[dict[str, Any]],
                   state: str, check_mode: bool, want_diff: bool, parallel: int) -> list[Outcome]:
    """Reconcile every node with at most ``parallel`` in flight; one outcome per node, in the order of ``nodes``.

    An outcome is (result, diff), the ApiError the node failed with, or None for a node not started
    because another one had failed (as a sequential run stops at its first failure).
    """
    failed = threading.Event()

    def one(node: dict[str, Any]) -> Outcome:
        if failed.is_set():
            return None
        try:
            return _reconcile_with_retry(kube, node, labels, taints, state, check_mode, want_diff)
        except ApiError as e:
            failed.set()
            return e
        except Exception:
            failed.set()
            raise

    if parallel == 1 or len(nodes) <= 1:
        return [one(node) for node in nodes]
    with ThreadPoolExecutor(max_workers=min(parallel, len(nodes)), thread_name_prefix="gpu_node") as pool:
        return list(pool.map(one, nodes))


CONFLICT_ATTEMPTS = 5


def _reconcile_with_retry(kube: Kube, node: dict[str, Any], labels: dict[str, Any], taints: list[dict[str, Any]],
                          state: str, check_mode: bool, want_diff: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Patch one node; when a taint patch meets a concurrent write (409), re-read the node and recompute.

    Only a patch that replaces the taint list carries a resourceVersion, so only it can conflict.
    Each conflict costs one more get and one more patch; the recomputed patch never overwrites
    the concurrent change, because it is made from the node as it is now.
    """
    for attempt in range(1, CONFLICT_ATTEMPTS + 1):
        try:
            return _reconcile_one(kube, node, labels, taints, state, check_mode, want_diff)
        except ApiError as e:
            if e.status != 409 or attempt == CONFLICT_ATTEMPTS:
                raise
            fresh = kube.get("v1", "Node", node["metadata"]["name"])
            if fresh is None:
                raise
            node = fresh
    raise AssertionError("unreachable")  # pragma: no cover


def _reconcile_one(kube: Kube, node: dict[str, Any], labels: dict[str, Any], taints: list[dict[str, Any]],
                   state: str, check_mode: bool, want_diff: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Patch one node if it needs it; return its result and, when asked for and it changed, its diff."""
    meta = node["metadata"]
    name = meta["name"]
    cur_labels = meta.get("labels") or {}
    cur_taints = node.get("spec", {}).get("taints") or []
    new_labels = desired_labels(cur_labels, labels, state)
    new_taints = desired_taints(cur_taints, taints, state)
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
    kube.patch("v1", "Node", name, patch, dry_run=check_mode)
    diff = None
    if want_diff:
        diff = {
            "before_header": f"node/{name}", "after_header": f"node/{name}",
            "before": {"labels": cur_labels, "taints": cur_taints},
            "after": {"labels": new_labels, "taints": new_taints},
        }
    return result, diff
