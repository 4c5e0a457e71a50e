# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._nvidia_smi import parse_csv, parse_nvidia_smi, parse_table

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def fixture(name: str) -> str:
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return f.read()


def test_a100_table() -> None:
    result = parse_nvidia_smi(fixture("nvidia_smi_a100_80gb_x1.txt"))
    assert result == {
        "driver_version": "550.54.15",
        "cuda_version": "12.4",
        "nvidia_smi_version": "550.54.15",
        "format": "table",
        "gpu_count": 1,
        "gpus": [{
            "index": 0,
            "name": "NVIDIA A100 80GB PCIe",
            "memory_total_mib": 81920,
            "memory_used_mib": 0,
            "bus_id": "00000000:17:00.0",
        }],
    }


def test_h100_x8_table_ignores_process_rows() -> None:
    result = parse_table(fixture("nvidia_smi_h100_x8.txt"))
    assert result["driver_version"] == "550.90.07"
    assert result["cuda_version"] == "12.4"
    assert result["gpu_count"] == 8
    assert [g["index"] for g in result["gpus"]] == list(range(8))
    assert {g["name"] for g in result["gpus"]} == {"NVIDIA H100 80GB HBM3"}
    assert [g["bus_id"] for g in result["gpus"]] == [f"00000000:{b}:00.0" for b in ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB")]
    assert all(g["memory_total_mib"] == 81559 and g["memory_used_mib"] == 74512 for g in result["gpus"])


def test_old_r470_layout() -> None:
    result = parse_nvidia_smi(fixture("nvidia_smi_t4_r470.txt"))
    assert result["driver_version"] == "470.57.02"
    assert result["cuda_version"] == "11.4"
    assert result["gpus"] == [{
        "index": 0, "name": "Tesla T4", "memory_total_mib": 15109, "memory_used_mib": 0, "bus_id": "00000000:00:1E.0",
    }]


def test_table_with_log_prefix_lines() -> None:
    text = "==> starting smoke test\n" + fixture("nvidia_smi_a100_80gb_x1.txt") + "done\n"
    assert parse_nvidia_smi(text)["gpu_count"] == 1


def test_cuda_version_not_available() -> None:
    text = fixture("nvidia_smi_a100_80gb_x1.txt").replace("CUDA Version: 12.4", "CUDA Version: N/A ")
    assert parse_nvidia_smi(text)["cuda_version"] is None


def test_csv_noheader_default_fields() -> None:
    result = parse_nvidia_smi(fixture("nvidia_smi_query_h100_x8.csv"))
    assert result["format"] == "csv"
    assert result["driver_version"] == "550.90.07"
    assert result["cuda_version"] is None
    assert result["gpu_count"] == 8
    assert result["gpus"][7] == {
        "index": 7, "name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559, "memory_used_mib": None, "bus_id": None,
    }


def test_csv_with_header_and_more_fields() -> None:
    result = parse_csv(fixture("nvidia_smi_query_a100_header.csv"))
    assert result["gpus"] == [{
        "index": 0, "name": "NVIDIA A100 80GB PCIe", "memory_total_mib": 81920, "memory_used_mib": 0, "bus_id": "00000000:17:00.0",
    }]


def test_csv_nounits_and_custom_field_order() -> None:
    result = parse_csv("550.54.15, 81920, NVIDIA A100-SXM4-80GB\n", fields=("driver_version", "memory.total", "name"))
    assert result["gpus"][0]["name"] == "NVIDIA A100-SXM4-80GB"
    assert result["gpus"][0]["memory_total_mib"] == 81920


@pytest.mark.parametrize("name, reason", [
    ("nvidia_smi_no_devices.txt", "found no GPU devices"),
    ("nvidia_smi_driver_failed.txt", "could not talk to the NVIDIA driver"),
])
def test_error_outputs(name: str, reason: str) -> None:
    with pytest.raises(KubeInferError, match=reason) as info:
        parse_nvidia_smi(fixture(name))
    assert info.value.result["nvidia_smi_output"] == fixture(name)


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("   \n", "empty"),
    ("hello world\n", "not nvidia-smi --query-gpu CSV output"),
    ("Tesla T4, not-a-version, 15109 MiB\n", "is not a version"),
    ("/bin/sh: 1: nvidia-smi: not found\ncommand not found\n", "not present in the container image"),
    ("| NVIDIA-SMI 550.54.15  Driver Version: 550.54.15  CUDA Version: 12.4 |\n", "no GPU table"),
])
def test_not_nvidia_smi(text: str, reason: str) -> None:
    with pytest.raises(KubeInferError, match=reason):
        parse_nvidia_smi(text)


def test_table_without_gpu_rows() -> None:
    text = fixture("nvidia_smi_a100_80gb_x1.txt").replace("00000000:17:00.0", "????????????????")
    with pytest.raises(KubeInferError, match="lists no GPUs"):
        parse_table(text)


def test_table_parser_rejects_non_table() -> None:
    with pytest.raises(KubeInferError, match="no 'NVIDIA-SMI"):
        parse_table("NVIDIA A100 80GB PCIe, 550.54.15, 81920 MiB\n")


def test_csv_mixed_driver_versions_rejected() -> None:
    with pytest.raises(KubeInferError, match="several driver versions"):
        parse_csv("A, 550.54.15, 1 MiB\nB, 535.104.05, 1 MiB\n")


def test_csv_bad_memory() -> None:
    with pytest.raises(KubeInferError, match="not a MiB amount"):
        parse_csv("A, 550.54.15, lots\n")
