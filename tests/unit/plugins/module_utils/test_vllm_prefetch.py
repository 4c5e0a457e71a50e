"""vllm_release's model prefetch: option checks, values, the startup budget, helm's hook timeout and the failure report."""
from __future__ import annotations

from typing import Any

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.kubeinfer.llm.plugins.module_utils import _sizing, _vllm, _vllm_values
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm
from ansible_collections.kubeinfer.llm.plugins.modules import vllm_release

PREFETCH = {"type": "pvc", "existing_claim": "models", "prefetch": True}


def params(**over: Any) -> dict[str, Any]:
    given = {"name": "llama", "namespace": "serve", "model": "meta-llama/Llama-3.1-8B-Instruct", "chart_ref": "/c/charts/vllm",
             "revision": "0e9e39f249a16976918f6564b8830bc894c89659", "model_cache": PREFETCH, **over}
    checked = ArgumentSpecValidator(vllm_release.ARGUMENT_SPEC).validate({k: v for k, v in given.items() if v is not None})
    assert not checked.error_messages, checked.error_messages
    return dict(checked.validated_parameters)


@pytest.mark.parametrize("over, fragment", [
    ({"revision": None}, "revision: required with model_cache.prefetch=true"),
    ({"revision": " "}, "revision: required with model_cache.prefetch=true"),
    ({"model_cache": {"type": "pvc", "prefetch": True}}, "model_cache.existing_claim: required with model_cache.prefetch=true"),
    ({"model_cache": {"type": "emptyDir", "prefetch": True}}, "model_cache.type: must be pvc with model_cache.prefetch=true"),
    ({"model_cache": dict(PREFETCH, prefetch_timeout=0)}, "model_cache.prefetch_timeout: must be >= 1"),
    ({"model_cache": {"type": "pvc", "existing_claim": "m", "prefetch_timeout": 60}}, "model_cache.prefetch_timeout: only with"),
])
def test_prefetch_options_are_checked_before_any_request(over: dict[str, Any], fragment: str) -> None:
    with pytest.raises(KubeInferError) as info:
        _vllm_values.validate(params(**over))
    assert fragment in info.value.msg


def test_prefetch_values_turn_the_job_on_and_bound_it() -> None:
    values = _vllm_values.build_values(params(), 105)
    assert values["modelCache"] == {"type": "pvc", "pvc": {"existingClaim": "models"},
                                    "prefetch": {"enabled": True, "activeDeadlineSeconds": 3600}}
    assert values["model"]["revision"] == "0e9e39f249a16976918f6564b8830bc894c89659"
    assert _vllm_values.hook_timeout(values) == 3660
    custom = _vllm_values.build_values(params(model_cache=dict(PREFETCH, prefetch_timeout=600)), 105)
    assert _vllm_values.hook_timeout(custom) == 660
    assert _vllm_values.hook_timeout(_vllm_values.build_values(params(model_cache=None), 135)) is None


def test_prefetch_budgets_a_local_load() -> None:
    """8B bf16 (14.9 GiB): ceil((60 + 14.9 / 0.5) * 1.5) = 135 s cold, ceil((60 + 14.9 / 1.5) * 1.5) = 105 s prefetched."""
    cold = _vllm_values.sizing(params(model_cache=None), [], pending=True)[1]
    warm = _vllm_values.sizing(params(), [], pending=True)[1]
    assert cold["seconds"] == 135 and cold["load_throughput_gib_s"] == _sizing.DEFAULT_LOAD_THROUGHPUT_GIB_S
    assert warm["seconds"] == 105 and warm["load_throughput_gib_s"] == _sizing.PREFETCHED_LOAD_THROUGHPUT_GIB_S
    assert warm["source"] == "model size / load throughput (prefetched cache)"
    # 70B bf16 (130.4 GiB): 482 s cold, 221 s prefetched.
    big = params(model="meta-llama/Llama-3.1-70B-Instruct", gpus_per_replica=4)
    assert _vllm_values.sizing(big, [], pending=True)[1]["seconds"] == 221
    # An explicit throughput still wins.
    given = _vllm_values.sizing(params(load_throughput_gib_s=0.5), [], pending=True)[1]
    assert given["seconds"] == 135 and given["source"] == "model size / load throughput"


def test_helm_waits_for_the_hook_job_without_wait() -> None:
    argv: list[list[str]] = []

    def run_command(args: list[str], environ_update: dict[str, str] | None = None) -> tuple[int, str, str]:
        argv.append(args)
        return 0, "", ""

    helm = Helm(run_command, "/bin/helm", {})
    helm.upgrade_install("r", "c", "ns", {}, hook_timeout=660)
    last = argv[-1]
    assert last[last.index("--timeout") + 1] == "660s" and "--wait" not in last
    helm.upgrade_install("r", "c", "ns", {}, wait=True, timeout=300, hook_timeout=660)
    last = argv[-1]
    assert last[last.index("--wait"):last.index("--wait") + 3] == ["--wait", "--timeout", "660s"]
    helm.upgrade_install("r", "c", "ns", {})
    assert "--timeout" not in argv[-1]


def failed_job() -> dict[str, Any]:
    return {"metadata": {"name": "llama-prefetch", "annotations": {"kubeinfer.io/model-revision": "v2"}},
            "status": {"failed": 1, "startTime": "2026-12-03T12:00:00Z", "conditions": [
                {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"},
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}}


def failed_pod() -> dict[str, Any]:
    message = ("Traceback (most recent call last):\n  File x\n"
               "huggingface_hub.errors.HfHubHTTPError: 401 Client Error: Unauthorized for url: http://hub/api\n\nInvalid credentials\n")
    return {"metadata": {"name": "llama-prefetch-abcde"}, "status": {"phase": "Failed", "containerStatuses": [
        {"name": "download", "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": message}}}]}}


def test_a_failed_prefetch_is_reported_with_the_job_its_reason_and_the_cli_error() -> None:
    view = _vllm.prefetch_view(failed_job(), [failed_pod()])
    assert view["failed"] and not view["complete"] and view["reason"] == "BackoffLimitExceeded" and view["revision"] == "v2"
    assert view["pods"] == [{"name": "llama-prefetch-abcde", "exit_code": 1,
                             "error": "huggingface_hub.errors.HfHubHTTPError: 401 Client Error: Unauthorized for url: http://hub/api Invalid credentials"}]
    msg = _vllm.prefetch_failure(view, "serve")
    assert msg.startswith("model_cache.prefetch: the prefetch Job serve/llama-prefetch failed: BackoffLimitExceeded "
                          "(Job has reached the specified backoff limit); pod llama-prefetch-abcde exited 1: huggingface_hub.errors")
    assert "the Deployment was not changed" in msg


def test_prefetch_view_of_a_complete_and_of_a_missing_job() -> None:
    job = {"metadata": {"name": "j"}, "status": {"succeeded": 1, "completionTime": "2026-12-03T12:00:05Z",
                                                 "conditions": [{"type": "Complete", "status": "True"}]}}
    view = _vllm.prefetch_view(job, None)
    assert view["complete"] and not view["failed"] and view["completion_time"] == "2026-12-03T12:00:05Z" and "pods" not in view
    assert _vllm.prefetch_view(None, None) == {"exists": False}


def test_prefetch_job_is_found_by_its_component_label() -> None:
    docs = [{"kind": "Deployment", "metadata": {"name": "llama", "labels": {"app.kubernetes.io/component": "inference-server"}}},
            {"kind": "Job", "metadata": {"name": "llama-prefetch", "labels": {"app.kubernetes.io/component": "model-prefetch"}}}]
    assert _vllm.prefetch_job(docs) == "llama-prefetch"
    assert _vllm.prefetch_job(docs[:1]) is None


def test_last_error_of_a_plain_log_is_its_last_line() -> None:
    assert _vllm.last_error("downloading\nconnection refused\n") == "connection refused"
    assert _vllm.last_error("") == ""
