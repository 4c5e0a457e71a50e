#!/usr/bin/env python3
"""The local cluster's metrics chain: Prometheus -> prometheus-adapter -> custom.metrics.k8s.io.

Usage: metrics.py up | down | status | prometheus-url | adapter-url | adapter-remove

Every process is a host process bound to 127.0.0.1 and stopped by the PID it was started with:
- Prometheus 3 built from source by build.sh (Kubernetes service discovery only), scrape interval
  15 s, TSDB under the state dir, retention 2 h. It discovers pods through the API server (the
  cluster's kubeconfig) and scrapes them at <pod IP>:<port>: pod IPs are loopback addresses here
  and podnet.py relays each to the simulator that plays the pod. Its configuration comes from one of
  two monitoring setups, chosen by MONITORING:
  * ``operator`` (default), as kube-prometheus-stack runs it: the real prometheus-operator (built by
    build.sh, CRDs from ../shared/upstream) reconciles the Prometheus object monitoring/kubeinfer
    (metrics/prometheus-object.yaml.in) from the PodMonitors and ServiceMonitors of the cluster and
    writes the scrape config into Secret monitoring/prometheus-kubeinfer; the sync loop plays the
    operator's config-reloader: it runs that config, reloading Prometheus when it changes.
  * ``annotations``, as the community ``prometheus`` chart runs it: its ``kubernetes-pods`` job
    (metrics/prometheus-annotations.yml.in), pods annotated ``prometheus.io/scrape: "true"``.
- prometheus-adapter v0.12.0 (built by build.sh) for the adapter Deployment the cluster holds, with its serving
  certificate being kwokctl's admin certificate (SAN localhost, 127.0.0.1). With ADAPTER=present (the default)
  that Deployment is the real prometheus-adapter chart's (the archive upstream-chart.sh finds, the one
  metrics_adapter installs), installed by ``up`` as Helm release monitoring/prometheus-adapter carrying the release
  label app.kubernetes.io/managed-by=kubeinfer-localcluster, values in adapter_values (--prometheus-url = the host
  Prometheus, --metrics-relist-interval 15s, --metrics-max-age 1m, rules.existing = ConfigMap
  monitoring/prometheus-adapter, made with a placeholder rule when missing). Its Deployment, Service, RBAC and
  APIService v1beta1.custom.metrics.k8s.io are the chart's own; what stays imitated is the pod: kwok simulates it
  and the sync loop runs the host binary in its place, and the APIService is re-pointed to an ExternalName
  Service monitoring/kubeinfer-localcluster-adapter (localhost, port = the host adapter's port).
- the sync loop (``metrics.py _sync``), every 2 s:
  * lists the pods and keeps podnet.py's relays (the pod network) in step with them;
  * with MONITORING=operator, runs the operator's current config (config-reloader);
  * plays the kubelet of the adapter Deployment (find_adapter: another install wins over the harness's release):
    mirrors the key of the ConfigMap its pod template mounts at --config to the adapter's --config file and
    restarts the adapter when its pod template changes (a rollout: metrics_adapter's kubeinfer.io/config-checksum,
    a helm upgrade), or when it died (at most every 5 s);
  * routes the custom metrics APIServices to the host adapter once their own Service would reach the pod.

``up`` is idempotent: running processes with the same arguments are kept, and the helm upgrade is skipped while the
harness's release is deployed from the same chart version with the same values and its objects exist. ``down``
deletes the APIServices first (an unavailable aggregated API breaks discovery for every client), then stops
the processes; the namespace, ConfigMap and Helm release stay (the next ``up`` reuses the rules and upgrades the
release to restore its APIService). ``adapter-remove`` helm-uninstalls the harness's release (found by its label)
and deletes the rules ConfigMap, for tests that start without an adapter.

State in $KWOK_WORKDIR/kubeinfer-$KUBEINFER_CLUSTER/metrics/: ports.json, *.pid, *.log,
prometheus.yml, monitoring (the setup in force), adapter-config.yaml, adapter-values.json, sync-state.json, prometheus-data/,
podnet/ (one relay per pod port). Environment: KUBEINFER_CACHE, KUBEINFER_CLUSTER, KWOK_WORKDIR (as
cluster.sh), MONITORING, ADAPTER (present | absent), HELM_BINARY, PROMETHEUS_ADAPTER_CHART (upstream-chart.sh),
PROMETHEUS_PORT, OPERATOR_PORT and ADAPTER_PORT (default: a free port chosen on the first up, then kept).
Only the Python standard library is used.
"""

from __future__ import annotations

import base64
import fcntl
import gzip
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import podnet
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
NAME = "prometheus-adapter"  # the harness's Helm release, its Deployment/Service (chart fullname) and its rules ConfigMap
# The custom metrics APIServices the sync loop routes: the chart renders only v1beta1; another install may add v1beta2.
APISERVICES = ("v1beta1.custom.metrics.k8s.io", "v1beta2.custom.metrics.k8s.io")
FIELD_MANAGER = "kubeinfer-localcluster-metrics"
HARNESS_MANAGER = "kubeinfer-localcluster"  # app.kubernetes.io/managed-by of the harness's own objects
# The label (helm --labels: release metadata, on the release's storage Secrets) that marks a Helm release as the harness's.
HARNESS_RELEASE_LABEL = ("app.kubernetes.io/managed-by", HARNESS_MANAGER)
ADAPTER_IMAGE = "prometheus-adapter/prometheus-adapter"  # the image the chart and kube-prometheus run
ADAPTER_LOG_LEVEL = 2  # the chart's logLevel (--v); its default 4 would fill adapter.log
# Flags of the Deployment's container the host adapter is started with; the rest (address, port, TLS, the in-cluster
# ServiceAccount) is the host's. See adapter_argv.
ADAPTER_PASSTHROUGH = ("prometheus-url", "metrics-relist-interval", "metrics-max-age", "v")
HOST_SERVICE = "kubeinfer-localcluster-adapter"  # the ExternalName Service the APIServices are re-pointed to
ROUTED_FROM = "kubeinfer.io/localcluster-routed-from"  # on a re-pointed APIService: the Service it names itself


CLUSTER = cluster_name()
CLUSTER_DIR = workdir() / "clusters" / CLUSTER
KUBECONFIG = CLUSTER_DIR / "kubeconfig.yaml"
STATE = workdir() / f"kubeinfer-{CLUSTER}" / "metrics"
KUBECTL = kubectl_binary()
ADAPTER_VERSION = pinned("PROMETHEUS_ADAPTER_VERSION")
ADAPTER_BIN = cache_dir() / f"prometheus-adapter-{ADAPTER_VERSION}" / "adapter"
PROMETHEUS_BIN = cache_dir() / f"prometheus-{pinned('PROMETHEUS_VERSION')}" / "prometheus"
OPERATOR_VERSION = pinned("PROMETHEUS_OPERATOR_VERSION")
OPERATOR_BIN = cache_dir() / f"prometheus-operator-{OPERATOR_VERSION}" / "operator"
HELM_BIN = Path(os.environ.get("HELM_BINARY") or cache_dir() / f"helm-{pinned('HELM_VERSION')}" / "helm")
CHART_VERSION = pinned("PROMETHEUS_ADAPTER_CHART_VERSION")
MONITORING = os.environ.get("MONITORING") or "operator"
SETUPS = ("operator", "annotations")
PROMETHEUS_NAME = "kubeinfer"  # the Prometheus object monitoring/kubeinfer (setup "operator")
CONFIG_SECRET = f"prometheus-{PROMETHEUS_NAME}"  # upstream pkg/prometheus/common.go ConfigSecretName
CONFIG_KEY = "prometheus.yaml.gz"  # upstream pkg/prometheus/common.go ConfigFilename
ADAPTER_CONFIG = STATE / "adapter-config.yaml"
PROMETHEUS_CONFIG = STATE / "prometheus.yml"


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
    for comp, env in (("prometheus", "PROMETHEUS_PORT"), ("operator", "OPERATOR_PORT"), ("adapter", "ADAPTER_PORT")):
        if os.environ.get(env):
            ports[comp] = int(os.environ[env])
        elif not ports.get(comp) or (proc(comp).pid() is None and not port_free(ports[comp])):
            ports[comp] = free_port()
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / "ports.json").write_text(json.dumps(ports) + "\n")
    return ports


def prometheus_argv(ports: dict[str, int]) -> list[str]:
    return [str(PROMETHEUS_BIN), f"--config.file={PROMETHEUS_CONFIG}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
            f"--storage.tsdb.path={STATE / 'prometheus-data'}", f"--storage.tsdb.retention.time={RETENTION}",
            "--web.enable-lifecycle", "--log.level=info"]


def api_server_url() -> str:
    m = re.search(r"^\s*server:\s*(\S+)", KUBECONFIG.read_text(), re.M)
    if not m:
        die(f"no server: line in {KUBECONFIG}")
    return m.group(1)


def operator_argv(ports: dict[str, int]) -> list[str]:
    """The operator out of cluster: kwokctl's admin certificate instead of a service account (its
    --apiserver/--cert-file/--key-file/--ca-file flags, upstream cmd/operator/main.go)."""
    pki = CLUSTER_DIR / "pki"
    return [str(OPERATOR_BIN), f"--apiserver={api_server_url()}", f"--cert-file={pki / 'admin.crt'}",
            f"--key-file={pki / 'admin.key'}", f"--ca-file={pki / 'ca.crt'}",
            f"--web.listen-address=127.0.0.1:{ports['operator']}", "--log-level=info"]


def operator_crds() -> Path:
    """The monitoring.coreos.com CRDs of the operator version built: ../shared/upstream, else the
    operator's own module (example/prometheus-operator-crd, fetched by `go mod download`, the copy a
    user without ../shared would take). Never an imitation."""
    shared = HERE.parent.parent.parent / "shared" / "upstream" / "crds" / f"prometheus-operator-{OPERATOR_VERSION}"
    if shared.is_dir():
        return shared
    res = subprocess.run(["go", "mod", "download", "-json",
                          f"github.com/prometheus-operator/prometheus-operator@{OPERATOR_VERSION}"],
                         capture_output=True, text=True, timeout=600, check=False, cwd="/")
    try:
        module = Path(json.loads(res.stdout)["Dir"]) / "example" / "prometheus-operator-crd"
    except (ValueError, KeyError):
        module = Path("/nonexistent")
    if not module.is_dir():
        die(f"the prometheus-operator {OPERATOR_VERSION} CRDs are neither in {shared} nor obtainable with "
            f"go mod download ({res.stderr.strip()[-300:]})")
    log(f"{shared} is missing; using the CRDs of the operator module, {module}")
    return module


def adapter_argv(ports: dict[str, int], pod: dict[str, Any]) -> list[str]:
    """The real adapter binary, run as the kubelet would run the container of ``pod`` (see adapter_pod).

    From the pod template's args it keeps only what changes what the adapter serves (``ADAPTER_PASSTHROUGH``);
    the address, port and TLS are the host's (127.0.0.1, kwokctl's admin certificate), the three kubeconfigs stand
    for the pod's ServiceAccount, and --config is the file the ConfigMap volume is copied to.
    """
    pki = CLUSTER_DIR / "pki"
    tls = ([f"--tls-cert-file={pki / 'admin.crt'}", f"--tls-private-key-file={pki / 'admin.key'}"]
           if (pki / "admin.crt").is_file() else [f"--cert-dir={STATE / 'adapter-certs'}"])
    passed = [f"--{flag}={value}" for flag, value in pod["flags"].items()]
    return [str(ADAPTER_BIN), "--bind-address=127.0.0.1", f"--secure-port={ports['adapter']}", *tls,
            f"--lister-kubeconfig={KUBECONFIG}", f"--authentication-kubeconfig={KUBECONFIG}",
            f"--authorization-kubeconfig={KUBECONFIG}", *passed, f"--config={ADAPTER_CONFIG}"]


def restart_adapter(reason: str, argv: list[str]) -> None:
    with locked():
        proc("adapter").stop()
        pid = proc("adapter").start(argv)
    log(f"adapter started (pid {pid}, https://127.0.0.1:{load_ports().get('adapter')}): {reason}")


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
    values = {"SCRAPE_INTERVAL": SCRAPE_INTERVAL, "RELIST_INTERVAL": RELIST_INTERVAL, "KUBECONFIG": str(KUBECONFIG),
              "ADAPTER_PORT": str(ports["adapter"]), "ADAPTER_VERSION": ADAPTER_VERSION,
              "PROMETHEUS_NAME": PROMETHEUS_NAME, "PROMETHEUS_RELEASE": pinned("PROMETHEUS_RELEASE"),
              "PROMETHEUS_URL": f"http://127.0.0.1:{ports['prometheus']}", "METRICS_MAX_AGE": METRICS_MAX_AGE}
    return re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], text)


# --- Prometheus' configuration and the pod network -------------------------------------------

def from_operator(generated: str) -> str:
    """The operator's generated config, made runnable by a host process. Two changes, no others:
    - ``$(POD_NAME)`` (the replica external label) and ``$(SHARD)`` (the shard each job keeps, a
      ``keep`` on ``__tmp_current_shard``) are expanded as the config-reloader does from the pod's
      environment (upstream cmd/prometheus-config-reloader; pkg/prometheus/promcfg.go writes
      ``$(operator.ShardEnvVar)``, 0 for the first shard); any other ``$(VAR)`` fails here, loudly;
    - every ``kubernetes_sd_configs`` entry gets ``kubeconfig_file``: in a pod, Prometheus uses the
      in-cluster service account when no api_server is given (upstream pkg/prometheus/promcfg.go
      generateK8SSDConfig writes ``role`` first, then namespaces/selectors).
    What this lets slip: RBAC of the Prometheus service account (the kubeconfig is the admin's)."""
    env = {"POD_NAME": f"prometheus-{PROMETHEUS_NAME}-0", "SHARD": "0"}
    unknown = sorted(set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", generated)) - set(env))
    if unknown:
        raise RuntimeError(f"the operator's config uses environment variables the harness does not set: {unknown}")
    text = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], generated)
    return re.sub(r"^(\s*)- role: (\w+)$", lambda m: f"{m.group(0)}\n{m.group(1)}  kubeconfig_file: {KUBECONFIG}",
                  text, flags=re.M)


def prometheus_config(api: Api, ports: dict[str, int]) -> str | None:
    """The configuration the setup in force wants Prometheus to run (None: the operator has not written it yet)."""
    if MONITORING == "annotations":
        return render("prometheus-annotations.yml.in", ports)
    secret = api.get(f"/api/v1/namespaces/{NS}/secrets/{CONFIG_SECRET}")
    data = ((secret or {}).get("data") or {}).get(CONFIG_KEY)
    if not data:
        return None
    return from_operator(gzip.decompress(base64.b64decode(data)).decode())


def reload_prometheus(ports: dict[str, int]) -> None:
    url = f"http://127.0.0.1:{ports['prometheus']}/-/reload"
    urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10).close()


def sync_prometheus(api: Api, ports: dict[str, int]) -> str:
    """Write the wanted config and reload Prometheus if it changed; returns what happened ('' if nothing)."""
    config = prometheus_config(api, ports)
    if config is None or not write_if_changed(PROMETHEUS_CONFIG, config):
        return ""
    if proc("prometheus").pid() is not None:
        reload_prometheus(ports)
    return f"prometheus config ({MONITORING}) changed (sha256 {hashlib.sha256(config.encode()).hexdigest()[:12]}), reloaded"


def sync_pods(api: Api) -> list[str]:
    pods = api.get("/api/v1/pods?resourceVersion=0")["items"]
    return podnet.sync(pods, STATE) + sync_forwards(api, pods)


PORTFORWARDS = "/apis/kwok.x-k8s.io/v1alpha1"


def sync_forwards(api: Api, pods: list[dict[str, Any]]) -> list[str]:
    """Keep a kwok PortForward per opted-in pod (podnet.wanted_forwards); never touch one the loop did not create."""
    want = podnet.wanted_forwards(pods)
    have = {(f["metadata"]["namespace"], f["metadata"]["name"]): f
            for f in api.items(f"{PORTFORWARDS}/portforwards?resourceVersion=0")}
    changes = []
    for (ns, name), forward in sorted(have.items()):
        own = (forward["metadata"].get("labels") or {}).get(podnet.OWNED_LABEL) == "true"
        if own and (ns, name) not in want:
            api.call("DELETE", f"{PORTFORWARDS}/namespaces/{ns}/portforwards/{name}")
            changes.append(f"port-forward {ns}/{name} removed")
    for (ns, name), backend in sorted(want.items()):
        current = have.get((ns, name))
        body = podnet.forward_object(ns, name, backend)
        if current is None:
            api.call("POST", f"{PORTFORWARDS}/namespaces/{ns}/portforwards", body, content_type="application/json")
            changes.append(f"port-forward {ns}/{name} -> 127.0.0.1:{backend}")
        elif (current["metadata"].get("labels") or {}).get(podnet.OWNED_LABEL) == "true" and current.get("spec") != body["spec"]:
            api.call("PATCH", f"{PORTFORWARDS}/namespaces/{ns}/portforwards/{name}", {"spec": body["spec"]})
            changes.append(f"port-forward {ns}/{name} -> 127.0.0.1:{backend} (updated)")
    return changes


# --- the sync loop ---------------------------------------------------------------------------

# --- the adapter: the harness is the kubelet of whichever adapter Deployment exists --------------

def flag(args: list[str], name: str) -> str | None:
    """``--name=value`` or ``--name value`` in a container's command line (the last one wins)."""
    found = None
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            found = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(args):
            found = args[i + 1]
    return found


def helm_owner(obj: dict[str, Any] | None) -> tuple[str, str] | None:
    """The Helm release (namespace, name) that made ``obj``: Helm 3 annotates every object it renders."""
    annotations = (obj or {}).get("metadata", {}).get("annotations") or {}
    if annotations.get("meta.helm.sh/release-name") and annotations.get("meta.helm.sh/release-namespace"):
        return annotations["meta.helm.sh/release-namespace"], annotations["meta.helm.sh/release-name"]
    return None


def harness_releases(api: Api) -> set[tuple[str, str]]:
    """The Helm releases (namespace, name) the harness installed: helm --labels puts the release's labels on its storage
    Secrets (owner=helm, name=<release>; helm.sh/helm/v3 pkg/storage/driver/secrets.go), not on the objects it renders."""
    selector = urllib.parse.quote(f"owner=helm,{HARNESS_RELEASE_LABEL[0]}={HARNESS_RELEASE_LABEL[1]}")
    return {(s["metadata"]["namespace"], (s["metadata"].get("labels") or {}).get("name", ""))
            for s in api.items(f"/api/v1/secrets?labelSelector={selector}&resourceVersion=0")}


def harness_owned(obj: dict[str, Any] | None, releases: set[tuple[str, str]] | None = None) -> bool:
    """An object of the harness: its own label, or rendered by one of the harness's Helm ``releases``."""
    if ((obj or {}).get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/managed-by") == HARNESS_MANAGER:
        return True
    return helm_owner(obj) in (releases or set())


def adapter_container(dep: dict[str, Any]) -> dict[str, Any] | None:
    """The container running the prometheus-adapter image (chart, kube-prometheus and the harness's own use it)."""
    containers = (((dep.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    return next((c for c in containers if ADAPTER_IMAGE in str(c.get("image") or "")), None)


def find_adapter(api: Api, releases: set[tuple[str, str]] | None = None) -> dict[str, Any] | None:
    """The adapter Deployment the harness runs: one whose pod template runs the prometheus-adapter image. Another
    install (metrics_adapter's chart release, kube-prometheus's) wins over the harness's own chart release; the harness
    runs one. ``releases``: harness_releases(api), read when not given."""
    found = [d for d in api.items("/apis/apps/v1/deployments") if adapter_container(d)]
    if not found:
        return None
    own = harness_releases(api) if releases is None else releases
    found.sort(key=lambda d: (harness_owned(d, own), d["metadata"]["namespace"], d["metadata"]["name"]))
    return found[0]


def adapter_pod(dep: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """What the kubelet would run for ``dep``: the ConfigMap and key its ``--config`` file comes from (the volume
    mounted at that path), the flags passed through, its --secure-port and container ports; or None and why not.

    The layout of a ConfigMap volume (a mount holding the path, or ``subPath``; ``items`` renaming keys) follows
    k8s.io/kubernetes pkg/volume/configmap and the atomic writer; the ``--config`` flag is the adapter's own
    (sigs.k8s.io/prometheus-adapter cmd/adapter/adapter.go, AdapterConfigFile).
    """
    meta = dep["metadata"]
    where = f"Deployment {meta['namespace']}/{meta['name']}"
    pod = (dep.get("spec") or {}).get("template") or {}
    container = adapter_container(dep) or {}
    args = [str(a) for a in list(container.get("command") or []) + list(container.get("args") or [])]
    if (dep.get("spec") or {}).get("replicas", 1) == 0:
        return None, f"{where} has 0 replicas"
    path = flag(args, "config")
    if not path:
        return None, f"{where}: the adapter container passes no --config"
    mounts = [m for m in container.get("volumeMounts") or []
              if (m.get("subPath") and path == m["mountPath"].rstrip("/"))
              or (not m.get("subPath") and path.startswith(m["mountPath"].rstrip("/") + "/"))]
    if not mounts:
        return None, f"{where}: --config={path} is on no mounted volume"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    rel = mount.get("subPath") or path[len(mount["mountPath"].rstrip("/")) + 1:]
    volume = next((v for v in (pod.get("spec") or {}).get("volumes") or [] if v.get("name") == mount["name"]), {})
    source = volume.get("configMap")
    if not source:
        return None, f"{where}: --config={path} is on volume {mount['name']}, which is no ConfigMap volume"
    key = next((i["key"] for i in source.get("items") or [] if i.get("path") == rel), None if source.get("items") else rel)
    if key is None:
        return None, f"{where}: volume {mount['name']} maps no key of ConfigMap {source['name']} to {rel}"
    flags = {name: flag(args, name) for name in ADAPTER_PASSTHROUGH if flag(args, name) is not None}
    url = urllib.parse.urlsplit(flags.get("prometheus-url") or "")
    if not url.hostname or not (url.hostname == "localhost" or url.hostname.startswith("127.")):
        # Nothing of ours may send traffic off loopback: an adapter pointed at an in-cluster Prometheus address is not
        # started here, so the metric is not served, as it would not be where that address does not answer.
        return None, f"{where}: --prometheus-url={flags.get('prometheus-url')} is not a loopback address (set the Prometheus URL to {prometheus_url()})"
    ports = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
    return {"namespace": meta["namespace"], "name": meta["name"], "uid": meta.get("uid"), "configmap": source["name"], "key": key,
            "optional": bool(source.get("optional")), "flags": flags, "secure_port": flag(args, "secure-port") or "443",
            "ports": ports, "labels": (pod.get("metadata") or {}).get("labels") or {},
            "template": hashlib.sha256(json.dumps(pod, sort_keys=True).encode()).hexdigest()}, ""


def service_problem(api: Api, ref: dict[str, Any], pod: dict[str, Any]) -> str | None:
    """What would stop the aggregator from reaching ``pod`` through the Service ``ref`` of an APIService on a real
    cluster: no such Service, no port ``ref.port`` (default 443), a selector that misses the pod, or a targetPort that
    is not the container port the adapter listens on (--secure-port). The harness cannot route the Service itself."""
    where = f"Service {ref.get('namespace')}/{ref.get('name')}"
    svc = api.get(f"/api/v1/namespaces/{ref.get('namespace')}/services/{ref.get('name')}")
    if svc is None:
        return f"{where} does not exist"
    spec = svc.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return f"{where} is an ExternalName Service; only the harness's own may be"
    port = next((p for p in spec.get("ports") or [] if int(p.get("port", 0)) == int(ref.get("port") or 443)), None)
    if port is None:
        return f"{where} has no port {ref.get('port') or 443}"
    selector = spec.get("selector") or {}
    if not selector or any(pod["labels"].get(k) != v for k, v in selector.items()):
        return f"{where} selects {selector}, not the pods of Deployment {pod['namespace']}/{pod['name']} ({pod['labels']})"
    target = port.get("targetPort", port["port"])
    number = pod["ports"].get(target) if isinstance(target, str) else target
    if number is None:
        return f"{where} targets port {target!r}, which the adapter container does not declare ({pod['ports']})"
    if str(number) != str(pod["secure_port"]):
        return f"{where} targets container port {number}, but the adapter listens on --secure-port={pod['secure_port']}"
    return None


def route_apiservices(api: Api, pod: dict[str, Any] | None, ports: dict[str, int], notes: dict[str, str]) -> None:
    """Point the custom metrics APIServices at the host adapter: nothing routes ClusterIPs here (no kube-proxy) and
    EndpointSlices refuse loopback addresses, so each APIService whose Service would reach the adapter pod on a real
    cluster (service_problem) is re-pointed to the harness's ExternalName Service -> localhost:<adapter port>, its own
    Service kept in the annotation ROUTED_FROM. A helm upgrade that restores spec.service is re-pointed the next tick;
    an APIService whose Service would not reach the pod is pointed back at it, and stays unavailable."""
    for name in APISERVICES:
        obj = api.get(f"/apis/apiregistration.k8s.io/v1/apiservices/{name}")
        if obj is None:
            continue
        ref = service_ref((obj.get("spec") or {}).get("service") or {})
        annotations = obj["metadata"].get("annotations") or {}
        own = json.loads(annotations[ROUTED_FROM]) if ref.get("name") == HOST_SERVICE and annotations.get(ROUTED_FROM) else ref
        problem = "no adapter runs" if pod is None else service_problem(api, own, pod)
        want = own if problem else {"name": HOST_SERVICE, "namespace": own.get("namespace"), "port": ports["adapter"]}
        if problem and notes.get(name) != problem:
            log(f"APIService {name} not routed to the host adapter: {problem}")
        notes[name] = problem or ""
        if not problem:
            ensure_host_service(api, str(own.get("namespace")), ports["adapter"])
        if ref != want:
            api.call("PATCH", f"/apis/apiregistration.k8s.io/v1/apiservices/{name}",
                     {"metadata": {"annotations": {ROUTED_FROM: None if problem else json.dumps(own, sort_keys=True)}},
                      "spec": {"service": want}})
            log(f"APIService {name} -> Service {want.get('namespace')}/{want.get('name')}:{want.get('port')}"
                f"{'' if problem else ' (harness ExternalName to the host adapter; its own: ' + json.dumps(own, sort_keys=True) + ')'}")


def service_ref(ref: dict[str, Any]) -> dict[str, Any]:
    """An APIService's spec.service with its default port (443, k8s.io/kube-aggregator apis/apiregistration/v1 defaults)."""
    return {"name": ref.get("name"), "namespace": ref.get("namespace"), "port": int(ref.get("port") or 443)}


def prometheus_url() -> str:
    """Where the harness's Prometheus answers (the adapter's --prometheus-url must be it)."""
    return f"http://127.0.0.1:{load_ports().get('prometheus')}"


def ensure_host_service(api: Api, namespace: str, port: int) -> None:
    """The harness's ExternalName Service the aggregator resolves to https://localhost:<port> (k8s.io/apiserver
    pkg/util/proxy ResolveCluster: an ExternalName Service is dialled at externalName:port)."""
    path = f"/api/v1/namespaces/{namespace}/services/{HOST_SERVICE}"
    want = {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": HOST_SERVICE, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": HARNESS_MANAGER}},
            "spec": {"type": "ExternalName", "externalName": "localhost",
                     "ports": [{"name": "https", "protocol": "TCP", "port": port, "targetPort": port}]}}
    svc = api.get(path)
    if svc is None or (svc.get("spec") or {}).get("ports", [{}])[0].get("port") != port:
        api.call("PATCH", path + f"?fieldManager={FIELD_MANAGER}&force=true", want, content_type="application/apply-patch+yaml")


def sync_adapter(api: Api, state: dict[str, Any], notes: dict[str, str], last_start: float) -> float:
    """One kubelet pass for the adapter: copy the mounted ConfigMap to the --config file (the adapter reads it only at
    start, so a change alone restarts nothing, as on a real cluster); start the adapter when its Deployment appears,
    its pod template changes (a rollout: the chart's checksum/config, metrics_adapter's kubeinfer.io/config-checksum,
    a helm upgrade's new args) or it died; stop it when the Deployment goes. Then route the APIServices.
    Returns the time of the last start."""
    ports = load_ports()
    dep = find_adapter(api)
    pod, why = adapter_pod(dep) if dep else (None, "no adapter Deployment")
    text = None
    if pod is not None:
        cm = api.get(f"/api/v1/namespaces/{pod['namespace']}/configmaps/{pod['configmap']}")
        text = ((cm or {}).get("data") or {}).get(pod["key"])
        if cm is None and not pod["optional"]:
            pod, why = None, f"ConfigMap {pod['namespace']}/{pod['configmap']} does not exist (a kubelet would not start the pod)"
    if pod is None:
        if notes.get("pod") != why:
            log(f"no adapter to run: {why}")
            notes["pod"] = why
        if proc("adapter").stop():
            log("adapter stopped")
        state.pop("pod", None)
    else:
        notes["pod"] = ""
        write_if_changed(ADAPTER_CONFIG, text if text is not None else "")
        identity = {k: pod[k] for k in ("namespace", "name", "uid", "template")}
        argv = adapter_argv(ports, pod)
        reason = None
        if state.get("pod") != identity:
            before = state.get("pod") or {}
            reason = (f"Deployment {pod['namespace']}/{pod['name']} "
                      f"{'pod template changed' if before.get('uid') == pod['uid'] else 'appeared'}; config from ConfigMap "
                      f"{pod['configmap']} key {pod['key']} (sha256 {hashlib.sha256((text or '').encode()).hexdigest()[:12]})")
        elif proc("adapter").argv() != argv and (proc("adapter").pid() is not None or time.monotonic() - last_start > ADAPTER_RESTART_BACKOFF):
            tail = (STATE / "adapter.log").read_text(errors="replace").strip().splitlines()[-1:] if (STATE / "adapter.log").exists() else []
            reason = ("its arguments changed" if proc("adapter").pid() is not None
                      else f"it was not running (last log line: {tail[0][:300] if tail else '-'})")
        if reason:
            restart_adapter(reason, argv)
            last_start = time.monotonic()
            state["pod"] = identity
            (STATE / "sync-state.json").write_text(json.dumps(state) + "\n")
    route_apiservices(api, pod, ports, notes)
    return last_start


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
    notes: dict[str, str] = {}
    log(f"sync loop started (pid {me}, every {SYNC_PERIOD:.0f}s)")
    while True:
        tick = time.monotonic()
        if proc("sync").pid() != me:
            log("sync.pid is gone or names another process; exiting")
            return
        try:
            for change in sync_pods(api):
                log(change)
            what = sync_prometheus(api, load_ports())
            if what:
                log(what)
            last_start = sync_adapter(api, state, notes, last_start)
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


def start_operator(api: Api, ports: dict[str, int]) -> None:
    """Setup "operator": the real CRDs, the operator, the Prometheus object, then its first config."""
    crds = operator_crds()
    kubectl("apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}", "-f", str(crds), timeout=120)
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds), timeout=70)
    if proc("operator").argv() != operator_argv(ports):
        proc("operator").stop()
        log(f"starting prometheus-operator {OPERATOR_VERSION} (pid {proc('operator').start(operator_argv(ports))})")
    kubectl("apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}", "-f", "-",
            stdin=render("prometheus-object.yaml.in", ports))
    wait_for(f"the operator's config Secret {NS}/{CONFIG_SECRET}",
             lambda: prometheus_config(api, ports) is not None or proc("operator").pid() is None, timeout=90)
    if proc("operator").pid() is None:
        die(f"prometheus-operator exited; its log: {STATE / 'operator.log'}")


def stop_operator() -> None:
    """Setup "annotations": no operator, and no Prometheus object left for a later operator to act on."""
    if proc("operator").stop():
        log("stopped prometheus-operator")
    kubectl("delete", "prometheuses.monitoring.coreos.com", PROMETHEUS_NAME, "-n", NS, "--ignore-not-found",
            "--wait=false", check=False)


def helm(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run([str(HELM_BIN), "--kubeconfig", str(KUBECONFIG), *args], capture_output=True, text=True,
                         timeout=timeout, check=False)
    if check and res.returncode != 0:
        die(f"helm {' '.join(args)} failed: {res.stderr.strip()[-1500:]}")
    return res


def chart_path() -> str:
    """The published prometheus-adapter chart archive metrics_adapter installs too (upstream-chart.sh checks its sha256)."""
    res = subprocess.run([str(HERE / "upstream-chart.sh"), "prometheus-adapter"], capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        die(res.stderr.strip())
    return res.stdout.strip()


def adapter_values(ports: dict[str, int]) -> dict[str, Any]:
    """The harness release's values; each name is one of the chart's values.yaml (chart 5.3.0), each rendered by its
    templates/deployment.yaml into the adapter container's args, nodeSelector and config volume:
    - prometheus.url + prometheus.port -> --prometheus-url=http://127.0.0.1:<port> (the host Prometheus);
    - metricsRelistInterval -> --metrics-relist-interval; logLevel -> --v;
    - extraArguments -> appended args: --metrics-max-age (the adapter's default is the relist interval);
    - rules.existing -> the config volume's ConfigMap (the chart then renders none of its own, templates/configmap.yaml);
      rules.default stays true so that templates/custom-metrics-apiservice.yaml renders the APIService;
    - nodeSelector: the CPU pool's role label (cluster.sh scale_pool), where kwok schedules the pod."""
    return {"prometheus": {"url": "http://127.0.0.1", "port": ports["prometheus"]},
            "metricsRelistInterval": RELIST_INTERVAL, "logLevel": ADAPTER_LOG_LEVEL,
            "extraArguments": [f"--metrics-max-age={METRICS_MAX_AGE}"],
            "rules": {"default": True, "existing": NAME},
            "nodeSelector": {"node-role.kubernetes.io/cpu-worker": ""}}


def helm_release_row(namespace: str, name: str) -> dict[str, Any] | None:
    rows = json.loads(helm("list", "-n", namespace, "--all", "--filter", f"^{re.escape(name)}$", "-o", "json").stdout or "[]")
    return rows[0] if rows else None


def remove_stand_in(api: Api) -> None:
    """The objects of the harness's former chart-less stand-in (Deployment/Service monitoring/prometheus-adapter and both
    APIServices, labelled managed-by=kubeinfer-localcluster), left by an older harness: Helm would refuse to adopt them."""
    for name in APISERVICES:
        obj = api.get(f"/apis/apiregistration.k8s.io/v1/apiservices/{name}")
        if obj is not None and harness_owned(obj) and helm_owner(obj) is None:
            kubectl("delete", "apiservice", name, "--ignore-not-found", "--wait=true")
            log(f"deleted the former stand-in's APIService {name}")
    for kind, path in (("deployment", f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}"), ("service", f"/api/v1/namespaces/{NS}/services/{NAME}")):
        obj = api.get(path)
        if obj is not None and harness_owned(obj) and helm_owner(obj) is None:
            kubectl("delete", kind, NAME, "-n", NS, "--ignore-not-found", "--wait=true")
            log(f"deleted the former stand-in's {kind} {NS}/{NAME}")


def install_chart(api: Api, ports: dict[str, int]) -> None:
    """The harness's adapter: the real chart as Helm release monitoring/prometheus-adapter, marked the harness's by its
    release label. The helm upgrade is skipped when the release is deployed from this chart version with these values
    and its Deployment, Service and APIService exist (``down`` deletes the APIService: the next ``up`` restores it)."""
    remove_stand_in(api)
    if api.get(f"/api/v1/namespaces/{NS}/configmaps/{NAME}") is None:  # created once: its rules belong to metrics_adapter
        kubectl("create", f"--field-manager={FIELD_MANAGER}", "-f", "-", stdin=render("adapter-configmap.yaml.in", ports))
    want = adapter_values(ports)
    row = helm_release_row(NS, NAME)
    why = ""
    if row is None:
        why = "not installed"
    elif row.get("status") != "deployed":
        why = f"status {row.get('status')}"
    elif row.get("chart") != f"prometheus-adapter-{CHART_VERSION}":
        why = f"chart {row.get('chart')}, not prometheus-adapter-{CHART_VERSION}"
    elif json.loads(helm("get", "values", NAME, "-n", NS, "-o", "json").stdout or "{}") != want:
        why = "values changed"
    else:
        missing = [what for what, path in (("Deployment", f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}"),
                                           ("Service", f"/api/v1/namespaces/{NS}/services/{NAME}"),
                                           ("APIService", f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICES[0]}"))
                   if api.get(path) is None]
        why = f"{', '.join(missing)} missing" if missing else ""
    if row is not None and not why:
        log(f"Helm release {NS}/{NAME} (revision {row['revision']}, {row['chart']}) is up to date; no helm upgrade")
        return
    values = STATE / "adapter-values.json"
    values.write_text(json.dumps(want, indent=2) + "\n")
    start = time.monotonic()
    helm("upgrade", "--install", NAME, chart_path(), "-n", NS, "--reset-values", "-f", str(values),
         "--labels", f"{HARNESS_RELEASE_LABEL[0]}={HARNESS_RELEASE_LABEL[1]}", "--wait", "--timeout", "120s", timeout=180)
    row = helm_release_row(NS, NAME) or {}
    log(f"helm upgrade --install {NAME} ({why}): revision {row.get('revision')}, {row.get('chart')}, "
        f"{row.get('status')} in {time.monotonic() - start:.1f}s")


def cmd_up() -> None:
    if MONITORING not in SETUPS:
        die(f"MONITORING={MONITORING!r}: use one of {', '.join(SETUPS)}")
    for f in (KUBECTL, ADAPTER_BIN, PROMETHEUS_BIN, OPERATOR_BIN):
        if not f.is_file():
            die(f"{f} is missing; run tools/localcluster/build.sh")
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
        for comp in ("sync", "adapter", "prometheus", "operator"):
            proc(comp).stop()
        podnet.stop_all(STATE)
    (STATE / "cluster-id").write_text(cluster_id)
    ports = choose_ports()

    # The namespace first: the operator's objects and the adapter's live in it.
    kubectl("apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}", "-f", "-",
            stdin=render("cluster-objects.yaml.in", ports))

    # The pod network, then the setup's configuration, then Prometheus on it.
    sync_pods(api)
    if MONITORING == "operator":
        start_operator(api, ports)
    else:
        stop_operator()
    (STATE / "monitoring").write_text(MONITORING + "\n")
    changed = write_if_changed(PROMETHEUS_CONFIG, prometheus_config(api, ports) or "")
    prom_url = f"http://127.0.0.1:{ports['prometheus']}"
    if proc("prometheus").argv() != prometheus_argv(ports):
        proc("prometheus").stop()
        log(f"starting prometheus {pinned('PROMETHEUS_RELEASE')} on {prom_url} ({MONITORING}) "
            f"(pid {proc('prometheus').start(prometheus_argv(ports))})")
    elif changed:
        reload_prometheus(ports)
        log(f"prometheus configuration ({MONITORING}) reloaded")
    wait_for("prometheus /-/ready", lambda: proc("prometheus").pid() is not None and http_ok(f"{prom_url}/-/ready"))

    # The adapter: the harness's own chart release (unless ADAPTER=absent, or another adapter is installed, e.g.
    # metrics_adapter's), then one kubelet pass (start it, route the APIService) before the sync loop takes over.
    if os.environ.get("ADAPTER", "present") == "absent":
        log("ADAPTER=absent: no harness adapter release (the harness runs whichever adapter Deployment appears)")
    else:
        releases = harness_releases(api)
        other = find_adapter(api, releases)
        row = helm_release_row(NS, NAME)
        if other is not None and not harness_owned(other, releases):
            log(f"adapter Deployment {other['metadata']['namespace']}/{other['metadata']['name']} is installed; no harness release")
        elif row is not None and (NS, NAME) not in releases:
            log(f"Helm release {NS}/{NAME} exists and is not the harness's (no release label {'='.join(HARNESS_RELEASE_LABEL)}); "
                "left alone")
        else:
            install_chart(api, ports)
    state = load_sync_state()
    notes: dict[str, str] = {}
    sync_adapter(api, state, notes, 0.0)
    # The sync loop reads MONITORING from the environment it is started with: a switch restarts it.
    if proc("sync").pid() is not None and (STATE / "sync.monitoring").is_file() \
            and (STATE / "sync.monitoring").read_text().strip() != MONITORING:
        proc("sync").stop()
    (STATE / "sync.monitoring").write_text(MONITORING + "\n")
    if proc("sync").pid() is None:
        log(f"starting the sync loop (pid {proc('sync').start([sys.executable, str(Path(__file__).resolve()), '_sync', str(STATE)])})")

    present = [n for n in APISERVICES if api.get(f"/apis/apiregistration.k8s.io/v1/apiservices/{n}") is not None]
    if present:
        kubectl("wait", "--for=condition=Available", "--timeout=90s", *(f"apiservice/{n}" for n in present), timeout=100)
        wait_for("GET /apis/custom.metrics.k8s.io/v1beta1",
                 lambda: isinstance(api.get("/apis/custom.metrics.k8s.io/v1beta1"), dict), timeout=30)
    log(f"metrics chain up in {time.monotonic() - start:.1f}s ({MONITORING}): prometheus {prom_url}, "
        f"adapter {'https://127.0.0.1:' + str(ports['adapter']) if proc('adapter').pid() else 'not running (' + notes.get('pod', '') + ')'}, "
        f"APIServices {', '.join(present) + ' Available' if present else 'none'}")


def cmd_adapter_remove() -> None:
    """Remove the harness's adapter: helm uninstall of every release carrying the harness's release label, then its rules
    ConfigMap and the ExternalName Service (and a former stand-in's objects), so that a test starts from a cluster without
    an adapter; the sync loop then stops the host adapter. `up` restores them."""
    api = Api(KUBECONFIG)
    for namespace, release in sorted(harness_releases(api)):
        helm("uninstall", release, "-n", namespace, "--wait", "--timeout", "120s", timeout=180)
        log(f"helm uninstall {namespace}/{release} (the harness's release)")
    remove_stand_in(api)
    for kind, name in (("configmap", NAME), ("service", HOST_SERVICE)):
        obj = api.get(f"/api/v1/namespaces/{NS}/{kind}s/{name}")
        # The rules ConfigMap is metrics_adapter's once made, so it carries no harness label: it goes unless Helm owns it.
        if obj is not None and (harness_owned(obj) or (kind == "configmap" and helm_owner(obj) is None)):
            kubectl("delete", kind, name, "-n", NS, "--ignore-not-found", "--wait=true")
    sync_adapter(api, load_sync_state(), {}, 0.0)
    log("harness adapter removed")


def cmd_down() -> None:
    if KUBECONFIG.is_file():
        for name in APISERVICES:
            res = kubectl("delete", "apiservice", name, "--ignore-not-found", "--wait=false", "--request-timeout=5s",
                          check=False, timeout=15)
            if res.returncode != 0:
                log(f"could not delete APIService {name} (cluster down?): {res.stderr.strip()[:200]}")
    for comp in ("sync", "adapter", "prometheus", "operator"):
        if proc(comp).stop():
            log(f"stopped {comp}")
    relays = podnet.stop_all(STATE)
    if relays:
        log(f"stopped {relays} pod network relays")


def cmd_status() -> int:
    ports = load_ports()
    ok = True
    setup = (STATE / "monitoring").read_text().strip() if (STATE / "monitoring").is_file() else "-"
    print(f"monitoring  {setup}")
    for comp in ("prometheus", "operator", "adapter", "sync"):
        pid = proc(comp).pid()
        if comp == "operator" and setup != "operator":
            continue
        ok = ok and (pid is not None or comp == "adapter")
        where = {"prometheus": f"http://127.0.0.1:{ports.get('prometheus')}", "operator": f"http://127.0.0.1:{ports.get('operator')}",
                 "adapter": f"https://127.0.0.1:{ports.get('adapter')}", "sync": f"every {SYNC_PERIOD:.0f}s"}[comp]
        print(f"{comp:<11} {'running' if pid else 'STOPPED':<8} pid {pid or '-':<8} {where}")
    if KUBECONFIG.is_file():
        try:
            api = Api(KUBECONFIG)
            dep = find_adapter(api)
            pod, why = adapter_pod(dep) if dep else (None, "no adapter Deployment")
            print(f"adapter pod {pod['namespace'] + '/' + pod['name'] + ' (ConfigMap ' + pod['configmap'] + ' key ' + pod['key'] + ')' if pod else why}")
            for name in APISERVICES:
                obj = api.get(f"/apis/apiregistration.k8s.io/v1/apiservices/{name}")
                if obj is None:
                    print(f"apiservice  {name}: none")
                    continue
                available, detail = apiservice_available(api, name)
                ok = ok and available
                ref = service_ref(((obj or {}).get("spec") or {}).get("service") or {})
                print(f"apiservice  {name}: {detail} -> Service {ref['namespace']}/{ref['name']}:{ref['port']}")
            relays = sorted(d.name for d in (STATE / "podnet").iterdir()) if (STATE / "podnet").is_dir() else []
            print(f"pod network {len(relays)} relays ({STATE / 'podnet'})")
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
    if argv == ["adapter-remove"]:
        cmd_adapter_remove()
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
