#!/usr/bin/env python
"""Benchmark: the autoscaling chain under real load, end to end, with two models in one namespace.

Two releases, A and B, of the vllm chart (engine sim) in one namespace, each backed by its own
llm-d-inference-sim on 127.0.0.1 (tools/localcluster/sim.sh), registered under the same custom
metric (``vllm_queue_depth``, one adapter rule listing both releases) and autoscaled by one HPA
each (min 1). The pods carry the annotation ``kubeinfer.io/sim-metrics-port``, so Prometheus
scrapes the release's simulator as each of its pods.

The load is REAL: the simulators run with ``--max-num-seqs 1`` and a time to first token of a few
seconds, and a pool of host threads keeps LOAD_CONCURRENCY requests in flight against A's
simulator, so ``vllm:num_requests_waiting`` stays at LOAD_CONCURRENCY - 1, above the target.
Stopping the threads lets the queue drain. B gets no request.

Measured per run (1 s polls of the simulator's /metrics, Prometheus' /api/v1/query, the HPAs and
the Deployments):
  load      threads started
  t_sim     the simulator's own queue above the target (the queue "rises")
  t0        Prometheus' value for A (average over A's live pods, as the HPA reads it) above the target
  t1        A's HPA status.desiredReplicas above its value before the load
  t2        A's Deployment availableReplicas >= that desiredReplicas (new pods Ready)
  stop      threads told to stop
  t3        Prometheus' value for A back at or under the target
  t4        A's HPA status.desiredReplicas decreases
and throughout: B's HPA desiredReplicas and currentReplicas stay 1, with a metric value known.

Limit for t1 - t_sim: scrape interval (15 s) + adapter query + HPA sync period (15 s) + 5 s.
The scale-down stabilization window counts from the HPA's last sync that read a high queue, which is
at most one sync period before t3; so the check is t4 - t3 >= window - sync period, together with
the HPA reporting AbleToScale=ScaleDownStabilized between t3 and t4 (a window of 0 never does).

Environment (all optional):
  BENCH_CLUSTER        local cluster name (KUBEINFER_CLUSTER for tools/localcluster)  (autoscale)
  BENCH_RUNS           load cycles on the same releases, per monitoring setup      (3)
  BENCH_SETUPS         what to measure, in order: the local monitoring setups (metrics.sh MONITORING)
                       and keda (the real KEDA on setup (a), tools/localcluster/keda.sh)
                       (operator,annotations,keda)
  BENCH_WINDOW         scale-down stabilization window, seconds                      (45)
  BENCH_BUDGET         startup_budget_seconds of the releases (window >= budget)     (20)
  BENCH_KEEP_CLUSTER   1 = leave the cluster, releases and simulators as they are    (0)
  BENCH_JSON           write the results as JSON to this file                        (unset)
Exit code 1 when a check fails. See bench/README.md.

The functions here are also used by tests/integration/test_autoscale_e2e.py.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "tools" / "localcluster"
sys.path.insert(0, str(TOOLS))
sys.path.insert(0, str(REPO / "bench"))  # benchlib, also when loaded by file location (tests/integration/test_autoscale_e2e.py)
from benchlib import tool  # noqa: E402  (shared with the other benchmarks)
from hostproc import cache_dir, pinned  # noqa: E402  (tools/localcluster/hostproc.py: versions.env, the cache)

CACHE = cache_dir()
VENV_BIN = CACHE / "venv" / "bin"

CUSTOM_METRIC = "vllm_queue_depth"
SOURCE_METRIC = "vllm:num_requests_waiting"
SCRAPE_INTERVAL = 15.0  # tools/localcluster/metrics.py SCRAPE_INTERVAL (both monitoring setups)
HPA_SYNC_PERIOD = 15.0  # kube-controller-manager --horizontal-pod-autoscaler-sync-period (cluster.sh)
REACTION_LIMIT = SCRAPE_INTERVAL + HPA_SYNC_PERIOD + 5.0  # the adapter query is part of the 5 s
POLL = 1.0

# The load: one request served at a time, TTFT seconds each; LOAD_CONCURRENCY in flight.
SIM_FLAGS = ["--max-num-seqs", "1", "--time-to-first-token", "2s", "--inter-token-latency", "0s"]
LOAD_CONCURRENCY = 6  # 5 waiting
TARGET_QUEUE_DEPTH = 2  # 5 / 2 = 2.5 x the target: one scale-up step from 1 to MAX_REPLICAS
MAX_REPLICAS = 3
MODELS = {"a": "Qwen/Qwen2.5-0.5B-Instruct", "b": "Qwen/Qwen2.5-1.5B-Instruct"}


def log(msg: str) -> None:
    print(f"[autoscale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the local cluster ------------------------------------------------------------------------------------------------

@dataclass
class Release:
    """One model: its release name, the simulator behind its pods and that simulator's port."""
    name: str
    model: str
    sim: str
    port: int = 0


def start_sims(releases: list[Release], cluster: str) -> None:
    for rel in releases:
        rel.port = int(tool("sim.sh", "start", rel.sim, "--model", rel.model, *SIM_FLAGS, cluster=cluster, timeout=120))
        log(f"simulator {rel.sim} for {rel.name} on 127.0.0.1:{rel.port}")


def stop_sims(releases: list[Release], cluster: str) -> None:
    for rel in releases:
        try:
            tool("sim.sh", "stop", rel.sim, cluster=cluster, timeout=60)
        except RuntimeError as e:
            log(f"stopping {rel.sim}: {e}")


def playbook(tasks: list[dict[str, Any]], kubeconfig: str, timeout: float = 600) -> list[dict[str, Any]]:
    """Run the tasks on localhost with the collection of this checkout; return each task's result; raise on failure."""
    with tempfile.TemporaryDirectory(prefix="kubeinfer-autoscale-") as tmp:
        base = Path(tmp) / "collections" / "ansible_collections" / "kubeinfer"
        base.mkdir(parents=True)
        (base / "llm").symlink_to(REPO)
        play = Path(tmp) / "play.yml"
        play.write_text(json.dumps([{"hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": tasks}]))
        bindir = Path(sys.executable).parent
        ansible_playbook = bindir / "ansible-playbook"
        if not ansible_playbook.exists():
            ansible_playbook = VENV_BIN / "ansible-playbook"
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(Path(tmp) / "collections"), K8S_AUTH_KUBECONFIG=kubeconfig,
                   ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_LOCALHOST_WARNING="false",
                   ANSIBLE_PYTHON_INTERPRETER=str(ansible_playbook.parent / "python"), ANSIBLE_NOCOLOR="1")
        env.setdefault("HELM_BINARY", str(CACHE / f"helm-{pinned('HELM_VERSION')}" / "helm"))
        proc = subprocess.run([str(ansible_playbook), "-i", "localhost,", str(play)], capture_output=True, text=True,
                              env=env, timeout=timeout, check=False)
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        raise RuntimeError(f"ansible-playbook printed no JSON (rc {proc.returncode}): {proc.stdout[-3000:]} {proc.stderr[-3000:]}") from None
    results = [task["hosts"]["localhost"] for play_doc in doc["plays"] for task in play_doc["tasks"]]
    if proc.returncode != 0:
        failed = [r for r in results if r.get("failed")]
        raise RuntimeError(f"playbook failed (rc {proc.returncode}): {json.dumps(failed)[-4000:] if failed else proc.stderr[-3000:]}")
    return results


def autoscale_task(namespace: str, rel: Release, window: int, budget: int, kind: str = "hpa", prometheus_url: str = "") -> dict[str, Any]:
    """inference_hpa for one release: an HPA, or (kind keda) a ScaledObject whose own HPA KEDA drives; switching converges."""
    args: dict[str, Any] = {"release": rel.name, "namespace": namespace, "custom_metric_name": CUSTOM_METRIC,
                            "min_replicas": 1, "max_replicas": MAX_REPLICAS, "target_queue_depth": TARGET_QUEUE_DEPTH,
                            "startup_budget_seconds": budget, "scale_down": {"stabilization_window_seconds": window},
                            "verify_timeout": 120, "kind": kind}
    if kind == "keda":
        args.update(prometheus_url=prometheus_url, metric_name=SOURCE_METRIC, polling_interval=int(HPA_SYNC_PERIOD))
    return {"name": f"Autoscale {rel.name} ({kind})", "kubeinfer.llm.inference_hpa": args}


def deploy_tasks(namespace: str, releases: list[Release], prometheus_url: str, window: int, budget: int) -> list[dict[str, Any]]:
    """vllm_release, metrics_adapter and inference_hpa for every release, in that order."""
    tasks: list[dict[str, Any]] = []
    for rel in releases:
        tasks.append({"name": f"Serve {rel.name}", "kubeinfer.llm.vllm_release": {
            "name": rel.name, "namespace": namespace, "create_namespace": True, "model": rel.model, "engine": "sim",
            "replicas": 1, "gpus_per_replica": 1, "startup_budget_seconds": budget, "timeout": 120,
            "values": {"podAnnotations": {"kubeinfer.io/sim-metrics-port": str(rel.port)},
                       "metrics": {"podMonitor": {"enabled": True}}}}})
    for index, rel in enumerate(releases):
        # The metric name is given: detection reads a pod's /metrics through a per-pod port-forward, which
        # tests/integration/test_autoscaling.py covers. Only the last registration waits for the API (the rule
        # then lists every release); each HPA's verification proves its own release's value.
        tasks.append({"name": f"Register {rel.name} under {CUSTOM_METRIC}", "kubeinfer.llm.metrics_adapter": {
            "release": rel.name, "namespace": namespace, "custom_metric_name": CUSTOM_METRIC, "metric_name": SOURCE_METRIC,
            "prometheus_url": prometheus_url, "verify": index == len(releases) - 1, "verify_timeout": 150}})
    tasks.extend(autoscale_task(namespace, rel, window, budget) for rel in releases)
    return tasks


def cleanup_tasks(namespace: str, releases: list[Release]) -> list[dict[str, Any]]:
    """Take the releases out of the shared adapter rule (the namespace deletion removes the rest)."""
    return [{"name": f"Unregister {rel.name}", "ignore_errors": True, "kubeinfer.llm.metrics_adapter": {
        "release": rel.name, "namespace": namespace, "custom_metric_name": CUSTOM_METRIC, "state": "absent"}}
        for rel in releases]


# -- the load ---------------------------------------------------------------------------------------------------------

class Load:
    """Threads that each keep one /v1/completions request in flight against a simulator until stopped."""

    def __init__(self, port: int, model: str, concurrency: int = LOAD_CONCURRENCY) -> None:
        self.url = f"http://127.0.0.1:{port}/v1/completions"
        self.body = json.dumps({"model": model, "prompt": "Say hello.", "max_tokens": 1}).encode()
        self.concurrency = concurrency
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.done = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def worker(self) -> None:
        while not self.stop_event.is_set():
            req = urllib.request.Request(self.url, data=self.body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=120) as resp:
                    resp.read()
                with self.lock:
                    self.done += 1
            except (OSError, urllib.error.URLError) as e:
                with self.lock:
                    self.errors.append(str(e))
                time.sleep(0.5)

    def start(self) -> None:
        self.stop_event.clear()
        self.threads = [threading.Thread(target=self.worker, daemon=True, name=f"load-{i}") for i in range(self.concurrency)]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """Ask the threads to stop; each ends after its request in flight (the simulator still serves the queue)."""
        self.stop_event.set()

    def join(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


# -- observation ------------------------------------------------------------------------------------------------------

@dataclass
class HpaState:
    desired: Optional[int]
    current: Optional[int]
    value: Optional[float]  # the per-pod average the HPA last read; None while <unknown>
    able_reason: Optional[str]  # reason of the AbleToScale condition


@dataclass
class Sample:
    t: float
    sim: dict[str, Optional[float]] = field(default_factory=dict)
    prom: dict[str, Optional[float]] = field(default_factory=dict)
    hpa: dict[str, HpaState] = field(default_factory=dict)
    available: dict[str, int] = field(default_factory=dict)


def quantity(value: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}
    if value[-1:] in suffixes:
        return float(value[:-1]) * suffixes[value[-1]]
    return float(value)


def http_get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def sim_queue(port: int) -> Optional[float]:
    """vllm:num_requests_waiting from the simulator's own /metrics."""
    try:
        text = http_get(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(SOURCE_METRIC + "{") or line.startswith(SOURCE_METRIC + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


class Observer:
    """Samples the simulators, Prometheus, the HPAs and the Deployments every POLL seconds in a thread."""

    def __init__(self, kubeconfig: str, prometheus_url: str, namespace: str, releases: list[Release]) -> None:
        from kubernetes import client, config  # the venv has it; imported late so that --help works anywhere

        api = config.new_client_from_config(config_file=kubeconfig)
        self.hpas = client.AutoscalingV2Api(api)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.prometheus_url = prometheus_url
        self.namespace = namespace
        self.releases = releases
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True, name="observer")
        self.lock = threading.Lock()

    def prometheus(self) -> dict[str, Optional[float]]:
        """Per release, the average of the queue over the release's live pods, as the HPA averages it.

        Series of pods deleted by a scale-down may linger in Prometheus for a while; the HPA never asks for them
        (the adapter gets the pod names of the HPA's selector), so they are left out here too.
        """
        query = f'sum by (pod, kubeinfer_io_release) ({SOURCE_METRIC}{{namespace="{self.namespace}"}})'
        doc = json.loads(http_get(f"{self.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"))
        live: dict[str, set[str]] = {rel.name: set() for rel in self.releases}
        for pod in self.core.list_namespaced_pod(self.namespace, label_selector="kubeinfer.io/release").items:
            release = (pod.metadata.labels or {}).get("kubeinfer.io/release", "")
            if release in live and not pod.metadata.deletion_timestamp and pod.status.phase not in ("Succeeded", "Failed"):
                live[release].add(pod.metadata.name)
        values: dict[str, list[float]] = {rel.name: [] for rel in self.releases}
        for row in doc["data"]["result"]:
            release, pod_name = row["metric"].get("kubeinfer_io_release", ""), row["metric"].get("pod", "")
            if pod_name in live.get(release, set()):
                values[release].append(float(row["value"][1]))
        return {name: (sum(vals) / len(vals) if vals else None) for name, vals in values.items()}

    def sample(self) -> Sample:
        now = time.monotonic()
        smp = Sample(t=now, sim={rel.name: sim_queue(rel.port) for rel in self.releases}, prom=self.prometheus())
        for hpa in self.hpas.list_namespaced_horizontal_pod_autoscaler(self.namespace).items:
            status = hpa.status
            value = None
            for metric in status.current_metrics or []:
                if metric.type == "Pods" and metric.pods and metric.pods.metric.name == CUSTOM_METRIC:
                    value = quantity(metric.pods.current.average_value)
                elif metric.type == "External" and metric.external:  # KEDA's HPA: the trigger's query over the replicas
                    value = quantity(metric.external.current.average_value)
            able = next((c.reason for c in status.conditions or [] if c.type == "AbleToScale"), None)
            # KEDA names its HPA keda-hpa-<ScaledObject> (controllers/keda/hpa.go); the ScaledObject is named after the release.
            name = hpa.metadata.name.removeprefix("keda-hpa-")
            smp.hpa[name] = HpaState(status.desired_replicas, status.current_replicas, value, able)
        for dep in self.apps.list_namespaced_deployment(self.namespace).items:
            smp.available[dep.metadata.name] = dep.status.available_replicas or 0
        return smp

    def loop(self) -> None:
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                smp = self.sample()
                with self.lock:
                    self.samples.append(smp)
            except Exception as e:  # a failed poll is recorded; the next one may work
                self.errors.append(f"{type(e).__name__}: {e}")
            self.stop_event.wait(max(0.0, POLL - (time.monotonic() - started)))

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)

    def since(self, start: float) -> list[Sample]:
        with self.lock:
            return [s for s in self.samples if s.t >= start]

    def wait(self, what: str, start: float, predicate: Callable[[Sample], bool], timeout: float) -> Sample:
        """The first sample taken at or after start that satisfies predicate; waits for it up to timeout seconds."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            samples = self.since(start)
            for smp in samples[seen:]:
                if predicate(smp):
                    return smp
            seen = len(samples)
            if time.monotonic() > deadline:
                last = samples[-1] if samples else None
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}; last sample: {last}; poll errors: {self.errors[-3:]}")
            time.sleep(0.2)


# -- one load cycle ---------------------------------------------------------------------------------------------------

def first(samples: list[Sample], predicate: Callable[[Sample], bool]) -> Optional[Sample]:
    return next((s for s in samples if predicate(s)), None)


def desired(smp: Sample, release: str) -> Optional[int]:
    state = smp.hpa.get(release)
    return state.desired if state else None


def cycle(obs: Observer, a_rel: Release, b_rel: Release, window: int, hold: float = 2 * HPA_SYNC_PERIOD + 1) -> dict[str, Any]:
    """Load A until its HPA scaled and `hold` seconds more, stop, wait for the scale-down; return timings and checks."""
    a_name, b_name = a_rel.name, b_rel.name
    target = float(TARGET_QUEUE_DEPTH)

    def idle(smp: Sample) -> bool:
        return (desired(smp, a_name) == 1 and smp.available.get(a_name) == 1 and (smp.prom.get(a_name) or 0.0) <= target
                and smp.hpa[a_name].value is not None and smp.hpa.get(b_name) is not None and smp.hpa[b_name].value is not None)

    obs.wait("both HPAs at 1 replica with a metric value, A's queue under the target", time.monotonic(), idle,
             timeout=window + 3 * HPA_SYNC_PERIOD + 60)
    before = 1
    load = Load(a_rel.port, a_rel.model)
    t_load = time.monotonic()
    load.start()
    log(f"load started on {a_name}: {LOAD_CONCURRENCY} concurrent requests, target {TARGET_QUEUE_DEPTH}")
    try:
        scaled = obs.wait(f"{a_name}'s desiredReplicas above {before}", t_load,
                          lambda s: (desired(s, a_name) or 0) > before, timeout=REACTION_LIMIT + 60)
        log(f"{a_name} desiredReplicas {desired(scaled, a_name)} after {scaled.t - t_load:.1f}s of load")
        peak = desired(scaled, a_name) or 0
        obs.wait(f"{a_name}'s new pods Ready", scaled.t, lambda s: s.available.get(a_name, 0) >= peak, timeout=120)
        obs.wait(f"{hold:g}s of load after {a_name} scaled", scaled.t, lambda s: s.t >= scaled.t + hold, timeout=hold + 30)
    finally:
        t_stop = time.monotonic()
        load.stop()
    log(f"load stopped ({load.done} requests served, {len(load.errors)} errors)")
    peak = max(desired(s, a_name) or 0 for s in obs.since(t_load) if s.t <= t_stop)
    down = obs.wait(f"{a_name}'s desiredReplicas below {peak}", t_stop, lambda s: (desired(s, a_name) or peak) < peak,
                    timeout=window + 3 * HPA_SYNC_PERIOD + 60)
    load.join()
    return timings(obs.since(t_load), t_load, t_stop, down.t, a_name, b_name, target, window)


def timings(samples: list[Sample], t_load: float, t_stop: float, t_end: float, a_name: str, b_name: str,
            target: float, window: int) -> dict[str, Any]:
    """Derive t_sim, t0..t4 and the checks from the samples of one cycle (times relative to the load start)."""
    under_load = [s for s in samples if s.t <= t_stop]
    after = [s for s in samples if t_stop < s.t <= t_end]
    s_sim = first(under_load, lambda s: (s.sim.get(a_name) or 0) > target)
    s0 = first(under_load, lambda s: (s.prom.get(a_name) or 0) > target)
    s1 = first(under_load, lambda s: (desired(s, a_name) or 0) > 1)
    desired1 = desired(s1, a_name) if s1 else None
    s2 = first([s for s in under_load if s1 and s.t >= s1.t], lambda s: s.available.get(a_name, 0) >= (desired1 or 0))
    peak = max((desired(s, a_name) or 0) for s in under_load)
    s3 = first(after, lambda s: s.prom.get(a_name) is not None and (s.prom.get(a_name) or 0) <= target)
    s4 = first(after, lambda s: (desired(s, a_name) or peak) < peak)
    stabilized = [s for s in after if s3 and s4 and s3.t <= s.t < s4.t and s.hpa[a_name].able_reason == "ScaleDownStabilized"]
    observed = [s for s in samples if b_name in s.hpa]
    b_scaled = [s for s in observed if s.hpa[b_name].desired != 1 or s.hpa[b_name].current != 1]
    b_unknown = [s for s in observed if s.hpa[b_name].value is None]
    # How long B's HPA was actually read (with a value) after A scaled, from the samples: the load is held for
    # 2 syncs after A scaled, so the time until the stop alone would pass by construction.
    b_seen = [s.t for s in observed if s1 and s.t >= s1.t and s.hpa[b_name].value is not None]
    b_after_a = (max(b_seen) - s1.t) if s1 and b_seen else 0.0

    def rel(smp: Optional[Sample]) -> Optional[float]:
        return round(smp.t - t_load, 1) if smp else None

    out: dict[str, Any] = {
        "t_sim": rel(s_sim), "t0": rel(s0), "t1": rel(s1), "t2": rel(s2), "stop": round(t_stop - t_load, 1), "t3": rel(s3), "t4": rel(s4),
        "desired_after_scale_up": desired1, "peak_desired": peak, "desired_after_scale_down": desired(s4, a_name) if s4 else None,
        "window": window, "b_desired_values": sorted({s.hpa[b_name].desired for s in observed if s.hpa[b_name].desired is not None}),
        "b_max_value": max((s.hpa[b_name].value or 0.0 for s in observed), default=None),
        "b_observed_after_a_scaled_s": round(b_after_a, 1), "b_observed_s": round(observed[-1].t - observed[0].t, 1) if observed else 0.0,
        "scale_down_stabilized_seen": bool(stabilized),
    }
    for key, (end, begin) in {"t1-t_sim": ("t1", "t_sim"), "t1-t0": ("t1", "t0"), "t2-t1": ("t2", "t1"), "t2-t_sim": ("t2", "t_sim"),
                              "t3-stop": ("t3", "stop"), "t4-t3": ("t4", "t3")}.items():
        out[key] = round(out[end] - out[begin], 1) if out[end] is not None and out[begin] is not None else None
    checks = {
        "queue rose above the target at the simulator and in Prometheus": s_sim is not None and s0 is not None,
        f"A scaled up (desiredReplicas 1 -> {desired1})": s1 is not None,
        f"t1 - t_sim <= limit {REACTION_LIMIT:g}s": out["t1-t_sim"] is not None and out["t1-t_sim"] <= REACTION_LIMIT,
        "A's new pods Ready": s2 is not None,
        f"A scaled down after the load (to {out['desired_after_scale_down']})": s4 is not None,
        f"t4 - t3 >= window - sync period ({window - HPA_SYNC_PERIOD:g}s)": out["t4-t3"] is not None
        and out["t4-t3"] >= window - HPA_SYNC_PERIOD,
        "HPA reported ScaleDownStabilized between t3 and t4": bool(stabilized),
        "B's desiredReplicas and currentReplicas stayed 1": bool(observed) and not b_scaled,
        f"B's HPA read with a value >= 2 HPA syncs after A scaled ({b_after_a:.0f}s)": b_after_a >= 2 * HPA_SYNC_PERIOD,
        "B's HPA read a metric value (not <unknown>) throughout": bool(observed) and not b_unknown,
    }
    out["checks"] = checks
    out["ok"] = all(checks.values())
    return out


# -- the whole scenario -----------------------------------------------------------------------------------------------

@dataclass
class Scenario:
    """Two releases in one fresh namespace of a running local cluster with its metrics chain."""
    cluster: str
    window: int
    budget: int
    namespace: str = field(default_factory=lambda: f"autoscale-{uuid.uuid4().hex[:6]}")
    kubeconfig: str = ""
    prometheus_url: str = ""
    releases: list[Release] = field(default_factory=list)
    observer: Optional[Observer] = None

    def setup(self) -> None:
        self.kubeconfig = tool("cluster.sh", "kubeconfig", cluster=self.cluster)
        self.prometheus_url = tool("metrics.sh", "prometheus-url", cluster=self.cluster)
        # The nodes start bare: the published GPU Operator chart and the simulated GPU stack make GPUs allocatable.
        tool("gpu-stack.sh", "up", cluster=self.cluster, timeout=600)
        suffix = self.namespace.rsplit("-", 1)[1]
        self.releases = [Release(f"{key}-{suffix}", model, f"{self.namespace}-{key}") for key, model in MODELS.items()]
        start_sims(self.releases, self.cluster)
        started = time.monotonic()
        playbook(deploy_tasks(self.namespace, self.releases, self.prometheus_url, self.window, self.budget), self.kubeconfig)
        log(f"namespace {self.namespace}: releases, adapter rule and HPAs in place ({time.monotonic() - started:.0f}s)")
        self.observer = Observer(self.kubeconfig, self.prometheus_url, self.namespace, self.releases)
        self.observer.start()

    def run(self) -> dict[str, Any]:
        if self.observer is None:
            raise RuntimeError("setup() first")
        return cycle(self.observer, self.releases[0], self.releases[1], self.window)

    def teardown(self) -> None:
        if self.observer:
            self.observer.stop()
        try:
            if self.kubeconfig and self.releases:
                playbook(cleanup_tasks(self.namespace, self.releases), self.kubeconfig, timeout=300)
        finally:
            if self.kubeconfig:
                from kubernetes import client, config

                core = client.CoreV1Api(config.new_client_from_config(config_file=self.kubeconfig))
                try:
                    core.delete_namespace(self.namespace)
                except client.ApiException as e:
                    if e.status != 404:
                        raise
            stop_sims(self.releases, self.cluster)


def fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


INTERVALS = [
    ("t1-t_sim", "queue above target (simulator) -> desiredReplicas up"),
    ("t1-t0", "queue above target (Prometheus) -> desiredReplicas up"),
    ("t2-t1", "desiredReplicas up -> new pods Ready"),
    ("t2-t_sim", "queue above target (simulator) -> new pods Ready"),
    ("t3-stop", "load stopped -> queue under target (Prometheus)"),
    ("t4-t3", "queue under target -> desiredReplicas down"),
]


def report(runs: list[dict[str, Any]], window: int) -> str:
    lines = [f"autoscale benchmark: {len(runs)} run(s); scrape {SCRAPE_INTERVAL:g}s, HPA sync {HPA_SYNC_PERIOD:g}s, "
             f"scale-down window {window}s, target {TARGET_QUEUE_DEPTH}, load {LOAD_CONCURRENCY} requests (max-num-seqs 1, TTFT 2s)"]
    head = f"{'run':<4}" + "".join(f"{k:>8}" for k in ("t_sim", "t0", "t1", "t2", "stop", "t3", "t4")) + "   A replicas   B desired"
    lines.append("timeline (seconds after the load started):")
    lines.append(head)
    for i, run in enumerate(runs, 1):
        lines.append(f"{i:<4}" + "".join(f"{fmt(run[k]):>8}" for k in ("t_sim", "t0", "t1", "t2", "stop", "t3", "t4"))
                     + f"   1->{run['desired_after_scale_up']}->{run['desired_after_scale_down']}"
                     + f"      {','.join(str(v) for v in run['b_desired_values'])}")
    lines.append("")
    lines.append(f"{'interval':<58}" + "".join(f"{'run ' + str(i):>8}" for i in range(1, len(runs) + 1)) + f"{'median':>8}   bound")
    bounds = {"t1-t_sim": f"<= {REACTION_LIMIT:g} (scrape + adapter + HPA sync + 5)", "t1-t0": f"<= {HPA_SYNC_PERIOD + 5:g} (HPA sync + 5)",
              "t4-t3": f">= {window - HPA_SYNC_PERIOD:g} (window - sync); <= {window + HPA_SYNC_PERIOD + 5:g}"}
    for key, label in INTERVALS:
        values = [run[key] for run in runs]
        known = [v for v in values if v is not None]
        med = statistics.median(known) if known else None
        lines.append(f"{label:<58}" + "".join(f"{fmt(v):>8}" for v in values) + f"{fmt(med):>8}   {bounds.get(key, '')}")
    lines.append("")
    for i, run in enumerate(runs, 1):
        failed = [name for name, ok in run["checks"].items() if not ok]
        lines.append(f"run {i}: " + ("all checks passed" if not failed else "FAILED: " + "; ".join(failed)))
        lines.append(f"       B: desiredReplicas {run['b_desired_values']}, highest value read {run['b_max_value']}, "
                     f"observed {run['b_observed_s']:.0f}s, of which {run['b_observed_after_a_scaled_s']:.0f}s after A scaled")
    return "\n".join(lines)


SETUP_NAMES = {"operator": "(a) prometheus-operator, chart PodMonitor", "annotations": "(b) community chart, pod annotations",
               "keda": "KEDA v2.20.2 ScaledObject on (a), its own HPA"}


def compare(results: dict[str, list[dict[str, Any]]]) -> str:
    """The setups side by side: median reaction times against the bound they share."""
    lines = ["", "monitoring setups side by side (medians; same cluster, releases and load):",
             f"{'setup':<44}{'runs':>6}{'t1-t_sim':>10}{'t1-t0':>8}{'t4-t3':>8}   bound t1-t_sim <= {REACTION_LIMIT:g}s"]
    def med(runs: list[dict[str, Any]], key: str) -> Optional[float]:
        known = [run[key] for run in runs if run[key] is not None]
        return statistics.median(known) if known else None

    for setup, runs in results.items():
        lines.append(f"{SETUP_NAMES.get(setup, setup):<44}{len(runs):>6}{fmt(med(runs, 't1-t_sim')):>10}{fmt(med(runs, 't1-t0')):>8}"
                     f"{fmt(med(runs, 't4-t3')):>8}   {'ok' if runs and all(run['ok'] for run in runs) else 'FAILED'}")
    return "\n".join(lines)


def main() -> int:
    cluster = os.environ.get("BENCH_CLUSTER", "autoscale")
    runs_wanted = int(os.environ.get("BENCH_RUNS", "3"))
    setups = [x for x in os.environ.get("BENCH_SETUPS", "operator,annotations,keda").split(",") if x]
    window = int(os.environ.get("BENCH_WINDOW", "45"))
    budget = int(os.environ.get("BENCH_BUDGET", "20"))
    keep = os.environ.get("BENCH_KEEP_CLUSTER", "0") == "1"
    log(f"cluster {cluster}: cluster.sh up, metrics.sh up ({setups[0]})")
    tool("cluster.sh", "up", cluster=cluster, timeout=600)
    tool("metrics.sh", "up", cluster=cluster, timeout=300, extra_env={"MONITORING": setups[0]})
    tool("gpu_sim.py", "start", cluster=cluster, timeout=120)  # what the GPU stack does to the nodes (make cluster-up starts it too)
    scenario = Scenario(cluster=cluster, window=window, budget=budget)
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        scenario.setup()
        for setup in setups:
            tool("metrics.sh", "up", cluster=cluster, timeout=300, extra_env={"MONITORING": "operator" if setup == "keda" else setup})
            if setup == "keda":
                # The real KEDA (build.sh keda: about 10 minutes the first time), then both releases switched to it.
                subprocess.run([str(TOOLS / "build.sh"), "keda"], check=True, timeout=3600)
                tool("keda.sh", "up", cluster=cluster, timeout=600)
                playbook([autoscale_task(scenario.namespace, rel, window, budget, "keda", scenario.prometheus_url)
                          for rel in scenario.releases], scenario.kubeconfig)
            time.sleep(2 * SCRAPE_INTERVAL)  # the new scrape config has scraped every pod at least once
            runs = results.setdefault(setup, [])
            for i in range(runs_wanted):
                log(f"{setup}: run {i + 1}/{runs_wanted}")
                runs.append(scenario.run())
                log(f"{setup}: run {i + 1}: t1-t_sim {runs[-1]['t1-t_sim']}s, t4-t3 {runs[-1]['t4-t3']}s, ok={runs[-1]['ok']}")
    finally:
        if not keep:
            scenario.teardown()
            if "keda" in setups:
                tool("keda.sh", "down", cluster=cluster, timeout=300)
            tool("cluster.sh", "down", cluster=cluster, timeout=300)
    for setup, runs in results.items():
        print(f"== {SETUP_NAMES.get(setup, setup)}")
        print(report(runs, window))
    print(compare(results))
    if os.environ.get("BENCH_JSON"):
        Path(os.environ["BENCH_JSON"]).write_text(json.dumps({"window": window, "budget": budget, "runs": results}, indent=2))
    return 0 if results and all(runs and all(run["ok"] for run in runs) for runs in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
