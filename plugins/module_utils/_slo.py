# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Latency percentiles and error rates measured with real completions, and the SLO gate of a canary.

Private to this collection: the interface may change without notice.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

from ansible_collections.kubeinfer.llm.plugins.module_utils._completion import check_completion, completion_request, match_model, served_models
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._http import Endpoint, check_status, parse_json


@dataclass
class Sample:
    """One completion: whether it succeeded, how long it took end to end, and why it failed."""

    ok: bool
    latency_ms: float
    error: str = ""


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile ``q`` (0-100] of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return round(ordered[rank - 1], 1)


def summarize(samples: list[Sample], q: float) -> dict[str, Any]:
    """Counts, the error rate and latency percentiles of the successful requests (a failure has no service latency)."""
    latencies = [s.latency_ms for s in samples if s.ok]
    errors = [s.error for s in samples if not s.ok]
    return {"requests": len(samples), "errors": len(errors), "error_rate": round(len(errors) / len(samples), 4) if samples else None,
            "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95), "p99_ms": percentile(latencies, 99),
            "percentile": q, "percentile_ms": percentile(latencies, q),
            "max_ms": round(max(latencies), 1) if latencies else None, "first_errors": errors[:3]}


def one_completion(endpoint: Endpoint, model: str, prompt: str, max_tokens: int, timeout: float) -> Sample:
    """POST a completion and check it as completion_check does; a transport error, a bad status or a bad body is an error."""
    path, body = completion_request("completions", model, prompt, max_tokens)
    try:
        reply = endpoint.request("POST", path, timeout, body)
        check_status(reply)
        check_completion(parse_json(reply), path)
    except KubeInferError as e:
        return Sample(False, 0.0, f"{endpoint.via}: {e.msg}")
    return Sample(True, reply.latency_ms)


def measure(tracks: dict[str, list[Endpoint]], model: str | None, requests: int, prompt: str, max_tokens: int,
            timeout: float) -> dict[str, list[Sample]]:
    """``requests`` completions per track, round robin over its pods, the tracks side by side so they share the window.

    The served model is read once per track from ``/v1/models`` of its first pod (not timed).
    """
    samples: dict[str, list[Sample]] = {name: [] for name in tracks}
    models: dict[str, str] = {}
    for name, endpoints in tracks.items():
        if not endpoints:
            raise KubeInferError(f"no Ready pod of the {name} version to measure")
        reply = endpoints[0].request("GET", "/v1/models", timeout)
        check_status(reply)
        models[name] = match_model(model, served_models(parse_json(reply)))

    def run(name: str) -> None:
        endpoints = tracks[name]
        for i in range(requests):
            samples[name].append(one_completion(endpoints[i % len(endpoints)], models[name], prompt, max_tokens, timeout))

    threads = [threading.Thread(target=run, args=(name,), daemon=True) for name in tracks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return samples


def judge(stable: dict[str, Any], canary: dict[str, Any], q: float, max_latency_ratio: float, latency_slack_ms: float,
          max_error_rate: float) -> list[str]:
    """The thresholds the canary missed, each said with its numbers; empty when it passes."""
    missed = []
    if canary["error_rate"] is None or canary["error_rate"] > max_error_rate:
        missed.append(f"error rate {canary['error_rate']:.2%} above max_error_rate {max_error_rate:.2%} "
                      f"({canary['errors']} of {canary['requests']} requests failed: {canary['first_errors'][:1]})")
    key = "percentile_ms"
    if canary[key] is not None and stable[key] is not None:
        limit = stable[key] * max_latency_ratio + latency_slack_ms
        if canary[key] > limit:
            missed.append(f"p{q:g} latency {canary[key]:.0f} ms above {limit:.0f} ms (stable p{q:g} {stable[key]:.0f} ms x "
                          f"max_latency_ratio {max_latency_ratio:g} + latency_slack_ms {latency_slack_ms:g})")
    elif stable[key] is None:
        missed.append(f"the stable version answered no request, so its p{q:g} latency is unknown ({stable['first_errors'][:1]})")
    return missed
