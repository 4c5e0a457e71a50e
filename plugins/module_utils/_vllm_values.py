# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""vllm_release's options as chart values, their checks and the sizing inputs. Private to this collection: the interface may change without notice."""
from __future__ import annotations

import copy
import math
import re
from typing import Any, Iterator

from ansible_collections.kubeinfer.llm.plugins.module_utils import _sizing
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm_release import deep_merge
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import (
    check_data_key,
    check_dns_label,
    check_labels,
    check_namespace,
    check_object_name,
    int_quantity,
    label_key_error,
    label_value_error,
)

GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
"""GPU feature discovery's label: memory of one GPU in MiB."""
RELEASE_NAME_MAX = 53
"""Helm's limit; the name is also the Deployment's and the Service's (fullnameOverride), so a DNS label."""

# The vLLM flags the chart renders itself, each with what sets it. The chart's values.schema.json refuses the
# same flags in vllm.extraArgs (its 'not' pattern), but its message names neither the option nor the flag;
# --quantization is added here from the quantization option. A token flag would put a secret into the
# release's values and the pod's command line, where every reader of the Deployment sees it.
CHART_OWNED_FLAGS = {
    "model": "model", "served-model-name": "served_model_name", "revision": "revision",
    "tensor-parallel-size": "tensor_parallel_size", "dtype": "dtype", "gpu-memory-utilization": "gpu_memory_utilization",
    "max-model-len": "max_model_len", "quantization": "quantization", "port": "the chart (values.service.port)",
    "host": "the chart", "max-num-seqs": "values.vllm.maxNumSeqs", "enable-prefix-caching": "values.vllm.enablePrefixCaching",
    "no-enable-prefix-caching": "values.vllm.enablePrefixCaching",
}
SECRET_FLAGS = {"api-key": "values.apiKey (a Secret reference)", "hf-token": "hf_token_secret"}
# Environment variables the chart sets or that carry a secret: never through values.extraEnv (schema: extraEnv.name).
RESERVED_ENV = {"HF_TOKEN": "hf_token_secret", "HUGGING_FACE_HUB_TOKEN": "hf_token_secret", "VLLM_API_KEY": "values.apiKey",
                "HF_HOME": "model_cache", "HF_HUB_OFFLINE": "model_cache.offline", "HOME": "the chart"}
# A Hugging Face user access token (hf_ and 30 or more letters and digits): refused anywhere in the values.
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")
TOLERATION_OPERATORS = ("Exists", "Equal")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string inside ``value`` with its path (``values.a.b[0]``), keys included."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield f"{path}.{key}", str(key)
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]")


def flag_problem(arg: str, param: str) -> str | None:
    """Why one argv item of extra arguments is refused: a flag the chart or a typed option owns, or a secret flag."""
    match = re.match(r"^--([a-z0-9-]+)(=.*)?$", str(arg))
    if not match:
        return None
    flag = match.group(1)
    if flag in SECRET_FLAGS:
        return (f"{param}: {'--' + flag!r} would put a secret into the Helm values and the pod's command line; "
                f"set it through {SECRET_FLAGS[flag]}")
    if flag in CHART_OWNED_FLAGS:
        return f"{param}: {str(arg)!r} is a flag the chart renders itself; set it through {CHART_OWNED_FLAGS[flag]}"
    return None


def check_free_values(p: dict[str, Any]) -> None:
    """extra_args and the free ``values``: no chart-owned or secret flag, no reserved variable, no token anywhere."""
    for i, arg in enumerate(p["extra_args"]):
        problem = flag_problem(arg, f"extra_args[{i}]")
        if problem:
            raise KubeInferError(problem)
    values = p["values"] or {}
    vllm: dict[str, Any] = values["vllm"] if isinstance(values.get("vllm"), dict) else {}
    for i, arg in enumerate(vllm.get("extraArgs") or []):
        problem = flag_problem(arg, f"values.vllm.extraArgs[{i}]")
        if problem:
            raise KubeInferError(problem)
    for i, env in enumerate(values.get("extraEnv") or []):
        name = env.get("name") if isinstance(env, dict) else None
        if name in RESERVED_ENV:
            raise KubeInferError(f"values.extraEnv[{i}].name: {name!r} is reserved; it comes from {RESERVED_ENV[name]} "
                                 "(a token in Helm values is stored in the release Secret and shown by helm get values)")
    for path, text in _strings({"extra_args": p["extra_args"], "values": values}, ""):
        if _HF_TOKEN.search(text):
            # The value itself is a secret: the message names where it is, never what it is.
            raise KubeInferError(f"{path.lstrip('.')}: holds a Hugging Face token; give the token to the hf_token role "
                                 "(a Secret) and reference it with hf_token_secret")


def check_scheduling(p: dict[str, Any]) -> None:
    """node_selector, pod_labels, gpu_products and tolerations, as the API server would check the rendered pod."""
    check_labels(p["node_selector"], "node_selector")
    check_labels(p["pod_labels"], "pod_labels")
    for i, product in enumerate(p["gpu_products"]):
        err = label_value_error(str(product))
        if err or not product:
            raise KubeInferError(f"gpu_products[{i}]: {product!r} is not a value of the nvidia.com/gpu.product label "
                                 f"({err or 'empty'})")
    for i, tol in enumerate(p["tolerations"]):
        operator = tol.get("operator", "Equal")
        if operator not in TOLERATION_OPERATORS:
            raise KubeInferError(f"tolerations[{i}].operator: {operator!r} is not one of {', '.join(TOLERATION_OPERATORS)}")
        if tol.get("effect") not in (None, "", *TAINT_EFFECTS):
            raise KubeInferError(f"tolerations[{i}].effect: {tol['effect']!r} is not one of {', '.join(TAINT_EFFECTS)} (or empty for all)")
        key = tol.get("key")
        if key:
            err = label_key_error(str(key))
            if err:
                raise KubeInferError(f"tolerations[{i}].key: {key!r} is not a valid taint key ({err})")
        elif operator != "Exists":
            raise KubeInferError(f"tolerations[{i}].key: required unless operator is Exists")
        if operator == "Exists" and tol.get("value"):
            raise KubeInferError(f"tolerations[{i}].value: must be empty with operator Exists, got {tol['value']!r}")
        unknown = sorted(set(tol) - {"key", "operator", "value", "effect", "tolerationSeconds"})
        if unknown:
            raise KubeInferError(f"tolerations[{i}]: unknown field(s) {', '.join(unknown)} (a toleration has key, operator, value, "
                                 "effect and tolerationSeconds)")


def validate(p: dict[str, Any]) -> None:
    """The options the argument spec and the chart schema cannot check, before any request; the message starts with the option."""
    check_dns_label(p["name"], "name", "release name", RELEASE_NAME_MAX)
    check_namespace(p["namespace"])
    if p["state"] == "absent":
        return
    problems: list[str] = []
    model = str(p["model"] or "")
    if not model.strip() or model != model.strip():
        problems.append(f"model: {p['model']!r} is not a Hugging Face repo id or a path (empty, or leading or trailing spaces)")
    if p["served_model_name"] is not None and (not p["served_model_name"].strip() or " " in p["served_model_name"]):
        problems.append(f"served_model_name: {p['served_model_name']!r} must be one word (clients send it as the model id)")
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
    problems += prefetch_problems(p)
    if problems:
        raise KubeInferError("; ".join(problems))
    check_free_values(p)
    check_scheduling(p)
    if p["hf_token_secret"]:
        check_object_name(p["hf_token_secret"]["name"], "hf_token_secret.name", "Secret name")
        check_data_key(p["hf_token_secret"]["key"], "hf_token_secret.key")


PREFETCH_TIMEOUT_SECONDS = 3600
"""Default model_cache.prefetch_timeout: the Job's activeDeadlineSeconds, and how long helm waits for the hook Job."""
HOOK_TIMEOUT_MARGIN_SECONDS = 60
"""helm waits this much longer than the Job's deadline, so that the Job controller, not helm, reports a slow download."""


def prefetch_problems(p: dict[str, Any]) -> list[str]:
    """Why model_cache.prefetch cannot be honoured, each message led by the option to change.

    The Job is a Helm pre-install hook, so it runs before any object of the release exists: the claim must be there
    first (existing_claim). The revision is pinned, so that what the Job fetched is what the offline pods load.
    """
    cache = p["model_cache"] or {}
    if not cache.get("prefetch"):
        if cache.get("prefetch_timeout") is not None:
            return ["model_cache.prefetch_timeout: only with model_cache.prefetch=true"]
        return []
    out = []
    if cache.get("type") != "pvc":
        out.append(f"model_cache.type: must be pvc with model_cache.prefetch=true, got {cache.get('type')}")
    elif not cache.get("existing_claim"):
        out.append("model_cache.existing_claim: required with model_cache.prefetch=true (the prefetch Job is a pre-install hook "
                   "and runs before a claim created by the release would exist; create the claim first)")
    if not str(p["revision"] or "").strip():
        out.append("revision: required with model_cache.prefetch=true; pin the revision the Job downloads and the pods load "
                   "offline (a commit hash, or a tag or branch)")
    if cache.get("prefetch_timeout") is not None and cache["prefetch_timeout"] < 1:
        out.append(f"model_cache.prefetch_timeout: must be >= 1, got {cache['prefetch_timeout']}")
    return out


def prefetch_enabled(values: dict[str, Any]) -> bool:
    """Whether the chart values (as built, free values merged) turn the prefetch Job on."""
    return bool((((values.get("modelCache") or {}).get("prefetch")) or {}).get("enabled"))


def hook_timeout(values: dict[str, Any]) -> int | None:
    """helm's --timeout for the prefetch hook Job: its activeDeadlineSeconds plus a margin; None without prefetch."""
    if not prefetch_enabled(values):
        return None
    deadline = values["modelCache"]["prefetch"].get("activeDeadlineSeconds") or PREFETCH_TIMEOUT_SECONDS
    return int(deadline) + HOOK_TIMEOUT_MARGIN_SECONDS


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
    if cache.get("prefetch"):
        out["prefetch"] = {"enabled": True, "activeDeadlineSeconds": int(cache.get("prefetch_timeout") or PREFETCH_TIMEOUT_SECONDS)}
    return out


def sizing(p: dict[str, Any], gpu_nodes: list[dict[str, Any]], pending: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """(VRAM estimate, startup budget) for the options; raise with the numbers when the model does not fit.

    ``pending`` (check mode before any node advertises a GPU): without ``gpu_memory_mib`` the fit cannot be judged,
    so the estimate holds the requirement only (``fits`` and the usable memory None); the budget needs only the weights.
    """
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
    if memory is None and pending:
        # The requirement with a 1 MiB GPU: weights and overhead are exact, the KV cache minimum is its max_model_len part.
        estimate = _sizing.estimate_vram(float(params), _weights_dtype(p), tensor_parallel(p), 1, p["gpu_memory_utilization"], p["max_model_len"])
        estimate.update(fits=None, per_gpu_usable_gib=None, kv_cache_headroom_gib=None, gpu_memory_mib=None,
                        smallest_fitting_tensor_parallel=None)
        memory_source = "unknown: no node advertises a GPU yet (check mode)"
    elif memory is None:
        found = [m for m in (int_quantity((n["metadata"].get("labels") or {}).get(GPU_MEMORY_LABEL)) for n in gpu_nodes) if m]
        if not found:
            raise KubeInferError(f"gpu_memory_mib: none of the eligible GPU nodes carries the {GPU_MEMORY_LABEL} label "
                                 "(GPU feature discovery); set gpu_memory_mib", gpu_nodes=[n["metadata"]["name"] for n in gpu_nodes])
        memory = min(found)  # the smallest GPU a replica may land on
        memory_source = f"{GPU_MEMORY_LABEL} label (smallest of {len(found)} nodes)"
    if memory is not None:
        try:
            estimate = _sizing.check_fits(float(params), _weights_dtype(p), tensor_parallel(p), int(memory),
                                          p["gpu_memory_utilization"], p["max_model_len"])
        except KubeInferError as e:
            # The message leads with the option it is about, as every other preflight message does.
            raise KubeInferError(e.msg.replace("The model does not fit: ", f"model: {p['model']!r} does not fit: ", 1), **e.result) from e
    estimate["params_billion_source"] = params_source
    estimate["gpu_memory_mib_source"] = memory_source
    prefetched = bool((p["model_cache"] or {}).get("prefetch"))
    default_throughput = _sizing.PREFETCHED_LOAD_THROUGHPUT_GIB_S if prefetched else _sizing.DEFAULT_LOAD_THROUGHPUT_GIB_S
    throughput = p["load_throughput_gib_s"] or default_throughput
    budget = {
        "weights_gib": estimate["weights_gib"],
        "load_throughput_gib_s": throughput,
        "base_seconds": _sizing.DEFAULT_BASE_SECONDS,
        "safety_factor": _sizing.DEFAULT_SAFETY_FACTOR,
    }
    if p["startup_budget_seconds"]:
        budget.update(seconds=int(p["startup_budget_seconds"]), source="startup_budget_seconds")
    else:
        source = "model size / load throughput" + (" (prefetched cache)" if prefetched and not p["load_throughput_gib_s"] else "")
        budget.update(seconds=_sizing.startup_budget_seconds(estimate["weights_gib"], throughput), source=source)
    return estimate, budget


# Chart value paths and the option that writes each (build_values), for the chart schema's messages.
VALUE_OPTIONS = (
    ("/vllm/extraArgs", "extra_args"), ("/replicaCount", "replicas"), ("/gpusPerReplica", "gpus_per_replica"),
    ("/model/name", "model"), ("/model/revision", "revision"), ("/model/servedModelName", "served_model_name"),
    ("/vllm/tensorParallelSize", "tensor_parallel_size"), ("/vllm/dtype", "dtype"),
    ("/vllm/gpuMemoryUtilization", "gpu_memory_utilization"), ("/vllm/maxModelLen", "max_model_len"), ("/sim/maxModelLen", "max_model_len"),
    ("/hfToken", "hf_token_secret"), ("/modelCache", "model_cache"), ("/scheduling/nodeSelector", "node_selector"),
    ("/scheduling/tolerations", "tolerations"), ("/scheduling/gpuProducts", "gpu_products"), ("/resources", "resources"),
    ("/image", "image"), ("/podLabels", "pod_labels"),
)
_SCHEMA_ERROR = re.compile(r"at '(/[^']*)': ([^\n]+)")


def _value_at(values: Any, pointer: str) -> Any:
    for part in [x for x in pointer.split("/") if x]:
        if isinstance(values, dict):
            values = values.get(part)
        elif isinstance(values, list) and part.isdigit() and int(part) < len(values):
            values = values[int(part)]
        else:
            return None
    return values


def schema_problem(message: str, desired: dict[str, Any], p: dict[str, Any]) -> str | None:
    """helm's schema failure (``at '/vllm/extraArgs/0': 'not' failed``) as the option and the value it refused.

    A path that ``values`` sets is blamed on ``values``, since it is merged last; a path of a typed option on that option.
    """
    match = _SCHEMA_ERROR.search(message)
    if not match:
        return None
    pointer, reason = match.group(1), match.group(2).strip()
    value = _value_at(desired, pointer)
    dotted = "values" + "".join(f"[{x}]" if x.isdigit() else f".{x}" for x in pointer.split("/") if x)
    if _value_at(p["values"] or {}, pointer) is not None:
        option = dotted
    else:
        option = next((opt for prefix, opt in VALUE_OPTIONS if pointer == prefix or pointer.startswith(prefix + "/")), dotted)
    shown = "a secret" if isinstance(value, str) and _HF_TOKEN.search(value) else repr(value)
    return f"{option}: the chart's values.schema.json refuses {shown} at {pointer} ({reason})"
