"""vllm_release's pure logic and its runner: values, sizing inputs, GPU packing, rendered manifests, and the run order."""
from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.kubeinfer.llm.plugins.module_utils import _manifests, _vllm, _vllm_capacity, _vllm_values, _waiter
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm
from ansible_collections.kubeinfer.llm.plugins.modules import vllm_release

from .helm_records import release_record, stored_secret

REPO = Path(__file__).resolve().parents[4]


def params(**over: Any) -> dict[str, Any]:
    """The module's parameters as AnsibleModule hands them over: its own argument spec fills in the defaults."""
    given = {"name": "llama", "namespace": "serve", "model": "meta-llama/Llama-3.1-8B-Instruct", "chart_ref": "/c/charts/vllm", **over}
    checked = ArgumentSpecValidator(vllm_release.ARGUMENT_SPEC).validate({k: v for k, v in given.items() if v is not None})
    assert not checked.error_messages, checked.error_messages
    return dict(checked.validated_parameters)


def node(name: str, gpus: int = 8, memory: str | None = "81920", product: str = "NVIDIA-A100-SXM4-80GB",
         taints: list[dict[str, Any]] | None = None, ready: bool = True, labels: dict[str, str] | None = None) -> dict[str, Any]:
    node_labels = {"nvidia.com/gpu.product": product, **(labels or {})}
    if memory is not None:
        node_labels["nvidia.com/gpu.memory"] = memory
    return {
        "metadata": {"name": name, "labels": node_labels},
        "spec": {"taints": taints or []},
        "status": {"allocatable": {"cpu": "64", "nvidia.com/gpu": str(gpus)} if gpus else {"cpu": "16"},
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def pod(name: str, node_name: str | None, gpus: int, namespace: str = "other", labels: dict[str, str] | None = None,
        phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": {"nodeName": node_name, "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
        "status": {"phase": phase},
    }


# -- inputs and values --------------------------------------------------------------
@pytest.mark.parametrize("over, fragment", [
    ({"name": "Bad_Name"}, "name: 'Bad_Name'"),
    ({"name": "x" * 54}, "at most 53"),
    ({"namespace": "a.b"}, "namespace: 'a.b'"),
    ({"chart_ref": None}, "chart_ref: required"),
    ({"gpus_per_replica": 2, "tensor_parallel_size": 4}, "tensor_parallel_size: must be between 1 and gpus_per_replica (2)"),
    ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
    ({"engine": "sim", "extra_args": ["--foo"]}, "only for engine=vllm"),
    ({"model_cache": {"type": "hostPath", "host_path": None}}, "model_cache.host_path"),
    ({"hf_token_secret": {"name": "t", "key": "a b"}}, "hf_token_secret.key"),
    ({"params_billion": 0.0}, "params_billion: must be > 0"),
])
def test_validate_names_the_option(over: dict[str, Any], fragment: str) -> None:
    with pytest.raises(KubeInferError) as info:
        _vllm_values.validate(params(**over))
    assert fragment in info.value.msg


def test_validate_absent_needs_no_model() -> None:
    _vllm_values.validate(params(state="absent", model=None, chart_ref=None))


def test_build_values_minimal_sets_the_required_keys_only() -> None:
    values = _vllm_values.build_values(params(), 135)
    assert values == {
        "fullnameOverride": "llama", "engine": "vllm", "model": {"name": "meta-llama/Llama-3.1-8B-Instruct"},
        "replicaCount": 1, "gpusPerReplica": 1, "probes": {"startup": {"budgetSeconds": 135}},
        "vllm": {"tensorParallelSize": 1, "dtype": "auto", "gpuMemoryUtilization": 0.9},
        # 8B bf16 = 14.9 GiB of weights, 1.14 x the seed's 7B: memory 32 x 1.14, CPU 4 x sqrt(1.14), rounded up.
        "resources": {"requests": {"cpu": "5", "memory": "37Gi"}, "limits": {"cpu": "5", "memory": "37Gi"}},
    }


def test_build_values_full() -> None:
    p = params(revision="abc", served_model_name="llama", replicas=3, gpus_per_replica=4, tensor_parallel_size=2,
               dtype="bfloat16", quantization="fp8", max_model_len=8192, extra_args=["--max-num-batched-tokens", "8192"],
               hf_token_secret={"name": "hf-token", "key": "HF_TOKEN", "optional": False},
               model_cache={"type": "pvc", "size": "200Gi", "storage_class": "fast", "existing_claim": None, "host_path": None,
                            "offline": True},
               gpu_products=["NVIDIA-H100-80GB-HBM3"], node_selector={"pool": "gpu"},
               tolerations=[{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
               resources={"requests": {"cpu": "8"}}, image={"repository": "my/vllm", "tag": None}, pod_labels={"team": "ml"},
               values={"service": {"port": 9000}, "vllm": {"maxNumSeqs": 64}})
    values = _vllm_values.build_values(p, 500)
    assert values["model"] == {"name": "meta-llama/Llama-3.1-8B-Instruct", "revision": "abc", "servedModelName": "llama"}
    assert values["replicaCount"] == 3 and values["gpusPerReplica"] == 4
    assert values["vllm"] == {"tensorParallelSize": 2, "dtype": "bfloat16", "gpuMemoryUtilization": 0.9, "maxModelLen": 8192,
                              "extraArgs": ["--quantization", "fp8", "--max-num-batched-tokens", "8192"], "maxNumSeqs": 64}
    assert values["hfToken"] == {"secretName": "hf-token", "secretKey": "HF_TOKEN", "optional": False}
    assert values["modelCache"] == {"type": "pvc", "offline": True, "pvc": {"size": "200Gi", "storageClassName": "fast"}}
    assert values["scheduling"] == {"gpuProducts": ["NVIDIA-H100-80GB-HBM3"], "nodeSelector": {"pool": "gpu"},
                                    "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]}
    assert values["image"] == {"vllm": {"repository": "my/vllm"}}
    assert values["podLabels"] == {"team": "ml"}
    assert values["service"] == {"port": 9000}


def test_build_values_sim_has_no_vllm_section() -> None:
    values = _vllm_values.build_values(params(engine="sim", model="facebook/opt-125m", max_model_len=2048, image={"tag": "v1"}), 91)
    assert "vllm" not in values
    assert "resources" not in values, "the simulator loads no weights: the chart's small defaults apply"
    assert values["sim"] == {"maxModelLen": 2048}
    assert values["image"] == {"sim": {"tag": "v1"}}


@pytest.mark.parametrize("over, cpu, memory", [
    ({"model": "mistralai/Mistral-7B-v0.1"}, "4", "32Gi"),  # the seed: 4 cores and 32 GB for 7B
    ({"model": "facebook/opt-125m"}, "4", "32Gi"),  # small models get the floor
    ({"model": "my-org/finetune", "params_billion": None}, "4", "32Gi"),  # no size known: the floor
    ({"model": "meta-llama/Llama-3.1-70B-Instruct"}, "13", "320Gi"),  # 10 x the weights: 10 x memory, sqrt(10) x CPU
    ({"model": "meta-llama/Llama-3.1-70B-Instruct", "quantization": "fp8"}, "9", "160Gi"),  # half the bytes
    ({"model": "meta-llama/Llama-3.1-70B-Instruct", "dtype": "float32"}, "18", "640Gi"),
    ({"model": "my-org/finetune", "params_billion": 14.0}, "6", "64Gi"),  # params_billion wins over the name
    ({"model": "meta-llama/Llama-3.1-70B-Instruct", "quantization": "bitsandbytes"}, "13", "320Gi"),  # unknown: the dtype's bytes
])
def test_build_values_sizes_cpu_and_memory_from_the_weights(over: dict[str, Any], cpu: str, memory: str) -> None:
    resources = _vllm_values.build_values(params(**over), 100)["resources"]
    assert resources == {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}


def test_default_resources_grow_with_the_weights() -> None:
    sizes = [_vllm_values.default_resources(params(params_billion=b)) for b in (0.5, 7, 8, 13, 34, 70, 180, 405)]
    cpus = [int(r["requests"]["cpu"]) for r in sizes]
    memory = [int(r["requests"]["memory"].removesuffix("Gi")) for r in sizes]
    assert cpus == sorted(cpus) and memory == sorted(memory)
    assert cpus[0] >= 4 and memory[0] >= 32
    assert memory[-1] > memory[1] * 50  # 405B is 58 x 7B: memory follows the weights


@pytest.mark.parametrize("given, expected", [
    # A quantity on one side only is left as given: the chart copies it to the other side.
    ({"requests": {"cpu": "8"}},
     {"requests": {"cpu": "8", "memory": "37Gi"}, "limits": {"memory": "37Gi"}}),
    ({"limits": {"memory": "100Gi"}, "requests": {"ephemeral-storage": "20Gi"}},
     {"requests": {"ephemeral-storage": "20Gi", "cpu": "5"}, "limits": {"memory": "100Gi", "cpu": "5"}}),
    ({"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
     {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "4", "memory": "8Gi"}}),
])
def test_given_resources_win_key_by_key(given: dict[str, Any], expected: dict[str, Any]) -> None:
    p = params(resources=given)
    before = copy.deepcopy(p)
    assert _vllm_values.build_values(p, 100)["resources"] == expected
    assert p == before


def test_sim_keeps_given_resources() -> None:
    values = _vllm_values.build_values(params(engine="sim", resources={"limits": {"memory": "1Gi"}}), 100)
    assert values["resources"] == {"limits": {"memory": "1Gi"}}


def test_free_values_win_and_do_not_change_the_options() -> None:
    p = params(values={"replicaCount": 7, "model": {"servedModelName": "x"}})
    before = copy.deepcopy(p)
    values = _vllm_values.build_values(p, 100)
    assert values["replicaCount"] == 7
    assert values["model"] == {"name": "meta-llama/Llama-3.1-8B-Instruct", "servedModelName": "x"}
    assert p == before


VERSIONS_ENV = (REPO / "tools" / "localcluster" / "versions.env").read_text().splitlines()
VERSIONS = {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in VERSIONS_ENV if "=" in line and not line.startswith("#"))}
HELM = os.environ.get("HELM_BINARY") or str(Path.home() / ".cache" / "kubeinfer" / f"helm-{VERSIONS['HELM_VERSION']}" / "helm")


def run_command(argv: list[str], environ_update: dict[str, str] | None = None) -> tuple[int, str, str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=dict(os.environ, **(environ_update or {})))
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("name, values, expected", [
    ("r", {"fullnameOverride": "given"}, {"deployment": "given", "service": "given", "port": 8000}),
    ("my-vllm", {}, {"deployment": "my-vllm", "service": "my-vllm", "port": 8000}),
    ("r", {}, {"deployment": "r-vllm", "service": "r-vllm", "port": 8000}),
    ("r", {"nameOverride": "srv", "service": {"port": 9000}}, {"deployment": "r-srv", "service": "r-srv", "port": 9000}),
])
def test_served_names_come_from_the_real_chart_render(name: str, values: dict[str, Any], expected: dict[str, Any]) -> None:
    helm = Helm(run_command, HELM, {})
    docs = _manifests.parse_manifests(helm.template(name, str(REPO / "charts" / "vllm"), "serve", dict(values, model={"name": "m"}),
                                                    kube_version=VERSIONS["KUBERNETES_VERSION"]))
    workload = _manifests.served_workload(docs)
    assert {k: workload[k] for k in expected} == expected
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert workload["selector"] == ",".join(f"{k}={v}" for k, v in sorted(deployment["spec"]["selector"]["matchLabels"].items()))
    assert f"app.kubernetes.io/instance={name}" in workload["selector"]


def test_served_workload_needs_one_deployment_and_one_service() -> None:
    with pytest.raises(KubeInferError, match="^chart_ref: the chart rendered 0 Deployment objects"):
        _manifests.served_workload(_manifests.parse_manifests(RENDERED.split("---")[1]))


# -- sizing -------------------------------------------------------------------------
def test_sizing_reads_params_from_name_and_memory_from_the_smallest_node() -> None:
    estimate, budget = _vllm_values.sizing(params(), [node("a", memory="81920"), node("b", memory="40960"), node("c", memory=None)])
    assert estimate["params_billion"] == 8.0 and estimate["params_billion_source"] == "model name"
    assert estimate["gpu_memory_mib"] == 40960 and "smallest of 2 nodes" in estimate["gpu_memory_mib_source"]
    assert estimate["fits"] is True
    assert budget["seconds"] == 135 and budget["load_throughput_gib_s"] == 0.5


def test_sizing_overrides() -> None:
    estimate, budget = _vllm_values.sizing(params(model="my-model", params_billion=1.0, gpu_memory_mib=24576, load_throughput_gib_s=2.0), [])
    assert estimate["params_billion"] == 1.0 and estimate["gpu_memory_mib"] == 24576
    assert budget["load_throughput_gib_s"] == 2.0 and budget["seconds"] == 92  # ceil((60 + 1.863/2) * 1.5)
    fixed = _vllm_values.sizing(params(startup_budget_seconds=900), [node("a")])[1]
    assert fixed["seconds"] == 900 and fixed["source"] == "startup_budget_seconds"


def test_sizing_quantization_sets_bytes_per_param() -> None:
    estimate = _vllm_values.sizing(params(quantization="awq"), [node("a")])[0]
    assert estimate["bytes_per_param"] == 0.5


def test_sizing_fails_with_numbers_when_the_model_is_too_large() -> None:
    with pytest.raises(KubeInferError) as info:
        _vllm_values.sizing(params(model="meta-llama/Llama-3.1-405B-Instruct", gpus_per_replica=4), [node("a")])
    msg = info.value.msg
    assert "405B parameters" in msg and "tensor_parallel=4" in msg and "GiB per GPU" in msg
    assert info.value.result["sizing"]["fits"] is False


def test_sizing_needs_a_parameter_count_and_a_memory_size() -> None:
    with pytest.raises(KubeInferError, match="params_billion: the parameter count cannot be read"):
        _vllm_values.sizing(params(model="org/mystery"), [node("a")])
    with pytest.raises(KubeInferError, match="gpu_memory_mib: none of the eligible GPU nodes"):
        _vllm_values.sizing(params(), [node("a", memory=None)])


# -- GPU capacity -------------------------------------------------------------------
def test_tolerations_follow_the_scheduler_rules() -> None:
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    assert _vllm_capacity.tolerates([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}], taint)
    assert _vllm_capacity.tolerates([{"operator": "Exists"}], taint)
    assert _vllm_capacity.tolerates([{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}], taint)
    assert not _vllm_capacity.tolerates([{"key": "nvidia.com/gpu", "operator": "Equal", "value": "other"}], taint)
    assert not _vllm_capacity.tolerates([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}], taint)


def test_node_eligibility() -> None:
    values: dict[str, Any] = {"scheduling": {"gpuProducts": ["NVIDIA-A100-SXM4-80GB"], "nodeSelector": {"pool": "a"}}}
    assert _vllm_capacity.node_ineligible_reason(node("ok", labels={"pool": "a"}), values) is None
    assert "no allocatable" in str(_vllm_capacity.node_ineligible_reason(node("cpu", gpus=0), values))
    assert "not Ready" in str(_vllm_capacity.node_ineligible_reason(node("nr", ready=False, labels={"pool": "a"}), values))
    assert "node selector" in str(_vllm_capacity.node_ineligible_reason(node("b", labels={"pool": "b"}), values))
    assert "not one of" in str(_vllm_capacity.node_ineligible_reason(node("h", product="H100", labels={"pool": "a"}), values))
    gpu_tainted = node("t", labels={"pool": "a"}, taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}])
    assert _vllm_capacity.node_ineligible_reason(gpu_tainted, values) is None, "the chart tolerates the GPU taint"
    other = node("o", labels={"pool": "a"}, taints=[{"key": "dedicated", "value": "x", "effect": "NoSchedule"}])
    assert "not tolerated" in str(_vllm_capacity.node_ineligible_reason(other, values))
    values["scheduling"]["tolerations"] = [{"key": "dedicated", "operator": "Exists"}]
    assert _vllm_capacity.node_ineligible_reason(other, values) is None
    prefer = node("p", labels={"pool": "a"}, taints=[{"key": "soft", "effect": "PreferNoSchedule"}])
    assert _vllm_capacity.node_ineligible_reason(prefer, values) is None


def test_shared_product_label_of_time_sliced_gpus_is_eligible() -> None:
    values: dict[str, Any] = {"scheduling": {"gpuProducts": ["NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"]}}
    assert _vllm_capacity.node_ineligible_reason(node("s", product="NVIDIA-H100-80GB-HBM3-SHARED"), values) is None
    assert _vllm_capacity.node_ineligible_reason(node("a", product="NVIDIA-A100-SXM4-80GB"), values) is None
    for product in ("NVIDIA-L4-SHARED", "NVIDIA-H100-80GB-HBM3-SHARED-SHARED", "SHARED", "NVIDIA-H100-80GB-HBM3-shared"):
        reason = _vllm_capacity.node_ineligible_reason(node("x", product=product), values)
        assert reason == (f"nvidia.com/gpu.product={product} is not one of ['NVIDIA-A100-SXM4-80GB', 'NVIDIA-H100-80GB-HBM3'] "
                          "(or their -SHARED forms)")
    assert _vllm_capacity.node_ineligible_reason(node("any", product="NVIDIA-L4-SHARED"), {}) is None, "no products: any GPU"


def sliced(replicas: str, product: str = "NVIDIA-A100-SXM4-80GB-SHARED") -> dict[str, Any]:
    return node("ts", product=product, labels={"nvidia.com/gpu.replicas": replicas})


def test_time_sliced_gpus_need_memory_for_every_share() -> None:
    reason = _vllm_capacity.node_ineligible_reason(sliced("4"), {"vllm": {"gpuMemoryUtilization": 0.9}})
    assert reason == ("its GPUs are time-sliced 4 ways (nvidia.com/gpu.replicas=4), and 4 replicas at gpu_memory_utilization 0.9 "
                      "would need 3.6 of one GPU's memory; set gpu_memory_utilization to at most 0.25")
    assert _vllm_capacity.node_ineligible_reason(sliced("4"), {"vllm": {"gpuMemoryUtilization": 0.25}}) is None, "4 x 0.25 fills it exactly"
    assert _vllm_capacity.node_ineligible_reason(sliced("2"), {"vllm": {"gpuMemoryUtilization": 0.45}}) is None
    assert _vllm_capacity.node_ineligible_reason(sliced("1"), {"vllm": {"gpuMemoryUtilization": 0.9}}) is None, "1 replica is no sharing"
    assert _vllm_capacity.node_ineligible_reason(sliced("junk"), {"vllm": {"gpuMemoryUtilization": 0.9}}) is None
    assert _vllm_capacity.node_ineligible_reason(sliced("8"), {}) is None, "the sim engine has no vllm section and holds no GPU memory"
    plan = _vllm_capacity.plan_capacity([sliced("4")], [], 1, 1, {"vllm": {"gpuMemoryUtilization": 0.9}}, "serve", "llama")
    assert not plan["fits"] and "time-sliced 4 ways" in plan["ineligible_nodes"]["ts"]


@pytest.mark.parametrize("shares", range(2, 17))
def test_the_suggested_gpu_memory_utilization_is_accepted(shares: int) -> None:
    reason = str(_vllm_capacity.node_ineligible_reason(sliced(str(shares)), {"vllm": {"gpuMemoryUtilization": 0.9}}))
    limit = float(reason.rsplit("at most ", 1)[1])
    assert 0 < limit <= 1 / shares
    assert _vllm_capacity.node_ineligible_reason(sliced(str(shares)), {"vllm": {"gpuMemoryUtilization": limit}}) is None, reason


def test_pod_gpus_counts_requests_or_limits_and_init_containers() -> None:
    p = pod("a", "n", 2)
    p["spec"]["containers"].append({"name": "d", "resources": {"requests": {"nvidia.com/gpu": "1"}}})
    assert _vllm_capacity.pod_gpus(p) == 3
    p["spec"]["initContainers"] = [{"name": "i", "resources": {"limits": {"nvidia.com/gpu": "4"}}}]
    assert _vllm_capacity.pod_gpus(p) == 4


def test_plan_capacity_packs_whole_replicas_per_node() -> None:
    nodes = [node("g1"), node("g2"), node("cpu", gpus=0)]
    pods = [pod("x", "g1", 3), pod("y", None, 8, phase="Pending"), pod("done", "g2", 8, phase="Succeeded"),
            pod("own", "g2", 4, namespace="serve", labels={"app.kubernetes.io/instance": "llama"})]
    plan = _vllm_capacity.plan_capacity(nodes, pods, replicas=3, gpus_per_replica=4, values={}, namespace="serve", release="llama")
    assert plan["nodes"] == {"g1": {"allocatable": 8, "requested": 3, "free": 5, "replica_slots": 1},
                             "g2": {"allocatable": 8, "requested": 0, "free": 8, "replica_slots": 2}}
    assert plan["replica_slots"] == 3 and plan["fits"] is True
    _vllm_capacity.check_capacity(plan)
    plan = _vllm_capacity.plan_capacity(nodes, pods, replicas=4, gpus_per_replica=4, values={}, namespace="serve", release="llama")
    assert not plan["fits"]
    with pytest.raises(KubeInferError) as info:
        _vllm_capacity.check_capacity(plan)
    assert "4 replicas x 4 GPUs" in info.value.msg and "room for 3" in info.value.msg
    assert "g1: 5 of 8 free (1 replicas)" in info.value.msg
    assert info.value.result["capacity"]["replica_slots"] == 3


def test_plan_capacity_a_replica_cannot_span_nodes() -> None:
    plan = _vllm_capacity.plan_capacity([node("g1"), node("g2")], [pod("x", "g1", 4), pod("y", "g2", 4)], replicas=1,
                                        gpus_per_replica=8, values={}, namespace="serve", release="llama")
    assert plan["replica_slots"] == 0 and not plan["fits"], "8 free GPUs split over two nodes hold no 8-GPU replica"


def test_plan_capacity_lists_ineligible_gpu_nodes() -> None:
    plan = _vllm_capacity.plan_capacity([node("g1", product="T4")], [], 1, 1, {"scheduling": {"gpuProducts": ["A100"]}}, "s", "r")
    assert not plan["fits"] and "g1" in plan["ineligible_nodes"]
    with pytest.raises(KubeInferError, match="not eligible: g1"):
        _vllm_capacity.check_capacity(plan)


def member(name: str, replicas: int, gpus: int, namespace: str = "serve") -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "replicas": replicas, "gpus_per_replica": gpus}


def test_fleet_capacity_counts_every_member_and_ignores_their_pods() -> None:
    nodes = [node("g1", gpus=4), node("g2", gpus=4)]
    # b's and c's running pods are replaced like the release's own; the foreign pod holds 2 GPUs of g1.
    pods = [pod("b-1", "g2", 2, namespace="serve", labels={"app.kubernetes.io/instance": "b"}),
            pod("c-1", "g1", 1, namespace="serve", labels={"app.kubernetes.io/instance": "c"}),
            pod("foreign", "g1", 2)]
    fleet = [member("a", 1, 1), member("b", 1, 2), member("c", 2, 1)]
    plan = _vllm_capacity.plan_capacity(nodes, pods, 1, 1, {}, "serve", "a", fleet=fleet)
    assert plan["nodes"]["g1"]["free"] == 2 and plan["nodes"]["g2"]["free"] == 4
    assert plan["fleet"]["requested_gpus"] == 5 and plan["fleet"]["free_gpus"] == 6
    assert plan["fits"] and plan["fleet"]["fits"] and plan["fleet"]["unplaced"] == {}
    placed = {m["name"]: m["placed"] for m in plan["fleet"]["members"]}
    assert placed["b"] == {"g1": 1} or placed["b"] == {"g2": 1}
    assert sum(sum(p.values()) for p in placed.values()) == 4, "4 replicas placed"
    _vllm_capacity.check_capacity(plan)


def test_fleet_capacity_refuses_the_whole_list_naming_every_member() -> None:
    nodes = [node("g1", gpus=4), node("g2", gpus=4)]
    # Each release alone fits; together they need 9 of 8 GPUs.
    fleet = [member("a", 2, 2), member("b", 1, 4), member("c", 1, 1)]
    plan = _vllm_capacity.plan_capacity(nodes, [], 2, 2, {}, "serve", "a", fleet=fleet)
    assert plan["replica_slots"] >= plan["replicas"], "a alone fits"
    assert not plan["fits"] and plan["fleet"]["unplaced"] == {"serve/c": 1}
    with pytest.raises(KubeInferError) as info:
        _vllm_capacity.check_capacity(plan)
    msg = info.value.msg
    assert msg.startswith("fleet: not enough GPU capacity for the 3 releases together")
    assert "serve/a 2 x 2, serve/b 1 x 4, serve/c 1 x 1 GPUs" in msg and "9 GPUs" in msg and "8 free of 8" in msg
    assert "no room for serve/c: 1 replica(s)" in msg and "Nothing was installed" in msg


def test_fleet_packing_keeps_whole_replicas_on_one_node_biggest_first() -> None:
    # 4 + 4 free: a 4-GPU replica and four 1-GPU replicas fit only when the 4-GPU one goes first.
    packed = _vllm_capacity.pack_fleet({"g1": 4, "g2": 4}, [member("small", 4, 1), member("big", 1, 4)])
    assert packed["fits"], packed
    three = _vllm_capacity.pack_fleet({"g1": 3, "g2": 3}, [member("two", 3, 2)])
    assert not three["fits"] and three["unplaced"] == {"serve/two": 1}, "6 free GPUs split 3 + 3 hold two 2-GPU replicas, not three"


def test_a_fleet_member_listed_as_the_release_itself_takes_the_release_options() -> None:
    plan = _vllm_capacity.plan_capacity([node("g1", gpus=2)], [], 2, 1, {}, "serve", "a", fleet=[member("a", 5, 1)])
    assert plan["fleet"]["requested_gpus"] == 2 and plan["fits"]


def test_inventory_view_lists_releases_taken_out_of_the_model_list() -> None:
    def dep(ns: str, name: str, inventory: str | None) -> dict[str, Any]:
        labels = {"kubeinfer.io/inventory": inventory} if inventory else {}
        return {"metadata": {"namespace": ns, "name": name, "labels": {"app.kubernetes.io/instance": name}},
                "spec": {"template": {"metadata": {"labels": labels}}}}
    deps = [dep("serve", "a", "prod"), dep("serve", "b", "prod"), dep("serve", "gone", "prod"), dep("other", "x", "dev"),
            dep("serve", "manual", None)]
    view = _vllm.inventory_view(deps, "prod", [member("b", 1, 1)], "serve", "a")
    assert view["listed"] == [{"namespace": "serve", "name": "a"}, {"namespace": "serve", "name": "b"}]
    assert view["unlisted"] == [{"namespace": "serve", "name": "gone"}], "another inventory and unlabelled releases are left alone"


@pytest.mark.parametrize("over, fragment", [
    ({"fleet": [{"name": "Bad", "namespace": None, "replicas": 1, "gpus_per_replica": 1}]}, "fleet[0].name: 'Bad'"),
    ({"fleet": [{"name": "a", "namespace": None, "replicas": 1, "gpus_per_replica": 0}]}, "fleet[0].gpus_per_replica: must be >= 1"),
    ({"fleet": [{"name": "a", "namespace": None, "replicas": 1, "gpus_per_replica": 1},
                {"name": "a", "namespace": "serve", "replicas": 1, "gpus_per_replica": 1}]}, "fleet[1].name: serve/a is listed twice"),
    ({"inventory": "not valid!"}, "inventory: 'not valid!'"),
    ({"inventory": "prod", "pod_labels": {"kubeinfer.io/inventory": "dev"}}, "pod_labels: kubeinfer.io/inventory is set by inventory"),
])
def test_fleet_and_inventory_are_checked_naming_the_option(over: dict[str, Any], fragment: str) -> None:
    with pytest.raises(KubeInferError) as info:
        _vllm.with_fleet(params(namespace="serve", **over))
    assert fragment in info.value.msg


def test_inventory_joins_the_pod_labels_and_fleet_members_default_to_the_namespace() -> None:
    p = _vllm.with_fleet(params(namespace="serve", inventory="prod", pod_labels={"team": "ml"},
                                fleet=[{"name": "b", "namespace": None, "replicas": 2, "gpus_per_replica": 1}]))
    assert p["pod_labels"] == {"team": "ml", "kubeinfer.io/inventory": "prod"}
    assert p["fleet"] == [{"name": "b", "namespace": "serve", "replicas": 2, "gpus_per_replica": 1}]


# -- manifests ----------------------------------------------------------------------
DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: llama, namespace: serve}
spec:
  selector: {matchLabels: {app: x}}
  template:
    metadata: {labels: {app: x}}
    spec:
      containers:
        - name: server
          image: vllm/vllm-openai:v0.11.0
          resources: {requests: {nvidia.com/gpu: "1"}, limits: {nvidia.com/gpu: "1"}}
---
# empty documents are dropped
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: llama}
spec: {endpoints: [{port: http}], selector: {}}
"""


def test_validate_manifests_validates_and_lists_skipped_kinds() -> None:
    docs = _manifests.parse_manifests(DEPLOYMENT)
    assert [d["kind"] for d in docs] == ["Deployment", "ServiceMonitor"]
    result = _manifests.validate_manifests(docs, "v1.36.3")
    assert result["validated"] == ["Deployment/llama"]
    assert result["skipped"][0]["object"] == "ServiceMonitor/llama"
    assert result["schema_version"] == "1.36"


def test_validate_manifests_fails_on_an_unknown_field() -> None:
    docs = _manifests.parse_manifests(DEPLOYMENT)
    docs[0]["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(KubeInferError) as info:
        _manifests.validate_manifests(docs, "v1.36.3")
    assert "Deployment/llama" in info.value.msg and "gpus" in info.value.msg
    assert info.value.result["validation"]["validated"] == []


def test_validate_manifests_newer_server_uses_the_newest_schema() -> None:
    result = _manifests.validate_manifests(_manifests.parse_manifests(DEPLOYMENT), "v1.99.0")
    assert "no schemas for 1.99.0" in result["note"]


# -- the run order, with fakes ------------------------------------------------------
class FakeKube:
    def __init__(self, nodes: list[dict[str, Any]], pods: list[dict[str, Any]], deployment: dict[str, Any] | None = None,
                 secrets: dict[str, dict[str, Any]] | None = None) -> None:
        self.nodes, self.pods, self.deployment, self.secrets = nodes, pods, deployment, secrets or {}
        self.requests: Counter[str] = Counter()
        self.helm: FakeHelmCli | None = None
        """The fake helm whose release Secret this API server holds (see run)."""

    def helm_secrets(self) -> list[dict[str, Any]]:
        return self.helm.stored() if self.helm else []

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        self.requests[kwargs.get("verb") or method.lower()] += 1
        assert path == "/version"
        return {"gitVersion": "v1.36.3"}

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None, metadata_only: bool = False) -> list[dict[str, Any]]:
        self.requests["list"] += 1
        if kind == "Node":
            return self.nodes
        if kind == "Secret":
            assert label_selector == "owner=helm,name=llama", label_selector
            return [{"metadata": s["metadata"]} for s in self.helm_secrets()]
        if namespace:
            return [p for p in self.pods if p["metadata"]["namespace"] == namespace]
        return self.pods

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        self.requests["get"] += 1
        if kind == "Secret":
            stored = {s["metadata"]["name"]: s for s in self.helm_secrets()}
            return stored.get(name) or self.secrets.get(name)
        if kind == "Namespace":
            return {"metadata": {"name": name}}
        return self.deployment

    # The operation Lease helm upgrades hold (_helm_release.OperationLease): counted, not kept.
    def apply(self, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        assert body["kind"] == "Lease"
        self.requests["apply"] += 1
        return body

    def patch(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.requests["patch"] += 1
        return {}

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        assert kind == "Lease"
        self.requests["delete"] += 1
        return True


RENDERED = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: llama, namespace: serve}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: vllm, app.kubernetes.io/instance: llama}}
  template:
    metadata: {labels: {app.kubernetes.io/name: vllm, app.kubernetes.io/instance: llama}}
    spec:
      containers: [{name: server, image: "vllm/vllm-openai:v0.11.0"}]
---
apiVersion: v1
kind: Service
metadata: {name: llama, namespace: serve}
spec:
  selector: {app.kubernetes.io/name: vllm, app.kubernetes.io/instance: llama}
  ports: [{name: http, port: 8000, targetPort: http}]
"""


class FakeHelmCli:
    """A run_command stand-in for helm that keeps one release: show chart, template, upgrade, rollback and uninstall,
    each argv recorded. The release's last revision is read from the Secret helm would store (``stored``)."""

    def __init__(self, release: dict[str, Any] | None = None, values: dict[str, Any] | None = None) -> None:
        self.release, self.values = release, values or {}
        self.argvs: list[list[str]] = []

    def __call__(self, argv: list[str], environ_update: dict[str, str] | None = None) -> tuple[int, str, str]:
        self.argvs.append(argv)
        verb = argv[1]
        if verb == "show":
            return 0, "apiVersion: v2\nname: vllm\nversion: 0.1.0\nappVersion: v0.11.0\n", ""
        if verb == "template":
            assert argv[argv.index("--kube-version") + 1] == "v1.36.3"
            return 0, RENDERED, ""
        if verb == "list":
            return 0, json.dumps([self.release] if self.release else []), ""
        if verb == "get":
            return 0, json.dumps(self.values), ""
        if verb == "upgrade":
            with open(argv[argv.index("--values") + 1]) as f:
                self.values = json.load(f)
            revision = int((self.release or {}).get("revision", 0)) + 1
            self.release = {"name": argv[3], "chart": "vllm-0.1.0", "status": "deployed", "revision": str(revision)}
            return 0, "", ""
        if verb in ("rollback", "uninstall"):
            return 0, "", ""
        return 1, "", f"unexpected helm call {argv}"

    def verbs(self) -> list[str]:
        return [a[1] for a in self.argvs]

    def stored(self) -> list[dict[str, Any]]:
        """The release Secret helm would keep for the last revision (its manifests: what template renders)."""
        if not self.release:
            return []
        return [stored_secret(release_record(dict({"name": "llama"}, **self.release), self.values, RENDERED, "serve"))]


def run(kube: FakeKube, cli: FakeHelmCli, p: dict[str, Any], check_mode: bool = False, diff: bool = False) -> dict[str, Any]:
    kube.helm = cli
    return _vllm.run(kube, Helm(cli, "helm", {}), p, check_mode, diff)  # type: ignore[arg-type]


def rolled_out(replicas: int) -> dict[str, Any]:
    return {"metadata": {"name": "llama", "generation": 1}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                       "availableReplicas": replicas, "readyReplicas": replicas}}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_run_installs_once_then_reruns_without_a_write() -> None:
    cli = FakeHelmCli()
    first = run(FakeKube([node("g1")], [], rolled_out(1)), cli, params())
    assert first["changed"] and cli.verbs().count("upgrade") == 1
    assert first["change_reasons"] == ["release: (none) -> vllm-0.1.0"]
    assert first["startup_budget_seconds"] == 135 and first["rollout"]["rolled_out"]
    assert first["endpoint"] == {"service": "llama", "namespace": "serve", "host": "llama.serve.svc.cluster.local", "port": 8000,
                                 "url": "http://llama.serve.svc.cluster.local:8000"}
    assert first["release"]["installed"] and first["release"]["revision"] == 1 and first["release"]["chart_version"] == "0.1.0"
    assert any(c.startswith("helm upgrade --install llama /c/charts/vllm") and "<values-file>" in c for c in first["helm_commands"])

    assert "template" in cli.verbs() and first["validation"]["validated"] == ["Deployment/llama", "Service/llama"]

    again = FakeHelmCli(cli.release, cli.values)
    kube = FakeKube([node("g1")], [], rolled_out(1))
    second = run(kube, again, params(), diff=True)
    assert not second["changed"] and second["change_reasons"] == [] and second["changed_values"] == []
    # Converged: the manifests come from the release's Secret, so helm runs only to read the chart (a path here).
    assert again.verbs() == ["show"] and "validation" not in second
    assert second["endpoint"] == first["endpoint"]
    assert second["diff"]["before"] == second["diff"]["after"]


def test_check_mode_reports_the_diff_and_writes_nothing() -> None:
    cli = FakeHelmCli({"chart": "vllm-0.1.0", "status": "deployed", "revision": "1"}, _vllm_values.build_values(params(), 135))
    result = run(FakeKube([node("g1")], [], rolled_out(1)), cli, params(replicas=2), check_mode=True, diff=True)
    assert result["changed"] and result["changed_values"] == ["replicaCount"]
    assert result["change_reasons"] == ["values.replicaCount: 1 -> 2"]
    assert result["diff"]["before"]["replicaCount"] == 1 and result["diff"]["after"]["replicaCount"] == 2
    assert not {"upgrade", "rollback", "uninstall"} & set(cli.verbs())
    assert result["release"]["revision"] == 1


def test_check_mode_before_any_node_advertises_a_gpu_reports_the_gpu_checks_as_pending() -> None:
    cpu_only = node("c1", gpus=0, memory=None)
    cli = FakeHelmCli()
    result = run(FakeKube([cpu_only], []), cli, params(replicas=2), check_mode=True, diff=True)
    assert result["changed"] and "no node has allocatable nvidia.com/gpu yet" in result["preflight_pending"]
    assert result["capacity"]["checked"] is False and result["sizing"]["fits"] is None
    assert result["sizing"]["per_gpu_weights_gib"] > 14 and result["startup_budget_seconds"] > 0
    assert result["diff"]["after"]["replicaCount"] == 2
    assert not {"upgrade", "rollback", "uninstall"} & set(cli.verbs())
    # A real run on the same cluster still refuses: there is nowhere to put a replica.
    with pytest.raises(KubeInferError, match="no GPU node can take a replica"):
        run(FakeKube([cpu_only], []), FakeHelmCli(), params(replicas=2))


@pytest.mark.parametrize("over, fragment", [
    ({"model": "meta-llama/Llama-3.1-405B-Instruct"}, "does not fit: 405B"),
    ({"replicas": 3, "gpus_per_replica": 8}, "replicas: not enough GPU capacity"),
])
def test_preflight_failure_installs_nothing(over: dict[str, Any], fragment: str) -> None:
    cli = FakeHelmCli()
    with pytest.raises(KubeInferError) as info:
        run(FakeKube([node("g1"), node("g2")], []), cli, params(**over))
    assert fragment in info.value.msg
    assert cli.verbs() == ["show"], "only the chart was read"
    assert info.value.result["release"]["installed"] is False and info.value.result["helm_commands"][0].startswith("helm show chart")


def test_capacity_check_can_be_left_to_the_scheduler() -> None:
    p = params(replicas=2, gpus_per_replica=8, preflight_capacity=False)
    result = run(FakeKube([node("g1")], [], rolled_out(2)), FakeHelmCli(), p, check_mode=True)
    assert result["capacity"]["fits"] is False and result["capacity"]["checked"] is False


def test_a_pending_release_is_refused_before_any_write() -> None:
    cli = FakeHelmCli({"chart": "vllm-0.1.0", "status": "pending-upgrade", "revision": "2"})
    with pytest.raises(KubeInferError, match="is in status pending-upgrade"):
        run(FakeKube([node("g1")], []), cli, params())
    assert "upgrade" not in cli.verbs()


def pending_pod() -> dict[str, Any]:
    p = pod("llama-abc", None, 8, namespace="serve", labels={"app.kubernetes.io/instance": "llama"}, phase="Pending")
    p["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                  "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]
    return p


@pytest.mark.parametrize("previous, undo", [
    (None, ["uninstall", "llama", "--namespace", "serve"]),
    ({"chart": "vllm-0.1.0", "status": "deployed", "revision": "4"}, ["rollback", "llama", "4", "--namespace", "serve", "--wait"]),
])
def test_rollout_timeout_reports_the_scheduler_and_atomic_undoes(monkeypatch: pytest.MonkeyPatch, previous: dict[str, Any] | None,
                                                                 undo: list[str]) -> None:
    fake = FakeClock()
    monkeypatch.setattr(_vllm, "wait_for", functools.partial(_waiter.wait_for, clock=fake.clock, sleep=fake.sleep))
    stuck = rolled_out(2)
    stuck["status"]["availableReplicas"] = 1
    cli = FakeHelmCli(previous, {"replicaCount": 1} if previous else None)
    with pytest.raises(KubeInferError) as info:
        run(FakeKube([node("g1")], [pending_pod()], stuck), cli, params(replicas=2, preflight_capacity=False, timeout=30, atomic=True))
    msg = info.value.msg
    assert "timed out after 30s" in msg and "0/2 nodes are available: 2 Insufficient nvidia.com/gpu." in msg
    assert info.value.result["unschedulable_reason"].startswith("pod llama-abc unschedulable")
    assert cli.argvs[-1][1:len(undo) + 1] == undo
    assert msg.endswith(info.value.result["rolled_back"])
    assert info.value.result["placement"] == {"llama-abc": None}


def test_absent_uninstalls_only_an_existing_release() -> None:
    cli = FakeHelmCli({"chart": "vllm-0.1.0", "status": "deployed", "revision": "2"})
    result = run(FakeKube([], []), cli, params(state="absent"))
    assert result["changed"] and cli.verbs() == ["uninstall"], "the release is read from the Secret helm stores it in"
    assert result["release"]["installed"] and result["release"]["revision"] == 2
    cli = FakeHelmCli(None)
    result = run(FakeKube([], []), cli, params(state="absent"))
    assert not result["changed"] and cli.verbs() == []
    assert result["release"] == {"name": "llama", "namespace": "serve", "installed": False, "chart": None, "chart_name": None,
                                 "chart_version": None, "app_version": None, "revision": 0, "status": None, "updated": None}


TOKEN = {"name": "hf-token", "key": "HF_TOKEN", "optional": False}


@pytest.mark.parametrize("secrets, fragment", [
    ({}, "hf_token_secret.name: Secret serve/hf-token does not exist"),
    ({"hf-token": {"data": {"token": "eA=="}}}, "hf_token_secret.key: Secret serve/hf-token has no key 'HF_TOKEN' (its keys: token)"),
])
def test_a_missing_token_secret_or_key_is_refused_before_any_write(secrets: dict[str, Any], fragment: str) -> None:
    cli = FakeHelmCli()
    with pytest.raises(KubeInferError) as info:
        run(FakeKube([node("g1")], [], rolled_out(1), secrets), cli, params(hf_token_secret=TOKEN))
    assert info.value.msg.startswith(fragment)
    assert "eA==" not in str(info.value.result)
    assert cli.verbs() == ["show"], "only the chart was read"


def test_the_token_secret_is_only_reported_when_optional_or_in_check_mode() -> None:
    optional = run(FakeKube([node("g1")], [], rolled_out(1)), FakeHelmCli(), params(hf_token_secret=dict(TOKEN, optional=True)))
    assert optional["hf_token_secret"]["exists"] is False and optional["changed"]
    preview = run(FakeKube([node("g1")], [], rolled_out(1)), FakeHelmCli(), params(hf_token_secret=TOKEN), check_mode=True)
    assert preview["hf_token_secret"] == {"name": "hf-token", "key": "HF_TOKEN", "optional": False, "exists": False, "has_key": False}
    present = run(FakeKube([node("g1")], [], rolled_out(1), {"hf-token": {"data": {"HF_TOKEN": "eA=="}}}), FakeHelmCli(),
                  params(hf_token_secret=TOKEN))
    assert present["hf_token_secret"]["has_key"] and "eA==" not in str(present)
