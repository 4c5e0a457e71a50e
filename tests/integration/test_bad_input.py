"""Bad input to every module, against the real API server: refused before any write, with a message that names the
parameter and the offending value (for a secret: only where it is), never a traceback or a library object's repr.

The whole table runs as one play (one task per case, ``ignore_errors``), so it costs one ansible-playbook start. The
API server's audit log (tools/localcluster/kwok/audit-policy.yaml) holds every request; the writes of the collection's
modules (user agent ``kubeinfer.llm``) and of the helm they run (``Helm/...``) are attributed to a case by the
case's start and end times that the json callback records, so each case shows its own zero. A write request the API
server refused still counts: "before any write" means none was sent.

Each case is one with everything else valid, so that without the check under test the module would go on and write
(the nodes would be labelled, the Secret or the release written, the port-forward opened). Secret values (tokens)
must not appear in a message at all: those cases name where the secret was, and the test holds the value absent.

The expired token: the TokenRequest API refuses an expiry below 10 minutes (ValidateTokenRequest in
k8s.io/kubernetes pkg/apis/authentication/validation), so a token that really expires would cost a 10-minute wait.
A token of a ServiceAccount that was deleted afterwards goes down the same path (the bound-token authenticator
rejects it; the API server answers 401), which is what the message is about: the test first proves that the API
server refuses the token, then that the module names ``api_key`` and the server.

Run: ``pytest tests/integration/test_bad_input.py`` on a cluster from ``make cluster-up``.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest
from conftest import TOOLS, helm_binary, pool_args
from kubernetes import client
from kubernetes.client.rest import ApiException

if TYPE_CHECKING:
    from conftest import Audit, PlaybookRunner

TOKEN = "hf_" + "Zq8Xw2Lp4Nv6Rt1Ys3Ku5Mb7" * 2  # the shape of a Hugging Face token, never a real one
SIM_NODES = "kubeinfer.io/sim-node=true"
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
AGENTS = ("kubeinfer.llm", "Helm")


@dataclass
class Case:
    id: str
    module: str
    args: dict[str, Any]
    expect: list[str]
    """Fragments the message must hold: the parameter first, then the offending value."""
    secret: str | None = None
    """A value that must not appear anywhere in the result."""
    env: dict[str, str] = field(default_factory=dict)


def cases(ns: str, pool: str, files: dict[str, str], gpu_chart: str) -> list[Case]:
    """The table; ``files`` holds the paths and tokens the connection cases need."""
    node = {"label_selector": SIM_NODES, "labels": {"kubeinfer.io/bad-input": "probe"}}
    operator = {"chart_ref": gpu_chart, "release_name": "bad-input-gpu-operator", "namespace": "bad-input-gpu-operator",
                "driver_enabled": "false", "wait": False}
    info = {"namespace": "gpu-operator", "node_selector": SIM_NODES}
    secret = {"name": "bad-input-token", "namespace": ns, "token": TOKEN}
    vllm = {"name": "bad", "namespace": ns, "model": "Qwen/Qwen2.5-0.5B-Instruct", "engine": "vllm", "wait": False,
            "gpu_memory_mib": 81920, **pool_args(pool)}
    sim = dict(vllm, engine="sim")
    adapter = {"release": "bad", "namespace": ns, "metric_name": "vllm:num_requests_waiting", "verify": False}
    hpa = {"release": "bad", "namespace": ns, "verify": False}
    completion = {"namespace": ns, "label_selector": "app.kubernetes.io/instance=bad"}
    unreachable = "https://127.0.0.1:1"
    return [
        # gpu_node: selection, labels, taints, numbers
        Case("node-selector-double-comma", "gpu_node", dict(node, label_selector=SIM_NODES + ",,x"),
             ["label_selector: ", f"'{SIM_NODES},,x'", "empty requirement"]),
        Case("node-selector-in-without-parens", "gpu_node", dict(node, label_selector="gpu in nvidia"),
             ["label_selector: ", "'gpu in nvidia'"]),
        Case("node-selector-bad-key", "gpu_node", dict(node, label_selector="-gpu=true"), ["label_selector: ", "'-gpu'"]),
        Case("node-label-key", "gpu_node", dict(node, labels={"bad key": "x"}), ["labels: ", "'bad key'"]),
        Case("node-label-value", "gpu_node", dict(node, labels={"kubeinfer.io/x": "-bad-"}), ["labels: ", "'-bad-'"]),
        Case("node-taint-value", "gpu_node", dict(node, taints=[{"key": "nvidia.com/gpu", "value": "a b", "effect": "NoSchedule"}]),
             ["taints[0].value: ", "'a b'"]),
        Case("node-taint-key", "gpu_node", dict(node, taints=[{"key": "nvidia.com/", "effect": "NoSchedule"}]),
             ["taints[0].key: ", "'nvidia.com/'"]),
        Case("node-taint-effect", "gpu_node", dict(node, taints=[{"key": "nvidia.com/gpu", "effect": "Sometimes"}]),
             ["effect", "Sometimes"]),
        Case("node-taint-duplicate", "gpu_node",
             dict(node, taints=[{"key": "k", "effect": "NoSchedule"}, {"key": "k", "value": "v", "effect": "NoSchedule"}]),
             ["taints[1]: ", "'k'", "taints[0]"]),
        Case("node-name-syntax", "gpu_node", {"names": ["Kwok_GPU"], "labels": node["labels"]}, ["names[0]: ", "'Kwok_GPU'"]),
        Case("node-name-missing", "gpu_node", {"names": ["no-such-node"], "labels": node["labels"]}, ["names: ", "no-such-node"]),
        Case("node-selector-matches-nothing", "gpu_node", dict(node, label_selector="kubeinfer.io/none=x"),
             ["label_selector: ", "'kubeinfer.io/none=x'"]),
        Case("node-parallel", "gpu_node", dict(node, parallel=0), ["parallel: ", "0"]),
        Case("node-probe-timeout", "gpu_node", dict(node, probe_timeout=0), ["probe_timeout: ", "0"]),
        # gpu_operator: names, chart, typed options
        Case("operator-release-name", "gpu_operator", dict(operator, release_name="GPU_Operator"), ["release_name: ", "'GPU_Operator'"]),
        Case("operator-namespace", "gpu_operator", dict(operator, namespace="gpu operator"), ["namespace: ", "'gpu operator'"]),
        Case("operator-chart-missing", "gpu_operator", dict(operator, chart_ref="/nonexistent/gpu-operator"),
             ["chart_ref: ", "/nonexistent/gpu-operator", "does not exist"]),
        Case("operator-chart-version", "gpu_operator", dict(operator, chart_version="v1.0.0"), ["chart_version: ", "v1.0.0"]),
        Case("operator-repo-url", "gpu_operator", dict(operator, chart_ref="", chart_repo_url="ftp://mirror"),
             ["chart_repo_url: ", "'ftp://mirror'"]),
        Case("operator-node-selector", "gpu_operator", dict(operator, node_selector="nvidia.com/gpu.present=true,,"),
             ["node_selector: ", "'nvidia.com/gpu.present=true,,'"]),
        Case("operator-driver", "gpu_operator", dict(operator, driver_enabled="maybe"), ["driver_enabled", "maybe"]),
        Case("operator-time-slicing", "gpu_operator", dict(operator, time_slicing_replicas=1), ["time_slicing_replicas", "1"]),
        Case("operator-mig-mixed", "gpu_operator", dict(operator, mig_strategy="mixed"), ["mig_strategy", "mixed"]),
        Case("operator-values-driver", "gpu_operator", dict(operator, values={"driver": {"enabled": "yes"}}),
             ["values.driver.enabled", "'yes'"]),
        Case("operator-timeout", "gpu_operator", dict(operator, timeout=0), ["timeout: ", "0"]),
        Case("operator-probe-namespace", "gpu_operator", dict(operator, probe_namespace="Kube-System"),
             ["probe_namespace: ", "'Kube-System'"]),
        # gpu_operator_info
        Case("info-namespace", "gpu_operator_info", dict(info, namespace="GPU"), ["namespace: ", "'GPU'"]),
        Case("info-node-selector", "gpu_operator_info", dict(info, node_selector="a b"), ["node_selector: ", "'a b'"]),
        Case("info-wait-timeout", "gpu_operator_info", dict(info, wait_timeout=-1), ["wait_timeout: ", "-1"]),
        Case("info-test-pod-namespace", "gpu_operator_info", dict(info, run_test_pod=True, test_pod_namespace="Bad_NS"),
             ["test_pod_namespace: ", "'Bad_NS'"]),
        Case("info-test-pod-labels", "gpu_operator_info", dict(info, run_test_pod=True, test_pod_labels={"team": "a b"}),
             ["test_pod_labels: ", "'a b'"]),
        Case("info-test-pod-timeout", "gpu_operator_info", dict(info, run_test_pod=True, test_pod_timeout=0), ["test_pod_timeout: ", "0"]),
        # hf_token_secret: names, the token's form, references
        Case("secret-name", "hf_token_secret", dict(secret, name="HF Token"), ["name: ", "'HF Token'"], secret=TOKEN),
        Case("secret-namespace", "hf_token_secret", dict(secret, namespace="Vllm"), ["namespace: ", "'Vllm'"], secret=TOKEN),
        Case("secret-namespace-missing", "hf_token_secret", dict(secret, namespace="no-such-namespace"),
             ["namespace: ", "'no-such-namespace'", "does not exist"], secret=TOKEN),
        Case("secret-key", "hf_token_secret", dict(secret, key="HF TOKEN"), ["key: ", "'HF TOKEN'"], secret=TOKEN),
        Case("secret-labels", "hf_token_secret", dict(secret, labels={"app.kubernetes.io/": "x"}), ["labels: ", "'app.kubernetes.io/'"],
             secret=TOKEN),
        Case("secret-token-newline", "hf_token_secret", dict(secret, token=TOKEN + "\n"), ["token: ", "whitespace"], secret=TOKEN),
        Case("secret-token-two-words", "hf_token_secret", dict(secret, token=TOKEN + " " + TOKEN), ["token: ", "whitespace"], secret=TOKEN),
        Case("secret-existing-missing", "hf_token_secret", {"name": "no-such-secret", "namespace": ns, "existing_secret": True},
             ["name: ", "'no-such-secret'", "does not exist"]),
        Case("secret-existing-key-missing", "hf_token_secret", {"name": "hf-token", "namespace": ns, "existing_secret": True, "key": "OTHER"},
             ["key: ", "'OTHER'"]),
        # vllm_release: names, numbers, flags and values the chart owns, references, sizing and capacity
        Case("vllm-name", "vllm_release", dict(vllm, name="Bad_Release"), ["name: ", "'Bad_Release'"]),
        Case("vllm-name-too-long", "vllm_release", dict(vllm, name="r" * 54), ["name: ", "'" + "r" * 54 + "'", "53"]),
        Case("vllm-namespace", "vllm_release", dict(vllm, namespace="NS"), ["namespace: ", "'NS'"]),
        Case("vllm-model-empty", "vllm_release", dict(vllm, model=" "), ["model: ", "' '"]),
        Case("vllm-replicas", "vllm_release", dict(vllm, replicas=-1), ["replicas: ", "-1"]),
        Case("vllm-gpus", "vllm_release", dict(vllm, gpus_per_replica=0), ["gpus_per_replica: ", "0"]),
        Case("vllm-tp-above-gpus", "vllm_release", dict(vllm, gpus_per_replica=2, tensor_parallel_size=4), ["tensor_parallel_size: ", "4"]),
        Case("vllm-memory-utilization-high", "vllm_release", dict(vllm, gpu_memory_utilization=1.5), ["gpu_memory_utilization: ", "1.5"]),
        Case("vllm-memory-utilization-zero", "vllm_release", dict(vllm, gpu_memory_utilization=0), ["gpu_memory_utilization: ", "0"]),
        Case("vllm-max-model-len", "vllm_release", dict(vllm, max_model_len=0), ["max_model_len: ", "0"]),
        Case("vllm-budget", "vllm_release", dict(vllm, startup_budget_seconds=0), ["startup_budget_seconds: ", "0"]),
        Case("vllm-throughput", "vllm_release", dict(vllm, load_throughput_gib_s=-1), ["load_throughput_gib_s: ", "-1"]),
        Case("vllm-extra-args-model", "vllm_release", dict(vllm, extra_args=["--enforce-eager", "--model=other"]),
             ["extra_args[1]: ", "'--model=other'", "set it through model"]),
        Case("vllm-extra-args-tp", "vllm_release", dict(vllm, extra_args=["--tensor-parallel-size", "2"]),
             ["extra_args[0]: ", "'--tensor-parallel-size'", "tensor_parallel_size"]),
        Case("vllm-extra-args-token", "vllm_release", dict(vllm, extra_args=["--hf-token", TOKEN]),
             ["extra_args[0]: ", "'--hf-token'", "hf_token_secret"], secret=TOKEN),
        Case("vllm-extra-args-sim", "vllm_release", dict(sim, extra_args=["--enforce-eager"]), ["extra_args", "engine=vllm"]),
        Case("vllm-values-extra-args", "vllm_release", dict(vllm, values={"vllm": {"extraArgs": ["--api-key=k"]}}),
             ["values.vllm.extraArgs[0]: ", "'--api-key'"]),
        Case("vllm-values-extra-env-token", "vllm_release", dict(vllm, values={"extraEnv": [{"name": "HF_TOKEN", "value": TOKEN}]}),
             ["values.extraEnv[0].name: ", "'HF_TOKEN'", "hf_token_secret"], secret=TOKEN),
        Case("vllm-values-token-anywhere", "vllm_release", dict(vllm, values={"extraEnv": [{"name": "NOTE", "value": TOKEN}]}),
             ["values.extraEnv[0].value: ", "Hugging Face token"], secret=TOKEN),
        Case("vllm-values-schema", "vllm_release", dict(vllm, values={"service": {"port": "eighty"}}),
             ["values.service.port: ", "'eighty'", "values.schema.json"]),
        Case("vllm-token-secret-missing", "vllm_release", dict(vllm, hf_token_secret={"name": "no-such-token"}),
             ["hf_token_secret.name: ", "no-such-token", "does not exist"]),
        Case("vllm-token-key-missing", "vllm_release", dict(vllm, hf_token_secret={"name": "hf-token", "key": "OTHER"}),
             ["hf_token_secret.key: ", "'OTHER'"]),
        Case("vllm-chart-missing", "vllm_release", dict(vllm, chart_ref="/nonexistent/vllm-chart"),
             ["chart_ref: ", "/nonexistent/vllm-chart", "does not exist"]),
        Case("vllm-model-too-large", "vllm_release", dict(vllm, model="meta-llama/Llama-3.1-405B-Instruct", gpus_per_replica=1),
             ["model: ", "'meta-llama/Llama-3.1-405B-Instruct'", "does not fit"]),
        Case("vllm-gpus-above-any-node", "vllm_release", dict(sim, gpus_per_replica=16), ["gpus_per_replica: ", "16", "more than 8"]),
        Case("vllm-replicas-above-capacity", "vllm_release", dict(sim, replicas=17), ["replicas: ", "17 replicas"]),
        Case("vllm-node-selector", "vllm_release", dict(vllm, node_selector={"bad key": "x"}), ["node_selector: ", "'bad key'"]),
        Case("vllm-toleration-operator", "vllm_release", dict(vllm, tolerations=[{"key": "x", "operator": "Maybe"}]),
             ["tolerations[0].operator: ", "'Maybe'"]),
        Case("vllm-gpu-products", "vllm_release", dict(vllm, gpu_products=["A100 80GB"]), ["gpu_products[0]: ", "'A100 80GB'"]),
        Case("vllm-pod-labels", "vllm_release", dict(vllm, pod_labels={"team": "a b"}), ["pod_labels: ", "'a b'"]),
        # metrics_adapter: names, numbers, references
        Case("adapter-metric-space", "metrics_adapter", dict(adapter, custom_metric_name="queue depth"),
             ["custom_metric_name: ", "'queue depth'"]),
        Case("adapter-source-metric", "metrics_adapter", dict(adapter, metric_name="vllm:num requests"), ["metric_name: ", "'vllm:num requests'"]),
        Case("adapter-release", "metrics_adapter", dict(adapter, release="Bad"), ["release: ", "'Bad'"]),
        Case("adapter-port", "metrics_adapter", dict(adapter, metric_name="", detect_from_pod=True, metrics_port=70000),
             ["metrics_port: ", "70000"]),
        Case("adapter-configmap", "metrics_adapter", dict(adapter, adapter_configmap="Bad_CM"), ["adapter_configmap: ", "'Bad_CM'"]),
        # install=never: with the default auto the module would offer to install the chart under that name, and refuses
        # that here only because the harness's adapter already holds the custom metrics APIService.
        Case("adapter-deployment-missing", "metrics_adapter", dict(adapter, adapter_deployment="no-such-adapter", install="never"),
             ["adapter_deployment: ", "no-such-adapter", "does not exist"]),
        Case("adapter-prometheus-url", "metrics_adapter", dict(adapter, prometheus_url="prometheus:9090"),
             ["prometheus_url: ", "'prometheus:9090'"]),
        # inference_hpa: names, bounds, behaviour, KEDA options, references
        Case("hpa-metric-space", "inference_hpa", dict(hpa, custom_metric_name="queue depth"), ["custom_metric_name: ", "'queue depth'"]),
        Case("hpa-min-replicas", "inference_hpa", dict(hpa, min_replicas=0), ["min_replicas: ", "kind=hpa", "got 0"]),
        Case("hpa-max-below-min", "inference_hpa", dict(hpa, min_replicas=3, max_replicas=2), ["max_replicas: ", "got 2"]),
        Case("hpa-target-depth", "inference_hpa", dict(hpa, target_queue_depth="-1"), ["target_queue_depth", "'-1'"]),
        Case("hpa-window", "inference_hpa", dict(hpa, scale_down={"stabilization_window_seconds": 7200}),
             ["scale_down.stabilization_window_seconds: ", "7200"]),
        Case("hpa-period", "inference_hpa", dict(hpa, scale_up={"period_seconds": 0}), ["scale_up.period_seconds: ", "0"]),
        Case("hpa-polling", "inference_hpa", dict(hpa, kind="keda", polling_interval=0), ["polling_interval: ", "0"]),
        Case("hpa-keda-url", "inference_hpa", dict(hpa, kind="keda", prometheus_url="nope"), ["prometheus_url: ", "'nope'"]),
        Case("hpa-name", "inference_hpa", dict(hpa, name="HPA"), ["name: ", "'HPA'"]),
        Case("hpa-release-missing", "inference_hpa", dict(hpa, release="no-such-release"), ["release: ", "no-such-release", "found none"]),
        Case("hpa-target-missing", "inference_hpa", dict(hpa, target="no-such-deployment"), ["target: ", "no-such-deployment", "does not exist"]),
        # completion_check: selection, numbers, references
        Case("completion-max-tokens-zero", "completion_check", dict(completion, max_tokens=0), ["max_tokens: ", "0"]),
        Case("completion-max-tokens-negative", "completion_check", dict(completion, max_tokens=-5), ["max_tokens: ", "-5"]),
        Case("completion-port-zero", "completion_check", dict(completion, port=0), ["port: ", "0"]),
        Case("completion-port-high", "completion_check", dict(completion, port=70000), ["port: ", "70000"]),
        Case("completion-selector", "completion_check", dict(completion, label_selector="app in vllm"), ["label_selector: ", "'app in vllm'"]),
        Case("completion-namespace", "completion_check", dict(completion, namespace="Bad NS"), ["namespace: ", "'Bad NS'"]),
        Case("completion-service-missing", "completion_check", {"namespace": ns, "service": "no-such-service"},
             ["service: ", "no-such-service", "does not exist"]),
        Case("completion-base-url", "completion_check", {"base_url": "ftp://example"}, ["base_url", "ftp://example"]),
        Case("completion-timeouts", "completion_check", dict(completion, timeout=30, overall_timeout=10), ["overall_timeout: ", "10"]),
        # the connection options, on modules that would write
        Case("conn-kubeconfig-missing", "gpu_node", dict(node, kubeconfig="/nonexistent/kubeconfig"),
             ["kubeconfig: ", "/nonexistent/kubeconfig", "does not exist"]),
        Case("conn-kubeconfig-directory", "gpu_node", dict(node, kubeconfig=files["directory"]), ["kubeconfig: ", files["directory"]]),
        Case("conn-kubeconfig-garbage", "hf_token_secret", dict(secret, kubeconfig=files["garbage"]), ["kubeconfig: ", files["garbage"]],
             secret=TOKEN),
        Case("conn-context", "gpu_node", dict(node, context="no-such-context"), ["context: ", "'no-such-context'"]),
        Case("conn-host-scheme", "gpu_node", dict(node, host="127.0.0.1:6443"), ["host: ", "'127.0.0.1:6443'"]),
        Case("conn-host-unreachable", "gpu_node", dict(node, host=unreachable), ["host: ", unreachable, "Connection refused"]),
        Case("conn-host-unreachable-secret", "hf_token_secret", dict(secret, host=unreachable), ["host: ", unreachable], secret=TOKEN),
        Case("conn-host-unreachable-vllm", "vllm_release", dict(vllm, host=unreachable), ["host: ", unreachable]),
        # The release is read by the module from its Secret before helm runs, so the module's own client meets the
        # unreachable server first (helm's wording for it: test_input_validation.py).
        Case("conn-host-unreachable-helm", "gpu_operator", dict(operator, host=unreachable), ["host: ", unreachable, "Connection refused"]),
        Case("conn-host-unreachable-completion", "completion_check", dict(completion, host=unreachable), ["host: ", unreachable]),
        Case("conn-ca-missing", "gpu_node", dict(node, ca_cert="/nonexistent/ca.crt"), ["ca_cert: ", "/nonexistent/ca.crt"]),
        Case("conn-ca-wrong", "gpu_node", dict(node, ca_cert=files["other_ca"]), ["ca_cert: ", files["server"], "not trusted"]),
        Case("conn-token-expired", "gpu_node", dict(node, kubeconfig=files["anonymous"], api_key=files["dead_token"]),
             ["api_key: ", files["server"], "401"], secret=files["dead_token"]),
        Case("conn-token-expired-secret", "hf_token_secret", dict(secret, kubeconfig=files["anonymous"], api_key=files["dead_token"]),
             ["api_key: ", files["server"], "401"], secret=files["dead_token"]),
    ]


def stamp(text: str) -> datetime:
    """An RFC 3339 time of the audit log or the json callback, as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def ns(api: client.ApiClient) -> Iterator[str]:
    """A namespace holding one token Secret (key HF_TOKEN), so that references to it resolve and others do not."""
    core = client.CoreV1Api(api)
    name = f"it-bad-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    core.create_namespaced_secret(name, {"metadata": {"name": "hf-token"}, "stringData": {"HF_TOKEN": "hf_placeholder"}})
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def files(api: client.ApiClient, ns: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What the connection cases point at: a directory, a garbage kubeconfig, a CA that did not sign the API server's
    certificate, a kubeconfig with the cluster but no credentials, and the token of a deleted ServiceAccount."""
    base = tmp_path_factory.mktemp("bad-input")
    garbage = base / "garbage.kubeconfig"
    garbage.write_text("{{ this is not a kubeconfig")
    key, other_ca = base / "other.key", base / "other-ca.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(other_ca),
                    "-subj", "/CN=not-the-cluster-ca", "-days", "1"], check=True, capture_output=True, timeout=60)
    server = api.configuration.host
    anonymous = base / "anonymous.kubeconfig"
    anonymous.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority": api.configuration.ssl_ca_cert}}],
        "users": [{"name": "nobody", "user": {}}], "contexts": [{"name": "c", "context": {"cluster": "c", "user": "nobody"}}]}))
    core = client.CoreV1Api(api)
    core.create_namespaced_service_account(ns, {"metadata": {"name": "gone"}})
    request = core.create_namespaced_service_account_token("gone", ns, {"spec": {"audiences": [], "expirationSeconds": 600}})
    token = request.status.token
    core.delete_namespaced_service_account("gone", ns)
    # The precondition: the API server refuses the token now (it may take a moment for the deletion to be seen).
    config = client.Configuration()
    config.host, config.ssl_ca_cert = server, api.configuration.ssl_ca_cert
    config.api_key = {"authorization": "Bearer " + token}
    deadline = time.monotonic() + 30
    while True:
        try:
            client.CoreV1Api(client.ApiClient(config)).list_namespace(limit=1)
        except ApiException as e:
            assert e.status == 401, e
            break
        assert time.monotonic() < deadline, "the API server still accepts the token of the deleted ServiceAccount"
        time.sleep(1)
    return {"directory": str(base), "garbage": str(garbage), "other_ca": str(other_ca), "anonymous": str(anonymous),
            "server": server, "dead_token": token}


@pytest.fixture(scope="module")
def table(ns: str, module_pool: str, files: dict[str, str], audit: Audit,
          playbook_runner: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every case in one play; return {case id: (case, result, writes during the case)}."""
    gpu_chart = subprocess.run([str(TOOLS / "upstream-chart.sh")], capture_output=True, text=True, check=True, timeout=300).stdout.strip()
    table = cases(ns, module_pool, files, gpu_chart)
    assert len({c.id for c in table}) == len(table)
    runner: PlaybookRunner = playbook_runner(tmp_path_factory.mktemp("bad-input-play"))
    tasks = [{"name": case.id, f"kubeinfer.llm.{case.module}": case.args, "ignore_errors": True} for case in table]
    mark = audit.mark()
    run = runner(tasks, name="Bad input", results=True, env={"HELM_BINARY": helm_binary()}, timeout=1800)
    doc = json.loads(run.stdout)
    played = doc["plays"][0]["tasks"]
    assert [t["task"]["name"] for t in played] == [c.id for c in table], run.stdout[-3000:]
    events = [e for e in audit.events(mark, "") if str(e.get("userAgent", "")).startswith(AGENTS)]
    out: dict[str, Any] = {}
    for case, task in zip(table, played):
        start, end = stamp(task["task"]["duration"]["start"]), stamp(task["task"]["duration"]["end"])
        writes = [f"{e['verb']} {e.get('requestURI')}" for e in events
                  if e.get("verb") in WRITE_VERBS and start <= stamp(e["requestReceivedTimestamp"]) <= end]
        out[case.id] = (case, task["hosts"]["localhost"], writes)
    all_writes = [f"{e['verb']} {e.get('requestURI')}" for e in events if e.get("verb") in WRITE_VERBS]
    print(f"\nbad-input table: {len(table)} cases in {len({c.module for c in table})} modules; "
          f"write requests from the collection and helm during the whole play: {len(all_writes)}")
    out["__all_writes__"] = all_writes
    return out


PLACEHOLDERS = {k: k for k in ("directory", "garbage", "other_ca", "anonymous", "server", "dead_token")}
TABLE_IDS = [c.id for c in cases("ns", "pool", PLACEHOLDERS, "chart")]


def test_the_table_covers_every_module_and_the_connection() -> None:
    modules = {c.module for c in cases("ns", "pool", PLACEHOLDERS, "chart")}
    assert modules == {"gpu_node", "gpu_operator", "gpu_operator_info", "hf_token_secret", "vllm_release", "metrics_adapter",
                       "inference_hpa", "completion_check"}
    assert len(TABLE_IDS) >= 50 and sum(i.startswith("conn-") for i in TABLE_IDS) >= 8


@pytest.mark.parametrize("case_id", TABLE_IDS)
def test_refused_before_any_write_naming_the_parameter_and_value(table: dict[str, Any], case_id: str) -> None:
    case, result, writes = table[case_id]
    msg = str(result.get("msg", ""))
    assert result.get("failed"), f"{case_id} was accepted: {json.dumps(result)[:2000]}"
    assert writes == [], f"{case_id} wrote before failing: {writes}"
    assert not result.get("changed"), case_id
    missing = [f for f in case.expect if f not in msg]
    assert not missing, f"{case_id}: {missing} not in the message: {msg}"
    if len(case.expect) > 1:
        assert msg.index(case.expect[0]) <= msg.index(case.expect[1]), f"{case_id}: the value comes before the parameter: {msg}"
    assert msg.index(case.expect[0]) < 120, f"{case_id}: the parameter does not lead the message: {msg}"
    assert "Traceback" not in msg and "MODULE FAILURE" not in msg and "exception" not in result, f"{case_id}: {msg}"
    assert not re.search(r"<[\w.]+ object at 0x[0-9a-f]+>", msg), f"{case_id}: a library object's repr: {msg}"
    if case.secret:
        # "invocation" echoes the task's own arguments; a token put into a parameter that is not no_log is the user's leak.
        own = {k: v for k, v in result.items() if k != "invocation"}
        assert case.secret not in json.dumps(own), f"{case_id}: the secret is in the result"


def test_the_whole_table_sent_no_write(table: dict[str, Any]) -> None:
    assert table["__all_writes__"] == []
