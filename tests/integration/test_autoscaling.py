"""metrics_adapter and inference_hpa against the local control plane and the real metrics chain.

The chain is the one a real cluster runs: the vllm chart's pods (kwok-simulated, one per replica) stand for a
release; llm-d-inference-sim, a host process on 127.0.0.1, is their engine (reached by the pod's port-forward and
scraped at the pod's loopback IP by Prometheus 3 with the config the real prometheus-operator generates from the chart's
PodMonitor, the pod network relaying it per kubeinfer.io/sim-metrics-port); the real prometheus-adapter v0.12.0
serves custom.metrics.k8s.io through the aggregator; the real HPA controller in kube-controller-manager reads it.
The simulator reports a fixed queue (``--fake-metrics``), so the value that must come out at the end is known.

Needs the cluster from ``tools/localcluster/cluster.sh up`` (see conftest.py: KUBEINFER_CLUSTER names it) and the binaries
from ``tools/localcluster/build.sh``; this module runs ``tools/localcluster/metrics.sh up`` (idempotent) itself. Without them
the tests fail, never skip.
Run: ``pytest tests/integration/test_autoscaling.py`` with the venv python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import helm_binary
from hostproc import kubectl  # tools/localcluster, on sys.path through conftest.py
from kubernetes import client
from kubernetes.client.rest import ApiException

if TYPE_CHECKING:
    from conftest import Audit, PlaybookRunner

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools" / "localcluster"
MODEL = "kubeinfer/tiny-sim"
RELEASE = "asim"
DEPLOYMENT = "asim-vllm"
QUEUE = 3  # what the simulator reports as vllm:num_requests_waiting
BUDGET = 420  # the chart's startup budget, which becomes the HPA's scale-down window
KEDA_VERSION = "v2.20.2"
SCALEDOBJECT_CRD = "keda.sh_scaledobjects.yaml"


KUBECTL = kubectl()
HELM = helm_binary()


def sh(argv: list[str], timeout: float = 120, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return proc


@pytest.fixture(scope="module")
def prometheus_url(kubeconfig: str) -> str:
    proc = sh([str(TOOLS / "metrics.sh"), "up"], timeout=300, check=False)
    if proc.returncode != 0:
        pytest.fail(f"the metrics chain did not come up: {proc.stderr[-2000:]}", pytrace=False)
    return sh([str(TOOLS / "metrics.sh"), "prometheus-url"]).stdout.strip()


@pytest.fixture(scope="module")
def simulator() -> Iterator[int]:
    """llm-d-inference-sim on 127.0.0.1 (tools/localcluster/sim.py keeps it off every other address)."""
    name = f"it-autoscaling-{uuid.uuid4().hex[:6]}"
    runner = [sys.executable, str(TOOLS / "sim.py")]
    proc = sh(runner + ["start", name, "--model", MODEL, "--fake-metrics", json.dumps({"waiting-requests": QUEUE, "running-requests": 1})],
              check=False)
    if proc.returncode != 0:
        pytest.fail(f"the simulator did not start: {proc.stderr[-2000:]}", pytrace=False)
    try:
        yield int(proc.stdout.strip())
    finally:
        sh(runner + ["stop", name], timeout=60)


def ready_pod(core: client.CoreV1Api, ns: str, selector: str) -> str:
    """The name of the Ready pod matching ``selector`` (helm install --wait has waited for it)."""
    for pod in core.list_namespaced_pod(ns, label_selector=selector).items:
        conds = {c.type: c.status for c in (pod.status.conditions or [])}
        if pod.status.phase == "Running" and conds.get("Ready") == "True" and not pod.metadata.deletion_timestamp:
            return str(pod.metadata.name)
    raise AssertionError(f"no Ready pod in {ns} matching {selector}")


@pytest.fixture(scope="module")
def release(api: client.ApiClient, kubeconfig: str, simulator: int, prometheus_url: str, gpu_stack: None,
            playbook_runner: Callable[[Path], PlaybookRunner], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The vllm chart (engine sim) installed with helm in a fresh namespace; its pod forwards port 8000 to the simulator.

    The chart labels the pod kubeinfer.io/release, and its PodMonitor lists it in podTargetLabels, so the operator's
    scrape config turns it into kubeinfer_io_release; the local-cluster annotation kubeinfer.io/sim-metrics-port has the
    pod network (tools/localcluster/podnet.py) answer the pod's IP with the simulator.
    """
    core = client.CoreV1Api(api)
    ns = f"it-autoscaling-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": ns}})
    values = tmp_path_factory.mktemp("values") / "values.json"
    values.write_text(json.dumps({
        "engine": "sim", "model": {"name": MODEL}, "replicaCount": 1, "gpusPerReplica": 1,
        "podAnnotations": {"kubeinfer.io/sim-metrics-port": str(simulator)},
        "metrics": {"podMonitor": {"enabled": True}},
        "probes": {"startup": {"budgetSeconds": BUDGET}},
    }))
    env = dict(os.environ, KUBECONFIG=kubeconfig)
    try:
        sh([str(HELM), "install", RELEASE, str(REPO / "charts" / "vllm"), "--namespace", ns, "--values", str(values),
            "--wait", "--timeout", "90s"], env=env, timeout=150)
        pod = ready_pod(core, ns, f"app.kubernetes.io/instance={RELEASE}")
        sh([str(TOOLS / "cluster.sh"), "forward", ns, pod, str(simulator), "8000"])
        yield ns, pod
    finally:
        # Unregister the release so that the shared adapter rule keeps only live releases.
        playbook_runner(tmp_path_factory.mktemp("cleanup"))([
            {"name": "Unregister", "ignore_errors": True,
             "kubeinfer.llm.metrics_adapter": {"release": RELEASE, "namespace": ns, "state": "absent"}}], results=True)
        try:
            core.delete_namespace(ns)
        except ApiException as e:
            if e.status != 404:
                raise


def raw(kubeconfig: str, path: str) -> dict[str, Any]:
    return json.loads(sh([str(KUBECTL), "--kubeconfig", kubeconfig, "get", "--raw", path]).stdout)


def adapter_task(ns: str, prometheus_url: str, **over: Any) -> dict[str, Any]:
    args = {"release": RELEASE, "namespace": ns, "prometheus_url": prometheus_url, "verify_timeout": 150}
    args.update(over)
    return {"name": "Serve the queue depth", "kubeinfer.llm.metrics_adapter": args}


WRITES = ("patch", "apply", "create", "delete")


def test_metrics_adapter_serves_the_queue_depth_per_pod(playbook: PlaybookRunner, kubeconfig: str,
                                                        prometheus_url: str, release: tuple[str, str]) -> None:
    ns, pod = release
    run = playbook([adapter_task(ns, prometheus_url)], results=True)
    assert run.returncode == 0, run.output[-4000:]
    result = run.results[0]
    assert result["metric_name"] == "vllm:num_requests_waiting", "detected on the live pod through the port-forward API"
    assert result["metric_source"] == f"/metrics of pod {ns}/{pod}"
    assert RELEASE in result["releases"]
    assert float(result["served"][pod]) == QUEUE
    assert RELEASE in result["rule"]["metricsQuery"] and "by (<<.GroupBy>>)" in result["rule"]["metricsQuery"]

    # What the HPA controller will read, through the aggregator.
    listing = raw(kubeconfig, f"/apis/custom.metrics.k8s.io/v1beta1/namespaces/{ns}/pods/*/vllm_queue_depth")
    served = {item["describedObject"]["name"]: item["value"] for item in listing["items"]}
    assert served == {pod: str(QUEUE)}

    # A re-run detects again but writes nothing and restarts nothing.
    run = playbook([adapter_task(ns, prometheus_url)], results=True)
    assert run.returncode == 0, run.output[-4000:]
    again = run.results[0]
    assert again["changed"] is False and again["restarted"] is False and again["configmap_changed"] is False
    assert not set(again["api_requests"]) & set(WRITES), again["api_requests"]


def test_inference_hpa_reads_a_current_value(playbook: PlaybookRunner, api: client.ApiClient,
                                             prometheus_url: str, release: tuple[str, str]) -> None:
    ns, pod = release
    hpa_args: dict[str, Any] = {"release": RELEASE, "namespace": ns, "min_replicas": 1, "max_replicas": 2, "target_queue_depth": 5,
                                "verify_timeout": 150}
    task = {"name": "Autoscale on the queue", "kubeinfer.llm.inference_hpa": hpa_args}
    run = playbook([adapter_task(ns, prometheus_url), task], results=True)
    assert run.returncode == 0, run.output[-4000:]
    hpa = run.results[1]
    assert hpa["target"] == DEPLOYMENT
    assert hpa["startup_budget_seconds"] == BUDGET and hpa["scale_down_window_seconds"] == BUDGET
    assert float(hpa["current_value"]) == QUEUE, hpa.get("conditions")
    assert hpa["desired_replicas"] == 1, "3 waiting against a target of 5 keeps one replica"

    obj = client.AutoscalingV2Api(api).read_namespaced_horizontal_pod_autoscaler(RELEASE, ns)
    assert obj.spec.behavior.scale_down.stabilization_window_seconds == BUDGET
    metric = obj.status.current_metrics[0].pods
    assert metric.metric.name == "vllm_queue_depth" and metric.current.average_value == str(QUEUE)

    # Check mode: nothing would change, nothing is written.
    run = playbook([task], check=True, results=True)
    assert run.returncode == 0, run.output[-4000:]
    assert run.results[0]["changed"] is False and not set(run.results[0]["api_requests"]) & set(WRITES)
    assert float(run.results[0]["current_value"]) == QUEUE

    # A window below the load time is refused before any write.
    short = {"name": "Too short", "ignore_errors": True, "kubeinfer.llm.inference_hpa": dict(
        hpa_args, scale_down={"stabilization_window_seconds": 60})}
    run = playbook([short], results=True)
    assert run.results[0]["failed"] and "scale_down.stabilization_window_seconds=60 is below the model load time" in run.results[0]["msg"]


def test_unknown_series_is_named_as_the_missing_link(playbook: PlaybookRunner,
                                                     prometheus_url: str, release: tuple[str, str]) -> None:
    ns = release[0]
    name = "it_no_such_series"
    task = adapter_task(ns, prometheus_url, custom_metric_name=name, metric_name="vllm:no_such_metric", verify_timeout=20)
    task["ignore_errors"] = True
    try:
        run = playbook([task], results=True)
        result = run.results[0]
        assert result.get("failed"), run.output[-3000:]
        assert result["msg"].endswith(
            f'series {{__name__="vllm:no_such_metric",kubeinfer_io_release="{RELEASE}",namespace="{ns}"}} not found in Prometheus at {prometheus_url}'
        ), result["msg"]
    finally:
        run = playbook([
            {"name": "Drop the rule", "kubeinfer.llm.metrics_adapter": {"release": RELEASE, "namespace": ns, "custom_metric_name": name,
                                                                        "state": "absent"}}], results=True)
        assert run.returncode == 0 and run.results[0]["rule"] is None, run.output[-3000:]


@pytest.fixture(scope="module")
def keda_crd() -> Path:
    """KEDA's real ScaledObject CRD: from ../shared/upstream (unmodified, see its README), else from the KEDA module
    a user would fetch with Go (config/crd/bases); never an imitation. Fails saying so when neither is there."""
    shared = REPO.parent / "shared" / "upstream" / "crds" / f"keda-{KEDA_VERSION}" / SCALEDOBJECT_CRD
    if shared.is_file():
        return shared
    proc = subprocess.run(["go", "mod", "download", "-json", f"github.com/kedacore/keda/v2@{KEDA_VERSION}"],
                          capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode == 0:
        crd = Path(json.loads(proc.stdout)["Dir"]) / "config" / "crd" / "bases" / SCALEDOBJECT_CRD
        if crd.is_file():
            return crd
    pytest.fail(f"no KEDA {KEDA_VERSION} ScaledObject CRD: {shared} is missing and `go mod download` of "
                f"github.com/kedacore/keda/v2@{KEDA_VERSION} failed: {proc.stderr[-1000:]}", pytrace=False)


def test_keda_scaled_object_against_the_crd(playbook: PlaybookRunner, kubeconfig: str, keda_crd: Path,
                                            prometheus_url: str, release: tuple[str, str]) -> None:
    ns = release[0]
    kubectl = [str(KUBECTL), "--kubeconfig", kubeconfig]
    sh(kubectl + ["delete", "--ignore-not-found", "-f", str(keda_crd), "--wait"])
    task = {"name": "Scale to zero with KEDA", "ignore_errors": True, "kubeinfer.llm.inference_hpa": {
        "release": RELEASE, "namespace": ns, "kind": "keda", "min_replicas": 0, "max_replicas": 2, "target_queue_depth": 5,
        "prometheus_url": prometheus_url, "verify": False}}
    run = playbook([task], results=True)
    assert run.results[0]["msg"].startswith("KEDA is not installed: no scaledobjects.keda.sh CRD"), run.output[-3000:]
    sh(kubectl + ["apply", "-f", str(keda_crd)])
    try:
        sh(kubectl + ["wait", "--for=condition=Established", "crd/scaledobjects.keda.sh", "--timeout=60s"])
        run = playbook([task, task], results=True)
        first, second = run.results
        assert not first.get("failed"), run.output[-3000:]
        assert first["changed"] and not second["changed"]
        so = json.loads(sh(kubectl + ["get", "scaledobject", RELEASE, "-n", ns, "-o", "json"]).stdout)
        assert so["spec"]["minReplicaCount"] == 0 and so["spec"]["cooldownPeriod"] == BUDGET
        trigger = so["spec"]["triggers"][0]
        assert trigger["metadata"]["query"] == f'sum(vllm:num_requests_waiting{{namespace="{ns}",kubeinfer_io_release="{RELEASE}"}})'
        assert trigger["metadata"]["serverAddress"] == prometheus_url
    finally:
        sh(kubectl + ["delete", "--ignore-not-found", "-f", str(keda_crd)])


def autoscalers(api: client.ApiClient, ns: str) -> list[str]:
    """Every HPA and ScaledObject in the namespace that scales the release's Deployment, as ``Kind/name``."""
    hpas = client.AutoscalingV2Api(api).list_namespaced_horizontal_pod_autoscaler(ns).items
    found = [f"HorizontalPodAutoscaler/{h.metadata.name}" for h in hpas if h.spec.scale_target_ref.name == DEPLOYMENT]
    sos = client.CustomObjectsApi(api).list_namespaced_custom_object("keda.sh", "v1alpha1", ns, "scaledobjects")["items"]
    found += [f"ScaledObject/{o['metadata']['name']}" for o in sos if o["spec"]["scaleTargetRef"]["name"] == DEPLOYMENT]
    return sorted(found)


def test_switching_between_hpa_and_keda_on_the_real_crd(playbook: PlaybookRunner, api: client.ApiClient, audit: Audit, kubeconfig: str,
                                                        keda_crd: Path, prometheus_url: str, release: tuple[str, str]) -> None:
    """Without the KEDA operator (make test-keda runs the same switch against the real operator and its webhook):
    the switch converges both ways with one autoscaler on the target, re-runs write nothing, check mode only dry-runs,
    a foreign HPA is refused before any write, an empty query fails naming the label, and a ScaledObject held by KEDA's
    finalizer (the operator gone) stops the switch before a second autoscaler exists."""
    ns = release[0]
    kubectl = [str(KUBECTL), "--kubeconfig", kubeconfig]
    custom = client.CustomObjectsApi(api)
    hpa_task = {"name": "HPA", "kubeinfer.llm.inference_hpa": {"release": RELEASE, "namespace": ns, "max_replicas": 2, "verify_timeout": 150}}

    def keda_task(**over: Any) -> dict[str, Any]:
        args = {"release": RELEASE, "namespace": ns, "kind": "keda", "max_replicas": 2, "prometheus_url": prometheus_url, "verify": False}
        return {"name": "KEDA", "ignore_errors": True, "kubeinfer.llm.inference_hpa": {**args, **over}}

    def one(step: dict[str, Any], check: bool = False) -> tuple[dict[str, Any], list[str]]:
        mark = audit.mark()
        run = playbook([step], check=check, results=True)
        assert run.results, run.output[-3000:]
        return run.results[0], audit.writes(mark, "kubeinfer.llm")

    sh(kubectl + ["apply", "--server-side", "-f", str(keda_crd)])
    try:
        sh(kubectl + ["wait", "--for=condition=Established", "crd/scaledobjects.keda.sh", "--timeout=60s"])
        run = playbook([adapter_task(ns, prometheus_url), hpa_task], results=True)
        assert run.returncode == 0 and float(run.results[1]["current_value"]) == QUEUE, run.output[-3000:]

        dry, writes = one(keda_task(), check=True)
        assert writes == [] and dry["changed"] and dry["removed"] == [f"HorizontalPodAutoscaler {ns}/{RELEASE}"], (writes, dry)
        assert autoscalers(api, ns) == [f"HorizontalPodAutoscaler/{RELEASE}"]

        to_keda, writes = one(keda_task())
        assert not to_keda.get("failed"), to_keda.get("msg")
        assert writes == [f"delete horizontalpodautoscalers {ns}/{RELEASE}", f"patch scaledobjects {ns}/{RELEASE}"]
        assert autoscalers(api, ns) == [f"ScaledObject/{RELEASE}"]
        again, writes = one(keda_task())
        assert writes == [] and not again["changed"] and again["removed"] == []

        # Verification does not stop at Ready: a query over series without the label fails naming it (before KEDA
        # is even asked), and a good query without an operator fails on Ready, saying so.
        query = f'sum(vllm:num_requests_waiting{{namespace="{ns}",kubeinfer_io_tier="gold"}})'
        empty = one(keda_task(keda_query=query, verify=True, verify_timeout=5))[0]
        assert empty.get("failed") and empty["msg"] == (
            f"the KEDA query {query} returns no sample from Prometheus at {prometheus_url} after 5s: series "
            f'vllm:num_requests_waiting{{namespace="{ns}"}} exist, but none carries the label kubeinfer_io_tier. '
            "KEDA counts an empty result as 0, so this ScaledObject would never scale up"), empty.get("msg")
        unready = one(keda_task(verify=True, verify_timeout=5))[0]
        assert unready.get("failed") and f"ScaledObject {ns}/{RELEASE} is not Ready: no conditions yet" in unready["msg"] \
            and "is the KEDA operator running?" in unready["msg"], unready.get("msg")

        # A foreign HPA of the target is refused before any write.
        client.AutoscalingV2Api(api).create_namespaced_horizontal_pod_autoscaler(ns, {"metadata": {"name": "hand-made"}, "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": DEPLOYMENT}, "minReplicas": 1, "maxReplicas": 2}})
        refused, writes = one(keda_task())
        client.AutoscalingV2Api(api).delete_namespaced_horizontal_pod_autoscaler("hand-made", ns)
        assert writes == [] and refused["msg"].startswith(
            f"kind=keda: Deployment {ns}/{DEPLOYMENT} is already scaled by HorizontalPodAutoscaler {ns}/hand-made"), refused.get("msg")

        # keda -> hpa with KEDA's finalizer on the ScaledObject and no operator to remove it: deleted, held, reported.
        custom.patch_namespaced_custom_object("keda.sh", "v1alpha1", ns, "scaledobjects", RELEASE,
                                              {"metadata": {"finalizers": ["finalizer.keda.sh"]}})
        held, writes = one(dict(hpa_task, ignore_errors=True, **{"kubeinfer.llm.inference_hpa": dict(
            hpa_task["kubeinfer.llm.inference_hpa"], verify_timeout=5)}))
        assert writes == [f"delete scaledobjects {ns}/{RELEASE}"], writes
        assert held.get("failed") and f"ScaledObject {ns}/{RELEASE} is held by the finalizer finalizer.keda.sh, which only the KEDA " \
            "operator removes (is it running?)" in held["msg"], held.get("msg")
        assert autoscalers(api, ns) == [f"ScaledObject/{RELEASE}"], "no HPA of ours while the ScaledObject may still scale"
        custom.patch_namespaced_custom_object("keda.sh", "v1alpha1", ns, "scaledobjects", RELEASE, {"metadata": {"finalizers": None}})

        back, writes = one(hpa_task)
        assert not back.get("failed"), back.get("msg")
        assert writes == [f"patch horizontalpodautoscalers {ns}/{RELEASE}"] and float(back["current_value"]) == QUEUE
        assert autoscalers(api, ns) == [f"HorizontalPodAutoscaler/{RELEASE}"]
        again, writes = one(hpa_task)
        assert writes == [] and not again["changed"]
        # And keda -> hpa in one run when nothing holds the ScaledObject (it was never reconciled).
        assert not one(keda_task())[0].get("failed")
        back, writes = one(hpa_task)
        assert writes == [f"delete scaledobjects {ns}/{RELEASE}", f"patch horizontalpodautoscalers {ns}/{RELEASE}"]
        assert back["removed"] == [f"ScaledObject {ns}/{RELEASE}"] and autoscalers(api, ns) == [f"HorizontalPodAutoscaler/{RELEASE}"]
    finally:
        sh(kubectl + ["delete", "--ignore-not-found", "-f", str(keda_crd)])


def test_roles_configure_and_verify(playbook: PlaybookRunner,
                                    prometheus_url: str, release: tuple[str, str]) -> None:
    ns, pod = release
    roles = [
        {"name": "Run the metrics_adapter role", "ansible.builtin.include_role": {"name": "kubeinfer.llm.metrics_adapter"},
         "vars": {"metrics_adapter_release": RELEASE, "metrics_adapter_namespace": ns, "metrics_adapter_prometheus_url": prometheus_url}},
        {"name": "Run the autoscaling role", "ansible.builtin.include_role": {"name": "kubeinfer.llm.autoscaling"},
         "vars": {"autoscaling_release": RELEASE, "autoscaling_namespace": ns, "autoscaling_max_replicas": 2,
                  "autoscaling_startup_budget_seconds": BUDGET + 30}},
    ]
    run = playbook(roles, results=True)
    assert run.returncode == 0, run.output[-4000:]
    # The roles loop over their releases (here the one of the single-release variables): one item per release.
    items = [item for r in run.results for item in r.get("results") or [r]]
    served = [r["served"] for r in items if isinstance(r.get("served"), dict) and r["served"]]
    assert served and float(served[-1][pod]) == QUEUE, "the role's verify step saw the value"
    hpa_reads = [r for r in items if r.get("current_value") is not None]
    assert hpa_reads and float(hpa_reads[-1]["current_value"]) == QUEUE
    assert any(r.get("scale_down_window_seconds") == BUDGET + 30 for r in items)
    # The whole chain again, in check mode: nothing would change and the checks still pass.
    run = playbook(roles, check=True, results=True)
    assert run.returncode == 0, run.output[-4000:]
    assert not any(r.get("changed") for r in run.results), [r.get("msg") for r in run.results if r.get("changed")]
