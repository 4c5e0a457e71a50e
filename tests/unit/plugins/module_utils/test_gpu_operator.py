"""The GPU Operator release logic: chart sources, validation, and when helm upgrade runs (with a fake helm and API)."""
from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils import _gpu_operator
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_operator import chart_source, parse_driver_enabled, probe_candidates, validate
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm_release import Chart
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube

from .fake_api import FakeApiClient
from .fake_cluster import FakeCluster, answer_probes, pod_succeeded, probe_answer, probe_pods
from .helm_records import keep_in

REPO = Path(__file__).resolve().parents[4]
NVIDIA_REPO = "https://helm.ngc.nvidia.com/nvidia"
NFD_3D = "feature.node.kubernetes.io/pci-0302_10de.present"
NODES_PATH = "/api/v1/nodes"
NS_PATH = "/api/v1/namespaces/gpu-operator"
CM_PATH = "/api/v1/namespaces/gpu-operator/configmaps/time-slicing-config"


def params(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "release_name": "gpu-operator", "namespace": "gpu-operator", "create_namespace": True, "chart_ref": None,
        "chart_repo_url": "https://helm.ngc.nvidia.com/nvidia", "chart_version": "v26.7.0", "driver_enabled": "auto",
        "node_selector": "", "toolkit_enabled": True,
        "device_plugin_enabled": True, "dcgm_exporter_enabled": True, "dcgm_service_monitor": False,
        "mig_strategy": "single", "time_slicing_replicas": None, "values": {}, "wait": True, "timeout": 600,
        "atomic": False, "helm_binary": None, "state": "present",
        "probe_image": "validator:test", "probe_namespace": "kube-system", "probe_timeout": 30,
    }
    base.update(overrides)
    return base


class FakeHelm:
    """A run_command stand-in that keeps one release and answers helm upgrade / rollback / uninstall; the release's last
    revision is kept in the Secret helm stores it in, in ``cluster`` (see run).
    ``fail_upgrade`` makes helm upgrade fail after it wrote a new revision, as a timed-out ``--wait`` does."""

    def __init__(self, release: dict[str, Any] | None = None, values: dict[str, Any] | None = None, fail_upgrade: bool = False) -> None:
        self.release = release
        self.values = values or {}
        self.upgrades: list[dict[str, Any]] = []
        self.fail_upgrade = fail_upgrade
        self.argvs: list[list[str]] = []
        self.cluster: FakeCluster | None = None

    def keep(self) -> None:
        if self.cluster is not None:
            keep_in(self.cluster, self.release, self.values, "gpu-operator")

    def __call__(self, argv: list[str], environ_update: dict[str, str] | None = None) -> tuple[int, str, str]:
        self.argvs.append(argv)
        rc, out, err = self.answer(argv)
        self.keep()
        return rc, out, err

    def answer(self, argv: list[str]) -> tuple[int, str, str]:
        verb = argv[1]
        if verb == "upgrade":
            with open(argv[argv.index("--values") + 1]) as f:
                self.values = json.load(f)
            self.upgrades.append({"argv": argv, "values": self.values})
            revision = int(self.release["revision"]) + 1 if self.release else 1
            self.release = {"name": argv[3], "namespace": "gpu-operator", "revision": str(revision), "status": "deployed",
                            "chart": "gpu-operator-v26.7.0", "app_version": "v26.7.0"}
            if self.fail_upgrade:
                self.release["status"] = "failed"
                return 1, "", "Error: UPGRADE FAILED: context deadline exceeded"
            return 0, "", ""
        if verb == "rollback":
            self.release = dict(self.release or {}, revision=str(int((self.release or {})["revision"]) + 1), status="deployed")
            return 0, "", ""
        if verb == "uninstall":
            self.release = None
            return 0, "", ""
        return 1, "", f"unexpected helm call {argv}"


def linked(api: Any, fake: FakeHelm) -> Kube:
    """A Kube on ``api`` that holds the Secret of ``fake``'s release, as the API server holds what helm stored."""
    if isinstance(api, FakeCluster):
        fake.cluster = api
    elif fake.cluster is None:  # a FakeApiClient of fixed answers: helm's release Secret lives in a cluster behind it
        fake.cluster = FakeCluster()
    if isinstance(api, FakeApiClient) and api.fallback is None:
        api.fallback = fake.cluster
    fake.keep()
    return Kube(api)


def run(api: Any, fake: FakeHelm, check: bool = False, diff: bool = False, **overrides: Any) -> dict[str, Any]:
    kube = linked(api, fake)
    helm = Helm(fake, "/bin/helm", {"kubeconfig": "/k"})
    return _gpu_operator.run(kube, helm, params(**overrides), check, diff)


def gpu_node(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}, "status": {"allocatable": {}}}


HOSTED = probe_answer(smi="/usr/bin/nvidia-smi", driver="550.54.15")


def probed_cluster(*nodes: dict[str, Any], **answers: str) -> FakeCluster:
    """A fake API server with ``nodes`` whose probe pods answer by node name (``gpu_0=...`` for node gpu-0)."""
    cluster = FakeCluster()
    for n in nodes:
        cluster.add(n)
    answer_probes(cluster, {name.replace("_", "-"): pod_succeeded(message) for name, message in answers.items()})
    return cluster


def probed_nodes(cluster: FakeCluster) -> list[str]:
    return sorted(c["body"]["spec"]["nodeName"] for c in cluster.calls if c["method"] == "POST" and c["path"].endswith("/pods"))


@pytest.fixture(scope="module")
def upstream_chart() -> Path:
    """The published chart archive, sha256 checked by tools/localcluster/upstream-chart.sh."""
    done = subprocess.run([str(REPO / "tools" / "localcluster" / "upstream-chart.sh")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


# -- chart sources ----------------------------------------------------------------------
def test_default_source_is_nvidia_repo_at_the_pinned_version() -> None:
    assert chart_source(None, NVIDIA_REPO, "v26.7.0") == (
        "repo", Chart(ref="gpu-operator", name="gpu-operator", version="v26.7.0", repo=NVIDIA_REPO, version_arg="v26.7.0"))


def test_oci_mirror_and_archive_url_sources() -> None:
    kind, oci = chart_source("oci://registry.example.com/nvidia/gpu-operator", NVIDIA_REPO, "v26.7.0")
    assert kind == "oci" and oci.ref == "oci://registry.example.com/nvidia/gpu-operator" and oci.version_arg == "v26.7.0"
    kind, mirror = chart_source("https://charts.example.com/nvidia", NVIDIA_REPO, "v26.7.0")
    assert kind == "repo" and mirror.repo == "https://charts.example.com/nvidia" and mirror.ref == "gpu-operator"
    kind, url = chart_source("https://charts.example.com/gpu-operator-v26.7.0.tgz", NVIDIA_REPO, "v26.7.0")
    assert kind == "url" and url.name == "gpu-operator" and url.version_arg is None and url.id == "gpu-operator-v26.7.0"
    with pytest.raises(KubeInferError, match="^chart_ref: .*without a tag"):
        chart_source("oci://registry.example.com/nvidia/gpu-operator:v26.7.0", NVIDIA_REPO, "v26.7.0")


def test_local_directory_and_archive_use_their_own_version(upstream_chart: Path, tmp_path: Path) -> None:
    kind, archive = chart_source(str(upstream_chart), NVIDIA_REPO, "v26.7.0")
    assert kind == "local" and archive.ref == str(upstream_chart) and archive.name == "gpu-operator"
    assert archive.version_arg is None, "helm ignores --version for a local chart"
    assert archive.version == "v26.7.0" and archive.app_version == "v26.7.0"
    with pytest.raises(KubeInferError, match="^chart_version: the local chart .* is version v26.7.0, not v25.10.0"):
        chart_source(str(upstream_chart), NVIDIA_REPO, "v25.10.0")
    with tarfile.open(upstream_chart) as tar:
        tar.extractall(tmp_path, filter="data")
    kind, local = chart_source(str(tmp_path / "gpu-operator"), NVIDIA_REPO, "26.7.0")
    assert kind == "local" and local.name == "gpu-operator" and local.version == "v26.7.0"
    with pytest.raises(KubeInferError, match="^chart_version: the local chart .* is version v26.7.0, not v26.3.0"):
        chart_source(str(tmp_path / "gpu-operator"), NVIDIA_REPO, "v26.3.0")


def test_missing_or_bogus_local_chart_names_chart_ref(tmp_path: Path) -> None:
    with pytest.raises(KubeInferError, match="^chart_ref: local chart /nonexistent/gpu-operator does not exist"):
        chart_source("/nonexistent/gpu-operator", NVIDIA_REPO, "v26.7.0")
    with pytest.raises(KubeInferError, match="^chart_ref: .* without a Chart.yaml"):
        chart_source(str(tmp_path), NVIDIA_REPO, "v26.7.0")
    junk = tmp_path / "junk.tgz"
    junk.write_text("not a tarball")
    with pytest.raises(KubeInferError, match="^chart_ref: .* neither a chart directory nor a chart archive"):
        chart_source(str(junk), NVIDIA_REPO, "v26.7.0")


# -- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize(("overrides", "message"), [
    ({"time_slicing_replicas": 1}, "^time_slicing_replicas must be an integer of at least 2"),
    ({"mig_strategy": "bogus"}, "^mig_strategy must be one of"),
    ({"chart_ref": "/no/such/chart"}, "^chart_ref: local chart /no/such/chart does not exist"),
    ({"release_name": "Bad_Name"}, "^release_name: "),
    ({"namespace": "Bad_NS"}, "^namespace: "),
    ({"timeout": 0}, "^timeout: "),
    ({"chart_version": ""}, "^chart_version: "),
    ({"dcgm_service_monitor": True, "dcgm_exporter_enabled": False}, "^service_monitor needs dcgm_exporter_enabled"),
    ({"mig_strategy": "mixed"}, "^mig_strategy: mixed is not supported"),
    ({"probe_timeout": 0}, "^probe_timeout: must be a positive number"),
    ({"probe_image": ""}, "^probe_image: must not be empty"),
])
def test_bad_inputs_fail_before_any_request(overrides: dict[str, Any], message: str) -> None:
    api, fake = FakeApiClient(), FakeHelm()
    with pytest.raises(KubeInferError, match=message):
        run(api, fake, **overrides)
    assert api.calls == [] and fake.upgrades == []


def test_driver_enabled_strings() -> None:
    assert parse_driver_enabled("auto") == "auto"
    assert parse_driver_enabled("True") is True and parse_driver_enabled("false") is False
    with pytest.raises(KubeInferError, match="^driver_enabled: "):
        parse_driver_enabled("maybe")


def test_validate_state_absent_skips_chart_checks() -> None:
    assert validate(params(state="absent", chart_ref="/no/such/chart")) is None


# -- reconcile --------------------------------------------------------------------------------
def test_probe_candidates() -> None:
    labelled = [gpu_node("gpu-0", **{NFD_3D: "true"}), gpu_node("gpu-1", **{"feature.node.kubernetes.io/pci-10de.present": "true"})]
    cluster = FakeCluster()
    for n in [*labelled, gpu_node("cpu-0", **{"nvidia.com/gpu.present": "true"})]:
        cluster.add(n)
    kube = Kube(cluster)
    assert [n["metadata"]["name"] for n in probe_candidates(kube, None)] == ["gpu-0", "gpu-1"], "the NFD-labelled nodes only"
    assert [n["metadata"]["name"] for n in probe_candidates(kube, "nvidia.com/gpu.present=true")] == ["cpu-0"]
    assert cluster.calls[-1]["query"] == {"labelSelector": "nvidia.com/gpu.present=true"}
    fresh = FakeCluster()
    for n in (gpu_node("node-a"), gpu_node("node-b")):
        fresh.add(n)
    assert [n["metadata"]["name"] for n in probe_candidates(Kube(fresh), "")] == ["node-a", "node-b"], "no NFD yet: every node"


def test_fresh_install_probes_the_gpu_nodes_and_installs_the_driver_where_none_is() -> None:
    # The labels that used to turn the driver off: written by the operator (gpu.present) and by GFD on its own driver.
    gpu = gpu_node("gpu-0", **{NFD_3D: "true", "nvidia.com/gpu.present": "true", "nvidia.com/cuda.driver.major": "550"})
    cluster = probed_cluster(gpu, gpu_node("cpu-0"), gpu_0=probe_answer(), cpu_0=probe_answer(pci=""))
    fake = FakeHelm()
    result = run(cluster, fake)
    assert probed_nodes(cluster) == ["gpu-0"], "only the NFD-labelled node is probed"
    assert result["driver_probe"] == {"gpu-0": {"nvidia_pci": ["0302"], "nvidia_smi": None, "driver": None}}
    assert result["driver_enabled"] is True
    assert result["driver_reason"] == "auto: no GPU node has a host driver (gpu-0), so the operator installs it"
    assert probe_pods(cluster) == [], "the probe pod is deleted"
    pod = next(c["body"] for c in cluster.calls if c["method"] == "POST" and c["body"]["kind"] == "Pod")
    assert pod["metadata"]["namespace"] == "kube-system" and pod["spec"]["containers"][0]["image"] == "validator:test"
    assert len(fake.upgrades) == 1
    argv = fake.upgrades[0]["argv"]
    assert argv[1:5] == ["upgrade", "--install", "gpu-operator", "gpu-operator"]
    assert argv[argv.index("--repo") + 1] == "https://helm.ngc.nvidia.com/nvidia"
    assert argv[argv.index("--version") + 1] == "v26.7.0"
    assert fake.upgrades[0]["values"]["driver"] == {"enabled": True}
    assert result["release"]["revision"] == 1 and result["release"]["chart_version"] == "v26.7.0"
    assert result["release"]["installed"] is True and result["release"]["chart_name"] == "gpu-operator"
    assert any("upgrade --install" in c and "<values-file>" in c for c in result["helm_commands"])
    assert result["changes"] == ["release: (none) -> gpu-operator-v26.7.0"]
    assert result["changed_values"] == ["dcgmExporter", "devicePlugin", "driver", "mig", "toolkit"], "a new release: every top-level key"
    # The probe pod (create, delete); the namespace and the operation Lease around the helm upgrade.
    # The release is read from its Secret (a metadata list) before the plan and after the upgrade (list and get).
    assert result["api_requests"] == {"list": 4, "create": 2, "delete": 2, "get": 2, "apply": 1}
    assert [c["path"].rsplit("/", 1)[-1] for c in cluster.calls if c["method"] in ("PATCH", "DELETE") and "leases" in c["path"]] == \
        ["kubeinfer-helm-gpu-operator", "kubeinfer-helm-gpu-operator"]


def test_fresh_cluster_without_nfd_probes_every_node_and_keeps_a_host_driver() -> None:
    cluster = probed_cluster(gpu_node("node-a"), gpu_node("node-b"), gpu_node("node-c"),
                             node_a=HOSTED, node_b=HOSTED, node_c=probe_answer(pci=""))
    fake = FakeHelm()
    result = run(cluster, fake)
    assert probed_nodes(cluster) == ["node-a", "node-b", "node-c"]
    assert result["driver_enabled"] is False and "node-a, node-b" in result["driver_reason"]
    assert fake.upgrades[0]["values"]["driver"] == {"enabled": False}
    assert probe_pods(cluster) == []


def test_node_selector_picks_the_nodes_to_probe() -> None:
    cluster = probed_cluster(gpu_node("gpu-0", pool="a100", **{NFD_3D: "true"}), gpu_node("gpu-1", **{NFD_3D: "true"}),
                             gpu_0=HOSTED, gpu_1=probe_answer())
    result = run(cluster, FakeHelm(), node_selector="pool=a100")
    assert probed_nodes(cluster) == ["gpu-0"] and result["driver_enabled"] is False


def test_a_mix_of_host_driver_and_none_fails_before_the_install() -> None:
    cluster = probed_cluster(gpu_node("gpu-0", **{NFD_3D: "true"}), gpu_node("gpu-1", **{NFD_3D: "true"}),
                             gpu_0=HOSTED, gpu_1=probe_answer())
    fake = FakeHelm()
    with pytest.raises(KubeInferError, match="^driver_enabled: auto found a pre-installed NVIDIA driver on gpu-0 but none on gpu-1") as err:
        run(cluster, fake)
    assert fake.upgrades == [] and probe_pods(cluster) == []
    assert err.value.result["driver_probe"]["gpu-0"]["driver"] == "550.54.15", "the failure still shows what the probe found"
    assert err.value.result["api_requests"]["create"] == 2


def test_explicit_driver_or_check_mode_runs_no_probe() -> None:
    cluster = probed_cluster(gpu_node("gpu-0", **{NFD_3D: "true"}), gpu_0=HOSTED)
    explicit = run(cluster, FakeHelm(), driver_enabled="true")
    assert explicit["driver_enabled"] is True and "driver_probe" not in explicit
    mark = len(cluster.calls)
    checked = run(cluster, FakeHelm(), check=True)
    assert checked["driver_enabled"] is True and "driver_probe" not in checked
    assert checked["driver_reason"].startswith("auto: not probed in check mode")
    assert checked["changed"] is True and checked["release_would_change"] is True
    assert not [c for c in cluster.calls[mark:] if c["method"] != "GET"] and probed_nodes(cluster) == []


def test_rerun_with_same_values_runs_no_upgrade_and_no_api_request() -> None:
    cluster = probed_cluster(gpu_node("gpu-0", **{NFD_3D: "true"}), gpu_0=probe_answer())
    fake = FakeHelm()
    run(cluster, fake)
    cluster.calls.clear()
    again = run(cluster, fake)
    assert again["changed"] is False and again["changes"] == []
    assert len(fake.upgrades) == 1
    assert not any(" upgrade " in c for c in again["helm_commands"])
    # auto keeps the installed release's driver.enabled, so nothing is probed, not even listed: the two requests
    # read the release's last revision from the Secret helm stores it in
    assert again["api_requests"] == {"list": 1, "get": 1}
    assert [(c["method"], c["path"]) for c in cluster.calls] == [
        ("GET", "/api/v1/namespaces/gpu-operator/secrets"), ("GET", "/api/v1/namespaces/gpu-operator/secrets/sh.helm.release.v1.gpu-operator.v1")]
    assert again["helm_commands"] == []
    assert again["driver_reason"].startswith("auto: kept driver.enabled=true")
    assert "driver_probe" not in again


def test_changed_value_upgrades_and_reports_the_change() -> None:
    api = FakeApiClient({("GET", NODES_PATH): {"items": []}})
    fake = FakeHelm()
    run(api, fake)
    result = run(api, fake, mig_strategy="none", diff=True)
    assert result["changed"] is True and len(fake.upgrades) == 2
    assert result["changes"] == ["values.mig.strategy: single -> none"] and result["changed_values"] == ["mig.strategy"]
    assert result["diff"]["before"]["values"]["mig"] == {"strategy": "single"}
    assert result["diff"]["after"]["values"]["mig"] == {"strategy": "none"}
    assert result["release"]["revision"] == 2


def test_other_chart_version_upgrades() -> None:
    fake = FakeHelm({"name": "gpu-operator", "chart": "gpu-operator-v25.10.0", "status": "deployed", "revision": "3"},
                    values={"driver": {"enabled": True}})
    result = run(FakeApiClient(), fake, driver_enabled="true")
    assert "chart: gpu-operator-v25.10.0 -> gpu-operator-v26.7.0" in result["changes"]
    assert len(fake.upgrades) == 1


def test_check_mode_runs_no_upgrade_but_reports_the_values() -> None:
    fake = FakeHelm({"name": "gpu-operator", "chart": "gpu-operator-v26.7.0", "status": "deployed", "revision": "1"},
                    values={"driver": {"enabled": True}})
    result = run(FakeApiClient(), fake, check=True, diff=True, dcgm_exporter_enabled=False)
    assert result["changed"] is True and result["release_would_change"] is True
    assert fake.upgrades == []
    assert not any(" upgrade " in c for c in result["helm_commands"])
    assert result["values"]["dcgmExporter"]["enabled"] is False
    assert result["diff"]["before"]["values"] == {"driver": {"enabled": True}}
    assert result["release"]["revision"] == 1


def test_pending_release_fails_without_upgrade() -> None:
    fake = FakeHelm({"name": "gpu-operator", "chart": "gpu-operator-v26.7.0", "status": "pending-upgrade", "revision": "2"})
    with pytest.raises(KubeInferError, match="is in status pending-upgrade") as err:
        run(FakeApiClient(), fake)
    assert fake.upgrades == [] and fake.argvs == [], "the status is read from the release's Secret"
    assert err.value.result["release"]["status"] == "pending-upgrade"


def test_time_slicing_configmap_is_applied_before_the_release() -> None:
    order: list[str] = []

    def applied(body: Any) -> Any:
        order.append("configmap")
        return body

    api = FakeApiClient({("GET", NODES_PATH): {"items": []}, ("GET", NS_PATH): {"metadata": {"name": "gpu-operator"}},
                         ("PATCH", CM_PATH): applied})
    fake = FakeHelm()
    original = fake.__call__

    def recording(argv: list[str], environ_update: dict[str, str] | None = None) -> tuple[int, str, str]:
        if argv[1] == "upgrade":
            order.append("helm upgrade")
        return original(argv, environ_update)

    kube, helm = linked(api, fake), Helm(recording, "/bin/helm", {})
    result = _gpu_operator.run(kube, helm, params(time_slicing_replicas=4), False, False)
    assert order == ["configmap", "helm upgrade"]
    cm = next(c["body"] for c in api.calls if c["path"] == CM_PATH and c["method"] == "PATCH")
    assert cm["metadata"]["namespace"] == "gpu-operator" and "replicas: 4" in cm["data"]["any"]
    assert fake.values["devicePlugin"]["config"] == {"create": False, "name": "time-slicing-config", "default": "any"}
    assert result["configmaps"] == [{"name": "time-slicing-config", "changed": True}]


def test_time_slicing_in_check_mode_with_missing_namespace_writes_nothing() -> None:
    api = FakeApiClient({("GET", NODES_PATH): {"items": []}})
    fake = FakeHelm()
    result = _gpu_operator.run(linked(api, fake), Helm(fake, "/bin/helm", {}), params(time_slicing_replicas=2), True, False)
    assert result["changed"] is True and result["namespace_created"] is True
    assert [c["path"] for c in api.calls] == ["/api/v1/namespaces/gpu-operator/secrets", NS_PATH], \
        "only the release's Secrets and the namespace read: check mode runs no probe"
    assert fake.upgrades == []


def test_absent_uninstalls_and_deletes_only_our_configmap() -> None:
    api = FakeApiClient({("GET", CM_PATH): {"metadata": {"name": "time-slicing-config", "labels": {"app.kubernetes.io/managed-by": "kubeinfer.llm"}}},
                         ("DELETE", CM_PATH): {}})
    fake = FakeHelm({"name": "gpu-operator", "chart": "gpu-operator-v26.7.0", "status": "deployed", "revision": "1"})
    result = run(api, fake, state="absent")
    assert result["changed"] is True and fake.release is None
    assert any(c["method"] == "DELETE" and c["path"] == CM_PATH for c in api.calls)
    again = run(FakeApiClient(), fake, state="absent")
    assert again["changed"] is False and not any("uninstall" in c for c in again["helm_commands"])
    assert again["release"]["installed"] is False and again["release"]["revision"] == 0


@pytest.mark.parametrize(("previous", "undo"), [
    (None, ["uninstall", "gpu-operator", "--namespace", "gpu-operator"]),
    ({"name": "gpu-operator", "chart": "gpu-operator-v26.7.0", "status": "deployed", "revision": "3"},
     ["rollback", "gpu-operator", "3", "--namespace", "gpu-operator", "--wait"]),
])
def test_atomic_undoes_a_failed_upgrade(previous: dict[str, Any] | None, undo: list[str]) -> None:
    fake = FakeHelm(previous, {"driver": {"enabled": True}} if previous else None, fail_upgrade=True)
    with pytest.raises(KubeInferError, match="^helm upgrade failed .*context deadline exceeded; ") as err:
        run(FakeApiClient(), fake, driver_enabled="true", mig_strategy="none", atomic=True)
    upgrade = next(a for a in fake.argvs if a[1] == "upgrade")
    assert "--wait" in upgrade and "--atomic" not in upgrade, "one rollback path: ours, not helm's"
    assert fake.argvs[-1][1:len(undo) + 1] == undo
    assert err.value.result["rolled_back"] == ("uninstalled the release this run created" if previous is None else "rolled back to revision 3")
    assert err.value.msg.endswith(err.value.result["rolled_back"])
