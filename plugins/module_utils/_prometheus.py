# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Instant queries against Prometheus, and why a query returns nothing. Private to this collection: the interface may change.

A URL that names an in-cluster Service (``http://<service>.<namespace>.svc[.<cluster domain>]:<port>``, the
address KEDA is given) is not resolvable from the Ansible host, so such a query goes through the API server's
service proxy (``GET /api/v1/namespaces/<ns>/services/<scheme>:<service>:<port>/proxy/...``, RBAC
``services/proxy`` get). Any other URL is queried directly.
"""
from __future__ import annotations

import re
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._http import endpoint_from_url, excerpt, parse_json
from ansible_collections.kubeinfer.llm.plugins.module_utils._promql import RELEASE_SERIES_LABEL, Matcher, parse_matchers, selector
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import ApiError, Kube

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
SERVICE_HOST = re.compile(rf"^(?P<service>{_LABEL})\.(?P<namespace>{_LABEL})\.svc(\.[a-z0-9.-]+)?$")
# One vector selector of a query: an optional metric name and its braces (PromQL's own grammar is richer;
# a selector without braces is not diagnosed, only reported).
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\{((?:[^{}\"]|\"(?:[^\"\\]|\\.)*\")*)\}")

Query = Callable[[str], "list[dict[str, Any]]"]


def service_proxy_path(url: str) -> str | None:
    """The API server path that proxies to ``url``'s Service, or None when ``url`` does not name one."""
    parts = urlsplit(url)
    match = SERVICE_HOST.match(parts.hostname or "")
    if match is None or parts.scheme not in ("http", "https"):
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (f"/api/v1/namespaces/{match.group('namespace')}/services/{parts.scheme}:{match.group('service')}:{port}/proxy"
            f"{parts.path.rstrip('/')}")


def instant_query(kube: Kube, url: str, promql: str, timeout: float, validate_certs: bool = True) -> list[dict[str, Any]]:
    """The samples of an instant query (``GET /api/v1/query``): a vector's elements, or one scalar as ``{metric: {}}``."""
    proxy = service_proxy_path(url)
    if proxy is not None:
        try:
            doc = kube.request("GET", f"{proxy}/api/v1/query", query=[("query", promql)], verb="get", timeout=timeout)
        except ApiError as e:
            raise KubeInferError(f"cannot query Prometheus at {url} through the API server's service proxy: {e.reason}") from e
    else:
        endpoint = endpoint_from_url(url, "prometheus_url", validate_certs)
        try:
            reply = endpoint.request("GET", "/api/v1/query?" + urlencode({"query": promql}), timeout)
        except KubeInferError as e:
            raise KubeInferError(f"cannot query Prometheus at {url}: {e.msg}") from e
        if reply.status != 200:
            raise KubeInferError(f"Prometheus at {url} answered HTTP {reply.status} to /api/v1/query: {excerpt(reply.body)}")
        doc = parse_json(reply)
    if not isinstance(doc, dict) or doc.get("status") != "success":
        error = doc.get("error") if isinstance(doc, dict) else excerpt(str(doc))
        raise KubeInferError(f"Prometheus at {url} refused the query {promql}: {error}")
    data = doc.get("data") or {}
    if data.get("resultType") == "scalar":
        return [{"metric": {}, "value": data.get("result")}]
    result = data.get("result")
    return result if isinstance(result, list) else []


def sample_value(samples: list[dict[str, Any]]) -> str | None:
    """The value of the first sample (what KEDA's prometheus scaler reads), None when there is none."""
    for sample in samples:
        value = sample.get("value")
        if isinstance(value, list) and len(value) == 2:
            return str(value[1])
    return None


def why_empty(query: Query, promql: str) -> str:
    """Why ``promql`` returns no sample: the first selector, and in it the first label matcher, that matches no series.

    Each selector is tried with its metric name alone, then with its matchers added one at a time, so the
    answer names the label that is missing or has other values (``kubeinfer_io_release`` when the scrape
    does not copy the pod label onto the series).
    """
    for metric, body in _SELECTOR.findall(promql):
        items = parse_matchers(body)
        names = [m for m in items if m[0] == "__name__"]
        rest = [m for m in items if m[0] != "__name__"]
        if not metric and not names:
            continue
        base = selector(metric, *names)
        if not query(f"count({base})"):
            return f"Prometheus has no series {base}"
        used: list[Matcher] = list(names)
        for label, op, value in rest:
            before = selector(metric, *used)
            used.append((label, op, value))
            if query(f"count({selector(metric, *used)})"):
                continue
            seen = sorted({s.get("metric", {}).get(label, "") for s in query(f"count by ({label}) ({before})")})
            if seen in ([], [""]):
                hint = ""
                if label == RELEASE_SERIES_LABEL:
                    hint = (" (the scrape does not copy the pod label kubeinfer.io/release onto the series: give the "
                            "PodMonitor or ServiceMonitor podTargetLabels [kubeinfer.io/release])")
                return f"series {before} exist, but none carries the label {label}{hint}"
            return f"series {before} exist, but none has {label}{op}\"{value}\" ({label} is {', '.join(v or '<unset>' for v in seen)})"
    return "its series exist, but the expression over them returns no sample"
