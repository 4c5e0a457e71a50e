# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The autoscaling/v2 HPA (or KEDA ScaledObject) on the vLLM queue depth and its verification. Private to this collection: the interface may change."""
from __future__ import annotations

import re
import time
from decimal import Decimal
from typing import Any

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import (
    INSTANCE_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    RELEASE_POD_LABEL,
    int_quantity,
    is_managed,
    managed_labels,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._metrics import QUEUE_METRIC_CANDIDATES
from ansible_collections.kubeinfer.llm.plugins.module_utils._prometheus import instant_query, sample_value, why_empty
from ansible_collections.kubeinfer.llm.plugins.module_utils._promql import NAMESPACE_SERIES_LABEL, RELEASE_SERIES_LABEL, selector
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import ApiError, Kube, clean, ensure
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import diff as before_after
from ansible_collections.kubeinfer.llm.plugins.module_utils._sizing import HPA_MAX_STABILIZATION_WINDOW_SECONDS, scale_down_window_seconds
from ansible_collections.kubeinfer.llm.plugins.module_utils._waiter import poll, wait_for

HPA_API = "autoscaling/v2"
HPA_KIND = "HorizontalPodAutoscaler"
KEDA_API = "keda.sh/v1alpha1"
KEDA_KIND = "ScaledObject"
KEDA_CRD = "scaledobjects.keda.sh"
BUDGET_ANNOTATION = "kubeinfer.io/startup-budget-seconds"

# The autoscaling/v2 defaults (k8s.io/kubernetes pkg/apis/autoscaling/v2 defaulting), written out so that the
# desired object is complete: dropping a policy then shows as a change instead of hiding behind the defaults.
DEFAULT_SCALE_UP_POLICIES = [{"type": "Pods", "value": 4, "periodSeconds": 15}, {"type": "Percent", "value": 100, "periodSeconds": 15}]
DEFAULT_SCALE_DOWN_POLICIES = [{"type": "Percent", "value": 100, "periodSeconds": 15}]

_QUANTITY = re.compile(r"^\+?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(m|k|M|G|T|P|E)?$")
_SUFFIX_EXPONENT = {"m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_SUFFIXES = ("", "k", "M", "G", "T", "P", "E")


# -- quantities -----------------------------------------------------------------------------------------------------

def _decimal(value: Any, what: str) -> Decimal:
    text = str(value).strip()
    match = _QUANTITY.match(text)
    if not match:
        raise KubeInferError(f"{what} must be a positive number or a decimal quantity such as 2, 0.5 or 500m, got {value!r}")
    number = Decimal(match.group(1)).scaleb(_SUFFIX_EXPONENT[match.group(2) or ""])
    if number <= 0:
        raise KubeInferError(f"{what} must be above 0, got {value!r}")
    return number


def canonical_quantity(value: Any, what: str = "target_queue_depth") -> str:
    """The API server's canonical form of a decimal quantity (2 -> "2", 0.5 -> "500m", 1000 -> "1k").

    The HPA stores averageValue canonicalised, so comparing the canonical form keeps a re-run from
    re-applying an equal value written differently. Finer than milli-units is refused.
    """
    milli = _decimal(value, what) * 1000
    if milli != milli.to_integral_value():
        raise KubeInferError(f"{what} is finer than a milli-unit: {value!r}")
    units = int(milli)
    if units % 1000:
        return f"{units}m"
    whole = units // 1000
    suffix = 0
    while whole % 1000 == 0 and suffix < len(_SUFFIXES) - 1:
        whole //= 1000
        suffix += 1
    return f"{whole}{_SUFFIXES[suffix]}"


def plain_number(value: Any, what: str = "target_queue_depth") -> str:
    """The value as a plain decimal (KEDA's trigger thresholds are parsed as floats, not quantities)."""
    number = _decimal(value, what).normalize()
    return format(number, "f")


# -- the scale-down window -------------------------------------------------------------------------------------------

def startup_budget(params: dict[str, Any], deployment: dict[str, Any]) -> tuple[int | None, str]:
    """The model load time: the ``startup_budget_seconds`` option, else the pod-template annotation the vllm chart sets."""
    if params["startup_budget_seconds"] is not None:
        return params["startup_budget_seconds"], "startup_budget_seconds option"
    annotations = ((deployment.get("spec") or {}).get("template") or {}).get("metadata", {}).get("annotations") or {}
    budget = int_quantity(annotations.get(BUDGET_ANNOTATION))
    if budget > 0:
        return budget, f"annotation {BUDGET_ANNOTATION} of Deployment {deployment['metadata']['name']}"
    return None, "none"


def scale_down_window(explicit: int | None, budget: int | None) -> tuple[int, str]:
    """The scale-down stabilization window and where it came from.

    Derived from the load time with _sizing.scale_down_window_seconds when not given; an explicit
    window below the load time is refused (a replica dropped in a dip would cost a whole load to
    get back), as is one above the autoscaling/v2 limit.
    """
    if explicit is not None:
        if explicit < 0 or explicit > HPA_MAX_STABILIZATION_WINDOW_SECONDS:
            raise KubeInferError(f"scale_down.stabilization_window_seconds must be between 0 and {HPA_MAX_STABILIZATION_WINDOW_SECONDS}, "
                                 f"got {explicit}")
        if budget is not None and explicit < budget:
            raise KubeInferError(
                f"scale_down.stabilization_window_seconds={explicit} is below the model load time startup_budget_seconds={budget}: "
                "a replica removed during a dip would take a whole model load to come back. Leave it unset to derive it, "
                f"or set it to at least {budget}.", startup_budget_seconds=budget)
        return explicit, "scale_down.stabilization_window_seconds"
    if budget is None:
        return scale_down_window_seconds(0), "minimum (no startup budget known)"
    return scale_down_window_seconds(budget), "derived from startup_budget_seconds"


def scaling_rules(options: dict[str, Any], window: int, defaults: list[dict[str, Any]], what: str) -> dict[str, Any]:
    """One HPAScalingRules block: the window, the pods/percent policies (or the API defaults) and selectPolicy."""
    period = options["period_seconds"]
    if not 1 <= period <= 1800:
        raise KubeInferError(f"{what}.period_seconds must be between 1 and 1800, got {period}")
    policies = []
    for key, kind in (("pods", "Pods"), ("percent", "Percent")):
        value = options[key]
        if value is not None:
            if value < 1:
                raise KubeInferError(f"{what}.{key} must be at least 1, got {value}")
            policies.append({"type": kind, "value": int(value), "periodSeconds": int(period)})
    return {
        "stabilizationWindowSeconds": int(window),
        "selectPolicy": options["select_policy"],
        "policies": policies or [dict(p) for p in defaults],
    }


def behavior(params: dict[str, Any], down_window: int) -> dict[str, Any]:
    up = params["scale_up"]
    if not 0 <= up["stabilization_window_seconds"] <= HPA_MAX_STABILIZATION_WINDOW_SECONDS:
        raise KubeInferError(f"scale_up.stabilization_window_seconds must be between 0 and {HPA_MAX_STABILIZATION_WINDOW_SECONDS}")
    return {
        "scaleUp": scaling_rules(up, up["stabilization_window_seconds"], DEFAULT_SCALE_UP_POLICIES, "scale_up"),
        "scaleDown": scaling_rules(params["scale_down"], down_window, DEFAULT_SCALE_DOWN_POLICIES, "scale_down"),
    }


# -- objects ---------------------------------------------------------------------------------------------------------

def find_target(kube: Kube, namespace: str, release: str, target: str | None) -> dict[str, Any]:
    """The Deployment to scale: ``target``, or the one Deployment labelled app.kubernetes.io/instance=<release>."""
    if target:
        dep = kube.get("apps/v1", "Deployment", target, namespace)
        if dep is None:
            raise KubeInferError(f"the target Deployment {namespace}/{target} does not exist")
        return dep
    selector = f"{INSTANCE_LABEL}={release}"
    found = kube.list("apps/v1", "Deployment", namespace, label_selector=selector)
    if len(found) != 1:
        names = ", ".join(sorted(d["metadata"]["name"] for d in found)) or "none"
        raise KubeInferError(f"expected one Deployment labelled {selector} in {namespace}, found {names}; set target")
    return found[0]


def hpa_object(name: str, namespace: str, release: str, target: str, custom_metric_name: str, min_replicas: int,
               max_replicas: int, average_value: str, behavior_spec: dict[str, Any]) -> dict[str, Any]:
    """An autoscaling/v2 HPA on the per-pod custom metric (type Pods, target AverageValue)."""
    return {
        "apiVersion": HPA_API,
        "kind": HPA_KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": managed_labels(**{RELEASE_POD_LABEL: release})},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": min_replicas,
            "maxReplicas": max_replicas,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": custom_metric_name},
                "target": {"type": "AverageValue", "averageValue": average_value},
            }}],
            "behavior": behavior_spec,
        },
    }


def keda_query(metric_name: str, namespace: str, release: str) -> str:
    """The queue of one release (summed over its pods; KEDA's AverageValue divides by the replicas)."""
    return f"sum({selector(metric_name, (NAMESPACE_SERIES_LABEL, '=', namespace), (RELEASE_SERIES_LABEL, '=', release))})"


def scaled_object(name: str, namespace: str, release: str, target: str, min_replicas: int, max_replicas: int,
                  threshold: str, server: str, query: str, cooldown: int, polling: int, behavior_spec: dict[str, Any]) -> dict[str, Any]:
    """A KEDA ScaledObject with a prometheus trigger; KEDA creates and drives the HPA from it."""
    return {
        "apiVersion": KEDA_API,
        "kind": KEDA_KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": managed_labels(**{RELEASE_POD_LABEL: release})},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "pollingInterval": polling,
            "cooldownPeriod": cooldown,
            "minReplicaCount": min_replicas,
            "maxReplicaCount": max_replicas,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior_spec}},
            "triggers": [{
                "type": "prometheus",
                "metricType": "AverageValue",
                "metadata": {"serverAddress": server, "query": query, "threshold": threshold},
            }],
        },
    }


# -- status ----------------------------------------------------------------------------------------------------------

# KEDA v2.20.2 names the HPA it creates for a ScaledObject keda-hpa-<name> unless
# advanced.horizontalPodAutoscalerConfig.name is set (controllers/keda/hpa.go getDefaultHpaName) and records the
# name in status.hpaName; the first trigger's external metric is s0-<scaler> (pkg/scalers/scaler.go
# GenerateMetricNameWithIndex), s0-prometheus here.
KEDA_HPA_PREFIX = "keda-hpa-"
KEDA_METRIC = "s0-prometheus"
# Set by the KEDA operator on every ScaledObject it reconciles and removed only by it
# (controllers/keda/scaledobject_finalizer.go): without a running operator a deleted ScaledObject stays.
KEDA_FINALIZER = "finalizer.keda.sh"


def current_value(hpa: dict[str, Any] | None, custom_metric_name: str) -> str | None:
    """The value the HPA controller last read for the metric (what kubectl shows instead of <unknown>)."""
    for metric in ((hpa or {}).get("status") or {}).get("currentMetrics") or []:
        pods = metric.get("pods") or {}
        if metric.get("type") == "Pods" and (pods.get("metric") or {}).get("name") == custom_metric_name:
            value = (pods.get("current") or {}).get("averageValue")
            if value is not None:
                return str(value)
    return None


def external_value(hpa: dict[str, Any] | None, metric_name: str = KEDA_METRIC) -> str | None:
    """The value KEDA's HPA last read for its external metric (averageValue, or value for metricType Value)."""
    for metric in ((hpa or {}).get("status") or {}).get("currentMetrics") or []:
        external = metric.get("external") or {}
        if metric.get("type") == "External" and (external.get("metric") or {}).get("name") == metric_name:
            current = external.get("current") or {}
            value = current.get("averageValue", current.get("value"))
            if value is not None:
                return str(value)
    return None


def keda_hpa_name(scaled: dict[str, Any] | None, name: str) -> str:
    """The HPA KEDA drives for ScaledObject ``name``: status.hpaName once KEDA wrote it, else its default name."""
    return str(((scaled or {}).get("status") or {}).get("hpaName") or KEDA_HPA_PREFIX + name)


def conditions_text(obj: dict[str, Any] | None) -> str:
    """The status conditions as one line, the False ones first (ScalingActive False says why no value is read)."""
    conds = ((obj or {}).get("status") or {}).get("conditions") or []
    if not conds:
        return "no conditions yet (the controller has not synced it)"
    ordered = sorted(conds, key=lambda c: c.get("status") == "True")
    return "; ".join(f"{c.get('type')} {c.get('status')} ({c.get('reason', '')}): {c.get('message', '')}" for c in ordered)


def is_ready(scaled: dict[str, Any] | None) -> bool:
    conds = ((scaled or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def wait_for_value(kube: Kube, namespace: str, name: str, custom_metric_name: str, timeout: float) -> dict[str, Any]:
    """Wait until the HPA reports a current value for the metric; the timeout names its conditions."""
    box: dict[str, Any] = {}

    def has_value() -> tuple[bool, str]:
        box["hpa"] = kube.get(HPA_API, HPA_KIND, name, namespace)
        if box["hpa"] is None:
            return False, "the HPA does not exist"
        if current_value(box["hpa"], custom_metric_name) is not None:
            return True, "value read"
        return False, f"current value <unknown>; conditions: {conditions_text(box['hpa'])}"

    try:
        wait_for(has_value, timeout, f"HPA {namespace}/{name} to read {custom_metric_name}", interval=2.0)
    except KubeInferError as e:
        raise KubeInferError(e.msg, conditions=((box.get("hpa") or {}).get("status") or {}).get("conditions"), **e.result) from e
    return box["hpa"]


def wait_for_keda(kube: Kube, params: dict[str, Any], name: str, query: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Wait until the trigger's query returns a sample and KEDA's HPA reads a current value from it.

    Ready alone proves nothing: KEDA sets it once a reconcile succeeds (controllers/keda/scaledobject_controller.go),
    and its prometheus scaler counts an empty result as 0 (ignoreNullValues defaults to true,
    pkg/scalers/prometheus_scaler.go), so a query that matches no series passes Ready and never scales.
    Returns (the ScaledObject, KEDA's HPA, the query's value); the timeout names what is missing.
    """
    ns, url = params["namespace"], params["prometheus_url"]

    def run_query(promql: str) -> list[dict[str, Any]]:
        return instant_query(kube, url, promql, 30, params["prometheus_validate_certs"])

    box: dict[str, Any] = {}

    def reading() -> tuple[bool, str]:
        box["value"] = sample_value(run_query(query))
        if box["value"] is None:
            return False, ""
        box["so"] = kube.get(KEDA_API, KEDA_KIND, name, ns)
        if not is_ready(box["so"]):
            return False, f"ScaledObject {ns}/{name} is not Ready: {conditions_text(box['so'])} (is the KEDA operator running?)"
        hpa_name = keda_hpa_name(box["so"], name)
        box["hpa"] = kube.get(HPA_API, HPA_KIND, hpa_name, ns)
        if box["hpa"] is None:
            return False, f"KEDA has not created its HPA {ns}/{hpa_name}"
        if external_value(box["hpa"]) is None:
            return False, (f"KEDA's HPA {ns}/{hpa_name} has no current value for {KEDA_METRIC} (is KEDA's metrics API server "
                           f"serving external.metrics.k8s.io?); conditions: {conditions_text(box['hpa'])}")
        return True, "value read"

    timeout = params["verify_timeout"]
    done, reason, waited = poll(reading, timeout, interval=2.0)
    if not done:
        if box.get("value") is None:
            raise KubeInferError(
                f"the KEDA query {query} returns no sample from Prometheus at {url} after {timeout:g}s: {why_empty(run_query, query)}. "
                "KEDA counts an empty result as 0, so this ScaledObject would never scale up", waited=round(waited, 3))
        raise KubeInferError(f"timed out after {timeout:g}s waiting for KEDA to read {KEDA_METRIC} ({query} = {box['value']}): {reason}",
                             conditions=((box.get("hpa") or box.get("so") or {}).get("status") or {}).get("conditions"),
                             query_value=box["value"], waited=round(waited, 3))
    return box["so"], box["hpa"], box["value"]


# -- other autoscalers of the target ------------------------------------------------------------------------------

def _group(api_version: str | None) -> str:
    return (api_version or "").rpartition("/")[0]


def scales(obj: dict[str, Any], target: str) -> bool:
    """Whether an HPA or ScaledObject scales Deployment ``target`` (a ScaledObject's ref defaults to apps/v1 Deployment)."""
    ref = (obj.get("spec") or {}).get("scaleTargetRef") or {}
    return ref.get("name") == target and ref.get("kind", "Deployment") == "Deployment" and _group(ref.get("apiVersion", "apps/v1")) == "apps"


def keda_owner(hpa: dict[str, Any]) -> str | None:
    """The ScaledObject that owns an HPA KEDA created (KEDA sets itself as controller owner, controllers/keda/hpa.go)."""
    for ref in (hpa.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == KEDA_KIND and _group(ref.get("apiVersion")) == "keda.sh":
            return str(ref.get("name"))
    return None


def describe(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')} {meta.get('namespace')}/{meta.get('name')}"


def sort_out(kind: str, name: str, hpas: list[dict[str, Any]], scaled_objects: list[dict[str, Any]]
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The autoscalers of the target other than the one this run writes: (stale, dependents, foreign).

    stale: the collection's own (managed-by label), of the other kind or another name, deleted first;
    dependents: HPAs KEDA created for a ScaledObject that goes (KEDA and the garbage collector remove them);
    foreign: anything the collection does not manage. An HPA owned by a ScaledObject is judged by its owner:
    KEDA copies the ScaledObject's labels, managed-by included, onto it (controllers/keda/hpa.go).
    """
    stale: list[dict[str, Any]] = []
    dependents: list[dict[str, Any]] = []
    foreign: list[dict[str, Any]] = []
    staying: set[str] = set()
    for obj in scaled_objects:
        if not is_managed(obj):
            foreign.append(obj)
            staying.add(obj["metadata"]["name"])
        elif kind == "keda" and obj["metadata"]["name"] == name:
            staying.add(name)
        else:
            stale.append(obj)
    for obj in hpas:
        owner = keda_owner(obj)
        if owner is not None:
            if owner not in staying:
                dependents.append(obj)
        elif not is_managed(obj):
            foreign.append(obj)
        elif not (kind == "hpa" and obj["metadata"]["name"] == name):
            stale.append(obj)
    return stale, dependents, foreign


def wait_until_gone(kube: Kube, objs: list[dict[str, Any]], timeout: float) -> None:
    """Wait until each object is deleted; a ScaledObject held by KEDA's finalizer says so."""
    def gone() -> tuple[bool, str]:
        for obj in objs:
            meta = obj["metadata"]
            live = kube.get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
            if live is None or live["metadata"].get("uid") != meta.get("uid"):
                continue
            if KEDA_FINALIZER in (live["metadata"].get("finalizers") or []):
                return False, f"{describe(obj)} is held by the finalizer {KEDA_FINALIZER}, which only the KEDA operator removes (is it running?)"
            if keda_owner(live):
                return False, f"{describe(obj)} still exists (the garbage collector removes it once its ScaledObject is gone)"
            return False, f"{describe(obj)} still exists"
        return True, "gone"

    if objs:
        wait_for(gone, timeout, "the previous autoscaler of the target to be removed", interval=1.0)


# KEDA's admission webhook reads HPAs and ScaledObjects from its informer cache
# (apis/keda/v1alpha1/scaledobject_webhook.go verifyHpas, verifyScaledObjects), which may still hold one just deleted.
WEBHOOK_CACHE_SECONDS = 15.0


def _denied_for(error: ApiError, names: set[str]) -> bool:
    """Whether KEDA's webhook refused the write because of one of ``names`` (its verifyHpas/verifyScaledObjects messages)."""
    return any(f"managed by the hpa '{n}'" in error.reason or f"managed by the ScaledObject '{n}'" in error.reason for n in names)


def write(kube: Kube, desired: dict[str, Any], check_mode: bool, removed: list[dict[str, Any]]
          ) -> tuple[bool, dict[str, Any] | None, dict[str, Any], str | None]:
    """ensure() the autoscaler after ``removed`` went; returns (changed, before, after, a check-mode warning or None).

    In check mode the removed objects are still there (their deletes were dry runs), so KEDA's webhook may refuse
    the dry run because of them: the object is then returned as desired, with a warning.
    """
    names = {o["metadata"]["name"] for o in removed}
    deadline = time.monotonic() + WEBHOOK_CACHE_SECONDS
    while True:
        try:
            changed, before, after = ensure(kube, desired, check_mode)
            return changed, before, after, None
        except ApiError as e:
            if not _denied_for(e, names):
                raise
            if check_mode:
                meta = desired["metadata"]
                before = kube.get(desired["apiVersion"], desired["kind"], meta["name"], meta["namespace"])
                return True, before, desired, (f"check mode: KEDA's webhook refused the dry run only because of "
                                               f"{', '.join(sorted(describe(o) for o in removed))}, which a real run deletes first: {e.reason}")
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)


# -- the module ---------------------------------------------------------------------------------------------------

def _keda_installed(kube: Kube) -> bool:
    return kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", KEDA_CRD) is not None


def _desired(kube: Kube, params: dict[str, Any], name: str, result: dict[str, Any]) -> dict[str, Any]:
    ns, release, kind = params["namespace"], params["release"], params["kind"]
    min_replicas, max_replicas = params["min_replicas"], params["max_replicas"]
    if min_replicas < (0 if kind == "keda" else 1):
        raise KubeInferError(f"min_replicas must be at least {0 if kind == 'keda' else 1} with kind={kind}"
                             + ("" if kind == "keda" else "; scale to zero needs kind=keda"))
    if max_replicas < max(min_replicas, 1):
        raise KubeInferError(f"max_replicas ({max_replicas}) must be at least 1 and at least min_replicas ({min_replicas})")
    deployment = find_target(kube, ns, release, params["target"])
    target = deployment["metadata"]["name"]
    budget, budget_source = startup_budget(params, deployment)
    window, window_source = scale_down_window(params["scale_down"]["stabilization_window_seconds"], budget)
    result.update(target=target, startup_budget_seconds=budget, startup_budget_source=budget_source,
                  scale_down_window_seconds=window, scale_down_window_source=window_source)
    spec_behavior = behavior(params, window)
    if kind == "hpa":
        return hpa_object(name, ns, release, target, params["custom_metric_name"], min_replicas, max_replicas,
                          canonical_quantity(params["target_queue_depth"]), spec_behavior)
    if not params["prometheus_url"]:
        raise KubeInferError("prometheus_url is required with kind=keda: KEDA's prometheus trigger queries Prometheus itself")
    query = params["keda_query"] or keda_query(params["metric_name"] or QUEUE_METRIC_CANDIDATES[0], ns, release)
    result["query"] = query
    return scaled_object(name, ns, release, target, min_replicas, max_replicas, plain_number(params["target_queue_depth"]),
                         params["prometheus_url"], query, window, params["polling_interval"], spec_behavior)


def _others(kube: Kube, params: dict[str, Any], name: str, target: str, keda_ok: bool
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The autoscalers of the target to remove first (stale, then KEDA's HPAs of those), refusing foreign ones before any write."""
    ns, kind = params["namespace"], params["kind"]
    hpas = [o for o in kube.list(HPA_API, HPA_KIND, ns) if scales(o, target)]
    scaled_objects = [o for o in kube.list(KEDA_API, KEDA_KIND, ns) if scales(o, target)] if keda_ok else []
    stale, dependents, foreign = sort_out(kind, name, hpas, scaled_objects)
    if foreign:
        raise KubeInferError(
            f"kind={kind}: Deployment {ns}/{target} is already scaled by {', '.join(describe(o) for o in foreign)}, which "
            f"kubeinfer.llm does not manage (no label {MANAGED_BY_LABEL}={MANAGED_BY}). Two autoscalers of one Deployment fight over "
            "its replicas (and KEDA's webhook refuses a ScaledObject whose target another HPA owns): remove it, or set target to "
            "another Deployment. Nothing was changed.", foreign=[describe(o) for o in foreign])
    return stale, dependents


def run(kube: Kube, params: dict[str, Any], check_mode: bool, diff: bool) -> dict[str, Any]:
    """The inference_hpa module: replace the collection's other autoscaler of the target, ensure the HPA (or
    ScaledObject), then wait for it to read the metric."""
    ns, kind = params["namespace"], params["kind"]
    name = params["name"] or params["release"]
    api_version, obj_kind = (KEDA_API, KEDA_KIND) if kind == "keda" else (HPA_API, HPA_KIND)
    result: dict[str, Any] = {"changed": False, "kind": kind, "name": name, "current_value": None, "desired_replicas": None,
                              "removed": []}
    try:
        keda_ok = _keda_installed(kube)
        if params["state"] == "absent":
            before = kube.get(api_version, obj_kind, name, ns) if keda_ok or kind == "hpa" else None
            if before is not None:
                kube.delete(api_version, obj_kind, name, ns, dry_run=check_mode)
            result.update(changed=before is not None, hpa=None)
            if diff:
                result["diff"] = before_after(before, None)
            result["api_requests"] = dict(kube.requests)
            return result
        if kind == "keda" and not keda_ok:
            raise KubeInferError(f"KEDA is not installed: no {KEDA_CRD} CRD. Install KEDA (https://keda.sh) or use kind=hpa")
        desired = _desired(kube, params, name, result)
        stale, dependents = _others(kube, params, name, result["target"], keda_ok)
        # The switch between hpa and keda: the collection's previous autoscaler of the target goes first (KEDA's
        # webhook refuses a ScaledObject on a target another HPA owns; two HPAs fight), then KEDA's HPA of a
        # removed ScaledObject must be gone before an HPA of ours scales the same Deployment.
        for obj in stale:
            kube.delete(obj["apiVersion"], obj["kind"], obj["metadata"]["name"], ns, dry_run=check_mode)
        result["removed"] = [describe(o) for o in stale]
        if not check_mode:
            wait_until_gone(kube, stale + dependents, params["verify_timeout"])
        # Strict field validation checks a ScaledObject against the installed KEDA CRD's schema.
        changed, before, after, warning = write(kube, desired, check_mode, stale + dependents)
        result["changed"] = changed or bool(stale)
        if warning:
            result["warnings"] = [warning]
        if diff:
            result["diff"] = before_after(before, after)
        status = (after or {}).get("status") or {}
        if kind == "hpa":
            if params["verify"] and not check_mode:
                after = wait_for_value(kube, ns, name, params["custom_metric_name"], params["verify_timeout"])
                status = after.get("status") or {}
            result["current_value"] = current_value(after, params["custom_metric_name"])
            scaler_status = status
        else:
            if params["verify"] and not check_mode:
                after, keda_hpa, result["query_value"] = wait_for_keda(kube, params, name, result["query"])
                status = after.get("status") or {}
            else:
                keda_hpa = kube.get(HPA_API, HPA_KIND, keda_hpa_name(after, name), ns)
            result["keda_hpa"] = keda_hpa_name(after, name)
            result["current_value"] = external_value(keda_hpa)
            scaler_status = (keda_hpa or {}).get("status") or {}
        result.update(hpa=clean(after), conditions=status.get("conditions") or [], desired_replicas=scaler_status.get("desiredReplicas"),
                      current_replicas=scaler_status.get("currentReplicas"))
    except KubeInferError as e:
        raise KubeInferError(e.msg, **{**result, **e.result, "api_requests": dict(kube.requests)}) from e
    result["api_requests"] = dict(kube.requests)
    return result
