"""Check mode and diff, proven by the API server's audit log, on a fresh cluster of its own and then on the converged one.

1. ``site.yml --check --diff`` on a fresh cluster (the GPU nodes deleted and created bare again, no GPU Operator, no
   release) completes, sends no write request that is not a server-side dry run (``dryRun=All``), leaves the cluster as
   it was, and shows what it would create: the nodes it would probe, the release's values, the token Secret.
2. After a converged ``site.yml``, a second run reports ``changed=0`` and sends 0 write requests, the nvidia-smi test
   pod included (it runs when the GPU stack changed in the run, or when ``gpu_operator_verify_test_pod=true``).
3. ``verify.yml`` (everything in check mode) passes on the converged cluster with 0 writes; once a GPU node's taint is
   removed by hand, ``gpu_node`` sends a server-side dry-run patch for it (the node keeps no taint) and verify.yml fails
   naming the node. The next ``site.yml`` restores the taint and, since the GPU nodes changed, runs the test pod.

Write counts: requests from the collection's modules (user agent ``kubeinfer.llm``) and from the helm they run
(``Helm/...``); port-forward streams (``pods/portforward``) open no object and are not counted as writes. The test
prints the counts. The cluster is this run's own: the module fixture deletes the GPU nodes and the GPU Operator
release first, as test_gpu_operator.py does, and tears everything down after.

Run: ``pytest tests/integration/test_check_mode.py`` on a cluster from ``make cluster-up`` (about 8 minutes).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import BIN, REPO, TOOLS, cluster_nodes, gpu_stack_down, helm_binary, sim_hardware
from kubernetes import client
from kubernetes.client.rest import ApiException

if TYPE_CHECKING:
    from conftest import Audit

GPU_NODES = ("kwok-gpu-0000", "kwok-gpu-0001")
NAMESPACE = "it-check"
RELEASE = "chk"
AGENTS = ("kubeinfer.llm", "Helm")
WRITE_VERBS = ("create", "update", "patch", "delete", "deletecollection")
SMOKE_PREFIX = "gpu-operator-smoke-"


@dataclass
class Counts:
    reads: int
    dry_runs: list[str]
    writes: list[str]

    def __str__(self) -> str:
        return f"{self.reads} reads, {len(self.dry_runs)} dry-run writes, {len(self.writes)} writes"


def count(audit: Audit, since: int) -> Counts:
    """The requests of the collection and of helm since ``since``, by kind."""
    reads, dry, writes = 0, [], []
    for event in audit.events(since, ""):
        if not str(event.get("userAgent", "")).startswith(AGENTS):
            continue
        ref = event.get("objectRef") or {}
        what = f"{event['verb']} {ref.get('resource')}{'/' + ref['subresource'] if ref.get('subresource') else ''} " \
               f"{ref.get('namespace', '')}/{ref.get('name', '')}"
        if event.get("verb") not in WRITE_VERBS:
            reads += 1
        elif ref.get("subresource") == "portforward":
            reads += 1  # a stream through the API server, no object written
        elif "dryRun=All" in str(event.get("requestURI", "")):
            dry.append(what)
        else:
            writes.append(what)
    return Counts(reads, dry, writes)


def node_state(core: client.CoreV1Api) -> dict[str, Any]:
    return {n.metadata.name: (dict(n.metadata.labels or {}), sorted((t.key, t.value or "", t.effect) for t in (n.spec.taints or [])))
            for n in core.list_node(label_selector="kubeinfer.io/sim-node=true").items}


class Site:
    """ansible-playbook on the collection's own playbooks, with the local cluster's variables."""

    def __init__(self, kubeconfig: str, collections_path: str, extra_vars: list[str], workdir: Path) -> None:
        self.kubeconfig, self.collections_path, self.extra_vars, self.workdir = kubeconfig, collections_path, extra_vars, workdir

    def __call__(self, playbook: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=self.collections_path, K8S_AUTH_KUBECONFIG=self.kubeconfig,
                   HELM_BINARY=helm_binary(), ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false",
                   ANSIBLE_LOCAL_TEMP=str(self.workdir / "ansible-tmp"), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        argv = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e", f"ansible_python_interpreter={sys.executable}"]
        for extra in self.extra_vars:
            argv += ["-e", extra]
        argv += [*args, str(REPO / "playbooks" / playbook)]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1500, check=False)


def recap(proc: subprocess.CompletedProcess[str]) -> dict[str, int]:
    line = next(x for x in proc.stdout.splitlines()[::-1] if x.startswith("localhost") and "ok=" in x)
    return {k: int(v) for k, v in (item.split("=") for item in line.split(":", 1)[1].split())}


@pytest.fixture(scope="module")
def site(kubeconfig: str, collections_path: str, core: client.CoreV1Api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A fresh cluster: no GPU Operator release, GPU nodes deleted and created again bare, no release in NAMESPACE."""
    demo_env = dict(os.environ, DEMO_NAMESPACE=NAMESPACE, DEMO_RELEASE=RELEASE, HELM_BINARY=helm_binary())
    generated = subprocess.run([str(TOOLS / "demo-env.sh"), "up"], env=demo_env, capture_output=True, text=True,
                               timeout=300, check=True).stdout.strip()
    runner = Site(kubeconfig, collections_path, [f"@{TOOLS / 'demo-vars.yml'}", f"@{generated}", f"vllm_release_name={RELEASE}",
                                                 f"vllm_namespace={NAMESPACE}", "hf_token_value=hf_kubeinfer_check_mode_token_0000"],
                  tmp_path_factory.mktemp("check-mode"))
    down = runner("teardown.yml")
    assert down.returncode == 0, down.stdout[-4000:]
    gpu_stack_down()
    for name in GPU_NODES:
        try:
            core.delete_node(name)
        except ApiException as e:
            if e.status != 404:
                raise
    deadline = time.monotonic() + 60
    while any(n.metadata.name in GPU_NODES for n in core.list_node().items):
        assert time.monotonic() < deadline, "the GPU nodes were not deleted"
        time.sleep(0.5)
    cluster_nodes()
    for name in GPU_NODES:
        sim_hardware(name, "none")
    yield runner
    runner("teardown.yml")
    gpu_stack_down()
    subprocess.run([str(TOOLS / "demo-env.sh"), "down"], env=demo_env, capture_output=True, timeout=120, check=False)


def test_site_check_diff_on_a_fresh_cluster_previews_everything_and_writes_nothing(
        site: Site, audit: Audit, core: client.CoreV1Api, kubeconfig: str) -> None:
    before = node_state(core)
    assert all(not any(k.startswith(("feature.node.kubernetes.io/", "nvidia.com/", "kubeinfer.io/accelerator")) for k in labels)
               for labels, _taints in before.values()), before
    mark = audit.mark()
    proc = site("site.yml", "--check", "--diff")
    counts = count(audit, mark)
    print(f"\nsite.yml --check --diff on a fresh cluster: rc {proc.returncode}, {counts}")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert counts.writes == [], counts.writes
    assert counts.dry_runs, "check mode sent no server-side dry run at all"
    out = proc.stdout
    # What it would do: probe the bare nodes, install both releases, write the token Secret, create the HPA.
    assert "check mode - a real run probes" in out and all(n in out for n in GPU_NODES)
    assert "Check mode, the release would change: a real run waits up to" in out
    assert f'"fullnameOverride": "{RELEASE}"' in out or f"fullnameOverride: {RELEASE}" in out, "the release's values are not in the diff"
    assert "hf_kubeinfer_check_mode_token" not in out  # the token task is no_log: no diff, no argument shown
    assert "Check mode, the release would change: a real run writes the hpa" in out
    assert node_state(core) == before
    assert NAMESPACE not in {n.metadata.name for n in core.list_namespace().items}
    releases = subprocess.run([helm_binary(), "list", "-A", "-q", "--kubeconfig", kubeconfig], capture_output=True, text=True,
                              check=True).stdout.split()
    assert "gpu-operator" not in releases and RELEASE not in releases


def test_a_converged_rerun_writes_nothing_and_runs_the_test_pod_only_when_asked(site: Site, audit: Audit) -> None:
    mark = audit.mark()
    first = site("site.yml")
    counts = count(audit, mark)
    print(f"\nsite.yml on the fresh cluster: rc {first.returncode}, {counts}")
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-2000:]
    smoke = [w for w in counts.writes if SMOKE_PREFIX in w or w.startswith("create pods gpu-operator/")]
    assert smoke, f"the GPU stack changed, so the test pod must have run: {counts.writes}"

    mark = audit.mark()
    second = site("site.yml")
    counts = count(audit, mark)
    print(f"site.yml again (converged): rc {second.returncode}, changed={recap(second).get('changed')}, {counts}")
    assert second.returncode == 0, second.stdout[-6000:]
    assert recap(second)["changed"] == 0
    assert counts.writes == [], counts.writes
    assert "not asked for: the GPU stack did not change this run" in second.stdout

    mark = audit.mark()
    asked = site("site.yml", "-e", "gpu_operator_verify_test_pod=true")
    counts = count(audit, mark)
    print(f"site.yml with gpu_operator_verify_test_pod=true: rc {asked.returncode}, {counts}: {counts.writes}")
    assert asked.returncode == 0, asked.stdout[-6000:]
    assert len(counts.writes) == 2 and counts.writes[0].startswith("create pods gpu-operator/") \
        and counts.writes[1].startswith("delete pods gpu-operator/" + SMOKE_PREFIX), counts.writes
    assert "nvidia-smi saw" in asked.stdout


def test_verify_passes_converged_and_gpu_node_dry_runs_the_patch_on_drift(site: Site, audit: Audit, core: client.CoreV1Api) -> None:
    mark = audit.mark()
    ok = site("verify.yml")
    counts = count(audit, mark)
    print(f"\nverify.yml on the converged cluster: rc {ok.returncode}, {counts}")
    assert ok.returncode == 0, ok.stdout[-6000:]
    assert counts.writes == [] and counts.dry_runs == [], counts

    node = GPU_NODES[0]
    taints = [t for t in (core.read_node(node).spec.taints or []) if t.key != "nvidia.com/gpu"]
    core.patch_node(node, {"spec": {"taints": [{"key": t.key, "value": t.value, "effect": t.effect} for t in taints] or None}})
    mark = audit.mark()
    drifted = site("verify.yml")
    counts = count(audit, mark)
    print(f"verify.yml after the taint of {node} was removed: rc {drifted.returncode}, {counts}: {counts.dry_runs}")
    assert drifted.returncode != 0
    assert "these steps would change the cluster: gpu_nodes" in drifted.stdout and node in drifted.stdout
    assert counts.writes == [] and counts.dry_runs == [f"patch nodes /{node}"], counts
    assert not any(t.key == "nvidia.com/gpu" for t in core.read_node(node).spec.taints or []), "the dry run stored the taint"

    mark = audit.mark()
    fixed = site("site.yml")
    counts = count(audit, mark)
    print(f"site.yml after the drift: rc {fixed.returncode}, {counts}: {counts.writes}")
    assert fixed.returncode == 0, fixed.stdout[-6000:]
    assert f"patch nodes /{node}" in counts.writes
    assert any(w.startswith("create pods gpu-operator/") for w in counts.writes), "the GPU nodes changed, so the test pod runs"
    assert any(t.key == "nvidia.com/gpu" for t in core.read_node(node).spec.taints or [])
