# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import os

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._nvidia_smi import COMMAND, QUERY_FIELDS, failure_hint, parse

from .fixture_text import fixture


def test_the_command_asks_for_the_parsed_fields_without_header_or_units() -> None:
    assert COMMAND == ["nvidia-smi", "--query-gpu=" + ",".join(QUERY_FIELDS), "--format=csv,noheader,nounits"]


def test_one_a100() -> None:
    assert parse("0, NVIDIA A100-SXM4-80GB, 550.127.05, 81920, 1, 00000000:07:00.0\n") == {
        "driver_version": "550.127.05",
        "cuda_version": None,
        "gpu_count": 1,
        "gpus": [{"index": 0, "name": "NVIDIA A100-SXM4-80GB", "memory_total_mib": 81920, "memory_used_mib": 1,
                  "bus_id": "00000000:07:00.0"}],
    }


def test_eight_h100() -> None:
    result = parse(fixture("nvidia_smi_query_h100_x8.csv"))
    assert result["driver_version"] == "550.90.07" and result["gpu_count"] == 8
    assert [g["index"] for g in result["gpus"]] == list(range(8))
    assert {g["name"] for g in result["gpus"]} == {"NVIDIA H100 80GB HBM3"}
    assert [g["bus_id"] for g in result["gpus"]] == [f"00000000:{b}:00.0" for b in ("18", "2A", "3A", "5D", "9A", "AB", "BA", "DB")]
    assert all(g["memory_total_mib"] == 81559 and g["memory_used_mib"] == 74512 for g in result["gpus"])


def test_values_the_gpu_does_not_report_are_null_and_blank_lines_ignored() -> None:
    result = parse("\n0, NVIDIA GH200 480GB, 560.35.03, [N/A], [Not Supported], 00000009:01:00.0\n\n")
    assert result["gpus"][0]["memory_total_mib"] is None and result["gpus"][0]["memory_used_mib"] is None


@pytest.mark.parametrize("name, reason", [
    ("nvidia_smi_no_devices.txt", "found no GPU devices"),
    ("nvidia_smi_driver_failed.txt", "could not talk to the NVIDIA driver"),
])
def test_error_outputs(name: str, reason: str) -> None:
    with pytest.raises(KubeInferError, match=reason) as info:
        parse(fixture(name))
    assert info.value.result["nvidia_smi_output"] == fixture(name)


@pytest.mark.parametrize("text, reason", [
    ("Failed to initialize NVML: Driver/library version mismatch\n", "could not initialize NVML"),
    ('Field "pci.bus_id" is not a valid field to query.\n', "does not know one of the query fields"),
    ("/bin/sh: 1: nvidia-smi: not found\ncommand not found\n", "not present in the container image"),
    ("all fine\n", None),
])
def test_failure_hint(text: str, reason: str | None) -> None:
    hint = failure_hint(text)
    assert (hint is None) if reason is None else (reason in str(hint))


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("   \n", "empty"),
    ("hello world\n", "line 1 has 1 values, not 6"),
    ("0, NVIDIA A100-SXM4-80GB, 550.127.05, 81920\n", "line 1 has 4 values"),
    ("0, Tesla T4, not-a-version, 15109, 0, 00000000:00:1E.0\n", "driver_version 'not-a-version'"),
    ("x, Tesla T4, 535.104.05, 15109, 0, 00000000:00:1E.0\n", "index 'x'"),
    ("0, Tesla T4, 535.104.05, 15109 MiB, 0, 00000000:00:1E.0\n", "memory.total is not a whole number of MiB"),
    ("0, A, 550.54.15, 1, 0, 0:1:0.0\n1, B, 535.104.05, 1, 0, 0:2:0.0\n", "several driver versions"),
])
def test_not_the_query_answer(text: str, reason: str) -> None:
    with pytest.raises(KubeInferError, match=reason):
        parse(text)


def test_the_canned_kubelet_log_is_this_query_answer() -> None:
    """The simulated kubelet serves tools/localcluster/fixtures/nvidia-smi.txt as the test pod's log."""
    path = os.path.join(os.path.dirname(__file__), *[os.pardir] * 4, "tools", "localcluster", "fixtures", "nvidia-smi.txt")
    with open(path, encoding="utf-8") as f:
        result = parse(f.read())
    assert result["gpus"][0]["name"] == "NVIDIA A100-SXM4-80GB" and result["driver_version"] == "550.127.05"
