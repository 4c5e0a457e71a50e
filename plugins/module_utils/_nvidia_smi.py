# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The nvidia-smi query the GPU test pod runs, and the parser of its CSV output. Private to this collection: may change.

The query interface (``--query-gpu=<fields> --format=csv,noheader,nounits``) prints one line per GPU,
the fields in the order asked, separated by ", ", memory in MiB without its unit, and ``[N/A]`` or
``[Not Supported]`` for a value the GPU does not report (nvidia-smi(1), "--query-gpu" and "--format").
"""
from __future__ import annotations

import re
from typing import Any

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError

QUERY_FIELDS = ("index", "name", "driver_version", "memory.total", "memory.used", "pci.bus_id")
COMMAND = ["nvidia-smi", "--query-gpu=" + ",".join(QUERY_FIELDS), "--format=csv,noheader,nounits"]

# What nvidia-smi prints instead of its answer when it cannot work; matched case-insensitively.
_FAILURES = (
    ("no devices were found", "nvidia-smi found no GPU devices in the container (is a GPU allocated to the pod, and is the device plugin working?)"),
    ("has failed because it couldn't communicate with the nvidia driver",
     "nvidia-smi could not talk to the NVIDIA driver (driver not installed or not loaded on the node)"),
    ("failed to initialize nvml", "nvidia-smi could not initialize NVML (driver/library version mismatch or missing driver)"),
    ("driver/library version mismatch", "nvidia-smi reports a driver/library version mismatch (reboot or reload the driver)"),
    ("is not a valid field to query", "this nvidia-smi does not know one of the query fields (a driver older than the query)"),
    ("command not found", "nvidia-smi is not present in the container image"),
    ("executable file not found", "nvidia-smi is not present in the container image"),
)
_NOT_REPORTED = ("[N/A]", "[Not Supported]", "N/A")
_VERSION = re.compile(r"^\d+(\.\d+)+$")


def failure_hint(text: str) -> str | None:
    """What a known nvidia-smi error in ``text`` means, or None."""
    lowered = text.lower()
    return next((message for needle, message in _FAILURES if needle in lowered), None)


def _excerpt(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _mib(value: str, field: str, text: str) -> int | None:
    if value in _NOT_REPORTED:
        return None
    if not value.isdigit():
        raise KubeInferError(f"nvidia-smi field {field} is not a whole number of MiB: {value!r}", nvidia_smi_output=text)
    return int(value)


def parse(text: str) -> dict[str, Any]:
    """Parse the output of COMMAND into ``{driver_version, cuda_version, gpu_count, gpus: [{index, name,
    memory_total_mib, memory_used_mib, bus_id}]}``.

    ``cuda_version`` is always None: the query interface has no field for it. Raises KubeInferError with the
    reason for error output (no devices, no driver, NVML) and for anything that is not this query's answer.
    """
    if not text.strip():
        raise KubeInferError("nvidia-smi output is empty (did the pod run nvidia-smi, and were its logs read?)")
    hint = failure_hint(text)
    if hint:
        raise KubeInferError(f"{hint}. Output was: {_excerpt(text)}", nvidia_smi_output=text)
    gpus: list[dict[str, Any]] = []
    drivers: set[str] = set()
    for number, line in enumerate(row for row in text.splitlines() if row.strip()):
        values = [v.strip() for v in line.split(",")]
        if len(values) != len(QUERY_FIELDS):
            raise KubeInferError(f"This is not the answer of {' '.join(COMMAND)}: line {number + 1} has {len(values)} "
                                 f"values, not {len(QUERY_FIELDS)}. Output was: {_excerpt(text)}", nvidia_smi_output=text)
        index, name, driver, total, used, bus_id = values
        if not index.isdigit() or not _VERSION.match(driver):
            raise KubeInferError(f"This is not the answer of {' '.join(COMMAND)}: line {number + 1} has index {index!r} "
                                 f"and driver_version {driver!r}. Output was: {_excerpt(text)}", nvidia_smi_output=text)
        drivers.add(driver)
        gpus.append({"index": int(index), "name": name, "memory_total_mib": _mib(total, "memory.total", text),
                     "memory_used_mib": _mib(used, "memory.used", text), "bus_id": bus_id})
    if len(drivers) > 1:
        raise KubeInferError(f"nvidia-smi reports several driver versions: {sorted(drivers)}", nvidia_smi_output=text)
    return {"driver_version": drivers.pop(), "cuda_version": None, "gpu_count": len(gpus), "gpus": gpus}
