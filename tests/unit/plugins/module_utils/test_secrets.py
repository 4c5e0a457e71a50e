from __future__ import annotations

import base64
from typing import Any

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils import _secrets
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import MANAGED_BY, MANAGED_BY_LABEL
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import Kube
from ansible_collections.kubeinfer.llm.plugins.module_utils._secrets import HIDDEN, HIDDEN_CHANGED, MIN_FRAGMENT, desired_secret, scrub

from .fake_api import FakeApiClient, FakeApiException

TOKEN = "hf_QwErTyUiOpAsDfGhJkLzXcVbNm0123456789"
B64 = base64.b64encode(TOKEN.encode()).decode()
OTHER = "hf_ZzZzYyYyXxXxWwWwVvVvUuUuTtTt9876543210"
SECRET_PATH = "/api/v1/namespaces/vllm/secrets/hf-token"
NS_PATH = "/api/v1/namespaces/vllm"


def live_secret(token: str = TOKEN, labels: dict[str, str] | None = None, key: str = "HF_TOKEN", **extra: Any) -> dict[str, Any]:
    obj = {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "hf-token", "namespace": "vllm", "uid": "u1", "resourceVersion": "7",
                     "labels": {MANAGED_BY_LABEL: MANAGED_BY} if labels is None else labels},
        "data": {key: base64.b64encode(token.encode()).decode()},
    }
    obj.update(extra)
    return obj


def run(api: FakeApiClient, check_mode: bool = False, want_diff: bool = True, **kw: Any) -> dict[str, Any]:
    """hf_token_secret's runner with the module's parameters: its defaults, then ``kw``."""
    params: dict[str, Any] = {"name": "hf-token", "namespace": "vllm", "key": "HF_TOKEN", "token": TOKEN, "labels": {},
                              "state": "present", "existing_secret": False, "create_namespace": False}
    params.update(kw)
    return _secrets.run(Kube(api), params, check_mode, want_diff)


def assert_no_leak(anything: Any, *secrets: str) -> None:
    text = repr(anything)
    for secret in secrets or (TOKEN, B64):
        assert secret not in text
        for i in range(len(secret) - MIN_FRAGMENT + 1):
            assert secret[i:i + MIN_FRAGMENT] not in text, f"a fragment of a secret leaked: {text}"


def writes(api: FakeApiClient) -> list[dict[str, Any]]:
    return [c for c in api.calls if c["method"] != "GET"]


def test_same_token_makes_only_one_get() -> None:
    api = FakeApiClient({("GET", SECRET_PATH): live_secret()})
    result = run(api)
    assert result["changed"] is False and result["token_changed"] is False
    assert result["api_requests"] == {"get": 1}
    assert [c["method"] for c in api.calls] == ["GET"]
    assert result["diff"]["before"] == result["diff"]["after"]
    assert result["diff"]["after"]["data"] == {"HF_TOKEN": HIDDEN}
    assert_no_leak(result)


def test_new_secret_is_applied_opaque_with_managed_by_label() -> None:
    api = FakeApiClient({("PATCH", SECRET_PATH): lambda body: body, ("GET", NS_PATH): {"metadata": {"name": "vllm"}}})
    result = run(api, labels={"team": "ml"})
    assert result["changed"] is True and result["token_changed"] is True
    assert result["secret"] == {"name": "hf-token", "namespace": "vllm", "key": "HF_TOKEN"}
    (call,) = writes(api)
    assert call["headers"]["Content-Type"] == "application/apply-patch+yaml"
    assert call["query"] == {"fieldManager": "kubeinfer.llm", "fieldValidation": "Strict", "force": "true"}
    assert call["body"] == desired_secret("hf-token", "vllm", "HF_TOKEN", TOKEN, {"team": "ml"})
    assert call["body"]["type"] == "Opaque"
    assert call["body"]["data"] == {"HF_TOKEN": B64}
    assert call["body"]["metadata"]["labels"] == {"team": "ml", MANAGED_BY_LABEL: MANAGED_BY}
    assert result["diff"]["before"] == {}
    assert result["diff"]["after"]["data"] == {"HF_TOKEN": HIDDEN_CHANGED}
    assert_no_leak(result)


def test_changed_token_is_written_and_diff_says_only_changed() -> None:
    api = FakeApiClient({("GET", SECRET_PATH): live_secret(OTHER),
                         ("PATCH", SECRET_PATH): lambda body: body})
    result = run(api)
    assert result["changed"] is True and result["token_changed"] is True
    assert result["api_requests"] == {"get": 1, "apply": 1}
    assert result["diff"]["before"]["data"] == {"HF_TOKEN": HIDDEN}
    assert result["diff"]["after"]["data"] == {"HF_TOKEN": HIDDEN_CHANGED}
    assert_no_leak(result, TOKEN, B64, OTHER, base64.b64encode(OTHER.encode()).decode())


def test_label_change_alone_writes_but_token_unchanged() -> None:
    api = FakeApiClient({("GET", SECRET_PATH): live_secret(labels={}), ("PATCH", SECRET_PATH): lambda body: body})
    result = run(api)
    assert result["changed"] is True and result["token_changed"] is False
    assert result["diff"]["after"]["data"] == {"HF_TOKEN": HIDDEN}
    assert result["diff"]["after"]["metadata"]["labels"] == {MANAGED_BY_LABEL: MANAGED_BY}


def test_check_mode_sends_a_server_side_dry_run() -> None:
    api = FakeApiClient({("GET", SECRET_PATH): live_secret(OTHER), ("PATCH", SECRET_PATH): lambda body: body})
    result = run(api, check_mode=True)
    assert result["changed"] is True and result["token_changed"] is True
    (call,) = writes(api)
    assert call["query"]["dryRun"] == "All"
    assert_no_leak(result)


def test_create_namespace_in_check_mode_skips_the_secret_dry_run() -> None:
    api = FakeApiClient({("PATCH", NS_PATH): lambda body: body})
    result = run(api, check_mode=True, create_namespace=True)
    assert result["changed"] is True and result["token_changed"] is True
    assert [(c["method"], c["path"], c["query"].get("dryRun")) for c in api.calls] == [("GET", NS_PATH, None), ("PATCH", NS_PATH, "All")]


def test_create_namespace_then_secret() -> None:
    api = FakeApiClient({("PATCH", NS_PATH): lambda body: body, ("PATCH", SECRET_PATH): lambda body: body})
    result = run(api, create_namespace=True)
    assert result["changed"] is True
    assert [c["path"] for c in writes(api)] == [NS_PATH, SECRET_PATH]


def test_missing_namespace_names_the_parameter() -> None:
    api = FakeApiClient({("PATCH", SECRET_PATH): FakeApiException(404, 'namespaces "vllm" not found')})
    with pytest.raises(KubeInferError, match=r"^namespace: namespace 'vllm' does not exist"):
        run(api)


def test_server_error_echoing_the_token_is_masked() -> None:
    echo = f'Secret "hf-token" is invalid: data[HF_TOKEN]: Invalid value: "{B64}" (token {TOKEN}, truncated {TOKEN[:12]}...)'
    api = FakeApiClient({("PATCH", SECRET_PATH): FakeApiException(422, echo), ("GET", NS_PATH): {"metadata": {"name": "vllm"}}})
    with pytest.raises(KubeInferError) as info:
        run(api)
    err = info.value
    assert "could not write Secret vllm/hf-token (422)" in err.msg
    assert err.result["api_requests"] == {"get": 2, "apply": 1}, "the Secret and its namespace read, one apply"
    assert not hasattr(err, "body"), "the raw server body must not travel with the error"
    assert err.__cause__ is None and err.__suppress_context__
    assert_no_leak((err.msg, err.result, str(err), repr(err), err.args))


def test_unexpected_exception_text_is_masked() -> None:
    class Boom:
        def call_api(self, *a: Any, **kw: Any) -> Any:
            raise RuntimeError(f"socket closed while sending {B64}")

    with pytest.raises(KubeInferError) as info:
        run(Boom())  # type: ignore[arg-type]
    assert_no_leak((info.value.msg, info.value.result, info.value.args))


@pytest.mark.parametrize(("kw", "prefix"), [
    ({"token": ""}, "token: "),
    ({"token": None}, "token: "),
    ({"token": TOKEN + "\n"}, "token: "),
    ({"key": "HF TOKEN"}, "key: "),
    ({"key": "a/b"}, "key: "),
    ({"key": ".."}, "key: "),
    ({"name": "HF_Token"}, "name: "),
    ({"namespace": "a.b"}, "namespace: "),
    ({"labels": {"bad key!": "x"}}, "labels: "),
    ({"existing_secret": True, "state": "absent"}, "existing_secret: "),
])
def test_bad_input_fails_before_any_request(kw: dict[str, Any], prefix: str) -> None:
    api = FakeApiClient()
    with pytest.raises(KubeInferError) as info:
        run(api, **kw)
    assert info.value.msg.startswith(prefix), info.value.msg
    assert api.calls == []
    assert_no_leak((info.value.msg, info.value.result))


def test_existing_secret_passes_with_only_a_get() -> None:
    api = FakeApiClient({("GET", "/api/v1/namespaces/vllm/secrets/mine"): live_secret(OTHER, labels={}, key="token")})
    result = run(api, name="mine", key="token", token=None, existing_secret=True)
    assert result == {"changed": False, "token_changed": False, "api_requests": {"get": 1},
                      "secret": {"name": "mine", "namespace": "vllm", "key": "token"}}
    assert writes(api) == []


def test_existing_secret_ignores_a_given_token() -> None:
    api = FakeApiClient({("GET", SECRET_PATH): live_secret(OTHER, labels={})})
    result = run(api, existing_secret=True)
    assert result["changed"] is False and writes(api) == []
    assert_no_leak(result, TOKEN, B64, OTHER, base64.b64encode(OTHER.encode()).decode())


@pytest.mark.parametrize(("live", "pattern"), [
    (None, r"^name: existing_secret=true, but Secret 'hf-token' does not exist in namespace 'vllm'"),
    (live_secret(key="OTHER_KEY"), r"^key: existing Secret vllm/hf-token has no data key 'HF_TOKEN' \(its keys: OTHER_KEY\)"),
    (live_secret(token=""), r"^key: data key 'HF_TOKEN' of existing Secret vllm/hf-token is empty"),
])
def test_existing_secret_failures_name_the_parameter(live: dict[str, Any] | None, pattern: str) -> None:
    api = FakeApiClient({("GET", SECRET_PATH): live} if live else {})
    with pytest.raises(KubeInferError, match=pattern) as info:
        run(api, existing_secret=True)
    assert writes(api) == []
    assert info.value.result["api_requests"] == {"get": 1}
    assert_no_leak((info.value.msg, info.value.result))


def test_secret_of_another_type_is_refused() -> None:
    api = FakeApiClient({("GET", SECRET_PATH): live_secret(type="kubernetes.io/basic-auth")})
    with pytest.raises(KubeInferError, match=r"^name: Secret vllm/hf-token exists with type 'kubernetes.io/basic-auth'"):
        run(api)
    assert writes(api) == []


def test_absent_deletes_only_a_managed_secret() -> None:
    api = FakeApiClient({("GET", SECRET_PATH): live_secret(), ("DELETE", SECRET_PATH): {}})
    result = run(api, state="absent", token=None)
    assert result["changed"] is True and result["diff"] == {"before": {"metadata": {
        "name": "hf-token", "namespace": "vllm", "labels": {MANAGED_BY_LABEL: MANAGED_BY}}, "type": "Opaque",
        "data": {"HF_TOKEN": HIDDEN}}, "after": {}}
    assert [c["method"] for c in writes(api)] == ["DELETE"]
    assert_no_leak(result)

    api = FakeApiClient({("GET", SECRET_PATH): live_secret(labels={"owner": "someone"})})
    with pytest.raises(KubeInferError, match=r"^name: Secret vllm/hf-token is not managed by kubeinfer.llm"):
        run(api, state="absent", token=None)
    assert writes(api) == []


def test_absent_when_missing_is_a_no_op() -> None:
    api = FakeApiClient()
    assert run(api, state="absent", token=None)["changed"] is False
    assert writes(api) == []


def test_absent_in_check_mode_is_a_dry_run() -> None:
    api = FakeApiClient({("GET", SECRET_PATH): live_secret(), ("DELETE", SECRET_PATH): {}})
    run(api, state="absent", check_mode=True)
    (call,) = writes(api)
    assert call["query"]["dryRun"] == "All"


def test_scrub_masks_nested_values_and_fragments() -> None:
    out = scrub({"a": [f"x{TOKEN}y", ("t", TOKEN[5:20])], TOKEN: 3}, [TOKEN])
    assert_no_leak(out, TOKEN)
    assert scrub("short ab", ["ab"]) == "short ********"
    assert scrub("nothing here", ["", TOKEN]) == "nothing here"


def test_a_namespace_that_does_not_exist_is_refused_before_the_write() -> None:
    api = FakeApiClient()
    with pytest.raises(KubeInferError, match="^namespace: namespace 'vllm' does not exist; create it first or set create_namespace=true"):
        run(api)
    assert writes(api) == [] and [c["method"] for c in api.calls] == ["GET", "GET"]
