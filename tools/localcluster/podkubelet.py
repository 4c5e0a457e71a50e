#!/usr/bin/env python3
"""The kubelet and the kube-proxy for the vLLM pods a test opts in (label kubeinfer.io/sim-kubelet=pod-sim).

Usage: podkubelet.py start | stop | status | run
       podkubelet.py service-url NAMESPACE SERVICE [PORT]   prints http://127.0.0.1:N, the Service's route
       podkubelet.py route-stats                            prints the connections each route sent to each pod (JSON)

kwok runs no container and no probe: its stages mark a pod Ready at once and delete it at once. A rolling
update then never waits for a model to load and never drains a request. For a pod labelled
kubeinfer.io/sim-kubelet=pod-sim, kwok only gives the pod its IP and starts it with nothing ready
(kwok/stages.yaml, kubeinfer-pod-started-played); this loop does the rest, as a kubelet would:

1 Container: the pod's first container with a port runs as a simulator (sim.py) whose argv is the
  container's args (the chart renders llm-d-inference-sim flags for engine "sim"), listening at
  <pod IP>:<containerPort>. The annotation kubeinfer.io/sim-load-seconds (default 0) is a model load:
  for that long nothing listens, as vLLM opens its port only once the weights are in.
2 Probes (k8s v1.36.3 pkg/kubelet/prober/worker.go doProbe): startup, readiness and liveness run with the
  spec's initialDelaySeconds, periodSeconds, timeoutSeconds, successThreshold and failureThreshold;
  readiness and liveness only once the startup probe has succeeded; startup starts Unknown, readiness
  Failure, liveness Success; a result changes only after threshold equal results in a row; httpGet
  succeeds on 200-399 within the timeout (pkg/probe/http/http.go). Liveness and startup stop once the
  pod is being deleted; readiness goes on.
3 Restarts (pkg/kubelet/kuberuntime/kuberuntime_manager.go computePodActions, kuberuntime_container.go):
  a failed startup or liveness probe kills the container ("Killing" event, "Container X failed
  startup probe, will be restarted") and it comes back after the crash-loop back-off (10 s,
  doubling, at most 300 s: pkg/kubelet/kubelet.go); restartCount and lastState.terminated
  (exitCode 137, reason Error) say so, and each failed probe is a Warning "Unhealthy" event
  ("Startup probe failed: ...", pkg/kubelet/prober/prober.go).
4 Status (pkg/kubelet/status/status_manager.go, generate.go): containerStatuses ready/started/state,
  ContainersReady and Ready conditions, written only when they change.
5 Termination (kuberuntime_container.go killContainer): on deletionTimestamp the preStop hook runs
  (lifecycle.preStop.sleep.seconds; an exec hook cannot run here and is reported as skipped), then the
  simulator gets SIGTERM and the rest of the grace period (at least 2 s, minimumGracePeriodInSeconds)
  to drain its open requests, then SIGKILL; then the pod is deleted with grace 0 and its UID as the
  precondition, as the status manager does once the containers are gone.
6 Port-forward: a kwok PortForward named after the pod sends the API server's port-forward to the pod's
  own simulator, as a kubelet's would reach its container.
7 Service routing (the kube-proxy part). The API server refuses loopback endpoint addresses
  (ValidateNonSpecialIP), so no EndpointSlice holds these pods and nothing reads one. For every Service
  whose selector matches a played pod, one listener per Service port on 127.0.0.1 (its address from
  ``service-url``) forwards each new TCP connection to one endpoint picked at random, the endpoints
  computed as the EndpointSlice controller computes them (k8s.io/endpointslice v0.36.3 utils.go
  podToEndpoint: ready = Ready condition and no deletionTimestamp; serving = Ready condition;
  util/controller_utils.go ShouldPodBeInEndpoints: no terminal pod, no pod without an IP) and used as
  kube-proxy uses them (pkg/proxy/topology.go CategorizeEndpoints: the ready endpoints; only when there
  are none, the serving terminating ones). A connection keeps its endpoint until it closes, as conntrack
  keeps a DNAT'd flow. Endpoints are re-read every 0.5 s (the controller and kube-proxy react to the pod
  change in about that time; kube-proxy's iptables mode syncs at most once a second).

Where the imitation stops: one container per played pod (others are ignored), httpGet probes only,
probes of a pod run one after another in one thread (kubelet runs one goroutine per probe), no image
pull, no volumes, no init containers, no readiness gates, no session affinity, no topology hints,
no NodePort. A daemon restart forgets probe history: running simulators are adopted as freshly started.
What it could let slip: a behaviour that depends on any of those, or on the exact lag between a pod's
change and the routing change (real clusters can be slower: preStop covers that lag).

Environment: KUBEINFER_CACHE, KUBEINFER_CLUSTER, KWOK_WORKDIR (as cluster.sh).
State: $KWOK_WORKDIR/kubeinfer-$KUBEINFER_CLUSTER/{podkubelet.pid,podkubelet.log,podkubelet/routes.json,podkubelet/route-stats.json}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import signal
import socket
import sys
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sim
from hostproc import HostProcess, cluster_name, kubectl, state_dir, workdir
from kubeapi import KubeApi

LABEL, VALUE = "kubeinfer.io/sim-kubelet", "pod-sim"
LOAD_ANNOTATION = "kubeinfer.io/sim-load-seconds"
STATE = state_dir() / "podkubelet"
PROC = HostProcess(state_dir(), "podkubelet")
BEAT = STATE / "beat"
ROUTES, STATS = STATE / "routes.json", STATE / "route-stats.json"
INTERVAL = 0.5
TICK = 0.2
BACKOFF_INITIAL, BACKOFF_MAX = 10.0, 300.0  # pkg/kubelet/kubelet.go backOffPeriod, MaxContainerBackOff
MIN_GRACE = 2.0  # pkg/kubelet/kuberuntime/kuberuntime_container.go minimumGracePeriodInSeconds


def log(msg: str) -> None:
    print(f"[podkubelet {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_api() -> KubeApi:
    return KubeApi(workdir() / "clusters" / cluster_name() / "kubeconfig.yaml", kubectl(), STATE, "podkubelet")


def http_probe(host: str, port: int, path: str, timeout: float) -> tuple[bool, str]:
    """pkg/probe/http/http.go: success on a status in [200, 400) within the timeout; the output names the failure."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "kube-probe/1.36"})
        code = conn.getresponse().status
    except (OSError, http.client.HTTPException) as e:
        return False, f'Get "http://{host}:{port}{path}": {e or type(e).__name__}'
    finally:
        conn.close()
    if 200 <= code < 400:
        return True, ""
    return False, f"HTTP probe failed with statuscode: {code}"


class Probe:
    """One probe worker's state (worker.go): the spec, the current result and the run of equal results."""

    def __init__(self, kind: str, spec: dict[str, Any] | None, initial: bool | None) -> None:
        self.kind, self.spec = kind, spec or {}
        self.defined = spec is not None
        self.initial = initial
        self.result: bool | None = initial
        self.last: bool | None = None
        self.run = 0
        self.due = 0.0
        self.on_hold = False

    def reset(self) -> None:
        self.result, self.last, self.run, self.due, self.on_hold = self.initial, None, 0, 0.0, False

    def field(self, name: str, default: int) -> int:
        return int(self.spec.get(name) or default)


class PodWorker(threading.Thread):
    """The kubelet's part for one played pod: its container, its probes, its status and its termination."""

    def __init__(self, api: KubeApi, pod: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.api, self.pod, self.lock = api, pod, threading.Lock()
        md = pod["metadata"]
        self.ns, self.name, self.uid = md["namespace"], md["name"], md["uid"]
        self.sim_name = f"pod.{self.ns}.{self.name}"
        self.container = next((c for c in pod["spec"]["containers"] if c.get("ports")), pod["spec"]["containers"][0])
        self.probes = {"startup": Probe("startup", self.container.get("startupProbe"), None),
                       "readiness": Probe("readiness", self.container.get("readinessProbe"), False),
                       "liveness": Probe("liveness", self.container.get("livenessProbe"), True)}
        self.running_since: float | None = None
        self.started_at = ""
        self.started = False
        self.restarts = 0
        self.last_terminated: dict[str, Any] | None = None
        self.backoff = BACKOFF_INITIAL
        self.restart_at: float | None = 0.0
        self.waiting = "ContainerCreating"
        self.written: Any = None
        self.done = threading.Event()

    # -- what the API says ---------------------------------------------------------------------
    def update(self, pod: dict[str, Any]) -> None:
        with self.lock:
            self.pod = pod

    def current(self) -> dict[str, Any]:
        with self.lock:
            return self.pod

    def port(self, ref: Any) -> int:
        if isinstance(ref, int) or str(ref).isdigit():
            return int(ref)
        for p in self.container.get("ports") or []:
            if p.get("name") == ref:
                return int(p["containerPort"])
        raise ValueError(f"container {self.container['name']} has no port named {ref}")

    def event(self, kind: str, reason: str, message: str) -> None:
        t = now()
        body = {"metadata": {"generateName": f"{self.name}.", "namespace": self.ns},
                "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": self.ns, "name": self.name, "uid": self.uid,
                                   "fieldPath": f"spec.containers{{{self.container['name']}}}"},
                "reason": reason, "message": message, "type": kind, "count": 1, "firstTimestamp": t, "lastTimestamp": t,
                "source": {"component": "kubelet", "host": self.pod["spec"].get("nodeName", "")}}
        try:
            self.api.call("POST", f"/api/v1/namespaces/{self.ns}/events", body, content_type="application/json")
        except RuntimeError as e:
            log(f"{self.ns}/{self.name}: event {reason} not written: {e}")

    # -- the container -------------------------------------------------------------------------
    def start_container(self) -> None:
        pod = self.current()
        ip = pod["status"].get("podIP")
        load = float((pod["metadata"].get("annotations") or {}).get(LOAD_ANNOTATION) or 0)
        args = [str(a) for a in self.container.get("args") or []]
        if not any(a == "--port" or a.startswith("--port=") for a in args):
            args += ["--port", str(self.port((self.container.get("ports") or [{}])[0].get("containerPort", 8000)))]
        port = sim.start(self.sim_name, args, bind=ip, load_seconds=load, wait=False)
        self.port_forward(ip, port)
        self.running_since, self.started_at, self.started, self.waiting = time.monotonic(), now(), False, ""
        for p in self.probes.values():
            p.reset()
        log(f"{self.ns}/{self.name}: container {self.container['name']} started on {ip} (load {load:g} s, restart {self.restarts})")

    def kill_container(self, why: str) -> None:
        """Kill for a failed probe (kuberuntime_manager.go computePodActions), then the crash-loop back-off."""
        self.event("Normal", "Killing", f"Container {self.container['name']} {why}, will be restarted")
        grace = float(self.current()["spec"].get("terminationGracePeriodSeconds") or 30)
        sim.stop(self.sim_name, drain=grace)
        self.last_terminated = {"exitCode": 137, "reason": "Error", "startedAt": self.started_at, "finishedAt": now()}
        self.restarts += 1
        self.running_since, self.started = None, False
        self.restart_at = time.monotonic() + self.backoff
        self.waiting = "CrashLoopBackOff"
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        for p in self.probes.values():
            p.reset()

    def port_forward(self, ip: str, port: int) -> None:
        """A kubelet answers a port-forward with the pod's own container: kwok does so from a PortForward named after the
        pod (kwok v0.8.0 pkg/kwok/server/debugging_port_forword.go), here pointed at the pod's simulator. Owned by the
        pod, so the garbage collector removes it with the pod."""
        body = {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "PortForward",
                "metadata": {"name": self.name, "namespace": self.ns,
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid}]},
                "spec": {"forwards": [{"target": {"address": ip, "port": port}}]}}
        try:
            self.api.call("PATCH", f"/apis/kwok.x-k8s.io/v1alpha1/namespaces/{self.ns}/portforwards/{self.name}"
                          "?fieldManager=kubeinfer-podkubelet&force=true", body, content_type="application/apply-patch+yaml")
        except RuntimeError as e:
            log(f"{self.ns}/{self.name}: port-forward not written: {e}")

    # -- the probes (worker.go doProbe) ----------------------------------------------------------
    def probe(self, p: Probe, deleting: bool) -> None:
        if not p.defined or p.on_hold or self.running_since is None:
            return
        if deleting and p.kind in ("liveness", "startup"):
            p.result = True
            return
        t = time.monotonic()
        if t < p.due or t - self.running_since < p.field("initialDelaySeconds", 0):
            return
        if (p.kind == "startup") == self.started:  # startup runs until started; the others only after
            return
        p.due = t + p.field("periodSeconds", 10)
        get = p.spec.get("httpGet") or {}
        ok, output = http_probe(self.current()["status"].get("podIP", ""), self.port(get.get("port", 80)), get.get("path", "/"),
                                p.field("timeoutSeconds", 1))
        if not ok:
            self.event("Warning", "Unhealthy", f"{p.kind.capitalize()} probe failed: {output}")
        p.run = p.run + 1 if p.last == ok else 1
        p.last = ok
        if (not ok and p.run < p.field("failureThreshold", 3)) or (ok and p.run < p.field("successThreshold", 1)):
            return
        p.result = ok
        if p.kind == "startup":
            p.on_hold, p.run = True, 0
            if ok:
                self.started = True
            else:
                self.kill_container("failed startup probe")
        elif p.kind == "liveness" and not ok:
            p.on_hold, p.run = True, 0
            self.kill_container("failed liveness probe")

    def ready(self) -> bool:
        r = self.probes["readiness"]
        started = self.started or not self.probes["startup"].defined
        return self.running_since is not None and started and (r.result if r.defined else True) is True

    # -- the status (status_manager.go) ----------------------------------------------------------
    def write_status(self) -> None:
        pod = self.current()
        ready = self.ready()
        c = self.container
        cs: dict[str, Any] = {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": ready,
                              "started": self.running_since is not None and (self.started or not self.probes["startup"].defined),
                              "restartCount": self.restarts}
        if self.running_since is not None:
            cs["containerID"] = f"sim://{self.sim_name}/{self.restarts}"
            cs["state"] = {"running": {"startedAt": self.started_at}}
        else:
            cs["state"] = {"waiting": {"reason": self.waiting,
                                       "message": f"back-off restarting failed container {c['name']}" if self.waiting == "CrashLoopBackOff" else ""}}
        if self.last_terminated:
            cs["lastState"] = {"terminated": self.last_terminated}
        want = (ready, json.dumps(cs, sort_keys=True))
        if want == self.written:
            return
        old = {x["type"]: x for x in pod["status"].get("conditions") or []}
        conds = []
        for kind, status in (("PodScheduled", True), ("Initialized", True), ("ContainersReady", ready), ("Ready", ready)):
            s = "True" if status else "False"
            prev = old.get(kind) or {}
            cond = {"type": kind, "status": s,
                    "lastTransitionTime": prev.get("lastTransitionTime") if prev.get("status") == s else now()}
            if not status:
                cond["reason"] = "ContainersNotReady"
                cond["message"] = f"containers with unready status: [{c['name']}]"
            conds.append(cond)
        body = {"status": {"conditions": conds, "containerStatuses": [cs]}}
        try:
            self.api.call("PATCH", f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status", body)
            self.written = want
        except RuntimeError as e:
            log(f"{self.ns}/{self.name}: status not written: {e}")

    # -- termination (kuberuntime_container.go killContainer) --------------------------------------
    def terminate(self) -> None:
        pod = self.current()
        md = pod["metadata"]
        grace = float(md.get("deletionGracePeriodSeconds") if md.get("deletionGracePeriodSeconds") is not None
                      else pod["spec"].get("terminationGracePeriodSeconds") or 30)
        began = time.monotonic()
        pre = (self.container.get("lifecycle") or {}).get("preStop") or {}
        if self.running_since is not None and pre.get("sleep"):
            seconds = min(float(pre["sleep"].get("seconds") or 0), grace)
            log(f"{self.ns}/{self.name}: preStop sleep {seconds:g} s")
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                self.probe(self.probes["readiness"], deleting=True)
                self.write_status()
                time.sleep(TICK)
        elif pre:
            self.event("Warning", "FailedPreStopHook", "only the sleep action runs in the local cluster; the hook was skipped")
        left = max(MIN_GRACE, grace - (time.monotonic() - began))
        sim.stop(self.sim_name, drain=left)
        log(f"{self.ns}/{self.name}: stopped after {time.monotonic() - began:.1f} s of a {grace:g} s grace period")
        try:
            self.api.call("DELETE", f"/api/v1/namespaces/{self.ns}/pods/{self.name}",
                          {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}}, content_type="application/json")
        except RuntimeError as e:
            log(f"{self.ns}/{self.name}: delete failed: {e}")

    def run(self) -> None:
        try:
            while not self.done.is_set():
                pod = self.current()
                if pod["metadata"].get("deletionTimestamp"):
                    self.terminate()
                    return
                if self.running_since is not None and not sim.running(self.sim_name):
                    self.last_terminated = {"exitCode": 1, "reason": "Error", "startedAt": self.started_at, "finishedAt": now()}
                    self.restarts += 1
                    self.running_since, self.started, self.waiting = None, False, "CrashLoopBackOff"
                    self.restart_at = time.monotonic() + self.backoff
                    self.backoff = min(self.backoff * 2, BACKOFF_MAX)
                if self.running_since is None and self.restart_at is not None and time.monotonic() >= self.restart_at:
                    self.start_container()
                for kind in ("startup", "readiness", "liveness"):
                    self.probe(self.probes[kind], deleting=False)
                self.write_status()
                time.sleep(TICK)
        except (Exception, SystemExit) as e:  # a worker must not die silently: the pod would hang
            log(f"{self.ns}/{self.name}: worker failed: {e!r}")
        finally:
            self.done.set()


# --- the Service routes (kube-proxy) --------------------------------------------------------------

def endpoint(pod: dict[str, Any]) -> tuple[bool, bool, bool] | None:
    """(ready, serving, terminating) as podToEndpoint computes them; None when ShouldPodBeInEndpoints says no."""
    st = pod.get("status") or {}
    if st.get("phase") in ("Succeeded", "Failed") or not st.get("podIP"):
        return None
    serving = any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or [])
    terminating = bool(pod["metadata"].get("deletionTimestamp"))
    return serving and not terminating, serving, terminating


def targets(pods: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(pod name, pod IP) to route to (CategorizeEndpoints): the ready ones, else the serving terminating ones."""
    eps = [(p, endpoint(p)) for p in pods]
    ready = [p for p, e in eps if e and e[0]]
    chosen = ready or [p for p, e in eps if e and e[1] and e[2]]
    return [(p["metadata"]["name"], p["status"]["podIP"]) for p in chosen]


class Route(threading.Thread):
    """One Service port: a listener on 127.0.0.1 that forwards each connection to a current endpoint."""

    def __init__(self, key: str, port: int) -> None:
        super().__init__(daemon=True)
        self.key = key
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.endpoints: list[tuple[str, str, int]] = []
        self.counts: dict[str, int] = {}
        self.closed = False

    def run(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            eps = self.endpoints
            if not eps:
                client.close()  # no endpoint: the connection is refused, as kube-proxy's REJECT rule does
                continue
            name, ip, port = random.choice(eps)
            self.counts[name] = self.counts.get(name, 0) + 1
            threading.Thread(target=self.forward, args=(client, ip, port), daemon=True).start()

    @staticmethod
    def forward(client: socket.socket, ip: str, port: int) -> None:
        try:
            upstream = socket.create_connection((ip, port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        t = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        t.start()
        pump(client, upstream)
        t.join()
        client.close()
        upstream.close()

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def selects(selector: dict[str, str], pod: dict[str, Any]) -> bool:
    labels = pod["metadata"].get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def sync_routes(routes: dict[str, Route], services: list[dict[str, Any]], pods: list[dict[str, Any]]) -> None:
    saved = json.loads(ROUTES.read_text()) if ROUTES.exists() else {}
    wanted: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    for svc in services:
        ns = svc["metadata"]["namespace"]
        members = [p for p in pods if p["metadata"]["namespace"] == ns and selects(svc["spec"].get("selector") or {}, p)]
        if not members:
            continue
        for sp in svc["spec"].get("ports") or []:
            wanted[f"{ns}/{svc['metadata']['name']}:{sp['port']}"] = (sp, members)
    for key in list(routes):
        if key not in wanted:
            routes.pop(key).close()
    for key, (sp, members) in wanted.items():
        if key not in routes:
            try:
                routes[key] = Route(key, int(saved.get(key, {}).get("port", 0)))
            except OSError:
                routes[key] = Route(key, 0)
            routes[key].start()
            log(f"route {key} -> 127.0.0.1:{routes[key].port}")
        target = sp.get("targetPort", sp["port"])
        eps = []
        for name, ip in targets(members):
            pod = next(p for p in members if p["metadata"]["name"] == name)
            port = target if isinstance(target, int) else next(
                (int(cp["containerPort"]) for c in pod["spec"]["containers"] for cp in c.get("ports") or [] if cp.get("name") == target), None)
            if port is not None:
                eps.append((name, ip, int(port)))
        routes[key].endpoints = eps
    ROUTES.write_text(json.dumps({k: {"port": r.port, "endpoints": [e[0] for e in r.endpoints]} for k, r in routes.items()}, sort_keys=True))
    STATS.write_text(json.dumps({k: r.counts for k, r in routes.items()}, sort_keys=True))


# --- the loop -------------------------------------------------------------------------------------

def loop() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    api: KubeApi | None = None
    workers: dict[str, PodWorker] = {}
    gone: set[str] = set()  # UIDs whose worker has terminated and deleted the pod
    routes: dict[str, Route] = {}
    selector = urllib.parse.quote(f"{LABEL}={VALUE}")
    while True:
        began = time.monotonic()
        try:
            api = api or new_api()
            pods = api.items(f"/api/v1/pods?labelSelector={selector}")
            seen = set()
            for pod in pods:
                uid = pod["metadata"]["uid"]
                if not pod["status"].get("podIP") and not pod["metadata"].get("deletionTimestamp"):
                    continue  # kwok has not started it yet
                seen.add(uid)
                w = workers.get(uid)
                if w is None and uid not in gone:
                    w = workers[uid] = PodWorker(api, pod)
                    if sim.running(w.sim_name):  # a daemon restart: adopt the running container
                        w.running_since, w.started_at, w.restart_at = time.monotonic(), now(), None
                    w.start()
                elif w is not None:
                    w.update(pod)
            for uid in [u for u, w in workers.items() if u not in seen or w.done.is_set()]:
                w = workers[uid]
                if uid not in seen:
                    w.done.set()
                    sim.stop(w.sim_name)
                if uid not in seen or not w.is_alive():
                    workers.pop(uid)
                    gone.add(uid)
            gone &= seen
            namespaces = sorted({p["metadata"]["namespace"] for p in pods})
            services = [s for ns in namespaces for s in api.items(f"/api/v1/namespaces/{ns}/services")]
            sync_routes(routes, services, pods)
            BEAT.write_text(now() + "\n")
        except Exception as e:  # keep going: the API may be restarting
            log(f"pass failed: {e!r}")
            if isinstance(e, OSError):
                api = None
        time.sleep(max(0.05, INTERVAL - (time.monotonic() - began)))


def service_url(ns: str, name: str, port: str | None, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        routes = json.loads(ROUTES.read_text()) if ROUTES.exists() else {}
        for key, r in routes.items():
            if key.startswith(f"{ns}/{name}:") and (port is None or key.endswith(f":{port}")):
                return f"http://127.0.0.1:{r['port']}"
        if time.monotonic() > deadline:
            raise SystemExit(f"no route for Service {ns}/{name}: does it select a pod labelled {LABEL}={VALUE}? ({ROUTES})")
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["start", "stop", "status", "run", "service-url", "route-stats"])
    ap.add_argument("args", nargs="*")
    a = ap.parse_args()
    STATE.mkdir(parents=True, exist_ok=True)
    if a.command == "run":
        loop()
    elif a.command == "start":
        PROC.start_loop(Path(__file__).resolve(), BEAT)
    elif a.command == "stop":
        PROC.stop(timeout=5)
        BEAT.unlink(missing_ok=True)
        for name in sim.names():
            if name.startswith("pod."):
                sim.stop(name)
    elif a.command == "status":
        pid = PROC.pid()
        print(f"podkubelet: {f'running, pid {pid}' if pid else 'not running'}; log {PROC.logfile}")
        raise SystemExit(0 if pid else 1)
    elif a.command == "service-url":
        if len(a.args) not in (2, 3):
            raise SystemExit("usage: podkubelet.py service-url NAMESPACE SERVICE [PORT]")
        print(service_url(a.args[0], a.args[1], a.args[2] if len(a.args) == 3 else None))
    else:
        print(STATS.read_text() if STATS.exists() else "{}")


if __name__ == "__main__":
    main()
