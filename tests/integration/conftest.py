"""Fixtures every integration test shares: the local cluster, its API client, the collection, a playbook runner.

The cluster is the one ``tools/localcluster/cluster.sh`` runs under the name in KUBEINFER_CLUSTER (default
``kubeinfer``); ``make integration`` (or ``make CLUSTER_NAME=<name> cluster-up``) starts it. When it is not up,
every test that needs it fails with a message saying how to start it: a missing cluster is a broken test
setup, never a reason to skip.

Fixtures:

- ``cluster_name`` (session): the cluster name the tests run against.
- ``kubeconfig`` (session): the path ``cluster.sh kubeconfig`` prints for that cluster.
- ``api`` (session): a ``kubernetes.client.ApiClient`` from that kubeconfig, after ``/readyz`` answered ``ok``.
- ``core`` (session): ``CoreV1Api`` on ``api``.
- ``collections_path`` (session): an ``ansible_collections`` tree whose ``kubeinfer.llm`` is this checkout.
- ``playbook`` (function): a ``PlaybookRunner`` writing into the test's ``tmp_path``.
- ``playbook_runner`` (session): builds a ``PlaybookRunner`` for any directory (for module-scoped fixtures).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools" / "localcluster"
CLUSTER_SH = TOOLS / "cluster.sh"
# The harness's own reading of versions.env and the binary cache (tools/localcluster/hostproc.py), for every test module.
sys.path.insert(0, str(TOOLS))
from hostproc import cache_dir, pinned  # noqa: E402

# ansible-playbook and the interpreter that has the kubernetes client: the venv pytest runs in.
BIN = Path(sys.executable).parent


def _cluster_name() -> str:
    return os.environ.get("KUBEINFER_CLUSTER") or "kubeinfer"


def _start_hint(name: str) -> str:
    return (f"Start the local cluster first: KUBEINFER_CLUSTER={name} tools/localcluster/cluster.sh up "
            f"(or make CLUSTER_NAME={name} cluster-up, which also starts the metrics chain and the GPU stack simulation, tools/localcluster/gpu_sim.py).")


@pytest.fixture(scope="session")
def cluster_name() -> str:
    """The local cluster the tests run against: KUBEINFER_CLUSTER, default kubeinfer."""
    return _cluster_name()


@pytest.fixture(scope="session")
def kubeconfig(cluster_name: str) -> str:
    """The kubeconfig of the local cluster, from ``cluster.sh kubeconfig``; fails (never skips) without one."""
    env = dict(os.environ, KUBEINFER_CLUSTER=cluster_name)
    proc = subprocess.run([str(CLUSTER_SH), "kubeconfig"], capture_output=True, text=True, timeout=60, check=False, env=env)
    path = proc.stdout.strip()
    if proc.returncode != 0 or not path or not Path(path).is_file():
        pytest.fail(f"no kubeconfig for the local cluster {cluster_name!r} (`cluster.sh kubeconfig` exited {proc.returncode}: "
                    f"{proc.stderr.strip()})\n{_start_hint(cluster_name)}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def api(kubeconfig: str, cluster_name: str) -> client.ApiClient:
    """An API client for the local cluster, checked to answer ``/readyz`` with ``ok``."""
    api_client = config.new_client_from_config(config_file=kubeconfig)
    try:
        readyz = api_client.call_api("/readyz", "GET", response_type="str", _return_http_data_only=True, _request_timeout=5)
    except Exception as e:  # connection refused, TLS errors, ...
        pytest.fail(f"the local cluster {cluster_name!r} is not reachable through {kubeconfig}: {e}\n{_start_hint(cluster_name)}",
                    pytrace=False)
    assert readyz == "ok"
    return api_client


@pytest.fixture(scope="session")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="session")
def collections_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An ansible_collections tree whose kubeinfer.llm is this checkout, whatever else is installed."""
    base = tmp_path_factory.mktemp("collections")
    (base / "ansible_collections" / "kubeinfer").mkdir(parents=True)
    (base / "ansible_collections" / "kubeinfer" / "llm").symlink_to(REPO)
    return str(base)


@dataclass
class PlaybookRun:
    """What one ``ansible-playbook`` run left: its exit code and output, and the results asked for.

    ``results`` holds every task's result for localhost, in order, when the run used the json callback
    (``results=True``); ``saved`` holds the variable named by ``save=`` as the play registered it, or None
    when the play ended before the saving task ran.
    """

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    results: list[dict[str, Any]] = field(default_factory=list)
    saved: dict[str, Any] | None = None

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def recap(self) -> dict[str, int]:
        """The PLAY RECAP counters for localhost (default callback only): ok, changed, failed, ..."""
        line = next(x for x in self.stdout.splitlines()[::-1] if x.startswith("localhost") and "ok=" in x)
        return {k: int(v) for k, v in (item.split("=") for item in line.split(":", 1)[1].split())}


class PlaybookRunner:
    """Runs a generated local play with ``ansible-playbook`` and this venv's interpreter against the local cluster.

    Each call writes a fresh playbook under ``workdir``. The play runs on localhost with a local connection,
    no facts, this checkout as ``kubeinfer.llm`` and K8S_AUTH_KUBECONFIG set to the cluster's kubeconfig.
    """

    def __init__(self, workdir: Path, kubeconfig: str, collections_path: str) -> None:
        self.workdir, self.kubeconfig, self.collections_path = workdir, kubeconfig, collections_path
        self.runs = 0

    def __call__(self, tasks: Sequence[Mapping[str, Any]] = (), *, roles: Sequence[Mapping[str, Any]] = (),
                 name: str = "Integration test", results: bool = False, save: str | None = None,
                 check: bool = False, diff: bool = False, verbosity: int = 0, extra_args: Sequence[str] = (),
                 env: Mapping[str, str | None] | None = None, timeout: float = 600) -> PlaybookRun:
        """Run ``roles`` then ``tasks`` in one play.

        results: use the json callback and return every task's result (the output is then one JSON document;
            a run that prints none fails the test with its output).
        save: also register-dump this variable to a file after the tasks, read back into ``PlaybookRun.saved``.
        check, diff, verbosity: ``--check``, ``--diff``, ``-v`` repeated; extra_args go before the playbook path.
        env: added to the environment; a None value removes the variable.
        """
        self.runs += 1
        stem = f"{self.runs}-{uuid.uuid4().hex[:6]}"
        tasks = list(tasks)
        saved_to = None
        if save is not None:
            saved_to = self.workdir / f"result{stem}.json"
            tasks.append({"name": "Save the result", "check_mode": False, "changed_when": False,
                          "ansible.builtin.copy": {"content": "{{ " + save + " | to_json }}", "dest": str(saved_to), "mode": "0600"}})
        play: dict[str, Any] = {"name": name, "hosts": "localhost", "connection": "local", "gather_facts": False}
        if roles:
            play["roles"] = list(roles)
        play["tasks"] = tasks
        playbook = self.workdir / f"play{stem}.yml"
        playbook.write_text(json.dumps([play]))  # JSON is YAML

        run_env = dict(os.environ)
        run_env.update({
            "ANSIBLE_COLLECTIONS_PATH": self.collections_path,
            "K8S_AUTH_KUBECONFIG": self.kubeconfig,
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_LOCALHOST_WARNING": "false",
            "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp"),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        })
        if results:
            run_env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.builtin.json"
        for key, value in (env or {}).items():
            if value is None:
                run_env.pop(key, None)
            else:
                run_env[key] = value

        argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}"]
        if check:
            argv.append("--check")
        if diff:
            argv.append("--diff")
        if verbosity:
            argv.append("-" + "v" * verbosity)
        argv += [*extra_args, str(playbook)]
        proc = subprocess.run(argv, env=run_env, capture_output=True, text=True, timeout=timeout, check=False)

        run = PlaybookRun(argv=argv, returncode=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)
        if results:
            try:
                doc = json.loads(proc.stdout)
            except ValueError:
                raise AssertionError(f"ansible-playbook printed no JSON (rc {proc.returncode}): {proc.stdout[-3000:]} {proc.stderr[-3000:]}") from None
            run.results = [task["hosts"]["localhost"] for play_doc in doc["plays"] for task in play_doc["tasks"]]
        if saved_to is not None and saved_to.exists():
            run.saved = json.loads(saved_to.read_text())
        return run


@pytest.fixture(scope="session")
def playbook_runner(kubeconfig: str, collections_path: str) -> Callable[[Path], PlaybookRunner]:
    """A ``PlaybookRunner`` for a given working directory (for fixtures wider than one test)."""
    return lambda workdir: PlaybookRunner(workdir, kubeconfig, collections_path)


@pytest.fixture
def playbook(tmp_path: Path, playbook_runner: Callable[[Path], PlaybookRunner]) -> PlaybookRunner:
    """A ``PlaybookRunner`` writing into this test's tmp_path."""
    return playbook_runner(tmp_path)


# -- the GPU stack, the simulated hardware and the audit log ---------------------------------------------------------

def load_bench() -> ModuleType:
    """bench/autoscale_bench.py as a module: the scenario code, the simulator flags that make a real queue, the load threads."""
    spec = importlib.util.spec_from_file_location("autoscale_bench", REPO / "bench" / "autoscale_bench.py")
    if spec is None or spec.loader is None:
        raise AssertionError("bench/autoscale_bench.py not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def helm_binary() -> str:
    """HELM_BINARY, else the helm that tools/localcluster/build.sh built."""
    return os.environ.get("HELM_BINARY") or str(cache_dir() / f"helm-{pinned('HELM_VERSION')}" / "helm")


def _tool(*argv: str, timeout: float = 600) -> str:
    env = dict(os.environ, KUBEINFER_CLUSTER=_cluster_name(), HELM_BINARY=helm_binary())
    proc = subprocess.run([str(TOOLS / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr[-3000:]}")
    return proc.stdout


def harness(*argv: str, timeout: float = 600) -> str:
    """Run a tools/localcluster script against the test cluster; its stdout (a non-zero exit fails the test)."""
    return _tool(*argv, timeout=timeout)


def gpu_stack_down() -> None:
    """No GPU Operator release in the cluster (helm uninstall; NFD's prune job then strips its labels)."""
    _tool("gpu-stack.sh", "down")


def cluster_nodes() -> None:
    """Create the cluster's simulated nodes that are missing, as ``cluster.sh up`` does, and wait until they are Ready."""
    _tool("cluster.sh", "nodes", timeout=300)


def sim_hardware(node: str, host_driver: str) -> None:
    """Change a simulated node's hardware: a pre-installed host driver of that version, or "none"."""
    _tool("gpu_sim.py", "hardware", node, "--host-driver", host_driver, timeout=60)


@pytest.fixture(scope="module")
def gpu_stack(api: client.ApiClient) -> None:
    """The published GPU Operator chart installed and the GPU nodes advertising nvidia.com/gpu (tools/localcluster/gpu-stack.sh).

    Module-scoped and idempotent: test_gpu_operator.py uninstalls the release, and the next module that needs GPUs
    installs it again. The nodes start bare, so without this no pod requesting a GPU can be scheduled.
    """
    _tool("gpu-stack.sh", "up")


class Audit:
    """The API server's audit log (tools/localcluster/kwok/audit-policy.yaml: one Metadata event per write)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        """A position to count from; the log is append-only."""
        return self.path.stat().st_size

    def events(self, since: int, agent: str) -> list[dict[str, Any]]:
        with self.path.open("rb") as f:
            f.seek(since)
            lines = f.read().decode("utf-8", "replace").splitlines()
        out = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # the last line may still be being written
            if str(event.get("userAgent", "")).startswith(agent):
                out.append(event)
        return out

    def requests(self, since: int, agent: str) -> list[dict[str, Any]]:
        return self.events(since, agent)

    def writes(self, since: int, agent: str) -> list[str]:
        """Write requests from user agents starting with ``agent``, as ``verb resource namespace/name`` (dry runs excluded)."""
        out = []
        for event in self.events(since, agent):
            if event.get("verb") not in ("create", "update", "patch", "delete", "deletecollection"):
                continue
            if "dryRun=All" in str(event.get("requestURI", "")):
                continue
            ref = event.get("objectRef") or {}
            out.append(f"{event['verb']} {ref.get('resource')} {ref.get('namespace', '')}/{ref.get('name', '')}")
        return out


@pytest.fixture(scope="session")
def audit(kubeconfig: str) -> Audit:
    path = Path(kubeconfig).parent / "logs" / "audit.log"
    if not path.is_file():
        pytest.fail(f"no audit log at {path}: the cluster was created without tools/localcluster/kwok/audit-policy.yaml; "
                    "re-create it with tools/localcluster/cluster.sh down && up", pytrace=False)
    return Audit(path)


# -- a private pool of GPU nodes, advertising nvidia.com/gpu without the GPU Operator -------------------------------

POOL_LABEL = "kubeinfer.io/it-vllm-pool"
GPUS_PER_NODE = 8


@pytest.fixture
def pool(api: client.ApiClient) -> Iterator[str]:
    """Two private GPU nodes, 8 GPUs each; yields the pool id (value of POOL_LABEL and of the taint)."""
    yield from _gpu_pool(api)


@pytest.fixture(scope="module")
def module_pool(api: client.ApiClient) -> Iterator[str]:
    """The same pool, for every test of a module."""
    yield from _gpu_pool(api)


def _gpu_pool(api: client.ApiClient, label: str = POOL_LABEL, prefix: str = "it-vllm",
              pod_cidrs: Sequence[str] = ()) -> Iterator[str]:
    """Two GPU nodes labelled and tainted ``label=<pool id>``, with the given pod CIDRs (none: kwok's default range)."""
    core = client.CoreV1Api(api)
    pool_id = uuid.uuid4().hex[:8]
    names = [f"{prefix}-{pool_id}-{i}" for i in range(2)]
    for i, name in enumerate(names):
        spec: dict[str, Any] = {"taints": [{"key": label, "value": pool_id, "effect": "NoSchedule"}]}
        if pod_cidrs:
            spec.update(podCIDR=pod_cidrs[i], podCIDRs=[pod_cidrs[i]])
        core.create_node({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"}, "labels": {
                "kubernetes.io/hostname": name, "type": "kwok", label: pool_id,
                "nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
                "nvidia.com/gpu.memory": "81920", "nvidia.com/gpu.count": str(GPUS_PER_NODE)}},
            "spec": spec,
            "status": {"capacity": {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": str(GPUS_PER_NODE)},
                       "allocatable": {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": str(GPUS_PER_NODE)}},
        })
    deadline = time.monotonic() + 60
    while not all(any(c.type == "Ready" and c.status == "True" for c in (core.read_node(n).status.conditions or [])) for n in names):
        assert time.monotonic() < deadline, "kwok did not make the pool nodes Ready"
        time.sleep(0.5)
    yield pool_id
    for name in names:
        try:
            core.delete_node(name)
        except ApiException as e:
            if e.status != 404:
                raise


def pool_args(pool_id: str) -> dict[str, Any]:
    return {"node_selector": {POOL_LABEL: pool_id},
            "tolerations": [{"key": POOL_LABEL, "operator": "Equal", "value": pool_id, "effect": "NoSchedule"}]}


# -- pods the harness's pod kubelet plays (tools/localcluster/podkubelet.py), and load through their Service ------------

PLAYED = {"kubeinfer.io/sim-kubelet": "pod-sim"}
"""The pod label that hands a pod to podkubelet.py: probes, graceful termination, a Service route."""
PLAYED_POOL_LABEL = "kubeinfer.io/it-played-pool"
PLAYED_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
SIM_LOAD_ANNOTATION = "kubeinfer.io/sim-load-seconds"


def played_release_args(namespace: str, pool: str, load_seconds: float, **over: Any) -> dict[str, Any]:
    """vllm_release options for release ``swap``: 2 played sim pods on the played pool, a model load of ``load_seconds``,
    completions of about 0.5 s (200 ms to the first token, 20 ms a token), 1 s probe periods, a 3 s drain in 20 s of grace.
    ``values`` in ``over`` replaces those chart values key by key; other keys replace options."""
    values = {"podAnnotations": {SIM_LOAD_ANNOTATION: str(load_seconds)},
              "sim": {"timeToFirstToken": "200ms", "interTokenLatency": "20ms"},
              "probes": {"startup": {"periodSeconds": 1}, "readiness": {"periodSeconds": 1}},
              "preStopSleepSeconds": 3, "terminationGracePeriodSeconds": 20}
    values.update(over.pop("values", {}))
    args = {"name": "swap", "namespace": namespace, "model": PLAYED_MODEL, "engine": "sim", "replicas": 2, "gpus_per_replica": 1,
            "pod_labels": PLAYED, "node_selector": {PLAYED_POOL_LABEL: pool},
            "tolerations": [{"key": PLAYED_POOL_LABEL, "operator": "Equal", "value": pool, "effect": "NoSchedule"}], "values": values}
    args.update(over)
    return args


def run_task(playbook: PlaybookRunner, module: str, args: dict[str, Any]) -> tuple[PlaybookRun, dict[str, Any]]:
    """One task of module ``kubeinfer.llm.<module>`` (errors ignored); the run and its registered result."""
    run = playbook([{"name": module, f"kubeinfer.llm.{module}": args, "register": "r", "ignore_errors": True}],
                   name=module, save="r", env={"HELM_BINARY": helm_binary()})
    assert run.saved is not None, run.stdout[-4000:] + run.stderr[-4000:]
    return run, run.saved


@pytest.fixture(scope="module")
def podkubelet() -> None:
    harness("podkubelet.py", "start", timeout=60)  # make cluster-up starts it too; idempotent


@pytest.fixture
def played_pool(api: client.ApiClient, podkubelet: None) -> Iterator[str]:
    """Two GPU nodes whose pod IPs are loopback addresses of this cluster's /12 (so the simulators can listen there)."""
    base = next((n.spec.pod_cidr for n in client.CoreV1Api(api).list_node().items if (n.spec.pod_cidr or "").startswith("127.")), None)
    assert base, "no node of the cluster has a pod CIDR in 127.0.0.0/8 (cluster.sh up gives every node one)"
    top = (int(base.split(".")[1]) // 16) * 16 + 15  # the last /16 of the cluster's /12: far past the CPU pool's nodes
    yield from _gpu_pool(api, PLAYED_POOL_LABEL, "it-played", [f"127.{top}.{250 + i}.0/24" for i in range(2)])


def wait_until(what: str, predicate: Callable[[], Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.5)


def route_stats(namespace: str, service: str = "swap") -> dict[str, int]:
    """Connections podkubelet.py's route of Service ``namespace/service`` sent to each pod."""
    stats = json.loads(harness("podkubelet.py", "route-stats"))
    return next((v for k, v in stats.items() if k.startswith(f"{namespace}/{service}:")), {})


@pytest.fixture
def played_namespace(core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace, deleted (and waited for) after the test."""
    name = f"it-played-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            core.read_namespace(name)
        except ApiException as e:
            if e.status == 404:
                return
            raise
        time.sleep(1)


class Load:
    """Completions in a steady stream through a URL, ``workers`` at a time, each on a new connection; every failure counted."""

    def __init__(self, url: str, model: str, workers: int = 4) -> None:
        self.url, self.model, self.workers = url, model, workers
        self.ok = 0
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _worker in range(workers)]

    def one(self) -> None:
        body = json.dumps({"model": self.model, "prompt": "Say hello", "max_tokens": 16}).encode()
        req = urllib.request.Request(f"{self.url}/v1/completions", data=body, headers={"Content-Type": "application/json", "Connection": "close"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                doc = json.loads(resp.read())
            if resp.status != 200 or not doc.get("choices"):
                raise ValueError(f"HTTP {resp.status}: {str(doc)[:200]}")
        except (OSError, ValueError, urllib.error.URLError) as e:
            with self.lock:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {e}")
            time.sleep(0.05)
            return
        with self.lock:
            self.ok += 1

    def run(self) -> None:
        while not self.stop.is_set():
            self.one()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)
