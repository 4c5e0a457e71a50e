# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # PyYAML: a test requirement only, the module_utils stay stdlib

from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_operator_values import (
    DEFAULT_CHART_REPO_URL,
    DEFAULT_CHART_VERSION,
    deep_merge,
    driver_evidence,
    gpu_operator_values,
    resolve_driver_enabled,
    time_slicing_config,
)


def node(name: str, labels: dict[str, str] | None = None, gpus: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"allocatable": {"cpu": "32", "memory": "256Gi"}}
    if gpus is not None:
        status["allocatable"]["nvidia.com/gpu"] = gpus
    return {"metadata": {"name": name, "labels": labels or {}}, "status": status}


BARE = node("gpu-1", {"kubernetes.io/hostname": "gpu-1"})


def test_pinned_chart() -> None:
    assert DEFAULT_CHART_VERSION == "v26.7.0"
    assert DEFAULT_CHART_REPO_URL == "https://helm.ngc.nvidia.com/nvidia"


def test_defaults_on_bare_nodes() -> None:
    result = gpu_operator_values(nodes=[BARE])
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
        "driver_reason": "auto: no selected GPU node shows an installed driver",
    }


@pytest.mark.parametrize("evidence_node, text", [
    (node("gpu-2", {"nvidia.com/gpu.present": "true"}), "node gpu-2 has label nvidia.com/gpu.present=true"),
    (node("gpu-2", {"nvidia.com/cuda.driver.major": "550"}), "node gpu-2 has label nvidia.com/cuda.driver.major=550"),
    (node("gpu-2", {"nvidia.com/cuda.driver-version.full": "550.54.15"}), "nvidia.com/cuda.driver-version.full=550.54.15"),
    (node("gpu-2", gpus="8"), "node gpu-2 has allocatable nvidia.com/gpu=8"),
])
def test_auto_driver_off_when_any_node_has_a_driver(evidence_node: dict[str, Any], text: str) -> None:
    result = gpu_operator_values(nodes=[BARE, evidence_node])
    assert result["driver_enabled"] is False
    assert result["values"]["driver"] == {"enabled": False}
    assert text in result["driver_reason"]


@pytest.mark.parametrize("quiet_node", [
    node("gpu-3", {"nvidia.com/gpu.present": "false"}),
    node("gpu-3", gpus="0"),
    node("gpu-3", gpus="garbage"),
    node("gpu-3", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}),
    {"metadata": {"name": "gpu-3"}},
])
def test_no_evidence(quiet_node: dict[str, Any]) -> None:
    assert driver_evidence(quiet_node) == []
    assert resolve_driver_enabled("auto", [quiet_node])[0] is True


def test_auto_keeps_the_deployed_decision() -> None:
    # After an install with driver containers, GFD and the device plugin produce the same evidence.
    busy = node("gpu-1", {"nvidia.com/gpu.present": "true", "nvidia.com/cuda.driver.major": "595"}, gpus="8")
    enabled, reason = resolve_driver_enabled("auto", [busy], {"driver": {"enabled": True}})
    assert enabled is True
    assert reason == "auto: kept driver.enabled=true of the installed release"
    assert resolve_driver_enabled("auto", [BARE], {"driver": {"enabled": False}})[0] is False
    # Deployed values without the key fall back to the evidence.
    assert resolve_driver_enabled("auto", [busy], {"toolkit": {"enabled": True}})[0] is False


def test_explicit_driver_setting_ignores_nodes() -> None:
    busy = node("gpu-1", gpus="8")
    assert resolve_driver_enabled(True, [busy]) == (True, "driver_enabled set to true")
    assert resolve_driver_enabled(False, [BARE]) == (False, "driver_enabled set to false")
    assert resolve_driver_enabled("AUTO", None) == (True, "auto: no selected GPU node shows an installed driver")
    with pytest.raises(KubeInferError, match="true, false or 'auto'"):
        resolve_driver_enabled("yes", [])


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
    assert yaml.safe_load(time_slicing_config(3, "mixed")) == {
        "version": "v1",
        "flags": {"migStrategy": "mixed"},
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
    result = gpu_operator_values(nodes=[node("gpu-1", gpus="8")], values={"driver": {"enabled": True}})
    assert result["driver_enabled"] is True
    assert result["driver_reason"].startswith("values.driver.enabled=true overrides (auto: a driver is already installed")
    with pytest.raises(KubeInferError, match="values.driver.enabled must be true or false"):
        gpu_operator_values(values={"driver": {"enabled": "maybe"}})


@pytest.mark.parametrize("kwargs, problem", [
    ({"mig_strategy": "all"}, "mig_strategy must be one of none, single, mixed"),
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


def test_deep_merge() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert deep_merge(base, {"a": {"c": [3]}, "e": None}) == {"a": {"b": 1, "c": [3]}, "d": 1, "e": None}
    assert deep_merge(base, {"a": 5}) == {"a": 5, "d": 1}
    assert deep_merge({"a": 5}, {"a": {"x": 1}}) == {"a": {"x": 1}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}


# -- the stand-in chart under tests/gpu-operator-standin, rendered by the real helm ----------------
REPO = Path(__file__).resolve().parents[4]
STANDIN = REPO / "tests" / "gpu-operator-standin"
CACHE = Path(os.environ.get("KUBEINFER_CACHE", str(Path.home() / ".cache" / "kubeinfer")))
HELM_VERSION = re.search(r"^HELM_VERSION=(\S+)", (REPO / "tools" / "localcluster" / "versions.env").read_text(), re.M)
HELM = os.environ.get("HELM_BIN", str(CACHE / f"helm-{HELM_VERSION.group(1) if HELM_VERSION else 'missing'}" / "helm"))


def render(values: dict[str, Any], tmp_path: Path, api_versions: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    argv = [HELM, "template", "gpu-operator", str(STANDIN), "--namespace", "gpu-operator", "--values", str(values_file)]
    for api in api_versions:
        argv += ["--api-versions", api]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_standin_chart_version_is_the_pinned_default() -> None:
    chart = yaml.safe_load((STANDIN / "Chart.yaml").read_text())
    assert chart["name"] == "gpu-operator"
    assert chart["version"] == DEFAULT_CHART_VERSION


def test_standin_renders_computed_values(tmp_path: Path) -> None:
    computed = gpu_operator_values(nodes=[node("gpu-1", {"nvidia.com/gpu.present": "true"}, gpus="8")],
                                   time_slicing_replicas=4, service_monitor=True)
    docs = render(computed["values"], tmp_path, ("monitoring.coreos.com/v1/ServiceMonitor",))
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    daemonsets = {name for kind, name in kinds if kind == "DaemonSet"}
    assert daemonsets == {"nvidia-container-toolkit-daemonset", "nvidia-device-plugin-daemonset", "nvidia-dcgm-exporter",
                          "gpu-feature-discovery", "nvidia-operator-validator"}  # no driver: the nodes have one
    assert ("Deployment", "gpu-operator") in kinds
    assert ("ServiceMonitor", "nvidia-dcgm-exporter") in kinds
    policy = next(d for d in docs if d["kind"] == "ClusterPolicy")
    assert policy["metadata"]["name"] == "cluster-policy"
    assert policy["spec"]["driver"]["enabled"] is False
    assert policy["spec"]["devicePlugin"]["config"] == {"name": "time-slicing-config", "default": "any"}
    assert policy["spec"]["dcgmExporter"]["serviceMonitor"]["enabled"] is True
    assert policy["spec"]["mig"]["strategy"] == "single"
    for ds in (d for d in docs if d["kind"] == "DaemonSet"):
        pod = ds["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    plugin = next(d for d in docs if d["metadata"]["name"] == "nvidia-device-plugin-daemonset")
    assert plugin["spec"]["template"]["spec"]["volumes"] == [{"name": "device-plugin-config", "configMap": {"name": "time-slicing-config"}}]


def test_standin_driver_and_no_servicemonitor_without_crd(tmp_path: Path) -> None:
    docs = render(gpu_operator_values(driver_enabled=True, service_monitor=True)["values"], tmp_path)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("DaemonSet", "nvidia-driver-daemonset") in names
    assert "ServiceMonitor" not in {kind for kind, name in names}


def test_standin_schema_rejects_wrong_keys(tmp_path: Path) -> None:
    values_file = tmp_path / "bad.json"
    values_file.write_text(json.dumps({"mig": {"strategy": "all"}, "driver": {"enabled": "auto"}}))
    done = subprocess.run([HELM, "template", "x", str(STANDIN), "--values", str(values_file)], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    assert "/driver/enabled" in done.stderr and "/mig/strategy" in done.stderr


def test_driver_reason_stays_short_on_large_clusters() -> None:
    from ansible_collections.kubeinfer.llm.plugins.module_utils._gpu_operator_values import resolve_driver_enabled
    nodes = [{"metadata": {"name": f"gpu-{i}", "labels": {"nvidia.com/gpu.present": "true"}}} for i in range(1000)]
    enabled, reason = resolve_driver_enabled("auto", nodes, None)
    assert enabled is False
    assert "gpu-0" in reason and "gpu-999" not in reason and "more" in reason
    assert len(reason) < 400
