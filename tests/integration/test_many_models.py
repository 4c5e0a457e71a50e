"""Many models from one inventory (issue 14, item 2): playbooks/site.yml with three entries in ``vllm_models``.

The three models (a: 1 x 1 GPU, b: 1 x 1 GPU, c: 1 x 2 GPUs) share one namespace, one adapter rule
(``vllm_queue_depth``) and the one token Secret; each has its own llm-d-inference-sim on 127.0.0.1
(``--max-num-seqs 1``, a 2 s time to first token, as bench/autoscale_bench.py), named in its pod annotation
``kubeinfer.io/sim-metrics-port``; the pod label ``kubeinfer.io/sim-forward`` makes the harness point each
pod's port-forward at its own simulator, so each completion check reaches the model it names.

In order, on the local cluster of KUBEINFER_CLUSTER, with the GPU stack that site.yml itself brings up:

1. site.yml serves the three: three releases with their team and cost-centre labels, one rule listing the
   three, three HPAs reading a value, a completion from each model, and a summary row per model.
2. A re-run changes nothing and sends no write (audit log: no request of the collection or of helm that
   is not a read or a dry run).
3. A list that does not fit (c grown to 2 x 8 GPUs: alone it fits the 2 x 8 GPU nodes, with a and b it
   does not) fails before any write, naming every model; the cluster keeps the three as they were.
4. Real load on a's simulator (6 requests in flight, 5 waiting, target 2) raises a's HPA; b's and c's HPAs
   stay at 1 replica, reading a value, for two HPA sync periods after a scaled.
5. c taken out of the list: site.yml removes c's release, HPA and rule share, and writes nothing to a or b
   (their Deployments, HPAs and release Secrets are not among the writes, so a's replicas stay its HPA's).
6. verify.yml with the two left passes and writes nothing.
7. teardown.yml with the two left removes them, their rule shares and the namespace.

The fixture's teardown.yml (all three listed) removes whatever a failure left. Measured on 2 cores shared with
other agents (load 7-9): 396 s, of which 133 s is the first site.yml on bare GPU nodes (2026-12-02); each step
prints its time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import BIN, REPO, TOOLS, Audit, helm_binary, load_bench
from kubernetes import client

NAMESPACE = "it-models"
INVENTORY = "it-models"
AGENTS = ("kubeinfer.llm", "Helm")
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
BUDGET = 15  # startup_budget_seconds of every model
WINDOW = 20  # scale-down window (inference_hpa refuses less than the budget)
MODELS = {"a": "Qwen/Qwen2.5-0.5B-Instruct", "b": "Qwen/Qwen2.5-1.5B-Instruct", "c": "Qwen/Qwen2.5-3B-Instruct"}


bench = load_bench()


def writes(audit: Audit, since: int) -> list[str]:
    """Writes of the collection and of helm since ``since``: no dry run, no port-forward stream."""
    out = []
    for event in audit.events(since, ""):
        ref = event.get("objectRef") or {}
        if not str(event.get("userAgent", "")).startswith(AGENTS) or event.get("verb") not in WRITE_VERBS:
            continue
        if ref.get("subresource") == "portforward" or "dryRun=All" in str(event.get("requestURI", "")):
            continue
        out.append(f"{event['verb']} {ref.get('resource')}{'/' + ref['subresource'] if ref.get('subresource') else ''} "
                   f"{ref.get('namespace', '')}/{ref.get('name', '')}")
    return out


def recap(stdout: str) -> dict[str, int]:
    line = next(x for x in stdout.splitlines()[::-1] if x.startswith("localhost") and "ok=" in x)
    return {k: int(v) for k, v in (item.split("=") for item in line.split(":", 1)[1].split())}


class Inventory:
    """site.yml / teardown.yml with the local cluster's variables and a vllm_models list written to a vars file."""

    def __init__(self, kubeconfig: str, collections_path: str, workdir: Path, base_vars: list[str], ports: dict[str, int]) -> None:
        self.kubeconfig, self.collections_path, self.workdir, self.base_vars, self.ports = (
            kubeconfig, collections_path, workdir, base_vars, ports)

    def entry(self, name: str, **over: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": name, "model": MODELS[name], "replicas": 1, "gpus_per_replica": 1,
                                 "team": f"team-{name}", "cost_centre": f"cc-{name}",
                                 "values": {"podAnnotations": {"kubeinfer.io/sim-metrics-port": str(self.ports[name])}},
                                 "pod_labels": {"kubeinfer.io/sim-forward": "true"}}
        entry.update(over)
        return entry

    def run(self, playbook: str, models: list[dict[str, Any]], *args: str) -> subprocess.CompletedProcess[str]:
        inventory = self.workdir / f"models-{time.monotonic_ns()}.yml"
        inventory.write_text(yaml.safe_dump({"vllm_models": models}))
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=self.collections_path, K8S_AUTH_KUBECONFIG=self.kubeconfig,
                   HELM_BINARY=helm_binary(), ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false",
                   ANSIBLE_LOCAL_TEMP=str(self.workdir / "ansible-tmp"), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}"]
        for extra in [*self.base_vars, f"@{inventory}"]:
            argv += ["-e", extra]
        argv += [*args, str(REPO / "playbooks" / playbook)]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def site(kubeconfig: str, collections_path: str, core: client.CoreV1Api,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inventory]:
    cluster = os.environ.get("KUBEINFER_CLUSTER") or "kubeinfer"
    # The namespace-wide forward of demo-env.sh goes to a simulator of a model none of the three serves: a completion
    # check that reached it instead of its own pod's simulator would fail on the model name.
    demo_env = dict(os.environ, DEMO_NAMESPACE=NAMESPACE, DEMO_RELEASE="models", DEMO_MODEL="kubeinfer-it/unrouted-0.5B",
                    HELM_BINARY=helm_binary())
    generated = subprocess.run([str(TOOLS / "demo-env.sh"), "up"], env=demo_env, capture_output=True, text=True,
                               timeout=300, check=True).stdout.strip()
    releases = [bench.Release(name, MODELS[name], f"it-models-{name}") for name in MODELS]
    bench.start_sims(releases, cluster)
    ports = {rel.name: rel.port for rel in releases}
    workdir = tmp_path_factory.mktemp("many-models")
    overrides = workdir / "overrides.yml"
    overrides.write_text(yaml.safe_dump({
        "vllm_namespace": NAMESPACE, "vllm_inventory": INVENTORY, "vllm_startup_budget_seconds": BUDGET, "vllm_timeout": 120,
        "hf_token_value": "hf_kubeinfer_many_models_token_0000",
        "autoscaling_min_replicas": 1, "autoscaling_max_replicas": bench.MAX_REPLICAS,
        "autoscaling_target_queue_depth": bench.TARGET_QUEUE_DEPTH,
        "autoscaling_scale_down": {"stabilization_window_seconds": WINDOW},
        "metrics_adapter_metric_name": bench.SOURCE_METRIC,
        "validate_max_tokens": 2,
    }))
    inventory = Inventory(kubeconfig, collections_path, workdir, [f"@{TOOLS / 'demo-vars.yml'}", f"@{generated}", f"@{overrides}"],
                          ports)
    yield inventory
    if NAMESPACE in {n.metadata.name for n in core.list_namespace().items}:  # the test ended before its own teardown
        down = inventory.run("teardown.yml", [inventory.entry(n) for n in MODELS])
        print(f"\nteardown.yml: rc {down.returncode}")
    bench.stop_sims(releases, cluster)
    subprocess.run([str(TOOLS / "demo-env.sh"), "down"], env=demo_env, capture_output=True, timeout=120, check=False)


def hpa_state(autoscaling: client.AutoscalingV2Api) -> dict[str, tuple[int | None, int | None, bool]]:
    """HPA name -> (desiredReplicas, currentReplicas, reads a value)."""
    out = {}
    for hpa in autoscaling.list_namespaced_horizontal_pod_autoscaler(NAMESPACE).items:
        values = [m for m in hpa.status.current_metrics or [] if m.pods and m.pods.current.average_value is not None]
        out[hpa.metadata.name] = (hpa.status.desired_replicas, hpa.status.current_replicas, bool(values))
    return out


def adapter_releases(core: client.CoreV1Api) -> list[str]:
    """The releases of the vllm_queue_depth rule in the adapter ConfigMap the chain mounts."""
    for cm in core.list_config_map_for_all_namespaces(label_selector="").items:
        for text in (cm.data or {}).values():
            if "vllm_queue_depth" in text and "kubeinfer_io_release" in text:
                config = yaml.safe_load(text)
                for rule in config.get("rules") or []:
                    if (rule.get("name") or {}).get("as") == "vllm_queue_depth":
                        query = rule["seriesQuery"]
                        return sorted(query.split('kubeinfer_io_release=~"', 1)[1].split('"', 1)[0].split("|"))
    return []


def test_many_models_from_one_inventory(site: Inventory, audit: Audit, api: client.ApiClient, core: client.CoreV1Api) -> None:
    apps, autoscaling = client.AppsV1Api(api), client.AutoscalingV2Api(api)
    three = [site.entry("a"), site.entry("b"), site.entry("c", gpus_per_replica=2)]
    timings: dict[str, float] = {}

    def took(what: str, since: float, until: float | None = None) -> None:
        timings[what] = (time.monotonic() if until is None else until) - since
        print(f"\n[many-models] {what}: {timings[what]:.1f} s", flush=True)

    # 1. Bring up the three.
    start = time.monotonic()
    first = site.run("site.yml", three)
    took("site.yml, 3 models, fresh", start)
    assert first.returncode == 0, first.stdout[-8000:] + first.stderr[-2000:]
    deployments = {d.metadata.name: d for d in apps.list_namespaced_deployment(NAMESPACE).items}
    assert set(deployments) >= {"a", "b", "c"}
    for name in ("a", "b", "c"):
        labels = deployments[name].spec.template.metadata.labels
        assert labels["kubeinfer.io/inventory"] == INVENTORY and labels["kubeinfer.io/team"] == f"team-{name}"
        assert labels["kubeinfer.io/cost-centre"] == f"cc-{name}"
        assert (deployments[name].status.ready_replicas or 0) == 1
    assert deployments["c"].spec.template.spec.containers[0].resources.limits["nvidia.com/gpu"] == "2"
    assert adapter_releases(core) == ["a", "b", "c"], "one rule, a share for each model"
    hpas = hpa_state(autoscaling)
    assert set(hpas) == {"a", "b", "c"} and all(state[2] for state in hpas.values()), hpas
    for name in ("a", "b", "c"):
        row = next((x for x in first.stdout.splitlines() if f"Model {name} : {MODELS[name]}" in x), None)
        assert row is not None, f"no summary row for {name}: {first.stdout[-4000:]}"
        assert f"team team-{name} cost-centre cc-{name}" in row and " ms via port-forward" in row, row
    assert "4 requested by 3 model(s)" in first.stdout

    # 2. A re-run writes nothing.
    mark, start = audit.mark(), time.monotonic()
    again = site.run("site.yml", three)
    took("site.yml again", start)
    rerun_writes = writes(audit, mark)
    assert again.returncode == 0, again.stdout[-6000:]
    assert recap(again.stdout)["changed"] == 0, again.stdout[-6000:]
    assert rerun_writes == [], rerun_writes

    # 3. A list that does not fit is refused as a whole, before any write.
    versions = {n: d.metadata.resource_version for n, d in deployments.items()}
    mark, start = audit.mark(), time.monotonic()
    too_big = site.run("site.yml", [site.entry("a", replicas=2), site.entry("b"), site.entry("c", replicas=2, gpus_per_replica=8)])
    took("site.yml, list too big", start)
    refused_writes = writes(audit, mark)
    assert too_big.returncode != 0
    assert "fleet: not enough GPU capacity for the 3 releases together" in too_big.stdout, too_big.stdout[-5000:]
    assert f"{NAMESPACE}/c 2 x 8" in too_big.stdout and "19 GPUs" in too_big.stdout, too_big.stdout[-5000:]
    assert refused_writes == [], refused_writes
    assert {n: d.metadata.resource_version for n, d in
            ((d.metadata.name, d) for d in apps.list_namespaced_deployment(NAMESPACE).items)} == versions

    # 4. Load on a moves a's HPA only.
    load = bench.Load(site.ports["a"], MODELS["a"])
    load.start()
    start = time.monotonic()
    scaled_at = None
    others: list[dict[str, tuple[int | None, int | None, bool]]] = []
    try:
        while time.monotonic() - start < 120:
            state = hpa_state(autoscaling)
            others.append({k: v for k, v in state.items() if k != "a"})
            if scaled_at is None and (state["a"][0] or 1) > 1:
                scaled_at = time.monotonic()
            if scaled_at is not None and time.monotonic() - scaled_at >= 2 * bench.HPA_SYNC_PERIOD:
                break
            time.sleep(1)
    finally:
        load.stop()
    assert scaled_at is not None, f"a's HPA never scaled under load: {hpa_state(autoscaling)}"
    took("load -> a's HPA raised desiredReplicas", start, scaled_at)
    moved = [s for s in others if any(desired != 1 or current != 1 or not read for desired, current, read in s.values())]
    assert others and not moved, f"b's or c's HPA moved (or lost its value) with load on a only: {moved[:3]}"
    a_desired = hpa_state(autoscaling)["a"][0]
    load.join(30)

    # 5. c taken out of the list: c goes, and nothing of a or b is written.
    mark, start = audit.mark(), time.monotonic()
    two = site.run("site.yml", [site.entry("a"), site.entry("b")])
    took("site.yml without c", start)
    removal_writes = writes(audit, mark)
    assert two.returncode == 0, two.stdout[-8000:]
    left = {d.metadata.name for d in apps.list_namespaced_deployment(NAMESPACE).items}
    assert "c" not in left and {"a", "b"} <= left
    assert set(hpa_state(autoscaling)) == {"a", "b"}
    assert adapter_releases(core) == ["a", "b"]
    assert "Removed            : c (no longer in vllm_models)" in two.stdout
    helm_list = subprocess.run([helm_binary(), "list", "-n", NAMESPACE, "-q", "--kubeconfig", site.kubeconfig],
                               capture_output=True, text=True, check=True).stdout.split()
    assert "c" not in helm_list and {"a", "b"} <= set(helm_list)
    touching_a_or_b = [w for w in removal_writes if w.split(" ", 2)[2] in (f"{NAMESPACE}/a", f"{NAMESPACE}/b")
                       or ".a.v" in w or ".b.v" in w]
    assert touching_a_or_b == [], touching_a_or_b
    assert any(w.endswith(f"{NAMESPACE}/c") for w in removal_writes), removal_writes
    # a's replicas belong to its HPA now (the scale-up above, or the scale-down once the window after the load passed):
    # the run wrote no Deployment, Service or HPA of a or b (above), so whatever it is, the HPA set it.

    # 6. verify.yml follows the list: a and b check out, with a at the replicas its HPA set, and nothing is written.
    mark, start = audit.mark(), time.monotonic()
    verified = site.run("verify.yml", [site.entry("a"), site.entry("b")])
    took("verify.yml, 2 models", start)
    assert verified.returncode == 0, verified.stdout[-6000:]
    assert "every step reads back as converged" in verified.stdout
    assert writes(audit, mark) == []

    # 7. teardown.yml follows the list: a and b go, with their HPAs and rule shares, and the namespace.
    start = time.monotonic()
    down = site.run("teardown.yml", [site.entry("a"), site.entry("b")])
    took("teardown.yml, 2 models", start)
    assert down.returncode == 0, down.stdout[-6000:]
    assert adapter_releases(core) == []
    assert NAMESPACE not in {n.metadata.name for n in core.list_namespace().items if n.status.phase == "Active"}
    print("\n" + json.dumps({"timings_s": {k: round(v, 1) for k, v in timings.items()}, "writes_on_rerun": len(rerun_writes),
                             "writes_when_refused": len(refused_writes), "writes_removing_c": removal_writes,
                             "a_desired_under_load": a_desired}, indent=1))
