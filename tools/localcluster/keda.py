#!/usr/bin/env python3
"""KEDA on the local cluster: the real operator, metrics API server and admission webhooks as host processes.

Usage: keda.py up | down | status

Started only by the tests that need it (tests/integration/test_keda.py, ``make test-keda``), never by ``make demo``
or ``make test``: building KEDA would push a fresh ``.ci/run`` past its budget (see README.md).

- The binaries: KEDA (``github.com/kedacore/keda/v2``, KEDA_VERSION in versions.env) built by build.sh from its
  own module: ``keda`` (cmd/operator), ``keda-adapter`` (cmd/adapter, the metrics API server) and
  ``keda-admission-webhooks`` (cmd/webhooks).
- The CRDs: the six keda.sh and eventing.keda.sh CRDs of that version, unmodified, from
  ``../shared/upstream/crds/keda-<version>/`` next to the checkout, else from the KEDA module build.sh fetched
  (``config/crd/bases``, the same files, as a user gets them with ``go mod download``). Neither: ``up`` fails.
- TLS: one CA and one certificate (openssl) in ``certs/`` (``ca.crt``, ``tls.crt``, ``tls.key``), what KEDA's own
  cert rotation would keep in Secret ``kedaorg-certs`` (pkg/certificates): the operator's gRPC metrics service and
  the metrics API server authenticate each other with it (mTLS, pkg/metricsservice/utils/tls.go), and it serves
  the metrics API and the webhooks. Its SANs: 127.0.0.1, localhost and the three KEDA Service names.
- The operator runs on the host; all its listeners take an address flag (127.0.0.1). The metrics API server always
  opens its own /metrics server on every address (``RunMetricsServer`` in cmd/adapter/main.go listens on
  ``:<--port>``) and the webhook server has no address flag (cmd/webhooks/main.go), so those two run each in a
  private network namespace (``unshare --net``, as sim.py runs the simulator) whose only interface is its own
  loopback, joined to the host by socat relays over Unix sockets: outwards to the API server (and, for the metrics
  API server, to the operator's gRPC port), inwards to its serving port. Nothing listens outside 127.0.0.1.
- Cluster objects (server-side apply, field manager kubeinfer-localcluster-keda): Namespace ``keda``; Service
  ``keda/keda-metrics-apiserver`` (ExternalName localhost: Endpoints refuse loopback) behind APIService
  ``v1beta1.external.metrics.k8s.io`` with the CA as caBundle; ValidatingWebhookConfiguration ``keda-admission``
  read from KEDA's own ``config/webhooks/validation_webhooks.yaml`` with each ``clientConfig.service`` replaced by
  ``url: https://127.0.0.1:<port><path>`` and the CA (what the operator's cert rotation patches in a cluster).

``down`` deletes the APIService and the webhook configuration first (an unavailable aggregated API breaks
discovery, a dead webhook would only slow writes: its failurePolicy is Ignore), then stops the processes. The
CRDs stay (deleting them would delete every ScaledObject). State in
``$KWOK_WORKDIR/kubeinfer-$KUBEINFER_CLUSTER/keda/``: ``*.pid``, ``*.log``, ``ports.json``, ``certs/``, ``sock/``.
Environment: KUBEINFER_CACHE, KUBEINFER_CLUSTER, KWOK_WORKDIR (as cluster.sh). Standard library only.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from hostproc import HostProcess, cache_dir, cluster_name, log_tail, pinned, state_dir, workdir
from hostproc import kubectl as kubectl_binary

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
VERSION = pinned("KEDA_VERSION")
BIN_DIR = cache_dir() / f"keda-{VERSION}"
SOURCE = cache_dir() / "src" / f"keda-{VERSION}"  # the module build.sh built from
SHARED_CRDS = REPO.parent / "shared" / "upstream" / "crds" / f"keda-{VERSION}"
NS = "keda"
APISERVICE = "v1beta1.external.metrics.k8s.io"
WEBHOOK_CONFIG = "keda-admission"
FIELD_MANAGER = "kubeinfer-localcluster-keda"
COMPONENTS = ("operator", "adapter", "webhooks")

CLUSTER = cluster_name()
KUBECONFIG = workdir() / "clusters" / CLUSTER / "kubeconfig.yaml"
STATE = state_dir() / "keda"
CERTS = STATE / "certs"
SOCK = STATE / "sock"
KUBECTL = kubectl_binary()
# Inside a private namespace every port is free; these are the metrics API server's and the webhooks' own.
INNER = {"adapter-metrics": 8080, "webhooks-metrics": 8080, "webhooks-probes": 8081}
# The processes' environment (config/manager/manager.yaml, config/metrics-server/deployment.yaml): all namespaces,
# KEDA's own namespace for its Secrets and leases.
ENV = {"WATCH_NAMESPACE": "", "POD_NAMESPACE": NS, "KEDA_CLUSTER_OBJECT_NAMESPACE": NS}


def log(msg: str) -> None:
    print(f"[keda {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg: str) -> None:
    log(f"ERROR: {msg}")
    raise SystemExit(1)


def kubectl(*args: str, stdin: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    res = subprocess.run([str(KUBECTL), "--kubeconfig", str(KUBECONFIG), *args], input=stdin,
                         capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        die(f"kubectl {' '.join(args)} failed: {res.stderr.strip()[-1500:]}")
    return res


def proc(name: str) -> HostProcess:
    return HostProcess(STATE, name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def choose_ports() -> dict[str, int]:
    """Recorded ports are kept (the APIService and the webhook configuration name them); a taken one is replaced."""
    try:
        ports = {k: int(v) for k, v in json.loads((STATE / "ports.json").read_text()).items()}
    except (OSError, ValueError):
        ports = {}
    owner = {"grpc": "operator", "health": "operator", "metrics": "operator", "adapter": "adapter-relay", "webhooks": "webhooks-relay"}
    for name, comp in owner.items():
        if not ports.get(name) or (proc(comp).pid() is None and not port_free(ports[name])):
            ports[name] = free_port()
    (STATE / "ports.json").write_text(json.dumps(ports) + "\n")
    return ports


def api_port() -> int:
    server = json.loads(kubectl("config", "view", "--minify", "-o", "json").stdout)["clusters"][0]["cluster"]["server"]
    parts = urlsplit(server)
    if parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
        die(f"the API server {server} is not on 127.0.0.1")
    return int(parts.port)


# --- TLS ------------------------------------------------------------------------------------------

def ensure_certs() -> None:
    """A CA and one certificate for all three KEDA processes, kept while they exist."""
    if all((CERTS / f).is_file() for f in ("ca.crt", "tls.crt", "tls.key")):
        return
    CERTS.mkdir(parents=True, exist_ok=True)
    names = ["localhost"] + [f"{svc}.{NS}.svc{suffix}" for svc in ("keda-operator", "keda-metrics-apiserver", "keda-admission-webhooks")
                             for suffix in ("", ".cluster.local")]
    san = ",".join(["IP:127.0.0.1"] + [f"DNS:{n}" for n in names])

    def openssl(*args: str) -> None:
        res = subprocess.run(["openssl", *args], capture_output=True, text=True, check=False, timeout=60)
        if res.returncode != 0:
            die(f"openssl {args[0]} failed: {res.stderr.strip()[-500:]}")

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365", "-subj", "/O=KEDAORG/CN=KEDA",
            "-keyout", str(CERTS / "ca.key"), "-out", str(CERTS / "ca.crt"))
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/O=KEDAORG/CN=keda", "-keyout", str(CERTS / "tls.key"),
            "-out", str(CERTS / "tls.csr"))
    ext = CERTS / "ext.cnf"
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n")
    openssl("x509", "-req", "-in", str(CERTS / "tls.csr"), "-CA", str(CERTS / "ca.crt"), "-CAkey", str(CERTS / "ca.key"),
            "-CAcreateserial", "-days", "365", "-extfile", str(ext), "-out", str(CERTS / "tls.crt"))
    for f in ("tls.key", "ca.key"):
        os.chmod(CERTS / f, 0o600)


def ca_bundle() -> str:
    return base64.b64encode((CERTS / "ca.crt").read_bytes()).decode()


# --- processes ------------------------------------------------------------------------------------

def binary(name: str) -> str:
    path = BIN_DIR / name
    if not path.is_file():
        die(f"{path} is missing; build it with tools/localcluster/build.sh keda")
    return str(path)


def in_namespace(argv: list[str], outward: list[int], inward: list[int], tag: str) -> list[str]:
    """``argv`` in a private network namespace: lo up, relays to the host's ports ``outward`` (the same port inside)
    and from the host's ports ``inward`` (the process serves them inside), through Unix sockets in SOCK."""
    script = ["ip link set lo up || exit 1"]
    for port in outward:
        script.append(f'socat "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:{SOCK}/{tag}-out-{port}.sock" &')
    for port in inward:
        script.append(f'socat "UNIX-LISTEN:{SOCK}/{tag}-in-{port}.sock,fork,unlink-early" "TCP:127.0.0.1:{port}" &')
    script.append('exec "$@"')
    return ["unshare", "--net", "--", "sh", "-c", "\n".join(script), "sh", *argv]


def host_relays(outward: list[int], inward: list[int], tag: str) -> list[str]:
    """The host's ends of in_namespace()'s relays, one process group."""
    script = []
    for port in outward:
        script.append(f'socat "UNIX-LISTEN:{SOCK}/{tag}-out-{port}.sock,fork,unlink-early" "TCP:127.0.0.1:{port}" &')
    for port in inward:
        script.append(f'socat "TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:{SOCK}/{tag}-in-{port}.sock" &')
    script.append("wait")
    return ["sh", "-c", "\n".join(script)]


def argvs(ports: dict[str, int], apiserver: int) -> dict[str, list[str]]:
    """The command line of each process (the flags of cmd/operator, cmd/adapter and cmd/webhooks main.go)."""
    zap = ["--zap-log-level=info", "--zap-encoder=console", "--zap-time-encoding=rfc3339"]
    kube = str(KUBECONFIG)
    adapter = [binary("keda-adapter"), "--bind-address=127.0.0.1", f"--secure-port={ports['adapter']}",
               f"--tls-cert-file={CERTS / 'tls.crt'}", f"--tls-private-key-file={CERTS / 'tls.key'}", f"--cert-dir={CERTS}",
               f"--lister-kubeconfig={kube}", f"--authentication-kubeconfig={kube}", f"--authorization-kubeconfig={kube}",
               f"--metrics-service-address=127.0.0.1:{ports['grpc']}", f"--port={INNER['adapter-metrics']}", *zap]
    webhooks = [binary("keda-admission-webhooks"), f"--port={ports['webhooks']}", f"--cert-dir={CERTS}",
                f"--metrics-bind-address=127.0.0.1:{INNER['webhooks-metrics']}",
                f"--health-probe-bind-address=127.0.0.1:{INNER['webhooks-probes']}", *zap]
    return {
        "operator": [binary("keda"), f"--metrics-bind-address=127.0.0.1:{ports['metrics']}",
                     f"--health-probe-bind-address=127.0.0.1:{ports['health']}",
                     f"--metrics-service-bind-address=127.0.0.1:{ports['grpc']}", f"--cert-dir={CERTS}",
                     "--enable-cert-rotation=false", "--leader-elect=false", *zap],
        "adapter-relay": host_relays([apiserver, ports["grpc"]], [ports["adapter"]], "adapter"),
        "adapter": in_namespace(adapter, [apiserver, ports["grpc"]], [ports["adapter"]], "adapter"),
        "webhooks-relay": host_relays([apiserver], [ports["webhooks"]], "webhooks"),
        "webhooks": in_namespace(webhooks, [apiserver], [ports["webhooks"]], "webhooks"),
    }


def wait_for(what: str, predicate: Callable[[], bool], watch: list[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        dead = [n for n in watch if proc(n).pid() is None]
        if dead or time.monotonic() > deadline:
            why = f"{dead[0]} exited" if dead else f"not within {timeout:.0f}s"
            die(f"{what}: {why}\n" + "".join(f"--- {n}.log\n{log_tail(proc(n).logfile)}\n" for n in (dead or watch)))
        time.sleep(0.5)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def tls_ok(port: int) -> bool:
    ctx = ssl.create_default_context(cafile=str(CERTS / "ca.crt"))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
            return True
    except (OSError, ssl.SSLError):
        return False


# --- cluster objects ------------------------------------------------------------------------------

def crd_dir() -> Path:
    for candidate in (SHARED_CRDS, SOURCE / "config" / "crd" / "bases"):
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    die(f"no KEDA {VERSION} CRDs: neither {SHARED_CRDS} (../shared next to the checkout) nor {SOURCE}/config/crd/bases "
        "(tools/localcluster/build.sh keda fetches the module) exists")
    raise AssertionError("unreachable")


def webhook_configuration(port: int) -> dict[str, Any]:
    """KEDA's own ValidatingWebhookConfiguration, each service reference turned into a loopback URL with our CA."""
    source = SOURCE / "config" / "webhooks" / "validation_webhooks.yaml"
    if not source.is_file():
        die(f"{source} is missing; tools/localcluster/build.sh keda fetches the KEDA module")
    obj = json.loads(kubectl("create", "--dry-run=client", "-o", "json", "-f", str(source)).stdout)
    for hook in obj["webhooks"]:
        service = hook["clientConfig"].pop("service")
        hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{service['path']}", "caBundle": ca_bundle()}
    obj["metadata"]["labels"] = {**obj["metadata"].get("labels", {}), "app.kubernetes.io/managed-by": "kubeinfer-localcluster"}
    return obj


def cluster_objects(ports: dict[str, int]) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/managed-by": "kubeinfer-localcluster"}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": labels}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "keda-metrics-apiserver", "namespace": NS, "labels": labels,
                                                              "annotations": {"kubeinfer.io/local-stand-in": f"host process https://127.0.0.1:{ports['adapter']}"}},
         "spec": {"type": "ExternalName", "externalName": "localhost",
                  "ports": [{"name": "https", "protocol": "TCP", "port": ports["adapter"], "targetPort": ports["adapter"]}]}},
        # config/metrics-server/api_service.yaml, with the caBundle KEDA's cert rotation would patch in.
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": APISERVICE, "labels": labels},
         "spec": {"group": "external.metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100, "versionPriority": 100,
                  "service": {"name": "keda-metrics-apiserver", "namespace": NS, "port": ports["adapter"]}, "caBundle": ca_bundle()}},
    ]


def apply(objs: list[dict[str, Any]]) -> None:
    doc = {"apiVersion": "v1", "kind": "List", "items": objs}
    kubectl("apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}", "-f", "-", stdin=json.dumps(doc))


def crd_established() -> bool:
    res = kubectl("get", "crd", "scaledobjects.keda.sh", "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}", check=False)
    return res.returncode == 0 and res.stdout.strip() == "True"


def apiservice_available() -> bool:
    res = kubectl("get", "apiservice", APISERVICE, "-o", "json", check=False)
    if res.returncode != 0:
        return False
    conds = json.loads(res.stdout).get("status", {}).get("conditions") or []
    return any(c["type"] == "Available" and c["status"] == "True" for c in conds)


# --- commands -------------------------------------------------------------------------------------

def cmd_up() -> None:
    if not KUBECONFIG.is_file():
        die(f"no cluster kubeconfig at {KUBECONFIG}; run tools/localcluster/cluster.sh up")
    start = time.monotonic()
    STATE.mkdir(parents=True, exist_ok=True)
    SOCK.mkdir(parents=True, exist_ok=True)
    kubectl("apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}", "-f", str(crd_dir()))
    wait_for("the ScaledObject CRD Established", crd_established, [], timeout=60)
    ensure_certs()
    ports = choose_ports()
    want = argvs(ports, api_port())
    env = {**os.environ, **ENV, "KUBECONFIG": str(KUBECONFIG)}
    apply(cluster_objects(ports)[:2])  # the namespace first: the operator's Secret informer lists it
    # Relays before the processes that connect through them; a process whose command line changed restarts.
    for name in ("operator", "adapter-relay", "adapter", "webhooks-relay", "webhooks"):
        if proc(name).argv() != want[name]:
            proc(name).stop()
            log(f"starting {name} (pid {proc(name).start(want[name], env=env)})")
    wait_for("the operator's /readyz", lambda: http_ok(f"http://127.0.0.1:{ports['health']}/readyz"), ["operator"])
    wait_for("the webhooks' TLS port", lambda: tls_ok(ports["webhooks"]), ["webhooks", "webhooks-relay"])
    wait_for("the metrics API server's TLS port", lambda: tls_ok(ports["adapter"]), ["adapter", "adapter-relay"])
    apply(cluster_objects(ports)[2:] + [webhook_configuration(ports["webhooks"])])
    wait_for(f"APIService {APISERVICE} Available", apiservice_available, list(COMPONENTS), timeout=90)
    log(f"KEDA {VERSION} up in {time.monotonic() - start:.1f}s: operator, metrics API server https://127.0.0.1:{ports['adapter']}, "
        f"webhooks https://127.0.0.1:{ports['webhooks']}")


def cmd_down() -> None:
    if KUBECONFIG.is_file():
        for kind, name in (("apiservice", APISERVICE), ("validatingwebhookconfiguration", WEBHOOK_CONFIG)):
            res = kubectl("delete", kind, name, "--ignore-not-found", "--wait=false", "--request-timeout=5s", check=False, timeout=15)
            if res.returncode != 0:
                log(f"could not delete {kind} {name} (cluster down?): {res.stderr.strip()[:200]}")
    for name in ("webhooks", "webhooks-relay", "adapter", "adapter-relay", "operator"):
        if proc(name).stop():
            log(f"stopped {name}")


def cmd_status() -> int:
    ok = True
    for name in ("operator", "adapter", "adapter-relay", "webhooks", "webhooks-relay"):
        pid = proc(name).pid()
        ok = ok and pid is not None
        print(f"{name:<15} {'running' if pid else 'STOPPED':<8} pid {pid or '-'}")
    if KUBECONFIG.is_file():
        available = apiservice_available()
        ok = ok and available
        print(f"apiservice      {APISERVICE}: {'Available' if available else 'not Available'}")
    print(f"state           {STATE}")
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    if argv == ["up"]:
        cmd_up()
        return 0
    if argv == ["down"]:
        cmd_down()
        return 0
    if argv == ["status"]:
        return cmd_status()
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
