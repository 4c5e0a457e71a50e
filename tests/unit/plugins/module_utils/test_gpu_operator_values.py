# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import jsonschema  # installed with kubernetes-validate, which validates with it
import pytest
import yaml  # PyYAML: a test requirement only, the module_utils stay stdlib

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_discovery import parse_probe
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_operator_values import (
    DEFAULT_CHART_REPO_URL,
    DEFAULT_CHART_VERSION,
    gpu_operator_values,
    resolve_driver_enabled,
    time_slicing_config,
)


def probe(pci: str = "0302", smi: str = "none", driver: str = "none") -> dict[str, Any]:
    """A node's probe answer, parsed from the termination message the probe pod writes."""
    return parse_probe(f"nvidia-pci={pci}\nnvidia-smi={smi}\ndriver={driver}\n")


BARE = probe()  # an NVIDIA 3D controller, no host driver
HOSTED = probe(smi="/usr/bin/nvidia-smi", driver="550.54.15")  # the host has the driver
CPU = probe(pci="")


def test_pinned_chart() -> None:
    assert DEFAULT_CHART_VERSION == "v26.7.0"
    assert DEFAULT_CHART_REPO_URL == "https://helm.ngc.nvidia.com/nvidia"


def test_defaults_on_bare_gpu_nodes() -> None:
    result = gpu_operator_values(probes={"gpu-1": BARE, "gpu-0": BARE, "cpu-0": CPU})
    assert result == {
        "values": {
            "driver": {"enabled": True},
            "toolkit": {"enabled": True},
            "devicePlugin": {"enabled": True},
            "dcgmExporter": {"enabled": True, "serviceMonitor": {"enabled": False}},
            "mig": {"strategy": "single"},
        },
        "configmaps": [],
        "driver_enabled": True,
        "driver_reason": "auto: no GPU node has a host driver (gpu-0, gpu-1), so the operator installs it",
    }


def test_auto_driver_off_only_when_every_gpu_node_has_a_host_driver() -> None:
    # A CPU node without a driver does not count: the driver DaemonSet never runs there.
    result = gpu_operator_values(probes={"gpu-0": HOSTED, "gpu-1": probe(smi="/usr/sbin/nvidia-smi", driver="570.172.08"),
                                         "cpu-0": CPU})
    assert result["driver_enabled"] is False
    assert result["values"]["driver"] == {"enabled": False}
    assert result["driver_reason"] == ("auto: every GPU node has a pre-installed driver (gpu-0, gpu-1; "
                                       "nvidia-smi on the host, kernel module 550.54.15, 570.172.08)")


def test_auto_refuses_a_mix_of_nodes_with_and_without_a_host_driver() -> None:
    with pytest.raises(KubeInferError) as err:
        resolve_driver_enabled("auto", {"gpu-0": HOSTED, "gpu-1": BARE, "gpu-2": HOSTED, "cpu-0": CPU})
    assert err.value.msg.startswith("driver_enabled: auto found a pre-installed NVIDIA driver on gpu-0, gpu-2 but none on gpu-1.")
    assert "cpu-0" not in err.value.msg


@pytest.mark.parametrize("half", [
    probe(smi="/usr/bin/nvidia-smi"),  # nvidia-smi left on disk, module not loaded: nvidia-smi cannot run
    probe(driver="550.54.15"),  # module loaded, no nvidia-smi at the validator's paths
])
def test_half_a_driver_is_no_driver(half: dict[str, Any]) -> None:
    assert resolve_driver_enabled("auto", {"gpu-0": half})[0] is True
    with pytest.raises(KubeInferError, match="^driver_enabled: .* on gpu-1 but none on gpu-0"):
        resolve_driver_enabled("auto", {"gpu-0": half, "gpu-1": HOSTED})


@pytest.mark.parametrize("probes", [{}, {"cpu-0": CPU, "cpu-1": CPU}])
def test_auto_without_a_gpu_node_is_the_chart_default(probes: dict[str, Any]) -> None:
    enabled, reason = resolve_driver_enabled("auto", probes)
    assert enabled is True
    assert reason == f"auto: none of the {len(probes)} probed node(s) has an NVIDIA PCI device; chart default driver.enabled=true"


def test_auto_in_check_mode_shows_the_chart_default() -> None:
    assert resolve_driver_enabled("auto", None) == (True, "auto: not probed in check mode; showing the chart default, driver.enabled=true")


def test_labels_are_no_evidence_of_a_driver() -> None:
    # The old fault ("auto takes gpu.present as driver evidence"): the operator writes nvidia.com/gpu.present from NFD's PCI
    # labels alone, and GFD's cuda.driver.* labels come from the operator's own driver, so they turned the driver off on bare
    # nodes. Only the probe's answer counts now; a Node object is no answer at all.
    labelled = {"metadata": {"name": "gpu-0", "labels": {"nvidia.com/gpu.present": "true", "nvidia.com/cuda.driver.major": "550",
                                                         "nvidia.com/cuda.driver-version.full": "550.54.15"}},
                "status": {"allocatable": {"nvidia.com/gpu": "8"}}}
    assert resolve_driver_enabled("auto", {"gpu-0": labelled})[0] is True
    assert resolve_driver_enabled("auto", {"gpu-0": BARE})[0] is True
    with pytest.raises(TypeError):
        gpu_operator_values(nodes=[labelled])  # type: ignore[call-arg]


def test_auto_keeps_the_deployed_decision() -> None:
    # After an install with driver containers, the nodes look as if a driver were there: no probe may overturn it.
    enabled, reason = resolve_driver_enabled("auto", {"gpu-1": HOSTED}, {"driver": {"enabled": True}})
    assert enabled is True
    assert reason == "auto: kept driver.enabled=true of the installed release"
    assert resolve_driver_enabled("auto", {"gpu-1": BARE}, {"driver": {"enabled": False}})[0] is False
    assert resolve_driver_enabled("auto", None, {"driver": {"enabled": False}})[0] is False
    # Deployed values without the key fall back to the probe.
    assert resolve_driver_enabled("auto", {"gpu-1": HOSTED}, {"toolkit": {"enabled": True}})[0] is False
    assert resolve_driver_enabled("auto", {"gpu-1": HOSTED}, {"driver": {"enabled": "yes"}})[0] is False


def test_explicit_driver_setting_ignores_the_probe() -> None:
    assert resolve_driver_enabled(True, {"gpu-1": HOSTED}) == (True, "driver_enabled set to true")
    assert resolve_driver_enabled(False, {"gpu-1": BARE}) == (False, "driver_enabled set to false")
    assert resolve_driver_enabled(False, {"gpu-0": HOSTED, "gpu-1": BARE}) == (False, "driver_enabled set to false"), \
        "an explicit setting is the way out of a mix"
    assert resolve_driver_enabled("AUTO", {"gpu-1": BARE})[0] is True
    with pytest.raises(KubeInferError, match="true, false or 'auto'"):
        resolve_driver_enabled("yes", {})


def test_time_slicing() -> None:
    result = gpu_operator_values(driver_enabled=False, time_slicing_replicas=4, namespace="gpu-op", mig_strategy="none")
    assert result["values"]["devicePlugin"] == {
        "enabled": True, "config": {"create": False, "name": "time-slicing-config", "default": "any"},
    }
    assert result["configmaps"] == [{
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "time-slicing-config", "namespace": "gpu-op", "labels": {"app.kubernetes.io/managed-by": "kubeinfer.llm"}},
        "data": {"any": time_slicing_config(4, "none")},
    }]


def test_time_slicing_config_yaml() -> None:
    assert yaml.safe_load(time_slicing_config(3, "none")) == {
        "version": "v1",
        "flags": {"migStrategy": "none"},
        "sharing": {"timeSlicing": {"resources": [{"name": "nvidia.com/gpu", "replicas": 3}]}},
    }


def test_user_values_win_and_merge_deeply() -> None:
    user = {
        "dcgmExporter": {"serviceMonitor": {"interval": "30s"}},
        "toolkit": {"enabled": False, "version": "v1.20.0"},
        "daemonsets": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]},
    }
    before = copy.deepcopy(user)
    result = gpu_operator_values(driver_enabled=True, service_monitor=True, values=user)
    assert result["values"]["dcgmExporter"] == {"enabled": True, "serviceMonitor": {"enabled": True, "interval": "30s"}}
    assert result["values"]["toolkit"] == {"enabled": False, "version": "v1.20.0"}
    assert result["values"]["daemonsets"] == before["daemonsets"]
    assert user == before  # input untouched


def test_user_driver_value_overrides_auto() -> None:
    result = gpu_operator_values(probes={"gpu-1": HOSTED}, values={"driver": {"enabled": True}})
    assert result["driver_enabled"] is True and result["values"]["driver"] == {"enabled": True}
    assert result["driver_reason"].startswith("values.driver.enabled=true overrides (auto: every GPU node has a pre-installed driver")
    with pytest.raises(KubeInferError, match="values.driver.enabled must be true or false"):
        gpu_operator_values(values={"driver": {"enabled": "maybe"}})


@pytest.mark.parametrize("kwargs, problem", [
    ({"mig_strategy": "all"}, "mig_strategy must be one of none, single, mixed"),
    ({"mig_strategy": "mixed"}, "^mig_strategy: mixed is not supported.*nvidia.com/mig-<profile>.*use single"),
    ({"service_monitor": True, "dcgm_exporter_enabled": False}, "service_monitor needs dcgm_exporter_enabled"),
    ({"time_slicing_replicas": 1}, "at least 2"),
    ({"time_slicing_replicas": True}, "at least 2"),
    ({"time_slicing_replicas": "4"}, "at least 2"),
    ({"time_slicing_replicas": 4, "device_plugin_enabled": False}, "needs device_plugin_enabled"),
    ({"toolkit_enabled": "yes"}, "toolkit_enabled must be true or false"),
    ({"values": ["driver"]}, "values must be a mapping"),
])
def test_invalid_options(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(KubeInferError, match=problem):
        gpu_operator_values(**kwargs)


def test_driver_reason_stays_short_on_large_clusters() -> None:
    enabled, reason = resolve_driver_enabled("auto", {f"gpu-{i:04d}": HOSTED for i in range(1000)})
    assert enabled is False
    assert "gpu-0000" in reason and "gpu-0999" not in reason and "and 995 more" in reason
    assert len(reason) < 400
    with pytest.raises(KubeInferError) as err:
        resolve_driver_enabled("auto", {**{f"a-{i:04d}": HOSTED for i in range(500)}, **{f"b-{i:04d}": BARE for i in range(500)}})
    assert "and 495 more" in err.value.msg and len(err.value.msg) < 600


# -- the published GPU Operator chart (tools/localcluster/upstream-chart.sh checks its sha256), rendered by the real helm
REPO = Path(__file__).resolve().parents[4]
CACHE = Path(os.environ.get("KUBEINFER_CACHE", str(Path.home() / ".cache" / "kubeinfer")))
HELM_VERSION = re.search(r"^HELM_VERSION=(\S+)", (REPO / "tools" / "localcluster" / "versions.env").read_text(), re.M)
# HELM_BIN wins; HELM_BINARY is what the Makefile exports.
HELM = (os.environ.get("HELM_BIN") or os.environ.get("HELM_BINARY")
        or str(CACHE / f"helm-{HELM_VERSION.group(1) if HELM_VERSION else 'missing'}" / "helm"))
NFD_WORKER = "gpu-operator-node-feature-discovery-worker"


@pytest.fixture(scope="module")
def upstream_chart() -> Path:
    done = subprocess.run([str(REPO / "tools" / "localcluster" / "upstream-chart.sh")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def render(chart: Path, values: dict[str, Any], tmp_path: Path, api_versions: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    argv = [HELM, "template", "gpu-operator", str(chart), "--namespace", "gpu-operator", "--values", str(values_file)]
    for api in api_versions:
        argv += ["--api-versions", api]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def cluster_policy_schema(chart: Path) -> dict[str, Any]:
    """The openAPIV3Schema of the chart's own ClusterPolicy CRD (crds/nvidia.com_clusterpolicies.yaml)."""
    with tarfile.open(chart) as tar:
        member = tar.extractfile("gpu-operator/crds/nvidia.com_clusterpolicies.yaml")
        assert member is not None
        crd = yaml.safe_load(member.read())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def test_upstream_chart_is_the_pinned_version(upstream_chart: Path) -> None:
    with tarfile.open(upstream_chart) as tar:
        member = tar.extractfile("gpu-operator/Chart.yaml")
        assert member is not None
        chart = yaml.safe_load(member.read())
    assert chart["name"] == "gpu-operator"
    assert chart["version"] == DEFAULT_CHART_VERSION


def test_upstream_chart_renders_computed_values_into_the_cluster_policy(upstream_chart: Path, tmp_path: Path) -> None:
    computed = gpu_operator_values(probes={"gpu-0": HOSTED, "gpu-1": HOSTED}, time_slicing_replicas=4, service_monitor=True,
                                   values={"daemonsets": {"tolerations": [{"key": "dedicated", "operator": "Exists"}]}})
    assert computed["driver_enabled"] is False
    docs = render(upstream_chart, computed["values"], tmp_path, ("monitoring.coreos.com/v1/ServiceMonitor",))
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "gpu-operator") in kinds
    # The operator creates the operands from the ClusterPolicy; the chart itself runs only the NFD worker on every node.
    assert {name for kind, name in kinds if kind == "DaemonSet"} == {NFD_WORKER}
    # devicePlugin.config.create is false: the module writes the time-slicing ConfigMap itself, before the release.
    assert ("ConfigMap", "time-slicing-config") not in kinds
    (policy,) = [d for d in docs if d["kind"] == "ClusterPolicy"]
    assert policy["apiVersion"] == "nvidia.com/v1" and policy["metadata"]["name"] == "cluster-policy"
    spec = policy["spec"]
    assert spec["driver"]["enabled"] is False
    assert spec["toolkit"]["enabled"] is True and spec["devicePlugin"]["enabled"] is True
    assert spec["devicePlugin"]["config"] == {"name": "time-slicing-config", "default": "any"}
    assert spec["mig"] == {"strategy": "single"}
    assert spec["dcgmExporter"]["enabled"] is True
    assert spec["dcgmExporter"]["serviceMonitor"]["enabled"] is True
    assert {"key": "dedicated", "operator": "Exists"} in spec["daemonsets"]["tolerations"]
    jsonschema.validate(policy, cluster_policy_schema(upstream_chart))


def test_upstream_chart_with_driver_and_without_extras(upstream_chart: Path, tmp_path: Path) -> None:
    computed = gpu_operator_values(probes={"gpu-0": BARE}, mig_strategy="none", dcgm_exporter_enabled=False)
    docs = render(upstream_chart, computed["values"], tmp_path)
    assert {d["metadata"]["name"] for d in docs if d["kind"] == "DaemonSet"} == {NFD_WORKER}, "no driver DaemonSet from the chart"
    (policy,) = [d for d in docs if d["kind"] == "ClusterPolicy"]
    spec = policy["spec"]
    assert spec["driver"]["enabled"] is True
    assert spec["mig"] == {"strategy": "none"}
    assert spec["dcgmExporter"]["enabled"] is False and spec["dcgmExporter"]["serviceMonitor"]["enabled"] is False
    assert "config" not in spec["devicePlugin"], "without time-slicing the device plugin keeps its built-in config"
    schema = cluster_policy_schema(upstream_chart)
    jsonschema.validate(policy, schema)
    # The schema check is not vacuous: the CRD refuses what the chart would pass through unchecked.
    bad = copy.deepcopy(policy)
    bad["spec"]["driver"]["enabled"] = "auto"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
