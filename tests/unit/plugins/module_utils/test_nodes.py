from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils import _nodes
from ansible_collections.kubeinfer.llm.plugins.module_utils._client import build_api_client
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._resources import CONFLICT_ATTEMPTS, Kube

from .fake_api import FakeApiClient, FakeApiException, InFlight
from .fake_cluster import FakeCluster, answer_probes, merge, pod_succeeded, probe_answer, probe_pods

TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule", "state": "present"}


def node(name: str, labels: dict | None = None, taints: list | None = None) -> dict:
    return {"metadata": {"name": name, "labels": labels or {}, "resourceVersion": "7"}, "spec": {"taints": taints or []}}


def cluster(*nodes: dict) -> FakeApiClient:
    return FakeApiClient({("GET", "/api/v1/nodes"): {"items": list(nodes)}})


def run(api: FakeApiClient | Kube, check_mode: bool = False, want_diff: bool = False, **kw) -> dict:
    """gpu_node's runner with the module's parameters: its defaults, then ``kw``."""
    params = {"names": None, "label_selector": "gpu=true", "labels": {"role": "inference"}, "taints": [TAINT],
              "state": "present", "require_match": True, "parallel": 32,
              "probe_image": "validator:test", "probe_namespace": "kube-system", "probe_timeout": 30}
    params.update(kw)
    return _nodes.run(api if isinstance(api, Kube) else Kube(api), params, check_mode, want_diff)


def test_one_list_and_one_patch_per_changed_node() -> None:
    done = node("gpu-0", {"role": "inference"}, [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}])
    api = cluster(done, node("gpu-1"), node("gpu-2"))
    result = run(api)
    assert result["api_requests"] == {"list": 1, "patch": 2}
    assert result["changed_nodes"] == ["gpu-1", "gpu-2"]
    patch = api.calls[1]
    assert patch["method"] == "PATCH" and patch["path"] == "/api/v1/nodes/gpu-1"
    assert patch["headers"]["Content-Type"] == "application/merge-patch+json"
    # the answer is not read: the API server is asked for the node's metadata only, not its status
    assert patch["headers"]["Accept"].startswith("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")
    assert api.calls[0]["headers"]["Accept"] == "application/json"
    assert patch["body"] == {"metadata": {"resourceVersion": "7", "labels": {"role": "inference"}},
                             "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule", "value": "present"}]}}
    assert api.calls[0]["query"] == {"labelSelector": "gpu=true"}


def test_nothing_to_change_makes_no_write() -> None:
    api = cluster(node("gpu-0", {"role": "inference"}, [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]))
    result = run(api)
    assert not result["changed"]
    assert [c["method"] for c in api.calls] == ["GET"]


def test_check_mode_sends_only_server_side_dry_runs_and_reports() -> None:
    api = cluster(node("gpu-0"), node("gpu-1", {"role": "inference"}, [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]))
    result = run(api, check_mode=True, want_diff=True)
    assert result["changed"] and result["changed_nodes"] == ["gpu-0"]
    assert [(c["method"], c["path"]) for c in api.calls] == [("GET", "/api/v1/nodes"), ("PATCH", "/api/v1/nodes/gpu-0")]
    assert api.calls[1]["query"].get("dryRun") == "All"
    assert result["diff"][0]["after"]["labels"] == {"role": "inference"}


def test_null_label_and_absent_taint_remove() -> None:
    api = cluster(node("gpu-0", {"role": "x", "keep": "1"}, [dict(TAINT, state=None), {"key": "other", "effect": "NoExecute"}]))
    result = run(api, labels={"role": None}, taints=[dict(TAINT, state="absent")])
    body = api.calls[1]["body"]
    assert body["metadata"]["labels"] == {"role": None}
    assert body["spec"]["taints"] == [{"key": "other", "effect": "NoExecute"}]
    assert result["nodes"][0]["labels_removed"] == ["role"]


def test_state_absent_removes_everything_listed() -> None:
    api = cluster(node("gpu-0", {"role": "inference"}, [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]))
    run(api, state="absent")
    assert api.calls[1]["body"]["spec"] == {"taints": None}
    assert api.calls[1]["body"]["metadata"]["labels"] == {"role": None}


def test_names_filter_and_missing_name_fails_before_write() -> None:
    api = cluster(node("gpu-0"), node("gpu-1"))
    with pytest.raises(KubeInferError, match="names: .*gpu-9"):
        run(api, names=["gpu-0", "gpu-9"], label_selector=None)
    assert [c["method"] for c in api.calls] == ["GET"]
    result = run(cluster(node("gpu-0"), node("gpu-1")), names=["gpu-1"], label_selector=None)
    assert result["matched"] == ["gpu-1"]


def test_selected_by_names_or_label_selector() -> None:
    assert run(cluster(node("gpu-0")))["selected_by"] == "label_selector"
    assert run(cluster(node("gpu-0")), names=["gpu-0"], label_selector=None)["selected_by"] == "names"


def test_selector_matching_nothing_fails_when_required() -> None:
    with pytest.raises(KubeInferError, match="label_selector"):
        run(cluster())
    assert run(cluster(), require_match=False)["matched"] == []


@pytest.mark.parametrize("kw,param", [
    ({"labels": {"bad key!": "x"}}, "labels: invalid label key"),
    ({"labels": {"ok": "-bad"}}, "labels: invalid value"),
    ({"labels": {"Bad_Prefix.io/x": "1"}}, "labels: invalid label key"),
    ({"taints": [dict(TAINT, key="a/b/c")]}, r"taints\[0\].key"),
    ({"taints": [dict(TAINT, value="x" * 64)]}, r"taints\[0\].value"),
])
def test_bad_input_fails_before_any_request(kw: dict, param: str) -> None:
    api = cluster(node("gpu-0"))
    with pytest.raises(KubeInferError, match=param):
        run(api, **kw)
    assert api.calls == []


def test_conflict_rereads_the_node_and_patches_from_its_current_state() -> None:
    stale = node("gpu-0")
    fresh = node("gpu-0", {"kubelet": "wrote"})
    fresh["metadata"]["resourceVersion"] = "8"
    answers = iter([FakeApiException(409, "the object has been modified"), None])

    def patch(body: dict) -> dict:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return body

    api = FakeApiClient({("GET", "/api/v1/nodes"): {"items": [stale]}, ("GET", "/api/v1/nodes/gpu-0"): fresh,
                         ("PATCH", "/api/v1/nodes/gpu-0"): patch})
    result = run(api)
    assert result["api_requests"] == {"list": 1, "patch": 2, "get": 1}
    assert api.calls[-1]["body"]["metadata"]["resourceVersion"] == "8"
    assert result["changed_nodes"] == ["gpu-0"]


def test_repeated_conflicts_fail_with_the_requests_made() -> None:
    api = FakeApiClient({("GET", "/api/v1/nodes"): {"items": [node("gpu-0")]}, ("GET", "/api/v1/nodes/gpu-0"): node("gpu-0"),
                         ("PATCH", "/api/v1/nodes/gpu-0"): FakeApiException(409, "conflict")})
    with pytest.raises(KubeInferError) as err:
        run(api)
    assert err.value.msg == f"node gpu-0 kept changing under concurrent writers; gave up after {CONFLICT_ATTEMPTS} attempts"
    assert err.value.result["api_requests"] == {"list": 1, "patch": CONFLICT_ATTEMPTS, "get": CONFLICT_ATTEMPTS - 1}


# -- concurrency, and conflicts avoided rather than retried -----------------------------------------------
TAINTED = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]


def many(count: int, answer: object, **node_kw) -> FakeApiClient:
    nodes = [node(f"gpu-{i:02d}", **node_kw) for i in range(count)]
    answers: dict = {("GET", "/api/v1/nodes"): {"items": nodes}}
    answers.update({("PATCH", f"/api/v1/nodes/{n['metadata']['name']}"): answer for n in nodes})
    return FakeApiClient(answers)


@pytest.mark.parametrize("parallel", [1, 4, 16])
def test_at_most_parallel_patches_are_in_flight(parallel: int) -> None:
    flight = InFlight(hold=0.03)
    api = many(40, flight)
    result = run(api, parallel=parallel)
    assert flight.most == parallel, "the pool is bounded by parallel, and fills it"
    assert result["api_requests"] == {"list": 1, "patch": 40}
    if parallel == 1:
        assert flight.threads == {threading.current_thread().name}, "parallel=1 is the old sequential loop"


def test_results_and_diff_are_in_node_name_order_whatever_order_the_patches_finish_in() -> None:
    names = [f"gpu-{i:02d}" for i in range(12)]
    finished: list[str] = []

    def answer(name: str, hold: float):
        def patch(body: dict) -> dict:
            time.sleep(hold)
            finished.append(name)
            return body
        return patch

    # gpu-00 is held longest and finishes last; the list comes back in reverse order.
    answers: dict = {("GET", "/api/v1/nodes"): {"items": [node(n) for n in reversed(names)]}}
    answers.update({("PATCH", f"/api/v1/nodes/{n}"): answer(n, 0.01 * (12 - i)) for i, n in enumerate(names)})
    result = run(FakeApiClient(answers), want_diff=True, parallel=12)
    assert finished != names, "the patches finished out of order"
    assert result["matched"] == result["changed_nodes"] == names
    assert [r["name"] for r in result["nodes"]] == names
    assert [d["before_header"] for d in result["diff"]] == [f"node/{n}" for n in names]


@pytest.mark.parametrize("parallel", [0, -3])
def test_parallel_below_one_is_refused_before_any_request(parallel: int) -> None:
    api = cluster(node("gpu-0"))
    with pytest.raises(KubeInferError, match=f"^parallel: must be at least 1.*got {parallel}"):
        run(api, parallel=parallel)
    assert api.calls == []


def test_a_label_only_patch_has_no_resource_version() -> None:
    api = cluster(node("gpu-0", taints=TAINTED))
    run(api)
    assert api.calls[1]["body"] == {"metadata": {"labels": {"role": "inference"}}}


def test_a_taint_change_carries_the_resource_version() -> None:
    api = cluster(node("gpu-0", {"role": "inference"}))
    run(api)
    assert api.calls[1]["body"] == {"metadata": {"resourceVersion": "7"}, "spec": {"taints": TAINTED}}


def writer_before_first_patch(fake: FakeCluster, name: str) -> None:
    """Just before the first PATCH of node ``name``, a concurrent writer (a kubelet) adds a label to it."""
    path = f"/api/v1/nodes/{name}"
    written: list[bool] = []

    def on_request(method: str, req_path: str) -> None:
        if method == "PATCH" and req_path == path and not written:
            written.append(True)
            current = fake.objects[path]
            fake._store(path, merge(current, {"metadata": {"labels": {"kubelet": "wrote"}}}), False)

    fake.on_request.append(on_request)


def test_a_concurrent_write_does_not_conflict_with_a_label_patch() -> None:
    fake = fake_cluster(node("gpu-0", {"gpu": "true"}, TAINTED))
    writer_before_first_patch(fake, "gpu-0")
    result = run(fake)
    assert result["api_requests"] == {"list": 1, "patch": 1}, "no 409, no re-read"
    assert fake.objects["/api/v1/nodes/gpu-0"]["metadata"]["labels"] == {"gpu": "true", "kubelet": "wrote", "role": "inference"}


def test_a_concurrent_write_makes_a_taint_patch_conflict_and_it_is_reread_and_retried() -> None:
    fake = fake_cluster(node("gpu-0", {"gpu": "true"}), node("gpu-1", {"gpu": "true"}))
    writer_before_first_patch(fake, "gpu-1")
    result = run(fake)
    assert result["api_requests"] == {"list": 1, "patch": 3, "get": 1}
    patches = [c for c in fake.calls if c["method"] == "PATCH" and c["path"].endswith("gpu-1")]
    assert len(patches) == 2
    assert patches[0]["body"]["metadata"]["resourceVersion"] != patches[1]["body"]["metadata"]["resourceVersion"]
    stored = fake.objects["/api/v1/nodes/gpu-1"]
    assert stored["metadata"]["labels"]["kubelet"] == "wrote", "the concurrent change is kept"
    assert stored["spec"]["taints"] == TAINTED and stored["metadata"]["labels"]["role"] == "inference"
    assert result["changed_nodes"] == ["gpu-0", "gpu-1"]


def test_a_failing_node_reports_the_nodes_done_by_the_others() -> None:
    gate = threading.Barrier(4, timeout=5)

    def ok(body: dict) -> dict:
        gate.wait()
        return body

    def boom(body: dict) -> dict:
        gate.wait()
        raise FakeApiException(500, "etcd is unhappy")

    names = [f"gpu-{i}" for i in range(4)]
    answers: dict = {("GET", "/api/v1/nodes"): {"items": [node(n) for n in names]}}
    answers.update({("PATCH", f"/api/v1/nodes/{n}"): boom if n == "gpu-2" else ok for n in names})
    with pytest.raises(KubeInferError, match="gpu-2 failed") as err:
        run(FakeApiClient(answers), parallel=4)
    assert [r["name"] for r in err.value.result["nodes"]] == ["gpu-0", "gpu-1", "gpu-3"], "all four were in flight"
    assert err.value.result["api_requests"] == {"list": 1, "patch": 4} and err.value.result["changed"] is True


def test_sequential_stops_at_the_first_failing_node() -> None:
    api = FakeApiClient({("GET", "/api/v1/nodes"): {"items": [node("gpu-0"), node("gpu-1"), node("gpu-2")]},
                         ("PATCH", "/api/v1/nodes/gpu-1"): FakeApiException(500, "no")})
    with pytest.raises(KubeInferError) as err:
        run(api, parallel=1)
    assert [r["name"] for r in err.value.result["nodes"]] == ["gpu-0"]
    assert err.value.result["api_requests"] == {"list": 1, "patch": 2}


class RacyCounter(Counter):
    """A Counter whose read yields to other threads, so that an unlocked ``+= 1`` loses counts."""

    def __getitem__(self, key: str) -> int:
        value = super().__getitem__(key)
        time.sleep(0.001)
        return value


def test_request_counts_are_exact_from_many_threads() -> None:
    kube = Kube(many(60, None))
    kube.requests = RacyCounter()
    result = run(kube, taints=[], parallel=16)
    assert result["api_requests"] == {"list": 1, "patch": 60}


def test_the_connection_pool_holds_the_concurrency() -> None:
    default = build_api_client({"host": "https://127.0.0.1:6443"}).configuration.connection_pool_maxsize
    big = build_api_client({"host": "https://127.0.0.1:6443", "parallel": default + 7})
    assert big.rest_client.pool_manager.connection_pool_kw["maxsize"] == default + 7
    few = build_api_client({"host": "https://127.0.0.1:6443", "parallel": 1})
    assert few.rest_client.pool_manager.connection_pool_kw["maxsize"] == default, "never below the library's default"
    module_params = build_api_client({"host": "https://127.0.0.1:6443", "parallel": default + 3})
    assert module_params.rest_client.pool_manager.connection_pool_kw["maxsize"] == default + 3, "gpu_node's parallel option"


# -- discovery: neither names nor label_selector ---------------------------------------------------------
def fake_cluster(*nodes: dict) -> FakeCluster:
    fake = FakeCluster()
    for n in nodes:
        fake.add(dict(n, apiVersion="v1", kind="Node"))
    return fake


def discover(fake: FakeCluster, **kw) -> dict:
    return run(fake, names=None, label_selector=None, **kw)


def test_bad_probe_options_fail_before_any_request_also_with_a_selection() -> None:
    api = cluster(node("gpu-0"))
    with pytest.raises(KubeInferError, match="^probe_namespace: "):
        run(api, probe_namespace="Kube_System")
    assert api.calls == []


@pytest.mark.parametrize("label", ["feature.node.kubernetes.io/pci-10de.present", "feature.node.kubernetes.io/pci-0302_10de.present",
                                   "feature.node.kubernetes.io/pci-0300_10de.present"])
def test_nfd_labelled_nodes_are_selected_without_a_probe(label: str) -> None:
    fake = fake_cluster(node("gpu-0", {label: "true"}), node("cpu-0", {"nvidia.com/gpu.present": "true"}), node("cpu-1"))
    result = discover(fake)
    assert result["matched"] == ["gpu-0"] and result["changed_nodes"] == ["gpu-0"]
    assert result["selected_by"] == "node-feature-discovery labels"
    assert result["api_requests"] == {"list": 1, "patch": 1}, "no probe pod"
    assert fake.objects["/api/v1/nodes/gpu-0"]["metadata"]["labels"]["role"] == "inference"
    assert "role" not in fake.objects["/api/v1/nodes/cpu-0"]["metadata"]["labels"]


def test_without_nfd_labels_the_probe_finds_the_gpu_nodes() -> None:
    fake = fake_cluster(node("node-a"), node("node-b"), node("node-c"))
    answer_probes(fake, {"node-a": pod_succeeded(probe_answer("0302,0302")), "node-b": pod_succeeded(probe_answer(pci="")),
                         "node-c": pod_succeeded(probe_answer("0300", "/usr/bin/nvidia-smi", "550.54.15"))})
    result = discover(fake)
    assert result["matched"] == ["node-a", "node-c"]
    assert result["selected_by"] == "probe pods (NVIDIA PCI device in sysfs)"
    assert sorted(c["body"]["spec"]["nodeName"] for c in fake.calls if c["method"] == "POST") == ["node-a", "node-b", "node-c"]
    assert probe_pods(fake) == [], "the probe pods are deleted"
    assert result["api_requests"] == {"list": 2, "create": 3, "delete": 3, "patch": 2}
    assert fake.objects["/api/v1/nodes/node-c"]["spec"]["taints"] == [{"key": "nvidia.com/gpu", "effect": "NoSchedule", "value": "present"}]
    assert fake.objects["/api/v1/nodes/node-b"]["spec"] == {"taints": []}, "the CPU node is left alone"


def test_check_mode_without_nfd_labels_creates_nothing_selects_nothing_and_reports_a_change() -> None:
    fake = fake_cluster(node("node-a"), node("node-b"))
    result = discover(fake, check_mode=True)
    # A real run would probe both nodes and label and taint the GPU nodes among them: check mode says it would change.
    assert result["matched"] == [] and result["changed"] is True and result["would_probe"] == ["node-a", "node-b"]
    assert result["selected_by"].startswith("none: no node has a node-feature-discovery GPU label, and check mode runs no probe pod")
    assert [c["method"] for c in fake.calls] == ["GET"]


def test_no_gpu_node_found_fails_when_required() -> None:
    fake = fake_cluster(node("cpu-0"))
    answer_probes(fake, {"cpu-0": pod_succeeded(probe_answer(pci=""))})
    with pytest.raises(KubeInferError, match="^names: no node has an NVIDIA PCI device") as err:
        discover(fake)
    assert err.value.result == {"matched": [], "changed": False}
    assert not [c for c in fake.calls if c["method"] == "PATCH"] and probe_pods(fake) == []
    assert discover(fake_cluster(), require_match=False)["matched"] == []
    with pytest.raises(KubeInferError, match="^names: no node has an NVIDIA PCI device"):
        discover(fake_cluster())


def test_names_narrow_a_label_selection_as_before() -> None:
    fake = fake_cluster(node("gpu-0", {"gpu": "true"}), node("gpu-1", {"gpu": "true"}))
    result = run(fake, names=["gpu-1"])
    assert result["matched"] == ["gpu-1"] and result["selected_by"] == "names"
    assert not [c for c in fake.calls if c["method"] == "POST"]
