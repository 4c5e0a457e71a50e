# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus Adapter rules for vLLM: build, read and merge the one rule per custom metric name. Private to this collection: the interface may change."""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import dns_subdomain_error
from ansible_collections.kubeinfer.llm.plugins.module_utils._promql import (
    METRIC_NAME,
    NAMESPACE_SERIES_LABEL,
    POD_SERIES_LABEL,
    RELEASE_SERIES_LABEL,
    literals,
    matchers,
    name_matcher,
    one_of,
    parse_matchers,
    selector,
)

_CUSTOM_METRIC_NAME = re.compile(r"^[a-z0-9]([a-z0-9_]*[a-z0-9])?$")


def _check_names(metric_names: str | Sequence[str], custom_metric_name: str) -> list[str]:
    names = [metric_names] if isinstance(metric_names, str) else list(metric_names)
    if not names:
        raise KubeInferError("metric_name: the rule needs at least one Prometheus metric name")
    for name in names:
        if not METRIC_NAME.fullmatch(name or ""):
            raise KubeInferError(f"metric_name: {name!r} is not a valid Prometheus metric name")
    if not _CUSTOM_METRIC_NAME.match(custom_metric_name or ""):
        raise KubeInferError(f"custom_metric_name: {custom_metric_name!r} is not valid: use lower-case letters, digits and '_'")
    return sorted(set(names))


def _check_releases(releases: Iterable[str]) -> list[str]:
    found = sorted(set(releases))
    if not found:
        raise KubeInferError("release: the rule needs at least one release: a rule without a release filter "
                             "would sum every vLLM in the namespace")
    for release in found:
        if dns_subdomain_error(release, 63):
            raise KubeInferError(f"release: {release!r} is not a valid release name: use lower-case letters, digits, '-' and '.'")
    return found


def adapter_rule(metric_names: str | Sequence[str], custom_metric_name: str, releases: Iterable[str]) -> dict[str, Any]:
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
    release_filter = (RELEASE_SERIES_LABEL, "=~", one_of(_check_releases(releases)))
    pattern = names[0] if len(names) == 1 else "(" + "|".join(names) + ")"
    return {
        "seriesQuery": selector("", name_matcher(names), (NAMESPACE_SERIES_LABEL, "!=", ""), (POD_SERIES_LABEL, "!=", ""), release_filter),
        "resources": {"overrides": {
            NAMESPACE_SERIES_LABEL: {"resource": "namespace"},
            POD_SERIES_LABEL: {"resource": "pod"},
        }},
        "name": {"matches": f"^{pattern}$", "as": custom_metric_name},
        "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>," + matchers(release_filter) + "}) by (<<.GroupBy>>)",
    }


def parse_adapter_rule(rule: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a rule in this convention says: ``{"custom_metric_name", "metric_names", "releases"}``.

    Returns None for a rule without a ``kubeinfer_io_release`` filter in its seriesQuery (another
    tool's rule). An equality filter (``kubeinfer_io_release="a"``) reads as one release.
    """
    if not isinstance(rule, Mapping):
        return None
    releases: list[str] | None = None
    names: list[str] = []
    for label, op, value in parse_matchers(str(rule.get("seriesQuery") or "")):
        if label in (RELEASE_SERIES_LABEL, "__name__") and op in ("=", "=~"):
            values = [value] if op == "=" else literals(value)
            if label == RELEASE_SERIES_LABEL:
                releases = values
            else:
                names = values
    if releases is None:
        return None
    return {"custom_metric_name": (rule.get("name") or {}).get("as"), "metric_names": sorted(set(names)),
            "releases": sorted(set(releases))}


def merge_adapter_rules(existing: Iterable[Mapping[str, Any]], metric_names: str | Sequence[str] | None,
                        custom_metric_name: str, release: str, present: bool = True,
                        candidates: bool = False) -> list[dict[str, Any]]:
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
    ``candidates`` says that ``metric_names`` are guesses (nothing was read from a pod): when the rule
    already maps some of them for other releases, the release shares those names instead of conflicting.
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
                f"custom_metric_name: the Prometheus Adapter already has a rule that produces {custom_metric_name!r} without a "
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
            raise KubeInferError("metric_name: the source metric name is needed to register a release")
        names = _check_names(metric_names, custom_metric_name)
        others = releases - {release}
        if candidates and others and current_names and set(current_names) <= set(names):
            names = sorted(set(current_names))
        if others and current_names and sorted(set(current_names)) != names:
            raise KubeInferError(
                f"custom_metric_name: {custom_metric_name!r} maps {', '.join(sorted(set(current_names)))} for the releases "
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


def rule_for(rules: Iterable[Mapping[str, Any]], custom_metric_name: str) -> dict[str, Any] | None:
    """The rule that produces ``custom_metric_name``, if any."""
    return next((dict(r) for r in rules if (r.get("name") or {}).get("as") == custom_metric_name), None)
