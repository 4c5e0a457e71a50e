# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""NVIDIA GPU Operator Helm values from typed options. Private to this collection: the interface may change without notice."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_discovery import host_driver
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm_release import deep_merge
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import GPU_RESOURCE, managed_labels

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


def _names(nodes: Iterable[str], limit: int = 5) -> str:
    """Node names for a message: a few, and how many more (a thousand would drown it)."""
    names = sorted(nodes)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def resolve_driver_enabled(driver_enabled: bool | str, probes: Mapping[str, Mapping[str, Any]] | None = None,
                           deployed_values: Mapping[str, Any] | None = None) -> tuple[bool, str]:
    """Turn ``driver_enabled`` (true, false or 'auto') into a bool and the reason for it.

    'auto' decides from ``probes``, the answers of the GPU node probe (_gpu_discovery.probe_nodes) by node
    name: the driver containers are installed unless every node with an NVIDIA PCI device already has a
    host driver, found the way the operator's validator finds one. A mix of both is refused: the driver
    DaemonSet fails on nodes whose host loaded the kernel module, and without it the others never get one.
    No label counts as evidence (see _gpu_discovery). Once the release is installed, 'auto' keeps its
    ``driver.enabled`` (``deployed_values``, the release's user values), so a re-run probes nothing and
    changes nothing. ``probes`` None (check mode, where no probe pod may run) gives the chart default, true.
    """
    if isinstance(driver_enabled, bool):
        return driver_enabled, f"driver_enabled set to {str(driver_enabled).lower()}"
    if str(driver_enabled).lower() != "auto":
        raise KubeInferError(f"driver_enabled must be true, false or 'auto', got {driver_enabled!r}")
    deployed = ((deployed_values or {}).get("driver") or {}).get("enabled")
    if isinstance(deployed, bool):
        return deployed, f"auto: kept driver.enabled={str(deployed).lower()} of the installed release"
    if probes is None:
        return True, "auto: not probed in check mode; showing the chart default, driver.enabled=true"
    gpu_nodes = {name: answer for name, answer in probes.items() if answer.get("nvidia_pci")}
    if not gpu_nodes:
        return True, f"auto: none of the {len(probes)} probed node(s) has an NVIDIA PCI device; chart default driver.enabled=true"
    with_driver = sorted(n for n, a in gpu_nodes.items() if host_driver(a))
    without = sorted(n for n in gpu_nodes if n not in with_driver)
    if with_driver and without:
        raise KubeInferError(
            f"driver_enabled: auto found a pre-installed NVIDIA driver on {_names(with_driver)} but none on {_names(without)}. "
            "One ClusterPolicy cannot serve both: the operator's driver fails where the host loaded the kernel module, and "
            "without it the other nodes get no driver. Install the driver on the remaining nodes, or narrow node_selector "
            "to one kind, or set driver_enabled explicitly")
    if with_driver:
        versions = sorted({str(gpu_nodes[n].get("driver")) for n in with_driver})
        return False, (f"auto: every GPU node has a pre-installed driver ({_names(with_driver)}; "
                       f"nvidia-smi on the host, kernel module {', '.join(versions)})")
    return True, f"auto: no GPU node has a host driver ({_names(without)}), so the operator installs it"


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
            "labels": managed_labels(),
        },
        "data": {TIME_SLICING_CONFIG_KEY: time_slicing_config(replicas, mig_strategy)},
    }


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise KubeInferError(f"{name} must be true or false, got {value!r}")


def gpu_operator_values(
    driver_enabled: bool | str = "auto",
    probes: Mapping[str, Mapping[str, Any]] | None = None,
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

    ``driver_enabled`` 'auto' is resolved from ``probes`` and ``deployed_values`` by
    resolve_driver_enabled; a ``driver.enabled`` in ``values`` still wins, and the returned
    ``driver_enabled`` is the final one.
    """
    for name, flag in (("toolkit_enabled", toolkit_enabled), ("device_plugin_enabled", device_plugin_enabled),
                       ("dcgm_exporter_enabled", dcgm_exporter_enabled), ("service_monitor", service_monitor)):
        _check_bool(name, flag)
    if mig_strategy not in MIG_STRATEGIES:
        raise KubeInferError(f"mig_strategy must be one of {', '.join(MIG_STRATEGIES)}, got {mig_strategy!r}")
    if mig_strategy == "mixed":
        raise KubeInferError(
            "mig_strategy: mixed is not supported. Fully partitioned nodes then advertise nvidia.com/mig-<profile> and no "
            f"{GPU_RESOURCE}, which the vLLM chart does not request and the verification does not count; use single, "
            f"which advertises each MIG device as {GPU_RESOURCE}")
    if service_monitor and not dcgm_exporter_enabled:
        raise KubeInferError("service_monitor needs dcgm_exporter_enabled: the ServiceMonitor scrapes the DCGM exporter")
    if time_slicing_replicas is not None:
        if isinstance(time_slicing_replicas, bool) or not isinstance(time_slicing_replicas, int) or time_slicing_replicas < 2:
            raise KubeInferError(f"time_slicing_replicas must be an integer of at least 2 (or unset for no sharing), got {time_slicing_replicas!r}")
        if not device_plugin_enabled:
            raise KubeInferError("time_slicing_replicas needs device_plugin_enabled: the device plugin does the time-slicing")
    if values is not None and not isinstance(values, Mapping):
        raise KubeInferError(f"values must be a mapping, got {type(values).__name__}")

    driver, reason = resolve_driver_enabled(driver_enabled, probes, deployed_values)
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
