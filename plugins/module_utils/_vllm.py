# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One model as a Helm release of the vLLM chart: values, preflight, install, rollout. Private to this collection: the interface may change without notice."""
from __future__ import annotations

import copy
import json
import math
import re
from typing import Any, Callable

from ansible_collections.kubeinfer.llm.plugins.module_utils import _sizing
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm, values_differ
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube
from ansible_collections.kubeinfer.llm.plugins.module_utils._waiter import deployment_rolled_out, unschedulable_reason, wait_for

try:
    import yaml
    HAS_YAML = True
except ImportError:  # pragma: no cover - PyYAML comes with ansible-core and kubernetes
    HAS_YAML = False

try:
    import kubernetes_validate
    HAS_KUBERNETES_VALIDATE = True
    KUBERNETES_VALIDATE_IMPORT_ERROR: Exception | None = None
except ImportError as e:  # pragma: no cover - reported when the preflight needs it
    HAS_KUBERNETES_VALIDATE = False
    KUBERNETES_VALIDATE_IMPORT_ERROR = e

GPU_RESOURCE = "nvidia.com/gpu"
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"
"""GPU feature discovery's label: memory of one GPU in MiB."""
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_REPLICAS_LABEL = "nvidia.com/gpu.replicas"
SHARED_SUFFIX = "-SHARED"
"""GFD appends it to the product label when the device plugin time-slices the GPUs (replicas > 1, resource not
renamed): NVIDIA/k8s-device-plugin v0.20 internal/lm/resource.go. The chart's affinity accepts both forms."""
GPU_TAINT_KEY = "nvidia.com/gpu"
CHART_NAME = "vllm"
DEFAULT_PORT = 8000
DEFAULT_HF_TOKEN_KEY = "HF_TOKEN"
TIMEOUT_MARGIN_SECONDS = 120
"""Default rollout deadline: the startup probe budget plus this margin for scheduling and image pulls."""
POLL_INTERVAL_SECONDS = 2.0
CLUSTER_DOMAIN = "cluster.local"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


# -- inputs and values --------------------------------------------------------------
def validate_params(p: dict[str, Any]) -> None:
    """Check the options that the chart schema cannot see, before any request; the message names the option."""
    problems: list[str] = []
    name, namespace = p.get("name") or "", p.get("namespace") or ""
    if len(name) > 53 or not _DNS_LABEL.match(name):
        problems.append(f"name: {name!r} is not a valid release name (a DNS label of at most 53 characters)")
    if len(namespace) > 63 or not _DNS_LABEL.match(namespace):
        problems.append(f"namespace: {namespace!r} is not a valid namespace name (a DNS label)")
    if p.get("state", "present") == "present":
        if not p.get("model"):
            problems.append("model: required with state=present")
        if not p.get("chart_ref"):
            problems.append("chart_ref: required; the action plugin sets it to the collection's charts/vllm on the controller")
        gpus = p.get("gpus_per_replica", 1)
        if gpus < 1:
            problems.append(f"gpus_per_replica: must be >= 1, got {gpus}")
        if p.get("replicas", 1) < 0:
            problems.append(f"replicas: must be >= 0, got {p.get('replicas')}")
        tp = p.get("tensor_parallel_size")
        if tp is not None and not 1 <= tp <= max(gpus, 1):
            problems.append(f"tensor_parallel_size: must be between 1 and gpus_per_replica ({gpus}), got {tp}")
        util = p.get("gpu_memory_utilization", _sizing.DEFAULT_GPU_MEMORY_UTILIZATION)
        if not 0 < util <= 1:
            problems.append(f"gpu_memory_utilization: must be in (0, 1], got {util}")
        for option in ("max_model_len", "gpu_memory_mib", "startup_budget_seconds", "timeout"):
            if p.get(option) is not None and p[option] < 1:
                problems.append(f"{option}: must be >= 1, got {p[option]}")
        for option in ("params_billion", "load_throughput_gib_s"):
            if p.get(option) is not None and p[option] <= 0:
                problems.append(f"{option}: must be > 0, got {p[option]}")
        if p.get("engine", "vllm") == "sim" and (p.get("extra_args") or p.get("quantization")):
            problems.append("extra_args and quantization: only for engine=vllm; the simulator accepts only its own flags")
        secret = p.get("hf_token_secret") or {}
        if secret:
            if not secret.get("name") or len(secret["name"]) > 253:
                problems.append("hf_token_secret.name: required, a Secret name")
            if not _SECRET_KEY.match(secret.get("key") or DEFAULT_HF_TOKEN_KEY):
                problems.append(f"hf_token_secret.key: {secret.get('key')!r} is not a valid Secret data key")
        cache = p.get("model_cache") or {}
        if cache.get("type") == "hostPath" and not cache.get("host_path"):
            problems.append("model_cache.host_path: required with model_cache.type=hostPath")
    if problems:
        raise KubeInferError("Invalid options: " + "; ".join(problems))


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``; dicts merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def tensor_parallel(p: dict[str, Any]) -> int:
    """The tensor parallel size: the option, else gpus_per_replica."""
    return int(p.get("tensor_parallel_size") or p.get("gpus_per_replica") or 1)


def build_values(p: dict[str, Any], budget_seconds: int) -> dict[str, Any]:
    """The chart values for the typed options, with the free ``values`` merged last.

    Only what the options set is written, so ``helm get values`` stays short and comparable. The
    Hugging Face token is only referenced by Secret name and key; the chart has no value for the token itself.
    """
    engine = p.get("engine") or "vllm"
    model: dict[str, Any] = {"name": p["model"]}
    if p.get("revision"):
        model["revision"] = p["revision"]
    if p.get("served_model_name"):
        model["servedModelName"] = p["served_model_name"]
    values: dict[str, Any] = {
        "fullnameOverride": p["name"],
        "engine": engine,
        "model": model,
        "replicaCount": int(p.get("replicas", 1)),
        "gpusPerReplica": int(p.get("gpus_per_replica", 1)),
        "probes": {"startup": {"budgetSeconds": int(budget_seconds)}},
    }
    if engine == "vllm":
        vllm: dict[str, Any] = {
            "tensorParallelSize": tensor_parallel(p),
            "dtype": p.get("dtype") or "auto",
            "gpuMemoryUtilization": p.get("gpu_memory_utilization", _sizing.DEFAULT_GPU_MEMORY_UTILIZATION),
        }
        if p.get("max_model_len"):
            vllm["maxModelLen"] = int(p["max_model_len"])
        extra = list(p.get("extra_args") or [])
        if p.get("quantization"):
            extra = ["--quantization", p["quantization"]] + extra
        if extra:
            vllm["extraArgs"] = extra
        values["vllm"] = vllm
    elif p.get("max_model_len"):
        values["sim"] = {"maxModelLen": int(p["max_model_len"])}
    secret = p.get("hf_token_secret") or {}
    if secret.get("name"):
        values["hfToken"] = {"secretName": secret["name"], "secretKey": secret.get("key") or DEFAULT_HF_TOKEN_KEY,
                             "optional": bool(secret.get("optional", False))}
    cache = _cache_values(p.get("model_cache") or {})
    if cache:
        values["modelCache"] = cache
    scheduling: dict[str, Any] = {}
    if p.get("gpu_products"):
        scheduling["gpuProducts"] = list(p["gpu_products"])
    if p.get("node_selector"):
        scheduling["nodeSelector"] = {str(k): str(v) for k, v in p["node_selector"].items()}
    if p.get("tolerations"):
        scheduling["tolerations"] = list(p["tolerations"])
    if scheduling:
        values["scheduling"] = scheduling
    resources = pod_resources(p)
    if resources:
        values["resources"] = resources
    image = {k: v for k, v in (p.get("image") or {}).items() if v}
    if image:
        values["image"] = {engine: image}
    if p.get("pod_labels"):
        values["podLabels"] = {str(k): str(v) for k, v in p["pod_labels"].items()}
    return deep_merge(values, p.get("values") or {})


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
    params = p.get("params_billion") or _sizing.params_from_model_name(p.get("model") or "")
    quantization = p.get("quantization")
    dtype = quantization if quantization and quantization.lower() in _sizing.BYTES_PER_PARAM else (p.get("dtype") or "auto")
    try:
        weights = float(params) * 1e9 * _sizing.bytes_per_param(dtype) / _sizing.GIB if params else SEED_WEIGHTS_GIB
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
    given = copy.deepcopy(p.get("resources") or {})
    if (p.get("engine") or "vllm") != "vllm":
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


def fullname(name: str, values: dict[str, Any], chart_name: str = CHART_NAME) -> str:
    """The name of the Deployment and Service, as the chart's vllm.fullname helper computes it."""
    if values.get("fullnameOverride"):
        return str(values["fullnameOverride"])[:63].rstrip("-")
    base = values.get("nameOverride") or chart_name
    return (name if base in name else f"{name}-{base}")[:63].rstrip("-")


def pod_selector(name: str, values: dict[str, Any], chart_name: str = CHART_NAME) -> str:
    """The label selector of the release's pods (the chart's vllm.selectorLabels)."""
    base = (values.get("nameOverride") or chart_name)[:63].rstrip("-")
    return f"app.kubernetes.io/name={base},app.kubernetes.io/instance={name}"


def endpoint(name: str, namespace: str, values: dict[str, Any], chart_name: str = CHART_NAME) -> dict[str, Any]:
    """Where the release answers inside the cluster."""
    service = fullname(name, values, chart_name)
    port = int((values.get("service") or {}).get("port") or DEFAULT_PORT)
    host = f"{service}.{namespace}.svc.{CLUSTER_DOMAIN}"
    return {"service": service, "namespace": namespace, "host": host, "port": port, "url": f"http://{host}:{port}"}


# -- sizing -------------------------------------------------------------------------
def _int_or_none(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def gpu_count(quantity: Any) -> int:
    """An nvidia.com/gpu quantity as an integer (extended resources are whole numbers)."""
    return _int_or_none(quantity) or 0


def sizing(p: dict[str, Any], gpu_nodes: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(VRAM estimate, startup budget) for the options; raise with the numbers when the model does not fit."""
    params = p.get("params_billion")
    params_source = "params_billion"
    if params is None:
        params = _sizing.params_from_model_name(p["model"])
        params_source = "model name"
        if params is None:
            raise KubeInferError(f"params_billion: the parameter count cannot be read from the model name {p['model']!r}; "
                                 "set params_billion (in billions) for the VRAM check")
    memory = p.get("gpu_memory_mib")
    memory_source = "gpu_memory_mib"
    if memory is None:
        found = [m for m in (_int_or_none((n["metadata"].get("labels") or {}).get(GPU_MEMORY_LABEL)) for n in gpu_nodes) if m]
        if not found:
            raise KubeInferError(f"gpu_memory_mib: none of the eligible GPU nodes carries the {GPU_MEMORY_LABEL} label "
                                 "(GPU feature discovery); set gpu_memory_mib", gpu_nodes=[n["metadata"]["name"] for n in gpu_nodes])
        memory = min(found)  # the smallest GPU a replica may land on
        memory_source = f"{GPU_MEMORY_LABEL} label (smallest of {len(found)} nodes)"
    quantization = p.get("quantization")
    dtype = quantization if quantization and quantization.lower() in _sizing.BYTES_PER_PARAM else (p.get("dtype") or "auto")
    estimate = _sizing.check_fits(float(params), dtype, tensor_parallel(p), int(memory),
                                  p.get("gpu_memory_utilization") or _sizing.DEFAULT_GPU_MEMORY_UTILIZATION,
                                  p.get("max_model_len"))
    estimate["params_billion_source"] = params_source
    estimate["gpu_memory_mib_source"] = memory_source
    throughput = p.get("load_throughput_gib_s") or _sizing.DEFAULT_LOAD_THROUGHPUT_GIB_S
    budget = {
        "weights_gib": estimate["weights_gib"],
        "load_throughput_gib_s": throughput,
        "base_seconds": _sizing.DEFAULT_BASE_SECONDS,
        "safety_factor": _sizing.DEFAULT_SAFETY_FACTOR,
    }
    if p.get("startup_budget_seconds"):
        budget.update(seconds=int(p["startup_budget_seconds"]), source="startup_budget_seconds")
    else:
        budget.update(seconds=_sizing.startup_budget_seconds(estimate["weights_gib"], throughput), source="model size / load throughput")
    return estimate, budget


# -- GPU capacity -------------------------------------------------------------------
def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    """Whether one of ``tolerations`` matches ``taint`` (the scheduler's rules)."""
    for tol in tolerations:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol["key"] == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and (tol.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def pod_tolerations(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The tolerations the chart renders for ``values``."""
    scheduling = values.get("scheduling") or {}
    tolerations = list(scheduling.get("tolerations") or [])
    if scheduling.get("gpuToleration", True):
        tolerations.insert(0, {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def node_ineligible_reason(node: dict[str, Any], values: dict[str, Any]) -> str | None:
    """Why a replica of this release cannot run on ``node``, or None when it can."""
    meta, spec, status = node.get("metadata", {}), node.get("spec", {}), node.get("status", {})
    labels = meta.get("labels") or {}
    scheduling = values.get("scheduling") or {}
    if gpu_count((status.get("allocatable") or {}).get(GPU_RESOURCE)) < 1:
        return f"no allocatable {GPU_RESOURCE}"
    if spec.get("unschedulable"):
        return "cordoned"
    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])):
        return "not Ready"
    for key, value in (scheduling.get("nodeSelector") or {}).items():
        if labels.get(key) != str(value):
            return f"node selector {key}={value} does not match"
    products = scheduling.get("gpuProducts") or []
    product = labels.get(GPU_PRODUCT_LABEL)
    if products and product not in products and product not in [p + SHARED_SUFFIX for p in products]:
        return f"{GPU_PRODUCT_LABEL}={product} is not one of {products} (or their {SHARED_SUFFIX} forms)"
    shares = gpu_count(labels.get(GPU_REPLICAS_LABEL))
    utilization = float((values.get("vllm") or {}).get("gpuMemoryUtilization") or 0)
    if shares > 1 and utilization * shares > 1:
        # vLLM refuses to start when free device memory is below gpu_memory_utilization x total, and the device plugin
        # hands out time-sliced replicas of one GPU to different pods: all of them must fit in its memory together.
        return (f"its GPUs are time-sliced {shares} ways ({GPU_REPLICAS_LABEL}={shares}), and {shares} replicas at "
                f"gpu_memory_utilization {utilization:g} would need {utilization * shares:.2g} of one GPU's memory; "
                f"set gpu_memory_utilization to at most {math.floor(1000 / shares) / 1000:g}")  # rounded down: it must fit
    tolerations = pod_tolerations(values)
    for taint in spec.get("taints") or []:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return f"taint {taint.get('key')}={taint.get('value', '')}:{taint.get('effect')} is not tolerated"
    return None


def pod_gpus(pod: dict[str, Any]) -> int:
    """GPUs a pod holds: the sum over its containers, or the largest init container when that is more."""
    spec = pod.get("spec", {})

    def of(c: dict[str, Any]) -> int:
        res = c.get("resources") or {}
        return gpu_count((res.get("requests") or {}).get(GPU_RESOURCE) or (res.get("limits") or {}).get(GPU_RESOURCE))

    main = sum(of(c) for c in spec.get("containers") or [])
    init = max([of(c) for c in spec.get("initContainers") or []] or [0])
    return max(main, init)


def plan_capacity(nodes: list[dict[str, Any]], pods: list[dict[str, Any]], replicas: int, gpus_per_replica: int,
                  values: dict[str, Any], namespace: str, release: str) -> dict[str, Any]:
    """How many replicas fit on the eligible GPU nodes, each replica needing all its GPUs on one node.

    Free GPUs per node are allocatable minus what bound, unfinished pods request; the release's own
    pods are not counted, since an upgrade replaces them. Replica slots per node are free // gpus_per_replica.
    """
    used: dict[str, int] = {}
    for pod in pods:
        meta, node_name = pod.get("metadata", {}), pod.get("spec", {}).get("nodeName")
        if not node_name or pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            continue
        if meta.get("namespace") == namespace and (meta.get("labels") or {}).get("app.kubernetes.io/instance") == release:
            continue
        used[node_name] = used.get(node_name, 0) + pod_gpus(pod)
    report: dict[str, Any] = {}
    ineligible: dict[str, str] = {}
    slots = 0
    for node in nodes:
        name = node["metadata"]["name"]
        reason = node_ineligible_reason(node, values)
        if reason:
            if gpu_count((node.get("status", {}).get("allocatable") or {}).get(GPU_RESOURCE)):
                ineligible[name] = reason  # GPU nodes only; CPU nodes are not worth listing
            continue
        allocatable = gpu_count(node["status"]["allocatable"][GPU_RESOURCE])
        free = max(allocatable - used.get(name, 0), 0)
        node_slots = free // gpus_per_replica
        slots += node_slots
        report[name] = {"allocatable": allocatable, "requested": used.get(name, 0), "free": free, "replica_slots": node_slots}
    return {"replicas": replicas, "gpus_per_replica": gpus_per_replica, "replica_slots": slots,
            "fits": slots >= replicas, "nodes": report, "ineligible_nodes": ineligible}


def check_capacity(plan: dict[str, Any]) -> None:
    """Raise with the per-node numbers when the replicas do not fit."""
    if plan["fits"]:
        return
    per_node = ", ".join(f"{n}: {v['free']} of {v['allocatable']} free ({v['replica_slots']} replicas)" for n, v in plan["nodes"].items())
    skipped = "; ".join(f"{n}: {r}" for n, r in plan["ineligible_nodes"].items())
    raise KubeInferError(
        f"Not enough GPU capacity: {plan['replicas']} replicas x {plan['gpus_per_replica']} GPUs, each replica on one node, "
        f"but the eligible GPU nodes have room for {plan['replica_slots']} "
        f"({per_node or 'no eligible GPU node'})" + (f"; not eligible: {skipped}" if skipped else "") + ".",
        capacity=plan,
    )


# -- rendered manifests -------------------------------------------------------------
def parse_manifests(text: str) -> list[dict[str, Any]]:
    """The objects of a ``helm template`` output (empty documents dropped)."""
    if not HAS_YAML:  # pragma: no cover
        raise KubeInferError("the PyYAML library is required")
    return [doc for doc in yaml.safe_load_all(text) if isinstance(doc, dict) and doc]


def validate_manifests(docs: list[dict[str, Any]], kube_version: str) -> dict[str, Any]:
    """Validate every object with kubernetes-validate (strict) for ``kube_version``; raise listing every error.

    Kinds without a schema in the library (CRDs such as ServiceMonitor) are skipped and listed.
    A server newer than the library's newest schema is checked against that newest schema, and said so.
    """
    if not HAS_KUBERNETES_VALIDATE:
        raise KubeInferError(f"the kubernetes-validate Python library is required for the preflight: {KUBERNETES_VALIDATE_IMPORT_ERROR}")
    wanted = kube_version.lstrip("v").split("-")[0].split("+")[0]
    version = wanted
    note = None
    latest = kubernetes_validate.latest_version()
    if _version_tuple(wanted)[:2] > _version_tuple(latest)[:2]:
        version = latest
        note = f"kubernetes-validate has no schemas for {wanted}; validated against {latest}"
    validated: list[str] = []
    skipped: list[dict[str, str]] = []
    errors: list[str] = []
    schema_version = None
    for doc in docs:
        what = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        try:
            schema_version = kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            skipped.append({"object": what, "apiVersion": str(doc.get("apiVersion")), "reason": "no schema in kubernetes-validate"})
            continue
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(x) for x in e.path)
            errors.append(f"{what}: {path or '<root>'}: {e.message}")
            continue
        validated.append(what)
    result: dict[str, Any] = {"kube_version": kube_version, "schema_version": schema_version or version,
                              "validated": validated, "skipped": skipped}
    if note:
        result["note"] = note
    if errors:
        raise KubeInferError("The rendered manifests are not valid for Kubernetes " + version + ": " + "; ".join(errors), validation=result)
    return result


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(_int_or_none(x) or 0 for x in version.split("."))


# -- comparison ---------------------------------------------------------------------
def changed_paths(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Dotted paths whose value differs between two value trees (JSON-normalised)."""
    before, after = json.loads(json.dumps(before)), json.loads(json.dumps(after))
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for key in sorted(set(before) | set(after)):
            out += changed_paths(before.get(key), after.get(key), f"{prefix}{key}.")
        return out
    return [] if before == after else [prefix.rstrip(".") or "<root>"]


def needs_upgrade(release: dict[str, Any] | None, chart_id: str, deployed: dict[str, Any], desired: dict[str, Any]) -> list[str]:
    """Why an upgrade is needed (empty when the release already has this chart version and these values)."""
    if release is None:
        return ["not installed"]
    reasons = []
    if release.get("status") != "deployed":
        reasons.append(f"release status is {release.get('status')}")
    if release.get("chart") != chart_id:
        reasons.append(f"chart {release.get('chart')} -> {chart_id}")
    if values_differ(deployed, desired):
        reasons.append("values changed: " + ", ".join(changed_paths(deployed, desired)))
    return reasons


def placement(pods: list[dict[str, Any]]) -> dict[str, str | None]:
    """{pod name: node name (None while Pending)}."""
    return {p["metadata"]["name"]: p.get("spec", {}).get("nodeName") for p in pods}


def _helm_summary(helm: Helm) -> list[str]:
    out = []
    for argv in helm.commands:
        out.append(" ".join(argv[1:3]) if len(argv) > 2 and argv[1] in ("show", "get") else argv[1])
    return out


def _release_info(release: dict[str, Any] | None, name: str, namespace: str) -> dict[str, Any]:
    if release is None:
        return {"name": name, "namespace": namespace, "installed": False}
    return {"name": name, "namespace": namespace, "installed": True, "chart": release.get("chart"),
            "app_version": release.get("app_version"), "status": release.get("status"),
            "revision": _int_or_none(release.get("revision"))}


def _live_pods(kube: Kube, namespace: str, selector: str) -> list[dict[str, Any]]:
    pods = kube.list("v1", "Pod", namespace, label_selector=selector)
    pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return sorted(pods, key=lambda p: p["metadata"]["name"])


def _rollout_status(deployment: dict[str, Any] | None) -> dict[str, Any]:
    if deployment is None:
        return {"exists": False}
    status = deployment.get("status", {})
    done, reason = deployment_rolled_out(deployment)
    return {"exists": True, "name": deployment["metadata"]["name"], "replicas": deployment.get("spec", {}).get("replicas", 1),
            "ready_replicas": status.get("readyReplicas", 0), "available_replicas": status.get("availableReplicas", 0),
            "updated_replicas": status.get("updatedReplicas", 0), "rolled_out": done, "reason": reason}


# -- the whole run ------------------------------------------------------------------
def run(kube: Kube, helm: Helm, p: dict[str, Any], check_mode: bool, want_diff: bool,
        wait_options: dict[str, Callable[..., Any]] | None = None) -> dict[str, Any]:
    """Make the release match the options: preflight (reads only), then at most one helm write, then the rollout wait.

    ``wait_options`` (``clock``, ``sleep``) go to _waiter.wait_for; tests pass a fake clock. A failure carries
    the partial result, always with ``api_requests`` and ``helm_commands``, so it shows what was (not) done.
    """
    try:
        return _run(kube, helm, p, check_mode, want_diff, wait_options)
    except KubeInferError as e:
        e.result.setdefault("api_requests", dict(kube.requests))
        e.result.setdefault("helm_commands", _helm_summary(helm))
        raise


def _run(kube: Kube, helm: Helm, p: dict[str, Any], check_mode: bool, want_diff: bool,
         wait_options: dict[str, Callable[..., Any]] | None) -> dict[str, Any]:
    validate_params(p)
    name, namespace = p["name"], p["namespace"]
    result: dict[str, Any] = {"changed": False}
    if p.get("state") == "absent":
        return _absent(kube, helm, p, check_mode, result)

    # Preflight: reads and a local render only. Nothing is written before it has passed.
    meta = helm.show_chart(p["chart_ref"], p.get("chart_version"))
    chart_name = meta.get("name") or CHART_NAME
    chart_id = f"{chart_name}-{meta.get('version')}"
    result["chart"] = {"ref": p["chart_ref"], "name": chart_name, "version": meta.get("version"), "app_version": meta.get("appVersion")}
    server = kube.request("GET", "/version", verb="get") or {}
    kube_version = str(server.get("gitVersion") or "")
    if not kube_version:
        raise KubeInferError("could not read the API server version from /version", **result)
    nodes = kube.list("v1", "Node")
    pods = kube.list("v1", "Pod", field_selector="status.phase!=Succeeded,status.phase!=Failed")
    scheduling_values = build_values(p, 1)  # placement does not depend on the budget
    gpu_nodes = [n for n in nodes if node_ineligible_reason(n, scheduling_values) is None]
    result["gpu_nodes"] = sorted(n["metadata"]["name"] for n in gpu_nodes)
    if not gpu_nodes and p.get("preflight_capacity", True):
        # Say why before the sizing, which would only miss the GPU memory label of nodes it may not use.
        ineligible = {n["metadata"]["name"]: node_ineligible_reason(n, scheduling_values) for n in nodes
                      if gpu_count((n.get("status", {}).get("allocatable") or {}).get(GPU_RESOURCE))}
        shown = "; ".join(f"{node}: {why}" for node, why in sorted(ineligible.items())[:5]) or f"no node has allocatable {GPU_RESOURCE}"
        raise KubeInferError(f"no GPU node can take a replica of this release ({shown})", ineligible_nodes=ineligible, **result)
    try:
        estimate, budget = sizing(p, gpu_nodes)
    except KubeInferError as e:
        raise KubeInferError(e.msg, **dict(result, **e.result)) from e
    result.update(sizing=estimate, startup_budget=budget, startup_budget_seconds=budget["seconds"],
                  load_throughput_gib_s=budget["load_throughput_gib_s"])
    desired = build_values(p, budget["seconds"])
    result["values"] = desired
    plan = plan_capacity(nodes, pods, int(desired.get("replicaCount", 1)), int(desired.get("gpusPerReplica", 1)),
                         desired, namespace, name)
    plan["checked"] = bool(p.get("preflight_capacity", True))
    result["capacity"] = plan
    if plan["checked"]:
        try:
            check_capacity(plan)
        except KubeInferError as e:
            raise KubeInferError(e.msg, **result) from e
    rendered = helm.template(name, p["chart_ref"], namespace, desired, version=p.get("chart_version"), kube_version=kube_version)
    try:
        result["validation"] = validate_manifests(parse_manifests(rendered), kube_version)
    except KubeInferError as e:
        raise KubeInferError(e.msg, **dict(result, **e.result)) from e

    # Idempotence: compare chart version and user-supplied values with the deployed release.
    release = helm.release(name, namespace)
    deployed = helm.values(name, namespace) if release else {}
    reasons = needs_upgrade(release, chart_id, deployed, desired)
    result.update(changed=bool(reasons), change_reasons=reasons, changed_values=changed_paths(deployed, desired),
                  release=_release_info(release, name, namespace), endpoint=endpoint(name, namespace, desired, chart_name))
    if want_diff:
        result["diff"] = {"before": deployed if release else {}, "after": desired}
    selector = pod_selector(name, desired, chart_name)
    deployment_name = fullname(name, desired, chart_name)
    timeout = int(p.get("timeout") or budget["seconds"] + TIMEOUT_MARGIN_SECONDS)

    if reasons and not check_mode:
        _install(kube, helm, p, desired, release, result, deployment_name, selector, timeout, wait_options or {})
    elif p.get("wait", True) and not check_mode and release is not None:
        # Nothing to change, but the caller asked for a rolled-out release: wait for it without writing.
        _wait(kube, helm, p, release, result, deployment_name, selector, timeout, wait_options or {}, rollback=False)

    pods_now = _live_pods(kube, namespace, selector)
    result["pods"] = [x["metadata"]["name"] for x in pods_now]
    result["placement"] = placement(pods_now)
    result["rollout"] = _rollout_status(kube.get("apps/v1", "Deployment", deployment_name, namespace))
    result["api_requests"] = dict(kube.requests)
    result["helm_commands"] = _helm_summary(helm)
    return result


def _absent(kube: Kube, helm: Helm, p: dict[str, Any], check_mode: bool, result: dict[str, Any]) -> dict[str, Any]:
    release = helm.release(p["name"], p["namespace"])
    result["release"] = _release_info(release, p["name"], p["namespace"])
    if release is not None:
        result["changed"] = True
        if not check_mode:
            helm.uninstall(p["name"], p["namespace"], wait=p.get("wait", True), timeout=int(p.get("timeout") or 300))
    result["api_requests"] = dict(kube.requests)
    result["helm_commands"] = _helm_summary(helm)
    return result


def _install(kube: Kube, helm: Helm, p: dict[str, Any], desired: dict[str, Any], release: dict[str, Any] | None,
             result: dict[str, Any], deployment_name: str, selector: str, timeout: int,
             wait_options: dict[str, Callable[..., Any]]) -> None:
    name, namespace = p["name"], p["namespace"]
    try:
        helm.upgrade_install(name, p["chart_ref"], namespace, desired, version=p.get("chart_version"),
                             create_namespace=bool(p.get("create_namespace")))
    except KubeInferError as e:
        if p.get("atomic"):
            result["rolled_back"] = _undo(helm, name, namespace, release)
        result.update(e.result)
        result["helm_commands"] = _helm_summary(helm)
        raise KubeInferError(e.msg, **result) from e
    installed = helm.release(name, namespace)
    result["release"] = _release_info(installed, name, namespace)
    if p.get("wait", True):
        _wait(kube, helm, p, release, result, deployment_name, selector, timeout, wait_options, rollback=bool(p.get("atomic")))


def _wait(kube: Kube, helm: Helm, p: dict[str, Any], previous: dict[str, Any] | None, result: dict[str, Any],
          deployment_name: str, selector: str, timeout: int, wait_options: dict[str, Callable[..., Any]], rollback: bool) -> None:
    name, namespace = p["name"], p["namespace"]

    def rolled_out() -> tuple[bool, str]:
        return deployment_rolled_out(kube.get("apps/v1", "Deployment", deployment_name, namespace))

    try:
        result["waited_seconds"] = round(wait_for(rolled_out, timeout, f"Deployment {namespace}/{deployment_name} to roll out",
                                                  interval=POLL_INTERVAL_SECONDS, **wait_options), 3)
    except KubeInferError as e:
        pods = _live_pods(kube, namespace, selector)
        reason = unschedulable_reason([x for x in pods if x.get("status", {}).get("phase") == "Pending"])
        msg = e.msg + (f"; the scheduler says: {reason}" if reason else "")
        result.update(pods=[x["metadata"]["name"] for x in pods], placement=placement(pods), unschedulable_reason=reason,
                      waited_seconds=e.result.get("waited"))
        if rollback:
            result["rolled_back"] = _undo(helm, name, namespace, previous)
            msg += "; " + result["rolled_back"]
        result["api_requests"] = dict(kube.requests)
        result["helm_commands"] = _helm_summary(helm)
        raise KubeInferError(msg, **result) from e


def _undo(helm: Helm, name: str, namespace: str, previous: dict[str, Any] | None) -> str:
    """Roll back to the revision before this run, or uninstall a release this run created; say which."""
    try:
        if previous is not None and _int_or_none(previous.get("revision")):
            helm.rollback(name, namespace, _int_or_none(previous.get("revision")))
            return f"rolled back to revision {previous.get('revision')}"
        helm.uninstall(name, namespace, wait=False)
        return "uninstalled the release this run created"
    except KubeInferError as e:
        return f"atomic undo failed: {e.msg}"
