#!/usr/bin/env python3
"""The local cluster's metrics chain: Prometheus -> prometheus-adapter -> custom.metrics.k8s.io.

Usage: metrics.py up | down | status | prometheus-url | adapter-url

Every process is a host process bound to 127.0.0.1 and stopped by the PID it was started with:
- Prometheus (Debian's /usr/bin/prometheus, or $PROMETHEUS_BINARY) with the configuration rendered
  from metrics/prometheus.yml.in: job ``vllm-pods``, scrape interval 15 s, pods annotated
  ``prometheus.io/scrape: "true"`` and ``kubeinfer.io/sim-metrics-port: <port>`` are scraped at
  127.0.0.1:<port> with the labels namespace, pod, kubeinfer_io_release (and kubeinfer_io_model).
  TSDB under the state dir, retention 2 h.
- prometheus-adapter v0.12.0 (built by build.sh) with --metrics-relist-interval 15s, its serving
  certificate being kwokctl's admin certificate (SAN localhost, 127.0.0.1). It is registered as
  APIServices v1beta1/v1beta2.custom.metrics.k8s.io -> Service monitoring/prometheus-adapter
  (ExternalName localhost, port = the adapter's port), insecureSkipTLSVerify.
- the sync loop (``metrics.py _sync``), every 2 s:
  * lists the pods and writes Prometheus' file_sd target file with kubernetes_sd-style
    __meta_kubernetes_* labels (Debian's Prometheus has no Kubernetes discovery built in);
  * mirrors ConfigMap monitoring/prometheus-adapter key config.yaml to the adapter's --config file
    and restarts the adapter when that content changes or when the pod-template annotation
    kubeinfer.io/config-checksum of Deployment monitoring/prometheus-adapter (kwok-simulated)
    changes: the stand-in for a kubelet's ConfigMap volume plus a rollout;
  * restarts the adapter if it died (at most every 5 s).

``up`` is idempotent: running processes with the same arguments are kept. ``down`` deletes the
APIServices first (an unavailable aggregated API breaks discovery for every client), then stops
the processes; the namespace, ConfigMap and Deployment stay (the next ``up`` reuses the rules).

State in $KWOK_WORKDIR/kubeinfer-$KUBEINFER_CLUSTER/metrics/: ports.json, *.pid, *.log,
prometheus.yml, targets.json, adapter-config.yaml, sync-state.json, prometheus-data/.
Environment: KUBEINFER_CACHE, KUBEINFER_CLUSTER, KWOK_WORKDIR (as cluster.sh), PROMETHEUS_BINARY,
PROMETHEUS_PORT and ADAPTER_PORT (default: a free port chosen on the first up, then kept).
Only the Python standard library is used.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from hostproc import HostProcess, cache_dir, cluster_name, pinned, workdir
from hostproc import kubectl as kubectl_binary
from kubeapi import KubeApi

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "metrics"
SCRAPE_INTERVAL = "15s"
RELIST_INTERVAL = "15s"
METRICS_MAX_AGE = "1m"
RETENTION = "2h"
SYNC_PERIOD = 2.0
ADAPTER_RESTART_BACKOFF = 5.0
NS = "monitoring"
NAME = "prometheus-adapter"
CHECKSUM_ANNOTATION = "kubeinfer.io/config-checksum"
APISERVICES = ("v1beta1.custom.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io")
FIELD_MANAGER = "kubeinfer-localcluster-metrics"


CLUSTER = cluster_name()
CLUSTER_DIR = workdir() / "clusters" / CLUSTER
KUBECONFIG = CLUSTER_DIR / "kubeconfig.yaml"
STATE = workdir() / f"kubeinfer-{CLUSTER}" / "metrics"
KUBECTL = kubectl_binary()
ADAPTER_VERSION = pinned("PROMETHEUS_ADAPTER_VERSION")
ADAPTER_BIN = cache_dir() / f"prometheus-adapter-{ADAPTER_VERSION}" / "adapter"
PROMETHEUS_BIN = Path(os.environ.get("PROMETHEUS_BINARY") or "/usr/bin/prometheus")
ADAPTER_CONFIG = STATE / "adapter-config.yaml"
TARGETS = STATE / "targets.json"


def log(msg: str) -> None:
    print(f"[metrics {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg: str) -> None:
    log(f"ERROR: {msg}")
    raise SystemExit(1)


# --- Kubernetes API, standard library only -------------------------------------------------

def Api(kubeconfig: Path) -> KubeApi:
    """The local cluster's API server (kubeapi.py), its client certificate kept in STATE."""
    return KubeApi(kubeconfig, KUBECTL, STATE)


def kubectl(*args: str, stdin: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    res = subprocess.run([str(KUBECTL), "--kubeconfig", str(KUBECONFIG), *args], input=stdin,
                         capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        die(f"kubectl {' '.join(args)} failed: {res.stderr.strip()}")
    return res


# --- processes -----------------------------------------------------------------------------

def proc(comp: str) -> HostProcess:
    """Component COMP (prometheus, adapter, sync), recorded in STATE (hostproc.py)."""
    return HostProcess(STATE, comp)


@contextmanager
def locked() -> Iterator[None]:
    """Serialise adapter starts and stops between `up` and the sync loop."""
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "adapter.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_ports() -> dict[str, int]:
    try:
        return {k: int(v) for k, v in json.loads((STATE / "ports.json").read_text()).items()}
    except (OSError, ValueError):
        return {}


def choose_ports() -> dict[str, int]:
    """Keep the recorded ports (stable Service/APIService); pick a free one if taken by someone else."""
    ports = load_ports()
    for comp, env in (("prometheus", "PROMETHEUS_PORT"), ("adapter", "ADAPTER_PORT")):
        if os.environ.get(env):
            ports[comp] = int(os.environ[env])
        elif not ports.get(comp) or (proc(comp).pid() is None and not port_free(ports[comp])):
            ports[comp] = free_port()
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / "ports.json").write_text(json.dumps(ports) + "\n")
    return ports


def prometheus_argv(ports: dict[str, int]) -> list[str]:
    return [str(PROMETHEUS_BIN), f"--config.file={STATE / 'prometheus.yml'}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
            f"--storage.tsdb.path={STATE / 'prometheus-data'}", f"--storage.tsdb.retention.time={RETENTION}",
            "--web.enable-lifecycle", "--log.level=info"]


def adapter_argv(ports: dict[str, int]) -> list[str]:
    pki = CLUSTER_DIR / "pki"
    tls = ([f"--tls-cert-file={pki / 'admin.crt'}", f"--tls-private-key-file={pki / 'admin.key'}"]
           if (pki / "admin.crt").is_file() else [f"--cert-dir={STATE / 'adapter-certs'}"])
    return [str(ADAPTER_BIN), "--bind-address=127.0.0.1", f"--secure-port={ports['adapter']}", *tls,
            f"--lister-kubeconfig={KUBECONFIG}", f"--authentication-kubeconfig={KUBECONFIG}",
            f"--authorization-kubeconfig={KUBECONFIG}",
            f"--prometheus-url=http://127.0.0.1:{ports['prometheus']}",
            f"--metrics-relist-interval={RELIST_INTERVAL}", f"--metrics-max-age={METRICS_MAX_AGE}",
            f"--config={ADAPTER_CONFIG}", "--v=2"]


def restart_adapter(reason: str) -> None:
    with locked():
        ports = load_ports()
        proc("adapter").stop()
        pid = proc("adapter").start(adapter_argv(ports))
    log(f"adapter started (pid {pid}, https://127.0.0.1:{ports['adapter']}): {reason}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_for(what: str, predicate, timeout: float = 60, interval: float = 0.5) -> None:
    """Poll until predicate() holds. An API error counts as "not yet": the aggregator answers 503
    while the adapter restarts (after a ConfigMap change), which is exactly what we wait out."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            if predicate():
                return
        except RuntimeError as e:
            last = f" (last error: {e})"
        if time.monotonic() > deadline:
            die(f"timed out after {timeout:.0f}s waiting for {what}{last}")
        time.sleep(interval)


def write_if_changed(path: Path, content: str) -> bool:
    try:
        if path.read_text() == content:
            return False
    except OSError:
        pass
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content)
    tmp.replace(path)
    return True


def render(name: str, ports: dict[str, int]) -> str:
    text = (TEMPLATES / name).read_text()
    values = {"SCRAPE_INTERVAL": SCRAPE_INTERVAL, "RELIST_INTERVAL": RELIST_INTERVAL, "TARGETS_FILE": str(TARGETS),
              "ADAPTER_PORT": str(ports["adapter"]), "ADAPTER_VERSION": ADAPTER_VERSION}
    return re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], text)


# --- pod discovery for Prometheus ------------------------------------------------------------

def sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_targets(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """file_sd groups with the labels kubernetes_sd_configs role=pod sets (pod-level ones)."""
    groups: list[dict[str, Any]] = []
    for pod in pods:
        meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
        annotations, labels = meta.get("annotations") or {}, meta.get("labels") or {}
        if "prometheus.io/scrape" not in annotations:
            continue
        ready = next((c["status"] for c in status.get("conditions") or [] if c["type"] == "Ready"), "unknown")
        lab: dict[str, str] = {"__meta_kubernetes_namespace": meta["namespace"], "__meta_kubernetes_pod_name": meta["name"],
               "__meta_kubernetes_pod_uid": meta.get("uid", ""), "__meta_kubernetes_pod_ip": status.get("podIP", ""),
               "__meta_kubernetes_pod_node_name": spec.get("nodeName", ""),
               "__meta_kubernetes_pod_phase": status.get("phase", ""), "__meta_kubernetes_pod_ready": ready.lower()}
        for k, v in labels.items():
            lab[f"__meta_kubernetes_pod_label_{sanitize(k)}"] = v
            lab[f"__meta_kubernetes_pod_labelpresent_{sanitize(k)}"] = "true"
        for k, v in annotations.items():
            lab[f"__meta_kubernetes_pod_annotation_{sanitize(k)}"] = v
            lab[f"__meta_kubernetes_pod_annotationpresent_{sanitize(k)}"] = "true"
        # The pod address (fake in kwok) is only a placeholder: relabelling replaces or drops it.
        groups.append({"targets": [f"{status.get('podIP') or 'no-pod-ip.invalid'}:80"], "labels": lab})
    return sorted(groups, key=lambda g: (g["labels"]["__meta_kubernetes_namespace"], g["labels"]["__meta_kubernetes_pod_name"]))


def sync_targets(api: Api) -> bool:
    pods = api.get("/api/v1/pods?resourceVersion=0")["items"]
    return write_if_changed(TARGETS, json.dumps(pod_targets(pods), indent=1, sort_keys=True) + "\n")


# --- the sync loop ---------------------------------------------------------------------------

def adapter_source(api: Api) -> tuple[str | None, str | None, bool]:
    """(config.yaml of the ConfigMap or None, checksum annotation or None, Deployment exists)."""
    cm = api.get(f"/api/v1/namespaces/{NS}/configmaps/{NAME}")
    dep = api.get(f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}")
    config = ((cm or {}).get("data") or {}).get("config.yaml")
    annotations = (((dep or {}).get("spec") or {}).get("template", {}).get("metadata") or {}).get("annotations") or {}
    return config, annotations.get(CHECKSUM_ANNOTATION), dep is not None


def load_sync_state() -> dict[str, Any]:
    try:
        return json.loads((STATE / "sync-state.json").read_text())
    except (OSError, ValueError):
        return {}


def sync_loop() -> None:
    me = os.getpid()
    api = Api(KUBECONFIG)
    state = load_sync_state()
    last_error, last_start = "", 0.0
    log(f"sync loop started (pid {me}, every {SYNC_PERIOD:.0f}s)")
    while True:
        tick = time.monotonic()
        if proc("sync").pid() != me:
            log("sync.pid is gone or names another process; exiting")
            return
        try:
            if sync_targets(api):
                log(f"scrape targets: {len(json.loads(TARGETS.read_text()))} pods with prometheus.io/scrape")
            config, checksum, has_dep = adapter_source(api)
            reasons = []
            if config is not None and write_if_changed(ADAPTER_CONFIG, config):
                reasons.append(f"ConfigMap {NS}/{NAME} config.yaml changed (sha256 "
                               f"{hashlib.sha256(config.encode()).hexdigest()[:12]})")
            if has_dep and checksum != state.get("checksum"):
                reasons.append(f"Deployment {NS}/{NAME} {CHECKSUM_ANNOTATION} {state.get('checksum')} -> {checksum}")
                state["checksum"] = checksum
                (STATE / "sync-state.json").write_text(json.dumps(state) + "\n")
            if reasons:
                restart_adapter("; ".join(reasons))
                last_start = time.monotonic()
            elif proc("adapter").pid() is None and time.monotonic() - last_start > ADAPTER_RESTART_BACKOFF:
                tail = (STATE / "adapter.log").read_text(errors="replace").strip().splitlines()[-1:] \
                    if (STATE / "adapter.log").exists() else []
                restart_adapter(f"it was not running (last log line: {tail[0][:300] if tail else '-'})")
                last_start = time.monotonic()
            last_error = ""
        except Exception as e:
            if str(e) != last_error:
                log(f"sync failed (will retry): {e}")
                last_error = str(e)
        time.sleep(max(0.0, SYNC_PERIOD - (time.monotonic() - tick)))


# --- commands --------------------------------------------------------------------------------

def apiservice_available(api: Api, name: str) -> tuple[bool, str]:
    obj = api.get(f"/apis/apiregistration.k8s.io/v1/apiservices/{name}")
    if obj is None:
        return False, "missing"
    cond = next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Available"), None)
    if cond is None:
        return False, "no Available condition yet"
    return cond["status"] == "True", f"{cond['status']} ({cond.get('reason')}: {cond.get('message', '')})"


def cmd_up() -> None:
    for f in (KUBECTL, ADAPTER_BIN, PROMETHEUS_BIN):
        if not f.is_file():
            die(f"{f} is missing (build.sh builds kubectl and the adapter; prometheus is Debian's package)")
    if not KUBECONFIG.is_file():
        die(f"no cluster kubeconfig at {KUBECONFIG}; run tools/localcluster/cluster.sh up")
    api = Api(KUBECONFIG)
    try:
        if api.get("/readyz", timeout=5) != "ok":
            raise RuntimeError("not ready")
    except Exception as e:
        die(f"the API server of cluster {CLUSTER} does not answer ({e}); run tools/localcluster/cluster.sh up")
    start = time.monotonic()
    STATE.mkdir(parents=True, exist_ok=True)
    # A re-created cluster has new certificates: processes started for the old one must go.
    cluster_id = hashlib.sha256((CLUSTER_DIR / "pki" / "ca.crt").read_bytes()).hexdigest() \
        if (CLUSTER_DIR / "pki" / "ca.crt").is_file() else KUBECONFIG.read_text()
    if (STATE / "cluster-id").is_file() and (STATE / "cluster-id").read_text() != cluster_id:
        log(f"cluster {CLUSTER} was re-created; restarting the metrics processes")
        for comp in ("sync", "adapter", "prometheus"):
            proc(comp).stop()
    (STATE / "cluster-id").write_text(cluster_id)
    ports = choose_ports()

    # Prometheus: targets first, so that the first scrape already knows the pods.
    sync_targets(api)
    changed = write_if_changed(STATE / "prometheus.yml", render("prometheus.yml.in", ports))
    prom_url = f"http://127.0.0.1:{ports['prometheus']}"
    if proc("prometheus").argv() != prometheus_argv(ports):
        proc("prometheus").stop()
        log(f"starting prometheus on {prom_url} (pid {proc('prometheus').start(prometheus_argv(ports))})")
    elif changed:
        urllib.request.urlopen(urllib.request.Request(f"{prom_url}/-/reload", method="POST"), timeout=10).close()
        log("prometheus configuration reloaded")
    wait_for("prometheus /-/ready", lambda: proc("prometheus").pid() is not None and http_ok(f"{prom_url}/-/ready"))

    # Cluster objects. The ConfigMap is created only when missing: its rules belong to metrics_adapter.
    kubectl("apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}", "-f", "-",
            stdin=render("cluster-objects.yaml.in", ports))
    if api.get(f"/api/v1/namespaces/{NS}/configmaps/{NAME}") is None:
        kubectl("create", f"--field-manager={FIELD_MANAGER}", "-f", "-", stdin=render("adapter-configmap.yaml.in", ports))

    # Adapter (config from the ConfigMap) and the sync loop that keeps both in step from now on.
    config, checksum, _ = adapter_source(api)
    with locked():
        cfg_changed = write_if_changed(ADAPTER_CONFIG, config if config is not None else "rules: []\n")
        state = load_sync_state()
        state["checksum"] = checksum
        (STATE / "sync-state.json").write_text(json.dumps(state) + "\n")
        if proc("adapter").argv() != adapter_argv(ports) or cfg_changed:
            proc("adapter").stop()
            log(f"starting prometheus-adapter on https://127.0.0.1:{ports['adapter']} "
                f"(pid {proc('adapter').start(adapter_argv(ports))})")
    if proc("sync").pid() is None:
        log(f"starting the sync loop (pid {proc('sync').start([sys.executable, str(Path(__file__).resolve()), '_sync', str(STATE)])})")

    kubectl("wait", "--for=condition=Available", "--timeout=90s", *(f"apiservice/{n}" for n in APISERVICES), timeout=100)
    wait_for("GET /apis/custom.metrics.k8s.io/v1beta1",
             lambda: isinstance(api.get("/apis/custom.metrics.k8s.io/v1beta1"), dict), timeout=30)
    log(f"metrics chain up in {time.monotonic() - start:.1f}s: prometheus {prom_url}, "
        f"adapter https://127.0.0.1:{ports['adapter']}, APIServices Available")


def cmd_down() -> None:
    if KUBECONFIG.is_file():
        for name in APISERVICES:
            res = kubectl("delete", "apiservice", name, "--ignore-not-found", "--wait=false", "--request-timeout=5s",
                          check=False, timeout=15)
            if res.returncode != 0:
                log(f"could not delete APIService {name} (cluster down?): {res.stderr.strip()[:200]}")
    for comp in ("sync", "adapter", "prometheus"):
        if proc(comp).stop():
            log(f"stopped {comp}")


def cmd_status() -> int:
    ports = load_ports()
    ok = True
    for comp in ("prometheus", "adapter", "sync"):
        pid = proc(comp).pid()
        ok = ok and pid is not None
        where = {"prometheus": f"http://127.0.0.1:{ports.get('prometheus')}",
                 "adapter": f"https://127.0.0.1:{ports.get('adapter')}", "sync": f"every {SYNC_PERIOD:.0f}s"}[comp]
        print(f"{comp:<11} {'running' if pid else 'STOPPED':<8} pid {pid or '-':<8} {where}")
    if KUBECONFIG.is_file():
        try:
            api = Api(KUBECONFIG)
            for name in APISERVICES:
                available, detail = apiservice_available(api, name)
                ok = ok and available
                print(f"apiservice  {name}: {detail}")
            targets = json.loads(TARGETS.read_text()) if TARGETS.exists() else []
            print(f"targets     {len(targets)} pods with prometheus.io/scrape ({TARGETS})")
        except Exception as e:
            ok = False
            print(f"cluster     unreachable: {e}")
    print(f"state       {STATE}")
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "_sync":
        sync_loop()
        return 0
    if argv == ["up"]:
        cmd_up()
        return 0
    if argv == ["down"]:
        cmd_down()
        return 0
    if argv == ["status"]:
        return cmd_status()
    if argv in (["prometheus-url"], ["adapter-url"]):
        comp = argv[0].split("-")[0]
        port = load_ports().get(comp)
        if proc(comp).pid() is None or not port:
            log(f"{comp} is not running; run: tools/localcluster/metrics.sh up")
            return 1
        print(f"{'http' if comp == 'prometheus' else 'https'}://127.0.0.1:{port}")
        return 0
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
