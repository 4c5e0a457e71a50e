"""Run the hf_token_secret module's main() end to end through AnsibleModule, and read its JSON output."""
from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from ansible.module_utils import basic
from ansible.module_utils.common.text.converters import to_bytes

from ansible_collections.kubeinfer.llm.plugins.module_utils import _module
from ansible_collections.kubeinfer.llm.plugins.modules import hf_token_secret

from ..module_utils.fake_api import FakeApiClient, FakeApiException

TOKEN = "hf_MnBvCxZlKjHgFdSaPoIuYtReWq5647382910"
B64 = base64.b64encode(TOKEN.encode()).decode()
SECRET_PATH = "/api/v1/namespaces/vllm/secrets/hf-token"
NAMESPACE = {("GET", "/api/v1/namespaces/vllm"): {"metadata": {"name": "vllm"}}}
LIVE = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "hf-token", "namespace": "vllm", "labels": {"app.kubernetes.io/managed-by": "kubeinfer.llm"}},
        "data": {"HF_TOKEN": B64}}


def run_module(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], api: FakeApiClient,
               args: dict[str, Any], check_mode: bool = False, diff: bool = True) -> tuple[dict[str, Any], str]:
    """Run main() as Ansible would; return the parsed result and the raw JSON text it printed."""
    module_args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": module_args})))
    monkeypatch.setattr(_module, "build_api_client", lambda params: api)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit):
        hf_token_secret.main()
    out = capsys.readouterr().out
    return json.loads(out), out


def assert_no_leak(text: str) -> None:
    for secret in (TOKEN, B64):
        assert secret not in text
        for i in range(len(secret) - 7):
            assert secret[i:i + 8] not in text, f"a fragment of the token leaked into: {text}"


def test_create_reports_no_token_anywhere(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeApiClient({("PATCH", SECRET_PATH): lambda body: body, **NAMESPACE})
    result, raw = run_module(monkeypatch, capsys, api, {"namespace": "vllm", "token": TOKEN})
    assert result["changed"] is True and result["token_changed"] is True
    assert result["secret"] == {"name": "hf-token", "namespace": "vllm", "key": "HF_TOKEN"}
    assert result["api_requests"] == {"get": 2, "apply": 1}  # the Secret, then its namespace (it exists)
    assert result["diff"]["after"]["data"] == {"HF_TOKEN": "<hidden, changed>"}
    assert result["invocation"]["module_args"]["token"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"
    assert api.calls[-1]["body"]["data"] == {"HF_TOKEN": B64}, "the token must reach the API server"
    assert_no_leak(raw)


def test_rerun_with_same_token_only_reads(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeApiClient({("GET", SECRET_PATH): LIVE})
    result, raw = run_module(monkeypatch, capsys, api, {"namespace": "vllm", "token": TOKEN})
    assert result["changed"] is False and result["token_changed"] is False
    assert result["api_requests"] == {"get": 1}
    assert [c["method"] for c in api.calls] == ["GET"]
    assert_no_leak(raw)


def test_token_from_environment(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeApiClient({("PATCH", SECRET_PATH): lambda body: body, **NAMESPACE})
    module_args = {"namespace": "vllm", "_ansible_check_mode": True, "_ansible_diff": False}
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": module_args})))
    monkeypatch.setattr(_module, "build_api_client", lambda params: api)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", TOKEN)
    with pytest.raises(SystemExit):
        hf_token_secret.main()
    raw = capsys.readouterr().out
    result = json.loads(raw)
    assert result["changed"] is True and "diff" not in result
    assert api.calls[-1]["query"]["dryRun"] == "All"
    assert api.calls[-1]["body"]["data"] == {"HF_TOKEN": B64}
    assert_no_leak(raw)


def test_api_error_echoing_the_token_is_masked_in_fail_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeApiClient({("PATCH", SECRET_PATH): FakeApiException(422, f"data[HF_TOKEN]: Invalid value: {B64!r} ({TOKEN[3:20]})"),
                         **NAMESPACE})
    result, raw = run_module(monkeypatch, capsys, api, {"namespace": "vllm", "token": TOKEN})
    assert result["failed"] is True
    assert result["msg"].startswith("could not write Secret vllm/hf-token (422)")
    assert_no_leak(raw)


def test_empty_token_fails_naming_the_parameter(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeApiClient()
    result = run_module(monkeypatch, capsys, api, {"namespace": "vllm", "token": ""})[0]
    assert result["failed"] is True and result["msg"].startswith("token: ")
    assert api.calls == []


def test_existing_secret_missing_key_fails_naming_key(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeApiClient({("GET", SECRET_PATH): LIVE})
    result, raw = run_module(monkeypatch, capsys, api, {"namespace": "vllm", "key": "token", "existing_secret": True})
    assert result["failed"] is True
    assert result["msg"] == "key: existing Secret vllm/hf-token has no data key 'token' (its keys: HF_TOKEN)"
    assert [c["method"] for c in api.calls] == ["GET"]
    assert_no_leak(raw)
