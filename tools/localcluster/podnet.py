"""The local cluster's pod network: pod IPs on loopback, each answered by the simulator that plays the pod.

kwok gives every pod an IP from its node's ``spec.podCIDR`` (kwok v0.8.0
``pkg/kwok/controllers/pod_controller.go``: the node's podCIDRs, else ``--cidr``), and
``kwok/node.yaml`` gives each node a /24 inside 127.0.0.0/8. So a pod IP such as 127.16.1.3 is a
loopback address of this host, and Prometheus' real Kubernetes service discovery scrapes the pod
at ``<pod IP>:<containerPort>`` as it would in a cluster, with no traffic leaving loopback.

Nothing runs inside a kwok pod, so something has to answer there. A pod annotated
``kubeinfer.io/sim-metrics-port: N`` is played by the simulator at 127.0.0.1:N (sim.sh): for every
container port P of such a pod, while it is Running and has its IP, one socat relay listens on
``<pod IP>:P`` and forwards to 127.0.0.1:N. When the pod goes (or its IP changes) the relay stops.
A pod without the annotation has an IP on which nothing listens, as a crashed container would.

Where the imitation stops: the relay follows the pod's phase, not its readiness (a real container
answers before it is Ready too); Services and EndpointSlices are not routed (the API server refuses
loopback endpoint addresses, ``ValidateNonSpecialIP`` in k8s ``pkg/apis/core/validation``), so only
pod-level discovery (``role: pod``, PodMonitor) reaches a pod here; ServiceMonitor scrapes
(``role: endpointslice``) find no endpoints. Standard library only.
"""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path
from typing import Any

from hostproc import HostProcess

SIM_PORT_ANNOTATION = "kubeinfer.io/sim-metrics-port"
FORWARD_LABEL = "kubeinfer.io/sim-forward"
"""Opt-in pod label: the port-forward API reaches the pod's own simulator too (``wanted_forwards``)."""
OWNED_LABEL = "kubeinfer.io/localcluster-podnet"


def wanted_relays(pods: list[dict[str, Any]]) -> dict[str, tuple[str, int, int]]:
    """Relay name -> (pod IP, container port, simulator port), for every Running pod a simulator plays."""
    out: dict[str, tuple[str, int, int]] = {}
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        backend = (meta.get("annotations") or {}).get(SIM_PORT_ANNOTATION, "")
        ip = status.get("podIP") or ""
        if not backend.isdigit() or status.get("phase") != "Running" or not ip:
            continue
        try:
            if not ipaddress.ip_address(ip).is_loopback:
                continue  # never listen on (or send to) an address outside loopback
        except ValueError:
            continue
        for container in (pod.get("spec") or {}).get("containers") or []:
            for port in container.get("ports") or []:
                if port.get("protocol", "TCP") != "TCP":
                    continue
                p = int(port["containerPort"])
                out[f"{meta['namespace']}_{meta['name']}_{p}"] = (ip, p, int(backend))
    return out


def wanted_forwards(pods: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """(namespace, pod) -> simulator port, for every Running pod labelled ``kubeinfer.io/sim-forward=true`` that a simulator plays.

    A kubelet answers a port-forward with the pod's own container; kwok answers it from a PortForward named
    after the pod, else from a ClusterPortForward that matches its namespace (kwok v0.8.0
    pkg/kwok/server/debugging_port_forword.go, getPodsForward). A per-namespace ClusterPortForward sends every
    pod of the namespace to one simulator, so several models in one namespace would all answer as one. For
    pods that opt in, the sync loop keeps a PortForward per pod pointing at the simulator of its
    ``kubeinfer.io/sim-metrics-port`` annotation: a port-forward then reaches the model the pod serves, as
    on a real cluster. Opt-in, so that tests which point a pod's forward elsewhere (cluster.sh forward) keep it.
    """
    out: dict[tuple[str, str], int] = {}
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        backend = (meta.get("annotations") or {}).get(SIM_PORT_ANNOTATION, "")
        if (meta.get("labels") or {}).get(FORWARD_LABEL) != "true" or not backend.isdigit() or status.get("phase") != "Running":
            continue
        if meta.get("deletionTimestamp"):
            continue
        out[(meta["namespace"], meta["name"])] = int(backend)
    return out


def forward_object(namespace: str, name: str, backend: int) -> dict[str, Any]:
    """The kwok PortForward of one pod: every port of it to 127.0.0.1:<backend>, labelled as the sync loop's own."""
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "PortForward",
            "metadata": {"name": name, "namespace": namespace, "labels": {OWNED_LABEL: "true"}},
            "spec": {"forwards": [{"target": {"address": "127.0.0.1", "port": backend}}]}}


def sync(pods: list[dict[str, Any]], state: Path) -> list[str]:
    """Start the missing relays and stop the stale ones; returns a line per change."""
    root = state / "podnet"
    want = wanted_relays(pods)
    changes = []
    have = {d.name for d in root.iterdir() if d.is_dir()} if root.is_dir() else set()
    for name in sorted(have - set(want)):
        if HostProcess(root / name, "relay").stop():
            changes.append(f"relay {name} stopped")
        shutil.rmtree(root / name, ignore_errors=True)
    socat = shutil.which("socat") or "socat"
    for name, (ip, port, backend) in sorted(want.items()):
        argv = [socat, f"TCP-LISTEN:{port},bind={ip},reuseaddr,fork", f"TCP:127.0.0.1:{backend}"]
        proc = HostProcess(root / name, "relay")
        if proc.argv() != argv:
            proc.stop()
            changes.append(f"relay {name} {ip}:{port} -> 127.0.0.1:{backend} (pid {proc.start(argv)})")
    return changes


def stop_all(state: Path) -> int:
    """Stop every relay; returns how many were running."""
    return len([c for c in sync([], state) if c.endswith("stopped")])
