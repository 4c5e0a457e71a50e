# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The completion_check runner: /health, /v1/models and one completion of an OpenAI-compatible server. Private to this collection: the interface may change."""
from __future__ import annotations

import json
from typing import Any

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._http import Deadline, Endpoint, Reply, check_status, endpoint_from_url, excerpt, parse_json
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import (
    check_dns_label,
    check_label_selector,
    check_namespace,
    check_object_name,
    check_range,
)
from ansible_collections.kubeinfer.llm.plugins.module_utils._portforward import pod_endpoint
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube

APIS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")


def served_models(doc: Any) -> list[str]:
    """The model ids of a /v1/models answer."""
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise KubeInferError(f"response of /v1/models has no 'data' list: {excerpt(json.dumps(doc))}")
    ids = [m.get("id") for m in doc["data"] if isinstance(m, dict)]
    return [i for i in ids if isinstance(i, str)]


def match_model(expected: str | None, served: list[str]) -> str:
    """The model to query: ``expected`` when served, the only/first served one when not given."""
    if not served:
        raise KubeInferError("/v1/models lists no model", models=served)
    if expected is None:
        return served[0]
    if expected not in served:
        raise KubeInferError(f"model mismatch: expected {expected}, served {json.dumps(served)}", models=served)
    return expected


def completion_request(api: str, model: str, prompt: str, max_tokens: int) -> tuple[str, dict[str, Any]]:
    """The path and body of a deterministic (temperature 0) completion or chat request."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "temperature": 0}
    if api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return APIS[api], body


def check_completion(doc: Any, path: str) -> dict[str, int]:
    """Check that a completion answer has non-empty ``choices`` and a ``usage`` object; return the token counts."""
    if not isinstance(doc, dict):
        raise KubeInferError(f"response of {path} is not a JSON object: {excerpt(json.dumps(doc))}")
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices:
        raise KubeInferError(f"response of {path} has no choices: {excerpt(json.dumps(doc))}", response=doc)
    usage = doc.get("usage")
    if not isinstance(usage, dict):
        raise KubeInferError(f"response of {path} has no usage object: {excerpt(json.dumps(doc))}", response=doc)
    counts: dict[str, int] = {}
    for key in USAGE_KEYS:
        value = usage.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise KubeInferError(f"response of {path}: usage.{key} is not a count: {value!r}", response=doc)
        counts[key] = value
    return counts


def run_checks(endpoint: Endpoint, model: str | None, api: str, prompt: str, max_tokens: int,
               timeout: float, overall_timeout: float, api_key: str | None = None) -> dict[str, Any]:
    """GET /health, GET /v1/models, then one completion; return the result or raise with the partial result."""
    deadline = Deadline(overall_timeout, timeout)
    headers = {"Authorization": "Bearer " + api_key} if api_key else {}
    result: dict[str, Any] = {"via": endpoint.via}

    def call(method: str, path: str, body: Any = None) -> Reply:
        reply = endpoint.request(method, path, deadline.next_timeout(f"{method} {path}"), body, headers)
        check_status(reply)
        return reply

    try:
        health = call("GET", "/health")
        result["health_latency_ms"] = health.latency_ms
        result["models"] = served_models(parse_json(call("GET", "/v1/models")))
        result["model"] = match_model(model, result["models"])
        path, body = completion_request(api, result["model"], prompt, max_tokens)
        reply = call("POST", path, body)
        doc = parse_json(reply)
        result["response"] = doc
        result["latency_ms"] = reply.latency_ms
        result["usage"] = check_completion(doc, path)
    except KubeInferError as e:
        # The partial result says how far the check got.
        raise KubeInferError(e.msg, **{**result, **e.result}) from e
    return result


def validate(params: dict[str, Any]) -> None:
    """Check what the argument spec cannot, before any request or port-forward; the message names the parameter."""
    if params["namespace"] is not None:
        check_namespace(params["namespace"])
    check_label_selector(params["label_selector"], "label_selector")
    if params["service"] is not None:
        check_dns_label(params["service"], "service", "Service name")
    if params["pod"] is not None:
        check_object_name(params["pod"], "pod", "pod name")
    check_range(params["port"], "port", 1, 65535)
    check_range(params["ready_timeout"], "ready_timeout", 0, unit="seconds")
    check_range(params["max_tokens"], "max_tokens", 1, unit="tokens")
    check_range(params["timeout"], "timeout", 1, unit="seconds")
    check_range(params["overall_timeout"], "overall_timeout", max(params["timeout"], 1), unit="seconds (and at least timeout)")
    if not str(params["prompt"] or "").strip():
        raise KubeInferError(f"prompt: must not be empty, got {params['prompt']!r}")
    if params["model"] is not None and (not params["model"].strip() or params["model"] != params["model"].strip()):
        raise KubeInferError(f"model: {params['model']!r} is not a model id (empty, or leading or trailing spaces)")


def run(kube: Kube | None, params: dict[str, Any], check_mode: bool, diff: bool) -> dict[str, Any]:
    """The completion_check module: pick the endpoint (``base_url``, or a pod through port-forward), then run the checks.

    ``kube`` is None with ``base_url``: a check through an ingress needs no cluster credentials. The
    module only reads, so check mode runs the same checks, and there is nothing to diff.
    """
    result: dict[str, Any] = {"changed": False}
    try:
        validate(params)
        if params["base_url"]:
            endpoint = endpoint_from_url(params["base_url"], "base_url", params["endpoint_validate_certs"], params["endpoint_ca_cert"])
            # The URL is the server root: /health is served there, not under /v1.
            endpoint.prefix = endpoint.prefix.removesuffix("/v1")
        else:
            if kube is None:
                raise KubeInferError("completion_check needs a Kubernetes client to port-forward to a pod")
            endpoint, chosen = pod_endpoint(kube, params["namespace"], params["label_selector"], params["service"],
                                            params["pod"], params["port"], params["ready_timeout"])
            result["pod"] = chosen["metadata"]["name"]
        result.update(run_checks(endpoint, params["model"], params["api"], params["prompt"], params["max_tokens"],
                                 params["timeout"], params["overall_timeout"], params["vllm_api_key"]))
    except KubeInferError as e:
        raise KubeInferError(e.msg, **{**result, **e.result}) from e
    return result
