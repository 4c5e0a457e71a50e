"""The shared name rules, quantities and conflict retry: pure logic, checked against the rules of
k8s.io/apimachinery/pkg/util/validation/validation.go and Helm's release-name limit."""
from __future__ import annotations

from typing import Any

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils import _k8s_names as names
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import ApiError, retry_on_conflict


@pytest.mark.parametrize("value", ["a", "vllm", "a-b-1", "x" * 63])
def test_dns_labels_accepted(value: str) -> None:
    names.check_namespace(value)


@pytest.mark.parametrize("value", ["", "A", "-a", "a-", "a.b", "a_b", "x" * 64])
def test_dns_labels_refused_naming_the_parameter(value: str) -> None:
    with pytest.raises(KubeInferError, match=r"^namespace: .* is not a valid namespace name"):
        names.check_namespace(value)


def test_release_name_is_a_subdomain_of_at_most_53() -> None:
    names.check_release_name("gpu-operator.v1")
    names.check_release_name("x" * 53)
    with pytest.raises(KubeInferError, match="^release_name: .*at most 53"):
        names.check_release_name("x" * 54)
    with pytest.raises(KubeInferError, match="^name: "):
        names.check_release_name("Bad", param="name")


@pytest.mark.parametrize("key,ok", [("HF_TOKEN", True), ("a.b-c_d", True), (".", False), ("..", False),
                                    ("a/b", False), ("", False), ("x" * 254, False)])
def test_data_keys(key: str, ok: bool) -> None:
    assert (names.data_key_error(key) is None) is ok


@pytest.mark.parametrize("key,ok", [("app", True), ("nvidia.com/gpu.present", True), ("a/b/c", False),
                                    ("Bad_Prefix.com/x", False), ("/x", False), ("x" * 64, False), ("-a", False)])
def test_label_keys(key: str, ok: bool) -> None:
    assert (names.label_key_error(key) is None) is ok


def test_labels_checked_key_then_value() -> None:
    names.check_labels({"a": "b", "c": "", "gone": None})
    with pytest.raises(KubeInferError, match="^pod_labels: invalid label key"):
        names.check_labels({"-x": "y"}, param="pod_labels")
    with pytest.raises(KubeInferError, match="^labels: invalid value 'a b'"):
        names.check_labels({"k": "a b"})


def test_managed_labels_and_is_managed() -> None:
    labels = names.managed_labels(**{names.COMPONENT_LABEL: "probe"})
    assert labels == {"app.kubernetes.io/managed-by": "kubeinfer.llm", "app.kubernetes.io/component": "probe"}
    assert names.is_managed({"metadata": {"labels": labels}})
    assert not names.is_managed({"metadata": {"labels": {"app.kubernetes.io/managed-by": "Helm"}}})
    assert not names.is_managed(None)


@pytest.mark.parametrize("value,count", [("8", 8), (8, 8), (" 2 ", 2), ("0", 0), (None, 0), ("", 0), ("1.5", 0), ("2k", 0)])
def test_int_quantity(value: Any, count: int) -> None:
    assert names.int_quantity(value) == count


def test_retry_on_conflict_retries_only_409_and_gives_up_naming_what() -> None:
    calls: list[int] = []

    def conflicted_twice(attempt: int) -> str:
        calls.append(attempt)
        if attempt < 3:
            raise ApiError("conflict", status=409)
        return "written"

    assert retry_on_conflict(conflicted_twice, "ConfigMap x") == "written"
    assert calls == [1, 2, 3]

    def forbidden(attempt: int) -> None:
        raise ApiError("forbidden", status=403)

    with pytest.raises(ApiError, match="forbidden"):
        retry_on_conflict(forbidden, "ConfigMap x")

    def always(attempt: int) -> None:
        raise ApiError("conflict", status=409)

    with pytest.raises(KubeInferError, match="^ConfigMap x kept changing under concurrent writers; gave up after 5 attempts"):
        retry_on_conflict(always, "ConfigMap x")
