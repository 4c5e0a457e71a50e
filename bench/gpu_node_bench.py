#!/usr/bin/env python
"""Benchmark: label and taint N simulated GPU nodes with kubeinfer.llm.gpu_node
versus the kubernetes.core baseline (one k8s_taint + one k8s patch per node).

Runs on its OWN local cluster (KUBEINFER_CLUSTER=bench), with an API server
audit log enabled for this cluster only, and counts the API requests of each
run from that log (one event per request, by verb and user agent, inside the
run's time window). Both runs start from the same reset state. See
bench/README.md for how to run it and for the measured numbers.

Environment (all optional):
  BENCH_NODES          simulated GPU nodes                     (1000)
  BENCH_BASELINE_NODES nodes the kubernetes.core loop runs on  (= BENCH_NODES);
                       fewer means a sample, extrapolated linearly
  BENCH_KEEP_CLUSTER   1 = leave the bench cluster running       (0)
  BENCH_JSON           write the results as JSON to this file    (unset)
  BENCH_COLLECTIONS_PATH  ANSIBLE_COLLECTIONS_PATH for the playbooks
                       (~/.cache/kubeinfer/collections: the repo itself)
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "bench"
CACHE = Path(os.environ.get("KUBEINFER_CACHE", Path.home() / ".cache" / "kubeinfer"))
VENV_BIN = CACHE / "venv" / "bin"
PYTHON = VENV_BIN / "python"
COLLECTIONS = Path(os.environ.get("BENCH_COLLECTIONS_PATH", CACHE / "collections"))
CLUSTER_SH = REPO / "tools" / "localcluster" / "cluster.sh"
CLUSTER = "bench"

NODES = int(os.environ.get("BENCH_NODES", "1000"))
BASELINE_NODES = int(os.environ.get("BENCH_BASELINE_NODES", str(NODES)))
KEEP = os.environ.get("BENCH_KEEP_CLUSTER", "0") == "1"

LABEL_SELECTOR = "nvidia.com/gpu.present=true"
LABELS = {"kubeinfer.io/accelerator": "nvidia"}
TAINTS = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
RESET_UA = "kubeinfer-bench-reset"
# Requests made by the cluster's own components; never counted for a run.
COMPONENT_UA = ("kwok", "kube-controller-manager", "kube-scheduler", "kube-apiserver", "kubectl", RESET_UA)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cluster_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "KUBEINFER_CLUSTER": CLUSTER,
        "GPU_NODES": str(NODES),
        "CPU_NODES": "0",
        # kwokctl reads this variable (KWOK_ prefix + the kubeAuditPolicy option):
        # it turns the audit log on for this cluster only, cluster.sh stays as is.
        "KWOK_KUBE_AUDIT_POLICY": str(HERE / "audit-policy.yaml"),
    })
    return env


_SNAPSHOT: list[Path] = []


def cluster(cmd: str) -> str:
    # bash reads a script as it runs: use a copy of tools/localcluster taken at
    # start, so that somebody editing cluster.sh meanwhile cannot break the run.
    if not _SNAPSHOT:
        copy = Path(tempfile.mkdtemp(prefix="kubeinfer-bench-")) / "localcluster"
        shutil.copytree(CLUSTER_SH.parent, copy)
        _SNAPSHOT.append(copy)
    script = _SNAPSHOT[0] / CLUSTER_SH.name
    out = subprocess.run([str(script), cmd], env=cluster_env(), check=True, stdout=subprocess.PIPE, text=True)
    return out.stdout.strip()


def cluster_dir() -> Path:
    workdir = Path(os.environ.get("KWOK_WORKDIR", CACHE / "kwok"))
    return workdir / "clusters" / CLUSTER


def audit_log() -> Path:
    return cluster_dir() / "logs" / "audit.log"


def up() -> str:
    log(f"bringing up cluster {CLUSTER!r} with {NODES} GPU nodes and an audit log")
    cluster("up")
    if not audit_log().exists():
        # A bench cluster left over from a run without the audit policy: start afresh.
        log("the running bench cluster has no audit log; re-creating it")
        cluster("down")
        cluster("up")
    if not audit_log().exists():
        raise SystemExit(f"no audit log at {audit_log()}; kwokctl ignored KWOK_KUBE_AUDIT_POLICY")
    return cluster("kubeconfig").splitlines()[-1]


def api(kubeconfig: str) -> Any:
    from kubernetes import client, config  # the venv's kubernetes client

    api_client = config.new_client_from_config(config_file=kubeconfig)
    api_client.user_agent = RESET_UA
    return client.CoreV1Api(api_client)


def node_state(core: Any) -> dict[str, tuple[str | None, list[tuple[str, str, str]]]]:
    """Per simulated node: the benchmark label's value and its taints."""
    key = next(iter(LABELS))
    out = {}
    for node in core.list_node(label_selector=LABEL_SELECTOR).items:
        taints = [(t.key, t.value or "", t.effect) for t in (node.spec.taints or [])]
        out[node.metadata.name] = ((node.metadata.labels or {}).get(key), taints)
    return out


def reset(core: Any, timeout: float = 120.0) -> None:
    """Remove the benchmark label and every taint from every node, until none is left.

    The nodes are Ready (cluster.sh waited for it); on a fresh cluster the node
    controller still holds stale node.kubernetes.io/not-ready taints that it
    removes at its own pace, so they are removed here as well: both runs start
    from nodes without any taint.
    """
    patched = 0
    deadline = time.monotonic() + timeout
    while True:
        state = node_state(core)
        if len(state) != NODES:
            raise SystemExit(f"expected {NODES} GPU nodes, found {len(state)}")
        dirty = [name for name, (label, taints) in state.items() if label is not None or taints]
        if not dirty:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"reset failed: {len(dirty)} nodes still labelled or tainted, e.g. {dirty[0]}: {state[dirty[0]]}")
        for name in dirty:
            core.patch_node(name, {"metadata": {"labels": {k: None for k in LABELS}}, "spec": {"taints": None}})
        patched += len(dirty)
        time.sleep(2)
    log(f"reset: {patched} node patches; all {NODES} nodes unlabelled and untainted")


def check_done(core: Any, names: list[str]) -> int:
    """How many of ``names`` carry exactly the benchmark label and taint."""
    want_label = next(iter(LABELS.values()))
    want_taints = [(t["key"], t["value"], t["effect"]) for t in TAINTS]
    state = node_state(core)
    return sum(1 for n in names if state[n][0] == want_label and state[n][1] == want_taints)


def playbook(name: str, kubeconfig: str, extra: dict[str, Any]) -> tuple[float, int, dict[str, Any]]:
    """Run bench/playbooks/<name>.yml; return wall seconds, exit code and the json callback's output."""
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        # Pipelining spares each loop item a temp-file copy of the module: the
        # cheapest per-item setup Ansible offers, so it favours the baseline.
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_FORKS": "5",
        "K8S_AUTH_KUBECONFIG": kubeconfig,
        "PATH": f"{VENV_BIN}:{env.get('PATH', '')}",
    })
    vars_file = HERE / f".vars-{name}.json"
    vars_file.write_text(json.dumps({"ansible_python_interpreter": str(PYTHON), **extra}))
    cmd = [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-e", f"@{vars_file}",
           str(HERE / "playbooks" / f"{name}.yml")]
    try:
        start = time.monotonic()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.monotonic() - start
    finally:
        vars_file.unlink(missing_ok=True)
    try:
        output = json.loads(proc.stdout)
    except ValueError:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"playbook {name} failed (rc={proc.returncode}) without JSON output") from None
    return wall, proc.returncode, output


def task_results(output: dict[str, Any]) -> list[dict[str, Any]]:
    return [task["hosts"]["localhost"] for play in output["plays"] for task in play["tasks"]]


def tasks_seconds(output: dict[str, Any]) -> float:
    """Time spent inside the tasks (the callback's per-task durations), without Ansible's start-up."""
    total = 0.0
    for play in output["plays"]:
        for task in play["tasks"]:
            span = task["task"]["duration"]
            total += _ts(span["end"]) - _ts(span["start"])
    return total


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def audit_window(offset: int, start: float, end: float) -> dict[str, Any]:
    """Count the audit events written after ``offset`` for requests received in [start, end]."""
    time.sleep(1.0)  # let the log backend flush the last events
    by_verb: Counter[str] = Counter()
    by_agent: Counter[str] = Counter()
    ignored: Counter[str] = Counter()
    with audit_log().open("rb") as fh:
        fh.seek(offset)
        for line in fh:
            ev = json.loads(line)
            if ev.get("stage") != "ResponseComplete":
                continue
            received = _ts(ev["requestReceivedTimestamp"])
            if not start <= received <= end:
                continue
            agent = ev.get("userAgent", "")
            ref = ev.get("objectRef")
            verb = ev["verb"] if ref else "discovery"
            if agent.startswith(COMPONENT_UA):
                ignored[agent.split("/")[0]] += 1
                continue
            if ref and ref.get("resource") == "nodes" and ref.get("subresource"):
                verb = f"{verb} nodes/{ref['subresource']}"
            code = (ev.get("responseStatus") or {}).get("code", 200)
            if code >= 400:
                verb = f"{verb} ({code})"
            by_verb[verb] += 1
            by_agent[agent.split(" ")[0]] += 1
    return {"by_verb": dict(by_verb), "total": sum(by_verb.values()), "user_agents": dict(by_agent),
            "ignored_components": dict(ignored)}


def measured(name: str, kubeconfig: str, extra: dict[str, Any]) -> dict[str, Any]:
    offset = audit_log().stat().st_size
    start = time.time()
    wall, rc, output = playbook(name, kubeconfig, extra)
    end = time.time()
    audit = audit_window(offset, start, end)
    results = task_results(output)
    if rc != 0:
        failed = next((r for r in results if r.get("failed")), {})
        msg = failed.get("msg") or next((i.get("msg") for i in failed.get("results", []) if i.get("failed")), "")
        log(f"playbook {name} FAILED after {wall:.1f} s: {msg}")
        log(f"requests up to the failure: {fmt_counts(audit['by_verb'])}; module counters: "
            f"{fmt_counts(failed.get('api_requests') or {})}")
        raise SystemExit(f"playbook {name} failed (rc={rc})")
    return {"wall_s": round(wall, 2), "tasks_s": round(tasks_seconds(output), 2), "audit": audit, "results": results}


def fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"


def main() -> int:
    if not 0 < BASELINE_NODES <= NODES:
        raise SystemExit("BENCH_BASELINE_NODES must be between 1 and BENCH_NODES")
    report: dict[str, Any] = {"nodes": NODES, "baseline_nodes": BASELINE_NODES, "cpus": os.cpu_count(),
                              "collections_path": str(COLLECTIONS)}
    log(f"collections from {COLLECTIONS}")
    try:
        kubeconfig = up()
        core = api(kubeconfig)
        names = sorted(node_state(core))
        common = {"bench_label_selector": LABEL_SELECTOR, "bench_labels": LABELS, "bench_taints": TAINTS}

        # 1. kubeinfer.llm.gpu_node from the reset state, then a second run (must be a no-op).
        reset(core)
        log(f"run 1: kubeinfer.llm.gpu_node on {NODES} nodes")
        first = measured("gpu_node", kubeconfig, common)
        done = check_done(core, names)
        mod = first["results"][0]
        first.update(done=done, module_api_requests=mod["api_requests"], changed_nodes=len(mod["changed_nodes"]))
        del first["results"]
        log(f"run 1: {first['wall_s']} s, audit {fmt_counts(first['audit']['by_verb'])}, {done}/{NODES} nodes done")

        log("run 2: kubeinfer.llm.gpu_node again (nothing to change)")
        second = measured("gpu_node", kubeconfig, common)
        mod = second["results"][0]
        second.update(changed=mod["changed"], module_api_requests=mod["api_requests"],
                      changed_nodes=len(mod["changed_nodes"]))
        del second["results"]
        log(f"run 2: {second['wall_s']} s, audit {fmt_counts(second['audit']['by_verb'])}")

        # 2. The kubernetes.core loop from the same reset state.
        reset(core)
        sample = names[:BASELINE_NODES]
        log(f"run 3: kubernetes.core k8s_taint + k8s loop on {len(sample)} nodes")
        base = measured("kubernetes_core", kubeconfig, {**common, "bench_nodes": sample})
        base.update(done=check_done(core, sample),
                    changed_items=sum(1 for t in base["results"] for r in t.get("results", []) if r.get("changed")))
        del base["results"]
        log(f"run 3: {base['wall_s']} s, audit {fmt_counts(base['audit']['by_verb'])}, {base['done']}/{len(sample)} done")
        reset(core)
    finally:
        if not KEEP:
            log(f"tearing down cluster {CLUSTER!r}")
            cluster("down")
        if _SNAPSHOT:
            shutil.rmtree(_SNAPSHOT[0].parent, ignore_errors=True)

    scale = NODES / BASELINE_NODES
    # Ansible's start-up is paid once; the loop's time grows with the nodes.
    base_wall_full = base["wall_s"] + base["tasks_s"] * (scale - 1)
    base_total_full = base["audit"]["total"] * scale
    report.update(gpu_node=first, gpu_node_rerun=second, kubernetes_core=base,
                  kubernetes_core_extrapolated={"wall_s": round(base_wall_full, 1),
                                                "requests": round(base_total_full)} if scale != 1 else None,
                  speedup=round(base_wall_full / first["wall_s"], 1))

    patches = first["audit"]["by_verb"].get("patch", 0)
    lists = first["audit"]["by_verb"].get("list", 0)
    conflicts = first["audit"]["by_verb"].get("patch (409)", 0)
    rerun_writes = sum(v for k, v in second["audit"]["by_verb"].items() if not k.startswith(("list", "get", "discovery")))
    checks = {
        # a 409 (a heartbeat changed the node between list and patch) costs one get and one more patch
        "gpu_node: 1 list + 1 successful patch per changed node (+1 get per 409 retry)":
            lists == 1 and patches == first["changed_nodes"] == NODES
            and first["audit"]["by_verb"].get("get", 0) == conflicts,
        "gpu_node: every node labelled and tainted": first["done"] == NODES,
        "gpu_node re-run: 1 list, 0 patches, changed=false":
            second["audit"]["by_verb"].get("list", 0) == 1 and rerun_writes == 0 and not second["changed"],
        "kubernetes.core: every node labelled and tainted": base["done"] == BASELINE_NODES,
        "gpu_node >= 20x faster": report["speedup"] >= 20,
    }
    report["checks"] = checks

    w = 53
    print()
    print(f"gpu_node benchmark: {NODES} simulated GPU nodes (kwok), {os.cpu_count()} CPUs, same run")
    print(f"{'run':<{w}} {'wall s':>9} {'requests':>9}  by verb (API server audit log)")
    print(f"{'kubeinfer.llm.gpu_node (' + str(NODES) + ' nodes)':<{w}} {first['wall_s']:>9.2f} "
          f"{first['audit']['total']:>9}  {fmt_counts(first['audit']['by_verb'])}")
    print(f"{'kubeinfer.llm.gpu_node re-run (no change)':<{w}} {second['wall_s']:>9.2f} "
          f"{second['audit']['total']:>9}  {fmt_counts(second['audit']['by_verb'])}")
    label = f"kubernetes.core loop ({BASELINE_NODES} nodes, measured)"
    print(f"{label:<{w}} {base['wall_s']:>9.2f} {base['audit']['total']:>9}  {fmt_counts(base['audit']['by_verb'])}")
    if scale != 1:
        label = f"kubernetes.core loop ({NODES} nodes, EXTRAPOLATED x{scale:g})"
        print(f"{label:<{w}} {base_wall_full:>9.1f} {round(base_total_full):>9}  "
              f"(start-up {base['wall_s'] - base['tasks_s']:.1f} s once + loop {base['tasks_s']:.1f} s x{scale:g})")
    print(f"module counters: run 1 {fmt_counts(first['module_api_requests'])}; "
          f"re-run {fmt_counts(second['module_api_requests'])}")
    print(f"speed-up (kubernetes.core / gpu_node wall time): {report['speedup']}x")
    for what, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if os.environ.get("BENCH_JSON"):
        Path(os.environ["BENCH_JSON"]).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
