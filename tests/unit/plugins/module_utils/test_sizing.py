# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import math
from typing import Any

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._sizing import (
    HPA_MAX_STABILIZATION_WINDOW_SECONDS,
    bytes_per_param,
    check_fits,
    estimate_vram,
    params_from_model_name,
    scale_down_window_seconds,
    startup_budget_seconds,
)

A100_80GB_MIB = 81920
H100_80GB_MIB = 81559
L4_MIB = 23034


@pytest.mark.parametrize("name, expected", [
    ("meta-llama/Llama-3.1-8B-Instruct", 8.0),
    ("meta-llama/Meta-Llama-3-70b", 70.0),
    ("Qwen/Qwen2.5-0.5B-Instruct", 0.5),
    ("Qwen/Qwen2.5-1.5B", 1.5),
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", 56.0),
    ("mistralai/Mistral-7B-v0.1", 7.0),
    ("facebook/opt-125m", 0.125),
    ("facebook/opt-1.3b", 1.3),
    ("Qwen/Qwen3-30B-A3B", 30.0),
    ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", 1.1),
    ("google/gemma-2-9b-it", 9.0),
    ("Qwen/Qwen2.5-72B-Instruct-AWQ", 72.0),
    ("/models/llama-3.2-1b/", 1.0),
    ("Meta-Llama-3.1-8B-Instruct.gguf", 8.0),
    ("gpt2", None),
    ("deepseek-ai/DeepSeek-V3", None),
    ("microsoft/Phi-3-mini-4k-instruct", None),
    ("", None),
    ("sim-model", None),
])
def test_params_from_model_name(name: str, expected: float | None) -> None:
    assert params_from_model_name(name) == expected


@pytest.mark.parametrize("dtype, expected", [
    ("bfloat16", 2.0), ("BF16", 2.0), ("float16", 2.0), ("auto", 2.0), ("half", 2.0),
    ("float32", 4.0), ("fp8", 1.0), ("int8", 1.0), ("awq", 0.5), ("gptq", 0.5), ("int4", 0.5),
])
def test_bytes_per_param(dtype: str, expected: float) -> None:
    assert bytes_per_param(dtype) == expected


def test_unknown_dtype() -> None:
    with pytest.raises(KubeInferError, match="Unknown dtype 'int3'.*bf16"):
        bytes_per_param("int3")


def test_8b_bf16_on_one_a100() -> None:
    est = estimate_vram(8, "bfloat16", 1, A100_80GB_MIB, 0.9)
    weights = 8e9 * 2 / 2**30
    assert est["weights_gib"] == round(weights, 3) == 14.901
    assert est["per_gpu_weights_gib"] == 14.901
    assert est["per_gpu_usable_gib"] == 72.0
    assert est["overhead_gib"] == round(2.0 + 0.05 * weights, 3)
    assert est["kv_cache_headroom_gib"] == round(72.0 - weights - (2.0 + 0.05 * weights), 3)
    assert est["min_kv_cache_gib"] == 7.2
    assert est["per_gpu_required_gib"] == round(weights + 2.0 + 0.05 * weights + 7.2, 3)
    assert est["fits"] is True
    assert est["smallest_fitting_tensor_parallel"] == 1
    assert est["max_model_len_kv_cache_gib"] is None


def test_70b_bf16_needs_four_a100s() -> None:
    est = estimate_vram(70, "bfloat16", 2, A100_80GB_MIB, 0.9)
    assert est["fits"] is False
    assert est["smallest_fitting_tensor_parallel"] == 4
    assert estimate_vram(70, "bfloat16", 4, A100_80GB_MIB, 0.9)["fits"] is True


def test_quantization_shrinks_weights() -> None:
    bf16 = estimate_vram(70, "bf16", 1, H100_80GB_MIB)
    awq = estimate_vram(70, "awq", 1, H100_80GB_MIB)
    assert awq["weights_gib"] == pytest.approx(bf16["weights_gib"] / 4, abs=0.01)
    assert bf16["fits"] is False
    assert awq["fits"] is True


def test_tensor_parallel_divides_weights() -> None:
    one = estimate_vram(70, "bf16", 1, H100_80GB_MIB)
    eight = estimate_vram(70, "bf16", 8, H100_80GB_MIB)
    assert eight["weights_gib"] == one["weights_gib"]
    assert eight["per_gpu_weights_gib"] == pytest.approx(one["per_gpu_weights_gib"] / 8, abs=0.001)


def test_max_model_len_can_break_the_fit() -> None:
    # Llama-3.1-8B on a 24 GB L4: fits with a short context, not with the full 128k context.
    short = estimate_vram(8, "bf16", 1, L4_MIB, 0.9, max_model_len=4096)
    full = estimate_vram(8, "bf16", 1, L4_MIB, 0.9, max_model_len=131072)
    assert short["fits"] is True
    assert full["fits"] is False
    kv_per_token = 45.0 * math.sqrt(8) * 1024
    assert full["max_model_len_kv_cache_gib"] == round(131072 * kv_per_token / 2**30, 3)
    assert full["min_kv_cache_gib"] == full["max_model_len_kv_cache_gib"]


def test_exact_kv_bytes_per_token_and_tp_split() -> None:
    per_token = 131072  # Llama-3.1-8B: 32 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes
    est = estimate_vram(8, "bf16", 2, A100_80GB_MIB, 0.9, max_model_len=131072, kv_cache_bytes_per_token=per_token)
    assert est["max_model_len_kv_cache_gib"] == 131072 * per_token / 2 / 2**30 == 8.0
    assert est["min_kv_cache_gib"] == 8.0


def test_min_kv_fraction_is_a_floor() -> None:
    assert estimate_vram(8, "bf16", 1, A100_80GB_MIB, 0.9, min_kv_cache_fraction=0.5)["min_kv_cache_gib"] == 36.0


def test_utilization_lowers_usable_memory() -> None:
    assert estimate_vram(8, "bf16", 1, A100_80GB_MIB, 0.5)["per_gpu_usable_gib"] == 40.0


def test_no_candidate_fits() -> None:
    est = estimate_vram(405, "bf16", 1, A100_80GB_MIB)
    assert est["smallest_fitting_tensor_parallel"] is None


@pytest.mark.parametrize("kwargs, problem", [
    ({"params_billion": 0}, "params_billion must be a positive number"),
    ({"params_billion": -1}, "params_billion"),
    ({"tensor_parallel": 0}, "tensor_parallel must be an integer >= 1"),
    ({"tensor_parallel": 1.5}, "tensor_parallel"),
    ({"gpu_memory_mib": 0}, "gpu_memory_mib"),
    ({"gpu_memory_utilization": 0}, "gpu_memory_utilization"),
    ({"gpu_memory_utilization": 1.2}, "gpu_memory_utilization"),
    ({"max_model_len": 0}, "max_model_len"),
])
def test_invalid_inputs(kwargs: dict, problem: str) -> None:
    args: dict[str, Any] = {"params_billion": 8, "dtype": "bf16", "tensor_parallel": 1, "gpu_memory_mib": A100_80GB_MIB, "gpu_memory_utilization": 0.9}
    args.update(kwargs)
    with pytest.raises(KubeInferError, match=problem):
        estimate_vram(**args)


def test_check_fits_returns_estimate() -> None:
    assert check_fits(8, "bf16", 1, A100_80GB_MIB)["fits"] is True


def test_check_fits_message_has_numbers_and_advice() -> None:
    with pytest.raises(KubeInferError) as info:
        check_fits(70, "bfloat16", 2, A100_80GB_MIB, 0.9)
    msg = info.value.msg
    est = info.value.result["sizing"]
    assert est["fits"] is False
    assert f"{est['per_gpu_required_gib']:.1f} GiB per GPU" in msg
    assert "at tensor_parallel=2" in msg
    assert "only 72.0 GiB per GPU is usable (81920 MiB x gpu_memory_utilization 0.9)" in msg
    assert "The smallest tensor_parallel that fits is 4." in msg


def test_check_fits_when_nothing_fits() -> None:
    with pytest.raises(KubeInferError, match=r"No tensor_parallel in \[1, 2\] fits: use a quantized checkpoint"):
        check_fits(405, "bf16", 1, A100_80GB_MIB, tensor_parallel_candidates=(1, 2))


def test_startup_budget_defaults() -> None:
    assert startup_budget_seconds(0) == 90
    assert startup_budget_seconds(8e9 * 2 / 2**30) == 135
    assert startup_budget_seconds(70e9 * 2 / 2**30) == 482
    assert startup_budget_seconds(10, load_throughput_gib_s=1, base_seconds=0, safety_factor=1) == 10
    assert startup_budget_seconds(10.1, load_throughput_gib_s=1, base_seconds=0, safety_factor=1) == 11


def test_startup_budget_grows_with_size_and_slower_storage() -> None:
    assert startup_budget_seconds(100) > startup_budget_seconds(10)
    assert startup_budget_seconds(100, load_throughput_gib_s=0.1) > startup_budget_seconds(100)


@pytest.mark.parametrize("kwargs", [
    {"weights_gib": -1}, {"weights_gib": 1, "load_throughput_gib_s": 0}, {"weights_gib": 1, "safety_factor": 0.5},
    {"weights_gib": 1, "base_seconds": -5},
])
def test_startup_budget_invalid(kwargs: dict) -> None:
    with pytest.raises(KubeInferError, match="Invalid startup budget input"):
        startup_budget_seconds(**kwargs)


def test_scale_down_window() -> None:
    assert scale_down_window_seconds(135) == 300
    assert scale_down_window_seconds(482) == 482
    assert scale_down_window_seconds(482, minimum=600) == 600
    assert scale_down_window_seconds(3600) == 3600


def test_scale_down_window_over_hpa_limit() -> None:
    assert HPA_MAX_STABILIZATION_WINDOW_SECONDS == 3600
    with pytest.raises(KubeInferError, match="exceeds the longest HPA stabilization window") as info:
        scale_down_window_seconds(3601)
    assert info.value.result["startup_budget_seconds"] == 3601


def test_scale_down_window_bad_minimum() -> None:
    with pytest.raises(KubeInferError, match="minimum must be between"):
        scale_down_window_seconds(100, minimum=4000)
    with pytest.raises(KubeInferError, match="startup_budget_seconds must be"):
        scale_down_window_seconds(-1)
