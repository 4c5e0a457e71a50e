"""Tests of the vLLM Helm chart under charts/vllm, run with the real helm binary.

helm comes from the local build cache (override with HELM_BIN); the llm-d-inference-sim
binary (override with SIM_BIN) checks that the sim engine's argv parses. Rendered
manifests are validated with kubernetes-validate --strict for the local cluster's
Kubernetes minor version (tools/localcluster/versions.env).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "vllm"
VALUES_DIR = Path(__file__).resolve().parent / "values"
VALUES_FILES = sorted(VALUES_DIR.glob("*.yaml"))
CACHE = Path(os.environ.get("KUBEINFER_CACHE", str(Path.home() / ".cache" / "kubeinfer")))


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (REPO / "tools" / "localcluster" / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


VERSIONS = _versions()
# HELM_BIN wins; HELM_BINARY is what the Makefile exports.
HELM = os.environ.get("HELM_BIN") or os.environ.get("HELM_BINARY") or str(CACHE / f"helm-{VERSIONS['HELM_VERSION']}" / "helm")
SIM = os.environ.get("SIM_BIN", str(CACHE / f"inference-sim-{VERSIONS['INFERENCE_SIM_VERSION']}" / "llm-d-inference-sim"))
KUBE_VERSION = VERSIONS["KUBERNETES_VERSION"]  # e.g. v1.36.3, the local cluster's version
# kubernetes-validate ships schemas per minor version (x.y.0).
VALIDATE_VERSION = ".".join(KUBE_VERSION.lstrip("v").split(".")[:2]) + ".0"

# Kinds from CRDs (prometheus-operator) that kubernetes-validate has no schema for.
# They are checked structurally below instead, and the test proves the schema is absent.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor")}

# Flags llm-d-inference-sim v0.10.2 accepts that the chart may emit (checked against `--help`).
SIM_FLAGS = {
    "--model",
    "--served-model-name",
    "--port",
    "--mode",
    "--max-num-seqs",
    "--max-model-len",
    "--time-to-first-token",
    "--inter-token-latency",
    "--fake-metrics",
    "--force-dummy-tokenizer",
}
TOKEN_ENV = {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "VLLM_API_KEY"}
SENTINEL = "hf_SENTINELtokenDoNotLeak0123456789"


def _require(path: str, what: str) -> str:
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"{what} not found at {path}; build it with tools/localcluster/build.sh or set the env override")
    return path


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_require(HELM, "helm"), *args], capture_output=True, text=True, timeout=120, check=False)


def template_result(values_file: Path | None = None, *sets: str, extra_values: dict[str, Any] | None = None,
                    tmp: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["template", "rel", str(CHART), "--namespace", "llm", "--kube-version", KUBE_VERSION]
    if values_file is not None:
        argv += ["-f", str(values_file)]
    if extra_values is not None:
        assert tmp is not None
        extra = tmp / "extra-values.yaml"
        extra.write_text(yaml.safe_dump(extra_values))
        argv += ["-f", str(extra)]
    for s in sets:
        argv += ["--set", s]
    return helm(*argv)


def render(values_file: Path | None = None, *sets: str, extra_values: dict[str, Any] | None = None,
           tmp: Path | None = None) -> list[dict[str, Any]]:
    res = template_result(values_file, *sets, extra_values=extra_values, tmp=tmp)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def load_values(values_file: Path) -> dict[str, Any]:
    return yaml.safe_load(values_file.read_text()) or {}


def effective(values_file: Path) -> dict[str, Any]:
    """Chart defaults merged with the values file (maps merge, everything else replaces)."""

    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            return {k: merge(base.get(k), over[k]) if k in base else over[k] for k in over} | {
                k: v for k, v in base.items() if k not in over
            }
        return over

    return merge(yaml.safe_load((CHART / "values.yaml").read_text()), load_values(values_file))


def only(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and "helm.sh/hook" not in d["metadata"].get("annotations", {})]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def flag_value(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


ids = [p.stem for p in VALUES_FILES]


def test_matrix_is_complete() -> None:
    assert {p.stem for p in VALUES_FILES} >= {"single-gpu", "tp4-pvc", "sim", "apikey-servicemonitor", "offline-hostpath",
                                              "nonroot-netpol"}


# --- hygiene --------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=ids)
def test_helm_lint_strict(values_file: Path) -> None:
    res = helm("lint", "--strict", str(CHART), "-f", str(values_file), "--kube-version", KUBE_VERSION)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 chart(s) failed" in res.stdout


def test_lint_fails_without_model() -> None:
    res = helm("lint", "--strict", str(CHART))
    assert res.returncode != 0
    assert "model" in (res.stdout + res.stderr)


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=ids)
def test_rendered_manifests_pass_kubernetes_validate_strict(values_file: Path) -> None:
    docs = render(values_file)
    validated = set()
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_KINDS:
            # No schema ships for prometheus-operator CRDs: prove it, then check the shape by hand.
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, VALIDATE_VERSION, strict=True)
            endpoints = doc["spec"].get("endpoints") or doc["spec"].get("podMetricsEndpoints")
            assert endpoints == [{"port": "http", "path": "/metrics", "interval": endpoints[0]["interval"]}]
            continue
        try:
            kubernetes_validate.validate(doc, VALIDATE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for {VALIDATE_VERSION}: {e}")
        validated.add(doc["kind"])
    assert {"Deployment", "Service", "Pod"} <= validated


def test_kubernetes_validate_catches_a_bad_manifest() -> None:
    """The validation above can fail: an unknown field in a rendered Deployment is rejected."""
    dep = only(render(VALUES_FILES[0]), "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, VALIDATE_VERSION, strict=True)


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["kubeVersion"] == ">=1.28.0-0"
    assert chart["version"] == "0.3.0"  # 0.2.0 hardened pods, PDB, NetworkPolicy; 0.3.0 prefetch Job, preStop drain, canary
    assert chart["appVersion"] == values["image"]["vllm"]["tag"]
    assert values["image"]["sim"]["tag"] == VERSIONS["INFERENCE_SIM_VERSION"]
    assert values["engine"] == "vllm"


def test_kube_version_constraint_enforced() -> None:
    res = helm("template", "rel", str(CHART), "-f", str(VALUES_FILES[0]), "--kube-version", "v1.27.9")
    assert res.returncode != 0
    assert "kubeVersion" in res.stderr or "incompatible" in res.stderr


def _walk_schema(node: dict[str, Any], path: str) -> list[str]:
    problems = []
    if node.get("type") == "object" or "properties" in node:
        if "properties" in node:
            if node.get("additionalProperties") is not False:
                problems.append(f"{path}: additionalProperties is not false")
        elif not isinstance(node.get("additionalProperties"), dict):
            problems.append(f"{path}: free-form map without a value schema")
        for name, sub in node.get("properties", {}).items():
            if not sub.get("description"):
                problems.append(f"{path}.{name}: no description")
            problems += _walk_schema(sub, f"{path}.{name}")
        if isinstance(node.get("additionalProperties"), dict):
            problems += _walk_schema(node["additionalProperties"], f"{path}.*")
    if node.get("type") == "array":
        problems += _walk_schema(node["items"], f"{path}[]")
    return problems


def test_schema_describes_every_key_and_closes_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert _walk_schema(schema, "") == []
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def keys(d: dict[str, Any], s: dict[str, Any], path: str) -> None:
        for k, v in d.items():
            assert k in s["properties"], f"{path}.{k} missing from the schema"
            sub = s["properties"][k]
            if isinstance(v, dict) and "properties" in sub:
                keys(v, sub, f"{path}.{k}")

    keys(values, schema, "")
    assert schema["properties"]["vllm"]["properties"]["dtype"]["enum"] == ["auto", "half", "float16", "bfloat16", "float", "float32"]
    assert "model" in schema["required"]


@pytest.mark.parametrize(
    "bad",
    [
        {"unknownTopLevel": 1},
        {"vllm": {"maxModelLenn": 4096}},
        {"modelCache": {"pvc": {"sizee": "1Gi"}}},
        {"hfToken": {"value": SENTINEL}},
        {"hfToken": {"token": SENTINEL}},
        {"apiKey": {"value": SENTINEL}},
        {"engine": "tgi"},
        {"vllm": {"dtype": "int8"}},
        {"vllm": {"gpuMemoryUtilization": 1.5}},
        {"vllm": {"extraArgs": ["--api-key", SENTINEL]}},
        {"vllm": {"extraArgs": [f"--hf-token={SENTINEL}"]}},
        {"vllm": {"extraArgs": ["--tensor-parallel-size=2"]}},
        {"extraEnv": [{"name": "HF_TOKEN", "value": SENTINEL}]},
        {"gpusPerReplica": 0},
        {"resources": {"limits": {"nvidia.com/gpu": 8}}},
        {"sim": {"extraArgs": ["--dtype", "half"]}},
        {"sim": {"timeToFirstToken": "fast"}},
        {"metrics": {"serviceMonitor": {"enabled": True, "selector": {}}}},
        {"securityContext": {"privileged": True}},
        {"securityContext": {"runAsUserr": 1000}},
        {"securityContext": {"capabilities": {"add": ["sys_admin"]}}},
        {"podSecurityContext": {"hostPID": True}},
        {"podSecurityContext": {"seccompProfile": {"type": "docker/default"}}},
        {"networkPolicy": {"enabled": True, "egress": []}},
        {"networkPolicy": {"allowedNamespaces": ["Not_A_Namespace"]}},
        {"networkPolicy": {"prometheus": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Like"}]}}}},
        {"scratch": {"sizeLimit": "lots"}},
        {"extraEnv": [{"name": "HOME", "value": "/"}]},
    ],
    ids=lambda b: json.dumps(b)[:60],
)
def test_schema_rejects(bad: dict[str, Any], tmp_path: Path) -> None:
    res = template_result(VALUES_FILES[0], extra_values=bad, tmp=tmp_path)
    assert res.returncode != 0, f"helm template accepted {bad}"
    assert "schema" in res.stderr.lower()
    assert SENTINEL not in res.stdout


def test_model_name_required(tmp_path: Path) -> None:
    res = helm("template", "rel", str(CHART), "--kube-version", KUBE_VERSION)
    assert res.returncode != 0
    assert "schema" in res.stderr.lower()


def test_tensor_parallel_cannot_exceed_gpus() -> None:
    res = template_result(VALUES_FILES[0], "vllm.tensorParallelSize=2")
    assert res.returncode != 0
    assert "cannot exceed gpusPerReplica" in res.stderr


def test_hostpath_needs_a_path() -> None:
    res = template_result(VALUES_FILES[0], "modelCache.type=hostPath")
    assert res.returncode != 0
    assert "modelCache.hostPath.path" in res.stderr


# --- workload ------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=ids)
def test_gpu_requests_equal_limits(values_file: Path) -> None:
    gpus = effective(values_file)["gpusPerReplica"]
    res = container(render(values_file))["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == str(gpus)


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_gpu_count_follows_gpus_per_replica(gpus: int) -> None:
    docs = render(VALUES_FILES[0], f"gpusPerReplica={gpus}")
    c = container(docs)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
    assert flag_value(c["args"], "--tensor-parallel-size") == str(gpus)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    if gpus > 1:
        assert mounts["dshm"] == "/dev/shm"
        assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    else:
        assert "dshm" not in mounts and "dshm" not in volumes


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=ids)
def test_shm_only_with_more_than_one_gpu(values_file: Path) -> None:
    values = effective(values_file)
    pod = only(render(values_file), "Deployment")["spec"]["template"]["spec"]
    shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
    mounted = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    if values["gpusPerReplica"] > 1:
        assert len(shm) == 1 and shm[0]["emptyDir"]["sizeLimit"] == values["shm"]["sizeLimit"]
        assert len(mounted) == 1 and mounted[0]["name"] == shm[0]["name"]
    else:
        assert shm == [] and mounted == []


def test_affinity_and_the_capacity_planner_accept_the_same_products(tmp_path: Path) -> None:
    """The planner (vllm_release's preflight) must count exactly the nodes the rendered affinity lets the pods onto."""
    from ansible_collections.kubeinfer.llm.plugins.module_utils._vllm_capacity import node_ineligible_reason

    products = ["NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"]
    values = {"scheduling": {"gpuProducts": products}}
    pod = only(render(VALUES_FILES[0], extra_values=values, tmp=tmp_path), "Deployment")["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    (expr,) = term["matchExpressions"]
    assert expr["key"] == "nvidia.com/gpu.product" and expr["operator"] == "In"
    for label in [*products, *(p + "-SHARED" for p in products), "NVIDIA-L4", "NVIDIA-L4-SHARED",
                  "NVIDIA-A100-SXM4-80GB-SHARED-SHARED", "NVIDIA-H100-80GB-HBM3-shared"]:
        node = {"metadata": {"name": "n", "labels": {"nvidia.com/gpu.product": label}}, "spec": {},
                "status": {"allocatable": {"nvidia.com/gpu": "8"}, "conditions": [{"type": "Ready", "status": "True"}]}}
        assert (label in expr["values"]) == (node_ineligible_reason(node, values) is None), label


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=ids)
def test_tolerations_and_affinity(values_file: Path) -> None:
    sched = effective(values_file)["scheduling"]
    pod = only(render(values_file), "Deployment")["spec"]["template"]["spec"]
    tolerations = pod.get("tolerations", [])
    gpu_tol = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert (gpu_tol in tolerations) == sched["gpuToleration"]
    for extra in sched["tolerations"]:
        assert extra in tolerations
    assert len(tolerations) == int(sched["gpuToleration"]) + len(sched["tolerations"])
    if sched["gpuProducts"]:
        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        # Each product and its -SHARED form, the product label GPU Feature Discovery writes under time-slicing.
        shared = [form for product in sched["gpuProducts"] for form in (product, product + "-SHARED")]
        assert terms == [{"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": shared}]}]
    else:
        assert "affinity" not in pod
    assert pod.get("nodeSelector", {}) == sched["nodeSelector"]


def test_default_values_tolerate_gpu_taint() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["scheduling"]["gpuToleration"] is True


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=ids)
def test_no_token_value_anywhere(values_file: Path) -> None:
    values = effective(values_file)
    docs = render(values_file)
    assert not any(d["kind"] == "Secret" for d in docs), "the chart must never create a Secret"
    env = env_of(container(docs))
    for name in TOKEN_ENV & env.keys():
        assert "value" not in env[name], f"{name} has a literal value"
        assert set(env[name]["valueFrom"]) == {"secretKeyRef"}
    if values["hfToken"]["secretName"]:
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            ref = env[name]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": values["hfToken"]["secretName"], "key": values["hfToken"]["secretKey"],
                           "optional": values["hfToken"]["optional"]}
    else:
        assert not {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"} & env.keys()


def test_token_secret_optional_flag() -> None:
    env = env_of(container(render(VALUES_FILES[0], "hfToken.secretName=tok", "hfToken.secretKey=k", "hfToken.optional=true")))
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "tok", "key": "k", "optional": True}


@pytest.mark.parametrize(("budget", "period"), [(600, 10), (1805, 15), (1, 10), (30, 5), (7201, 60)])
def test_startup_probe_covers_budget(budget: int, period: int) -> None:
    docs = render(VALUES_FILES[0], f"probes.startup.budgetSeconds={budget}", f"probes.startup.periodSeconds={period}")
    probe = container(docs)["startupProbe"]
    assert probe["httpGet"] == {"path": "/health", "port": "http"}
    assert probe["periodSeconds"] == period
    assert probe["failureThreshold"] == math.ceil(budget / period)
    assert probe["failureThreshold"] * period >= budget > (probe["failureThreshold"] - 1) * period
    annotations = only(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["kubeinfer.io/startup-budget-seconds"] == str(budget)


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=ids)
def test_probes_and_rollout(values_file: Path) -> None:
    values = effective(values_file)
    docs = render(values_file)
    c = container(docs)
    budget = values["probes"]["startup"]["budgetSeconds"]
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= budget
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    strategy = only(docs, "Deployment")["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=ids)
def test_model_cache(values_file: Path) -> None:
    cache = effective(values_file)["modelCache"]
    docs = render(values_file)
    c = container(docs)
    env = env_of(c)
    assert env["HF_HOME"]["value"] == cache["mountPath"]
    offline = cache["offline"] or cache["prefetch"]["enabled"]
    assert ("HF_HUB_OFFLINE" in env) == offline
    if offline:
        assert env["HF_HUB_OFFLINE"]["value"] == "1"
    assert {"name": "model-cache", "mountPath": cache["mountPath"]} in c["volumeMounts"]
    volume = next(v for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "model-cache")
    pvcs = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    if cache["type"] == "pvc" and cache["pvc"]["existingClaim"]:
        assert volume["persistentVolumeClaim"]["claimName"] == cache["pvc"]["existingClaim"] and not pvcs
    elif cache["type"] == "pvc":
        assert volume["persistentVolumeClaim"]["claimName"] == "rel-vllm-model-cache"
        assert len(pvcs) == 1 and pvcs[0]["metadata"]["name"] == "rel-vllm-model-cache"
        assert pvcs[0]["spec"]["resources"]["requests"]["storage"] == cache["pvc"]["size"]
        assert pvcs[0]["spec"]["accessModes"] == cache["pvc"]["accessModes"]
    elif cache["type"] == "hostPath":
        assert volume["hostPath"] == cache["hostPath"]
        assert pvcs == []
    else:
        assert volume["emptyDir"] == {}
        assert pvcs == []


def test_existing_claim_is_used_not_created() -> None:
    docs = render(VALUES_FILES[0], "modelCache.type=pvc", "modelCache.pvc.existingClaim=shared-hf")
    volume = next(v for v in only(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "model-cache")
    assert volume["persistentVolumeClaim"]["claimName"] == "shared-hf"
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]


def test_created_claim_can_be_kept() -> None:
    docs = render(VALUES_FILES[0], "modelCache.type=pvc", "modelCache.pvc.keep=true")
    assert only(docs, "PersistentVolumeClaim")["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}


# --- engines -------------------------------------------------------------------------------------


def test_vllm_args_from_typed_values() -> None:
    tp4 = VALUES_DIR / "tp4-pvc.yaml"
    values = effective(tp4)
    c = container(render(tp4))
    assert c["image"] == "vllm/vllm-openai:v0.11.0"
    assert c["command"] == ["vllm", "serve"]
    args = c["args"]
    assert args[0] == values["model"]["name"]
    assert flag_value(args, "--revision") == "main"
    assert flag_value(args, "--served-model-name") == "llama-70b"
    assert flag_value(args, "--port") == "8000"
    assert flag_value(args, "--tensor-parallel-size") == "4"
    assert flag_value(args, "--dtype") == "bfloat16"
    assert flag_value(args, "--gpu-memory-utilization") == "0.92"
    assert flag_value(args, "--max-model-len") == "8192"
    assert flag_value(args, "--max-num-seqs") == "128"
    assert "--no-enable-prefix-caching" in args and "--enable-prefix-caching" not in args
    assert args[-2:] == values["vllm"]["extraArgs"]
    assert all(isinstance(a, str) for a in args)


def test_vllm_defaults_leave_unset_options_out() -> None:
    args = container(render(VALUES_DIR / "single-gpu.yaml"))["args"]
    assert args[0] == "facebook/opt-125m"
    assert flag_value(args, "--served-model-name") == "facebook/opt-125m"
    assert flag_value(args, "--tensor-parallel-size") == "1"
    assert flag_value(args, "--dtype") == "auto"
    assert "--enable-prefix-caching" in args
    for flag in ("--max-model-len", "--max-num-seqs", "--revision", "--api-key"):
        assert flag not in args


def _flags(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in args if a.startswith("--")}


def test_sim_engine_uses_only_sim_flags() -> None:
    sim = VALUES_DIR / "sim.yaml"
    c = container(render(sim))
    assert c["image"] == f"ghcr.io/llm-d/llm-d-inference-sim:{VERSIONS['INFERENCE_SIM_VERSION']}"
    assert "command" not in c, "the sim image's own entrypoint runs the binary"
    args = c["args"]
    assert _flags(args) <= SIM_FLAGS, _flags(args) - SIM_FLAGS
    assert flag_value(args, "--model") == "Qwen/Qwen2.5-1.5B-Instruct"
    assert flag_value(args, "--served-model-name") == "qwen-sim"
    assert flag_value(args, "--max-num-seqs") == "4"
    assert flag_value(args, "--time-to-first-token") == "200ms"
    assert flag_value(args, "--fake-metrics") == '{"waiting-requests":3}'
    assert "--force-dummy-tokenizer" in args
    # vLLM-only flags the simulator would reject.
    for flag in ("--dtype", "--gpu-memory-utilization", "--tensor-parallel-size", "--host", "--revision"):
        assert flag not in args


def test_sim_engine_ignores_vllm_options() -> None:
    args = container(render(VALUES_DIR / "sim.yaml", "vllm.dtype=half", "vllm.maxModelLen=4096", "model.revision=abc",
                            "vllm.extraArgs[0]=--trust-remote-code"))["args"]
    assert _flags(args) <= SIM_FLAGS


def _sim_parse(sim: str, args: list[str]) -> tuple[int, str]:
    res = subprocess.run([sim, *args, "--help"], capture_output=True, text=True, timeout=60, check=False)
    return res.returncode, res.stdout + res.stderr


def test_sim_flags_are_accepted_by_the_simulator() -> None:
    """Parse the rendered argv with the real llm-d-inference-sim. pflag reads the arguments in
    order, so an unknown flag fails before `--help` (appended last) is reached, and no server
    starts. The simulator logs "failed to read configuration" and still exits 0 on a bad flag,
    so the output, not only the exit code, is checked."""
    sim = _require(SIM, "llm-d-inference-sim")
    args = container(render(VALUES_DIR / "sim.yaml"))["args"]
    rc, out = _sim_parse(sim, args)
    assert rc == 0, out
    assert "failed to read configuration" not in out and "unknown flag" not in out, out
    for flag in SIM_FLAGS:
        assert re.search(rf"(^|\s){re.escape(flag)}[\s=]", out, re.M), f"{flag} not in the simulator's --help"
    bad = _sim_parse(sim, [*args, "--dtype", "half"])[1]
    assert "unknown flag: --dtype" in bad, "the simulator accepted a vLLM-only flag; the check above proves nothing"


# --- service, metrics, labels --------------------------------------------------------------------


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=ids)
def test_labels_and_service(values_file: Path) -> None:
    values = effective(values_file)
    docs = render(values_file)
    dep = only(docs, "Deployment")
    svc = only(docs, "Service")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    served = values["model"]["servedModelName"] or values["model"]["name"]
    expected_model = re.sub(r"[^A-Za-z0-9._-]", "-", served)[:63].strip("-_.")
    assert pod_labels["app.kubernetes.io/instance"] == "rel"
    assert pod_labels["app.kubernetes.io/name"] == "vllm"
    assert pod_labels["kubeinfer.io/model"] == expected_model
    assert pod_labels["kubeinfer.io/engine"] == values["engine"]
    # The metrics chain filters the release's series on this label (see _k8s_names.RELEASE_POD_LABEL).
    assert pod_labels["kubeinfer.io/release"] == "rel"
    for k, v in values["podLabels"].items():
        assert pod_labels[k] == v
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": "rel"}
    assert svc["spec"]["selector"] == selector
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]
    assert container(docs)["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for k, v in values["podAnnotations"].items():
        assert dep["spec"]["template"]["metadata"]["annotations"][k] == v


@pytest.mark.parametrize(
    ("served", "label"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", "meta-llama-Llama-3.1-8B-Instruct"),
        ("/models/x", "models-x"),
        ("a" * 70 + "/b", "a" * 63),
        ("Qwen/Qwen2.5:7b_", "Qwen-Qwen2.5-7b"),
    ],
)
def test_model_label_is_a_valid_label_value(served: str, label: str) -> None:
    pod = only(render(VALUES_FILES[0], f"model.servedModelName={served}"), "Deployment")["spec"]["template"]["metadata"]
    assert pod["labels"]["kubeinfer.io/model"] == label


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=ids)
def test_metrics_annotations_and_monitors(values_file: Path) -> None:
    metrics = effective(values_file)["metrics"]
    docs = render(values_file)
    annotations = only(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/path": "/metrics", "prometheus.io/port": "8000"}
    if metrics["podAnnotations"]:
        assert scrape.items() <= annotations.items()
    else:
        assert not scrape.keys() & annotations.keys()
    for kind, key in (("ServiceMonitor", "serviceMonitor"), ("PodMonitor", "podMonitor")):
        found = [d for d in docs if d["kind"] == kind]
        if metrics[key]["enabled"]:
            assert len(found) == 1
            mon = found[0]
            assert mon["apiVersion"] == "monitoring.coreos.com/v1"
            assert mon["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": "rel"}
            # prometheus-operator copies pod labels into the series only when listed here; the adapter rule,
            # the verification and the KEDA query select on kubeinfer_io_release.
            assert mon["spec"]["podTargetLabels"] == ["kubeinfer.io/release", "kubeinfer.io/model"]
            pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
            assert pod_labels["kubeinfer.io/release"] == "rel" and pod_labels["kubeinfer.io/model"]
            for k, v in metrics[key]["labels"].items():
                assert mon["metadata"]["labels"][k] == v
        else:
            assert found == []


def test_api_key_from_secret() -> None:
    docs = render(VALUES_DIR / "apikey-servicemonitor.yaml")
    c = container(docs)
    assert env_of(c)["VLLM_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "vllm-api-key", "key": "key"}}
    assert not any(a.startswith("--api-key") for a in c["args"]), "the key must not land in argv"
    hook = next(d for d in docs if d["kind"] == "Pod")
    assert env_of(hook["spec"]["containers"][0])["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "vllm-api-key"


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=ids)
def test_helm_test_pod(values_file: Path) -> None:
    docs = render(values_file)
    hooks = [d for d in docs if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert len(hooks) == 1
    pod = hooks[0]
    assert pod["kind"] == "Pod" and pod["spec"]["restartPolicy"] == "Never"
    script = " ".join(pod["spec"]["containers"][0]["command"])
    assert "http://rel-vllm:8000" in script and "/health" in script and "/v1/models" in script
    # The ReplicaSet would adopt a pod carrying the selector labels.
    selector = only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert not selector.items() <= pod["metadata"]["labels"].items()


def test_fullname_override_and_release_name() -> None:
    docs = render(VALUES_FILES[0], "fullnameOverride=llama-8b")
    assert only(docs, "Deployment")["metadata"]["name"] == "llama-8b"
    assert only(docs, "Service")["metadata"]["name"] == "llama-8b"


# --- hardening -----------------------------------------------------------------------------------

HARDENED_CONTAINER = {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
                      "capabilities": {"drop": ["ALL"]}}
SIM_USER = 65532  # llm-d-inference-sim v0.10.2: distroless/static:nonroot, USER 65532:65532


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return only(docs, "Deployment")["spec"]["template"]["spec"]


def hook_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (pod,) = [d for d in docs if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    return pod


def qos_class(pod: dict[str, Any]) -> str:
    """The pod's QoS class, as the kubelet computes it (pkg/apis/core/helper/qos: cpu and memory only)."""
    requests, limits, guaranteed = {}, {}, True
    for c in pod["containers"]:
        res = c.get("resources", {})
        for k in ("cpu", "memory"):
            if k in res.get("requests", {}):
                requests[k] = res["requests"][k]
            if k in res.get("limits", {}):
                limits[k] = res["limits"][k]
            if k not in res.get("limits", {}) or res.get("requests", {}).get(k, res["limits"][k]) != res["limits"][k]:
                guaranteed = False
    if not requests and not limits:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=ids)
def test_server_pod_is_hardened(values_file: Path) -> None:
    values = effective(values_file)
    docs = render(values_file)
    pod = pod_spec(docs)
    c = container(docs)
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for key, value in HARDENED_CONTAINER.items():
        if key not in values["securityContext"]:
            assert c["securityContext"][key] == value, key
    for key, value in values["podSecurityContext"].items():
        assert pod["securityContext"][key] == value
    if values["engine"] == "sim":
        assert {"runAsNonRoot": True, "runAsUser": SIM_USER, "runAsGroup": SIM_USER, "fsGroup": SIM_USER}.items() \
            <= pod["securityContext"].items()
    elif not values["podSecurityContext"]:
        # vllm/vllm-openai v0.11.0 has no USER and no passwd entry but root's: it runs as root, confined.
        assert not {"runAsNonRoot", "runAsUser"} & pod["securityContext"].keys()


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=ids)
def test_every_writable_path_is_a_volume(values_file: Path) -> None:
    """A read-only root filesystem: HF_HOME, /tmp and (vllm) HOME are emptyDirs or the model cache."""
    values = effective(values_file)
    docs = render(values_file)
    c = container(docs)
    env = env_of(c)
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert set(mounts.values()) <= volumes.keys()
    assert mounts[env["HF_HOME"]["value"]] == "model-cache"
    assert volumes[mounts["/tmp"]]["emptyDir"] == {"sizeLimit": values["scratch"]["sizeLimit"]}
    if values["engine"] == "vllm":
        assert env["HOME"]["value"] == "/home/vllm"
        assert volumes[mounts["/home/vllm"]]["emptyDir"] == {"sizeLimit": values["scratch"]["sizeLimit"]}
    else:
        assert "HOME" not in env and "/home/vllm" not in mounts


def test_vllm_as_non_root_gets_a_user_name() -> None:
    """Another UID has no passwd entry in the vLLM image; torch's getpass.getuser() reads USER before it asks passwd."""
    assert "USER" not in env_of(container(render(VALUES_DIR / "single-gpu.yaml")))
    for sets in (("podSecurityContext.runAsUser=2000",), ("securityContext.runAsUser=2000",)):
        assert env_of(container(render(VALUES_DIR / "single-gpu.yaml", *sets)))["USER"] == {"name": "USER", "value": "vllm"}
    assert "USER" not in env_of(container(render(VALUES_DIR / "sim.yaml")))
    # A container-level UID 0 wins over a pod-level non-root UID.
    both = render(VALUES_DIR / "single-gpu.yaml", "podSecurityContext.runAsUser=2000", "securityContext.runAsUser=0")
    assert "USER" not in env_of(container(both))


def test_security_context_keys_replace_the_defaults(tmp_path: Path) -> None:
    """Each given key replaces the default's, false and 0 included (a deep merge would drop them)."""
    seccomp = {"type": "Localhost", "localhostProfile": "vllm.json"}
    over = {"podSecurityContext": {"runAsNonRoot": False, "runAsUser": 0, "seccompProfile": seccomp},
            "securityContext": {"readOnlyRootFilesystem": False, "capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]}}}
    docs = render(VALUES_DIR / "sim.yaml", extra_values=over, tmp=tmp_path)
    pod, c = pod_spec(docs), container(docs)
    assert pod["securityContext"] == {"runAsNonRoot": False, "runAsUser": 0, "runAsGroup": SIM_USER, "fsGroup": SIM_USER,
                                      "fsGroupChangePolicy": "OnRootMismatch",
                                      "seccompProfile": {"type": "Localhost", "localhostProfile": "vllm.json"}}
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": False,
                                    "capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]}}


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=ids)
def test_helm_test_pod_is_hardened(values_file: Path) -> None:
    pod = hook_pod(render(values_file))
    spec = pod["spec"]
    (c,) = spec["containers"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": SIM_USER, "runAsGroup": SIM_USER,
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    assert c["securityContext"] == HARDENED_CONTAINER
    assert c["imagePullPolicy"] == effective(values_file)["image"]["pullPolicy"]
    assert qos_class(spec) == "Burstable"
    assert {"cpu", "memory"} <= c["resources"]["requests"].keys() and {"cpu", "memory"} <= c["resources"]["limits"].keys()
    # The only checkov suppressions in the chart, scoped to this pod (README "checkov").
    skips = {v.split("=", 1)[0] for k, v in pod["metadata"]["annotations"].items() if k.startswith("checkov.io/skip")}
    assert skips == {"CKV_K8S_8", "CKV_K8S_9"}


# --- resources -----------------------------------------------------------------------------------


def test_qos_class_helper_can_tell_best_effort() -> None:
    assert qos_class({"containers": [{"resources": {"requests": {"nvidia.com/gpu": "1"}}}]}) == "BestEffort"
    assert qos_class({"containers": [{"resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}}]}) == "Burstable"
    assert qos_class({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}) == "Guaranteed"


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=ids)
def test_cpu_and_memory_always_requested_and_limited(values_file: Path) -> None:
    values = effective(values_file)
    docs = render(values_file)
    res = container(docs)["resources"]
    for side in ("requests", "limits"):
        for key in ("cpu", "memory"):
            assert re.fullmatch(r"[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?", res[side].get(key, "")), (side, key, res[side])
    for side, other in (("requests", "limits"), ("limits", "requests")):
        for key in ("cpu", "memory"):
            given = values["resources"][side].get(key) or values["resources"][other].get(key)
            if given is not None:
                assert res[side][key] == str(given)
    assert qos_class(pod_spec(docs)) != "BestEffort"


@pytest.mark.parametrize(("engine", "requests", "limits"), [
    ("vllm", {"cpu": "4", "memory": "32Gi"}, {"cpu": "4", "memory": "32Gi"}),  # the seed's 7B floor, Guaranteed
    ("sim", {"cpu": "100m", "memory": "128Mi"}, {"cpu": "1", "memory": "512Mi"}),
])
def test_default_resources_per_engine(engine: str, requests: dict[str, str], limits: dict[str, str]) -> None:
    docs = render(VALUES_DIR / "single-gpu.yaml", f"engine={engine}", "gpusPerReplica=2")
    res = container(docs)["resources"]
    assert res["requests"] == {**requests, "nvidia.com/gpu": "2"}
    assert res["limits"] == {**limits, "nvidia.com/gpu": "2"}
    assert qos_class(pod_spec(docs)) == ("Guaranteed" if engine == "vllm" else "Burstable")


@pytest.mark.parametrize(("sets", "requests", "limits"), [
    (("resources.requests.cpu=8",), {"cpu": "8", "memory": "32Gi"}, {"cpu": "8", "memory": "32Gi"}),
    (("resources.limits.memory=64Gi",), {"cpu": "4", "memory": "64Gi"}, {"cpu": "4", "memory": "64Gi"}),
    (("resources.requests.cpu=2", "resources.limits.cpu=6", "resources.requests.ephemeral-storage=20Gi"),
     {"cpu": "2", "memory": "32Gi", "ephemeral-storage": "20Gi"}, {"cpu": "6", "memory": "32Gi"}),
])
def test_one_sided_resources_are_mirrored(sets: tuple[str, ...], requests: dict[str, str], limits: dict[str, str]) -> None:
    res = container(render(VALUES_DIR / "single-gpu.yaml", *sets))["resources"]
    assert res["requests"] == {**requests, "nvidia.com/gpu": "1"}
    assert res["limits"] == {**limits, "nvidia.com/gpu": "1"}


def test_collection_sizing_reaches_the_pod(tmp_path: Path) -> None:
    """vllm_release's build_values sizes cpu and memory from the weights; the chart renders them as given."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    from ansible_collections.kubeinfer.llm.plugins.module_utils._vllm_values import build_values
    from ansible_collections.kubeinfer.llm.plugins.modules.vllm_release import ARGUMENT_SPEC

    given = {"name": "big", "namespace": "llm", "model": "meta-llama/Llama-3.1-70B-Instruct", "gpus_per_replica": 4, "engine": "vllm"}
    values = build_values(ArgumentSpecValidator(ARGUMENT_SPEC).validate(given).validated_parameters, 900)
    res = container(render(extra_values=values, tmp=tmp_path))["resources"]
    assert res["requests"] == {"cpu": "13", "memory": "320Gi", "nvidia.com/gpu": "4"}
    assert res["limits"] == res["requests"]


# --- PodDisruptionBudget and NetworkPolicy ---------------------------------------------------------


@pytest.mark.parametrize("replicas", [0, 1, 2, 3, 8])
def test_pdb_only_above_one_replica(replicas: int) -> None:
    docs = render(VALUES_FILES[0], f"replicaCount={replicas}")
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    if replicas <= 1:
        assert pdbs == []
        return
    (pdb,) = pdbs
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"] == {"maxUnavailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow",
                           "selector": {"matchLabels": only(docs, "Deployment")["spec"]["selector"]["matchLabels"]}}
    kubernetes_validate.validate(pdb, VALIDATE_VERSION, strict=True)


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=ids)
def test_pdb_follows_the_values_files(values_file: Path) -> None:
    docs = render(values_file)
    assert any(d["kind"] == "PodDisruptionBudget" for d in docs) == (effective(values_file)["replicaCount"] > 1)


def _ingress_peers(policy: dict[str, Any]) -> list[dict[str, Any]]:
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    return rule["from"]


def test_network_policy_off_by_default() -> None:
    assert not [d for d in render(VALUES_FILES[0]) if d["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=ids)
def test_network_policy(values_file: Path) -> None:
    values = effective(values_file)
    docs = render(values_file)
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    if not values["networkPolicy"]["enabled"]:
        assert policies == {}
        return
    server, tester = policies["rel-vllm"], policies["rel-vllm-test"]
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    test_labels = hook_pod(docs)["metadata"]["labels"]
    assert server["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert server["spec"]["policyTypes"] == ["Ingress"]
    peers = _ingress_peers(server)
    np = values["networkPolicy"]
    expected: list[dict[str, Any]] = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "vllm-test",
                                                                       "app.kubernetes.io/instance": "rel"}}}]
    if np["allowedNamespaces"]:
        expected.append({"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": np["allowedNamespaces"]}]}})
    expected.append({"namespaceSelector": np["prometheus"]["namespaceSelector"], "podSelector": np["prometheus"]["podSelector"]})
    assert peers == expected
    assert peers[0]["podSelector"]["matchLabels"].items() <= test_labels.items(), "the helm test pod must be admitted"
    # The test pod itself takes no traffic.
    assert tester["spec"] == {"podSelector": {"matchLabels": peers[0]["podSelector"]["matchLabels"]}, "policyTypes": ["Ingress"]}
    for policy in (server, tester):
        kubernetes_validate.validate(policy, VALIDATE_VERSION, strict=True)


def test_network_policy_defaults_admit_only_prometheus_and_the_test_pod() -> None:
    docs = render(VALUES_FILES[0], "networkPolicy.enabled=true")
    peers = _ingress_peers(next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "rel-vllm"))
    assert peers[1:] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                          "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    # Not even the release's own namespace is admitted unless it is listed.
    assert not any("namespaceSelector" in p and "podSelector" not in p for p in peers)


def test_model_cache_cannot_shadow_the_scratch_mounts() -> None:
    for path in ("/tmp", "/home/vllm", "/dev/shm", "/tmp/"):
        res = template_result(VALUES_FILES[0], f"modelCache.mountPath={path}")
        assert res.returncode != 0 and "modelCache.mountPath cannot be" in res.stderr, path
    assert template_result(VALUES_FILES[0], "modelCache.mountPath=/tmp/hf").returncode == 0


def _deployment(*sets: str, kube_version: str = KUBE_VERSION) -> dict[str, Any]:
    argv = [HELM, "template", "t", str(CHART), "--kube-version", kube_version, "--set", "model.name=m", *[x for s in sets for x in ("--set", s)]]
    docs = yaml.safe_load_all(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    return next(d for d in docs if d and d["kind"] == "Deployment")


def test_the_pod_drains_with_a_prestop_sleep_shorter_than_its_grace_period() -> None:
    spec = _deployment()["spec"]["template"]["spec"]
    assert spec["containers"][0]["lifecycle"] == {"preStop": {"sleep": {"seconds": 15}}} and spec["terminationGracePeriodSeconds"] == 60
    assert "lifecycle" not in _deployment("preStopSleepSeconds=0")["spec"]["template"]["spec"]["containers"][0]
    assert "lifecycle" not in _deployment(kube_version="1.29.4")["spec"]["template"]["spec"]["containers"][0], "no sleep action before 1.30"
    bad = subprocess.run([HELM, "template", "t", str(CHART), "--kube-version", KUBE_VERSION, "--set", "model.name=m",
                          "--set", "preStopSleepSeconds=60"], capture_output=True, text=True, check=False)
    assert bad.returncode != 0 and "preStopSleepSeconds (60) must be less than terminationGracePeriodSeconds (60)" in bad.stderr


def test_a_canary_is_a_second_deployment_behind_the_same_service() -> None:
    argv = [HELM, "template", "t", str(CHART), "--kube-version", KUBE_VERSION, "--set", "model.name=m", "--set", "engine=sim",
            "--set", "replicaCount=3", "--set", "canary.enabled=true", "--set", "canary.values.sim.timeToFirstToken=2s"]
    docs = [d for d in yaml.safe_load_all(subprocess.run(argv, capture_output=True, text=True, check=True).stdout) if d]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert sorted(deployments) == ["t-vllm", "t-vllm-canary"]
    stable, canary = deployments["t-vllm"], deployments["t-vllm-canary"]
    service = next(d for d in docs if d["kind"] == "Service")
    pod_labels = canary["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in service["spec"]["selector"].items()), "the Service selects the canary pods"
    assert pod_labels["kubeinfer.io/track"] == "canary" and canary["spec"]["selector"]["matchLabels"]["kubeinfer.io/track"] == "canary"
    assert "kubeinfer.io/track" not in stable["spec"]["selector"]["matchLabels"]
    assert canary["spec"]["replicas"] == 1 and stable["spec"]["replicas"] == 3
    args = canary["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--time-to-first-token") + 1] == "2s"
    assert "2s" not in stable["spec"]["template"]["spec"]["containers"][0]["args"]


# --- model prefetch (modelCache.prefetch) -----------------------------------------------------------

PREFETCH = VALUES_DIR / "prefetch-pvc.yaml"


def prefetch_job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    jobs = [d for d in docs if d["kind"] == "Job"]
    assert len(jobs) == 1, f"expected one Job, got {len(jobs)}"
    return jobs[0]


def test_prefetch_job_is_a_pre_install_and_pre_upgrade_hook_that_outlives_its_run() -> None:
    job = prefetch_job(render(PREFETCH))
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    # Not hook-succeeded: the finished Job stays readable (its Complete condition, its completionTime).
    assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert annotations["kubeinfer.io/model-revision"] == "0e9e39f249a16976918f6564b8830bc894c89659"
    assert job["spec"]["activeDeadlineSeconds"] == 1800 and job["spec"]["backoffLimit"] == 2
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_prefetch_downloads_the_pinned_revision_into_the_server_cache_layout_with_the_token_from_the_secret() -> None:
    docs = render(PREFETCH)
    pod = prefetch_job(docs)["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "vllm/vllm-openai:v0.11.0"
    assert c["command"] == ["hf", "download", "meta-llama/Llama-3.1-8B-Instruct", "--revision",
                            "0e9e39f249a16976918f6564b8830bc894c89659", "--include", "*.json", "--include", "*.safetensors"]
    assert "--local-dir" not in c["command"], "the Hub cache layout under HF_HOME is what the offline server reads"
    env = env_of(c)
    server = container(docs)
    assert env["HF_HOME"]["value"] == env_of(server)["HF_HOME"]["value"]
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token", "optional": False}}}
    assert "HF_HUB_OFFLINE" not in env
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["model-cache"] == env["HF_HOME"]["value"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-cache"]["persistentVolumeClaim"] == {"claimName": "models"}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert "nvidia.com/gpu" not in json.dumps(c["resources"])
    assert pod["nodeSelector"] == {"node-pool": "gpu"}


def test_prefetch_pods_start_offline_and_roll_on_a_new_revision() -> None:
    docs = render(PREFETCH)
    dep = only(docs, "Deployment")
    assert env_of(container(docs))["HF_HUB_OFFLINE"]["value"] == "1"
    assert dep["spec"]["template"]["metadata"]["annotations"]["kubeinfer.io/model-revision"] == "0e9e39f249a16976918f6564b8830bc894c89659"
    # The engine sim renders no --revision, so the annotation is what rolls its pods onto a new revision.
    sim = render(PREFETCH, "engine=sim", "model.revision=v2")
    assert only(sim, "Deployment")["spec"]["template"]["metadata"]["annotations"]["kubeinfer.io/model-revision"] == "v2"


def test_prefetch_pod_is_never_taken_by_the_deployment_or_the_service() -> None:
    docs = render(PREFETCH)
    labels = prefetch_job(docs)["spec"]["template"]["metadata"]["labels"]
    selector = only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert not all(labels.get(k) == v for k, v in selector.items())
    assert not all(labels.get(k) == v for k, v in only(docs, "Service")["spec"]["selector"].items())
    assert labels["app.kubernetes.io/component"] == "model-prefetch"


def test_prefetch_off_renders_no_job() -> None:
    assert not [d for d in render(VALUES_FILES[0]) if d["kind"] == "Job"]


@pytest.mark.parametrize("sets, fragment", [
    (("modelCache.type=emptyDir",), "modelCache.prefetch.enabled needs modelCache.type pvc"),
    (("modelCache.pvc.existingClaim=",), "modelCache.prefetch.enabled needs modelCache.pvc.existingClaim"),
    (("model.revision=",), "modelCache.prefetch.enabled needs model.revision"),
])
def test_prefetch_refuses_what_it_cannot_honour(sets: tuple[str, ...], fragment: str) -> None:
    res = template_result(PREFETCH, *sets)
    assert res.returncode != 0
    assert fragment in res.stderr


def test_prefetch_pod_gets_a_deny_all_ingress_policy_with_network_policy_on() -> None:
    docs = render(PREFETCH, "networkPolicy.enabled=true")
    labels = prefetch_job(docs)["spec"]["template"]["metadata"]["labels"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    covering = [p for p in policies if all(labels.get(k) == v for k, v in p["spec"]["podSelector"]["matchLabels"].items())]
    assert len(covering) == 1 and covering[0]["metadata"]["name"] == "rel-vllm-prefetch"
    assert covering[0]["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in covering[0]["spec"]
    assert len([d for d in render(VALUES_FILES[0], "networkPolicy.enabled=true") if d["kind"] == "NetworkPolicy"]) == 2


def test_an_httproute_canary_has_its_own_service_and_network_policy_and_no_share_of_the_release_service() -> None:
    argv = [HELM, "template", "t", str(CHART), "--kube-version", KUBE_VERSION, "--set", "model.name=m", "--set", "engine=sim",
            "--set", "networkPolicy.enabled=true", "--set", "canary.enabled=true", "--set", "canary.split=httproute"]
    docs = [d for d in yaml.safe_load_all(subprocess.run(argv, capture_output=True, text=True, check=True).stdout) if d]
    services = {d["metadata"]["name"]: d["spec"]["selector"] for d in docs if d["kind"] == "Service"}
    policies = {d["metadata"]["name"]: d["spec"]["podSelector"]["matchLabels"] for d in docs if d["kind"] == "NetworkPolicy"}
    canary_pod = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "t-vllm-canary")["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict) -> bool:
        return all(canary_pod.get(k) == v for k, v in selector.items())

    assert not selects(services["t-vllm"]) and selects(services["t-vllm-canary"])
    assert selects(policies["t-vllm-canary"]) and not selects(policies["t-vllm"])
