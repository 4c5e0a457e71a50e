# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The metrics_adapter runner: detect the metric, merge the rule, restart, ship the dashboard, verify. Private to this collection: the interface may change."""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Callable, Sequence
from urllib.parse import urlencode

from ansible_collections.kubeinfer.llm.plugins.module_utils import _helm_release
from ansible_collections.kubeinfer.llm.plugins.module_utils._adapter_install import APISERVICE, CHECKSUM_ANNOTATION, Site, chart_values, locate
from ansible_collections.kubeinfer.llm.plugins.module_utils._adapter_rules import merge_adapter_rules, parse_adapter_rule, rule_for
from ansible_collections.kubeinfer.llm.plugins.module_utils._args_common import check_release_metric
from ansible_collections.kubeinfer.llm.plugins.module_utils._dashboard import (
    dashboard_configmap,
    dashboard_configmap_name,
    dashboard_names,
    grafana_dashboard,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm
from ansible_collections.kubeinfer.llm.plugins.module_utils._http import endpoint_from_url, excerpt, http_request, parse_json
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import (
    RELEASE_POD_LABEL,
    check_data_key,
    check_metric_name,
    check_namespace,
    check_object_name,
    check_range,
    check_release_name,
    int_quantity,
    managed_labels,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._metrics import QUEUE_METRIC_CANDIDATES, detect_vllm_metrics
from ansible_collections.kubeinfer.llm.plugins.module_utils._portforward import PortForwardTarget, find_pod
from ansible_collections.kubeinfer.llm.plugins.module_utils._promql import RELEASE_SERIES_LABEL, name_matcher, selector
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import ApiError, Kube, absent, ensure, retry_on_conflict
from ansible_collections.kubeinfer.llm.plugins.module_utils._waiter import pod_ready, poll, wait_for

try:
    import yaml
    HAS_YAML = True
except ImportError:  # pragma: no cover - PyYAML comes with ansible-core
    HAS_YAML = False

CUSTOM_METRICS_API = "/apis/custom.metrics.k8s.io/v1beta1"
DEFAULT_METRICS_PORT = 8000


def release_selector(release: str) -> str:
    """The label selector of a release's vLLM pods: the label the scrape turns into ``kubeinfer_io_release``."""
    return f"{RELEASE_POD_LABEL}={release}"


# -- the adapter's config -----------------------------------------------------------------------------------------

def parse_config(text: str | None, where: str) -> dict[str, Any]:
    """The adapter config (``rules``, ``resourceRules``, ``externalRules`` ...) from its YAML text."""
    if not HAS_YAML:  # pragma: no cover
        raise KubeInferError("PyYAML is required to edit the Prometheus Adapter config")
    if not text or not text.strip():
        return {}
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise KubeInferError(f"{where} is not valid YAML: {e}") from e
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise KubeInferError(f"{where} must be a YAML mapping with a 'rules' list, got {type(config).__name__}")
    rules = config.get("rules")
    if rules is not None and (not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules)):
        raise KubeInferError(f"{where}: 'rules' must be a list of rule mappings")
    return config


def render_config(config: dict[str, Any]) -> str:
    """The config as YAML, keys in their original order (comments in a hand-written config are not kept)."""
    return str(yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=1000))


def checksum(text: str) -> str:
    """sha256 of the config text: the pod-template annotation that rolls the adapter when the config changes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_rules(kube: Kube, namespace: str, name: str, key: str, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
                check_mode: bool, namespace_exists: bool = True) -> dict[str, Any]:
    """Read the ConfigMap, apply ``change`` to its rules, and write it back only when the rules differ.

    The write is a merge patch carrying the resourceVersion that was read, so a concurrent writer
    (another release's task) makes it fail with 409 instead of being overwritten; then it re-reads
    and re-merges (_resources.retry_on_conflict). A missing ConfigMap is created. Returns ``changed``,
    ``before``/``after`` rules and the config ``text`` now in force (or, in check mode, that would be).
    In check mode with the namespace still to be made, the ConfigMap is computed without a request (a dry
    run there would answer 404).
    """
    where = f"ConfigMap {namespace}/{name} key {key}"

    def write(_attempt: int) -> dict[str, Any]:
        cm = kube.get("v1", "ConfigMap", name, namespace) if namespace_exists else None
        text = ((cm or {}).get("data") or {}).get(key)
        config = parse_config(text, where)
        before = [dict(r) for r in config.get("rules") or []]
        after = change([dict(r) for r in before])
        if after == before and cm is not None:
            return {"changed": False, "before": before, "after": after, "text": text or ""}
        new_text = render_config({**config, "rules": after})
        if not namespace_exists and check_mode:
            return {"changed": True, "before": before, "after": after, "text": new_text}
        try:
            if cm is None:
                kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": name, "namespace": namespace, "labels": managed_labels()},
                             "data": {key: new_text}}, dry_run=check_mode)
            else:
                patch = {"metadata": {"resourceVersion": cm["metadata"].get("resourceVersion")}, "data": {key: new_text}}
                kube.patch("v1", "ConfigMap", name, patch, namespace, dry_run=check_mode)
        except ApiError as e:
            if e.status == 409:
                raise
            raise KubeInferError(f"cannot write {where}: {e.reason}", before=before) from e
        return {"changed": True, "before": before, "after": after, "text": new_text}

    return retry_on_conflict(write, where)


def restart_adapter(kube: Kube, dep: dict[str, Any], config_sum: str, check_mode: bool) -> bool:
    """Roll the adapter Deployment when its pod-template checksum annotation differs from ``config_sum``.

    The kubelet would then start a pod that reads the new ConfigMap (in the local cluster, the sync
    loop restarts the host adapter when it sees the annotation change).
    """
    annotations = ((dep.get("spec") or {}).get("template") or {}).get("metadata", {}).get("annotations") or {}
    if annotations.get(CHECKSUM_ANNOTATION) == config_sum:
        return False
    patch = {"spec": {"template": {"metadata": {"annotations": {CHECKSUM_ANNOTATION: config_sum}}}}}
    meta = dep["metadata"]
    kube.patch("apps/v1", "Deployment", meta["name"], patch, meta["namespace"], dry_run=check_mode)
    return True


# -- metric name detection ----------------------------------------------------------------------------------------

def scrape_pod(kube: Kube, namespace: str, label_selector: str, port: int | None, ready_timeout: float,
               timeout: float) -> tuple[str, dict[str, Any]]:
    """GET the /metrics of a Ready pod through the API server's port-forward; return the text and the pod.

    The port and path come from ``port`` or the pod's ``prometheus.io/port`` and ``prometheus.io/path``
    annotations (the vllm chart sets them), else 8000 and /metrics.
    """
    pod = find_pod(kube, namespace, label_selector, ready_timeout=ready_timeout)[0]
    annotations = pod.get("metadata", {}).get("annotations") or {}
    if port is None:
        port = int_quantity(annotations.get("prometheus.io/port")) or DEFAULT_METRICS_PORT
    path = annotations.get("prometheus.io/path") or "/metrics"
    target = PortForwardTarget(kube.api_client, namespace, pod["metadata"]["name"], port)
    reply = http_request(target, f"localhost:{port}", "GET", path, timeout,
                         headers={"Accept": "text/plain;version=0.0.4"}, describe_close=target.error)
    if reply.status != 200:
        raise KubeInferError(f"GET {path} of pod {namespace}/{pod['metadata']['name']} returned HTTP {reply.status}: {excerpt(reply.body)}")
    return reply.body.decode("utf-8", "replace"), pod


def source_metric(kube: Kube, params: dict[str, Any], check_mode: bool = False) -> dict[str, Any]:
    """Which source metric the rule maps: the explicit ``metric_name``, the name detected on a live pod, or the candidates.

    In check mode a release without any pod yet (the vllm step was itself a check) is not waited for: the
    candidates stand in, and the result says so.
    """
    if params["metric_name"]:
        return {"metric_names": [params["metric_name"]], "metric_name": params["metric_name"], "metric_source": "metric_name option"}
    ns = params["namespace"]
    if not params["detect_from_pod"] or (check_mode and not kube.list("v1", "Pod", ns, label_selector=release_selector(params["release"]))):
        source = "candidates" if not params["detect_from_pod"] else "candidates (check mode: the release has no pod yet)"
        return {"metric_names": list(QUEUE_METRIC_CANDIDATES), "metric_name": None, "metric_source": source}
    text, pod = scrape_pod(kube, ns, release_selector(params["release"]), params["metrics_port"], params["ready_timeout"],
                           params["request_timeout"])
    name = pod["metadata"]["name"]
    try:
        detected = detect_vllm_metrics(text)
    except KubeInferError as e:
        raise KubeInferError(f"pod {ns}/{name}: {e.msg}", pod=name, **e.result) from e
    return {"metric_names": [detected["queue"]], "metric_name": detected["queue"], "metric_source": f"/metrics of pod {ns}/{name}",
            "pod": name, "dashboard_metrics": detected}


def ship_dashboard(kube: Kube, params: dict[str, Any], detected: dict[str, Any] | None, check_mode: bool,
                   namespace_exists: bool = True) -> dict[str, Any]:
    """Build the dashboard from the metric names seen on the live pod and apply (or remove) its ConfigMap."""
    release, namespace = params["release"], params["adapter_namespace"]
    name = dashboard_configmap_name(release)
    if not namespace_exists:  # check mode before the adapter's namespace is made: it would be created
        wanted = params["state"] == "present" and params["grafana_dashboard"]
        dashboard = grafana_dashboard(dashboard_names(detected) if detected else None, release, title=f"vLLM {release}",
                                      uid=f"kubeinfer-{release}"[:40]) if wanted else None
        return {"changed": bool(wanted), "dashboard": dashboard}
    if params["state"] == "absent" or not params["grafana_dashboard"]:
        changed = absent(kube, "v1", "ConfigMap", name, namespace, check_mode)[0]
        return {"changed": changed, "dashboard": None}
    if detected is None:
        # Nothing was read from a live pod this time (metric_name given): a dashboard built from
        # what a pod showed earlier is better than one of guessed names, so keep it.
        live = kube.get("v1", "ConfigMap", name, namespace)
        if live is not None:
            return {"changed": False, "dashboard": json.loads(next(iter((live.get("data") or {"": "null"}).values())))}
    dashboard = grafana_dashboard(dashboard_names(detected) if detected else None, release, title=f"vLLM {release}",
                                  uid=f"kubeinfer-{release}"[:40])
    changed = ensure(kube, dashboard_configmap(release, namespace, dashboard), check_mode)[0]
    return {"changed": changed, "dashboard": dashboard}


# -- verification -------------------------------------------------------------------------------------------------

def metric_path(namespace: str, custom_metric_name: str) -> str:
    return f"{CUSTOM_METRICS_API}/namespaces/{namespace}/pods/*/{custom_metric_name}"


def served_values(kube: Kube, namespace: str, custom_metric_name: str, label_selector: str) -> dict[str, str]:
    """The custom metric per pod, as the HPA controller reads it: ``{pod: quantity}``."""
    doc = kube.request("GET", metric_path(namespace, custom_metric_name), query=[("labelSelector", label_selector)], verb="get")
    values: dict[str, str] = {}
    for item in (doc or {}).get("items") or []:
        obj = item.get("describedObject") or {}
        if obj.get("name"):
            values[obj["name"]] = str(item.get("value"))
    return values


def apiservice_problem(kube: Kube) -> str | None:
    """Why the API server cannot route custom.metrics.k8s.io, or None."""
    svc = kube.get("apiregistration.k8s.io/v1", "APIService", APISERVICE)
    if svc is None:
        return f"no APIService {APISERVICE}"
    for cond in (svc.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Available":
            if cond.get("status") == "True":
                return None
            return f"APIService {APISERVICE} not Available: {cond.get('reason', '')}: {cond.get('message', '')}".rstrip(": ")
    return f"APIService {APISERVICE} not Available: no Available condition yet"


def series_selector(metric_names: Sequence[str], release: str, namespace: str) -> str:
    """The series Prometheus must hold for the rule to serve the release: ``{__name__=...,kubeinfer_io_release=...,namespace=...}``."""
    return selector("", name_matcher(metric_names), (RELEASE_SERIES_LABEL, "=", release), ("namespace", "=", namespace))


def prometheus_series(prometheus_url: str, match: str, timeout: float, validate_certs: bool) -> list[dict[str, Any]]:
    """The series of the selector ``match`` that Prometheus holds (GET /api/v1/series)."""
    reply = endpoint_from_url(prometheus_url, "prometheus_url", validate_certs).request("GET", "/api/v1/series?" + urlencode({"match[]": match}), timeout)
    if reply.status != 200:
        raise KubeInferError(f"Prometheus at {prometheus_url} answered HTTP {reply.status} to /api/v1/series: {excerpt(reply.body)}")
    doc = parse_json(reply)
    data = doc.get("data") if isinstance(doc, dict) else None
    return data if isinstance(data, list) else []


SERIES_WAIT_SECONDS = 60
"""At most this long, before the adapter restarts, for Prometheus to hold the release's series (wait_for_series)."""


def wait_for_series(params: dict[str, Any], metric_names: Sequence[str], timeout: float = SERIES_WAIT_SECONDS) -> dict[str, Any]:
    """Before this run restarts the adapter: wait until Prometheus holds the release's series.

    prometheus-adapter lists the series it can serve when it starts, then once every ``--metrics-relist-interval``
    (10 m by default, cmd/adapter/adapter.go; 1 m in the chart's values.yaml), pkg/custom-provider/provider.go
    ``cachingMetricsLister.RunUntil``. An adapter restarted before Prometheus has scraped the release's new pods serves
    nothing until its next relist; restarted after, it serves the metric at once. Without ``prometheus_url`` nothing is
    waited for, nor when Prometheus does not answer (verify then says what is missing); a series that is still missing
    after ``timeout`` is reported the same way."""
    if not params["prometheus_url"]:
        return {"waited_seconds": 0, "found": None, "reason": "no prometheus_url"}
    series = series_selector(metric_names, params["release"], params["namespace"])

    def found() -> tuple[bool, str]:
        listed = prometheus_series(params["prometheus_url"], series, params["request_timeout"], params["prometheus_validate_certs"])
        return bool(listed), f"series {series} not in Prometheus yet"

    try:
        done, reason, waited = poll(found, timeout, 1.0)
    except KubeInferError as e:
        return {"waited_seconds": 0, "found": None, "reason": f"cannot query Prometheus: {e.msg}"}
    return {"waited_seconds": round(waited, 1), "found": done, "reason": "found" if done else reason}


def rule_listed(kube: Kube, custom_metric_name: str) -> bool:
    """Whether the adapter's resource list (GET /apis/custom.metrics.k8s.io/v1beta1) names pods/<metric>."""
    doc = kube.request("GET", CUSTOM_METRICS_API, verb="discovery")
    names = {r.get("name") for r in (doc or {}).get("resources") or []}
    return f"pods/{custom_metric_name}" in names


def diagnose(kube: Kube, params: dict[str, Any], metric_names: Sequence[str]) -> str:
    """What exactly is missing in the chain, from the API server inwards."""
    problem = apiservice_problem(kube)
    if problem:
        return problem
    name = params["custom_metric_name"]
    if params["prometheus_url"]:
        series = series_selector(metric_names, params["release"], params["namespace"])
        try:
            if not prometheus_series(params["prometheus_url"], series, params["request_timeout"], params["prometheus_validate_certs"]):
                return f"series {series} not found in Prometheus at {params['prometheus_url']}"
        except KubeInferError as e:
            return f"cannot query Prometheus at {params['prometheus_url']}: {e.msg}"
    try:
        listed = rule_listed(kube, name)
    except ApiError as e:
        return f"GET {CUSTOM_METRICS_API} failed: {e.reason}"
    if not listed:
        return f"rule does not match: adapter lists no {name} metric (GET {CUSTOM_METRICS_API} has no pods/{name})"
    return ""


def verify_served(kube: Kube, params: dict[str, Any], metric_names: Sequence[str], timeout: float) -> dict[str, str]:
    """Wait until the custom metrics API serves the metric for every Ready pod of the release."""
    ns, name = params["namespace"], params["custom_metric_name"]
    pods_of = release_selector(params["release"])
    found: dict[str, str] = {}

    def served() -> tuple[bool, str]:
        pods = sorted(p["metadata"]["name"] for p in kube.list("v1", "Pod", ns, label_selector=pods_of) if pod_ready(p))
        if not pods:
            return False, f"no Ready pod in {ns} matches {pods_of}"
        try:
            values = served_values(kube, ns, name, pods_of)
        except ApiError as e:
            cause = diagnose(kube, params, metric_names)
            return False, cause or f"GET {metric_path(ns, name)} failed: {e.reason}"
        found.clear()
        found.update(values)
        missing = [p for p in pods if p not in values]
        if not missing:
            return True, "served"
        cause = diagnose(kube, params, metric_names) if not values else ""
        return False, cause or f"{name} is served for {', '.join(sorted(values)) or 'no pod'} but not for {', '.join(missing)}"

    try:
        wait_for(served, timeout, f"custom.metrics.k8s.io to serve {name} for the pods of release {params['release']}", interval=2.0)
    except KubeInferError as e:
        raise KubeInferError(e.msg, served=dict(found), **e.result) from e
    return dict(found)


# -- the runner ---------------------------------------------------------------------------------------------------

def validate(params: dict[str, Any]) -> None:
    """The inputs, before any request, port-forward or wait; the message names the parameter and the value."""
    check_release_metric(params)
    if params["metric_name"]:
        check_metric_name(params["metric_name"], "metric_name")
    check_range(params["metrics_port"], "metrics_port", 1, 65535)
    check_range(params["ready_timeout"], "ready_timeout", 0, unit="seconds")
    check_range(params["verify_timeout"], "verify_timeout", 0, unit="seconds")
    check_namespace(params["adapter_namespace"], "adapter_namespace")
    # Unset, these three are read from the adapter Deployment the cluster runs (_adapter_install.locate).
    if params["adapter_configmap"] is not None:
        check_object_name(params["adapter_configmap"], "adapter_configmap", "ConfigMap name")
    if params["adapter_config_key"] is not None:
        check_data_key(params["adapter_config_key"], "adapter_config_key", "ConfigMap data key")
    if params["adapter_deployment"] is not None:
        check_object_name(params["adapter_deployment"], "adapter_deployment", "Deployment name")
    check_release_name(params["adapter_release"], "adapter_release")
    if params["prometheus_url"] and not re.match(r"^https?://[^/\s]+", params["prometheus_url"]):
        raise KubeInferError(f"prometheus_url: {params['prometheus_url']!r} is not an http:// or https:// URL")


def run(kube: Kube, helm: Helm, params: dict[str, Any], check_mode: bool, diff: bool) -> dict[str, Any]:
    """The metrics_adapter module: find (or install) the adapter, register (or unregister) the release under the custom
    metric, roll the adapter, verify. Every refusal comes before the first write (_adapter_install.locate)."""
    present = params["state"] == "present"
    name, release = params["custom_metric_name"], params["release"]
    result: dict[str, Any] = {"changed": False, "custom_metric_name": name, "release": release,
                              "metric_name": None, "metric_names": [], "restarted": False, "served": {},
                              "adapter_release": _helm_release.release_view(None, params["adapter_release"], params["adapter_namespace"])}
    planned: _helm_release.Plan | None = None
    try:
        validate(params)
        site = locate(kube, helm, params, present, check_mode)
        result["adapter"] = site.view()
        if site.current is not None:
            result["adapter_release"] = _helm_release.release_view(site.current.row, site.current.name, site.current.namespace)
        if present:
            result.update(source_metric(kube, params, check_mode))
        if site.configmap is None:  # state=absent and no adapter: nothing holds a rule
            shipped = ship_dashboard(kube, params, None, check_mode, kube.get("v1", "Namespace", site.namespace) is not None)
            result.update(changed=shipped["changed"], dashboard=shipped["dashboard"], configmap_changed=False, rules=[], rule=None, releases=[])
        else:
            planned = _configure(kube, helm, params, site, present, check_mode, diff, result)
    except KubeInferError as e:
        raise KubeInferError(e.msg, **{**result, **e.result, **_helm_result(helm, result, planned), "api_requests": dict(kube.requests)}) from e
    result.update(_helm_result(helm, result, planned), api_requests=dict(kube.requests))
    return result


def _helm_result(helm: Helm, result: dict[str, Any], planned: _helm_release.Plan | None) -> dict[str, Any]:
    out = _helm_release.result(helm, result["adapter_release"], planned)
    return {"adapter_release": out.pop("release"), **out}


def _configure(kube: Kube, helm: Helm, params: dict[str, Any], site: Site, present: bool, check_mode: bool, diff: bool,
               result: dict[str, Any]) -> _helm_release.Plan | None:
    name, release = params["custom_metric_name"], params["release"]
    if site.configmap is None:  # pragma: no cover - run() handles the adapter-less case before
        raise AssertionError("no rules ConfigMap")
    if site.managed and not site.namespace_exists:
        result["namespace_created"] = True
        if not check_mode:
            kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": site.namespace, "labels": managed_labels()}})
            site.namespace_exists = True
    names = result["metric_names"] or None
    guessed = result["metric_name"] is None
    written = write_rules(kube, site.namespace, site.configmap, site.key,
                          lambda rules: merge_adapter_rules(rules, names, name, release, present, candidates=guessed),
                          check_mode, site.namespace_exists)
    after = written["after"]
    rule = rule_for(after, name)
    parsed = parse_adapter_rule(rule) if rule else None
    result.update(configmap_changed=written["changed"], changed=written["changed"] or bool(result.get("namespace_created")), rules=after,
                  rule=rule, releases=parsed["releases"] if parsed else [], checksum=checksum(written["text"]))
    if diff:
        result["diff"] = {"before": {"rules": written["before"]}, "after": {"rules": after}}
    planned = None
    if present and params["verify"] and not check_mode and written["changed"]:
        # The adapter is about to restart with the new rule: let Prometheus hold the series first (see wait_for_series).
        result["series_wait"] = wait_for_series(params, result["metric_names"], min(SERIES_WAIT_SECONDS, params["verify_timeout"]))
    if site.managed:
        planned = _keep_release(kube, helm, params, site, present or bool(after), check_mode, result)
    elif params["restart"] and site.deployment is not None:
        result["restarted"] = restart_adapter(kube, site.deployment, result["checksum"], check_mode)
        result["changed"] = result["changed"] or result["restarted"]
    shipped = ship_dashboard(kube, params, result.pop("dashboard_metrics", None), check_mode, site.namespace_exists)
    result["dashboard"] = shipped["dashboard"]
    result["changed"] = result["changed"] or shipped["changed"]
    if present and params["verify"] and not (check_mode and result["changed"]):
        # In check mode nothing was written, so there is nothing to wait for: one look only.
        timeout = 0 if check_mode else params["verify_timeout"]
        result["served"] = verify_served(kube, params, result["metric_names"], timeout)
    return planned


def _keep_release(kube: Kube, helm: Helm, params: dict[str, Any], site: Site, keep: bool, check_mode: bool,
                  result: dict[str, Any]) -> _helm_release.Plan | None:
    """Install or upgrade the adapter release the module manages (a rule change rolls it through its checksum value);
    uninstall it, with its rules ConfigMap, once no rule is left in it (state=absent of the last release)."""
    if site.current is None or site.configmap is None:  # pragma: no cover - locate reads both for a managed release
        raise AssertionError("a managed release without its state")
    if not keep:
        removed = _helm_release.remove(helm, site.current, check_mode, wait=False, timeout=params["helm_timeout"])
        deleted = kube.delete("v1", "ConfigMap", site.configmap, site.namespace, dry_run=check_mode)
        result["changed"] = result["changed"] or removed or deleted
        result["adapter_uninstalled"] = True
        if not check_mode:
            result["adapter_release"] = _helm_release.release_view(None, site.current.name, site.current.namespace)
        return None
    if site.chart is None:  # pragma: no cover - locate resolves the chart for a managed release
        raise AssertionError("a managed release without its chart")
    values = chart_values(site.configmap, site.prometheus_url, result["checksum"] if params["restart"] else None, params["chart_values"])
    planned = _helm_release.plan(site.current, site.chart, values)
    result["changes"] = list(planned.reasons)
    result["chart_source"] = {"type": site.chart_type, "chart": site.chart.ref, "repo": site.chart.repo, "version": site.chart.version_arg}
    if not planned.reasons:
        return planned
    result["changed"] = True
    result["restarted"] = bool(site.current.row) and f"podAnnotations.{CHECKSUM_ANNOTATION}" in planned.changed_values
    if check_mode:
        result["release_would_change"] = True
        return planned
    result["adapter_release"] = _helm_release.apply(kube, helm, planned, create_namespace=False, atomic=params["atomic"],
                                                    helm_wait=params["wait"] or params["atomic"], timeout=params["helm_timeout"])
    return planned
