# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install, upgrade or remove the NVIDIA GPU Operator Helm release. Private to this collection: the interface may change without notice."""
from __future__ import annotations

from typing import Any, Mapping

from ansible_collections.kubeinfer.llm.plugins.module_utils import _helm_release
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_discovery import (
    nfd_gpu_node,
    probe_nodes,
    probe_options,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_operator_values import (
    CHART_NAME,
    TIME_SLICING_CONFIGMAP,
    gpu_operator_values,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm_release import Chart
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import (
    check_label_selector,
    check_namespace,
    check_release_name,
    is_managed,
    managed_labels,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube, ensure


# -- chart source ---------------------------------------------------------------------
def chart_source(chart_ref: str | None, chart_repo_url: str | None, chart_version: str) -> tuple[str, Chart]:
    """Where the GPU Operator chart comes from: ``(type, chart)`` (see _helm_release.chart_source)."""
    return _helm_release.chart_source(chart_ref, chart_repo_url, chart_version, CHART_NAME)


# -- validation -------------------------------------------------------------------------
def validate(params: Mapping[str, Any]) -> tuple[str, Chart] | None:
    """Check every input before the first request; return the chart source (None for state=absent). Messages name the parameter."""
    check_release_name(params["release_name"])
    check_namespace(params["namespace"])
    if params["timeout"] <= 0:
        raise KubeInferError(f"timeout: must be a positive number of seconds, got {params['timeout']}")
    if params["state"] == "absent":
        return None
    check_label_selector(params["node_selector"], "node_selector")
    source = chart_source(params["chart_ref"], params["chart_repo_url"], params["chart_version"])
    probe_options(params)
    # The typed options are checked once without the cluster; the real computation follows the reads.
    driver = parse_driver_enabled(params["driver_enabled"])
    gpu_operator_values(driver_enabled=True if driver == "auto" else driver, **typed_options(params))
    return source


def typed_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """The module's typed options, as gpu_operator_values() takes them."""
    return {
        "toolkit_enabled": params["toolkit_enabled"],
        "device_plugin_enabled": params["device_plugin_enabled"],
        "dcgm_exporter_enabled": params["dcgm_exporter_enabled"],
        "service_monitor": params["dcgm_service_monitor"],
        "mig_strategy": params["mig_strategy"],
        "time_slicing_replicas": params["time_slicing_replicas"],
        "values": params["values"],
        "namespace": params["namespace"],
    }


def parse_driver_enabled(value: Any) -> bool | str:
    """The ``driver_enabled`` option (a string in the argument spec) as True, False or 'auto'."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise KubeInferError(f"driver_enabled: must be true, false or auto, got {value!r}")


def probe_candidates(kube: Kube, node_selector: str | None) -> list[dict[str, Any]]:
    """The nodes to probe: those ``node_selector`` matches; without one, the nodes NFD found an NVIDIA PCI
    device on; on a cluster NFD has not run on yet (a fresh one: the operator chart installs NFD), every node."""
    if node_selector:
        return kube.list("v1", "Node", label_selector=node_selector)
    nodes = kube.list("v1", "Node")
    return [n for n in nodes if nfd_gpu_node(n)] or nodes


# -- run ---------------------------------------------------------------------------------
def run(kube: Kube, helm: Helm, params: Mapping[str, Any], check_mode: bool, diff: bool) -> dict[str, Any]:
    """Make the release match ``params`` (the module options); see the gpu_operator module docs."""
    name, namespace = params["release_name"], params["namespace"]
    result: dict[str, Any] = {"changed": False, "configmaps": [], "release": _helm_release.release_view(None, name, namespace)}
    planned = None
    try:
        source = validate(params)
        if source is None:
            _remove(kube, helm, params, check_mode, diff, result)
        else:
            planned = _install(kube, helm, params, source, check_mode, diff, result)
    except KubeInferError as e:
        merged = dict(result, **e.result)
        merged.update(_helm_release.result(helm, merged["release"]), api_requests=dict(kube.requests))
        raise KubeInferError(e.msg, **merged) from e
    result.update(_helm_release.result(helm, result["release"], planned), api_requests=dict(kube.requests))
    return result


def _install(kube: Kube, helm: Helm, params: Mapping[str, Any], source: tuple[str, Chart],
             check_mode: bool, diff: bool, result: dict[str, Any]) -> _helm_release.Plan:
    name, namespace = params["release_name"], params["namespace"]
    kind, chart = source
    current = _helm_release.read_for_upgrade(kube, helm, name, namespace, check_mode)
    result["release"] = _helm_release.release_view(current.row, name, namespace)
    _helm_release.check_upgradable(current)  # before any probe pod runs
    deployed = current.values if current.row else None

    driver = parse_driver_enabled(params["driver_enabled"])
    probes: dict[str, dict[str, Any]] | None = None
    deployed_driver = ((deployed or {}).get("driver") or {}).get("enabled") if isinstance((deployed or {}).get("driver"), dict) else None
    if driver == "auto" and not isinstance(deployed_driver, bool) and not check_mode:
        probes = probe_nodes(kube, [n["metadata"]["name"] for n in probe_candidates(kube, params["node_selector"])],
                             **probe_options(params))
        result["driver_probe"] = probes
    computed = gpu_operator_values(driver_enabled=driver, probes=probes, deployed_values=deployed, **typed_options(params))
    values = computed["values"]
    result.update(values=values, driver_enabled=computed["driver_enabled"], driver_reason=computed["driver_reason"],
                  chart_source={"type": kind, "chart": chart.ref, "repo": chart.repo, "version": chart.version_arg})
    planned = _helm_release.plan(current, chart, values)
    changes = list(planned.reasons)

    # The device-plugin ConfigMap must exist before the operator starts the device plugin.
    if computed["configmaps"]:
        ns_exists = _namespace(kube, namespace, params["create_namespace"], check_mode, result)
        for configmap in computed["configmaps"]:
            if not ns_exists:  # check mode, namespace still to be made: a dry run would 404
                result["configmaps"].append({"name": configmap["metadata"]["name"], "changed": True})
                result["changed"] = True
                continue
            changed, before, _after = ensure(kube, configmap, check_mode)
            result["configmaps"].append({"name": configmap["metadata"]["name"], "changed": changed})
            if changed:
                result["changed"] = True
                changes.append(f"configmap {namespace}/{configmap['metadata']['name']}: {'updated' if before else 'created'}")

    result["changes"] = changes
    if diff:
        result["diff"] = {
            "before": {"chart": current.row.get("chart"), "values": current.values} if current.row else {},
            "after": {"chart": chart.id, "values": values},
        }
    if not planned.reasons:
        return planned
    result["changed"] = True
    if check_mode:
        result["release_would_change"] = True
        return planned
    result["release"] = _helm_release.apply(kube, helm, planned, params["create_namespace"], params["atomic"],
                                            helm_wait=params["wait"] or params["atomic"], timeout=params["timeout"])
    return planned


def _namespace(kube: Kube, namespace: str, create: bool, check_mode: bool, result: dict[str, Any]) -> bool:
    """Whether the namespace exists (now, or in check mode: already). Creates it when ``create``."""
    if kube.get("v1", "Namespace", namespace) is not None:
        return True
    if not create:
        raise KubeInferError(f"namespace: {namespace} does not exist; create it or set create_namespace=true")
    result["changed"] = True
    result["namespace_created"] = True
    if check_mode:
        return False
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": managed_labels()}})
    return True


def _remove(kube: Kube, helm: Helm, params: Mapping[str, Any], check_mode: bool, diff: bool, result: dict[str, Any]) -> None:
    name, namespace = params["release_name"], params["namespace"]
    current = _helm_release.read(kube, helm, name, namespace)
    result["release"] = _helm_release.release_view(current.row, name, namespace)
    if current.row and diff:
        result["diff"] = {"before": {"chart": current.row.get("chart"), "values": current.values}, "after": {}}
    result["changed"] = _helm_release.remove(helm, current, check_mode, params["wait"], params["timeout"])
    # The time-slicing ConfigMap is ours only when it carries our managed-by label.
    configmap = kube.get("v1", "ConfigMap", TIME_SLICING_CONFIGMAP, namespace)
    if is_managed(configmap):
        kube.delete("v1", "ConfigMap", TIME_SLICING_CONFIGMAP, namespace, dry_run=check_mode)
        result["configmaps"].append({"name": TIME_SLICING_CONFIGMAP, "changed": True})
        result["changed"] = True
