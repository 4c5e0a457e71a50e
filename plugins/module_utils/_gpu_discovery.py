# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which nodes have NVIDIA GPUs, and which of them a pre-installed host driver. Private to this collection: may change.

Two sources, both modelled on what the GPU stack itself uses:

- NFD labels. The GPU Operator treats a node as a GPU node when it carries any of three NFD PCI labels
  (gpu-operator v26.7.0 ``controllers/state_manager.go``, ``gpuNodeLabels``); which one NFD writes depends
  on its ``deviceLabelFields`` setting.
- A probe pod per node, for what no label can tell. It reads the host's PCI devices from sysfs, as NFD's
  PCI source does, and looks for an executable, non-empty ``nvidia-smi`` at the paths the operator's
  validator searches on the host (``cmd/nvidia-validator/main.go``, ``hostNvidiaSMISearchPaths`` and
  ``validateHostDriver``), plus the loaded kernel module (``/proc/driver/nvidia/version``), without which that
  nvidia-smi could not run. The validator decides "pre-installed driver" the same way, so the collection's
  ``driver_enabled: auto`` agrees with the operator. No label is evidence of a driver: the operator writes
  ``nvidia.com/gpu.present`` from the PCI labels alone, and GFD's ``cuda.driver.*`` labels come from the
  operator's own driver too.

The probe's answer is its container's termination message, three ``key=value`` lines.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Callable, Iterable, Mapping

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import COMPONENT_LABEL, check_namespace, managed_labels
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import ApiError, Kube
from ansible_collections.kubeinfer.llm.plugins.module_utils._waiter import unschedulable_reason, wait_for

NFD_GPU_LABELS = (
    "feature.node.kubernetes.io/pci-10de.present",
    "feature.node.kubernetes.io/pci-0302_10de.present",
    "feature.node.kubernetes.io/pci-0300_10de.present",
)
"""NFD labels for a node with an NVIDIA (vendor 10de) PCI device: vendor only, 3D controller, VGA controller."""

# The defaults of PROBE_ARG_SPEC. The image is the one the GPU Operator runs its own validator from:
# air-gapped sites mirror it anyway.
DEFAULT_PROBE_IMAGE = "nvcr.io/nvidia/cloud-native/gpu-operator-validator:v26.7.0"
DEFAULT_PROBE_NAMESPACE = "kube-system"
DEFAULT_PROBE_TIMEOUT = 180
PROBE_PREFIX = "kubeinfer-gpu-probe-"
COMPONENT = "gpu-node-probe"
RUN_LABEL = "kubeinfer.io/probe-run"

# The validator's host search paths for nvidia-smi, in its order.
NVIDIA_SMI_PATHS = ("/usr/bin/nvidia-smi", "/usr/sbin/nvidia-smi", "/bin/nvidia-smi", "/sbin/nvidia-smi",
                    "/usr/lib/wsl/lib/nvidia-smi", "/opt/bin/nvidia-smi")

PROBE_SCRIPT = r"""
pci=""
for d in /host-sys/bus/pci/devices/*; do
  [ -r "$d/vendor" ] || continue
  if [ "$(cat "$d/vendor")" = "0x10de" ]; then
    c=$(cat "$d/class"); c=${c#0x}; c=$(printf '%.4s' "$c")
    pci="$pci${pci:+,}$c"
  fi
done
smi=none
for p in @PATHS@; do
  if [ -f "/host$p" ] && [ -s "/host$p" ] && [ -x "/host$p" ]; then smi=$p; break; fi
done
drv=none
if [ -r /proc/driver/nvidia/version ]; then
  drv=$(sed -n 's/.*Kernel Module[^.]* \([0-9][0-9]*\.[0-9.]*\).*/\1/p' /proc/driver/nvidia/version | head -n 1)
  [ -n "$drv" ] || drv=unknown
fi
printf 'nvidia-pci=%s\nnvidia-smi=%s\ndriver=%s\n' "$pci" "$smi" "$drv" > /dev/termination-log
""".replace("@PATHS@", " ".join(NVIDIA_SMI_PATHS))


def nfd_gpu_node(node: Mapping[str, Any]) -> bool:
    """Whether NFD labelled the node as having an NVIDIA PCI device (any of the three labels)."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    return any(str(labels.get(key, "")).lower() == "true" for key in NFD_GPU_LABELS)


def probe_pod(node_name: str, namespace: str, image: str, run_id: str) -> dict[str, Any]:
    """A pod pinned to ``node_name`` that reads host sysfs and / read-only, writes its answer, and stops."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": PROBE_PREFIX,
            "namespace": namespace,
            "labels": managed_labels(**{COMPONENT_LABEL: COMPONENT, RUN_LABEL: run_id}),
        },
        "spec": {
            "nodeName": node_name,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 0,
            # A GPU node is usually tainted; the probe must run on every node it is asked about.
            "tolerations": [{"operator": "Exists"}],
            "securityContext": {"runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "probe",
                "image": image,
                "command": ["sh", "-c", PROBE_SCRIPT],
                "terminationMessagePolicy": "File",
                "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"cpu": "100m", "memory": "32Mi"}},
                "volumeMounts": [{"name": "host-root", "mountPath": "/host", "readOnly": True},
                                 {"name": "host-sys", "mountPath": "/host-sys", "readOnly": True}],
            }],
            "volumes": [{"name": "host-root", "hostPath": {"path": "/", "type": "Directory"}},
                        {"name": "host-sys", "hostPath": {"path": "/sys", "type": "Directory"}}],
        },
    }


def parse_probe(message: str) -> dict[str, Any]:
    """The probe's termination message as ``{nvidia_pci: [class, ...], nvidia_smi, driver}``; raises when malformed."""
    fields: dict[str, str] = {}
    for line in (message or "").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep:
            fields[key] = value.strip()
    missing = [k for k in ("nvidia-pci", "nvidia-smi", "driver") if k not in fields]
    if missing:
        raise KubeInferError(f"the probe answered {message!r}, without {', '.join(missing)}")
    smi, driver = fields["nvidia-smi"], fields["driver"]
    return {
        "nvidia_pci": [c for c in fields["nvidia-pci"].split(",") if c],
        "nvidia_smi": None if smi == "none" else smi,
        "driver": None if driver == "none" else driver,
    }


def host_driver(answer: Mapping[str, Any]) -> bool:
    """A pre-installed driver, as the validator would find it: nvidia-smi on the host and the module loaded."""
    return bool(answer.get("nvidia_smi")) and bool(answer.get("driver"))


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return term
    return None


def probe_nodes(kube: Kube, node_names: Iterable[str], namespace: str, image: str, timeout: float, interval: float = 1.0,
                sleep: Callable[[float], None] = time.sleep) -> dict[str, dict[str, Any]]:
    """Run one probe pod per node, all at once; return each node's parsed answer. The pods are deleted, also on failure.

    Costs one create per node, one list per poll and one delete per node. Raises naming every node whose
    probe did not succeed, with the reason (unschedulable, image pull, exit code).
    """
    names = sorted(set(node_names))
    if not names:
        return {}
    run_id = uuid.uuid4().hex[:12]
    selector = f"{RUN_LABEL}={run_id}"
    created: list[str] = []
    pods: dict[str, Mapping[str, Any]] = {}
    try:
        for name in names:
            created.append(kube.create(probe_pod(name, namespace, image, run_id))["metadata"]["name"])

        def finished() -> tuple[bool, str]:
            pods.clear()
            for pod in kube.list("v1", "Pod", namespace, label_selector=selector):
                pods[(pod.get("spec") or {}).get("nodeName", "")] = pod
            waiting = [n for n in names if (pods.get(n, {}).get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
            why = unschedulable_reason([pods[n] for n in waiting if n in pods])
            return not waiting, f"no answer yet from {', '.join(waiting)}" + (f" ({why})" if why else "")

        try:
            wait_for(finished, timeout, f"the GPU node probe pods in {namespace}", interval=interval, sleep=sleep)
        except KubeInferError as e:
            raise KubeInferError(f"probe_timeout: {e.msg}; probe_image {image} must be pullable on every node") from e
        answers: dict[str, dict[str, Any]] = {}
        failed: list[str] = []
        for name in names:
            pod = pods[name]
            term = _terminated(pod) or {}
            if pod["status"].get("phase") != "Succeeded":
                failed.append(f"{name}: exit code {term.get('exitCode')}, {term.get('reason') or 'failed'} {term.get('message') or ''}".strip())
                continue
            try:
                answers[name] = parse_probe(str(term.get("message") or ""))
            except KubeInferError as e:
                failed.append(f"{name}: {e.msg}")
        if failed:
            raise KubeInferError("the GPU node probe failed on " + "; ".join(failed))
        return answers
    finally:
        for pod_name in created:
            try:
                kube.delete("v1", "Pod", pod_name, namespace)
            except ApiError:
                pass  # a leftover probe pod ends by itself; the answer matters more than its cleanup


def probe_options(params: Mapping[str, Any]) -> dict[str, Any]:
    """The probe_* module options (PROBE_ARG_SPEC), checked, as probe_nodes() takes them."""
    if params["probe_timeout"] <= 0:
        raise KubeInferError(f"probe_timeout: must be a positive number of seconds, got {params['probe_timeout']}")
    if not params["probe_image"]:
        raise KubeInferError("probe_image: must not be empty")
    check_namespace(params["probe_namespace"], "probe_namespace")
    return {"namespace": params["probe_namespace"], "image": params["probe_image"], "timeout": float(params["probe_timeout"])}
