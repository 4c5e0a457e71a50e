"""tools/localcluster/podnet.py: which pods get a port-forward to their own simulator (pure logic of the harness)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "localcluster"))
import podnet  # tools/localcluster, on the path above


def pod(name: str, labels: dict[str, str], port: str | None = "4100", phase: str = "Running", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "labels": labels,
                            "annotations": {podnet.SIM_PORT_ANNOTATION: port} if port is not None else {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T17:00:00Z"
    return {"metadata": meta, "status": {"phase": phase, "podIP": "127.10.0.2"}}


def test_only_running_opted_in_pods_with_a_simulator_get_a_forward() -> None:
    opted = {podnet.FORWARD_LABEL: "true"}
    pods = [pod("a", opted), pod("b", {}), pod("c", opted, port=None), pod("d", opted, phase="Pending"),
            pod("e", opted, port="x"), pod("f", opted, deleting=True), pod("g", {podnet.FORWARD_LABEL: "false"})]
    assert podnet.wanted_forwards(pods) == {("ns", "a"): 4100}


def test_the_forward_object_is_labelled_as_the_sync_loops_own() -> None:
    obj = podnet.forward_object("ns", "a", 4100)
    assert obj["metadata"] == {"name": "a", "namespace": "ns", "labels": {podnet.OWNED_LABEL: "true"}}
    assert obj["spec"] == {"forwards": [{"target": {"address": "127.0.0.1", "port": 4100}}]}, "every port, loopback only"
