# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""NVIDIA GPU Operator Helm values from typed options. Private to this collection: the interface may change without notice."""
from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping, Sequence

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError

# Pinned chart: the newest GPU Operator release when this was written (tag v26.7.0, 2026-08-20).
# Its values.yaml is the source of every key below. Chart versions carry the "v".
DEFAULT_CHART_VERSION = "v26.7.0"
DEFAULT_CHART_REPO_URL = "https://helm.ngc.nvidia.com/nvidia"
CHART_NAME = "gpu-operator"
DEFAULT_RELEASE_NAME = "gpu-operator"
DEFAULT_NAMESPACE = "gpu-operator"
CLUSTER_POLICY_NAME = "cluster-policy"
"""The chart creates exactly one ClusterPolicy (nvidia.com/v1, cluster-scoped) with this name."""
CLUSTER_POLICY_READY_STATE = "ready"
"""ClusterPolicy status.state values: ready, notReady, ignored."""

MIG_STRATEGIES = ("none", "single", "mixed")
TIME_SLICING_CONFIGMAP = "time-slicing-config"
TIME_SLICING_CONFIG_KEY = "any"
GPU_RESOURCE = "nvidia.com/gpu"

# Node labels that show an NVIDIA driver stack already works on the node. Written by GPU Feature
# Discovery (which needs a working driver) or by NFD rules of an NVIDIA stack.
GPU_PRESENT_LABEL = "nvidia.com/gpu.present"
DRIVER_LABEL_KEYS = ("nvidia.com/cuda.driver.major",)
DRIVER_LABEL_PREFIXES = ("nvidia.com/cuda.driver-version.",)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``base`` with ``override`` merged in. Nested mappings merge key by key; any other
    value in ``override`` (lists, scalars, None) replaces the one in ``base``. Inputs are not changed."""
    merged: dict[str, Any] = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _quantity_count(value: Any) -> int:
    """An extended-resource quantity ("8", 8) as an int; 0 when absent or not a whole number."""
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return 0


def driver_evidence(node: Mapping[str, Any]) -> list[str]:
    """Why a Node (a dict as the API returns it) looks like it already has a working NVIDIA driver.

    Evidence, per node: the label ``nvidia.com/gpu.present=true``; a ``nvidia.com/cuda.driver.major``
    or ``nvidia.com/cuda.driver-version.*`` label (GPU Feature Discovery, which only runs on a working
    driver); ``status.allocatable["nvidia.com/gpu"] > 0`` (a device plugin already serves GPUs).
    """
    metadata = node.get("metadata") or {}
    labels = metadata.get("labels") or {}
    name = metadata.get("name", "<unnamed>")
    evidence = []
    if str(labels.get(GPU_PRESENT_LABEL, "")).lower() == "true":
        evidence.append(f"node {name} has label {GPU_PRESENT_LABEL}=true")
    for key in sorted(labels):
        if key in DRIVER_LABEL_KEYS or key.startswith(DRIVER_LABEL_PREFIXES):
            evidence.append(f"node {name} has label {key}={labels[key]}")
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    count = _quantity_count(allocatable.get(GPU_RESOURCE))
    if count > 0:
        evidence.append(f"node {name} has allocatable {GPU_RESOURCE}={count}")
    return evidence


def resolve_driver_enabled(driver_enabled: bool | str, nodes: Iterable[Mapping[str, Any]] | None = None,
                           deployed_values: Mapping[str, Any] | None = None) -> tuple[bool, str]:
    """Turn ``driver_enabled`` (true, false or 'auto') into a bool and the reason for it.

    'auto' means: install the driver containers unless a selected GPU node shows a working driver
    already (see driver_evidence), because the driver DaemonSet fails on nodes whose host already
    loaded the NVIDIA kernel modules. The catch: once the operator runs with its own driver, its
    GPU Feature Discovery and device plugin produce the very same labels and allocatable GPUs. So
    when the release is already installed, 'auto' keeps the ``driver.enabled`` of ``deployed_values``
    (the release's current user values); without that, a second run would turn the driver off.
    With no nodes given, 'auto' resolves to true (the chart default).
    """
    if isinstance(driver_enabled, bool):
        return driver_enabled, f"driver_enabled set to {str(driver_enabled).lower()}"
    if str(driver_enabled).lower() != "auto":
        raise KubeInferError(f"driver_enabled must be true, false or 'auto', got {driver_enabled!r}")
    deployed = ((deployed_values or {}).get("driver") or {}).get("enabled")
    if isinstance(deployed, bool):
        return deployed, f"auto: kept driver.enabled={str(deployed).lower()} of the installed release"
    evidence = [reason for node in (nodes or []) for reason in driver_evidence(node)]
    if evidence:
        # Three pieces of evidence make the case; a thousand nodes' worth would drown the message.
        shown = "; ".join(evidence[:3]) + (f"; and {len(evidence) - 3} more" if len(evidence) > 3 else "")
        return False, "auto: a driver is already installed (" + shown + ")"
    return True, "auto: no selected GPU node shows an installed driver"


def time_slicing_config(replicas: int, mig_strategy: str = "single") -> str:
    """The device plugin config (YAML, version v1) that shares each GPU ``replicas`` times."""
    return (
        "version: v1\n"
        "flags:\n"
        f"  migStrategy: {mig_strategy}\n"
        "sharing:\n"
        "  timeSlicing:\n"
        "    resources:\n"
        f"    - name: {GPU_RESOURCE}\n"
        f"      replicas: {replicas}\n"
    )


def time_slicing_configmap(replicas: int, namespace: str = DEFAULT_NAMESPACE, mig_strategy: str = "single") -> dict[str, Any]:
    """The ConfigMap the module creates in the operator namespace before the release, which
    ``devicePlugin.config.name``/``default`` point at (name time-slicing-config, key ``any``)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": TIME_SLICING_CONFIGMAP,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "kubeinfer.llm"},
        },
        "data": {TIME_SLICING_CONFIG_KEY: time_slicing_config(replicas, mig_strategy)},
    }


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise KubeInferError(f"{name} must be true or false, got {value!r}")


def gpu_operator_values(
    driver_enabled: bool | str = "auto",
    nodes: Sequence[Mapping[str, Any]] | None = None,
    toolkit_enabled: bool = True,
    device_plugin_enabled: bool = True,
    dcgm_exporter_enabled: bool = True,
    service_monitor: bool = False,
    mig_strategy: str = "single",
    time_slicing_replicas: int | None = None,
    values: Mapping[str, Any] | None = None,
    namespace: str = DEFAULT_NAMESPACE,
    deployed_values: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Helm values for the GPU Operator chart, and the objects the module must create first.

    Returns ``{"values": dict, "configmaps": [ConfigMap dict, ...], "driver_enabled": bool,
    "driver_reason": str}``. The computed values set, with the chart's own key names:
    ``driver.enabled``, ``toolkit.enabled``, ``devicePlugin.enabled``, ``dcgmExporter.enabled``,
    ``dcgmExporter.serviceMonitor.enabled`` (set explicitly: its chart default changed from false
    to true in v26.7.0; it needs the prometheus-operator ServiceMonitor CRD), ``mig.strategy`` and,
    with ``time_slicing_replicas``, ``devicePlugin.config`` ``{create: false, name:
    time-slicing-config, default: any}`` plus that ConfigMap in ``configmaps``. ``values`` is then
    deep-merged on top (user values win, see deep_merge). ``operator.defaultRuntime`` is not set:
    the chart dropped it in v25.3 (the toolkit configures the runtime through CDI).

    ``driver_enabled`` 'auto' is resolved from ``nodes`` and ``deployed_values`` by
    resolve_driver_enabled; a ``driver.enabled`` in ``values`` still wins, and the returned
    ``driver_enabled`` is the final one.
    """
    for name, flag in (("toolkit_enabled", toolkit_enabled), ("device_plugin_enabled", device_plugin_enabled),
                       ("dcgm_exporter_enabled", dcgm_exporter_enabled), ("service_monitor", service_monitor)):
        _check_bool(name, flag)
    if mig_strategy not in MIG_STRATEGIES:
        raise KubeInferError(f"mig_strategy must be one of {', '.join(MIG_STRATEGIES)}, got {mig_strategy!r}")
    if service_monitor and not dcgm_exporter_enabled:
        raise KubeInferError("service_monitor needs dcgm_exporter_enabled: the ServiceMonitor scrapes the DCGM exporter")
    if time_slicing_replicas is not None:
        if isinstance(time_slicing_replicas, bool) or not isinstance(time_slicing_replicas, int) or time_slicing_replicas < 2:
            raise KubeInferError(f"time_slicing_replicas must be an integer of at least 2 (or unset for no sharing), got {time_slicing_replicas!r}")
        if not device_plugin_enabled:
            raise KubeInferError("time_slicing_replicas needs device_plugin_enabled: the device plugin does the time-slicing")
    if values is not None and not isinstance(values, Mapping):
        raise KubeInferError(f"values must be a mapping, got {type(values).__name__}")

    driver, reason = resolve_driver_enabled(driver_enabled, nodes, deployed_values)
    computed: dict[str, Any] = {
        "driver": {"enabled": driver},
        "toolkit": {"enabled": toolkit_enabled},
        "devicePlugin": {"enabled": device_plugin_enabled},
        "dcgmExporter": {"enabled": dcgm_exporter_enabled, "serviceMonitor": {"enabled": service_monitor}},
        "mig": {"strategy": mig_strategy},
    }
    configmaps = []
    if time_slicing_replicas is not None:
        computed["devicePlugin"]["config"] = {"create": False, "name": TIME_SLICING_CONFIGMAP, "default": TIME_SLICING_CONFIG_KEY}
        configmaps.append(time_slicing_configmap(time_slicing_replicas, namespace, mig_strategy))
    merged = deep_merge(computed, values or {})
    final_driver = (merged.get("driver") or {}).get("enabled")
    if not isinstance(final_driver, bool):
        raise KubeInferError(f"values.driver.enabled must be true or false, got {final_driver!r}")
    if final_driver != driver:
        reason = f"values.driver.enabled={str(final_driver).lower()} overrides ({reason})"
    return {"values": merged, "configmaps": configmaps, "driver_enabled": final_driver, "driver_reason": reason}
