# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parsing of nvidia-smi output (default table and --query-gpu CSV). Private to this collection: the interface may change without notice."""
from __future__ import annotations

import re
from typing import Any, Sequence

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError

# Shape of every result (see parse_nvidia_smi):
#   {"driver_version": str, "cuda_version": str | None, "nvidia_smi_version": str | None,
#    "format": "table" | "csv", "gpu_count": int,
#    "gpus": [{"index": int, "name": str, "memory_total_mib": int | None,
#              "memory_used_mib": int | None, "bus_id": str | None}]}

DEFAULT_QUERY_FIELDS = ("name", "driver_version", "memory.total")
"""The field order of ``nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader``."""

# Messages nvidia-smi prints instead of a table when it cannot work; matched case-insensitively.
_FAILURES = (
    ("no devices were found", "nvidia-smi found no GPU devices in the container (is a GPU allocated to the pod, and is the device plugin working?)"),
    ("has failed because it couldn't communicate with the nvidia driver",
     "nvidia-smi could not talk to the NVIDIA driver (driver not installed or not loaded on the node)"),
    ("failed to initialize nvml", "nvidia-smi could not initialize NVML (driver/library version mismatch or missing driver)"),
    ("driver/library version mismatch", "nvidia-smi reports a driver/library version mismatch (reboot or reload the driver)"),
    ("command not found", "nvidia-smi is not present in the container image"),
    ("executable file not found", "nvidia-smi is not present in the container image"),
)

_HEADER = re.compile(
    r"NVIDIA-SMI\s+(?P<smi>\S+)\s+.*?Driver Version:\s*(?P<driver>\S+)(?:\s+.*?CUDA Version:\s*(?P<cuda>[\w./]+))?",
)
# First row of a GPU block, first cell: "   0  NVIDIA A100 80GB PCIe          On  "
_GPU_CELL = re.compile(r"^\s*(?P<index>\d+)\s+(?P<name>.+?)\s+(?:On|Off|N/A)\s*$")
_BUS_ID = re.compile(r"^\s*(?P<bus>[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])\b")
_MEMORY = re.compile(r"(?P<used>\d+)\s*MiB\s*/\s*(?P<total>\d+)\s*MiB")
_CSV_MIB = re.compile(r"^(?P<value>\d+(?:\.\d+)?)\s*(?:MiB)?$")


def _fail_if_error_output(text: str) -> None:
    lowered = text.lower()
    for needle, message in _FAILURES:
        if needle in lowered:
            raise KubeInferError(f"{message}. Output was: {_excerpt(text)}", nvidia_smi_output=text)


def _excerpt(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _cells(line: str) -> list[str]:
    """The cells of a table row ``| a | b | c |`` (outer bars removed)."""
    stripped = line.strip()
    if not stripped.startswith("|"):
        return []
    return stripped.strip("|").split("|")


def parse_table(text: str) -> dict[str, Any]:
    """Parse the default ``nvidia-smi`` table.

    Understands the layouts of driver branches 470 through 550+ (the column widths changed,
    the cells did not). Reads the header line (``NVIDIA-SMI x  Driver Version: y  CUDA Version: z``)
    and the GPU table that follows the first ``|===`` separator after the ``Bus-Id`` heading. Every
    GPU block starts with a row whose first cell is ``<index> <name> <persistence>``; its second cell
    starts with the PCI bus id, and the next row holds ``<used>MiB / <total>MiB``. The processes and
    MIG tables are ignored. Truncated names (``...``) are returned as printed.

    Raises KubeInferError for error output (no devices, no driver) and for text that is not a table.
    """
    _fail_if_error_output(text)
    header = _HEADER.search(text)
    if not header:
        raise KubeInferError(
            f"This is not nvidia-smi output: no 'NVIDIA-SMI ... Driver Version: ...' header. Output was: {_excerpt(text)}",
            nvidia_smi_output=text,
        )
    lines = text[header.end():].splitlines()
    start = None
    for pos, line in enumerate(lines):
        if "Bus-Id" in line:
            for offset in range(pos + 1, len(lines)):
                if lines[offset].strip().startswith("|=") or lines[offset].strip().startswith("+="):
                    start = offset + 1
                    break
            break
    if start is None:
        raise KubeInferError(
            f"nvidia-smi output has a header but no GPU table. Output was: {_excerpt(text)}", nvidia_smi_output=text,
        )

    gpus: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in lines[start:]:
        stripped = line.strip()
        if not stripped or stripped[0] not in "|+":
            break  # the blank line that ends the GPU table
        cells = _cells(line)
        if len(cells) < 2:
            continue  # a "+----+" border
        first = _GPU_CELL.match(cells[0])
        bus = _BUS_ID.match(cells[1])
        if first and bus:
            current = {
                "index": int(first.group("index")),
                "name": first.group("name").strip(),
                "memory_total_mib": None,
                "memory_used_mib": None,
                "bus_id": bus.group("bus"),
            }
            gpus.append(current)
            continue
        if current is not None and current["memory_total_mib"] is None:
            memory = _MEMORY.search(cells[1])
            if memory:
                current["memory_used_mib"] = int(memory.group("used"))
                current["memory_total_mib"] = int(memory.group("total"))
    if not gpus:
        raise KubeInferError(
            f"nvidia-smi output lists no GPUs in its table. Output was: {_excerpt(text)}", nvidia_smi_output=text,
        )
    cuda = header.group("cuda")
    return {
        "driver_version": header.group("driver"),
        "cuda_version": None if cuda in (None, "N/A") else cuda,
        "nvidia_smi_version": header.group("smi"),
        "format": "table",
        "gpu_count": len(gpus),
        "gpus": gpus,
    }


def _mib(value: str, field: str, text: str) -> int | None:
    if value in ("[N/A]", "N/A", "[Not Supported]"):
        return None
    match = _CSV_MIB.match(value)
    if not match:
        raise KubeInferError(f"nvidia-smi CSV field {field} is not a MiB amount: {value!r}", nvidia_smi_output=text)
    return int(float(match.group("value")))


def parse_csv(text: str, fields: Sequence[str] = DEFAULT_QUERY_FIELDS) -> dict[str, Any]:
    """Parse ``nvidia-smi --query-gpu=<fields> --format=csv[,noheader][,nounits]`` output.

    ``fields`` is the ``--query-gpu`` list in order; a header line, when present, overrides it
    (``memory.total [MiB]`` is read as ``memory.total``). Known fields: ``index``, ``name``,
    ``driver_version``, ``memory.total``, ``memory.used``, ``pci.bus_id``; others are ignored.
    Without ``index`` GPUs are numbered in output order. ``cuda_version`` is always None (not a query field).
    """
    _fail_if_error_output(text)
    rows = [line.strip() for line in text.splitlines() if line.strip()]
    names = [f.strip() for f in fields]
    if rows and "driver_version" in rows[0]:  # a header line (no ",noheader")
        names = [re.sub(r"\s*\[.*\]$", "", h.strip()) for h in rows[0].split(",")]
        rows = rows[1:]
    if "driver_version" not in names:
        raise KubeInferError("parse_csv needs driver_version among the query fields", fields=list(names))
    gpus: list[dict[str, Any]] = []
    drivers: set[str] = set()
    for number, row in enumerate(rows):
        values = [v.strip() for v in row.split(",")]
        if len(values) != len(names):
            raise KubeInferError(
                f"This is not nvidia-smi --query-gpu CSV output for fields {','.join(names)}: "
                f"line {number + 1} has {len(values)} values. Output was: {_excerpt(text)}",
                nvidia_smi_output=text,
            )
        record = dict(zip(names, values))
        if not re.match(r"^\d+(\.\d+)+$", record["driver_version"]):
            raise KubeInferError(
                f"This is not nvidia-smi --query-gpu CSV output: driver_version {record['driver_version']!r} "
                f"is not a version. Output was: {_excerpt(text)}",
                nvidia_smi_output=text,
            )
        drivers.add(record["driver_version"])
        index = record.get("index", str(number))
        if not index.isdigit():
            raise KubeInferError(f"nvidia-smi CSV index {index!r} is not a number", nvidia_smi_output=text)
        gpus.append({
            "index": int(index),
            "name": record.get("name"),
            "memory_total_mib": _mib(record["memory.total"], "memory.total", text) if "memory.total" in record else None,
            "memory_used_mib": _mib(record["memory.used"], "memory.used", text) if "memory.used" in record else None,
            "bus_id": record.get("pci.bus_id"),
        })
    if not gpus:
        raise KubeInferError("nvidia-smi CSV output lists no GPUs", nvidia_smi_output=text)
    if len(drivers) > 1:
        raise KubeInferError(f"nvidia-smi CSV output reports several driver versions: {sorted(drivers)}", nvidia_smi_output=text)
    return {
        "driver_version": drivers.pop(),
        "cuda_version": None,
        "nvidia_smi_version": None,
        "format": "csv",
        "gpu_count": len(gpus),
        "gpus": gpus,
    }


def parse_nvidia_smi(text: str, fields: Sequence[str] = DEFAULT_QUERY_FIELDS) -> dict[str, Any]:
    """Parse nvidia-smi output in either format, telling them apart by the table header.

    Returns ``{driver_version, cuda_version, nvidia_smi_version, format, gpu_count, gpus: [{index,
    name, memory_total_mib, memory_used_mib, bus_id}]}``. Values that the format does not carry are
    None (CSV has no CUDA version; the default CSV query has no used memory or bus id).
    Raises KubeInferError with the reason (no devices, no driver, not nvidia-smi output).
    """
    if not isinstance(text, str) or not text.strip():
        raise KubeInferError("nvidia-smi output is empty (did the pod run nvidia-smi, and were its logs read?)")
    if "NVIDIA-SMI" in text and "Driver Version" in text:
        return parse_table(text)
    return parse_csv(text, fields)
