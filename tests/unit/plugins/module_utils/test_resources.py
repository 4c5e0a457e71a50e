from __future__ import annotations

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import (
    MASK,
    ApiError,
    Kube,
    clean,
    diff,
    ensure,
    is_subset,
)

from .fake_api import FakeApiClient, FakeApiException

CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}, "data": {"a": "1"}}


def test_subset_ignores_server_defaults_but_not_changes() -> None:
    live = {"metadata": {"name": "c", "uid": "u"}, "data": {"a": "1"}, "spec": {"ports": [{"port": 80, "protocol": "TCP"}]}}
    assert is_subset({"metadata": {"name": "c"}, "data": {"a": "1"}, "spec": {"ports": [{"port": 80}]}}, live)
    assert not is_subset({"data": {"a": "2"}}, live)
    assert not is_subset({"spec": {"ports": [{"port": 80}, {"port": 81}]}}, live)
    assert is_subset({"spec": {"replicas": "3"}}, {"spec": {"replicas": 3}})


def test_clean_drops_churn_and_masks_secrets() -> None:
    secret = {"kind": "Secret", "metadata": {"name": "s", "resourceVersion": "9", "generation": 2, "managedFields": [{}]},
              "data": {"token": "c2VjcmV0"}}
    out = clean(secret)
    assert out == {"kind": "Secret", "metadata": {"name": "s"}, "data": {"token": MASK}}
    assert secret["data"]["token"] == "c2VjcmV0", "the input must not be modified"
    assert "c2VjcmV0" not in repr(diff(secret, secret))


def test_ensure_without_change_makes_no_write() -> None:
    api = FakeApiClient({("GET", "/api/v1/namespaces/ns/configmaps/c"): dict(CM, metadata=dict(CM["metadata"], uid="1"))})
    kube = Kube(api)
    changed, before, after = ensure(kube, CM, check_mode=False)
    assert not changed and before == after
    assert dict(kube.requests) == {"get": 1}


def test_ensure_applies_with_field_manager_and_dry_runs_in_check_mode() -> None:
    api = FakeApiClient({("PATCH", "/api/v1/namespaces/ns/configmaps/c"): lambda body: body})
    changed, before, after = ensure(Kube(api), CM, check_mode=True)
    assert changed and before is None and after == CM
    call = api.calls[-1]
    assert call["headers"]["Content-Type"] == "application/apply-patch+yaml"
    assert call["query"] == {"fieldManager": "kubeinfer.llm", "fieldValidation": "Strict", "force": "true", "dryRun": "All"}


def test_api_errors_carry_status_and_message() -> None:
    api = FakeApiClient({("PATCH", "/api/v1/namespaces/ns/configmaps/c"): FakeApiException(409, "Apply failed with 1 conflict")})
    with pytest.raises(ApiError) as err:
        Kube(api).apply(CM)
    assert err.value.status == 409 and "conflict" in err.value.msg


def test_unknown_kind_is_discovered_once() -> None:
    api = FakeApiClient({("GET", "/apis/example.com/v1"): {"resources": [
        {"name": "widgets", "kind": "Widget", "namespaced": True}, {"name": "widgets/status", "kind": "Widget", "namespaced": True}]},
        ("GET", "/apis/example.com/v1/namespaces/a/widgets/w"): {"kind": "Widget"}})
    kube = Kube(api)
    assert kube.get("example.com/v1", "Widget", "w", "a") == {"kind": "Widget"}
    assert kube.get("example.com/v1", "Widget", "w", "a") == {"kind": "Widget"}
    assert kube.requests["discovery"] == 1
