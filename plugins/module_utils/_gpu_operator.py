# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install, upgrade or remove the NVIDIA GPU Operator Helm release. Private to this collection: the interface may change without notice."""
from __future__ import annotations

import os
import re
import tarfile
from typing import Any, Mapping

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_discovery import (
    nfd_gpu_node,
    probe_nodes,
    probe_options,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_operator_values import (
    CHART_NAME,
    DEFAULT_CHART_REPO_URL,
    DEFAULT_CHART_VERSION,
    TIME_SLICING_CONFIGMAP,
    gpu_operator_values,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm, values_differ
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube, ensure

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "kubeinfer.llm"
# helm list statuses in which a new upgrade may run; the pending-* ones mean another operation runs or was cut off.
UPGRADABLE = ("deployed", "failed", "superseded")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_RELEASE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


# -- chart source ---------------------------------------------------------------------
def _chart_yaml_fields(text: str) -> dict[str, str]:
    """Top-level scalar keys of a Chart.yaml (name and version are all we need)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith((" ", "\t", "-", "#")) and ":" in line:
            key, _sep, value = line.partition(":")
            value = value.split(" #", 1)[0].strip().strip("'\"")
            if value:
                fields[key.strip()] = value
    return fields


def read_local_chart(path: str) -> dict[str, str]:
    """``{name, version}`` of a local chart directory or ``.tgz`` archive; raises naming ``chart_ref``."""
    if os.path.isdir(path):
        chart_yaml = os.path.join(path, "Chart.yaml")
        if not os.path.isfile(chart_yaml):
            raise KubeInferError(f"chart_ref: {path} is a directory without a Chart.yaml, so it is not a Helm chart")
        with open(chart_yaml, encoding="utf-8") as f:
            fields = _chart_yaml_fields(f.read())
    elif os.path.isfile(path):
        try:
            with tarfile.open(path, "r:*") as archive:
                member = next((m for m in archive.getmembers()
                               if m.isfile() and m.name.count("/") == 1 and m.name.endswith("/Chart.yaml")), None)
                if member is None:
                    raise KubeInferError(f"chart_ref: archive {path} holds no <chart>/Chart.yaml, so it is not a packaged Helm chart")
                extracted = archive.extractfile(member)
                fields = _chart_yaml_fields(extracted.read().decode("utf-8") if extracted else "")
        except tarfile.TarError as e:
            raise KubeInferError(f"chart_ref: {path} is neither a chart directory nor a chart archive (.tgz): {e}") from e
    else:
        raise KubeInferError(f"chart_ref: local chart {path} does not exist (use an oci:// reference, an https:// URL or a chart path)")
    if not fields.get("name") or not fields.get("version"):
        raise KubeInferError(f"chart_ref: the Chart.yaml of {path} has no name or version")
    return {"name": fields["name"], "version": fields["version"]}


def same_version(a: str | None, b: str | None) -> bool:
    """Chart versions compared as helm resolves them: a leading "v" does not matter."""
    return bool(a) and bool(b) and str(a).lstrip("v") == str(b).lstrip("v")


def chart_source(chart_ref: str | None, chart_repo_url: str | None = DEFAULT_CHART_REPO_URL,
                 chart_version: str | None = DEFAULT_CHART_VERSION) -> dict[str, Any]:
    """Where the chart comes from, as the arguments of ``helm upgrade``.

    Returns ``{type, chart, repo, version, name}``: ``type`` is ``repo`` (chart ``gpu-operator`` from
    ``chart_repo_url``, or from a mirror repository given as an ``https://`` ``chart_ref``), ``oci``
    (an ``oci://`` reference), ``url`` (an ``https://.../*.tgz`` archive) or ``local`` (a chart
    directory or archive on the controller, for air-gapped sites). ``name`` is the chart name that
    ``helm list`` shows, so the release can be compared. A local chart's own version must equal
    ``chart_version``: the pin holds for archives too.
    """
    if not chart_version or not str(chart_version).strip():
        raise KubeInferError("chart_version: must not be empty (the chart version is pinned)")
    version = str(chart_version).strip()
    ref = (chart_ref or "").strip()
    if not ref:
        if not chart_repo_url or not re.match(r"^(https?|oci)://", chart_repo_url):
            raise KubeInferError(f"chart_repo_url: {chart_repo_url!r} is not an http(s):// or oci:// repository URL")
        if chart_repo_url.startswith("oci://"):
            return {"type": "oci", "chart": chart_repo_url.rstrip("/") + "/" + CHART_NAME, "repo": None,
                    "version": version, "name": CHART_NAME}
        return {"type": "repo", "chart": CHART_NAME, "repo": chart_repo_url, "version": version, "name": CHART_NAME}
    if ref.startswith("oci://"):
        name = ref.rstrip("/").rsplit("/", 1)[-1]
        if not name or ref.rstrip("/") == "oci:/" or ":" in name or "@" in name:
            raise KubeInferError(f"chart_ref: {ref!r} must be oci://<registry>/<path>/<chart> without a tag (the version comes from chart_version)")
        return {"type": "oci", "chart": ref.rstrip("/"), "repo": None, "version": version, "name": name}
    if re.match(r"^https?://", ref):
        if ref.endswith((".tgz", ".tar.gz")):
            name = re.sub(r"-v?\d[^/]*$", "", ref.rsplit("/", 1)[-1].rsplit(".t", 1)[0]) or CHART_NAME
            return {"type": "url", "chart": ref, "repo": None, "version": None, "name": name, "expected_version": version}
        return {"type": "repo", "chart": CHART_NAME, "repo": ref, "version": version, "name": CHART_NAME}
    path = os.path.abspath(os.path.expanduser(ref))
    meta = read_local_chart(path)
    if not same_version(meta["version"], version):
        raise KubeInferError(f"chart_version: the local chart {path} is version {meta['version']}, not {version}; "
                             "set chart_version to the chart's version to install it")
    return {"type": "local", "chart": path, "repo": None, "version": None, "name": meta["name"], "expected_version": meta["version"]}


def desired_chart(source: Mapping[str, Any]) -> str:
    """The ``chart`` column ``helm list`` shows once ``source`` is installed ("gpu-operator-v26.7.0")."""
    return f"{source['name']}-{source.get('version') or source.get('expected_version')}"


def chart_matches(release_chart: str | None, source: Mapping[str, Any]) -> bool:
    if not release_chart:
        return False
    name, version = source["name"], source.get("version") or source.get("expected_version")
    if not release_chart.startswith(name + "-"):
        return False
    return same_version(release_chart[len(name) + 1:], version)


# -- validation -------------------------------------------------------------------------
def validate(params: Mapping[str, Any]) -> dict[str, Any]:
    """Check every input before the first request; return the chart source. Messages name the parameter."""
    name, namespace = params.get("release_name") or "", params.get("namespace") or ""
    if not _RELEASE_NAME.match(name) or len(name) > 53:
        raise KubeInferError(f"release_name: {name!r} is not a valid Helm release name (lower-case DNS name, at most 53 characters)")
    if not _DNS_LABEL.match(namespace) or len(namespace) > 63:
        raise KubeInferError(f"namespace: {namespace!r} is not a valid namespace name (a DNS label: lower-case alphanumerics and '-')")
    timeout = params.get("timeout")
    if timeout is not None and timeout <= 0:
        raise KubeInferError(f"timeout: must be a positive number of seconds, got {timeout}")
    if params.get("state", "present") == "absent":
        return {}
    source = chart_source(params.get("chart_ref"), params.get("chart_repo_url"), params.get("chart_version"))
    probe_options(params)
    # The typed options are checked once without the cluster; the real computation follows the reads.
    driver = parse_driver_enabled(params.get("driver_enabled", "auto"))
    gpu_operator_values(driver_enabled=True if driver == "auto" else driver, **typed_options(params, namespace))
    return source


def typed_options(params: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """The module's typed options, as gpu_operator_values() takes them."""
    return {
        "toolkit_enabled": params.get("toolkit_enabled", True),
        "device_plugin_enabled": params.get("device_plugin_enabled", True),
        "dcgm_exporter_enabled": params.get("dcgm_exporter_enabled", True),
        "service_monitor": params.get("dcgm_service_monitor", False),
        "mig_strategy": params.get("mig_strategy", "single"),
        "time_slicing_replicas": params.get("time_slicing_replicas"),
        "values": params.get("values") or {},
        "namespace": namespace,
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


# -- reporting --------------------------------------------------------------------------
def value_changes(before: Any, after: Any, prefix: str = "values") -> list[str]:
    """Dotted paths that differ between two value trees, as ``path: old -> new`` lines."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        lines: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            path = f"{prefix}.{key}"
            if key not in before:
                lines.append(f"{path}: (unset) -> {_short(after[key])}")
            elif key not in after:
                lines.append(f"{path}: {_short(before[key])} -> (unset)")
            else:
                lines.extend(value_changes(before[key], after[key], path))
        return lines
    if values_differ({"v": before}, {"v": after}):
        return [f"{prefix}: {_short(before)} -> {_short(after)}"]
    return []


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 80 else text[:77] + "..."


def release_view(release: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A ``helm list`` row as the module returns it."""
    if not release:
        return None
    chart = str(release.get("chart") or "")
    name, _sep, version = chart.rpartition("-") if "-" in chart else (chart, "", "")
    revision = release.get("revision")
    return {
        "name": release.get("name"),
        "namespace": release.get("namespace"),
        "chart": chart,
        "chart_name": name,
        "chart_version": version,
        "app_version": release.get("app_version"),
        "revision": int(str(revision)) if str(revision).isdigit() else revision,
        "status": release.get("status"),
        "updated": release.get("updated"),
    }


def commands_view(helm: Helm) -> list[str]:
    """The helm command lines run, with the values file shown as <values-file> and secrets masked."""
    shown = []
    for argv in helm.commands:
        args = [str(a) for a in argv]
        for pos, arg in enumerate(args[:-1]):
            if arg == "--values":
                args[pos + 1] = "<values-file>"
        shown.append(helm.mask(" ".join(args)))
    return shown


# -- reconcile ---------------------------------------------------------------------------
def reconcile(kube: Kube, helm: Helm, params: Mapping[str, Any], check_mode: bool, diff_mode: bool,
              source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Make the release match ``params`` (the module options); see the gpu_operator module docs."""
    if source is None:
        source = validate(params)
    result: dict[str, Any] = {"changed": False, "helm_commands": [], "api_requests": {}}
    try:
        if params.get("state", "present") == "absent":
            _remove(kube, helm, params, check_mode, diff_mode, result)
        else:
            _install(kube, helm, params, source, check_mode, diff_mode, result)
    except KubeInferError as e:
        merged = dict(result)
        merged.update(e.result)
        merged["helm_commands"] = commands_view(helm)
        merged["api_requests"] = dict(kube.requests)
        raise KubeInferError(e.msg, **merged) from e
    result["helm_commands"] = commands_view(helm)
    result["api_requests"] = dict(kube.requests)
    return result


def _install(kube: Kube, helm: Helm, params: Mapping[str, Any], source: Mapping[str, Any],
             check_mode: bool, diff_mode: bool, result: dict[str, Any]) -> None:
    name, namespace = params["release_name"], params["namespace"]
    release = helm.release(name, namespace)
    if release and release.get("status") not in UPGRADABLE:
        raise KubeInferError(
            f"release {namespace}/{name} is in status {release.get('status')}: another helm operation runs or was interrupted; "
            "wait for it, or roll the release back, then run again", release=release_view(release))
    deployed = helm.values(name, namespace) if release else {}

    driver = parse_driver_enabled(params.get("driver_enabled", "auto"))
    probes: dict[str, dict[str, Any]] | None = None
    deployed_driver = (deployed.get("driver") or {}).get("enabled") if isinstance(deployed.get("driver"), dict) else None
    if driver == "auto" and not isinstance(deployed_driver, bool) and not check_mode:
        probes = probe_nodes(kube, [n["metadata"]["name"] for n in probe_candidates(kube, params.get("node_selector"))],
                             **probe_options(params))
        result["driver_probe"] = probes
    computed = gpu_operator_values(driver_enabled=driver, probes=probes, deployed_values=deployed if release else None,
                                   **typed_options(params, namespace))
    values = computed["values"]
    result.update(values=values, driver_enabled=computed["driver_enabled"], driver_reason=computed["driver_reason"],
                  chart_source={k: source.get(k) for k in ("type", "chart", "repo", "version")},
                  release=release_view(release), configmaps=[])

    changes: list[str] = []
    if not release:
        changes.append(f"release: (none) -> {desired_chart(source)}")
    else:
        if release.get("status") != "deployed":
            changes.append(f"release status: {release.get('status')} -> deployed")
        if not chart_matches(release.get("chart"), source):
            changes.append(f"chart: {release.get('chart')} -> {desired_chart(source)}")
        changes.extend(value_changes(deployed, values))

    # The device-plugin ConfigMap must exist before the operator starts the device plugin.
    if computed["configmaps"]:
        ns_exists = _namespace(kube, namespace, params.get("create_namespace", False), check_mode, result)
        for configmap in computed["configmaps"]:
            if not ns_exists:  # check mode, namespace still to be made: a dry run would 404
                result["configmaps"].append({"name": configmap["metadata"]["name"], "changed": True})
                result["changed"] = True
                continue
            changed, before, after = ensure(kube, configmap, check_mode)
            result["configmaps"].append({"name": configmap["metadata"]["name"], "changed": changed})
            if changed:
                result["changed"] = True
                changes.append(f"configmap {namespace}/{configmap['metadata']['name']}: {'updated' if before else 'created'}")

    result["changes"] = changes
    upgrade = bool([c for c in changes if not c.startswith("configmap ")])
    if diff_mode:
        result["diff"] = {
            "before": {"chart": release.get("chart"), "values": deployed} if release else {},
            "after": {"chart": desired_chart(source), "values": values},
        }
    if not upgrade:
        return
    result["changed"] = True
    if check_mode:
        result["release_would_change"] = True
        return
    helm.upgrade_install(
        name, source["chart"], namespace, values,
        version=source.get("version"), repo=source.get("repo"),
        create_namespace=params.get("create_namespace", False),
        wait=params.get("wait", True), timeout=int(params.get("timeout") or 600), atomic=params.get("atomic", False),
    )
    after = helm.release(name, namespace)
    result["release"] = release_view(after)
    if after and not chart_matches(after.get("chart"), source):
        raise KubeInferError(
            f"chart_ref: helm installed {after.get('chart')}, but {desired_chart(source)} was asked for "
            "(is chart_version right for this chart source?)", release=release_view(after))


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
    kube.apply({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": namespace, "labels": {MANAGED_BY_LABEL: MANAGED_BY}}})
    return True


def _remove(kube: Kube, helm: Helm, params: Mapping[str, Any], check_mode: bool, diff_mode: bool,
            result: dict[str, Any]) -> None:
    name, namespace = params["release_name"], params["namespace"]
    release = helm.release(name, namespace)
    result["release"] = release_view(release)
    result["configmaps"] = []
    if release:
        result["changed"] = True
        if diff_mode:
            result["diff"] = {"before": {"chart": release.get("chart"), "values": helm.values(name, namespace)}, "after": {}}
        if not check_mode:
            helm.uninstall(name, namespace, wait=params.get("wait", True), timeout=int(params.get("timeout") or 600))
    # The time-slicing ConfigMap is ours only when it carries our managed-by label.
    configmap = kube.get("v1", "ConfigMap", TIME_SLICING_CONFIGMAP, namespace)
    if configmap and ((configmap.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY:
        kube.delete("v1", "ConfigMap", TIME_SLICING_CONFIGMAP, namespace, dry_run=check_mode)
        result["configmaps"].append({"name": TIME_SLICING_CONFIGMAP, "changed": True})
        result["changed"] = True
