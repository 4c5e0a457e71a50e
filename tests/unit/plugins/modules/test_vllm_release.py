"""vllm_release's main() through AnsibleModule, and its action plugin's chart_ref default."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from ansible.errors import AnsibleActionFail
from ansible.module_utils import basic
from ansible.module_utils.common.text.converters import to_bytes

from ansible_collections.kubeinfer.llm.plugins.action import vllm_release as action
from ansible_collections.kubeinfer.llm.plugins.module_utils import _module
from ansible_collections.kubeinfer.llm.plugins.modules import vllm_release

from ..module_utils.fake_api import FakeApiClient

REPO = Path(__file__).resolve().parents[4]
NODE = {"metadata": {"name": "g1", "labels": {"nvidia.com/gpu.memory": "81920"}}, "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]}}


class FakeHelmRun:
    """module.run_command stand-in that answers the read-only helm commands and records every argv."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []

    def __call__(self, argv: list[str], environ_update: dict[str, str] | None = None) -> tuple[int, str, str]:
        self.argvs.append(argv)
        if argv[1:3] == ["show", "chart"]:
            return 0, "apiVersion: v2\nname: vllm\nversion: 0.1.0\nappVersion: v0.11.0\n", ""
        return 1, "", f"unexpected helm call {argv[1]}"


def run_module(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: dict[str, Any]) -> tuple[dict[str, Any], FakeHelmRun]:
    api = FakeApiClient({
        ("GET", "/version"): {"gitVersion": "v1.36.3"},
        ("GET", "/api/v1/nodes"): {"items": [NODE]},
        ("GET", "/api/v1/pods"): {"items": []},
    })
    helm = FakeHelmRun()
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, helm_binary="/bin/true")})))
    monkeypatch.setattr(_module, "build_api_client", lambda params: api)
    monkeypatch.setattr(basic.AnsibleModule, "run_command", lambda self, argv, **kw: helm(argv, kw.get("environ_update")))
    with pytest.raises(SystemExit):
        vllm_release.main()
    return json.loads(capsys.readouterr().out), helm


def test_too_large_model_fails_in_preflight_with_numbers(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    result, helm = run_module(monkeypatch, capsys, {"name": "big", "namespace": "ns", "model": "meta-llama/Llama-3.1-405B",
                                                    "chart_ref": "/c/vllm", "gpus_per_replica": 2})
    assert result["failed"] is True
    assert "does not fit: 405B parameters" in result["msg"] and "tensor_parallel=2" in result["msg"]
    assert result["sizing"]["gpu_memory_mib"] == 81920 and result["sizing"]["fits"] is False
    assert [a[1] for a in helm.argvs] == ["show"], "nothing but the chart metadata may be read before sizing"


def test_model_is_required_when_present(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    result, helm = run_module(monkeypatch, capsys, {"name": "r", "namespace": "ns"})
    assert result["failed"] is True and "model" in result["msg"]
    assert helm.argvs == []


def make_action(args: dict[str, Any], transport: str) -> tuple[action.ActionModule, mock.MagicMock]:
    task = mock.MagicMock()
    task.args = args
    task.async_val = 0
    connection = mock.MagicMock()
    connection.transport = transport
    plugin = action.ActionModule(task, connection, mock.MagicMock(), loader=None, templar=None, shared_loader_obj=None)
    execute = mock.MagicMock(return_value={"changed": False})
    plugin._execute_module = execute  # type: ignore[method-assign]
    return plugin, execute


def test_action_plugin_points_chart_ref_at_the_collection_chart() -> None:
    assert Path(action.CHART_PATH).resolve() == (REPO / "charts" / "vllm").resolve()
    assert os.path.isfile(os.path.join(action.CHART_PATH, "Chart.yaml"))
    plugin, execute = make_action({"name": "r", "namespace": "ns", "model": "m"}, "local")
    with mock.patch.object(action.ActionBase, "run", return_value={}):
        plugin.run(task_vars={})
    sent = execute.call_args.kwargs["module_args"]
    assert sent["chart_ref"] == action.CHART_PATH and execute.call_args.kwargs["module_name"] == "kubeinfer.llm.vllm_release"


def test_action_plugin_keeps_an_explicit_chart_ref_on_any_connection() -> None:
    plugin, execute = make_action({"name": "r", "namespace": "ns", "model": "m", "chart_ref": "oci://x/vllm"}, "ssh")
    with mock.patch.object(action.ActionBase, "run", return_value={}):
        plugin.run(task_vars={})
    assert execute.call_args.kwargs["module_args"]["chart_ref"] == "oci://x/vllm"


def test_action_plugin_refuses_a_remote_host_without_chart_ref() -> None:
    plugin, execute = make_action({"name": "r", "namespace": "ns", "model": "m"}, "ssh")
    with mock.patch.object(action.ActionBase, "run", return_value={}), pytest.raises(AnsibleActionFail, match="delegate_to: localhost"):
        plugin.run(task_vars={})
    execute.assert_not_called()
