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


_RELEASE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUERY_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)\s*"((?:[^"\\]|\\.)*)"')


def _promql_unquote(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), body)


def _check_names(metric_names: str | Sequence[str], custom_metric_name: str) -> list[str]:
    names = [metric_names] if isinstance(metric_names, str) else list(metric_names)
    if not names:
        raise KubeInferError("adapter_rules needs at least one Prometheus metric name")
    for name in names:
        if not _METRIC_NAME.fullmatch(name or ""):
            raise KubeInferError(f"Invalid Prometheus metric name {name!r}")
    if not _CUSTOM_METRIC_NAME.match(custom_metric_name or ""):
        raise KubeInferError(f"Invalid custom metric name {custom_metric_name!r}: use lower-case letters, digits and '_'")
    return sorted(set(names))


def _check_releases(releases: Iterable[str]) -> list[str]:
    found = sorted(set(releases))
    if not found:
        raise KubeInferError("adapter_rules needs at least one release: a rule without a release filter "
                             "would sum every vLLM in the namespace")
    for release in found:
        if len(release) > 63 or not _RELEASE_NAME.match(release):
            raise KubeInferError(f"Invalid release name {release!r}: use lower-case letters, digits, '-' and '.'")
    return found


def release_regex(releases: Iterable[str]) -> str:
    """The regular expression (RE2, anchored by PromQL) that matches exactly the given release names."""
    return "|".join(release.replace(".", "\\.") for release in _check_releases(releases))


def _name_matcher(names: Sequence[str]) -> str:
    # Metric names hold no regex metacharacters ([a-zA-Z0-9_:]), so they need no escaping.
    if len(names) == 1:
        return f"__name__={_promql_string(names[0])}"
    return f"__name__=~{_promql_string('|'.join(names))}"


def adapter_rule(
    metric_names: str | Sequence[str],
    custom_metric_name: str = DEFAULT_CUSTOM_METRIC_NAME,
    releases: Iterable[str] = (),
) -> dict[str, Any]:
    """The one Prometheus Adapter rule (custom metrics API) that serves ``custom_metric_name`` per pod.

    Convention: ONE rule per custom metric name. The adapter keeps a single series per (resource,
    metric name) cluster-wide, so two rules producing the same name would shadow each other; instead
    every release that uses the name is listed in the rule's release filter,
    ``kubeinfer_io_release=~"<r1>|<r2>"`` (the series label the scrape makes of the pod label
    ``kubeinfer.io/release``), sorted so that the rule is stable. The filter appears in ``seriesQuery``
    (discovery only sees registered releases) and in ``metricsQuery``: the HPA asks for the pods of
    its scale target, the adapter fills LabelMatchers with ``namespace="ns",pod=~"a|b"`` and GroupBy
    with ``pod``, so every value is one pod's own queue (the sum merges the per-model series of that
    pod). Two models in one namespace never see each other's pods: separation comes from the HPA's
    pod selector, never from a namespace-wide sum.

    ``metric_names`` is the detected name, or several candidates (``__name__=~"a|b"``) when detection
    is off; a series name that appears under two forms at once would make the adapter pick one.
    """
    names = _check_names(metric_names, custom_metric_name)
    release_filter = f"{RELEASE_SERIES_LABEL}=~{_promql_string(release_regex(releases))}"
    pattern = names[0] if len(names) == 1 else "(" + "|".join(names) + ")"
    return {
        "seriesQuery": "{" + f"{_name_matcher(names)},{NAMESPACE_SERIES_LABEL}!=\"\",{POD_SERIES_LABEL}!=\"\",{release_filter}" + "}",
        "resources": {"overrides": {
            NAMESPACE_SERIES_LABEL: {"resource": "namespace"},
            POD_SERIES_LABEL: {"resource": "pod"},
        }},
        "name": {"matches": f"^{pattern}$", "as": custom_metric_name},
        "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>," + release_filter + "}) by (<<.GroupBy>>)",
    }


def adapter_rules(
    metric_names: str | Sequence[str],
    custom_metric_name: str = DEFAULT_CUSTOM_METRIC_NAME,
    releases: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """``[adapter_rule(...)]``: the rules list for one custom metric name."""
    return [adapter_rule(metric_names, custom_metric_name, releases)]


def parse_adapter_rule(rule: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a rule in this convention says: ``{"custom_metric_name", "metric_names", "releases"}``.

    Returns None for a rule without a ``kubeinfer_io_release`` filter in its seriesQuery (another
    tool's rule). An equality filter (``kubeinfer_io_release="a"``) reads as one release.
    """
    if not isinstance(rule, Mapping):
        return None
    releases: list[str] | None = None
    names: list[str] = []
    for match in _QUERY_MATCHER.finditer(str(rule.get("seriesQuery") or "")):
        label, op, value = match.group(1), match.group(2), _promql_unquote(match.group(3))
        if label == RELEASE_SERIES_LABEL and op == "=":
            releases = [value]
        elif label == RELEASE_SERIES_LABEL and op == "=~":
            releases = [r.replace("\\.", ".") for r in value.split("|") if r]
        elif label == "__name__" and op == "=":
            names = [value]
        elif label == "__name__" and op == "=~":
            names = [n for n in value.split("|") if n]
    if releases is None:
        return None
    return {"custom_metric_name": (rule.get("name") or {}).get("as"), "metric_names": sorted(set(names)),
            "releases": sorted(set(releases))}


def merge_adapter_rules(existing: Iterable[Mapping[str, Any]], metric_names: str | Sequence[str] | None,
                        custom_metric_name: str, release: str, present: bool = True) -> list[dict[str, Any]]:
    """Register (``present``) or unregister ``release`` under ``custom_metric_name`` in an adapter ``rules`` list.

    The rule producing ``custom_metric_name`` is rebuilt in place with the release added to (or
    removed from) its release set; it is dropped when no release is left, and appended when there
    was none. Other rules are kept as they are, in order, so merging the same input twice gives an
    equal list. ``metric_names`` is not needed to unregister.

    Raises KubeInferError, before anything changes, when
    - a rule without a release filter (another tool's) already produces ``custom_metric_name``;
    - the rule serves another source metric for other releases (vLLM versions that name the queue
      differently cannot share one custom metric name: the adapter would read one series name for all).
    A rule whose only release is ``release`` takes the new source metric (the release was upgraded).
    """
    _check_releases([release])
    merged: list[dict[str, Any]] = []
    position: int | None = None
    registered: list[str] = []
    current_names: list[str] = []
    for rule in existing:
        if (rule.get("name") or {}).get("as") != custom_metric_name:
            merged.append(dict(rule))
            continue
        parsed = parse_adapter_rule(rule)
        if parsed is None:
            raise KubeInferError(
                f"The Prometheus Adapter already has a rule that produces the custom metric {custom_metric_name!r} without a "
                f"{RELEASE_SERIES_LABEL} filter (seriesQuery {rule.get('seriesQuery')!r}); remove it or choose another custom_metric_name",
                conflicting_rule=dict(rule),
            )
        if position is None:
            position = len(merged)
        registered.extend(parsed["releases"])
        current_names.extend(parsed["metric_names"])
    releases = set(registered)
    if present:
        if metric_names is None:
            raise KubeInferError("merge_adapter_rules needs the source metric name to register a release")
        names = _check_names(metric_names, custom_metric_name)
        others = releases - {release}
        if others and current_names and sorted(set(current_names)) != names:
            raise KubeInferError(
                f"The custom metric {custom_metric_name!r} maps {', '.join(sorted(set(current_names)))} for the releases "
                f"{', '.join(sorted(others))}, but release {release!r} exposes {', '.join(names)}; give it its own custom_metric_name",
                releases=sorted(others), metric_names=sorted(set(current_names)),
            )
        releases.add(release)
    else:
        releases.discard(release)
        names = sorted(set(current_names))
    if releases:
        rule = adapter_rule(names, custom_metric_name, releases)
        merged.insert(len(merged) if position is None else position, rule)
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
