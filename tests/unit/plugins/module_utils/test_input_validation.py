# -*- coding: utf-8 -*-
# Copyright: contributors to kubeinfer.llm
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The input checks every runner makes before its first request: each message starts with the parameter and quotes
the value, and a runner that refuses its input sends nothing. tests/integration/test_bad_input.py drives the same
checks through ansible-playbook against the real API server."""
from __future__ import annotations

from typing import Any

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils import _adapter, _client, _completion, _gpu_verify, _hpa, _nodes, _secrets, _vllm_values
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm
from ansible_collections.kubeinfer.llm.plugins.module_utils._k8s_names import check_metric_name, check_range, label_selector_error
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import ApiError, Kube, transport_reason
from ansible_collections.kubeinfer.llm.plugins.modules import completion_check, inference_hpa, metrics_adapter

from .fake_api import FakeApiClient
from .spec_params import spec_params
from .test_gpu_verify import params as verify_params
from .test_vllm import params as vllm_params

# -- label selectors: the grammar of k8s.io/apimachinery/pkg/labels/selector.go ---------------------------------------


@pytest.mark.parametrize("selector", ["", "a", "!a", "a=b", "a==b", "a!=b", "a!=", "a in (x, y)", "a notin (x),b", "a>3", "a<-1",
                                      "kubeinfer.io/accelerator=nvidia,feature.node.kubernetes.io/pci-10de.present=true"])
def test_selectors_the_api_server_parses_are_accepted(selector: str) -> None:
    assert label_selector_error(selector) is None


@pytest.mark.parametrize("selector, why", [
    ("a=b,,c", "empty requirement"), ("a=b,", "empty requirement"), ("a b", "is none of"), ("a=b c", "is none of"),
    ("a in x", "is none of"), ("a in (x", "unbalanced"), ("a>x", "needs an integer"), ("a=-b", "value '-b'"),
    ("Bad Key=1", "is none of"), ("x/y/z=1", "key 'x/y/z'"), ("-a=1", "key '-a'"), ("a in (x, -y)", "value '-y'"),
])
def test_malformed_selectors_are_refused_saying_why(selector: str, why: str) -> None:
    assert why in (label_selector_error(selector) or "")


def test_gpu_node_refuses_a_malformed_selector_before_any_request() -> None:
    api = FakeApiClient()
    with pytest.raises(KubeInferError, match=r"^label_selector: 'gpu=true,,x' is not a valid label selector \(an empty requirement"):
        _nodes.run(Kube(api), node_params(label_selector="gpu=true,,x"), False, False)
    assert api.calls == []


def node_params(**over: Any) -> dict[str, Any]:
    base = {"names": None, "label_selector": "gpu=true", "labels": {}, "taints": [], "state": "present", "require_match": True,
            "parallel": 32, "probe_image": "validator:test", "probe_namespace": "kube-system", "probe_timeout": 30}
    base.update(over)
    return base


@pytest.mark.parametrize("over, message", [
    ({"names": ["ok", "Bad_Name"]}, r"^names\[1\]: 'Bad_Name' is not a valid node name"),
    ({"taints": [{"key": "a", "value": None, "effect": "NoSchedule", "state": "present"},
                 {"key": "a", "value": "x", "effect": "NoSchedule", "state": "present"}]},
     r"^taints\[1\]: taint 'a' with effect NoSchedule is already taints\[0\]"),
    ({"parallel": 0}, r"^parallel: must be at least 1"),
])
def test_gpu_node_inputs(over: dict[str, Any], message: str) -> None:
    with pytest.raises(KubeInferError, match=message):
        _nodes.validate(node_params(**over))


# -- numbers and metric names -----------------------------------------------------------------------------------------

def test_range_messages_name_the_bounds_and_the_value() -> None:
    check_range(None, "x", 1)
    check_range(5, "x", 1, 10)
    with pytest.raises(KubeInferError, match=r"^port: must be between 1 and 65535, got 70000$"):
        check_range(70000, "port", 1, 65535)
    with pytest.raises(KubeInferError, match=r"^max_tokens: must be at least 1 tokens, got 0$"):
        check_range(0, "max_tokens", 1, unit="tokens")


@pytest.mark.parametrize("name, ok", [("vllm_queue_depth", True), ("vllm:num_requests_waiting", True), ("queue depth", False),
                                      ("1queue", False), ("", False), ("queue-depth", False)])
def test_metric_names(name: str, ok: bool) -> None:
    if ok:
        check_metric_name(name)
    else:
        with pytest.raises(KubeInferError, match=r"^custom_metric_name: .* is not a valid metric name"):
            check_metric_name(name)


# -- connection options ------------------------------------------------------------------------------------------------

def test_connection_files_and_urls_are_checked_first(tmp_path: Any) -> None:
    with pytest.raises(KubeInferError, match=r"^kubeconfig: file /nonexistent/kubeconfig does not exist"):
        _client.validate_connection({"kubeconfig": "/nonexistent/kubeconfig"})
    with pytest.raises(KubeInferError, match=r"^ca_cert: .* is not a readable file"):
        _client.validate_connection({"ca_cert": str(tmp_path)})
    with pytest.raises(KubeInferError, match=r"^host: 'localhost:6443' is not an http:// or https:// URL"):
        _client.validate_connection({"host": "localhost:6443"})


def test_a_context_the_kubeconfig_lacks_is_named(tmp_path: Any) -> None:
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
                          "users: [{name: u, user: {token: t}}]\ncontexts: [{name: real, context: {cluster: c, user: u}}]\n"
                          "current-context: real\n")
    with pytest.raises(KubeInferError, match=r"^context: 'nope' is not a context of .* \(its contexts: real\)"):
        _client.build_api_client({"kubeconfig": str(kubeconfig), "context": "nope"})
    kubeconfig.write_text("{{ not yaml")
    with pytest.raises(KubeInferError, match=r"^kubeconfig: could not load the cluster configuration from "):
        _client.build_api_client({"kubeconfig": str(kubeconfig)})


def test_origin_names_the_option_that_set_the_server_and_the_credentials() -> None:
    assert _client.origin({"host": "https://h", "api_key": "t"}) == {"server": "host", "credentials": "api_key", "ca": "host"}
    expected = {"server": "kubeconfig (/k)", "credentials": "kubeconfig (/k)", "ca": "ca_cert"}
    assert _client.origin({"kubeconfig": "/k", "ca_cert": "/ca"}) == expected


class ConnectionRefused(Exception):
    """What urllib3's MaxRetryError looks like: its reason is a NewConnectionError whose text starts with an object repr."""

    reason = "<urllib3.connection.HTTPSConnection object at 0x7f2a5c1d3e50>: Failed to establish a new connection: [Errno 111] Connection refused"


class CertificateRejected(Exception):
    status = 0  # the kubernetes client maps urllib3's SSLError to ApiException(status=0)
    reason = "SSLError\n[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate (_ssl.c:1006)"


class Unauthorized(Exception):
    status = 401
    reason = "Unauthorized"
    body = '{"kind":"Status","message":"Unauthorized","code":401}'


@pytest.mark.parametrize("error, message", [
    (ConnectionRefused(), r"^host: cannot reach the API server https://127.0.0.1:1 \(\[Errno 111\] Connection refused\)$"),
    (CertificateRejected(), r"^host: the TLS certificate of the API server https://127.0.0.1:1 is not trusted \(certificate verify failed: "
                            r"unable to get local issuer certificate"),
    (Unauthorized(), r"^api_key: the API server https://127.0.0.1:1 refused the credentials \(401 Unauthorized\)$"),
])
def test_connection_failures_name_the_option_and_the_server_never_an_object(error: Exception, message: str) -> None:
    e = ApiError.from_exception("GET", "/api/v1/nodes", error, "https://127.0.0.1:1", {"server": "host", "credentials": "api_key", "ca": "host"})
    assert e.status in (None, 401)
    assert "object at 0x" not in e.msg
    with pytest.raises(ApiError, match=message):
        raise e


def test_transport_reason_strips_object_reprs() -> None:
    assert transport_reason(Exception("<urllib3.connection.HTTPConnection object at 0x1>: something odd")) == "something odd"


def test_helm_names_the_option_when_the_cluster_is_unreachable() -> None:
    def run_command(argv: list[str], environ_update: Any = None) -> tuple[int, str, str]:
        return 1, "", 'Error: Kubernetes cluster unreachable: Get "https://127.0.0.1:1/version": dial tcp 127.0.0.1:1: connect: connection refused'

    helm = Helm(run_command, "helm", {"kubeconfig": "/k"})
    with pytest.raises(KubeInferError, match=r"^kubeconfig \(/k\): helm could not use the API server: Kubernetes cluster unreachable: "):
        helm.release("gpu-operator", "gpu-operator")


# -- the token Secret ---------------------------------------------------------------------------------------------------

def test_a_token_with_inner_whitespace_is_refused_without_echoing_it() -> None:
    params = {"name": "hf-token", "namespace": "vllm", "key": "HF_TOKEN", "token": "hf_aaaa hf_bbbb", "labels": {},
              "existing_secret": False, "state": "present", "create_namespace": False}
    with pytest.raises(KubeInferError, match=r"^token: the token contains whitespace") as info:
        _secrets.validate(params)
    assert "hf_aaaa" not in info.value.msg


# -- vllm_release: flags, variables and tokens the chart owns, scheduling -----------------------------------------------

TOKEN = "hf_" + "a1B2c3D4e5" * 4


@pytest.mark.parametrize("over, message", [
    ({"extra_args": ["--enforce-eager", "--model=other"]}, r"^extra_args\[1\]: '--model=other' is a flag the chart renders itself; set it through model$"),
    ({"extra_args": ["--max-num-seqs", "8"]}, r"^extra_args\[0\]: '--max-num-seqs' is a flag .* values.vllm.maxNumSeqs"),
    ({"extra_args": ["--hf-token=x"]}, r"^extra_args\[0\]: '--hf-token' would put a secret .* hf_token_secret"),
    ({"extra_args": ["--quantization=awq"]}, r"^extra_args\[0\]: .* set it through quantization"),
    ({"values": {"vllm": {"extraArgs": ["--api-key", "k"]}}}, r"^values.vllm.extraArgs\[0\]: '--api-key' would put a secret"),
    ({"values": {"extraEnv": [{"name": "HF_TOKEN", "value": "x"}]}}, r"^values.extraEnv\[0\].name: 'HF_TOKEN' is reserved; it comes from hf_token_secret"),
    ({"values": {"podAnnotations": {"note": TOKEN}}}, r"^values.podAnnotations.note: holds a Hugging Face token"),
    ({"extra_args": ["--served-model-name-suffix=" + TOKEN]}, r"^extra_args\[0\]: holds a Hugging Face token"),
    ({"node_selector": {"bad key": "x"}}, r"^node_selector: invalid label key 'bad key'"),
    ({"pod_labels": {"team": "a b"}}, r"^pod_labels: invalid value 'a b' for label 'team'"),
    ({"gpu_products": ["NVIDIA A100"]}, r"^gpu_products\[0\]: 'NVIDIA A100' is not a value of the nvidia.com/gpu.product label"),
    ({"tolerations": [{"key": "x", "operator": "Maybe"}]}, r"^tolerations\[0\].operator: 'Maybe' is not one of Exists, Equal"),
    ({"tolerations": [{"key": "x", "effect": "Never"}]}, r"^tolerations\[0\].effect: 'Never' is not one of"),
    ({"tolerations": [{"value": "x"}]}, r"^tolerations\[0\].key: required unless operator is Exists"),
    ({"tolerations": [{"key": "x", "operator": "Exists", "tolerationSecond": 5}]}, r"^tolerations\[0\]: unknown field\(s\) tolerationSecond"),
    ({"model": " meta-llama/Llama-3.1-8B"}, r"^model: ' meta-llama/Llama-3.1-8B' is not a Hugging Face repo id"),
    ({"served_model_name": "my model"}, r"^served_model_name: 'my model' must be one word"),
    ({"tensor_parallel_size": 2, "gpus_per_replica": 1}, r"^tensor_parallel_size: must be between 1 and gpus_per_replica \(1\), got 2"),
])
def test_vllm_inputs_are_refused_naming_the_option(over: dict[str, Any], message: str) -> None:
    with pytest.raises(KubeInferError, match=message) as info:
        _vllm_values.validate(vllm_params(**over))
    assert TOKEN not in info.value.msg


def test_flags_the_chart_does_not_own_pass() -> None:
    _vllm_values.validate(vllm_params(extra_args=["--enforce-eager", "--max-num-batched-tokens=8192", "model"],
                                      tolerations=[{"key": "x", "operator": "Exists"}, {"operator": "Exists"}]))


def test_schema_failures_are_told_as_the_option_and_value() -> None:
    p = vllm_params(values={"service": {"port": "eighty"}})
    desired = _vllm_values.build_values(p, 300)
    message = "helm template failed (rc=1): Error: values don't meet the specifications of the schema(s) in the following chart(s):\n" \
              "vllm:\n- at '/service/port': got string, want integer"
    assert _vllm_values.schema_problem(message, desired, p) == (
        "values.service.port: the chart's values.schema.json refuses 'eighty' at /service/port (got string, want integer)")
    p = vllm_params(replicas=2)
    desired = _vllm_values.build_values(p, 300)
    assert _vllm_values.schema_problem("- at '/replicaCount': minimum: got 2, want 3", desired, p).startswith("replicas: ")
    assert _vllm_values.schema_problem("rc=1: unrelated", desired, p) is None


# -- completion_check, gpu_operator_info ---------------------------------------------------------------------------------

@pytest.mark.parametrize("over, message", [
    ({"max_tokens": 0}, r"^max_tokens: must be at least 1 tokens, got 0"),
    ({"port": 0}, r"^port: must be between 1 and 65535, got 0"),
    ({"label_selector": "app in vllm"}, r"^label_selector: 'app in vllm' is not a valid label selector"),
    ({"namespace": "Serve"}, r"^namespace: 'Serve' is not a valid namespace name"),
    ({"timeout": 30, "overall_timeout": 10}, r"^overall_timeout: must be at least 30 seconds \(and at least timeout\), got 10"),
    ({"prompt": "  "}, r"^prompt: must not be empty"),
])
def test_completion_inputs(over: dict[str, Any], message: str) -> None:
    args = {"namespace": "llm", "label_selector": "app=vllm", **over}
    with pytest.raises(KubeInferError, match=message):
        _completion.run(None, spec_params(completion_check, **args), False, False)


def test_completion_service_name_is_a_dns_label() -> None:
    with pytest.raises(KubeInferError, match=r"^service: 'vllm.svc' is not a valid Service name"):
        _completion.validate(spec_params(completion_check, namespace="llm", service="vllm.svc"))


@pytest.mark.parametrize("over, message", [
    ({"node_selector": "nvidia.com/gpu.present=="}, None),
    ({"node_selector": "nvidia.com/gpu.present=true,"}, r"^node_selector: .* is not a valid label selector"),
    ({"test_pod_namespace": "Bad"}, r"^test_pod_namespace: 'Bad' is not a valid namespace name"),
    ({"wait_timeout": -1}, r"^wait_timeout: must be at least 0 seconds, got -1"),
    ({"run_test_pod": True, "test_pod_image": " "}, r"^test_pod_image: must not be empty"),
])
def test_gpu_operator_info_inputs(over: dict[str, Any], message: str | None) -> None:
    if message is None:
        _gpu_verify.validate(verify_params(**over))
        return
    with pytest.raises(KubeInferError, match=message):
        _gpu_verify.validate(verify_params(**over))


# -- metrics_adapter and inference_hpa: checked at the top of the runner, before any port-forward or wait ---------------

def no_helm() -> Helm:
    """A helm that is never run: the refusal comes before the adapter is even looked for."""
    return Helm(lambda argv, **kw: (1, "", "helm must not run"), "", {}, missing="helm_binary: not needed here")


@pytest.mark.parametrize("over, message", [
    ({"custom_metric_name": "queue depth"}, r"^custom_metric_name: 'queue depth' is not a valid metric name"),
    ({"metric_name": "vllm:num requests"}, r"^metric_name: 'vllm:num requests' is not a valid metric name"),
    ({"metrics_port": 0}, r"^metrics_port: must be between 1 and 65535, got 0"),
    ({"release": "Llama"}, r"^release: 'Llama' is not a valid Helm release name"),
    ({"adapter_configmap": "bad_name"}, r"^adapter_configmap: 'bad_name' is not a valid ConfigMap name"),
    ({"adapter_release": "Adapter"}, r"^adapter_release: 'Adapter' is not a valid Helm release name"),
    ({"prometheus_url": "prometheus:9090"}, r"^prometheus_url: 'prometheus:9090' is not an http:// or https:// URL"),
])
def test_metrics_adapter_inputs_before_any_request(over: dict[str, Any], message: str) -> None:
    api = FakeApiClient()
    params = spec_params(metrics_adapter, **{"release": "llama", "namespace": "llm", **over})
    with pytest.raises(KubeInferError, match=message):
        _adapter.run(Kube(api), no_helm(), params, False, False)
    assert api.calls == []


@pytest.mark.parametrize("over, message", [
    ({"custom_metric_name": "queue depth"}, r"^custom_metric_name: 'queue depth' is not a valid metric name"),
    ({"target_queue_depth": 0}, r"^target_queue_depth must be above 0"),
    ({"polling_interval": 0}, r"^polling_interval: must be at least 1 seconds, got 0"),
    ({"scale_down": {"stabilization_window_seconds": 7200}}, r"^scale_down.stabilization_window_seconds: must be between 0 and 3600"),
    ({"scale_up": {"period_seconds": 0}}, r"^scale_up.period_seconds: must be between 1 and 1800"),
    ({"name": "HPA"}, r"^name: 'HPA' is not a valid autoscaler name"),
    ({"kind": "keda", "prometheus_url": "nope"}, r"^prometheus_url: 'nope' is not an http:// or https:// URL"),
])
def test_inference_hpa_inputs_before_any_request(over: dict[str, Any], message: str) -> None:
    api = FakeApiClient()
    params = spec_params(inference_hpa, **{"release": "llama", "namespace": "llm", **over})
    with pytest.raises(KubeInferError, match=message):
        _hpa.run(Kube(api), params, False, False)
    assert api.calls == []
