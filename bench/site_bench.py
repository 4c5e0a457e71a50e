#!/usr/bin/env python
"""Benchmark: the whole pipeline, playbooks/site.yml against the same seven steps written with kubernetes.core
(bench/playbooks/kubernetes_core_site.yml), each side on fresh local clusters of its own, in the same run.

For each of BENCH_RUNS rounds, with both sides' clusters up side by side and their runs alternating, so that
runs next to each other in time share the machine's load (a fresh cluster is cluster.sh down and up, metrics.sh
up, gpu_sim.py start, demo-env.sh up: what make demo has before site.yml starts; 12-38 s here):
  first     the first run, on a fresh cluster;
  re-run    BENCH_RERUNS converged re-runs on the same cluster;
  check     ansible-playbook --check on another fresh cluster; it must make no write (dry runs apart) and leave
            the GPU nodes bare and the pipeline's namespaces absent.
Both sides get the demo's inputs (tools/localcluster/demo-vars.yml and the file demo-env.sh up writes). The
rounds alternate which side goes first. Every run is checked on the cluster (nodes, ClusterPolicy, allocatable
GPUs, the Secret, the rollout, the adapter rule, the custom metrics API, the HPA's current value) and in its
output (a completion JSON with choices and usage); a failed check makes the exit code 1.

Measured per run: wall time of ansible-playbook, tasks (ok and skipped, from the JSON callback), and the API
requests of the run from the API server's audit log (tools/localcluster/kwok/audit-policy.yaml: one event per
request), without those of the cluster's own components and host processes, by verb, writes apart; dry-run
writes and port-forward connections are counted apart from the writes.

Environment (all optional):
  BENCH_RUNS           fresh clusters per side; medians are printed              (3)
  BENCH_RERUNS         converged re-runs per fresh cluster                       (1)
  BENCH_SIDES          which sides, comma-separated: site, kcore                 (site,kcore)
  BENCH_CLUSTER_PREFIX cluster names are <prefix>-site and <prefix>-kcore         (bsite)
  BENCH_KEEP_CLUSTER   1 = leave the last clusters running                       (0)
  BENCH_JSON           write the results as JSON to this file                    (unset)
See bench/README.md.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

from benchlib import (
    REPO,
    TOOLS,
    WRITE_VERBS,
    audit_events,
    collections_tree,
    fmt_counts,
    median_run,
    run_playbook,
    snapshot_tools,
    task_durations,
    task_results,
    tasks_seconds,
    tool,
)
from benchlib import log as _log

sys.path.insert(0, str(TOOLS))
from hostproc import cache_dir, pinned  # tools/localcluster/hostproc.py: versions.env, the cache

HERE = REPO / "bench"
CACHE = cache_dir()
PYTHON = CACHE / "venv" / "bin" / "python"
DEMO_VARS = TOOLS / "demo-vars.yml"
SIDES = {
    "site": ("kubeinfer.llm", REPO / "playbooks" / "site.yml"),
    "kcore": ("kubernetes.core", HERE / "playbooks" / "kubernetes_core_site.yml"),
}
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
RERUNS = int(os.environ.get("BENCH_RERUNS", "1"))
WANTED = [s for s in os.environ.get("BENCH_SIDES", "site,kcore").split(",") if s]
PREFIX = os.environ.get("BENCH_CLUSTER_PREFIX", "bsite")
KEEP = os.environ.get("BENCH_KEEP_CLUSTER", "0") == "1"

NAMESPACE = "vllm"  # the demo's (playbooks/vars and the defaults of both sides)
RELEASE = "vllm"
OPERATOR_NAMESPACE = "gpu-operator"
METRIC = "vllm_queue_depth"
GPU_SELECTOR = "node-role.kubernetes.io/gpu-worker"  # cluster.sh's GPU pool label
TAINT = ("nvidia.com/gpu", "present", "NoSchedule")
LABEL = ("kubeinfer.io/accelerator", "nvidia")
CHECK_UA = "kubeinfer-bench-check"
# Requests of the cluster's own components and of the harness's host processes (metrics.py, gpu_sim.py and
# podnet.py call the API with urllib; Prometheus, prometheus-operator and the adapter with client-go); never a run's.
COMPONENT_UA = ("kwok", "kube-controller-manager", "kube-scheduler", "kube-apiserver", "Python-urllib", "Prometheus/",
                "PrometheusOperator", "prometheus-operator", "prometheus-adapter", "adapter/", "cm-adapter", CHECK_UA)
# Subresources that open a stream (a port-forward, logs follow, exec): no object is written.
CONNECT = ("portforward", "exec", "attach", "proxy")
MODES = ("first", "rerun", "check")
MODE_LABEL = {"first": "first run (fresh cluster)", "rerun": "re-run (converged)", "check": "--check (fresh cluster)"}


def log(msg: str) -> None:
    _log("site-bench", msg)


# -- clusters -----------------------------------------------------------------------------------------------------------

class Cluster:
    """One local cluster made fresh for a side: cluster.sh, the metrics chain, the GPU stack simulation, demo-env.sh."""

    def __init__(self, name: str, tools: Path) -> None:
        self.name = name
        self.tools = tools
        self.kubeconfig = ""
        self.env_file = ""
        self.costs: list[dict[str, float]] = []

    def sh(self, *args: str, timeout: float = 600) -> str:
        return tool(*args, cluster=self.name, timeout=timeout, tools=self.tools)

    def fresh(self) -> None:
        """Delete the cluster if it exists and bring everything make demo has up before site.yml, timing each part."""
        cost: dict[str, float] = {}
        t = time.monotonic()
        self.down()
        cost["down"] = time.monotonic() - t
        for key, args in (("cluster.sh up", ("cluster.sh", "up")), ("metrics.sh up", ("metrics.sh", "up")),
                          ("gpu_sim.py start", ("gpu_sim.py", "start")), ("demo-env.sh up", ("demo-env.sh", "up"))):
            t = time.monotonic()
            out = self.sh(*args)
            cost[key] = time.monotonic() - t
            if key == "demo-env.sh up":
                self.env_file = out.splitlines()[-1]
        self.kubeconfig = self.sh("cluster.sh", "kubeconfig").splitlines()[-1]
        cost["total"] = sum(v for k, v in cost.items() if k != "down")
        self.costs.append(cost)
        log(f"cluster {self.name} fresh in {cost['total']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in cost.items() if k != 'total')})")

    def down(self) -> None:
        self.sh("cluster.sh", "down", timeout=300)

    @property
    def audit_log(self) -> Path:
        return Path(self.kubeconfig).parent / "logs" / "audit.log"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- counting -----------------------------------------------------------------------------------------------------------

def count_requests(path: Path, offset: int, start: float, end: float) -> dict[str, Any]:
    """The run's requests by verb: writes, dry-run writes and stream connections apart; the write targets listed."""
    by_verb: Counter[str] = Counter()
    by_agent: Counter[str] = Counter()
    ignored: Counter[str] = Counter()
    writes: list[str] = []
    errors: list[str] = []
    for ev in audit_events(path, offset, start, end):
        agent = str(ev.get("userAgent", ""))
        if agent.startswith(COMPONENT_UA):
            ignored[agent.split("/")[0]] += 1
            continue
        ref = ev.get("objectRef") or {}
        verb = ev["verb"] if ref else "discovery"
        sub = ref.get("subresource")
        if sub in CONNECT:
            verb = f"connect {sub}"
        elif verb in WRITE_VERBS:
            if "dryRun=" in str(ev.get("requestURI", "")):
                verb = f"dry-run {verb}"
            else:
                target = f"{ref.get('resource')}{'/' + sub if sub else ''} {ref.get('namespace', '')}/{ref.get('name', '')}"
                writes.append(f"{ev['verb']} {target.replace(' /', ' ')}")
        code = int((ev.get("responseStatus") or {}).get("code", 200))
        if code >= 400:
            verb = f"{verb} ({code})"
            errors.append(f"{verb} {ev.get('requestURI', '')[:160]} ({agent.split(' ')[0] or 'no user agent'})")
        by_verb[verb] += 1
        by_agent[agent.split(" ")[0].split("/")[0] or "(no user agent: websocket port-forward)"] += 1
    total = sum(by_verb.values())
    n_writes = sum(n for v, n in by_verb.items() if v.split(" ")[0] in WRITE_VERBS)
    dry = sum(n for v, n in by_verb.items() if v.startswith("dry-run"))
    return {"by_verb": dict(by_verb), "total": total, "writes": n_writes, "dry_run": dry,
            "reads": total - n_writes - dry - sum(n for v, n in by_verb.items() if v.startswith("connect")),
            "write_targets": writes, "failed_requests": errors, "user_agents": dict(by_agent), "ignored_components": dict(ignored)}


# -- checks on the cluster ----------------------------------------------------------------------------------------------

class ClusterState:
    """Reads of what the pipeline must leave on the cluster, with a client of its own (user agent CHECK_UA, not counted)."""

    def __init__(self, kubeconfig: str) -> None:
        from kubernetes import client, config  # the venv's kubernetes client

        self.api = config.new_client_from_config(config_file=kubeconfig)
        self.api.user_agent = CHECK_UA
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.autoscaling = client.AutoscalingV2Api(self.api)
        self.exc = client.ApiException

    def raw(self, path: str) -> Any:
        data, _, _ = self.api.call_api(path, "GET", auth_settings=["BearerToken"], response_type="object", _return_http_data_only=False)
        return data

    def gpu_nodes(self) -> list[Any]:
        return list(self.core.list_node(label_selector=GPU_SELECTOR).items)

    def converged(self) -> dict[str, str]:
        """Each property of a converged pipeline: '' when it holds, else what is wrong."""
        out: dict[str, str] = {}

        def check(name: str, fn: Callable[[], str]) -> None:
            try:
                out[name] = fn()
            except self.exc as e:
                out[name] = f"API error {e.status}: {e.reason}"
            except (KeyError, IndexError, TypeError, ValueError) as e:
                out[name] = f"{type(e).__name__}: {e}"

        def nodes() -> str:
            bad = []
            for node in self.gpu_nodes():
                labels = node.metadata.labels or {}
                taints = {(t.key, t.value or "", t.effect) for t in node.spec.taints or []}
                if labels.get(LABEL[0]) != LABEL[1] or TAINT not in taints:
                    bad.append(node.metadata.name)
            return f"not labelled and tainted: {', '.join(bad)}" if bad else ""

        def policy() -> str:
            obj = self.custom.get_cluster_custom_object("nvidia.com", "v1", "clusterpolicies", "cluster-policy")
            state = (obj.get("status") or {}).get("state")
            return "" if state == "ready" else f"ClusterPolicy state {state!r}"

        def allocatable() -> str:
            bad = [n.metadata.name for n in self.gpu_nodes() if int((n.status.allocatable or {}).get("nvidia.com/gpu", "0")) < 1]
            return f"no allocatable nvidia.com/gpu on {', '.join(bad)}" if bad else ""

        def releases() -> str:
            missing = []
            for ns, name in ((OPERATOR_NAMESPACE, "gpu-operator"), (NAMESPACE, RELEASE)):
                found = self.core.list_namespaced_secret(ns, label_selector=f"owner=helm,name={name},status=deployed").items
                if not found:
                    missing.append(f"{ns}/{name}")
            return f"no deployed Helm release {', '.join(missing)}" if missing else ""

        def secret() -> str:
            data = self.core.read_namespaced_secret("hf-token", NAMESPACE).data or {}
            return "" if data.get("HF_TOKEN") else "Secret vllm/hf-token has no HF_TOKEN"

        def rollout() -> str:
            dep = self.apps.read_namespaced_deployment(RELEASE, NAMESPACE)
            if (dep.status.available_replicas or 0) < 1 or (dep.status.updated_replicas or 0) != (dep.spec.replicas or 0):
                return f"Deployment {NAMESPACE}/{RELEASE}: {dep.status.available_replicas} available of {dep.spec.replicas}"
            gpu = {n.metadata.name for n in self.gpu_nodes()}
            pods = self.core.list_namespaced_pod(NAMESPACE, label_selector=f"app.kubernetes.io/instance={RELEASE}").items
            off = [p.metadata.name for p in pods if p.spec.node_name not in gpu]
            return f"pods off the GPU nodes: {', '.join(off)}" if off or not pods else ""

        def adapter_rule() -> str:
            config = self.core.read_namespaced_config_map("prometheus-adapter", "monitoring").data.get("config.yaml", "")
            return "" if METRIC in config else f"no rule for {METRIC} in monitoring/prometheus-adapter"

        def custom_metric() -> str:
            doc = self.raw(f"/apis/custom.metrics.k8s.io/v1beta1/namespaces/{NAMESPACE}/pods/*/{METRIC}")
            return "" if (doc or {}).get("items") else f"custom.metrics.k8s.io serves no {METRIC} in {NAMESPACE}"

        def hpa() -> str:
            obj = self.autoscaling.read_namespaced_horizontal_pod_autoscaler(RELEASE, NAMESPACE)
            names = [m.pods.metric.name for m in obj.spec.metrics or [] if m.pods]
            current = [m for m in obj.status.current_metrics or [] if m.pods and m.pods.current.average_value is not None]
            if METRIC not in names:
                return f"HPA {NAMESPACE}/{RELEASE} does not read {METRIC} ({names})"
            return "" if current else f"HPA {NAMESPACE}/{RELEASE} has no current value"

        for name, fn in (("GPU nodes labelled and tainted", nodes), ("ClusterPolicy ready", policy),
                         ("allocatable nvidia.com/gpu on every GPU node", allocatable), ("Helm releases deployed", releases),
                         ("token Secret", secret), ("vLLM rolled out on GPU nodes", rollout), ("adapter rule", adapter_rule),
                         ("custom metrics API serves the release", custom_metric), ("HPA reads a current value", hpa)):
            check(name, fn)
        return out

    def untouched(self) -> dict[str, str]:
        """What a check-mode run must not have made on a fresh cluster."""
        out: dict[str, str] = {}
        marked = [n.metadata.name for n in self.gpu_nodes()
                  if (n.metadata.labels or {}).get(LABEL[0]) or any(t.key == TAINT[0] for t in n.spec.taints or [])]
        out["GPU nodes still bare"] = f"labelled or tainted: {', '.join(marked)}" if marked else ""
        names = {ns.metadata.name for ns in self.core.list_namespace().items}
        made = sorted({NAMESPACE, OPERATOR_NAMESPACE} & names)
        out["no namespace of the pipeline"] = f"exists: {', '.join(made)}" if made else ""
        return out


def completion_in(results: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The first completion answer (a JSON object with non-empty choices and a usage object) in the task results."""
    stack: list[Any] = list(results)
    while stack:
        item = stack.pop(0)
        if isinstance(item, dict):
            if isinstance(item.get("choices"), list) and item["choices"] and isinstance(item.get("usage"), dict):
                return item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


# -- one run ------------------------------------------------------------------------------------------------------------

def run(side: str, mode: str, cluster: Cluster, collections: Path) -> dict[str, Any]:
    """One ansible-playbook of ``side`` on ``cluster``, measured and checked."""
    label, playbook = SIDES[side]
    extra: dict[str, Any] = {"validate_local_port": free_port()} if side == "kcore" else {}
    args = ("--check",) if mode == "check" else ()
    env_extra = {"HELM_BINARY": os.environ["HELM_BINARY"]}
    offset = cluster.audit_log.stat().st_size
    load_before = os.getloadavg()[0]
    start = time.time()
    wall, rc, output, stderr = run_playbook(playbook, cluster.kubeconfig, collections, extra, PYTHON, args,
                                            vars_files=(DEMO_VARS, Path(cluster.env_file)), env_extra=env_extra, timeout=1800)
    end = time.time()
    audit = count_requests(cluster.audit_log, offset, start, end)
    results = task_results(output)
    stats = output["stats"]["localhost"]
    durations = task_durations(output)
    out: dict[str, Any] = {
        "side": side, "mode": mode, "cluster": cluster.name, "rc": rc, "wall_s": round(wall, 2), "tasks_s": round(tasks_seconds(output), 2),
        "ok": stats.get("ok", 0), "changed": stats.get("changed", 0), "skipped": stats.get("skipped", 0),
        "failures": stats.get("failures", 0), "audit": audit, "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "slowest_tasks": [(name, round(s, 2)) for name, s in sorted(durations, key=lambda d: -d[1])[:12]],
    }
    checks: dict[str, str] = {"playbook succeeded": "" if rc == 0 else f"rc={rc}: {failure(output, stderr)}"}
    state = ClusterState(cluster.kubeconfig)
    if mode == "check":
        checks["no write (dry runs apart)"] = "" if audit["writes"] == 0 else f"writes: {', '.join(audit['write_targets'][:10])}"
        checks.update(state.untouched())
    else:
        checks.update(state.converged())
        checks["completion JSON with choices and usage in the output"] = "" if completion_in(results) else "none found"
        if mode == "rerun":
            checks["re-run changed nothing"] = "" if out["changed"] == 0 else f"changed={out['changed']}: {changed_tasks(output)}"
    out["checks"] = checks
    bad = {k: v for k, v in checks.items() if v}
    log(f"{label} {mode}: {wall:.1f} s, tasks ok={out['ok']} changed={out['changed']} skipped={out['skipped']}; requests "
        f"{audit['total']} ({fmt_counts(audit['by_verb'])}); " + ("all checks passed" if not bad else f"FAILED: {bad}"))
    return out


def failure(output: dict[str, Any], stderr: str) -> str:
    """The failed task's name and message (the module's msg, else its stderr or the loop item's msg)."""
    for play in output["plays"]:
        for task in play["tasks"]:
            res = task["hosts"].get("localhost") or {}
            if not res.get("failed"):
                continue
            msg = res.get("msg") or next((i.get("msg") for i in res.get("results", []) if i.get("failed")), "")
            if not msg:
                msg = res.get("stderr") or f"(no message; attempts {res.get('attempts')})"
            return f"task {task['task']['name']!r}: {str(msg)[:800]}"
    return stderr.strip()[-500:]


def changed_tasks(output: dict[str, Any]) -> str:
    names = [task["task"]["name"] for play in output["plays"] for task in play["tasks"]
             if task["hosts"].get("localhost", {}).get("changed")]
    return ", ".join(names)


# -- the report ---------------------------------------------------------------------------------------------------------

def med(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r["audit"][key] if key in r["audit"] else r[key] for r in runs))


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def paired(results: dict[str, dict[str, list[dict[str, Any]]]], mode: str) -> float:
    """The median of the wall-time ratios of runs made next to each other (the n-th run of each side)."""
    pairs = zip(results["site"][mode], results["kcore"][mode])
    return float(statistics.median(a["wall_s"] / b["wall_s"] for a, b in pairs))


def report(results: dict[str, dict[str, list[dict[str, Any]]]], costs: dict[str, list[dict[str, float]]]) -> tuple[str, dict[str, bool]]:
    lines = [f"site benchmark, {time.strftime('%Y-%m-%d')}: playbooks/site.yml vs bench/playbooks/kubernetes_core_site.yml; "
             f"{RUNS} fresh cluster(s) per side, {RERUNS} re-run(s) each; {os.cpu_count()} CPUs; medians",
             f"{'run':<28}{'side':<17}{'wall s':>8}{'tasks ok':>9}{'skipped':>8}{'requests':>9}{'writes':>7}{'dry-run':>8}"
             "  by verb (median run, API server audit log)"]
    for mode in MODES:
        for side in WANTED:
            runs = results[side][mode]
            if not runs:
                continue
            m = median_run(runs)
            lines.append(f"{MODE_LABEL[mode]:<28}{SIDES[side][0]:<17}{med(runs, 'wall_s'):>8.2f}{med(runs, 'ok'):>9g}{med(runs, 'skipped'):>8g}"
                         f"{med(runs, 'total'):>9g}{med(runs, 'writes'):>7g}{med(runs, 'dry_run'):>8g}  {fmt_counts(m['audit']['by_verb'])}")
    goals: dict[str, bool] = {}
    if set(WANTED) == set(SIDES):
        lines.append("")
        lines.append("kubeinfer.llm / kubernetes.core (medians):")
        for mode in MODES:
            a, b = results["site"][mode], results["kcore"][mode]
            if a and b:
                lines.append(f"  {MODE_LABEL[mode]:<28} wall {ratio(med(a, 'wall_s'), med(b, 'wall_s'))}, tasks {ratio(med(a, 'ok'), med(b, 'ok'))}, "
                             f"requests {ratio(med(a, 'total'), med(b, 'total'))}, writes {med(a, 'writes'):g} vs {med(b, 'writes'):g}")
        lines.append("  paired (each run of kubeinfer.llm over the kubernetes.core run next to it in time), median: "
                     + ", ".join(f"{MODE_LABEL[mode]} {paired(results, mode):.2f}x" for mode in MODES if results["site"][mode]))
        first_a, first_b = results["site"]["first"], results["kcore"]["first"]
        re_a, re_b = results["site"]["rerun"], results["kcore"]["rerun"]
        if re_a:
            goals["converged re-run makes 0 writes, the smoke pod included (every re-run)"] = all(r["audit"]["writes"] == 0 for r in re_a)
            goals["converged re-run wall <= 15 s (median)"] = med(re_a, "wall_s") <= 15
        if re_a and re_b:
            goals["converged re-run wall <= 0.5x kubernetes.core's (median)"] = med(re_a, "wall_s") <= 0.5 * med(re_b, "wall_s")
        if first_a and first_b:
            goals["first-run wall no worse than kubernetes.core's (median)"] = med(first_a, "wall_s") <= med(first_b, "wall_s")
    lines.append("")
    for side in WANTED:
        for mode in MODES:
            runs = results[side][mode]
            if runs:
                walls = ", ".join(f"{r['wall_s']:.2f}" for r in runs)
                loads = ", ".join(f"{r['load'][0]:.1f}-{r['load'][1]:.1f}" for r in runs)
                lines.append(f"{SIDES[side][0]} {mode}, per run: wall s {walls}; load average before-after {loads}")
        reruns = results[side]["rerun"]
        if reruns:
            m = median_run(reruns)
            lines.append(f"{SIDES[side][0]} re-run (median): Ansible start-up and between-task overhead "
                         f"{m['wall_s'] - m['tasks_s']:.1f} s, inside tasks {m['tasks_s']:.1f} s; writes: "
                         f"{', '.join(m['audit']['write_targets']) or 'none'}")
            lines.append("  slowest tasks: " + "; ".join(f"{name} {s:.1f} s" for name, s in m["slowest_tasks"][:8]))
    for side, cs in costs.items():
        if cs:
            keys = [k for k in cs[0] if k != "down"]
            lines.append(f"fresh cluster for {SIDES[side][0]} (median of {len(cs)}): "
                         + ", ".join(f"{k} {statistics.median(c[k] for c in cs):.0f} s" for k in keys))
    others: Counter[str] = Counter()
    agents: Counter[str] = Counter()
    for side in WANTED:
        for mode in MODES:
            for r in results[side][mode]:
                others.update(r["audit"]["ignored_components"])
                agents.update(r["audit"]["user_agents"])
    lines.append(f"counted user agents (all runs): {fmt_counts(dict(agents))}")
    lines.append(f"not counted, the cluster's components and host processes (all runs): {fmt_counts(dict(others))}")
    return "\n".join(lines), goals


def main() -> int:
    if RUNS < 1 or RERUNS < 1 or not WANTED or any(s not in SIDES for s in WANTED):
        raise SystemExit(f"BENCH_RUNS and BENCH_RERUNS must be at least 1, BENCH_SIDES a subset of {','.join(SIDES)}")
    # What the Makefile exports for every target, so that the script also runs on its own.
    bins = [CACHE / f"kubernetes-{pinned('KUBERNETES_VERSION')}", CACHE / f"helm-{pinned('HELM_VERSION')}", CACHE / f"kwok-{pinned('KWOK_VERSION')}"]
    os.environ["PATH"] = os.pathsep.join([str(PYTHON.parent), *map(str, bins), os.environ.get("PATH", "")])
    os.environ.setdefault("HELM_BINARY", str(bins[1] / "helm"))
    os.environ["KUBEINFER_CACHE"] = str(CACHE)
    # The scripts run from a snapshot (benchlib.snapshot_tools): tell upstream-chart.sh where the published charts lie
    # next to the checkout, which it would otherwise look up relative to itself.
    upstream = REPO.parent / "shared" / "upstream" / "charts"
    for var, name in (("GPU_OPERATOR_CHART", f"gpu-operator-{pinned('GPU_OPERATOR_CHART_VERSION')}.tgz"),
                      ("PROMETHEUS_ADAPTER_CHART", f"prometheus-adapter-{pinned('PROMETHEUS_ADAPTER_CHART_VERSION')}.tgz")):
        if (upstream / name).is_file():
            os.environ.setdefault(var, str(upstream / name))
    snapshot = snapshot_tools()
    collections = collections_tree()
    clusters = {side: Cluster(f"{PREFIX}-{side}", snapshot) for side in WANTED}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {side: {mode: [] for mode in MODES} for side in WANTED}
    log(f"sides {', '.join(WANTED)}; {RUNS} fresh cluster(s) each, {RERUNS} re-run(s); collections from {collections}; "
        f"load {os.getloadavg()[0]:.1f}")
    try:
        for i in range(RUNS):
            # Both sides' clusters are up together and their runs alternate, one of each side after the other, so
            # that each pair of runs shares the machine's load (it is shared with other jobs); the side that goes
            # first alternates from round to round.
            order = WANTED if i % 2 == 0 else list(reversed(WANTED))
            log(f"round {i + 1}/{RUNS}: fresh clusters {', '.join(clusters[s].name for s in order)}")
            for side in order:
                clusters[side].fresh()
            for side in order:
                results[side]["first"].append(run(side, "first", clusters[side], collections))
            for _ in range(RERUNS):
                for side in order:
                    results[side]["rerun"].append(run(side, "rerun", clusters[side], collections))
            for side in order:
                clusters[side].fresh()
            for side in order:
                results[side]["check"].append(run(side, "check", clusters[side], collections))
            if not KEEP or i < RUNS - 1:
                for side in order:
                    clusters[side].down()
    finally:
        if not KEEP:
            for cluster in clusters.values():
                try:
                    cluster.down()
                except RuntimeError as e:
                    log(f"bringing {cluster.name} down: {e}")
        shutil.rmtree(snapshot.parent, ignore_errors=True)
        shutil.rmtree(collections, ignore_errors=True)

    text, goals = report(results, {side: clusters[side].costs for side in WANTED})
    print()
    print(text)
    failed = []
    for side in WANTED:
        for mode in MODES:
            for n, r in enumerate(results[side][mode], 1):
                failed += [f"{SIDES[side][0]} {mode} #{n}: {name}: {why}" for name, why in r["checks"].items() if why]
    checks_ok = not failed
    print(f"  [{'ok' if checks_ok else 'FAIL'}] every run passed its checks on the cluster and in its output")
    for line in failed:
        print(f"      {line}")
    for what, ok in goals.items():
        print(f"  [{'met' if ok else 'MISSED'}] goal: {what}")
    if os.environ.get("BENCH_JSON"):
        Path(os.environ["BENCH_JSON"]).write_text(json.dumps({"runs": RUNS, "reruns": RERUNS, "results": results, "goals": goals,
                                                              "fresh_cluster_costs": {s: clusters[s].costs for s in WANTED}}, indent=2) + "\n")
    return 0 if checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
