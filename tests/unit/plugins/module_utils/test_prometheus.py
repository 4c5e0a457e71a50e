# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Instant queries (direct or through the service proxy) and the diagnosis of an empty query."""
from __future__ import annotations

from typing import Any

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils import _prometheus
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube

from .fake_cluster import FakeCluster


@pytest.mark.parametrize("url, path", [
    ("http://prometheus.monitoring.svc:9090", "/api/v1/namespaces/monitoring/services/http:prometheus:9090/proxy"),
    ("https://kps-prometheus.mon.svc.cluster.local/prom/", "/api/v1/namespaces/mon/services/https:kps-prometheus:443/proxy/prom"),
    ("http://127.0.0.1:9090", None),
    ("http://prometheus:9090", None),
    ("http://prometheus.example.com", None),
])
def test_service_proxy_path(url: str, path: str | None) -> None:
    assert _prometheus.service_proxy_path(url) == path


def test_query_through_the_service_proxy_and_its_errors() -> None:
    cluster = FakeCluster()
    path = "/api/v1/namespaces/monitoring/services/http:prometheus:9090/proxy/api/v1/query"
    cluster.answers[("GET", path)] = lambda q: {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {}, "value": [1, "2.5"]}]}} if q["query"] == "sum(up)" else {"status": "error", "error": "parse error"}
    kube = Kube(cluster)
    samples = _prometheus.instant_query(kube, "http://prometheus.monitoring.svc:9090", "sum(up)", 5)
    assert _prometheus.sample_value(samples) == "2.5" and _prometheus.sample_value([]) is None
    assert kube.requests["get"] == 1, "a read, never a write"
    with pytest.raises(KubeInferError, match=r"refused the query sum\(: parse error"):
        _prometheus.instant_query(kube, "http://prometheus.monitoring.svc:9090", "sum(", 5)
    with pytest.raises(KubeInferError, match=r"^cannot query Prometheus at http://p.o.svc:1 through the API server's service proxy"):
        _prometheus.instant_query(kube, "http://p.o.svc:1", "up", 5)


def test_direct_query_that_cannot_connect_names_the_url() -> None:
    with pytest.raises(KubeInferError, match=r"^cannot query Prometheus at http://127.0.0.1:1: "):
        _prometheus.instant_query(Kube(FakeCluster()), "http://127.0.0.1:1", "up", 2)


def fake(known: dict[str, list[dict[str, Any]]]) -> _prometheus.Query:
    return lambda promql: known.get(promql, [])


ONE = [{"metric": {}, "value": [1, "1"]}]


def test_why_empty_names_the_first_matcher_that_matches_nothing() -> None:
    query = 'sum(m{namespace="llm",kubeinfer_io_release="a"})'
    assert _prometheus.why_empty(fake({}), query) == "Prometheus has no series m"
    known = {"count(m)": ONE, 'count(m{namespace="llm"})': ONE, 'count by (kubeinfer_io_release) (m{namespace="llm"})': [{"metric": {}}]}
    assert _prometheus.why_empty(fake(known), query).startswith(
        'series m{namespace="llm"} exist, but none carries the label kubeinfer_io_release (the scrape does not copy the pod label')
    known['count by (kubeinfer_io_release) (m{namespace="llm"})'] = [{"metric": {"kubeinfer_io_release": "b"}}]
    assert _prometheus.why_empty(fake(known), query) == \
        'series m{namespace="llm"} exist, but none has kubeinfer_io_release="a" (kubeinfer_io_release is b)'
    known['count(m{namespace="llm",kubeinfer_io_release="a"})'] = ONE
    assert _prometheus.why_empty(fake(known), query) == "its series exist, but the expression over them returns no sample"
    assert _prometheus.why_empty(fake({}), 'sum({__name__="m",pod="x"})') == 'Prometheus has no series {__name__="m"}'
