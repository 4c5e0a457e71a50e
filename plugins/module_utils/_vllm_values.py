# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vllm_release's options as chart values, their checks and the sizing inputs. Private to this collection: the interface may change without notice."""
from __future__ import annotations

import copy
import math
from typing import Any

from ansible_collections.kubeinfer.llm.plugins.module_utils import _sizing
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm_release import deep_merge
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import (
    check_data_key,
    check_dns_label,
    check_namespace,
    check_object_name,
    int_quantity,
)

GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
"""GPU feature discovery's label: memory of one GPU in MiB."""
RELEASE_NAME_MAX = 53
"""Helm's limit; the name is also the Deployment's and the Service's (fullnameOverride), so a DNS label."""


def validate(p: dict[str, Any]) -> None:
    """The options the argument spec and the chart schema cannot check, before any request; the message starts with the option."""
    check_dns_label(p["name"], "name", "release name", RELEASE_NAME_MAX)
    check_namespace(p["namespace"])
    if p["state"] == "absent":
        return
    problems: list[str] = []
    if not p["chart_ref"]:
        problems.append("chart_ref: required; the action plugin sets it to the collection's charts/vllm on the controller")
    gpus = p["gpus_per_replica"]
    if gpus < 1:
        problems.append(f"gpus_per_replica: must be >= 1, got {gpus}")
    if p["replicas"] < 0:
        problems.append(f"replicas: must be >= 0, got {p['replicas']}")
    tp = p["tensor_parallel_size"]
    if tp is not None and not 1 <= tp <= max(gpus, 1):
        problems.append(f"tensor_parallel_size: must be between 1 and gpus_per_replica ({gpus}), got {tp}")
    if not 0 < p["gpu_memory_utilization"] <= 1:
        problems.append(f"gpu_memory_utilization: must be in (0, 1], got {p['gpu_memory_utilization']}")
    for option in ("max_model_len", "gpu_memory_mib", "startup_budget_seconds", "timeout"):
        if p[option] is not None and p[option] < 1:
            problems.append(f"{option}: must be >= 1, got {p[option]}")
    for option in ("params_billion", "load_throughput_gib_s"):
        if p[option] is not None and p[option] <= 0:
            problems.append(f"{option}: must be > 0, got {p[option]}")
    if p["engine"] == "sim" and (p["extra_args"] or p["quantization"]):
        problems.append("extra_args and quantization: only for engine=vllm; the simulator accepts only its own flags")
    if (p["model_cache"] or {}).get("type") == "hostPath" and not p["model_cache"]["host_path"]:
        problems.append("model_cache.host_path: required with model_cache.type=hostPath")
    if problems:
        raise KubeInferError("; ".join(problems))
    if p["hf_token_secret"]:
        check_object_name(p["hf_token_secret"]["name"], "hf_token_secret.name", "Secret name")
        check_data_key(p["hf_token_secret"]["key"], "hf_token_secret.key")


def tensor_parallel(p: dict[str, Any]) -> int:
    """The tensor parallel size: the option, else gpus_per_replica."""
    return int(p["tensor_parallel_size"] or p["gpus_per_replica"])


def _weights_dtype(p: dict[str, Any]) -> str:
    """The dtype the weights are stored in: a quantization the sizing knows, else the dtype."""
    quantization = p["quantization"]
    return quantization if quantization and quantization.lower() in _sizing.BYTES_PER_PARAM else p["dtype"]


def build_values(p: dict[str, Any], budget_seconds: int) -> dict[str, Any]:
    """The chart values for the typed options, with the free ``values`` merged last.

    Only what the options set is written, so ``helm get values`` stays short and comparable. The
    Hugging Face token is only referenced by Secret name and key; the chart has no value for the token itself.
    """
    engine = p["engine"]
    model: dict[str, Any] = {"name": p["model"]}
    if p["revision"]:
        model["revision"] = p["revision"]
    if p["served_model_name"]:
        model["servedModelName"] = p["served_model_name"]
    values: dict[str, Any] = {
        "fullnameOverride": p["name"],
        "engine": engine,
        "model": model,
        "replicaCount": int(p["replicas"]),
        "gpusPerReplica": int(p["gpus_per_replica"]),
        "probes": {"startup": {"budgetSeconds": int(budget_seconds)}},
    }
    if engine == "vllm":
        vllm: dict[str, Any] = {"tensorParallelSize": tensor_parallel(p), "dtype": p["dtype"],
                                "gpuMemoryUtilization": p["gpu_memory_utilization"]}
        if p["max_model_len"]:
            vllm["maxModelLen"] = int(p["max_model_len"])
        extra = list(p["extra_args"])
        if p["quantization"]:
            extra = ["--quantization", p["quantization"]] + extra
        if extra:
            vllm["extraArgs"] = extra
        values["vllm"] = vllm
    elif p["max_model_len"]:
        values["sim"] = {"maxModelLen": int(p["max_model_len"])}
    secret = p["hf_token_secret"]
    if secret:
        values["hfToken"] = {"secretName": secret["name"], "secretKey": secret["key"], "optional": bool(secret["optional"])}
    cache = _cache_values(p["model_cache"] or {})
    if cache:
        values["modelCache"] = cache
    scheduling: dict[str, Any] = {}
    if p["gpu_products"]:
        scheduling["gpuProducts"] = list(p["gpu_products"])
    if p["node_selector"]:
        scheduling["nodeSelector"] = {str(k): str(v) for k, v in p["node_selector"].items()}
    if p["tolerations"]:
        scheduling["tolerations"] = list(p["tolerations"])
    if scheduling:
        values["scheduling"] = scheduling
    resources = pod_resources(p)
    if resources:
        values["resources"] = resources
    image = {k: v for k, v in (p["image"] or {}).items() if v}
    if image:
        values["image"] = {engine: image}
    if p["pod_labels"]:
        values["podLabels"] = {str(k): str(v) for k, v in p["pod_labels"].items()}
    return deep_merge(values, p["values"])


SEED_WEIGHTS_GIB = 7e9 * 2 / _sizing.GIB
"""Weights of the seed's reference model, 7B parameters in bf16 (13.0 GiB), which gets SEED_CPU and SEED_MEMORY_GIB."""
SEED_CPU = 4
SEED_MEMORY_GIB = 32


def default_resources(p: dict[str, Any]) -> dict[str, dict[str, str]]:
    """CPU and memory of one vLLM pod sized from the weights, requests == limits (Guaranteed QoS with the GPUs).

    The seed's 4 CPUs and 32 GiB for a 7B bf16 model (13.0 GiB of weights) are the floor. Memory grows in
    proportion to the weights (32 GiB per 13.0 GiB: the checkpoint passes through host memory and the page
    cache on its way to the GPUs, beside the Python, CUDA and tokenizer processes of each worker). CPU grows
    with the square root of that ratio: tokenization, scheduling and the per-GPU worker processes grow much
    more slowly than the weights. Without a parameter count (neither ``params_billion`` nor a size in the
    model name) the 7B floor is used; the preflight refuses such a release anyway.
    """
    params = p["params_billion"] or _sizing.params_from_model_name(p["model"] or "")
    try:
        weights = float(params) * 1e9 * _sizing.bytes_per_param(_weights_dtype(p)) / _sizing.GIB if params else SEED_WEIGHTS_GIB
    except KubeInferError:
        weights = float(params) * 1e9 * 2.0 / _sizing.GIB
    ratio = max(1.0, weights / SEED_WEIGHTS_GIB)
    size = {"cpu": str(math.ceil(SEED_CPU * math.sqrt(ratio) - 1e-9)), "memory": f"{math.ceil(SEED_MEMORY_GIB * ratio - 1e-9)}Gi"}
    return {"requests": dict(size), "limits": dict(size)}


def pod_resources(p: dict[str, Any]) -> dict[str, Any]:
    """The ``resources`` value: the option as given, with cpu and memory that neither side sets taken from
    default_resources (engine vllm only; the simulator keeps the chart's small defaults).

    A quantity set on one side only is left to the chart, which copies it to the other side.
    """
    given = copy.deepcopy(p["resources"] or {})
    if p["engine"] != "vllm":
        return given
    derived = default_resources(p)
    for key in ("cpu", "memory"):
        if not (given.get("requests") or {}).get(key) and not (given.get("limits") or {}).get(key):
            for side in ("requests", "limits"):
                given.setdefault(side, {})[key] = derived[side][key]
    return given


def _cache_values(cache: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cache.get("type"):
        out["type"] = cache["type"]
    if cache.get("offline"):
        out["offline"] = True
    names = (("existing_claim", "existingClaim"), ("size", "size"), ("storage_class", "storageClassName"))
    pvc = {key: cache[opt] for opt, key in names if cache.get(opt)}
    if pvc:
        out["pvc"] = pvc
    if cache.get("host_path"):
        out["hostPath"] = {"path": cache["host_path"]}
    return out


def sizing(p: dict[str, Any], gpu_nodes: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(VRAM estimate, startup budget) for the options; raise with the numbers when the model does not fit."""
    params = p["params_billion"]
    params_source = "params_billion"
    if params is None:
        params = _sizing.params_from_model_name(p["model"])
        params_source = "model name"
        if params is None:
            raise KubeInferError(f"params_billion: the parameter count cannot be read from the model name {p['model']!r}; "
                                 "set params_billion (in billions) for the VRAM check")
    memory = p["gpu_memory_mib"]
    memory_source = "gpu_memory_mib"
    if memory is None:
        found = [m for m in (int_quantity((n["metadata"].get("labels") or {}).get(GPU_MEMORY_LABEL)) for n in gpu_nodes) if m]
        if not found:
            raise KubeInferError(f"gpu_memory_mib: none of the eligible GPU nodes carries the {GPU_MEMORY_LABEL} label "
                                 "(GPU feature discovery); set gpu_memory_mib", gpu_nodes=[n["metadata"]["name"] for n in gpu_nodes])
        memory = min(found)  # the smallest GPU a replica may land on
        memory_source = f"{GPU_MEMORY_LABEL} label (smallest of {len(found)} nodes)"
    estimate = _sizing.check_fits(float(params), _weights_dtype(p), tensor_parallel(p), int(memory),
                                  p["gpu_memory_utilization"], p["max_model_len"])
    estimate["params_billion_source"] = params_source
    estimate["gpu_memory_mib_source"] = memory_source
    throughput = p["load_throughput_gib_s"] or _sizing.DEFAULT_LOAD_THROUGHPUT_GIB_S
    budget = {
        "weights_gib": estimate["weights_gib"],
        "load_throughput_gib_s": throughput,
        "base_seconds": _sizing.DEFAULT_BASE_SECONDS,
        "safety_factor": _sizing.DEFAULT_SAFETY_FACTOR,
    }
    if p["startup_budget_seconds"]:
        budget.update(seconds=int(p["startup_budget_seconds"]), source="startup_budget_seconds")
    else:
        budget.update(seconds=_sizing.startup_budget_seconds(estimate["weights_gib"], throughput), source="model size / load throughput")
    return estimate, budget
