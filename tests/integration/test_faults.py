"""Faults the control plane or the metrics chain can throw at a run, on the local cluster's real components.

- kube-apiserver killed while helm upgrades a release: the run fails naming the API server; once the API server is
  back, the next run recovers the release helm left pending-upgrade (the operation Lease of _helm_release) and
  converges; a third run writes nothing.
- etcd restarted: the next run converges, and writes nothing.
- A rollout that cannot finish (new pods that never become Ready) is rolled back by atomic, and a watch on the
  Deployment throughout shows its Ready replicas never dropped below the replicas asked for.
- The adapter down, then Prometheus down: metrics_adapter's verification names the link that is missing.

kube-apiserver and etcd are the processes kwokctl started for the cluster (pid files under the cluster's pids/):
each is stopped by that PID and started again with the argv, working directory and environment /proc shows for it,
its pid file rewritten, as kwokctl's binary runtime would. What this does not cover: an API server behind a load
balancer that fails over, and an etcd that loses data (a restart keeps its data directory).
Run: ``pytest tests/integration/test_faults.py`` with the venv python, on a cluster from ``make cluster-up``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import REPO, TOOLS, Audit, PlaybookRunner, helm_binary, pool_args
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from test_autoscaling import QUEUE, prometheus_url, release, sh, simulator  # noqa: F401  # pylint: disable=unused-import

AGENTS = ("kubeinfer.llm", "Helm/")
RELEASE = "fault"


# -- the control plane's processes -------------------------------------------------------------------------------

Launch = tuple[list[str], str, dict[str, str]]


class ControlPlane:
    """The processes kwokctl runs for the cluster, known by their pid files (``pids/<component>.pid``).

    ``snapshot`` reads what it takes to start each one again (argv, working directory, environment from /proc) while
    they run; ``kill`` stops one by its PID; ``revive`` starts every dead one again and rewrites its pid file, as the
    kubelet restarts a control plane's static pods. kube-controller-manager and kube-scheduler exit by design when
    they cannot renew their leader-election Lease (k8s.io/client-go tools/leaderelection: OnStoppedLeading), so an
    API server or etcd outage of more than their renew deadline takes them down too; revive brings them back.
    A component is started again at once after it is killed: its port was picked free by kwokctl, and another
    cluster on this host could take it if it stayed free for long."""

    COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok-controller")

    def __init__(self, kubeconfig: str) -> None:
        self.cluster = Path(kubeconfig).parent
        self.launch: dict[str, Launch] = {}

    def pid(self, name: str) -> int:
        return int("".join(c for c in (self.cluster / "pids" / f"{name}.pid").read_text() if c.isdigit()))

    def alive(self, name: str) -> bool:
        try:
            return Path(f"/proc/{self.pid(name)}/stat").read_text().split()[2] != "Z"
        except OSError:
            return False

    def snapshot(self) -> None:
        for name in self.COMPONENTS:
            pid = self.pid(name)
            argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
            env = dict(item.decode().split("=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
            self.launch[name] = (argv, os.readlink(f"/proc/{pid}/cwd"), env)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        assert name in self.launch, "snapshot() first"
        pid = self.pid(name)
        os.kill(pid, sig)
        deadline = time.monotonic() + 30
        while self.alive(name):
            assert time.monotonic() < deadline, f"{name} (pid {pid}) did not stop"
            time.sleep(0.05)

    def start(self, name: str) -> int:
        argv, cwd, env = self.launch[name]
        with (self.cluster / "logs" / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,  # pylint: disable=consider-using-with
                                    start_new_session=True)
        (self.cluster / "pids" / f"{name}.pid").write_text(str(proc.pid))
        return proc.pid

    def revive(self, core: client.CoreV1Api) -> list[str]:
        """Start every dead component again (etcd and the API server first), wait for the API; return what was started."""
        started = [name for name in self.COMPONENTS if name in self.launch and not self.alive(name)]
        for name in started:
            self.start(name)
            if name == "kube-apiserver":
                wait_api(core)
        wait_api(core)
        return started


def wait_api(core: client.CoreV1Api, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            core.list_namespace(limit=1, _request_timeout=5)
            return
        except Exception:  # pylint: disable=broad-except  # connection refused, 5xx while etcd comes back
            assert time.monotonic() < deadline, "the API server did not come back"
            time.sleep(1)


@pytest.fixture
def control_plane(kubeconfig: str, core: client.CoreV1Api) -> Iterator[ControlPlane]:
    """The cluster's processes, snapshotted; whatever the test left dead is started again at the end."""
    plane = ControlPlane(kubeconfig)
    plane.snapshot()
    yield plane
    plane.revive(core)


def helm_processes(name: str) -> list[int]:
    """PIDs of ``helm upgrade --install <name>`` processes (run by the module under test)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 4 and argv[0].endswith(b"helm") and argv[1:3] == [b"upgrade", b"--install"] and argv[3] == name.encode():
            out.append(int(entry.name))
    return out


def wait_exited(pids: list[int], timeout: float) -> None:
    """Wait until none of ``pids`` runs (gone, or a zombie its parent has not reaped yet)."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        while True:
            try:
                if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                    break
            except OSError:
                break
            assert time.monotonic() < deadline, f"helm (pid {pid}) still runs {timeout:.0f}s after the API server went away"
            time.sleep(0.05)


def harness_pid(kubeconfig: str, name: str) -> int:
    """The PID of a host process of the metrics chain (tools/localcluster/hostproc.py: ``<pid> <start time>``)."""
    cluster = Path(kubeconfig).parent
    pid, _started = (cluster.parent.parent / f"kubeinfer-{cluster.name}" / "metrics" / f"{name}.pid").read_text().split()
    return int(pid)


def vllm_task(namespace: str, pool: str, **over: Any) -> dict[str, Any]:
    args = {"name": RELEASE, "namespace": namespace, "create_namespace": True, "model": "facebook/opt-125m", "engine": "sim",
            "replicas": 1, "gpus_per_replica": 1, **pool_args(pool)}
    args.update(over)
    return {"name": "Release", "kubeinfer.llm.vllm_release": args}


def history(kubeconfig: str, namespace: str) -> list[dict[str, Any]]:
    out = sh([helm_binary(), "history", RELEASE, "--namespace", namespace, "--output", "json"],
             env=dict(os.environ, KUBECONFIG=kubeconfig), check=False).stdout
    return json.loads(out or "[]")


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"it-faults-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as e:
        if e.status != 404:
            raise


# -- kube-apiserver killed mid-run -------------------------------------------------------------------------------

def test_api_server_killed_mid_upgrade_then_the_next_run_converges(
        playbook: PlaybookRunner, audit: Audit, core: client.CoreV1Api, api: client.ApiClient, kubeconfig: str, pool: str,
        namespace: str, control_plane: ControlPlane) -> None:
    first = playbook([vllm_task(namespace, pool)], results=True)
    assert first.returncode == 0, first.output[-4000:]
    server = api.configuration.host

    # Upgrade (replicas 1 -> 2); freeze helm the moment its pending-upgrade record appears, kill the API server, thaw
    # helm and let it run against the dead server until it exits, then start the API server again. Helm's next request
    # is refused whatever it was about to do (client-go retries only GETs whose connection was reset:
    # k8s.io/client-go rest/request.go), so the run fails; had the server come back before helm thawed, a helm that
    # was between requests would finish (CI saw that). Helm's window between the pending record and the deployed one
    # is short: a run that finished, or whose last write reached the server before the kill, is tried again with the
    # next replica count.
    caught, cut = None, None
    for replicas in (2, 3, 4, 5, 6):
        done: list[Any] = []
        runner = threading.Thread(target=lambda r=replicas, out=done: out.append(playbook([vllm_task(namespace, pool, replicas=r)], results=True)))
        stream = watch.Watch()
        runner.start()
        killed = False
        for event in stream.stream(core.list_namespaced_secret, namespace, label_selector=f"owner=helm,name={RELEASE}", timeout_seconds=120):
            labels = event["object"].metadata.labels or {}
            if labels.get("status") == "pending-upgrade":
                frozen = helm_processes(RELEASE)
                for pid in frozen:
                    os.kill(pid, signal.SIGSTOP)
                if frozen:
                    control_plane.kill("kube-apiserver")
                    killed = True
                    for pid in frozen:
                        os.kill(pid, signal.SIGCONT)
                    wait_exited(frozen, timeout=60)
                    control_plane.start("kube-apiserver")
                stream.stop()
            elif not runner.is_alive():
                stream.stop()
        runner.join(timeout=300)
        if killed:
            control_plane.revive(core)
        (run,) = done
        if killed and run.returncode != 0 and history(kubeconfig, namespace)[-1]["status"] == "pending-upgrade":
            caught, cut = replicas, run
            break
    assert caught and cut, "helm finished every upgrade before its pending record could be caught"
    msg = cut.results[0]["msg"]
    print(f"\nrun cut at replicas={caught}: {msg}")
    assert f"the API server at {server} stopped answering while helm worked" in msg, msg

    # The API server back (and what its outage took down: the leader-elected controllers, revived above): the
    # release is pending-upgrade, and only this collection's expired Lease says why.
    records = history(kubeconfig, namespace)
    assert records[-1]["status"] == "pending-upgrade", records
    lease = client.CoordinationV1Api(api).read_namespaced_lease(f"kubeinfer-helm-{RELEASE}", namespace)
    assert lease.metadata.annotations["kubeinfer.io/helm-revision"] == str(records[-1]["revision"])

    # The next run waits the Lease out, rolls the pending revision back, upgrades, and rolls out.
    started = time.monotonic()
    again = playbook([vllm_task(namespace, pool, replicas=caught)], results=True)
    assert again.returncode == 0, again.output[-4000:]
    result = again.results[0]
    print(f"recovered in {time.monotonic() - started:.0f}s: {result['change_reasons'][0]}")
    assert "left pending-upgrade" in result["change_reasons"][0] and "rolled back to revision" in result["change_reasons"][0]
    records = history(kubeconfig, namespace)
    # helm rollback supersedes the deployed revision, not the pending one: that record stays in the history, below a
    # "Rollback to" record and the upgrade; helm only ever checks the latest revision's status.
    pending = next(r for r in records if r["status"] == "pending-upgrade")
    after = [r for r in records if r["revision"] > pending["revision"]]
    assert [r["description"].split()[0] for r in after] == ["Rollback", "Upgrade"] and after[-1]["status"] == "deployed", records
    assert client.AppsV1Api(api).read_namespaced_deployment(RELEASE, namespace).spec.replicas == caught
    with pytest.raises(ApiException) as gone:
        client.CoordinationV1Api(api).read_namespaced_lease(f"kubeinfer-helm-{RELEASE}", namespace)
    assert gone.value.status == 404, "the Lease goes with the operation"

    # Converged: a third run writes nothing.
    mark = audit.mark()
    third = playbook([vllm_task(namespace, pool, replicas=caught)], results=True)
    assert third.returncode == 0 and third.results[0]["changed"] is False, third.output[-3000:]
    assert [w for agent in AGENTS for w in audit.writes(mark, agent)] == []


def test_a_pending_release_this_collection_did_not_leave_is_refused(
        playbook: PlaybookRunner, audit: Audit, kubeconfig: str, pool: str, namespace: str, core: client.CoreV1Api) -> None:
    """The other side of the recovery: a user's own ``helm upgrade`` at work (no Lease of ours) is left alone."""
    first = playbook([vllm_task(namespace, pool)], results=True)
    assert first.returncode == 0, first.output[-4000:]
    env = dict(os.environ, KUBECONFIG=kubeconfig)
    for replicas in (2, 3, 4):
        argv = [helm_binary(), "upgrade", RELEASE, str(REPO / "charts" / "vllm"), "--namespace", namespace, "--reuse-values",
                "--set", f"replicaCount={replicas}"]
        user = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # pylint: disable=consider-using-with
        stream = watch.Watch()
        frozen = False
        for event in stream.stream(core.list_namespaced_secret, namespace, label_selector=f"owner=helm,name={RELEASE}", timeout_seconds=60):
            if (event["object"].metadata.labels or {}).get("status") == "pending-upgrade" and user.poll() is None:
                os.kill(user.pid, signal.SIGSTOP)
                frozen = True
                stream.stop()
            elif user.poll() is not None:
                stream.stop()
        if frozen:
            break
        user.wait(timeout=120)
    assert frozen, "the user's helm upgrade finished every time before its pending record could be caught"
    try:
        time.sleep(2)  # the frozen helm's request in flight still completes on the server: count from after it
        mark = audit.mark()
        refused = playbook([vllm_task(namespace, pool, replicas=5)], results=True)
        assert refused.returncode != 0
        msg = refused.results[0]["msg"]
        print(f"\nwhile the user's helm upgrade runs: {msg}")
        assert "is in status pending-upgrade: another helm operation runs or was interrupted outside this collection" in msg, msg
        assert [w for agent in AGENTS for w in audit.writes(mark, agent)] == []
    finally:
        os.kill(user.pid, signal.SIGCONT)
        user.wait(timeout=120)
    assert user.returncode == 0, user.stdout.read() if user.stdout else ""


# -- etcd restarted ------------------------------------------------------------------------------------------------

def test_etcd_restarted_then_the_next_run_converges(playbook: PlaybookRunner, audit: Audit, core: client.CoreV1Api, api: client.ApiClient,
                                                    kubeconfig: str, pool: str, namespace: str, control_plane: ControlPlane) -> None:
    first = playbook([vllm_task(namespace, pool)], results=True)
    assert first.returncode == 0, first.output[-4000:]
    control_plane.kill("etcd", signal.SIGTERM)
    control_plane.start("etcd")
    print(f"\nstarted again after the etcd restart: {control_plane.revive(core)}")
    again = playbook([vllm_task(namespace, pool, replicas=2)], results=True)
    assert again.returncode == 0, again.output[-4000:]
    assert client.AppsV1Api(api).read_namespaced_deployment(RELEASE, namespace).spec.replicas == 2
    assert history(kubeconfig, namespace)[-1]["status"] == "deployed"
    mark = audit.mark()
    third = playbook([vllm_task(namespace, pool, replicas=2)], results=True)
    assert third.returncode == 0 and third.results[0]["changed"] is False, third.output[-3000:]
    assert [w for agent in AGENTS for w in audit.writes(mark, agent)] == []


# -- a rollout that cannot finish ----------------------------------------------------------------------------------

def test_a_rollout_that_cannot_finish_is_rolled_back_and_ready_replicas_never_drop(
        playbook: PlaybookRunner, api: client.ApiClient, kubeconfig: str, pool: str, namespace: str) -> None:
    first = playbook([vllm_task(namespace, pool, replicas=2)], results=True)
    assert first.returncode == 0, first.output[-4000:]
    apps = client.AppsV1Api(api)
    lowest: list[int] = []
    stop = threading.Event()

    def watch_ready() -> None:
        stream = watch.Watch()
        for event in stream.stream(apps.list_namespaced_deployment, namespace, field_selector=f"metadata.name={RELEASE}", timeout_seconds=300):
            lowest.append(int(event["object"].status.ready_replicas or 0))
            if stop.is_set():
                stream.stop()

    watcher = threading.Thread(target=watch_ready)
    watcher.start()
    try:
        # A new pod template whose pods can never become Ready: each asks for more GPUs than any node has, so it stays
        # Pending (the preflight that would refuse it is off). The old pods must keep serving until atomic undoes it.
        cut = playbook([vllm_task(namespace, pool, replicas=2, gpus_per_replica=8, tensor_parallel_size=8, preflight_capacity=False,
                                  timeout=30, atomic=True, values={"podAnnotations": {"kubeinfer.io/rollout": "stuck"}})], results=True)
    finally:
        time.sleep(3)
        stop.set()
        apps.patch_namespaced_deployment(RELEASE, namespace, {"metadata": {"annotations": {"kubeinfer.io/watch": "done"}}})
        watcher.join(timeout=60)
    assert cut.returncode != 0
    result = cut.results[0]
    assert "timed out after 30s waiting for Deployment" in result["msg"] and result["rolled_back"] == "rolled back to revision 1"
    print(f"\nReady replicas seen during the failed rollout: {len(lowest)} events, min {min(lowest)}")
    assert lowest and min(lowest) >= 2, lowest
    dep = apps.read_namespaced_deployment(RELEASE, namespace)
    assert dep.spec.replicas == 2 and (dep.status.ready_replicas or 0) == 2
    assert history(kubeconfig, namespace)[-1]["status"] == "deployed"


# -- the metrics chain: the adapter down, Prometheus down ---------------------------------------------------------

def adapter_task(ns: str, prometheus: str, verify_timeout: int = 20) -> dict[str, Any]:
    return {"name": "Serve the queue depth", "kubeinfer.llm.metrics_adapter": {
        "release": "asim", "namespace": ns, "prometheus_url": prometheus, "verify_timeout": verify_timeout}}


def test_verification_names_the_missing_link(playbook: PlaybookRunner, kubeconfig: str, api: client.ApiClient,
                                             prometheus_url: str, release: tuple[str, str]) -> None:  # noqa: F811
    ns, pod = release
    # Registering the release rolls the adapter, which needs a relist before it serves: the healthy runs wait longer.
    up = playbook([adapter_task(ns, prometheus_url, 180)], results=True)
    assert up.returncode == 0 and float(up.results[0]["served"][pod]) == QUEUE, up.output[-3000:]
    apps = client.AppsV1Api(api)
    adapters = apps.list_deployment_for_all_namespaces(label_selector="app.kubernetes.io/name=prometheus-adapter").items
    assert len(adapters) == 1
    adapter = adapters[0]
    try:
        # The adapter down: its Deployment scaled to 0, as an operator might, or a crash loop would leave it.
        apps.patch_namespaced_deployment_scale(adapter.metadata.name, adapter.metadata.namespace, {"spec": {"replicas": 0}})
        registration = client.ApiregistrationV1Api(api)
        deadline = time.monotonic() + 90
        while any(c.type == "Available" and c.status == "True"
                  for c in registration.read_api_service("v1beta1.custom.metrics.k8s.io").status.conditions or []):
            assert time.monotonic() < deadline, "the APIService stayed Available with the adapter scaled to 0"
            time.sleep(1)
        down = playbook([adapter_task(ns, prometheus_url)], results=True)
        assert down.returncode != 0
        msg = down.results[0]["msg"]
        print(f"\nadapter down: {msg}")
        assert "APIService v1beta1.custom.metrics.k8s.io not Available" in msg, msg
    finally:
        apps.patch_namespaced_deployment_scale(adapter.metadata.name, adapter.metadata.namespace, {"spec": {"replicas": 1}})
    back = playbook([adapter_task(ns, prometheus_url, 180)], results=True)
    assert back.returncode == 0, back.output[-3000:]

    # Prometheus down: the adapter still answers, but has nothing to serve; the message names Prometheus.
    os.kill(harness_pid(kubeconfig, "prometheus"), signal.SIGTERM)
    try:
        deadline = time.monotonic() + 120
        while True:
            gone = playbook([adapter_task(ns, prometheus_url)], results=True)
            if gone.returncode != 0 or time.monotonic() > deadline:
                break
            time.sleep(5)  # the adapter serves what it last read until its relist finds Prometheus gone
        assert gone.returncode != 0, "the metric was still served with Prometheus down"
        msg = gone.results[0]["msg"]
        print(f"Prometheus down: {msg}")
        assert f"cannot query Prometheus at {prometheus_url}" in msg, msg
    finally:
        sh([str(TOOLS / "metrics.sh"), "up"], timeout=300)
