# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The metric names of a Prometheus exposition, and which vLLM metrics it holds. Private to this collection: the interface may change without notice."""
from __future__ import annotations

from typing import Sequence

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._promql import METRIC_NAME

# Candidate names, most current first. vLLM exposes the ``vllm:`` names; the underscore forms
# appear when a pipeline (an OpenTelemetry collector, some remote-write bridges) rewrites ':'.
QUEUE_METRIC_CANDIDATES = ("vllm:num_requests_waiting", "vllm_num_requests_waiting")
RUNNING_METRIC_CANDIDATES = ("vllm:num_requests_running", "vllm_num_requests_running")
E2E_LATENCY_METRIC_CANDIDATES = ("vllm:e2e_request_latency_seconds", "vllm_e2e_request_latency_seconds")
# vllm:gpu_cache_usage_perc was replaced by vllm:kv_cache_usage_perc and later removed.
KV_CACHE_METRIC_CANDIDATES = (
    "vllm:kv_cache_usage_perc", "vllm_kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "vllm_gpu_cache_usage_perc",
)


def metric_names(text: str) -> set[str]:
    """Every family and sample name of a Prometheus text or OpenMetrics exposition.

    A family is named by its ``# TYPE`` (or ``# HELP``) line; a sample line starts with the sample's
    name. The suffixes by which samples join a family (``_bucket``/``_sum``/``_count`` of a
    histogram, ``_total``/``_created`` of an OpenMetrics counter, ...) always follow a family that its
    ``# TYPE`` line declares, so a histogram is found by its family name even before its first
    observation, and a counter under both its OpenMetrics family name and its ``_total`` samples.
    Label values and sample values are not read. A line that is neither raises, naming it, so that
    an HTML error page is not mistaken for an empty exposition.
    """
    names: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#"):
            parts = line[1:].split(None, 2)
            if len(parts) >= 2 and parts[0] in ("TYPE", "HELP") and METRIC_NAME.fullmatch(parts[1]):
                names.add(parts[1])
            continue  # other comments, OpenMetrics "# UNIT" and "# EOF" included
        if not line:
            continue
        match = METRIC_NAME.match(line)
        if not match or match.end() < len(line) and line[match.end()] not in " \t{":
            raise KubeInferError(f"Prometheus text line {number} is not a sample: {line[:200]!r}", line=number)
        names.add(match.group(0))
    return names


def detect_metric(names: set[str], candidates: Sequence[str]) -> str:
    """The first of ``candidates`` among ``names`` (see metric_names()).

    Raises KubeInferError listing the vLLM metrics that are there (or, when there are none, how
    many other metrics were seen), so a renamed metric or a wrong endpoint shows at once.
    """
    for candidate in candidates:
        if candidate in names:
            return candidate
    vllm = sorted(name for name in names if name.lower().startswith("vllm"))
    if vllm:
        seen = f"vLLM metrics present: {', '.join(vllm)}"
    elif names:
        others = sorted(names)
        seen = f"no vLLM metrics at all (is this a vLLM /metrics endpoint?); {len(others)} other metrics, e.g. {', '.join(others[:10])}"
    else:
        seen = "the exposition holds no metrics at all"
    raise KubeInferError(f"None of the metrics {', '.join(candidates)} is exposed; {seen}",
                         candidates=list(candidates), vllm_metrics=vllm)


def detect_vllm_metrics(text: str) -> dict[str, str | None]:
    """The names to use for ``queue`` (required: raises if absent), ``running``, ``e2e_latency``
    and ``kv_cache`` (None when absent)."""
    names = metric_names(text)

    def optional(candidates: Sequence[str]) -> str | None:
        return next((c for c in candidates if c in names), None)

    return {
        "queue": detect_metric(names, QUEUE_METRIC_CANDIDATES),
        "running": optional(RUNNING_METRIC_CANDIDATES),
        "e2e_latency": optional(E2E_LATENCY_METRIC_CANDIDATES),
        "kv_cache": optional(KV_CACHE_METRIC_CANDIDATES),
    }
