#!/usr/bin/env python3
"""What NFD, the GPU Operator, its operands and the kubelet would do on the simulated GPU nodes.

Usage: gpu_sim.py start | stop | status | run
       gpu_sim.py hardware NODE [--host-driver VERSION|none] [--gpus N] [--product P]
                               [--memory-mib M] [--cuda X.Y]   (prints the node's entry)
       gpu_sim.py init-hardware < "NAME gpu|gpudrv|cpu" lines    (cluster.sh, keeps entries)

kwok runs no container, so nothing inside the real chart's pods (gpu-operator v26.7.0 with its NFD
0.19.0 subchart) ever acts. This loop, about once a second, plays their part from the node's
simulated hardware, kept outside the API in $STATE_DIR/gpu-hardware.json and re-read every loop.
Each rule names the upstream file it imitates (NVIDIA/gpu-operator v26.7.0, NVIDIA/k8s-device-plugin
v0.20.0, kubernetes-sigs/node-feature-discovery v0.19.0); no upstream code is copied.

1 NFD worker+master (nfd source/pci/pci.go, pkg/nfd-master/nfd-master.go): on a node with a Ready
  worker pod, while an nfd-master Deployment is available, write feature.node.kubernetes.io/
  pci-<deviceLabelFields>.present=true per whitelisted device class (config from the worker's
  ConfigMap), and track the labels it owns in the annotation nfd.node.kubernetes.io/feature-labels.
2 Operator node labelling (controllers/nodelabeling_controller.go, controllers/state_manager.go),
  while the gpu-operator Deployment is Available and a ClusterPolicy exists: nvidia.com/gpu.present
  from the three NFD PCI labels, the container-workload gpu.deploy.* labels, gpu.deploy.mig-manager
  and mig.config=all-disabled on MIG-capable GPUs.
3 Operand DaemonSets (controllers/state_manager.go isStateEnabled, assets/*/0*_daemonset.yaml):
  created from the ClusterPolicy spec with the real names, selectors and init containers, owned
  by the ClusterPolicy; deleted when the operand is disabled. The real DaemonSet controller makes
  the pods; their template carries kubeinfer.io/sim-kubelet=gpu-sim so that kwok leaves them to us.
4 Kubelet for the operand pods: Ready when the init containers' preconditions hold on the node
  (driver: host driver or a Ready driver pod; toolkit; device plugin), else Pending with the blocked
  init container waiting and saying why (cmd/nvidia-validator/main.go). The driver pod crash-loops
  on a node whose host driver already holds the kernel module.
5 Device plugin (k8s-device-plugin api/config/v1, README): Ready pod -> capacity/allocatable
  nvidia.com/gpu = GPUs x time-slicing replicas; MIG "mixed" with mig.config=all-<profile> applied
  -> nvidia.com/mig-<profile>. Removed when no device-plugin pod is Ready on the node.
6 GFD (k8s-device-plugin internal/lm/resource.go, nvml.go): product (-SHARED when shared), memory,
  count, replicas, sharing-strategy, mig.strategy, mig/mps.capable, cuda.driver.* labels, published
  through nfd-master (assets/gpu-feature-discovery: features.d / NodeFeature) so NFD owns them;
  withdrawn once neither a GFD pod on the node nor a GFD DaemonSet is left (internal/lm/output.go).
7 ClusterPolicy status (controllers/object_controls.go isDaemonSetReady,
  controllers/clusterpolicy_controller.go, internal/conditions/clusterpolicy.go).
8 nfd-master -prune (post-delete Job; pkg/nfd-master/nfd-master.go prune): removes the labels
  listed in the feature-labels annotation and the nfd.node.kubernetes.io/* annotations, then the pod
  Succeeds. Operator-written labels stay, as on a real cluster once the operator is gone.
9 The collection's gpu-node-probe pods: Succeeded with the termination message
  "nvidia-pci=<classes>\\nnvidia-smi=<path|none>\\ndriver=<version|none>".

Environment: KUBEINFER_CACHE, KUBEINFER_CLUSTER, KWOK_WORKDIR (as cluster.sh); GPU_SIM_INTERVAL (1).
State: $KWOK_WORKDIR/kubeinfer-$KUBEINFER_CLUSTER/{gpu-hardware.json,gpu-sim.pid,gpu-sim.log}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from hostproc import HostProcess, cluster_name, kubectl, state_dir, workdir
from kubeapi import KubeApi

KUBECONFIG = workdir() / "clusters" / cluster_name() / "kubeconfig.yaml"
STATE = state_dir()
PROC = HostProcess(STATE, "gpu-sim")
HARDWARE, BEAT = STATE / "gpu-hardware.json", STATE / "gpu-sim.beat"
INTERVAL = float(os.environ.get("GPU_SIM_INTERVAL") or 1)
SIM = {"kubeinfer.io/sim-kubelet": "gpu-sim"}
NFD_NS, NFD_LABELS = "feature.node.kubernetes.io", "nfd.node.kubernetes.io/feature-labels"
GPU_PCI_LABELS = [f"{NFD_NS}/pci-{x}.present" for x in ("10de", "0302_10de", "0300_10de")]
PRESENT, DEPLOY = "nvidia.com/gpu.present", "nvidia.com/gpu.deploy."
CONTAINER_STATE_LABELS = [DEPLOY + x for x in ("driver", "gpu-feature-discovery", "container-toolkit", "device-plugin",
                                               "dcgm", "dcgm-exporter", "node-status-exporter", "operator-validator", "client")]
MIG_MANAGER = DEPLOY + "mig-manager"
# Every gpu.deploy.* key the ClusterPolicy stack knows (state_manager.go gpuStateLabels, all workload configs).
ALL_STATE_LABELS = CONTAINER_STATE_LABELS + [MIG_MANAGER] + [DEPLOY + x for x in (
    "sandbox-device-plugin", "sandbox-validator", "vfio-manager", "kata-manager", "cc-manager", "vgpu-manager",
    "vgpu-device-manager", "kata-sandbox-device-plugin")]
# state, DaemonSet, spec key, enabled by default, extra template labels, node selector, init containers
# (name, precondition), containers. From state_manager.go (order, isStateEnabled) and assets/*.
TV = ("toolkit-validation", "toolkit")
OPERANDS: list[tuple[str, str, str, bool, dict[str, str], dict[str, str], list[tuple[str, str]], list[str]]] = [
    ("state-driver", "nvidia-driver-daemonset", "driver", True,
     {"app.kubernetes.io/component": "nvidia-driver", "nvidia.com/precompiled": "false"},
     {DEPLOY + "driver": "true"}, [("k8s-driver-manager", "")], ["nvidia-driver-ctr"]),
    ("state-container-toolkit", "nvidia-container-toolkit-daemonset", "toolkit", True, {},
     {DEPLOY + "container-toolkit": "true"}, [("driver-validation", "driver")], ["nvidia-container-toolkit-ctr"]),
    ("state-operator-validation", "nvidia-operator-validator", "validator", True, {"app.kubernetes.io/part-of": "gpu-operator"},
     {DEPLOY + "operator-validator": "true"},
     [("driver-validation", "driver"), TV, ("cuda-validation", "toolkit"), ("plugin-validation", "plugin")],
     ["nvidia-operator-validator"]),
    ("state-device-plugin", "nvidia-device-plugin-daemonset", "devicePlugin", True, {},
     {DEPLOY + "device-plugin": "true"}, [TV, ("config-manager-init", "")], ["nvidia-device-plugin", "config-manager"]),
    ("state-mps-control-daemon", "nvidia-device-plugin-mps-control-daemon", "devicePlugin", True, {},
     {DEPLOY + "device-plugin": "true", "nvidia.com/mps.capable": "true"}, [TV], ["mps-control-daemon-ctr"]),
    ("state-dcgm", "nvidia-dcgm", "dcgm", False, {}, {DEPLOY + "dcgm": "true"}, [TV], ["nvidia-dcgm-ctr"]),
    ("state-dcgm-exporter", "nvidia-dcgm-exporter", "dcgmExporter", True, {},
     {DEPLOY + "dcgm-exporter": "true"}, [TV], ["nvidia-dcgm-exporter"]),
    ("gpu-feature-discovery", "gpu-feature-discovery", "gfd", True, {"app.kubernetes.io/part-of": "nvidia-gpu"},
     {DEPLOY + "gpu-feature-discovery": "true"}, [TV, ("config-manager-init", "")], ["gpu-feature-discovery", "config-manager"]),
    ("state-mig-manager", "nvidia-mig-manager", "migManager", True, {}, {MIG_MANAGER: "true"}, [TV], ["nvidia-mig-manager"]),
    ("state-node-status-exporter", "nvidia-node-status-exporter", "nodeStatusExporter", False, {},
     {DEPLOY + "node-status-exporter": "true"}, [], ["nvidia-node-status-exporter"]),
]
WAIT_REASON = {"driver": ("WaitingForDriver", "no NVIDIA driver on the node: no host driver and no Ready driver pod"),
               "toolkit": ("WaitingForToolkit", "the NVIDIA container toolkit is not ready on the node"),
               "plugin": ("WaitingForDevicePlugin", "the NVIDIA device plugin is not ready on the node")}


def log(msg: str) -> None:
    print(f"[gpu-sim {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Api(KubeApi):
    """The local cluster's API server (kubeapi.py), plus a per-pass cache of ConfigMaps."""

    def __init__(self) -> None:
        super().__init__(KUBECONFIG, kubectl(), STATE, "gpu-sim-client")
        self.cache: dict[tuple[str, str], Any] = {}


def labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def pod_ready(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def available(deploys: list[dict[str, Any]]) -> bool:
    return any(c["type"] == "Available" and c["status"] == "True"
               for d in deploys for c in d.get("status", {}).get("conditions") or [])


def cfg_yaml(api: Api, ns: str, name: str, key: str | None) -> Any:
    """Key KEY (or the only key) of ConfigMap NS/NAME, parsed as YAML; read once per pass."""
    if (ns, name) not in api.cache:
        api.cache[(ns, name)] = api.call("GET", f"/api/v1/namespaces/{ns}/configmaps/{name}") if ns and name else None
    data = (api.cache[(ns, name)] or {}).get("data") or {}
    if key is None and len(data) == 1:
        key = next(iter(data))
    return yaml.safe_load(data.get(key or "", "") or "{}") or {}


# --- the hardware file ---------------------------------------------------------------------

def load_hw() -> dict[str, dict[str, Any]]:
    try:
        return json.loads(HARDWARE.read_text()).get("nodes") or {}
    except (OSError, ValueError):
        return {}


def save_hw(nodes: dict[str, dict[str, Any]]) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    tmp = HARDWARE.with_suffix(".tmp")
    rows = ",\n".join(f" {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(nodes.items()))
    tmp.write_text('{"nodes": {\n' + rows + "\n}}\n")
    tmp.replace(HARDWARE)


def gpu_entry(gpus: int, product: str, memory: int, host_driver: str | None, cuda: str) -> dict[str, Any]:
    return {"pci": [{"vendor": "10de", "class": "0302"}] * gpus, "gpus": gpus, "product": product,
            "memory_mib": memory, "host_driver": host_driver, "cuda": cuda}


def init_hardware() -> None:
    """Add an entry for each 'NAME KIND' line on stdin that has none; drop entries of other nodes."""
    env = os.environ.get
    have, want = load_hw(), {}
    for line in sys.stdin.read().split("\n"):
        if not line.strip():
            continue
        name, kind = line.split()
        want[name] = have.get(name) or ({"pci": [], "gpus": 0} if kind == "cpu" else gpu_entry(
            int(env("GPU_PER_NODE") or 8), env("GPU_PRODUCT") or "NVIDIA-A100-SXM4-80GB", int(env("GPU_MEMORY") or 81920),
            (env("HOST_DRIVER_VERSION") or "550.54.15") if kind == "gpudrv" else None, env("CUDA_VERSION") or "12.4"))
    save_hw(want)


# --- the rules, one pass -------------------------------------------------------------------

class Pass:
    def __init__(self, api: Api) -> None:
        self.api, self.hw = api, load_hw()
        api.cache.clear()
        # Only the nodes whose hardware is known (cluster.sh's): a node a test creates with its own labels and
        # allocatable GPUs stands for a machine outside this simulation, and is left as the test made it.
        self.nodes = {n["metadata"]["name"]: n for n in api.items("/api/v1/nodes") if n["metadata"]["name"] in self.hw}
        self.labels = {name: dict(labels(n)) for name, n in self.nodes.items()}
        self.notes = {name: dict(n["metadata"].get("annotations") or {}) for name, n in self.nodes.items()}
        self.sim_pods = api.items("/api/v1/pods?labelSelector=kubeinfer.io%2Fsim-kubelet%3Dgpu-sim")
        self.nfd_pods = api.items("/api/v1/pods?labelSelector=app.kubernetes.io%2Fname%3Dnode-feature-discovery")
        self.probes = api.items("/api/v1/pods?labelSelector=app.kubernetes.io%2Fcomponent%3Dgpu-node-probe")
        operator = api.items("/apis/apps/v1/deployments?labelSelector=app.kubernetes.io%2Fcomponent%3Dgpu-operator")
        masters = api.items("/apis/apps/v1/deployments?labelSelector=app.kubernetes.io%2Fname%3D"
                            "node-feature-discovery%2Crole%3Dmaster")
        self.master_up, self.operator_up = available(masters), available(operator)
        self.ns = operator[0]["metadata"]["namespace"] if operator else ""
        cps = api.call("GET", "/apis/nvidia.com/v1/clusterpolicies")
        self.cp = next(iter((cps or {}).get("items") or []), None)
        self.spec: dict[str, Any] = (self.cp or {}).get("spec") or {}
        self.dss = {d["metadata"]["name"]: d for d in api.items(f"/apis/apps/v1/namespaces/{self.ns}/daemonsets")} if self.ns else {}

    def enabled(self, key: str, default: bool) -> bool:
        if key == "validator":
            return True
        value = (self.spec.get(key) or {}).get("enabled")
        return default if value is None else bool(value)

    def operand_pod(self, ds: str, node: str) -> dict[str, Any] | None:
        # Any namespace: the operand pods outlive the operator Deployment during an uninstall.
        return next((p for p in self.sim_pods if p["spec"].get("nodeName") == node
                     and labels(p).get("app") == ds and not p["metadata"].get("deletionTimestamp")), None)

    def run(self) -> None:
        self.nfd_worker()
        if self.cp and self.operator_up:
            self.operator_labels()
            self.operand_daemonsets()
        self.mig_manager()
        self.kubelet()
        self.gfd()
        self.prune()
        self.flush_labels()
        self.device_plugin()
        if self.cp and self.operator_up:
            self.cluster_policy_status()
        self.node_probes()

    def flush_labels(self) -> None:
        for name, node in self.nodes.items():
            old_l, old_a = labels(node), node["metadata"].get("annotations") or {}
            patch_l = {k: v for k, v in self.labels[name].items() if old_l.get(k) != v}
            patch_l.update({k: None for k in old_l if k not in self.labels[name]})
            patch_a = {k: v for k, v in self.notes[name].items() if old_a.get(k) != v}
            patch_a.update({k: None for k in old_a if k not in self.notes[name]})
            if patch_l or patch_a:
                log(f"node {name}: labels {patch_l} annotations {patch_a}")
                self.api.call("PATCH", f"/api/v1/nodes/{name}", {"metadata": {"labels": patch_l, "annotations": patch_a}})

    def publish(self, node: str, owned_by: str, want: dict[str, str]) -> None:
        """nfd-master: replace the labels of one source (nvidia.com/* for GFD, the rest for the worker)."""
        tracked = [k if "/" in k else f"{NFD_NS}/{k}" for k in self.notes[node].get(NFD_LABELS, "").split(",") if k]
        mine = [k for k in tracked if k.startswith("nvidia.com/") == (owned_by == "gfd")]
        for key in mine:
            if key not in want:
                self.labels[node].pop(key, None)
        self.labels[node].update(want)
        keys = sorted({k for k in tracked if k not in mine} | set(want))
        short = [k.removeprefix(NFD_NS + "/") for k in keys]
        if short:
            self.notes[node][NFD_LABELS] = ",".join(short)
        else:
            self.notes[node].pop(NFD_LABELS, None)

    def nfd_worker(self) -> None:
        if not self.master_up:
            return
        for pod in self.nfd_pods:
            node = pod["spec"].get("nodeName")
            if labels(pod).get("role") != "worker" or node not in self.nodes or not pod_ready(pod) \
                    or pod["metadata"].get("deletionTimestamp"):
                continue
            conf: dict[str, Any] = {}
            for vol in pod["spec"].get("volumes") or []:
                if "configMap" in vol:
                    conf = conf or cfg_yaml(self.api, pod["metadata"]["namespace"], vol["configMap"]["name"], "nfd-worker.conf")
            pci = (conf.get("sources") or {}).get("pci") or {}
            classes = pci.get("deviceClassWhitelist") or ["03", "0b40", "12"]
            fields = [f for f in ("class", "vendor", "device", "subsystem_vendor", "subsystem_device")
                      if f in (pci.get("deviceLabelFields") or [])] or ["class", "vendor"]
            want = {f"{NFD_NS}/pci-{'_'.join(dev.get(f, '') for f in fields)}.present": "true"
                    for dev in self.hw.get(node, {}).get("pci") or []
                    if any(dev.get("class", "").startswith(c.lower()) for c in classes)}
            self.publish(node, "worker", want)

    def operator_labels(self) -> None:
        mig = self.spec.get("migManager") or {}
        for lab in self.labels.values():
            gpu = any(lab.get(k) == "true" for k in GPU_PCI_LABELS)
            if gpu and lab.get(PRESENT) != "true":
                lab[PRESENT] = "true"
            elif not gpu and lab.get(PRESENT) == "true":
                lab[PRESENT] = "false"
            if lab.get(PRESENT) != "true" or lab.get(DEPLOY + "operands") == "false":
                for key in ALL_STATE_LABELS:
                    lab.pop(key, None)
                continue
            for key in ALL_STATE_LABELS:  # sandbox (vm-*) workload configs are not modelled
                if key not in CONTAINER_STATE_LABELS and key != MIG_MANAGER:
                    lab.pop(key, None)
            for key in CONTAINER_STATE_LABELS:
                if not lab.get(key):
                    lab[key] = "true"
            product = lab.get("nvidia.com/gpu.product", "").lower()
            capable = lab["nvidia.com/mig.capable"] == "true" if "nvidia.com/mig.capable" in lab else \
                any(x in product for x in ("a100", "h100", "a30"))
            if capable and MIG_MANAGER not in lab:
                lab[MIG_MANAGER] = "true"
            if (mig.get("enabled", True) and capable and not lab.get("nvidia.com/mig.config")
                    and (mig.get("config") or {}).get("default") == "all-disabled"):
                lab["nvidia.com/mig.config"] = "all-disabled"

    def operand_daemonsets(self) -> None:
        ds_spec = self.spec.get("daemonsets") or {}
        owner = {"apiVersion": "nvidia.com/v1", "kind": "ClusterPolicy", "name": self.cp["metadata"]["name"],
                 "uid": self.cp["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
        for _state, name, key, default, extra, selector, inits, ctrs in OPERANDS:
            have = self.dss.get(name)
            if not self.enabled(key, default):
                if have:
                    log(f"deleting DaemonSet {name}: {key} disabled")
                    self.api.call("DELETE", f"/apis/apps/v1/namespaces/{self.ns}/daemonsets/{name}")
                continue
            s = self.spec.get(key) or {}
            image = f"{s.get('repository', 'nvcr.io/nvidia')}/{s.get('image', name)}:{s.get('version', 'latest')}"
            tpl_labels = {"app": name, **extra, **SIM, **(ds_spec.get("labels") or {})}
            body = {"apiVersion": "apps/v1", "kind": "DaemonSet",
                    "metadata": {"name": name, "namespace": self.ns, "labels": {"app": name, **extra},
                                 "ownerReferences": [owner]},
                    "spec": {"selector": {"matchLabels": {"app": name, **{k: v for k, v in extra.items() if "part-of" in k}}},
                             "updateStrategy": {"type": "OnDelete" if key == "driver" else
                                                ds_spec.get("updateStrategy") or "RollingUpdate"},
                             "template": {"metadata": {"labels": tpl_labels},
                                          "spec": {"nodeSelector": selector, "tolerations": ds_spec.get("tolerations") or [],
                                                   "priorityClassName": ds_spec.get("priorityClassName") or "system-node-critical",
                                                   "initContainers": [{"name": n, "image": image} for n, _ in inits],
                                                   "containers": [{"name": n, "image": image} for n in ctrs]}}}}
            digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
            body["metadata"]["annotations"] = {"kubeinfer.io/sim-spec-hash": digest}
            if ((have or {}).get("metadata", {}).get("annotations") or {}).get("kubeinfer.io/sim-spec-hash") != digest:
                log(f"applying DaemonSet {self.ns}/{name}")
                self.api.call("PATCH", f"/apis/apps/v1/namespaces/{self.ns}/daemonsets/{name}?fieldManager=gpu-sim&force=true",
                              body, "application/apply-patch+yaml")

    def driver(self, node: str) -> str | None:
        """The driver version usable on NODE: the host's, else that of a Ready driver pod."""
        host = self.hw.get(node, {}).get("host_driver")
        if host:
            return host
        pod = self.operand_pod("nvidia-driver-daemonset", node)
        if pod and pod_ready(pod):
            return (self.spec.get("driver") or {}).get("version") or "unknown"
        return None

    def holds(self, cond: str, node: str) -> bool:
        if cond == "driver":
            return self.driver(node) is not None
        if cond == "toolkit":  # toolkit disabled: a host toolkit is assumed
            pod = self.operand_pod("nvidia-container-toolkit-daemonset", node)
            return self.holds("driver", node) and (not self.enabled("toolkit", True) or bool(pod and pod_ready(pod)))
        if cond == "plugin":
            pod = self.operand_pod("nvidia-device-plugin-daemonset", node)
            return not self.enabled("devicePlugin", True) or bool(pod and pod_ready(pod))
        return True

    def kubelet(self) -> None:
        by_ds = {o[1]: o for o in OPERANDS}
        for pod in self.sim_pods:
            node, md = pod["spec"].get("nodeName"), pod["metadata"]
            op = by_ds.get(labels(pod).get("app", ""))
            if not node or md.get("deletionTimestamp") or not op:
                continue
            inits = [c["name"] for c in pod["spec"].get("initContainers") or []]
            ctrs = [c["name"] for c in pod["spec"]["containers"]]
            image = pod["spec"]["containers"][0]["image"]
            blocked = next(((n, c) for n, c in op[6] if n in inits and not self.holds(c, node)), None)
            crash = None
            host = self.hw.get(node, {}).get("host_driver")
            if op[1] == "nvidia-driver-daemonset" and host:
                crash = f"NVIDIA kernel module already loaded by the host driver {host}; refusing to install over it"
            t = now()
            done = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": t, "finishedAt": t}}
            if blocked:
                i = inits.index(blocked[0])
                reason, msg = WAIT_REASON[blocked[1]]
                init_states = [done] * i + [{"waiting": {"reason": reason, "message": f"{blocked[0]}: {msg}"}}] + \
                    [{"waiting": {"reason": "PodInitializing"}}] * (len(inits) - i - 1)
                ctr_states = [{"waiting": {"reason": "PodInitializing"}}] * len(ctrs)
                # A kubelet never moves a pod back to Pending: one that ran keeps Running, not Ready.
                phase = "Running" if pod["status"].get("phase") == "Running" else "Pending"
                ready = initialized = False
            else:
                init_states, phase, initialized = [done] * len(inits), "Running", True
                ctr_states = [{"running": {"startedAt": t}}] * len(ctrs)
                ready = crash is None
                if crash:
                    ctr_states = [{"waiting": {"reason": "CrashLoopBackOff", "message": crash}}] + ctr_states[1:]
            status = {
                "phase": phase, "hostIP": node_ip(self.nodes.get(node)), "startTime": pod["status"].get("startTime") or t,
                "conditions": [{"type": ty, "status": str(ok), "lastTransitionTime": t} for ty, ok in (
                    ("PodScheduled", True), ("Initialized", initialized), ("ContainersReady", ready), ("Ready", ready))],
                "initContainerStatuses": [{"name": n, "image": image, "imageID": "", "ready": "terminated" in s,
                                           "restartCount": 0, "state": s} for n, s in zip(inits, init_states)],
                "containerStatuses": [{"name": n, "image": image, "imageID": "", "ready": ready, "started": "running" in s,
                                       "restartCount": 0, "state": s} for n, s in zip(ctrs, ctr_states)]}
            if crash:
                status["containerStatuses"][0]["restartCount"] = 1
                status["containerStatuses"][0]["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error",
                                                                              "message": crash, "startedAt": t, "finishedAt": t}}
            if signature(status) != signature(pod["status"]):
                log(f"pod {md['namespace']}/{md['name']} on {node}: {phase} ready={ready} "
                    f"{'blocked in ' + blocked[0] if blocked else crash or ''}")
                self.api.call("PATCH", f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}/status", {"status": status})

    def sharing(self, node: str) -> tuple[int, bool]:
        """(time-slicing replicas of nvidia.com/gpu, renamed) from the device plugin's config."""
        conf = (self.spec.get("devicePlugin") or {}).get("config") or {}
        key = self.labels[node].get("nvidia.com/device-plugin.config") or conf.get("default") or None
        cfg = cfg_yaml(self.api, self.ns, conf.get("name", ""), key) if conf.get("name") else {}
        for res in ((cfg.get("sharing") or {}).get("timeSlicing") or {}).get("resources") or []:
            if res.get("name") == "nvidia.com/gpu":
                return int(res.get("replicas") or 1), bool(res.get("rename"))
        return 1, False

    def mig_profile(self, node: str) -> tuple[str, int] | None:
        """The applied all-<profile> MIG layout and slices per GPU (min of compute slices of 7 and memory)."""
        lab, hw = self.labels[node], self.hw.get(node, {})
        cfg = lab.get("nvidia.com/mig.config", "")
        if lab.get("nvidia.com/mig.config.state") != "success" or not cfg.startswith("all-") or cfg == "all-disabled":
            return None
        try:
            g, mem = cfg[4:].split(".")
            per = min(7 // int(g.rstrip("g")), hw.get("memory_mib", 0) // 1024 // int(mem.rstrip("gb")))
        except ValueError:
            return None
        return (cfg[4:], per) if per > 0 else None

    def mig_manager(self) -> None:
        for node, lab in self.labels.items():
            pod = self.operand_pod("nvidia-mig-manager", node)
            if pod and pod_ready(pod) and lab.get("nvidia.com/mig.config"):
                lab["nvidia.com/mig.config.state"] = "success"  # no real partitioning, so nothing can fail

    def gfd(self) -> None:
        if not self.master_up:
            return
        strategy = (self.spec.get("mig") or {}).get("strategy") or "single"
        # GFD's NodeFeature object is owned by its pod and its DaemonSet (k8s-device-plugin internal/lm/output.go):
        # garbage-collected, and so its labels withdrawn, only once both are gone.
        gfd_ds = self.api.items("/apis/apps/v1/daemonsets?labelSelector=app%3Dgpu-feature-discovery")
        for node in self.nodes:
            pod, hw, drv = self.operand_pod("gpu-feature-discovery", node), self.hw.get(node, {}), self.driver(node)
            if not pod and not gfd_ds:
                self.publish(node, "gfd", {})
            if not pod or not pod_ready(pod) or not drv:
                continue
            replicas, renamed = self.sharing(node)
            product, want = hw.get("product", "unknown"), {}
            mig = self.mig_profile(node)
            if mig and strategy == "mixed":
                want[f"nvidia.com/mig-{mig[0]}.count"] = str(mig[1] * hw.get("gpus", 0))
            parts = (drv.split(".") + ["", ""])[:3]
            cuda = (str(hw.get("cuda") or "12.4").split(".") + ["0"])[:2]
            want.update({
                "nvidia.com/gpu.product": product + ("-SHARED" if replicas > 1 and not renamed else ""),
                "nvidia.com/gpu.memory": str(hw.get("memory_mib", 0)), "nvidia.com/gpu.count": str(hw.get("gpus", 0)),
                "nvidia.com/gpu.replicas": str(replicas),
                "nvidia.com/gpu.sharing-strategy": "time-slicing" if replicas > 1 else "none",
                "nvidia.com/mig.strategy": strategy, "nvidia.com/mps.capable": "false",
                "nvidia.com/mig.capable": str(any(x in product.lower() for x in ("a100", "h100", "a30"))).lower(),
                "nvidia.com/cuda.driver.major": parts[0], "nvidia.com/cuda.driver.minor": parts[1],
                "nvidia.com/cuda.driver.rev": parts[2], "nvidia.com/cuda.runtime.major": cuda[0],
                "nvidia.com/cuda.runtime.minor": cuda[1]})
            self.publish(node, "gfd", want)

    def device_plugin(self) -> None:
        strategy = (self.spec.get("mig") or {}).get("strategy") or "single"
        for name, node in self.nodes.items():
            pod, gpus = self.operand_pod("nvidia-device-plugin-daemonset", name), self.hw.get(name, {}).get("gpus", 0)
            want: dict[str, str] = {}
            if pod and pod_ready(pod) and gpus:
                replicas, mig = self.sharing(name)[0], self.mig_profile(name)
                if mig and strategy == "mixed":
                    want = {"nvidia.com/gpu": "0", f"nvidia.com/mig-{mig[0]}": str(mig[1] * gpus)}
                else:
                    want = {"nvidia.com/gpu": str((mig[1] if mig and strategy == "single" else 1) * gpus * replicas)}
            cur = node.get("status", {}).get("allocatable") or {}
            ours = {k: None for k in cur if k == "nvidia.com/gpu" or k.startswith("nvidia.com/mig-")}
            patch = {**ours, **want}
            if any(cur.get(k) != v for k, v in patch.items()) or any(
                    (node["status"].get("capacity") or {}).get(k) != v for k, v in patch.items()):
                log(f"node {name}: capacity/allocatable {patch}")
                self.api.call("PATCH", f"/api/v1/nodes/{name}/status", {"status": {"capacity": patch, "allocatable": patch}})

    def ds_ready(self, name: str) -> bool:
        """object_controls.go isDaemonSetReady: 0 desired is ready; OnDelete checks the pods themselves."""
        ds = self.dss.get(name)
        if not ds:
            return False
        st = ds.get("status") or {}
        desired = st.get("desiredNumberScheduled", 0)
        if desired == 0:
            return True
        if st.get("numberUnavailable", 0) != 0:
            return False
        if st.get("observedGeneration", 0) < ds["metadata"].get("generation", 0) or st.get("updatedNumberScheduled") != desired:
            return False
        if ds["spec"]["updateStrategy"]["type"] != "OnDelete":
            return st.get("numberAvailable") == desired
        pods = [p for p in self.sim_pods if any(o.get("uid") == ds["metadata"]["uid"] for o in p["metadata"].get("ownerReferences") or [])]
        return bool(pods) and all(p["status"].get("phase") == "Running" and all(
            c.get("ready") for c in p["status"].get("containerStatuses") or []) for p in pods)

    def cluster_policy_status(self) -> None:
        bad = [o[0] for o in OPERANDS if self.enabled(o[2], o[3]) and not self.ds_ready(o[1])]
        old = (self.cp or {}).get("status") or {}
        t = now()
        if bad:
            state = "notReady"
            conds = [("Ready", "False", "Error", ""),
                     ("Error", "True", "OperandNotReady", f"ClusterPolicy is not ready; states not ready: [{' '.join(bad)}]")]
        else:
            state = "ready"
            if not any(k.startswith(NFD_NS + "/") for lab in self.labels.values() for k in lab):
                reason, msg = "NFDLabelsMissing", "No NFD labels found"
            elif not any(lab.get(PRESENT) == "true" for lab in self.labels.values()):
                reason, msg = "NoGPUNodes", "No GPU node found, watching for new nodes to join the cluster."
            else:
                reason, msg = "Reconciled", "ClusterPolicy is ready as all resources have been successfully reconciled"
            conds = [("Ready", "True", reason, msg), ("Error", "False", "Ready", "")]
        prev = {c["type"]: c for c in old.get("conditions") or []}
        conditions = [{"type": ty, "status": st, "reason": r, "message": m,
                       "lastTransitionTime": prev[ty]["lastTransitionTime"] if prev.get(ty, {}).get("status") == st else t}
                      for ty, st, r, m in conds]
        if old.get("state") != state or old.get("namespace") != self.ns or [
                (c["type"], c["status"], c["reason"], c["message"]) for c in old.get("conditions") or []] != conds:
            log(f"ClusterPolicy {self.cp['metadata']['name']}: {state} {conds[1][3] if bad else ''}")
            self.api.call("PATCH", f"/apis/nvidia.com/v1/clusterpolicies/{self.cp['metadata']['name']}/status",
                          {"status": {"state": state, "namespace": self.ns, "conditions": conditions}})

    def prune(self) -> None:
        for pod in self.nfd_pods:
            if labels(pod).get("role") != "prune" or not pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp") \
                    or pod["status"].get("phase") in ("Succeeded", "Failed"):
                continue
            for node in self.nodes:
                for key in self.notes[node].get(NFD_LABELS, "").split(","):
                    if key:
                        self.labels[node].pop(key if "/" in key else f"{NFD_NS}/{key}", None)
                self.notes[node] = {k: v for k, v in self.notes[node].items() if not k.startswith("nfd.node.kubernetes.io/")}
            log(f"nfd-master -prune ({pod['metadata']['name']}): NFD labels removed from every node")
            self.finish(pod, "")

    def node_probes(self) -> None:
        for pod in self.probes:
            node = pod["spec"].get("nodeName")
            if not node or pod["metadata"].get("deletionTimestamp") or pod["status"].get("phase") in ("Succeeded", "Failed"):
                continue
            hw = self.hw.get(node, {})
            drv = hw.get("host_driver")
            pci = ",".join(d.get("class", "") for d in hw.get("pci") or [] if d.get("vendor") == "10de")
            self.finish(pod, f"nvidia-pci={pci}\nnvidia-smi={'/usr/bin/nvidia-smi' if drv else 'none'}\ndriver={drv or 'none'}")

    def finish(self, pod: dict[str, Any], message: str) -> None:
        t, md = now(), pod["metadata"]
        term = {"exitCode": 0, "reason": "Completed", "startedAt": t, "finishedAt": t, **({"message": message} if message else {})}
        status = {"phase": "Succeeded", "startTime": pod["status"].get("startTime") or t,
                  "hostIP": node_ip(self.nodes.get(pod["spec"]["nodeName"])),
                  "conditions": [{"type": ty, "status": st, "lastTransitionTime": t} for ty, st in (
                      ("PodScheduled", "True"), ("Initialized", "True"), ("ContainersReady", "False"), ("Ready", "False"))],
                  "containerStatuses": [{"name": c["name"], "image": c["image"], "imageID": "", "ready": False,
                                         "started": False, "restartCount": 0, "state": {"terminated": term}}
                                        for c in pod["spec"]["containers"]]}
        log(f"pod {md['namespace']}/{md['name']}: Succeeded {message!r}")
        self.api.call("PATCH", f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}/status", {"status": status})


def node_ip(node: dict[str, Any] | None) -> str:
    return next((a["address"] for a in ((node or {}).get("status") or {}).get("addresses") or []
                 if a["type"] == "InternalIP"), "") or "127.0.0.1"


def signature(status: dict[str, Any]) -> Any:
    def states(key: str) -> list[Any]:
        return [(c["name"], c.get("ready"), {k: (v.get("reason"), v.get("message")) for k, v in (c.get("state") or {}).items()})
                for c in status.get(key) or []]
    return (status.get("phase"), sorted((c["type"], c["status"]) for c in status.get("conditions") or []),
            states("initContainerStatuses"), states("containerStatuses"))


# --- the loop ------------------------------------------------------------------------------

def loop() -> None:
    api: Api | None = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        start = time.monotonic()
        try:
            api = api or Api()
            Pass(api).run()
            BEAT.write_text(now() + "\n")
        except Exception as e:  # keep going: the API may be restarting, an object may have just gone
            log(f"pass failed: {e}")
            if isinstance(e, (OSError, subprocess.CalledProcessError)):
                api = None
        time.sleep(max(0.1, INTERVAL - (time.monotonic() - start)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["start", "stop", "status", "run", "hardware", "init-hardware"])
    ap.add_argument("node", nargs="?")
    ap.add_argument("--host-driver")
    ap.add_argument("--gpus", type=int)
    ap.add_argument("--product")
    ap.add_argument("--memory-mib", type=int)
    ap.add_argument("--cuda")
    a = ap.parse_args()
    STATE.mkdir(parents=True, exist_ok=True)
    if a.command == "run":
        loop()
    elif a.command == "start":
        PROC.start_loop(Path(__file__).resolve(), BEAT)
    elif a.command == "stop":
        PROC.stop(timeout=5)
        BEAT.unlink(missing_ok=True)
    elif a.command == "status":
        pid = PROC.pid()
        print(f"gpu_sim: {f'running, pid {pid}' if pid else 'not running'}; log {PROC.logfile}; hardware {HARDWARE}")
        raise SystemExit(0 if pid else 1)
    elif a.command == "init-hardware":
        init_hardware()
    else:
        hw = load_hw()
        if not a.node or a.node not in hw:
            raise SystemExit(f"unknown node {a.node!r}; known: {' '.join(sorted(hw))}")
        entry = hw[a.node]
        if a.host_driver is not None:
            entry["host_driver"] = None if a.host_driver == "none" else a.host_driver
        if a.gpus is not None:
            entry["gpus"] = a.gpus
            entry["pci"] = [{"vendor": "10de", "class": "0302"}] * a.gpus + [d for d in entry.get("pci") or [] if d.get("vendor") != "10de"]
        for field, value in (("product", a.product), ("memory_mib", a.memory_mib), ("cuda", a.cuda)):
            if value is not None:
                entry[field] = value
        save_hw(hw)
        print(json.dumps({a.node: entry}, sort_keys=True))


if __name__ == "__main__":
    main()
