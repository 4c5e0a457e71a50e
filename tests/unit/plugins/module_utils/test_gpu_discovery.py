"""GPU node discovery: NFD labels, the probe pod, its shell script run for real against a fake host tree, and probe_nodes
against the stateful fake API server (pods made with generateName, answered through their termination message)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils import _gpu_discovery as gd
from ansible_collections.kubeinfer.llm.plugins.module_utils._args_common import PROBE_ARG_SPEC
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube

from .fake_api import FakeApiException
from .fake_cluster import FakeCluster, answer_probes, pod_failed, pod_succeeded, probe_pods

PODS = "/api/v1/namespaces/kube-system/pods"
H100_ANSWER = "nvidia-pci=0302\nnvidia-smi=/usr/bin/nvidia-smi\ndriver=550.54.15\n"
BARE_ANSWER = "nvidia-pci=0302,0302\nnvidia-smi=none\ndriver=none\n"
CPU_ANSWER = "nvidia-pci=\nnvidia-smi=none\ndriver=none\n"


def node(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}}, "spec": {},
            "status": {"allocatable": {"cpu": "8"}}}


# -- NFD labels -------------------------------------------------------------------------------------
def test_the_three_nfd_labels_the_operator_keys_on() -> None:
    # gpu-operator v26.7.0 controllers/state_manager.go, gpuNodeLabels
    assert set(gd.NFD_GPU_LABELS) == {"feature.node.kubernetes.io/pci-10de.present",
                                      "feature.node.kubernetes.io/pci-0302_10de.present",
                                      "feature.node.kubernetes.io/pci-0300_10de.present"}


@pytest.mark.parametrize("label", gd.NFD_GPU_LABELS)
def test_any_one_nfd_label_makes_a_gpu_node(label: str) -> None:
    assert gd.nfd_gpu_node(node("gpu-0", {label: "true"})) is True
    assert gd.nfd_gpu_node(node("gpu-0", {label: "false"})) is False


@pytest.mark.parametrize("labels", [
    {},
    {"nvidia.com/gpu.present": "true"},  # written by the operator itself, from the NFD labels
    {"feature.node.kubernetes.io/pci-1af4.present": "true"},  # another vendor
    {"feature.node.kubernetes.io/pci-0302_1002.present": "true"},
])
def test_other_labels_do_not_make_a_gpu_node(labels: dict[str, str]) -> None:
    assert gd.nfd_gpu_node(node("n", labels)) is False
    assert gd.nfd_gpu_node({"metadata": {"name": "n"}}) is False


# -- the pod ----------------------------------------------------------------------------------------
def test_probe_pod_is_pinned_read_only_and_tolerates_everything() -> None:
    pod = gd.probe_pod("gpu-7", "probes", "registry.example/validator:v1", "run123")
    meta, spec = pod["metadata"], pod["spec"]
    assert "name" not in meta and meta["generateName"] == gd.PROBE_PREFIX
    assert meta["namespace"] == "probes" and meta["labels"][gd.RUN_LABEL] == "run123"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "kubeinfer.llm"
    assert spec["nodeName"] == "gpu-7", "the scheduler must not pick another node"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["image"] == "registry.example/validator:v1"
    assert container["command"] == ["sh", "-c", gd.PROBE_SCRIPT]
    assert container["terminationMessagePolicy"] == "File"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert all(m["readOnly"] is True for m in mounts.values())
    volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    assert {mounts[n]["mountPath"]: path for n, path in volumes.items()} == {"/host": "/", "/host-sys": "/sys"}


# -- the answer -------------------------------------------------------------------------------------
def test_parse_probe() -> None:
    assert gd.parse_probe(H100_ANSWER) == {"nvidia_pci": ["0302"], "nvidia_smi": "/usr/bin/nvidia-smi", "driver": "550.54.15"}
    assert gd.parse_probe(BARE_ANSWER) == {"nvidia_pci": ["0302", "0302"], "nvidia_smi": None, "driver": None}
    assert gd.parse_probe(CPU_ANSWER) == {"nvidia_pci": [], "nvidia_smi": None, "driver": None}
    assert gd.parse_probe("  driver=none \r\nnvidia-smi=none\nnoise\nnvidia-pci=0300\n")["nvidia_pci"] == ["0300"]


@pytest.mark.parametrize("message, missing", [
    ("", "nvidia-pci, nvidia-smi, driver"),
    ("nvidia-pci=0302\nnvidia-smi=none\n", "driver"),
    ("sh: sed: not found", "nvidia-pci, nvidia-smi, driver"),
])
def test_parse_probe_refuses_an_incomplete_answer(message: str, missing: str) -> None:
    with pytest.raises(KubeInferError, match=f"without {missing}$"):
        gd.parse_probe(message)


def test_host_driver_needs_nvidia_smi_and_the_kernel_module() -> None:
    assert gd.host_driver(gd.parse_probe(H100_ANSWER)) is True
    assert gd.host_driver({"nvidia_pci": ["0302"], "nvidia_smi": "/usr/bin/nvidia-smi", "driver": None}) is False
    assert gd.host_driver({"nvidia_pci": ["0302"], "nvidia_smi": None, "driver": "550.54.15"}) is False
    assert gd.host_driver(gd.parse_probe(BARE_ANSWER)) is False


# -- PROBE_SCRIPT, run by sh against a fake host -----------------------------------------------------
PROPRIETARY_VERSION = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n"
                       "GCC version:  gcc version 12.3.0 (Ubuntu 12.3.0-1ubuntu1~22.04)\n")
# The open kernel module's first line (the flavour NVIDIA installs by default for Turing and later since R560).
OPEN_VERSION = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.172.08  Release Build  "
                "(dvs-builder@U16-I3-B03-4-3)  Tue Jul  8 17:53:53 UTC 2025\nGCC version:  gcc version 13.3.0\n")


class FakeHost:
    """A host tree: sysfs PCI devices, files under /, and /proc/driver/nvidia/version."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sys = root / "sys"
        self.fs = root / "root"
        self.version = root / "proc-driver-nvidia-version"
        self.message = root / "termination-log"
        (self.sys / "bus" / "pci" / "devices").mkdir(parents=True)
        self.fs.mkdir()

    def pci(self, address: str, vendor: str, klass: str) -> None:
        dev = self.sys / "bus" / "pci" / "devices" / address
        dev.mkdir()
        (dev / "vendor").write_text(vendor + "\n")
        (dev / "class").write_text(klass + "\n")

    def file(self, path: str, content: str = "#!/bin/sh\n", mode: int = 0o755) -> None:
        target = self.fs / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(mode)

    def run(self) -> dict[str, Any]:
        script = gd.PROBE_SCRIPT
        for old, new in (("/host-sys/", f"{self.sys}/"), ('"/host$p"', f'"{self.fs}$p"'),
                         ("/proc/driver/nvidia/version", str(self.version)), ("/dev/termination-log", str(self.message))):
            assert old in script, f"the probe script no longer uses {old}"
            script = script.replace(old, new)
        assert "/host" not in script.replace(str(self.root), ""), "a host path was left unreplaced"
        done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30, check=False,
                              env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        assert done.returncode == 0 and done.stderr == "", done.stderr
        return gd.parse_probe(self.message.read_text())


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    if shutil.which("sh") is None:
        pytest.skip("no sh")
    return FakeHost(tmp_path)


def test_script_finds_nvidia_3d_controller_host_nvidia_smi_and_module(host: FakeHost) -> None:
    host.pci("0000:3b:00.0", "0x10de", "0x030200")
    host.pci("0000:00:1f.0", "0x8086", "0x060100")
    host.file("/usr/bin/nvidia-smi")
    host.version.write_text(PROPRIETARY_VERSION)
    answer = host.run()
    assert answer == {"nvidia_pci": ["0302"], "nvidia_smi": "/usr/bin/nvidia-smi", "driver": "550.54.15"}
    assert gd.host_driver(answer) is True


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_script_reads_the_open_kernel_module_version(host: FakeHost, arch: str) -> None:
    host.pci("0000:3b:00.0", "0x10de", "0x030200")
    host.file("/usr/bin/nvidia-smi")
    host.version.write_text(OPEN_VERSION.replace("x86_64", arch))
    assert host.run()["driver"] == "570.172.08", "not the digits of the architecture"


def test_script_without_any_nvidia_device(host: FakeHost) -> None:
    host.pci("0000:00:02.0", "0x8086", "0x030000")
    host.pci("0000:00:1f.0", "0x8086", "0x060100")
    assert host.run() == {"nvidia_pci": [], "nvidia_smi": None, "driver": None}


def test_script_ignores_a_non_nvidia_vendor_with_a_gpu_class(host: FakeHost) -> None:
    host.pci("0000:03:00.0", "0x1002", "0x030200")  # AMD, 3D controller
    host.pci("0000:04:00.0", "0x10de", "0x030000")  # NVIDIA VGA
    host.pci("0000:05:00.0", "0x10de", "0x030200")
    assert host.run()["nvidia_pci"] == ["0300", "0302"]


def test_script_takes_an_empty_nvidia_smi_for_none(host: FakeHost) -> None:
    host.pci("0000:3b:00.0", "0x10de", "0x030200")
    host.file("/usr/bin/nvidia-smi", content="")  # a placeholder file, as some images leave behind
    host.version.write_text(PROPRIETARY_VERSION)
    answer = host.run()
    assert answer["nvidia_smi"] is None and answer["driver"] == "550.54.15"
    assert gd.host_driver(answer) is False


def test_script_skips_a_non_executable_nvidia_smi_and_searches_on(host: FakeHost) -> None:
    host.pci("0000:3b:00.0", "0x10de", "0x030200")
    host.file("/usr/bin/nvidia-smi", mode=0o644)
    host.file("/opt/bin/nvidia-smi")  # the last of the validator's search paths
    assert host.run()["nvidia_smi"] == "/opt/bin/nvidia-smi"


def test_script_reports_unknown_for_an_unreadable_version_line(host: FakeHost) -> None:
    host.pci("0000:3b:00.0", "0x10de", "0x030200")
    host.version.write_text("something else\n")
    assert host.run()["driver"] == "unknown"


# -- probe_nodes against the fake API server ----------------------------------------------------------
def deletes(cluster: FakeCluster) -> list[str]:
    return [c["path"].rsplit("/", 1)[-1] for c in cluster.calls if c["method"] == "DELETE"]


def test_probe_nodes_answers_per_node_and_deletes_its_pods() -> None:
    cluster = FakeCluster()
    answer_probes(cluster, {"gpu-0": pod_succeeded(H100_ANSWER), "cpu-0": pod_succeeded(CPU_ANSWER)}, after_lists=1)
    kube, slept = Kube(cluster), []
    answers = gd.probe_nodes(kube, ["gpu-0", "cpu-0", "gpu-0"], "kube-system", "img:1", 60, interval=2, sleep=slept.append)
    assert answers == {"gpu-0": {"nvidia_pci": ["0302"], "nvidia_smi": "/usr/bin/nvidia-smi", "driver": "550.54.15"},
                       "cpu-0": {"nvidia_pci": [], "nvidia_smi": None, "driver": None}}
    assert slept == [2], "one wait between the two polls"
    assert kube.requests == {"create": 2, "list": 2, "delete": 2}, "one create and one delete per node, one list per poll"
    created = [c["body"] for c in cluster.calls if c["method"] == "POST"]
    assert sorted(b["spec"]["nodeName"] for b in created) == ["cpu-0", "gpu-0"]
    assert {b["spec"]["containers"][0]["image"] for b in created} == {"img:1"}
    run_ids = {b["metadata"]["labels"][gd.RUN_LABEL] for b in created}
    assert len(run_ids) == 1
    lists = [c for c in cluster.calls if c["method"] == "GET"]
    assert {c["query"]["labelSelector"] for c in lists} == {f"{gd.RUN_LABEL}={run_ids.pop()}"}
    assert probe_pods(cluster) == [] and len(deletes(cluster)) == 2


def test_probe_nodes_of_no_node_makes_no_request() -> None:
    cluster = FakeCluster()
    assert gd.probe_nodes(Kube(cluster), [], "kube-system", "img:1", 5) == {}
    assert cluster.calls == []


def test_probe_run_ignores_pods_of_another_run() -> None:
    cluster = FakeCluster()
    other = gd.probe_pod("gpu-0", "kube-system", "img", "otherrun")
    other["metadata"]["name"] = "kubeinfer-gpu-probe-old"
    cluster.add(other)  # a leftover of an earlier run, never finished
    answer_probes(cluster, {"gpu-0": pod_succeeded(BARE_ANSWER)})
    answers = gd.probe_nodes(Kube(cluster), ["gpu-0"], "kube-system", "img:1", 5, sleep=lambda s: None)
    assert answers["gpu-0"]["nvidia_pci"] == ["0302", "0302"]
    assert [p["metadata"]["name"] for p in probe_pods(cluster)] == ["kubeinfer-gpu-probe-old"], "only its own pods are deleted"


def test_failed_probe_names_the_node_and_still_deletes_every_pod() -> None:
    cluster = FakeCluster()
    answer_probes(cluster, {"gpu-0": pod_succeeded(H100_ANSWER), "gpu-1": pod_failed(126, "ContainerCannotRun", "sh: not found")})
    with pytest.raises(KubeInferError) as err:
        gd.probe_nodes(Kube(cluster), ["gpu-0", "gpu-1"], "kube-system", "img:1", 5, sleep=lambda s: None)
    assert err.value.msg == "the GPU node probe failed on gpu-1: exit code 126, ContainerCannotRun sh: not found"
    assert probe_pods(cluster) == [] and len(deletes(cluster)) == 2


def test_malformed_answer_fails_naming_the_node() -> None:
    cluster = FakeCluster()
    answer_probes(cluster, {"gpu-0": pod_succeeded("nvidia-pci=0302\n")})
    with pytest.raises(KubeInferError, match=r"^the GPU node probe failed on gpu-0: the probe answered .*without nvidia-smi, driver"):
        gd.probe_nodes(Kube(cluster), ["gpu-0"], "kube-system", "img:1", 5, sleep=lambda s: None)
    assert probe_pods(cluster) == []


def test_timeout_names_the_nodes_without_an_answer_and_deletes_every_pod() -> None:
    cluster = FakeCluster()
    answer_probes(cluster, {"gpu-0": pod_succeeded(H100_ANSWER)})  # gpu-1 and gpu-2 never answer

    def unschedulable(pod: dict[str, Any]) -> None:
        if pod["spec"]["nodeName"] == "gpu-2":
            pod["status"] = {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "node is full"}]}

    cluster.on_create.append(unschedulable)
    with pytest.raises(KubeInferError) as err:
        gd.probe_nodes(Kube(cluster), ["gpu-2", "gpu-1", "gpu-0"], "kube-system", "mirror/validator:x", 0, sleep=lambda s: None)
    msg = err.value.msg
    assert msg.startswith("probe_timeout: timed out after 0s waiting for the GPU node probe pods in kube-system: "
                          "no answer yet from gpu-1, gpu-2 (pod kubeinfer-gpu-probe-")
    assert "unschedulable: node is full" in msg and "gpu-0" not in msg
    assert msg.endswith("probe_image mirror/validator:x must be pullable on every node")
    assert probe_pods(cluster) == [] and len(deletes(cluster)) == 3


def test_a_failed_create_deletes_the_pods_already_made() -> None:
    cluster = FakeCluster()
    posts = [0]

    def refuse_second(method: str, path: str) -> None:
        if method == "POST":
            posts[0] += 1
            if posts[0] == 2:
                raise FakeApiException(403, "pods is forbidden: violates PodSecurity \"baseline:latest\": hostPath volumes")

    cluster.on_request.append(refuse_second)
    with pytest.raises(KubeInferError, match="hostPath volumes"):
        gd.probe_nodes(Kube(cluster), ["gpu-0", "gpu-1"], "kube-system", "img:1", 5, sleep=lambda s: None)
    assert probe_pods(cluster) == [] and len(deletes(cluster)) == 1


def test_a_failed_delete_does_not_hide_the_answer() -> None:
    cluster = FakeCluster()
    answer_probes(cluster, {"gpu-0": pod_succeeded(H100_ANSWER)})
    cluster.on_create.append(lambda pod: cluster.answers.update(
        {("DELETE", f"{PODS}/{pod['metadata']['name']}"): FakeApiException(500, "etcd unavailable")}))
    assert gd.host_driver(gd.probe_nodes(Kube(cluster), ["gpu-0"], "kube-system", "img:1", 5, sleep=lambda s: None)["gpu-0"])


# -- options --------------------------------------------------------------------------------------------
def test_probe_options_defaults_and_checks() -> None:
    defaults = {k: v["default"] for k, v in PROBE_ARG_SPEC.items()}
    assert gd.probe_options(defaults) == {"namespace": "kube-system", "image": gd.DEFAULT_PROBE_IMAGE, "timeout": 180.0}
    assert gd.DEFAULT_PROBE_IMAGE.startswith("nvcr.io/nvidia/cloud-native/gpu-operator-validator:")
    assert gd.probe_options(dict(defaults, probe_namespace="probes", probe_timeout=5))["namespace"] == "probes"
    for timeout in (0, -1):
        with pytest.raises(KubeInferError, match="^probe_timeout: must be a positive number of seconds"):
            gd.probe_options(dict(defaults, probe_timeout=timeout))
    for image in ("", None):
        with pytest.raises(KubeInferError, match="^probe_image: must not be empty"):
            gd.probe_options(dict(defaults, probe_image=image))
    for namespace in ("", "Kube_System"):
        with pytest.raises(KubeInferError, match="^probe_namespace: .* is not a valid namespace name"):
            gd.probe_options(dict(defaults, probe_namespace=namespace))


def test_probe_spec_matches_the_doc_fragment() -> None:
    import yaml

    from ansible_collections.kubeinfer.llm.plugins.doc_fragments.gpu_probe import ModuleDocFragment

    doc = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    assert set(doc) == set(PROBE_ARG_SPEC)
    for name, spec in PROBE_ARG_SPEC.items():
        assert (doc[name]["type"], doc[name]["default"]) == (spec["type"], spec["default"]), name
