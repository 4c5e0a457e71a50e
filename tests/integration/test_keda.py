"""inference_hpa kind=keda against the real KEDA v2.20.2: operator, metrics API server and admission webhooks.

``tools/localcluster/keda.sh up`` (run here, stopped at the end) starts the binaries build.sh built from
``github.com/kedacore/keda/v2`` as host processes on 127.0.0.1, with KEDA's real CRDs (../shared/upstream), its
own ValidatingWebhookConfiguration (called on a loopback URL) and the ``v1beta1.external.metrics.k8s.io``
APIService. So what the issue's fault 2 is about is real here: KEDA's webhook refuses a ScaledObject whose target
another HPA owns; KEDA sets Ready although the query matches nothing and its HPA then reads 0; KEDA's own HPA
``keda-hpa-<name>`` scales the Deployment through the HPA controller of kube-controller-manager.

The release is the vllm chart (engine sim) with llm-d-inference-sim on 127.0.0.1 behind its pods, scraped by the
local Prometheus with the series labels ``namespace``, ``pod`` and ``kubeinfer_io_release``. Writes are counted in
the API server's audit log by user agent (the collection sends ``kubeinfer.llm``). Needs the cluster and its
metrics chain (``make cluster-up``) and the KEDA binaries (``build.sh keda``); fails, never skips, without them.
Not part of ``make integration``: ``make test-keda`` builds KEDA and runs this file. 5 minutes (load average 10).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
from conftest import load_bench
from kubernetes import client
from kubernetes.client.rest import ApiException

if TYPE_CHECKING:
    from conftest import Audit, PlaybookRunner

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools" / "localcluster"
RELEASE = "ksim"
DEPLOYMENT = "ksim"  # vllm_release sets fullnameOverride to the release name
MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
BUDGET = 15
AGENT = "kubeinfer.llm"


def tool(script: str, *args: str, timeout: float = 300) -> str:
    proc = subprocess.run([str(TOOLS / script), *args], capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{script} {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-3000:]}", pytrace=False)
    return proc.stdout.strip()


@pytest.fixture(scope="module")
def prometheus_url(kubeconfig: str) -> str:
    tool("metrics.sh", "up")
    return tool("metrics.sh", "prometheus-url")


@pytest.fixture(scope="module")
def keda(kubeconfig: str, prometheus_url: str) -> Iterator[None]:
    tool("keda.sh", "up", timeout=300)
    try:
        yield
    finally:
        tool("keda.sh", "down", timeout=120)


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench()


@pytest.fixture(scope="module")
def release(api: client.ApiClient, bench: ModuleType, keda: None, gpu_stack: None,
            playbook_runner: Callable[[Path], PlaybookRunner], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """One release of the vllm chart (engine sim) in a fresh namespace; its simulator serves one request at a time."""
    core = client.CoreV1Api(api)
    ns = f"it-keda-{uuid.uuid4().hex[:8]}"
    sim = f"it-keda-{uuid.uuid4().hex[:6]}"
    port = int(tool("sim.sh", "start", sim, "--model", MODEL, *bench.SIM_FLAGS, timeout=120))
    try:
        run = playbook_runner(tmp_path_factory.mktemp("release"))([{"name": "Serve", "kubeinfer.llm.vllm_release": {
            "name": RELEASE, "namespace": ns, "create_namespace": True, "model": MODEL, "engine": "sim", "replicas": 1,
            "gpus_per_replica": 1, "startup_budget_seconds": BUDGET, "timeout": 120,
            "values": {"podAnnotations": {"kubeinfer.io/sim-metrics-port": str(port)},
                       "metrics": {"podMonitor": {"enabled": True}}}}}], results=True)
        assert run.returncode == 0, run.output[-4000:]
        yield ns, port
    finally:
        try:
            core.delete_namespace(ns)
        except ApiException as e:
            if e.status != 404:
                raise
        tool("sim.sh", "stop", sim, timeout=60)


def autoscalers(api: client.ApiClient, ns: str) -> list[str]:
    """Every HPA and ScaledObject in the namespace that scales the Deployment, as ``Kind/name``."""
    hpas = client.AutoscalingV2Api(api).list_namespaced_horizontal_pod_autoscaler(ns).items
    found = [f"HorizontalPodAutoscaler/{h.metadata.name}" for h in hpas if h.spec.scale_target_ref.name == DEPLOYMENT]
    sos = client.CustomObjectsApi(api).list_namespaced_custom_object("keda.sh", "v1alpha1", ns, "scaledobjects")["items"]
    found += [f"ScaledObject/{s['metadata']['name']}" for s in sos if s["spec"]["scaleTargetRef"]["name"] == DEPLOYMENT]
    return sorted(found)


def task(ns: str, prometheus_url: str, kind: str, **over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"release": RELEASE, "namespace": ns, "kind": kind, "min_replicas": 1, "max_replicas": 3, "target_queue_depth": 2,
                            "startup_budget_seconds": BUDGET, "scale_down": {"stabilization_window_seconds": 30}, "verify_timeout": 150}
    if kind == "keda":
        args.update(prometheus_url=prometheus_url, metric_name="vllm:num_requests_waiting")
    args.update(over)
    return {"name": f"Autoscale with {kind}", "kubeinfer.llm.inference_hpa": args}


def run_one(playbook: PlaybookRunner, step: dict[str, Any], check: bool = False) -> dict[str, Any]:
    run = playbook([step], check=check, results=True)
    assert run.returncode == 0, run.output[-4000:]
    return dict(run.results[0])


def test_switching_between_hpa_and_keda_converges(playbook: PlaybookRunner, api: client.ApiClient, audit: Audit,
                                                  prometheus_url: str, release: tuple[str, int]) -> None:
    ns = release[0]
    # The custom metric for kind=hpa: the adapter rule of this release.
    adapter = {"name": "Serve the queue depth", "kubeinfer.llm.metrics_adapter": {
        "release": RELEASE, "namespace": ns, "metric_name": "vllm:num_requests_waiting", "prometheus_url": prometheus_url,
        "verify_timeout": 150}}
    try:
        run_one(playbook, adapter)
        hpa = run_one(playbook, task(ns, prometheus_url, "hpa"))
        assert hpa["current_value"] == "0" and autoscalers(api, ns) == [f"HorizontalPodAutoscaler/{RELEASE}"]

        # Check mode first: dry runs only, though KEDA's webhook refuses the dry run while our HPA is still there.
        mark = audit.mark()
        dry = run_one(playbook, task(ns, prometheus_url, "keda"), check=True)
        assert audit.writes(mark, AGENT) == [], "check mode wrote"
        assert dry["changed"] and dry["removed"] == [f"HorizontalPodAutoscaler {ns}/{RELEASE}"]
        assert "already managed by the hpa" in dry["warnings"][0], dry.get("warnings")
        assert autoscalers(api, ns) == [f"HorizontalPodAutoscaler/{RELEASE}"]

        # hpa -> keda: our HPA goes first, then the ScaledObject passes the real webhook; KEDA makes its HPA.
        mark = audit.mark()
        keda = run_one(playbook, task(ns, prometheus_url, "keda"))
        assert audit.writes(mark, AGENT) == [f"delete horizontalpodautoscalers {ns}/{RELEASE}", f"patch scaledobjects {ns}/{RELEASE}"]
        assert keda["removed"] == [f"HorizontalPodAutoscaler {ns}/{RELEASE}"] and keda["keda_hpa"] == f"keda-hpa-{RELEASE}"
        assert keda["query_value"] == "0" and keda["current_value"] == "0", keda
        assert autoscalers(api, ns) == [f"HorizontalPodAutoscaler/keda-hpa-{RELEASE}", f"ScaledObject/{RELEASE}"]
        mark = audit.mark()
        again = run_one(playbook, task(ns, prometheus_url, "keda"))
        again_dry = run_one(playbook, task(ns, prometheus_url, "keda"), check=True)
        assert audit.writes(mark, AGENT) == [] and not again["changed"] and not again_dry["changed"]
        assert again_dry["current_value"] == "0", "check mode reads KEDA's HPA too"

        # keda -> hpa: the ScaledObject goes, KEDA's finalizer runs and the garbage collector removes keda-hpa-*,
        # and only then our HPA is created.
        mark = audit.mark()
        back = run_one(playbook, task(ns, prometheus_url, "hpa"))
        assert audit.writes(mark, AGENT) == [f"delete scaledobjects {ns}/{RELEASE}", f"patch horizontalpodautoscalers {ns}/{RELEASE}"]
        assert back["removed"] == [f"ScaledObject {ns}/{RELEASE}"] and back["current_value"] == "0"
        assert autoscalers(api, ns) == [f"HorizontalPodAutoscaler/{RELEASE}"]
        mark = audit.mark()
        assert not run_one(playbook, task(ns, prometheus_url, "hpa"))["changed"]
        assert audit.writes(mark, AGENT) == []
    finally:
        playbook([{"name": "Unregister", "ignore_errors": True, "kubeinfer.llm.metrics_adapter": {
            "release": RELEASE, "namespace": ns, "state": "absent"}},
            {"name": "No autoscaler", "ignore_errors": True, "kubeinfer.llm.inference_hpa": {"release": RELEASE, "namespace": ns, "state": "absent"}}])


def test_a_foreign_hpa_is_refused_before_any_write(playbook: PlaybookRunner, api: client.ApiClient, audit: Audit,
                                                   prometheus_url: str, release: tuple[str, int]) -> None:
    ns = release[0]
    hpas = client.AutoscalingV2Api(api)
    hpas.create_namespaced_horizontal_pod_autoscaler(ns, {
        "metadata": {"name": "hand-made"}, "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": DEPLOYMENT},
                                                    "minReplicas": 1, "maxReplicas": 2}})
    try:
        step = task(ns, prometheus_url, "keda")
        step["ignore_errors"] = True
        mark = audit.mark()
        run = playbook([step], results=True)
        result = run.results[0]
        assert result.get("failed") and result["msg"].startswith(
            f"kind=keda: Deployment {ns}/{DEPLOYMENT} is already scaled by HorizontalPodAutoscaler {ns}/hand-made, which kubeinfer.llm "
            "does not manage"), result.get("msg")
        assert audit.writes(mark, AGENT) == []
    finally:
        hpas.delete_namespaced_horizontal_pod_autoscaler("hand-made", ns)


def test_an_empty_query_fails_verification_naming_the_label(playbook: PlaybookRunner, api: client.ApiClient,
                                                            prometheus_url: str, release: tuple[str, int]) -> None:
    """The series lack the label the query filters on. KEDA calls the ScaledObject Ready and its HPA reads 0
    (the empty result counted as 0); the module fails and names the label."""
    ns = release[0]
    query = f'sum(vllm:num_requests_waiting{{namespace="{ns}",kubeinfer_io_tier="gold"}})'
    step = task(ns, prometheus_url, "keda", keda_query=query, verify_timeout=20)
    step["ignore_errors"] = True
    try:
        run = playbook([step], results=True)
        result = run.results[0]
        assert result.get("failed"), run.output[-3000:]
        assert result["msg"] == (f"the KEDA query {query} returns no sample from Prometheus at {prometheus_url} after 20s: series "
                                 f'vllm:num_requests_waiting{{namespace="{ns}"}} exist, but none carries the label kubeinfer_io_tier. '
                                 "KEDA counts an empty result as 0, so this ScaledObject would never scale up"), result["msg"]
        # What the old check accepted: KEDA says Ready, and its HPA reads a value (0) from the empty query.
        custom = client.CustomObjectsApi(api)
        deadline = time.monotonic() + 60
        while True:
            so = custom.get_namespaced_custom_object("keda.sh", "v1alpha1", ns, "scaledobjects", RELEASE)
            hpa = client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler(f"keda-hpa-{RELEASE}", ns) \
                if so.get("status", {}).get("hpaName") else None
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in so.get("status", {}).get("conditions") or [])
            metrics = (hpa.status.current_metrics or []) if hpa else []
            if ready and metrics and metrics[0].external.current.average_value == "0":
                break
            assert time.monotonic() < deadline, f"KEDA did not report Ready and 0: {json.dumps(so.get('status'))} {metrics}"
            time.sleep(2)
    finally:
        remove_keda(playbook, api, ns)


def remove_keda(playbook: PlaybookRunner, api: client.ApiClient, ns: str) -> None:
    """Delete the ScaledObject and wait until KEDA's finalizer and the garbage collector removed its HPA too."""
    playbook([{"name": "Remove", "kubeinfer.llm.inference_hpa": {"release": RELEASE, "namespace": ns, "kind": "keda", "state": "absent"}}])
    deadline = time.monotonic() + 60
    while autoscalers(api, ns):
        assert time.monotonic() < deadline, f"left behind: {autoscalers(api, ns)}"
        time.sleep(1)


def test_keda_scales_the_deployment_under_real_load(playbook: PlaybookRunner, api: client.ApiClient, bench: ModuleType,
                                                    prometheus_url: str, release: tuple[str, int]) -> None:
    """Six requests in flight against a simulator that serves one at a time: five wait. KEDA's HPA reads
    5 / 1 replica against a target of 2 and raises the Deployment to 3 replicas."""
    ns, port = release
    keda = run_one(playbook, task(ns, prometheus_url, "keda"))
    assert keda["current_value"] == "0" and autoscalers(api, ns) == [f"HorizontalPodAutoscaler/keda-hpa-{RELEASE}", f"ScaledObject/{RELEASE}"]
    load = bench.Load(port, MODEL)
    apps, hpas = client.AppsV1Api(api), client.AutoscalingV2Api(api)
    load.start()
    started = time.monotonic()
    try:
        seen: list[tuple[float, int | None, int | None, str | None]] = []
        while True:
            hpa = hpas.read_namespaced_horizontal_pod_autoscaler(f"keda-hpa-{RELEASE}", ns)
            dep = apps.read_namespaced_deployment(DEPLOYMENT, ns)
            metrics = hpa.status.current_metrics or []
            value = metrics[0].external.current.average_value if metrics else None
            seen.append((round(time.monotonic() - started, 1), hpa.status.desired_replicas, dep.spec.replicas, value))
            if (dep.spec.replicas or 0) >= 2 and (hpa.status.desired_replicas or 0) >= 2:
                break
            # scrape 15 s + KEDA's HPA sync 15 s + 5 s, and the same again for a machine under load
            assert time.monotonic() - started < 70, f"KEDA's HPA did not scale the Deployment: {seen}"
            time.sleep(1)
    finally:
        load.stop()
        load.join()
    owners = [r.kind for r in (dep.metadata.owner_references or [])]
    assert owners == [] and autoscalers(api, ns) == [f"HorizontalPodAutoscaler/keda-hpa-{RELEASE}", f"ScaledObject/{RELEASE}"]
    assert hpa.metadata.owner_references[0].kind == "ScaledObject", "the HPA that scaled is KEDA's"
    remove_keda(playbook, api, ns)


def test_keda_processes_listen_on_loopback_only(keda: None) -> None:
    """Every socket the KEDA processes (and their relays) listen on is on 127.0.0.1 or inside their own namespaces."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True, timeout=30).stdout
    state = Path(os.environ.get("KWOK_WORKDIR") or Path(os.environ.get("KUBEINFER_CACHE") or Path.home() / ".cache" / "kubeinfer") / "kwok")
    pids: set[str] = set()
    keda_dir = state / f"kubeinfer-{os.environ.get('KUBEINFER_CLUSTER') or 'kubeinfer'}" / "keda"
    for pidfile in keda_dir.glob("*.pid"):
        pids.add(pidfile.read_text().split()[0])
    assert pids, f"no KEDA processes recorded in {keda_dir}"
    group = set()
    for pid in pids:
        group |= set(subprocess.run(["pgrep", "-g", pid], capture_output=True, text=True, check=False).stdout.split())
    wild = [line for line in out.splitlines() if any(f"pid={p}," in line for p in group)
            and not line.split()[3].startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:"))]
    assert wild == [], wild
