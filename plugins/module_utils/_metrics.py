# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus text parsing, vLLM metric detection, adapter rules, a Grafana dashboard. Private to this collection: the interface may change without notice."""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError

# -- Label conventions --------------------------------------------------------------------------
# The vLLM pods of one release carry the Kubernetes label ``kubeinfer.io/release: <release>``
# (set by the collection's vLLM chart on the pod template, nowhere else). The scrape turns pod
# labels into series labels the way Prometheus always does, replacing every character outside
# [a-zA-Z0-9_] with "_": a PodMonitor/ServiceMonitor with ``podTargetLabels: [kubeinfer.io/release]``
# or a plain scrape config with ``labelmap: __meta_kubernetes_pod_label_(.+)`` gives the series
# ``kubeinfer_io_release="<release>"``. The scrape must also attach ``namespace`` and ``pod`` (the
# prometheus-operator does; a plain config relabels ``__meta_kubernetes_namespace`` and
# ``__meta_kubernetes_pod_name``). The adapter maps those two to the namespace and pod resources.
# ``app.kubernetes.io/instance`` is not used for filtering: any other chart installed under the
# same release name carries it too.
RELEASE_POD_LABEL = "kubeinfer.io/release"
RELEASE_SERIES_LABEL = "kubeinfer_io_release"
NAMESPACE_SERIES_LABEL = "namespace"
POD_SERIES_LABEL = "pod"

DEFAULT_CUSTOM_METRIC_NAME = "vllm_queue_depth"

# Candidate names, most current first. vLLM exposes the ``vllm:`` names; the underscore forms
# appear when a pipeline (an OpenTelemetry collector, some remote-write bridges) rewrites ':'.
QUEUE_METRIC_CANDIDATES = ("vllm:num_requests_waiting", "vllm_num_requests_waiting")
RUNNING_METRIC_CANDIDATES = ("vllm:num_requests_running", "vllm_num_requests_running")
E2E_LATENCY_METRIC_CANDIDATES = ("vllm:e2e_request_latency_seconds", "vllm_e2e_request_latency_seconds")
# vllm:gpu_cache_usage_perc was replaced by vllm:kv_cache_usage_perc and later removed.
KV_CACHE_METRIC_CANDIDATES = (
    "vllm:kv_cache_usage_perc", "vllm_kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "vllm_gpu_cache_usage_perc",
)
DCGM_GPU_UTIL_METRIC = "DCGM_FI_DEV_GPU_UTIL"

METRIC_TYPES = ("counter", "gauge", "histogram", "summary", "untyped", "unknown", "info", "stateset", "gaugehistogram")
# Sample name suffixes that belong to a family of the given type (text format and OpenMetrics).
_SUFFIXES = {
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("_sum", "_count", "_created"),
    "counter": ("_total", "_created"),
    "info": ("_info",),
}

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_CUSTOM_METRIC_NAME = re.compile(r"^[a-z0-9]([a-z0-9_]*[a-z0-9])?$")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


# -- Exposition parsing ---------------------------------------------------------------------------
class _Line:
    """A cursor over one sample line."""

    def __init__(self, text: str, number: int) -> None:
        self.text = text
        self.pos = 0
        self.number = number

    def error(self, what: str) -> KubeInferError:
        return KubeInferError(f"Prometheus text line {self.number}: {what} at column {self.pos + 1}: {self.text[:200]!r}",
                              line=self.number)

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise self.error(f"expected {char!r}")
        self.pos += 1

    def name(self, pattern: re.Pattern[str], what: str) -> str:
        match = pattern.match(self.text, self.pos)
        if not match:
            raise self.error(f"expected a {what}")
        self.pos = match.end()
        return match.group(0)

    def quoted(self) -> str:
        self.expect('"')
        out: list[str] = []
        while True:
            char = self.peek()
            if char == "":
                raise self.error("unterminated label value")
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char == "\\":
                escaped = self.peek()
                if escaped not in _ESCAPES:
                    raise self.error(f"invalid escape \\{escaped}")
                out.append(_ESCAPES[escaped])
                self.pos += 1
            else:
                out.append(char)

    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = {}
        self.expect("{")
        while True:
            self.skip_spaces()
            if self.peek() == "}":
                self.pos += 1
                return labels
            key = self.name(_LABEL_NAME, "label name")
            self.skip_spaces()
            self.expect("=")
            self.skip_spaces()
            if key in labels:
                raise self.error(f"duplicate label {key!r}")
            labels[key] = self.quoted()
            self.skip_spaces()
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != "}":
                raise self.error("expected ',' or '}'")

    def rest_tokens(self) -> list[str]:
        return self.text[self.pos:].split()


def _parse_value(token: str, line: _Line) -> float:
    if "_" in token:  # float() accepts 1_000, Prometheus does not
        raise line.error(f"invalid sample value {token!r}")
    try:
        return float(token)
    except ValueError:
        raise line.error(f"invalid sample value {token!r}") from None


def _unescape_help(text: str) -> str:
    return re.sub(r"\\(\\|n)", lambda m: "\n" if m.group(1) == "n" else "\\", text)


def _family_for(sample_name: str, families: dict[str, dict[str, Any]]) -> str | None:
    if sample_name in families:
        return sample_name
    for family_type, suffixes in _SUFFIXES.items():
        for suffix in suffixes:
            if sample_name.endswith(suffix):
                base = sample_name[: -len(suffix)]
                if base in families and families[base]["type"] == family_type:
                    return base
    return None


def parse_exposition(text: str) -> dict[str, dict[str, Any]]:
    """Parse Prometheus text exposition format (and the OpenMetrics subset vLLM emits).

    Returns ``{family_name: {"name", "type", "help", "samples": [{"name", "labels", "value",
    "timestamp"}]}}`` in order of appearance. ``# TYPE`` declares a family; samples join it by exact
    name or by the suffix their type allows (``_bucket``/``_sum``/``_count`` of a histogram, ``_total``
    of an OpenMetrics counter). Undeclared samples form an ``untyped`` family of their own name.
    Values are floats (``NaN``, ``+Inf``, ``-Inf`` included), timestamps ints or None.
    Raises KubeInferError naming the line for malformed input.
    """
    if not isinstance(text, str):
        raise KubeInferError("Prometheus text must be a string")
    families: dict[str, dict[str, Any]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            parts = stripped[1:].strip().split(None, 2)
            if len(parts) >= 2 and parts[0] in ("HELP", "TYPE"):
                name = parts[1]
                if not _METRIC_NAME.fullmatch(name):
                    raise KubeInferError(f"Prometheus text line {number}: invalid metric name {name!r} in # {parts[0]}", line=number)
                family = families.setdefault(name, {"name": name, "type": "untyped", "help": "", "samples": []})
                if parts[0] == "HELP":
                    family["help"] = _unescape_help(parts[2] if len(parts) > 2 else "")
                else:
                    kind = parts[2].strip() if len(parts) > 2 else ""
                    if kind not in METRIC_TYPES:
                        raise KubeInferError(f"Prometheus text line {number}: unknown metric type {kind!r} for {name}", line=number)
                    if family.get("_typed"):
                        raise KubeInferError(f"Prometheus text line {number}: second # TYPE line for {name}", line=number)
                    family["type"] = kind
                    family["_typed"] = True
            continue  # other comments, including OpenMetrics "# EOF"
        line = _Line(stripped, number)
        sample_name = line.name(_METRIC_NAME, "metric name")
        after_name = line.pos
        line.skip_spaces()
        if line.peek() == "{":
            labels = line.labels()
        else:
            labels = {}
            line.pos = after_name
        if line.peek() not in (" ", "\t"):
            raise line.error("expected whitespace before the value")
        tokens = line.rest_tokens()
        if not 1 <= len(tokens) <= 2:
            raise line.error("expected a value and an optional timestamp")
        value = _parse_value(tokens[0], line)
        timestamp = None
        if len(tokens) == 2:
            if not re.fullmatch(r"-?\d+(\.\d+)?", tokens[1]):
                raise line.error(f"invalid timestamp {tokens[1]!r}")
            timestamp = int(float(tokens[1]))
        family_name = _family_for(sample_name, families)
        if family_name is None:
            family_name = sample_name
            families[family_name] = {"name": family_name, "type": "untyped", "help": "", "samples": []}
        families[family_name]["samples"].append({"name": sample_name, "labels": labels, "value": value, "timestamp": timestamp})
    for family in families.values():
        family.pop("_typed", None)
    return families


def _families(text_or_families: str | Mapping[str, Any]) -> Mapping[str, Any]:
    return parse_exposition(text_or_families) if isinstance(text_or_families, str) else text_or_families


def metric_names(text_or_families: str | Mapping[str, Any]) -> list[str]:
    """Sorted family and sample names present in the exposition."""
    families = _families(text_or_families)
    names = set(families)
    for family in families.values():
        names.update(sample["name"] for sample in family["samples"])
    return sorted(names)


def sample_values(text_or_families: str | Mapping[str, Any], sample_name: str, labels: Mapping[str, str] | None = None) -> list[float]:
    """Values of every sample named ``sample_name`` whose labels include ``labels``."""
    wanted = dict(labels or {})
    return [
        sample["value"]
        for family in _families(text_or_families).values()
        for sample in family["samples"]
        if sample["name"] == sample_name and all(sample["labels"].get(k) == v for k, v in wanted.items())
    ]


# -- Detection ------------------------------------------------------------------------------------
def detect_metric(text_or_families: str | Mapping[str, Any], candidates: Sequence[str]) -> str:
    """The first of ``candidates`` present in the exposition (as a family or a sample name).

    Raises KubeInferError listing the vLLM metrics that are there (or, when there are none, how
    many other metrics were seen), so a renamed metric or a wrong endpoint shows at once.
    """
    if not candidates:
        raise KubeInferError("detect_metric needs at least one candidate name")
    present = set(metric_names(text_or_families))
    for candidate in candidates:
        if candidate in present:
            return candidate
    vllm = sorted(name for name in present if name.lower().startswith("vllm"))
    if vllm:
        seen = f"vLLM metrics present: {', '.join(vllm)}"
    elif present:
        others = sorted(present)
        seen = f"no vLLM metrics at all (is this a vLLM /metrics endpoint?); {len(others)} other metrics, e.g. {', '.join(others[:10])}"
    else:
        seen = "the exposition holds no metrics at all"
    raise KubeInferError(f"None of the metrics {', '.join(candidates)} is exposed; {seen}",
                         candidates=list(candidates), vllm_metrics=vllm)


def detect_queue_metric(text_or_families: str | Mapping[str, Any]) -> str:
    """``vllm:num_requests_waiting`` or ``vllm_num_requests_waiting``, whichever is exposed."""
    return detect_metric(text_or_families, QUEUE_METRIC_CANDIDATES)


def detect_vllm_metrics(text_or_families: str | Mapping[str, Any]) -> dict[str, str | None]:
    """The names to use for ``queue`` (required: raises if absent), ``running``, ``e2e_latency``
    and ``kv_cache`` (None when absent). The result feeds grafana_dashboard()."""
    families = _families(text_or_families)

    def optional(candidates: Sequence[str]) -> str | None:
        try:
            return detect_metric(families, candidates)
        except KubeInferError:
            return None

    return {
        "queue": detect_queue_metric(families),
        "running": optional(RUNNING_METRIC_CANDIDATES),
        "e2e_latency": optional(E2E_LATENCY_METRIC_CANDIDATES),
        "kv_cache": optional(KV_CACHE_METRIC_CANDIDATES),
    }


# -- Prometheus Adapter rules -----------------------------------------------------------------------
def prometheus_label_name(key: str) -> str:
    """The series label a Kubernetes label key becomes after a scrape (``kubeinfer.io/release`` ->
    ``kubeinfer_io_release``): every character outside [a-zA-Z0-9_] is replaced by ``_``."""
    name = re.sub(r"[^a-zA-Z0-9_]", "_", key)
    if not name or name[0].isdigit():
        name = "_" + name
    return name


def release_selector_labels(release: str) -> dict[str, str]:
    """The series labels that select one release's vLLM pods: ``{"kubeinfer_io_release": release}``."""
    return {RELEASE_SERIES_LABEL: release}


def _promql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _matchers(selector_labels: Mapping[str, str]) -> str:
    return ",".join(f"{prometheus_label_name(k)}={_promql_string(str(v))}" for k, v in sorted(selector_labels.items()))


def adapter_rules(
    metric_name: str,
    custom_metric_name: str = DEFAULT_CUSTOM_METRIC_NAME,
    selector_labels: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Prometheus Adapter ``rules`` (custom metrics API) exposing ``metric_name`` per pod as ``custom_metric_name``.

    ``selector_labels`` are series label matchers that select exactly one release's pods, normally
    release_selector_labels(release); Kubernetes-style keys are sanitized (prometheus_label_name).
    They are required: without them the rule would mix every vLLM in the namespace. They appear
    twice: in ``seriesQuery`` (discovery only finds that release's series) and in ``metricsQuery``,
    which sums ``<<.Series>>{<<.LabelMatchers>>,<filter>} by (<<.GroupBy>>)``: the HPA asks for pods,
    the adapter fills LabelMatchers with ``namespace="ns",pod=~"a|b"`` and GroupBy with ``pod``, so
    the value is per pod (the sum merges the per-engine and per-model series of one pod).

    Uniqueness: the adapter keeps one rule per (resource, metric name) across the whole cluster; when
    two rules produce the same name the last one wins. With a release filter in metricsQuery, two
    releases sharing a name would make one release's HPA read the other's filter and get no data.
    So ``custom_metric_name`` must be unique among the rules in the adapter config (merge_adapter_rules
    enforces it); within one release's rules the pod label filter keeps releases in one namespace
    apart. ``name.as`` is literally ``custom_metric_name``.
    """
    if not _METRIC_NAME.fullmatch(metric_name or ""):
        raise KubeInferError(f"Invalid Prometheus metric name {metric_name!r}")
    if not _CUSTOM_METRIC_NAME.match(custom_metric_name or ""):
        raise KubeInferError(f"Invalid custom metric name {custom_metric_name!r}: use lower-case letters, digits and '_'")
    if not selector_labels:
        raise KubeInferError("adapter_rules needs selector_labels that select one release's pods; a rule without them "
                             "would sum every vLLM in the namespace")
    reserved = {NAMESPACE_SERIES_LABEL, POD_SERIES_LABEL, "__name__"} & {prometheus_label_name(k) for k in selector_labels}
    if reserved:
        raise KubeInferError(f"selector_labels must not set {', '.join(sorted(reserved))}: the adapter fills them from the request")
    release_filter = _matchers(selector_labels)
    return [{
        "seriesQuery": "{" + f"__name__={_promql_string(metric_name)},{NAMESPACE_SERIES_LABEL}!=\"\",{POD_SERIES_LABEL}!=\"\",{release_filter}" + "}",
        "resources": {"overrides": {
            NAMESPACE_SERIES_LABEL: {"resource": "namespace"},
            POD_SERIES_LABEL: {"resource": "pod"},
        }},
        "name": {"matches": f"^{metric_name}$", "as": custom_metric_name},
        "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>," + release_filter + "}) by (<<.GroupBy>>)",
    }]


_SELECTOR_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)\s*"((?:[^"\\]|\\.)*)"')


def _equality_matchers(series_query: str) -> dict[str, str]:
    return {m.group(1): re.sub(r"\\(.)", r"\1", m.group(3)) for m in _SELECTOR_MATCHER.finditer(series_query or "") if m.group(2) == "="}


def merge_adapter_rules(existing: Iterable[Mapping[str, Any]], new_rules: Sequence[Mapping[str, Any]],
                        selector_labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """Put one release's ``new_rules`` into an adapter ``rules`` list.

    Rules of the same release (their seriesQuery has equality matchers for all of ``selector_labels``)
    are replaced in place, so re-running with the same input returns an equal list. Other rules are
    kept. Raises KubeInferError if another rule already produces one of the new custom metric
    names (see adapter_rules on why names must be unique).
    """
    wanted = {prometheus_label_name(k): str(v) for k, v in selector_labels.items()}
    if not wanted:
        raise KubeInferError("merge_adapter_rules needs the release's selector_labels")
    new_names = {rule.get("name", {}).get("as") for rule in new_rules}
    merged: list[dict[str, Any]] = []
    inserted = False
    for rule in existing:
        matchers = _equality_matchers(str(rule.get("seriesQuery", "")))
        if all(matchers.get(k) == v for k, v in wanted.items()):
            if not inserted:
                merged.extend(dict(r) for r in new_rules)
                inserted = True
            continue
        other_name = (rule.get("name") or {}).get("as")
        if other_name in new_names:
            raise KubeInferError(
                f"The Prometheus Adapter already has a rule that produces the custom metric {other_name!r} "
                f"(seriesQuery {rule.get('seriesQuery')!r}); give this release its own custom metric name",
                conflicting_rule=dict(rule),
            )
        merged.append(dict(rule))
    if not inserted:
        merged.extend(dict(r) for r in new_rules)
    return merged


# -- Grafana --------------------------------------------------------------------------------------
def grafana_dashboard(
    metric_names: Mapping[str, str | None] | None = None,
    selector_labels: Mapping[str, str] | None = None,
    title: str = "kubeinfer.llm vLLM",
    uid: str = "kubeinfer-vllm",
) -> dict[str, Any]:
    """A Grafana dashboard (JSON model, schemaVersion 39) for one vLLM release.

    ``metric_names`` has the keys of detect_vllm_metrics() plus ``gpu_util``; a missing key takes the
    current vLLM name (or DCGM_FI_DEV_GPU_UTIL), a key set to None drops its panel. Panels: queue depth
    and running requests per pod, end-to-end latency p95 from the histogram buckets
    (``histogram_quantile(0.95, sum by (le) (rate(<name>_bucket[5m])))``), KV cache usage per pod
    (0-1, shown as percent) and GPU utilization per node and GPU from the DCGM exporter. The vLLM
    queries are filtered by ``selector_labels``; the DCGM query is not (the exporter's series carry
    the exporter pod's labels, not the workload's). The data source is a ``datasource`` variable.
    """
    names: dict[str, str | None] = {
        "queue": QUEUE_METRIC_CANDIDATES[0],
        "running": RUNNING_METRIC_CANDIDATES[0],
        "e2e_latency": E2E_LATENCY_METRIC_CANDIDATES[0],
        "kv_cache": KV_CACHE_METRIC_CANDIDATES[0],
        "gpu_util": DCGM_GPU_UTIL_METRIC,
    }
    unknown = set(metric_names or {}) - set(names)
    if unknown:
        raise KubeInferError(f"Unknown dashboard metric keys: {', '.join(sorted(unknown))}; known: {', '.join(names)}")
    names.update(metric_names or {})
    for key, value in names.items():
        if value is not None and not _METRIC_NAME.fullmatch(value):
            raise KubeInferError(f"Invalid metric name for {key}: {value!r}")
    selector = "{" + _matchers(selector_labels) + "}" if selector_labels else ""
    specs = [
        ("queue", "Queue depth (waiting requests)", "sum by (pod) ({m}{s})", "{{pod}}", "short", None),
        ("running", "Running requests", "sum by (pod) ({m}{s})", "{{pod}}", "short", None),
        ("e2e_latency", "End-to-end request latency p95", "histogram_quantile(0.95, sum by (le) (rate({m}_bucket{s}[5m])))",
         "p95", "s", None),
        ("kv_cache", "KV cache usage", "avg by (pod) ({m}{s})", "{{pod}}", "percentunit", 1),
        ("gpu_util", "GPU utilization (DCGM)", "avg by (Hostname, gpu) ({m})", "{{Hostname}} GPU {{gpu}}", "percent", 100),
    ]
    panels: list[dict[str, Any]] = []
    for key, panel_title, template, legend, unit, maximum in specs:
        metric = names[key]
        if metric is None:
            continue
        position = len(panels)
        defaults: dict[str, Any] = {"unit": unit, "min": 0}
        if maximum is not None:
            defaults["max"] = maximum
        panels.append({
            "id": position + 1,
            "type": "timeseries",
            "title": panel_title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (position % 2), "y": 8 * (position // 2)},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "none"}},
            "targets": [{
                "refId": "A",
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "expr": template.replace("{m}", metric).replace("{s}", selector),
                "legendFormat": legend,
            }],
        })
    if not panels:
        raise KubeInferError("grafana_dashboard: every panel was switched off")
    return {
        "uid": uid,
        "title": title,
        "tags": ["kubeinfer", "vllm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "options": [],
        }]},
        "annotations": {"list": []},
        "panels": panels,
    }
