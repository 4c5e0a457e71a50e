# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the Prometheus Adapter runs, which ConfigMap it really reads, and its chart release when the collection installs it.

Private to this collection: the interface may change without notice.

Every decision here is taken from reads only, before metrics_adapter writes anything:

- ``locate`` finds the adapter Deployment and the ConfigMap its pod template mounts at its ``--config`` path (the
  one the adapter really reads), and refuses the installs a rule written there would not reach, each with a message
  naming the option to change: kube-prometheus's adapter (jsonnet manifests, ConfigMap ``adapter-config``, only
  ``v1beta1.metrics.k8s.io``), no ``v1beta1.custom.metrics.k8s.io`` APIService, a chart release installed with
  ``rules.default=false`` and no ``rules.custom`` (the chart then renders no such APIService), and a chart release
  whose rules live in the chart's own ConfigMap (the next ``helm upgrade`` of that release rewrites it);
- when the adapter is absent (or ``install=always``), the collection installs the prometheus-community chart with
  ``rules.existing`` naming a ConfigMap the collection owns, so an upgrade of the adapter release keeps the rules.
  The release goes through the one Helm lifecycle, _helm_release.

Chart facts (prometheus-adapter chart 5.3.0, prometheus-community/helm-charts ``charts/prometheus-adapter``):
``templates/_helpers.tpl`` (fullname), ``templates/configmap.yaml`` (not rendered with ``rules.existing``),
``templates/deployment.yaml`` (``--config=/etc/adapter/config.yaml``, volume ``config`` from ``rules.existing`` or the
fullname, pod annotations from ``podAnnotations``), ``templates/custom-metrics-apiservice.yaml`` (rendered only
``if or .Values.rules.default .Values.rules.custom``). kube-prometheus facts: prometheus-operator/kube-prometheus
``manifests/prometheusAdapter-deployment.yaml``, ``-configMap.yaml``, ``-apiService.yaml``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

from ansible_collections.kubeinfer.llm.plugins.module_utils import _helm_release
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm_release import Chart
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import (
    check_data_key,
    check_namespace,
    check_object_name,
    check_release_name,
    is_managed,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube

CHART_NAME = "prometheus-adapter"
DEFAULT_CHART_REPO_URL = "https://prometheus-community.github.io/helm-charts"
DEFAULT_CHART_VERSION = "5.3.0"
DEFAULT_RELEASE = "prometheus-adapter"
CHART_CONFIG_KEY = "config.yaml"
"""The chart passes ``--config=/etc/adapter/config.yaml`` and mounts the whole ConfigMap at ``/etc/adapter/``."""
APISERVICE = "v1beta1.custom.metrics.k8s.io"
CHECKSUM_ANNOTATION = "kubeinfer.io/config-checksum"
INSTALL_CHOICES = ("auto", "always", "never")
KUBE_PROMETHEUS = "kube-prometheus"
_HELM_RELEASE_NAME = "meta.helm.sh/release-name"
_HELM_RELEASE_NAMESPACE = "meta.helm.sh/release-namespace"


@dataclass
class Site:
    """The adapter the rules go to: its Deployment, the ConfigMap and key it reads, and whether the module keeps its
    Helm release in line (``managed``: the module installed it, or ``install=always``)."""

    namespace: str
    deployment_name: str
    deployment: dict[str, Any] | None
    configmap: str | None
    key: str
    managed: bool = False
    current: _helm_release.Current | None = None
    chart: Chart | None = None
    chart_type: str | None = None
    prometheus_url: str | None = None
    namespace_exists: bool = True

    def view(self) -> dict[str, Any]:
        """The ``adapter`` result: where the rules went and who keeps the adapter."""
        return {"namespace": self.namespace, "deployment": self.deployment_name, "configmap": self.configmap, "config_key": self.key,
                "managed": self.managed, "exists": self.deployment is not None}


# -- reading objects ----------------------------------------------------------------------------------------------

def helm_owner(obj: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """``(namespace, release)`` of the Helm release that owns ``obj`` (Helm 3's ownership annotations), or None."""
    meta = (obj or {}).get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if not annotations.get(_HELM_RELEASE_NAME):
        return None
    return str(annotations.get(_HELM_RELEASE_NAMESPACE) or meta.get("namespace") or ""), str(annotations[_HELM_RELEASE_NAME])


def chart_fullname(release: str, values: Mapping[str, Any] | None) -> str:
    """The name the chart gives its Deployment, Service and own ConfigMap (``k8s-prometheus-adapter.fullname``):
    ``fullnameOverride``, else the release name when it contains the chart name, else ``<release>-<chart name>``."""
    values = values or {}
    if values.get("fullnameOverride"):
        return str(values["fullnameOverride"])[:63].rstrip("-")
    name = str(values.get("nameOverride") or CHART_NAME)
    if name in release:
        return release[:63].rstrip("-")
    return f"{release}-{name}"[:63].rstrip("-")


def flag_value(args: list[Any], flag: str) -> str | None:
    """The value of ``--flag=value`` or ``--flag value`` in a container's command line, the last one winning."""
    found = None
    for i, arg in enumerate(str(a) for a in args):
        if arg.startswith(f"--{flag}="):
            found = arg.split("=", 1)[1]
        elif arg == f"--{flag}" and i + 1 < len(args):
            found = str(args[i + 1])
    return found


def config_source(dep: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(ConfigMap, key, path)``: the ConfigMap and key the adapter container reads its ``--config`` file from.

    Mirrors how a kubelet lays out a ConfigMap volume: the mount with the longest ``mountPath`` that holds the path
    (or equals it, with ``subPath``), the volume's ``configMap.items`` mapping a key to another file name.
    """
    meta = dep.get("metadata") or {}
    where = f"the adapter Deployment {meta.get('namespace')}/{meta.get('name')}"
    pod = ((dep.get("spec") or {}).get("template") or {}).get("spec") or {}
    for container in pod.get("containers") or []:
        path = flag_value(list(container.get("command") or []) + list(container.get("args") or []), "config")
        if path:
            break
    else:
        raise KubeInferError(f"adapter_deployment: {where} passes no --config to its containers, so it reads no rules; "
                             "set adapter_deployment to the Prometheus Adapter's Deployment")
    best: tuple[int, dict[str, Any], str] | None = None
    for mount in container.get("volumeMounts") or []:
        mount_path = str(mount.get("mountPath") or "").rstrip("/")
        if mount.get("subPath") and path == mount_path:
            rel = str(mount["subPath"])
        elif not mount.get("subPath") and path.startswith(mount_path + "/"):
            rel = path[len(mount_path) + 1:]
        else:
            continue
        if best is None or len(mount_path) > best[0]:
            best = (len(mount_path), mount, rel)
    if best is None:
        raise KubeInferError(f"{where} reads --config={path}, which is on no mounted volume; the module cannot tell which ConfigMap holds its rules")
    _length, mount, rel = best
    volume: dict[str, Any] = next((v for v in pod.get("volumes") or [] if v.get("name") == mount.get("name")), {})
    source = volume.get("configMap")
    if not isinstance(source, dict) or not source.get("name"):
        raise KubeInferError(f"{where} reads --config={path} from volume {mount.get('name')!r}, which is not a ConfigMap volume; "
                             "the module only edits rules held in a ConfigMap")
    key = next((str(i["key"]) for i in source.get("items") or [] if str(i.get("path")) == rel), None)
    if source.get("items") and key is None:
        raise KubeInferError(f"{where}: volume {mount.get('name')!r} maps no key of ConfigMap {source['name']} to {rel}")
    return str(source["name"]), key or rel, path


def prometheus_values(url: str) -> dict[str, Any]:
    """The chart's ``prometheus`` values for ``url``: the chart joins them as ``<url>:<port><path>`` (templates/deployment.yaml);
    an empty port is left out."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise KubeInferError(f"adapter_prometheus_url: {url!r} is not an http(s)://host[:port][/path] URL")
    if parts.username or parts.password:
        raise KubeInferError("adapter_prometheus_url: must not carry credentials (they would be stored in the Helm release values)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return {"url": f"{parts.scheme}://{host}", "port": parts.port or "", "path": parts.path.rstrip("/")}


def chart_values(configmap: str, prometheus_url: str | None, config_sum: str | None, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The adapter release's values: the rules from ``configmap`` (``rules.existing``), Prometheus, and the config checksum
    as a pod annotation (so a rule change rolls the adapter through its own release), with ``extra`` merged over them.

    ``rules.default`` stays true: with ``rules.existing`` its rules are not used, but it keeps the custom metrics
    APIService and the HPA's RBAC rendered (templates/custom-metrics-apiservice.yaml, custom-metrics-cluster-role*.yaml).
    """
    base: dict[str, Any] = {"rules": {"default": True, "existing": configmap}}
    if prometheus_url:
        base["prometheus"] = prometheus_values(prometheus_url)
    if config_sum:
        base["podAnnotations"] = {CHECKSUM_ANNOTATION: config_sum}
    values = _helm_release.deep_merge(base, extra)
    rules = values.get("rules") if isinstance(values.get("rules"), dict) else {}
    if rules.get("existing") != configmap:
        raise KubeInferError(f"chart_values: rules.existing={rules.get('existing')!r} is not allowed: the module keeps the rules in "
                             f"ConfigMap {configmap}; set adapter_configmap to choose its name")
    if not rules.get("default") and not rules.get("custom"):
        raise KubeInferError("chart_values: rules.default=false without rules.custom makes the chart render no APIService "
                             f"{APISERVICE}, so nothing would serve the metric; leave rules.default at true")
    if not (values.get("prometheus") or {}).get("url"):
        raise KubeInferError("adapter_prometheus_url: the adapter needs the URL of Prometheus it queries (the chart's default "
                             "http://prometheus.default.svc is rarely right); set adapter_prometheus_url, or prometheus_url when it "
                             "is the same address, or prometheus.url in chart_values")
    return values


# -- deciding ------------------------------------------------------------------------------------------------------

def validate(params: Mapping[str, Any]) -> None:
    """The adapter options that need no cluster, before the first request."""
    check_namespace(params["adapter_namespace"], "adapter_namespace")
    check_release_name(params["adapter_release"], "adapter_release")
    for option in ("adapter_deployment", "adapter_configmap"):
        if params.get(option):
            check_object_name(params[option], option, "object name")
    if params.get("adapter_config_key"):
        check_data_key(params["adapter_config_key"], "adapter_config_key", "ConfigMap data key")
    if params["helm_timeout"] <= 0:
        raise KubeInferError(f"helm_timeout: must be a positive number of seconds, got {params['helm_timeout']}")


def _kube_prometheus(dep: Mapping[str, Any], configmap: str) -> str:
    meta = dep["metadata"]
    return (f"the adapter {meta['namespace']}/{meta['name']} is kube-prometheus's (label app.kubernetes.io/part-of=kube-prometheus): "
            f"it reads ConfigMap {configmap}, serves only the resource metrics API (APIService v1beta1.metrics.k8s.io, no "
            f"{APISERVICE}), and its manifests are generated from jsonnet, so a rule written here would be lost at the next "
            "apply. Install the prometheus-adapter chart beside it for custom metrics: set adapter_release to another name "
            "(for example kubeinfer-prometheus-adapter) or adapter_namespace to another namespace, with install=auto")


def _foreign_apiservice(apiservice: Mapping[str, Any], namespace: str, release: str) -> str | None:
    """Why ``apiservice`` belongs to another adapter than release ``namespace/release``, or None."""
    owner = helm_owner(apiservice)
    if owner == (namespace, release):
        return None
    service = (apiservice.get("spec") or {}).get("service") or {}
    by = f"Helm release {owner[0]}/{owner[1]}" if owner else "something outside Helm"
    return (f"APIService {APISERVICE} already exists (made by {by}, routing to Service {service.get('namespace')}/{service.get('name')}), "
            "so installing the chart would collide with it: another adapter serves the custom metrics API. Set adapter_namespace "
            "and adapter_release or adapter_deployment to that adapter, with install=never")


def locate(kube: Kube, helm: Helm, params: Mapping[str, Any], present: bool, check_mode: bool = False) -> Site:
    """Find the adapter and decide, from reads only, where the rules go and whether the module installs or keeps the
    release; raise, naming the option to change, for every install a rule would not reach."""
    validate(params)
    ns, release, install = params["adapter_namespace"], params["adapter_release"], params["install"]
    name = params["adapter_deployment"] or chart_fullname(release, params["chart_values"])
    dep = kube.get("apps/v1", "Deployment", name, ns)
    owner = helm_owner(dep)
    current: _helm_release.Current | None = None
    ours = False
    if (dep is None and install != "never") or install == "always" or owner == (ns, release):
        helm.require(f"look up the adapter's Helm release {ns}/{release}")
        current = _helm_release.read_for_upgrade(kube, helm, release, ns, check_mode)
        existing = ((current.values.get("rules") or {}) if isinstance(current.values.get("rules"), dict) else {}).get("existing")
        ours = bool(current.row) and bool(existing) and is_managed(kube.get("v1", "ConfigMap", str(existing), ns))
    if not present:
        if dep is None:
            return Site(ns, name, None, None, params["adapter_config_key"] or CHART_CONFIG_KEY)
        configmap, key, _path = config_source(dep)
        return Site(ns, name, dep, configmap, key, managed=ours and install != "never", current=current)
    managed = install == "always" or (install == "auto" and (dep is None or ours))
    if managed:
        return _managed_site(kube, params, name, dep, owner, current)
    return _found_site(kube, helm, params, name, dep, owner, current)


def _found_site(kube: Kube, helm: Helm, params: Mapping[str, Any], name: str, dep: dict[str, Any] | None,
                owner: tuple[str, str] | None, current: _helm_release.Current | None) -> Site:
    """An adapter the module uses as it is (install=never, or auto and not installed by the module)."""
    ns = params["adapter_namespace"]
    if dep is None:
        raise KubeInferError(f"adapter_deployment: the adapter Deployment {ns}/{name} does not exist; set install=auto to install the "
                             "prometheus-adapter chart (chart_ref, chart_version), or adapter_namespace and adapter_deployment to where "
                             "the adapter runs")
    configmap, key, path = config_source(dep)
    if ((dep["metadata"].get("labels") or {}).get("app.kubernetes.io/part-of")) == KUBE_PROMETHEUS:
        raise KubeInferError(_kube_prometheus(dep, configmap))
    for option, found in (("adapter_configmap", configmap), ("adapter_config_key", key)):
        if params[option] and params[option] != found:
            raise KubeInferError(f"{option}: the adapter {ns}/{name} reads --config={path} from ConfigMap {configmap} key {key}, "
                                 f"not {params[option]!r}; set {option}={found} or leave it empty")
    if owner is not None:
        helm.require(f"read the values of Helm release {owner[0]}/{owner[1]}, which owns the adapter")
        if current is None or (current.namespace, current.name) != owner:
            current = _helm_release.read(kube, helm, owner[1], owner[0])
        rules = current.values.get("rules") if isinstance(current.values.get("rules"), dict) else {}
        if rules.get("default", True) is False and not rules.get("custom"):
            raise KubeInferError(
                f"Helm release {owner[0]}/{owner[1]} was installed with rules.default=false and no rules.custom, so the chart "
                f"rendered no APIService {APISERVICE} and nothing serves custom metrics; set install=always to let this module upgrade "
                f"it (rules in its own ConfigMap through rules.existing, rules.default=true), or upgrade it with rules.default=true "
                "and rules.existing=<a ConfigMap of yours>", adapter_release=_helm_release.release_view(current.row, owner[1], owner[0]))
        if not rules.get("existing"):
            raise KubeInferError(
                f"ConfigMap {ns}/{configmap} is rendered by Helm release {owner[0]}/{owner[1]}, so the next helm upgrade of that release "
                "rewrites it and drops the rule; set install=always to let this module upgrade the release with rules.existing (the "
                "rules then live in a ConfigMap the collection owns), or upgrade it with rules.existing=<a ConfigMap of yours> yourself",
                adapter_release=_helm_release.release_view(current.row, owner[1], owner[0]))
    apiservice = kube.get("apiregistration.k8s.io/v1", "APIService", APISERVICE)
    if apiservice is None:
        raise KubeInferError(f"no APIService {APISERVICE}: the adapter {ns}/{name} is not registered for the custom metrics API, so no "
                             "rule would be served; register it (the prometheus-adapter chart does with rules.default=true), or set "
                             "install=auto with adapter_release and adapter_namespace naming a release the module may install")
    service = (apiservice.get("spec") or {}).get("service") or {}
    if service.get("namespace") != ns:
        raise KubeInferError(f"APIService {APISERVICE} routes to Service {service.get('namespace')}/{service.get('name')}, not to the "
                             f"adapter in {ns}; set adapter_namespace and adapter_deployment to the adapter it routes to")
    return Site(ns, name, dep, configmap, key, current=current)


def _managed_site(kube: Kube, params: Mapping[str, Any], name: str, dep: dict[str, Any] | None,
                  owner: tuple[str, str] | None, current: _helm_release.Current | None) -> Site:
    """The release the module installs or keeps in line."""
    ns, release = params["adapter_namespace"], params["adapter_release"]
    if current is None:  # pragma: no cover - read by locate whenever the release may be managed
        raise AssertionError("the release was not read")
    if dep is not None and owner != (ns, release):
        by = f"Helm release {owner[0]}/{owner[1]}" if owner else "something outside Helm"
        raise KubeInferError(f"install=always: the adapter Deployment {ns}/{name} exists and belongs to {by}, not to Helm release "
                             f"{ns}/{release}; set install=auto to use it as it is, or adapter_release/adapter_namespace to install "
                             "the chart beside it")
    if dep is None and current.row and params["install"] == "auto":
        raise KubeInferError(f"Helm release {ns}/{release} exists but its Deployment {ns}/{name} does not, and the release was not installed "
                             "by this module; set adapter_deployment to the release's Deployment, or install=always to take the release over",
                             adapter_release=_helm_release.release_view(current.row, release, ns))
    _helm_release.check_upgradable(current)
    chart_type, chart = _helm_release.chart_source(params["chart_ref"], params["chart_repo_url"], params["chart_version"], CHART_NAME)
    if chart.name != CHART_NAME:
        raise KubeInferError(f"chart_ref: {chart.ref} is chart {chart.name}, not {CHART_NAME}")
    key = params["adapter_config_key"] or CHART_CONFIG_KEY
    if key != CHART_CONFIG_KEY:
        raise KubeInferError(f"adapter_config_key: the chart passes --config=/etc/adapter/{CHART_CONFIG_KEY}, so the key must be "
                             f"{CHART_CONFIG_KEY}, not {key!r}")
    existing = (current.values.get("rules") or {}).get("existing") if isinstance(current.values.get("rules"), dict) else None
    configmap = params["adapter_configmap"] or (str(existing) if existing and existing != name else f"{name}-rules")
    if configmap == name:
        raise KubeInferError(f"adapter_configmap: {configmap} is the name the chart gives its own ConfigMap, which Helm deletes once "
                             "rules.existing is set; choose another name")
    cm = kube.get("v1", "ConfigMap", configmap, ns)
    cm_owner = helm_owner(cm)
    if cm_owner is not None:
        raise KubeInferError(f"adapter_configmap: ConfigMap {ns}/{configmap} belongs to Helm release {cm_owner[0]}/{cm_owner[1]}, "
                             "which would rewrite it; choose another name")
    apiservice = kube.get("apiregistration.k8s.io/v1", "APIService", APISERVICE)
    problem = _foreign_apiservice(apiservice, ns, release) if apiservice is not None else None
    if problem:
        raise KubeInferError(problem)
    url = params["adapter_prometheus_url"] or params["prometheus_url"]
    chart_values(configmap, url, "0" * 64, params["chart_values"])  # every value checked before the first write
    namespace_exists = kube.get("v1", "Namespace", ns) is not None
    return Site(ns, name, dep, configmap, key, managed=True, current=current, chart=chart, chart_type=chart_type,
                prometheus_url=url, namespace_exists=namespace_exists)
