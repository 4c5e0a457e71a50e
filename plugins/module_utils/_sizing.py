# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""GPU memory fit, startup probe budget and HPA window sizing for vLLM. Private to this collection: the interface may change without notice."""
from __future__ import annotations

import math
import re
from typing import Any, Iterable

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError

GIB = 1024**3
MIB = 1024**2

BYTES_PER_PARAM: dict[str, float] = {
    # vLLM --dtype values; 'auto' takes the checkpoint's dtype, which is bf16/fp16 for every
    # current open LLM checkpoint, so it counts as 2 bytes.
    "auto": 2.0, "bfloat16": 2.0, "bf16": 2.0, "float16": 2.0, "fp16": 2.0, "half": 2.0,
    "float32": 4.0, "fp32": 4.0, "float": 4.0,
    # Quantized weights (vLLM --quantization); scales and zero points are ignored (< 3 %).
    "fp8": 1.0, "int8": 1.0, "w8a8": 1.0,
    "int4": 0.5, "awq": 0.5, "gptq": 0.5, "w4a16": 0.5,
}
"""Bytes per weight parameter by dtype or quantization name (case-insensitive)."""

DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
"""vLLM's own default for --gpu-memory-utilization."""

DEFAULT_OVERHEAD_GIB = 2.0
"""Fixed per-GPU allowance outside weights and KV cache: CUDA context and cuBLAS workspaces
(~0.5 GiB), NCCL buffers when tensor_parallel > 1, CUDA graph pools (~0.5-1 GiB) and the peak
activation memory vLLM measures during its profiling run at the default max_num_batched_tokens."""

DEFAULT_OVERHEAD_FRACTION = 0.05
"""Per-GPU allowance proportional to the weight shard: allocator fragmentation, dequantization
workspaces and non-sharded small tensors (norms, biases)."""

DEFAULT_MIN_KV_CACHE_FRACTION = 0.10
"""The KV cache must get at least this share of the usable per-GPU memory. Below that vLLM may start,
but it holds so few tokens that it serves almost no concurrent requests; we call that 'does not fit'."""

KV_KIB_PER_TOKEN_PER_SQRT_BILLION = 45.0
"""Heuristic when the model's KV size per token is unknown: KiB per token (bf16 K and V, all layers)
~= 45 * sqrt(params_billion). It matches grouped-query-attention models: Llama-3.1-8B has 128 KiB
(32 layers x 8 KV heads x 128 dims x 2 x 2 bytes; formula 127), Llama-3.1-70B 320 KiB (formula 376),
Qwen2.5-0.5B 12 KiB (formula 32). It underestimates old multi-head models (Llama-2-7B: 512 KiB);
pass ``kv_cache_bytes_per_token`` for those."""

DEFAULT_TENSOR_PARALLEL_CANDIDATES = (1, 2, 4, 8)
"""Tensor parallel sizes tried when looking for the smallest one that fits: the attention head
counts of common models are divisible by these, and 8 is the usual number of GPUs per node."""

DEFAULT_LOAD_THROUGHPUT_GIB_S = 0.5
"""Weight load rate for a cold start: from a network volume or a PVC without page cache, safetensors
read and copy to GPU run at roughly 0.3-1 GiB/s; 0.5 GiB/s (about 4 Gbit/s) is the assumed middle.
A warm local NVMe cache is 2-5x faster, a first download from the Hugging Face Hub often slower."""

PREFETCHED_LOAD_THROUGHPUT_GIB_S = 1.5
"""Weight load rate when a prefetch Job has just written the model into the cache volume (model_cache.prefetch):
the pod reads a complete, local copy, with no Hub round trip and often still in the node's page cache; 3x the cold
rate, the low end of the 2-5x of a warm local cache (DEFAULT_LOAD_THROUGHPUT_GIB_S)."""

DEFAULT_BASE_SECONDS = 60
"""Fixed part of a vLLM start: Python and CUDA initialization, the profiling run, KV cache
allocation and CUDA graph capture (30-90 s on current GPUs, independent of model size)."""

DEFAULT_SAFETY_FACTOR = 1.5
"""Margin over the estimate, so a slow node or a busy volume does not get the pod killed by its probe."""

HPA_MAX_STABILIZATION_WINDOW_SECONDS = 3600
"""autoscaling/v2 rejects behavior.scaleUp/scaleDown.stabilizationWindowSeconds above one hour."""

DEFAULT_MIN_SCALE_DOWN_WINDOW_SECONDS = 300
"""The HPA controller's own default scale-down stabilization window (5 minutes)."""

_PARAMS_IN_NAME = re.compile(r"(?<![A-Za-z0-9.])(?:(?P<experts>\d+)x)?(?P<count>\d+(?:\.\d+)?)(?P<unit>[bBmM])(?![A-Za-z0-9])")


def bytes_per_param(dtype: str) -> float:
    """Bytes per parameter for a vLLM ``--dtype`` or ``--quantization`` name; raises on unknown names."""
    try:
        return BYTES_PER_PARAM[str(dtype).strip().lower()]
    except KeyError:
        raise KubeInferError(f"Unknown dtype {dtype!r}; known: {', '.join(sorted(BYTES_PER_PARAM))}", dtype=dtype) from None


def params_from_model_name(model: str) -> float | None:
    """Billions of parameters read from a model name, or None when the name does not say.

    ``meta-llama/Llama-3.1-8B-Instruct`` -> 8.0, ``Meta-Llama-3-70b`` -> 70.0, ``Qwen2.5-0.5B`` -> 0.5,
    ``facebook/opt-125m`` -> 0.125, ``Mixtral-8x7B`` -> 56.0. The first size token wins, so the total
    of a mixture-of-experts name such as ``Qwen3-30B-A3B`` (30B total, 3B active) is taken, which is
    what has to fit in memory. ``NxM`` multiplies out and so overestimates MoE models whose experts
    share attention layers (Mixtral-8x7B really has 46.7B): the error is on the safe side.
    Tokens glued to letters (``A3B``, ``gpt2``) and version numbers (``3.1``, ``v0.1``) are not sizes.
    """
    if not model:
        return None
    name = model.rstrip("/").rsplit("/", 1)[-1]
    match = _PARAMS_IN_NAME.search(name)
    if not match:
        return None
    count = float(match.group("count"))
    if match.group("unit").lower() == "m":
        count /= 1000.0
    if match.group("experts"):
        count *= int(match.group("experts"))
    return count if count > 0 else None


def _check_inputs(params_billion: float, tensor_parallel: int, gpu_memory_mib: int, gpu_memory_utilization: float,
                  max_model_len: int | None) -> None:
    problems = []
    if not isinstance(params_billion, (int, float)) or isinstance(params_billion, bool) or params_billion <= 0:
        problems.append(f"params_billion must be a positive number, got {params_billion!r}")
    if not isinstance(tensor_parallel, int) or isinstance(tensor_parallel, bool) or tensor_parallel < 1:
        problems.append(f"tensor_parallel must be an integer >= 1, got {tensor_parallel!r}")
    if not isinstance(gpu_memory_mib, int) or isinstance(gpu_memory_mib, bool) or gpu_memory_mib <= 0:
        problems.append(f"gpu_memory_mib must be a positive integer, got {gpu_memory_mib!r}")
    if not isinstance(gpu_memory_utilization, (int, float)) or not 0 < gpu_memory_utilization <= 1:
        problems.append(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization!r}")
    if max_model_len is not None and (not isinstance(max_model_len, int) or max_model_len < 1):
        problems.append(f"max_model_len must be a positive integer or None, got {max_model_len!r}")
    if problems:
        raise KubeInferError("Invalid sizing input: " + "; ".join(problems))


def _kv_bytes_per_token(params_billion: float, dtype: str, kv_cache_bytes_per_token: int | None) -> float:
    if kv_cache_bytes_per_token is not None:
        return float(kv_cache_bytes_per_token)
    element = 4.0 if bytes_per_param(dtype) == 4.0 else 2.0  # vLLM keeps the KV cache in the activation dtype
    return KV_KIB_PER_TOKEN_PER_SQRT_BILLION * math.sqrt(params_billion) * 1024 * element / 2.0


def estimate_vram(
    params_billion: float,
    dtype: str = "auto",
    tensor_parallel: int = 1,
    gpu_memory_mib: int = 81920,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    max_model_len: int | None = None,
    kv_cache_bytes_per_token: int | None = None,
    overhead_gib: float = DEFAULT_OVERHEAD_GIB,
    overhead_fraction: float = DEFAULT_OVERHEAD_FRACTION,
    min_kv_cache_fraction: float = DEFAULT_MIN_KV_CACHE_FRACTION,
    tensor_parallel_candidates: Iterable[int] = DEFAULT_TENSOR_PARALLEL_CANDIDATES,
) -> dict[str, Any]:
    """Estimate whether a model fits on ``tensor_parallel`` GPUs of ``gpu_memory_mib`` each.

    The model, per GPU (all in GiB = 2**30 bytes):

    - ``weights_gib`` = params_billion * 1e9 * bytes_per_param(dtype) / 2**30 (whole model);
      ``per_gpu_weights_gib`` = weights_gib / tensor_parallel (vLLM shards every linear layer and the
      vocabulary embedding across the tensor parallel group).
    - ``overhead_gib`` = overhead_gib + overhead_fraction * per_gpu_weights_gib (see the module constants).
    - ``per_gpu_usable_gib`` = gpu_memory_mib * gpu_memory_utilization / 1024: vLLM's budget for
      everything it allocates on that GPU.
    - ``kv_cache_headroom_gib`` = usable - per-GPU weights - overhead: what is left for the KV cache
      (negative when the weights alone do not fit).
    - ``min_kv_cache_gib`` = the larger of min_kv_cache_fraction * usable and, when max_model_len is
      given, one full sequence: max_model_len * KV bytes per token / tensor_parallel (vLLM refuses to
      start when one max_model_len sequence does not fit in the KV cache). KV bytes per token come
      from ``kv_cache_bytes_per_token`` or the square-root heuristic of KV_KIB_PER_TOKEN_PER_SQRT_BILLION.
      Dividing by tensor_parallel assumes the KV heads split across GPUs (true when KV heads >= TP).
    - ``per_gpu_required_gib`` = per-GPU weights + overhead + min_kv_cache_gib; ``fits`` is
      required <= usable.

    Also returns ``smallest_fitting_tensor_parallel``: the smallest of ``tensor_parallel_candidates``
    that fits with the same inputs, or None. Figures are rounded to 3 decimals; ``fits`` is computed
    before rounding. Raises KubeInferError on invalid input.
    """
    _check_inputs(params_billion, tensor_parallel, gpu_memory_mib, gpu_memory_utilization, max_model_len)
    per_param = bytes_per_param(dtype)
    raw = _raw_estimate(params_billion, dtype, per_param, tensor_parallel, gpu_memory_mib, gpu_memory_utilization,
                        max_model_len, kv_cache_bytes_per_token, overhead_gib, overhead_fraction, min_kv_cache_fraction)
    smallest = None
    for candidate in sorted(set(tensor_parallel_candidates)):
        trial = _raw_estimate(params_billion, dtype, per_param, candidate, gpu_memory_mib, gpu_memory_utilization,
                              max_model_len, kv_cache_bytes_per_token, overhead_gib, overhead_fraction, min_kv_cache_fraction)
        if trial["fits"]:
            smallest = candidate
            break
    result: dict[str, Any] = {key: (round(value, 3) if isinstance(value, float) else value) for key, value in raw.items()}
    result.update({
        "params_billion": params_billion,
        "dtype": dtype,
        "bytes_per_param": per_param,
        "tensor_parallel": tensor_parallel,
        "gpu_memory_mib": gpu_memory_mib,
        "gpu_memory_utilization": gpu_memory_utilization,
        "max_model_len": max_model_len,
        "smallest_fitting_tensor_parallel": smallest,
    })
    return result


def _raw_estimate(params_billion: float, dtype: str, per_param: float, tensor_parallel: int, gpu_memory_mib: int,
                  gpu_memory_utilization: float, max_model_len: int | None, kv_cache_bytes_per_token: int | None,
                  overhead_gib: float, overhead_fraction: float, min_kv_cache_fraction: float) -> dict[str, Any]:
    weights_gib = params_billion * 1e9 * per_param / GIB
    per_gpu_weights_gib = weights_gib / tensor_parallel
    overhead = overhead_gib + overhead_fraction * per_gpu_weights_gib
    usable = gpu_memory_mib * gpu_memory_utilization * MIB / GIB
    headroom = usable - per_gpu_weights_gib - overhead
    min_kv = min_kv_cache_fraction * usable
    sequence_kv = None
    if max_model_len is not None:
        sequence_kv = max_model_len * _kv_bytes_per_token(params_billion, dtype, kv_cache_bytes_per_token) / tensor_parallel / GIB
        min_kv = max(min_kv, sequence_kv)
    required = per_gpu_weights_gib + overhead + min_kv
    return {
        "weights_gib": weights_gib,
        "per_gpu_weights_gib": per_gpu_weights_gib,
        "overhead_gib": overhead,
        "per_gpu_usable_gib": usable,
        "kv_cache_headroom_gib": headroom,
        "min_kv_cache_gib": min_kv,
        "max_model_len_kv_cache_gib": sequence_kv,
        "per_gpu_required_gib": required,
        "fits": required <= usable,
    }


def check_fits(params_billion: float, dtype: str = "auto", tensor_parallel: int = 1, gpu_memory_mib: int = 81920,
               gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION, max_model_len: int | None = None,
               **kwargs: Any) -> dict[str, Any]:
    """Return estimate_vram(...) when the model fits; raise KubeInferError with the numbers when not.

    The message names the per-GPU requirement and its parts, the usable memory, and the smallest
    tensor_parallel that would fit (or says that none of the candidates does). The estimate is in
    the error's result under ``sizing``.
    """
    estimate = estimate_vram(params_billion, dtype, tensor_parallel, gpu_memory_mib, gpu_memory_utilization, max_model_len, **kwargs)
    if estimate["fits"]:
        return estimate
    smallest = estimate["smallest_fitting_tensor_parallel"]
    if smallest is not None:
        advice = f"The smallest tensor_parallel that fits is {smallest}."
    else:
        tried = sorted(set(kwargs.get("tensor_parallel_candidates", DEFAULT_TENSOR_PARALLEL_CANDIDATES)))
        advice = (f"No tensor_parallel in {tried} fits: use a quantized checkpoint (fp8, awq, gptq), GPUs with more memory, "
                  "a smaller max_model_len or pipeline parallelism.")
    raise KubeInferError(
        f"The model does not fit: {params_billion:g}B parameters in {dtype} need {estimate['per_gpu_required_gib']:.1f} GiB per GPU "
        f"at tensor_parallel={tensor_parallel} (weights {estimate['per_gpu_weights_gib']:.1f} GiB + overhead "
        f"{estimate['overhead_gib']:.1f} GiB + KV cache minimum {estimate['min_kv_cache_gib']:.1f} GiB), but only "
        f"{estimate['per_gpu_usable_gib']:.1f} GiB per GPU is usable ({gpu_memory_mib} MiB x gpu_memory_utilization "
        f"{gpu_memory_utilization:g}). {advice}",
        sizing=estimate,
    )


def startup_budget_seconds(
    weights_gib: float,
    load_throughput_gib_s: float = DEFAULT_LOAD_THROUGHPUT_GIB_S,
    base_seconds: float = DEFAULT_BASE_SECONDS,
    safety_factor: float = DEFAULT_SAFETY_FACTOR,
) -> int:
    """Seconds a vLLM pod may take to become healthy: ceil((base + weights / throughput) * safety).

    ``weights_gib`` is the whole model (every tensor parallel rank reads its shard in parallel, but
    they share the volume's bandwidth, so the whole size counts). Defaults and their reasons are the
    DEFAULT_LOAD_THROUGHPUT_GIB_S, DEFAULT_BASE_SECONDS and DEFAULT_SAFETY_FACTOR constants. A 8B bf16
    model (15 GiB) gets 135 s, a 70B bf16 model (130 GiB) 482 s. The time to download the model into
    an empty cache is not included: pre-pull it (model_cache.prefetch, whose load is then budgeted at
    PREFETCHED_LOAD_THROUGHPUT_GIB_S: 105 s and 221 s), or raise the budget.
    """
    if weights_gib < 0 or load_throughput_gib_s <= 0 or base_seconds < 0 or safety_factor < 1:
        raise KubeInferError(
            "Invalid startup budget input: weights_gib >= 0, load_throughput_gib_s > 0, base_seconds >= 0 and safety_factor >= 1 are required",
            weights_gib=weights_gib, load_throughput_gib_s=load_throughput_gib_s, base_seconds=base_seconds, safety_factor=safety_factor,
        )
    return int(math.ceil((base_seconds + weights_gib / load_throughput_gib_s) * safety_factor))


def scale_down_window_seconds(startup_budget_seconds: int, minimum: int = DEFAULT_MIN_SCALE_DOWN_WINDOW_SECONDS,
                              maximum: int = HPA_MAX_STABILIZATION_WINDOW_SECONDS) -> int:
    """The HPA scale-down stabilization window: max(minimum, startup_budget_seconds).

    Why never below the load time: a replica removed during a dip costs a full model load to get
    back. If the window were shorter than that load, a queue that dips and returns within one load
    time would make the HPA remove a replica and then wait the whole load again for the one it
    adds, so the window holds the highest recommendation for at least one load time. The minimum
    keeps the HPA default of 300 s for fast-loading models.

    Raises KubeInferError when the result exceeds ``maximum`` (3600 s, the autoscaling/v2 limit on
    stabilizationWindowSeconds): such a model loads for longer than the HPA can wait, which calls
    for a faster model cache rather than a silently clipped window.
    """
    if minimum < 0 or minimum > maximum:
        raise KubeInferError(f"minimum must be between 0 and {maximum} seconds, got {minimum}", minimum=minimum)
    if startup_budget_seconds < 0:
        raise KubeInferError(f"startup_budget_seconds must be >= 0, got {startup_budget_seconds}")
    window = max(int(minimum), int(math.ceil(startup_budget_seconds)))
    if window > maximum:
        raise KubeInferError(
            f"The startup budget of {startup_budget_seconds} s exceeds the longest HPA stabilization window "
            f"({maximum} s, the autoscaling/v2 limit on stabilizationWindowSeconds). Make the model load faster "
            "(a local or pre-warmed model cache, a quantized checkpoint, a higher load throughput) before autoscaling it.",
            startup_budget_seconds=startup_budget_seconds, maximum=maximum,
        )
    return window
