# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus Adapter rules for vLLM: detect the queue metric, merge the rule, restart, verify. Private to this collection: the interface may change."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Sequence
from urllib.parse import urlencode

from ansible_collections.kubeinfer.llm.plugins.module_utils._client import build_api_client
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._metrics import (
    E2E_LATENCY_METRIC_CANDIDATES,
    KV_CACHE_METRIC_CANDIDATES,
    QUEUE_METRIC_CANDIDATES,
    RELEASE_POD_LABEL,
    RELEASE_SERIES_LABEL,
    RUNNING_METRIC_CANDIDATES,
    detect_queue_metric,
    detect_vllm_metrics,
    grafana_dashboard,
    merge_adapter_rules,
    parse_adapter_rule,
    release_selector_labels,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._openai import endpoint_from_url, excerpt, http_request
from ansible_collections.kubeinfer.llm.plugins.module_utils._portforward import PortForwardTarget, find_pod
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import ApiError, Kube, absent, ensure
from ansible_collections.kubeinfer.llm.plugins.module_utils._waiter import pod_ready, wait_for

try:
    import yaml
    HAS_YAML = True
except ImportError:  # pragma: no cover - PyYAML comes with ansible-core
    HAS_YAML = False

CUSTOM_METRICS_API = "/apis/custom.metrics.k8s.io/v1beta1"
APISERVICE = "v1beta1.custom.metrics.k8s.io"
CHECKSUM_ANNOTATION = "kubeinfer.io/config-checksum"
DEFAULT_METRICS_PORT = 8000
WRITE_ATTEMPTS = 5


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
                check_mode: bool) -> dict[str, Any]:
    """Read the ConfigMap, apply ``change`` to its rules, and write it back only when the rules differ.

    The write is a merge patch carrying the resourceVersion that was read, so a concurrent writer
    (another release's task) makes it fail with 409 instead of being overwritten; then it re-reads
    and re-merges. A missing ConfigMap is created. Returns ``changed``, ``before``/``after`` rules and
    the config ``text`` now in force (or, in check mode, that would be).
    """
    where = f"ConfigMap {namespace}/{name} key {key}"
    for _attempt in range(WRITE_ATTEMPTS):
        cm = kube.get("v1", "ConfigMap", name, namespace)
        text = ((cm or {}).get("data") or {}).get(key)
        config = parse_config(text, where)
        before = [dict(r) for r in config.get("rules") or []]
        after = change([dict(r) for r in before])
        if after == before and cm is not None:
            return {"changed": False, "before": before, "after": after, "text": text or ""}
        new_config = dict(config)
        new_config["rules"] = after
        new_text = render_config(new_config)
        try:
            if cm is None:
                kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": name, "namespace": namespace,
                                          "labels": {"app.kubernetes.io/managed-by": "kubeinfer.llm"}},
                             "data": {key: new_text}}, dry_run=check_mode)
            else:
                patch = {"metadata": {"resourceVersion": cm["metadata"].get("resourceVersion")}, "data": {key: new_text}}
                kube.patch("v1", "ConfigMap", name, patch, namespace, dry_run=check_mode)
        except ApiError as e:
            if e.status == 409:
                continue
            raise KubeInferError(f"cannot write {where}: {e.reason}", before=before) from e
        return {"changed": True, "before": before, "after": after, "text": new_text}
    raise KubeInferError(f"{where} kept changing under concurrent writers; gave up after {WRITE_ATTEMPTS} attempts")


def adapter_deployment(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    """The adapter Deployment, read before anything is written so that a wrong name changes nothing."""
    dep = kube.get("apps/v1", "Deployment", name, namespace)
    if dep is None:
        raise KubeInferError(f"the adapter Deployment {namespace}/{name} does not exist; set adapter_deployment, "
                             "or restart=false if the adapter reloads its config by itself")
    return dep


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

def scrape_pod(kube: Kube, namespace: str, selector: str, port: int | None, ready_timeout: float,
               timeout: float) -> tuple[str, dict[str, Any]]:
    """GET the /metrics of a Ready pod through the API server's port-forward; return the text and the pod.

    The port and path come from ``port`` or the pod's ``prometheus.io/port`` and ``prometheus.io/path``
    annotations (the vllm chart sets them), else 8000 and /metrics.
    """
    pod = find_pod(kube, namespace, selector, ready_timeout=ready_timeout)[0]
    annotations = pod.get("metadata", {}).get("annotations") or {}
    if port is None:
        raw = str(annotations.get("prometheus.io/port", DEFAULT_METRICS_PORT))
        port = int(raw) if raw.isdigit() else DEFAULT_METRICS_PORT
    path = annotations.get("prometheus.io/path") or "/metrics"
    target = PortForwardTarget(kube.api_client, namespace, pod["metadata"]["name"], port)
    reply = http_request(target, f"localhost:{port}", "GET", path, timeout,
                         headers={"Accept": "text/plain;version=0.0.4"}, describe_close=target.error)
    if reply.status != 200:
        raise KubeInferError(f"GET {path} of pod {namespace}/{pod['metadata']['name']} returned HTTP {reply.status}: {excerpt(reply.body)}")
    return reply.body.decode("utf-8", "replace"), pod


def source_metric(kube: Kube, params: dict[str, Any]) -> dict[str, Any]:
    """Which source metric the rule maps: the explicit ``metric_name``, the name detected on a live pod, or the candidates."""
    if params.get("metric_name"):
        return {"metric_names": [params["metric_name"]], "metric_name": params["metric_name"], "metric_source": "metric_name option"}
    if params["detect_from_pod"]:
        text, pod = scrape_pod(kube, params["namespace"], release_selector(params["release"]), params.get("metrics_port"),
                               params["ready_timeout"], params["request_timeout"])
        name = pod["metadata"]["name"]
        try:
            detected = detect_queue_metric(text)
        except KubeInferError as e:
            raise KubeInferError(f"pod {params['namespace']}/{name}: {e.msg}", pod=name, **e.result) from e
        return {"metric_names": [detected], "metric_name": detected, "metric_source": f"/metrics of pod {params['namespace']}/{name}",
                "pod": name, "dashboard_metrics": detect_vllm_metrics(text)}
    return {"metric_names": list(QUEUE_METRIC_CANDIDATES), "metric_name": None, "metric_source": "candidates"}


# -- Grafana dashboard ------------------------------------------------------------------------------------------

DASHBOARD_LABEL = "grafana_dashboard"  # the label the Grafana sidecar of kube-prometheus-stack watches


def dashboard_configmap(params: dict[str, Any], dashboard: dict[str, Any]) -> dict[str, Any]:
    """The ConfigMap that ships the release's dashboard to Grafana's sidecar."""
    release = params["release"]
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": f"{release}-vllm-dashboard", "namespace": params["adapter_namespace"],
                     "labels": {DASHBOARD_LABEL: "1", "app.kubernetes.io/managed-by": "kubeinfer.llm", RELEASE_POD_LABEL: release}},
        "data": {f"{release}-vllm.json": json.dumps(dashboard, indent=1, sort_keys=True)},
    }


def dashboard_names(detected: dict[str, Any]) -> dict[str, str]:
    """The metric names of the dashboard: those the pod shows, and for the ones it does not show yet
    (a latency histogram has no series before the first request) the current name in the pod's style
    (``vllm:`` or ``vllm_``), so that the dashboard does not change with the pod's request history."""
    underscore = str(detected["queue"]).startswith("vllm_")
    defaults = {"running": RUNNING_METRIC_CANDIDATES, "e2e_latency": E2E_LATENCY_METRIC_CANDIDATES, "kv_cache": KV_CACHE_METRIC_CANDIDATES}
    names = {"queue": str(detected["queue"])}
    for key, candidates in defaults.items():
        names[key] = detected.get(key) or candidates[1 if underscore else 0]
    return names


def ship_dashboard(kube: Kube, params: dict[str, Any], metric_names: dict[str, Any] | None, check_mode: bool) -> dict[str, Any]:
    """Build the dashboard from the metric names seen on the live pod and apply (or remove) its ConfigMap."""
    release = params["release"]
    name, namespace = f"{release}-vllm-dashboard", params["adapter_namespace"]
    if params["state"] == "absent" or not params["grafana_dashboard"]:
        changed = absent(kube, "v1", "ConfigMap", name, namespace, check_mode)[0]
        return {"changed": changed, "dashboard": None}
    if metric_names is None:
        # Nothing was read from a live pod this time (metric_name given): a dashboard built from
        # what a pod showed earlier is better than one of guessed names, so keep it.
        live = kube.get("v1", "ConfigMap", name, namespace)
        if live is not None:
            return {"changed": False, "dashboard": json.loads(next(iter((live.get("data") or {"": "null"}).values())))}
    dashboard = grafana_dashboard(dashboard_names(metric_names) if metric_names else None, release_selector_labels(release), title=f"vLLM {release}",
                                  uid=f"kubeinfer-{release}"[:40])
    changed = ensure(kube, dashboard_configmap(params, dashboard), check_mode)[0]
    return {"changed": changed, "dashboard": dashboard}


# -- verification -------------------------------------------------------------------------------------------------

def metric_path(namespace: str, custom_metric_name: str) -> str:
    return f"{CUSTOM_METRICS_API}/namespaces/{namespace}/pods/*/{custom_metric_name}"


def served_values(kube: Kube, namespace: str, custom_metric_name: str, selector: str) -> dict[str, str]:
    """The custom metric per pod, as the HPA controller reads it: ``{pod: quantity}``."""
    doc = kube.request("GET", metric_path(namespace, custom_metric_name), query=[("labelSelector", selector)], verb="get")
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
    name = f'__name__="{metric_names[0]}"' if len(metric_names) == 1 else f'__name__=~"{"|".join(metric_names)}"'
    return "{" + f'{name},{RELEASE_SERIES_LABEL}="{release}",namespace="{namespace}"' + "}"


def prometheus_series(prometheus_url: str, selector: str, timeout: float, validate_certs: bool = True) -> list[dict[str, Any]]:
    """The series of ``selector`` that Prometheus holds (GET /api/v1/series)."""
    endpoint = endpoint_from_url(prometheus_url, validate_certs)
    path = endpoint.prefix + "/api/v1/series?" + urlencode({"match[]": selector})
    reply = http_request(endpoint.factory, endpoint.host, "GET", path, timeout)
    if reply.status != 200:
        raise KubeInferError(f"Prometheus at {prometheus_url} answered HTTP {reply.status} to /api/v1/series: {excerpt(reply.body)}")
    try:
        doc = json.loads(reply.body.decode("utf-8"))
    except ValueError as e:
        raise KubeInferError(f"Prometheus at {prometheus_url}: /api/v1/series is not JSON: {excerpt(reply.body)}") from e
    data = doc.get("data") if isinstance(doc, dict) else None
    return data if isinstance(data, list) else []


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
    if params.get("prometheus_url"):
        selector = series_selector(metric_names, params["release"], params["namespace"])
        try:
            if not prometheus_series(params["prometheus_url"], selector, params["request_timeout"], params["prometheus_validate_certs"]):
                return f"series {selector} not found in Prometheus at {params['prometheus_url']}"
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
    selector = release_selector(params["release"])
    found: dict[str, str] = {}

    def served() -> tuple[bool, str]:
        pods = sorted(p["metadata"]["name"] for p in kube.list("v1", "Pod", ns, label_selector=selector) if pod_ready(p))
        if not pods:
            return False, f"no Ready pod in {ns} matches {selector}"
        try:
            values = served_values(kube, ns, name, selector)
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


# -- the module ---------------------------------------------------------------------------------------------------

def metrics_adapter(params: dict[str, Any], check_mode: bool, want_diff: bool, kube: Kube | None = None) -> dict[str, Any]:
    """The metrics_adapter module: register (or unregister) the release under the custom metric, restart, verify."""
    kube = kube or Kube(build_api_client(params))
    present = params["state"] == "present"
    name, release = params["custom_metric_name"], params["release"]
    result: dict[str, Any] = {"changed": False, "custom_metric_name": name, "release": release,
                              "metric_name": None, "metric_names": [], "restarted": False, "served": {}}
    try:
        if present:
            result.update(source_metric(kube, params))
        dep = adapter_deployment(kube, params["adapter_namespace"], params["adapter_deployment"]) if params["restart"] else None
        names = result["metric_names"] or None
        written = write_rules(kube, params["adapter_namespace"], params["adapter_configmap"], params["adapter_config_key"],
                              lambda rules: merge_adapter_rules(rules, names, name, release, present), check_mode)
        after = written["after"]
        rule = next((r for r in after if (r.get("name") or {}).get("as") == name), None)
        parsed = parse_adapter_rule(rule) if rule else None
        result.update(configmap_changed=written["changed"], changed=written["changed"], rules=after, rule=rule,
                      releases=parsed["releases"] if parsed else [], checksum=checksum(written["text"]))
        if want_diff:
            result["diff"] = {"before": {"rules": written["before"]}, "after": {"rules": after}}
        if dep is not None:
            result["restarted"] = restart_adapter(kube, dep, result["checksum"], check_mode)
            result["changed"] = result["changed"] or result["restarted"]
        shipped = ship_dashboard(kube, params, result.pop("dashboard_metrics", None), check_mode)
        result["dashboard"] = shipped["dashboard"]
        result["changed"] = result["changed"] or shipped["changed"]
        if present and params["verify"] and not (check_mode and result["changed"]):
            # In check mode nothing was written, so there is nothing to wait for: one look only.
            timeout = 0 if check_mode else params["verify_timeout"]
            result["served"] = verify_served(kube, params, result["metric_names"], timeout)
    except KubeInferError as e:
        raise KubeInferError(e.msg, **{**result, **e.result, "api_requests": dict(kube.requests)}) from e
    result["api_requests"] = dict(kube.requests)
    return result
