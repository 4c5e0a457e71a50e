"""gpu_operator and gpu_operator_info main() end to end through AnsibleModule, with a fake API and a fake helm."""
from __future__ import annotations

import json
from typing import Any

import pytest
from ansible.module_utils import basic
from ansible.module_utils.common.text.converters import to_bytes

from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm
from ansible_collections.kubeinfer.llm.plugins.modules import gpu_operator, gpu_operator_info

from ..module_utils.fake_api import FakeApiClient
from ..module_utils.test_gpu_operator import FakeHelm
from ..module_utils.test_gpu_verify import answers


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], module: Any, api: FakeApiClient,
             args: dict[str, Any], fake_helm: FakeHelm | None = None, check_mode: bool = False) -> dict[str, Any]:
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", to_bytes(json.dumps(
        {"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check_mode, _ansible_diff=True)})))
    monkeypatch.setattr(module, "build_api_client", lambda params: api)
    if fake_helm is not None:
        monkeypatch.setattr(module, "find_helm", lambda explicit, get_bin_path: "/bin/helm")
        monkeypatch.setattr(module, "Helm", lambda run_command, binary, params: Helm(fake_helm, binary, params))
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
