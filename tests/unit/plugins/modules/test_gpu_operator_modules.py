"""gpu_operator, gpu_operator_info and gpu_node main() end to end through AnsibleModule, with a fake API and a fake helm."""
from __future__ import annotations

import json
from typing import Any

import pytest
from ansible.module_utils import basic
from ansible.module_utils.common.text.converters import to_bytes

from ansible_collections.kubeinfer.llm.plugins.module_utils import _module
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm
from ansible_collections.kubeinfer.llm.plugins.modules import gpu_node, gpu_operator, gpu_operator_info

from ..module_utils.fake_api import FakeApiClient
from ..module_utils.fake_cluster import FakeCluster, answer_probes, pod_succeeded, probe_answer, probe_pods
from ..module_utils.test_gpu_operator import FakeHelm, linked
from ..module_utils.test_gpu_verify import answers

NFD_LABEL = "feature.node.kubernetes.io/pci-10de.present"


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], module: Any, api: Any,
             args: dict[str, Any], fake_helm: FakeHelm | None = None, check_mode: bool = False) -> dict[str, Any]:
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", to_bytes(json.dumps(
        {"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check_mode, _ansible_diff=True)})))
    monkeypatch.setattr(_module, "build_api_client", lambda params: api)
    if fake_helm is not None:
        linked(api, fake_helm)
        monkeypatch.setattr(_module, "find_helm", lambda explicit, get_bin_path: "/bin/helm")
        monkeypatch.setattr(_module, "Helm", lambda run_command, binary, params: Helm(fake_helm, binary, params))
    with pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


def test_gpu_operator_installs_then_does_nothing(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    api, fake = FakeApiClient({("GET", "/api/v1/nodes"): {"items": []}}), FakeHelm()
    first = run_main(monkeypatch, capsys, gpu_operator, api, {"driver_enabled": "false"}, fake)
    assert first["changed"] is True and first["driver_enabled"] is False
    assert first["diff"]["after"]["chart"] == "gpu-operator-v26.7.0"
    second = run_main(monkeypatch, capsys, gpu_operator, api, {"driver_enabled": "false"}, fake)
    assert second["changed"] is False and len(fake.upgrades) == 1
    assert not any(" upgrade " in c for c in second["helm_commands"])


def test_gpu_operator_bad_input_fails_naming_the_parameter(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    api, fake = FakeApiClient(), FakeHelm()
    result = run_main(monkeypatch, capsys, gpu_operator, api, {"time_slicing_replicas": 1}, fake)
    assert result["failed"] is True and result["msg"].startswith("time_slicing_replicas")
    assert api.calls == [] and fake.upgrades == []
    result = run_main(monkeypatch, capsys, gpu_operator, api, {"mig_strategy": "all"}, fake)
    assert result["failed"] is True and "mig_strategy" in result["msg"]
    result = run_main(monkeypatch, capsys, gpu_operator, api, {"chart_ref": "/does/not/exist"}, fake)
    assert result["failed"] is True and result["msg"].startswith("chart_ref: local chart /does/not/exist does not exist")
    assert api.calls == [] and fake.upgrades == []


def test_gpu_operator_info_reports_and_never_changes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeApiClient(answers(state="notReady"))
    result = run_main(monkeypatch, capsys, gpu_operator_info, api, {"run_test_pod": True}, check_mode=True)
    assert result["changed"] is False and result["ready"] is False
    assert result["problems"] == ["ClusterPolicy notReady"]
    failed = run_main(monkeypatch, capsys, gpu_operator_info, api, {"fail_on_not_ready": True})
    assert failed["failed"] is True and failed["msg"] == "GPU Operator not ready: ClusterPolicy notReady"


def gpu_cluster(namespace: str = "kube-system", **answers: str) -> FakeCluster:
    cluster = FakeCluster()
    for name, labels in (("gpu-0", {NFD_LABEL: "true"}), ("cpu-0", {})):
        cluster.add({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": {}})
    answer_probes(cluster, {n.replace("_", "-"): pod_succeeded(a) for n, a in answers.items()}, namespace=namespace)
    return cluster


def test_gpu_operator_auto_runs_the_probe_with_its_options(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cluster, fake = gpu_cluster("gpu-probes", gpu_0=probe_answer(smi="/usr/bin/nvidia-smi", driver="550.54.15")), FakeHelm()
    result = run_main(monkeypatch, capsys, gpu_operator, cluster,
                      {"probe_image": "mirror.example/validator:v26.7.0", "probe_namespace": "gpu-probes"}, fake)
    assert result["changed"] is True and result["driver_enabled"] is False
    assert result["driver_probe"] == {"gpu-0": {"nvidia_pci": ["0302"], "nvidia_smi": "/usr/bin/nvidia-smi", "driver": "550.54.15"}}
    (pod,) = [c["body"] for c in cluster.calls if c["method"] == "POST" and c["body"]["kind"] == "Pod"]
    assert pod["metadata"]["namespace"] == "gpu-probes" and pod["spec"]["containers"][0]["image"] == "mirror.example/validator:v26.7.0"
    assert probe_pods(cluster, "gpu-probes") == []
    assert fake.upgrades[0]["values"]["driver"] == {"enabled": False}


@pytest.mark.parametrize("module", [gpu_operator, gpu_node])
def test_bad_probe_options_fail_before_any_request(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], module: Any) -> None:
    cluster, fake = gpu_cluster(), FakeHelm()
    for args, start in (({"probe_timeout": 0}, "probe_timeout: "), ({"probe_image": ""}, "probe_image: ")):
        result = run_main(monkeypatch, capsys, module, cluster, args, fake if module is gpu_operator else None)
        assert result["failed"] is True and result["msg"].startswith(start), result["msg"]
    assert cluster.calls == [] and fake.upgrades == []


def test_gpu_node_without_a_selection_finds_the_gpu_nodes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cluster = gpu_cluster()
    result = run_main(monkeypatch, capsys, gpu_node, cluster, {"labels": {"kubeinfer.io/accelerator": "nvidia"}})
    assert result["changed"] is True and result["matched"] == ["gpu-0"]
    assert result["selected_by"] == "node-feature-discovery labels"
    assert cluster.objects["/api/v1/nodes/gpu-0"]["metadata"]["labels"]["kubeinfer.io/accelerator"] == "nvidia"
    assert not [c for c in cluster.calls if c["method"] == "POST"], "NFD labels: no probe pod"
