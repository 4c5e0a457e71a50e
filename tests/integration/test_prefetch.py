"""Model prefetch (vllm_release model_cache.prefetch) against the local control plane.

The chart's hook Job is created by the real helm and run to completion by the real Job controller; its pod is
played by tools/localcluster/prefetch_sim.py, which runs the pod's own command (the real ``hf download`` of the
pinned huggingface_hub) as a host process against a Hub on loopback, into the host directory behind the claim's
PersistentVolume, and writes the pod's status as the kubelet would. The claim is a real PVC bound by the real
PV controller to a hostPath PV under the cluster's state directory.

Needs the cluster from ``make CLUSTER_NAME=... cluster-up``; without one the tests fail, never skip.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import TOOLS, helm_binary, pool_args
from kubernetes import client
from kubernetes.client.rest import ApiException

if TYPE_CHECKING:
    from conftest import Audit, PlaybookRunner

sys.path.insert(0, str(TOOLS))
import prefetch_sim

GOOD_TOKEN = "hf_" + "k" * 34  # the Hub account's token (shape of a user access token); the test never logs it
REPO_ID = prefetch_sim.REPO_ID
CACHE_CLAIM = "model-cache"


def _env() -> dict[str, str]:
    return dict(os.environ, KUBEINFER_CLUSTER=os.environ.get("KUBEINFER_CLUSTER") or "kubeinfer")


@pytest.fixture(scope="module")
def hub() -> Iterator[Path]:
    """prefetch_sim.py running with the Hub's token; yields its state directory."""
    os.environ.setdefault("KUBEINFER_CLUSTER", _env()["KUBEINFER_CLUSTER"])
    d = prefetch_sim.prefetch_dir()
    d.mkdir(parents=True, exist_ok=True)
    token = d / "hub-token"
    with os.fdopen(os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(GOOD_TOKEN)
    script = TOOLS / "prefetch_sim.py"
    out = subprocess.run([sys.executable, str(script), "start", "--token-file", str(token)], capture_output=True, text=True,
                         timeout=600, check=False, env=_env())
    assert out.returncode == 0, out.stdout + out.stderr
    yield d
    subprocess.run([sys.executable, str(script), "stop"], capture_output=True, text=True, timeout=60, check=False, env=_env())


class Release:
    """One namespace with a token Secret and a claim bound to a hostPath PV under the cluster's volumes/ directory."""

    def __init__(self, api: client.ApiClient, token: str) -> None:
        self.core = client.CoreV1Api(api)
        self.namespace = f"it-prefetch-{uuid.uuid4().hex[:8]}"
        self.volume = prefetch_sim.volumes_dir() / self.namespace
        self.pv = f"{self.namespace}-cache"
        self.core.create_namespace({"metadata": {"name": self.namespace}})
        self.set_token(token)
        self.core.create_persistent_volume({
            "metadata": {"name": self.pv},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "",
                     "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(self.volume), "type": "DirectoryOrCreate"},
                     "claimRef": {"namespace": self.namespace, "name": CACHE_CLAIM}}})
        self.core.create_namespaced_persistent_volume_claim(self.namespace, {
            "metadata": {"name": CACHE_CLAIM},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": self.pv,
                     "resources": {"requests": {"storage": "1Gi"}}}})

    def set_token(self, token: str) -> None:
        body = {"metadata": {"name": "hf-token"}, "data": {"HF_TOKEN": base64.b64encode(token.encode()).decode()}}
        try:
            self.core.replace_namespaced_secret("hf-token", self.namespace, body)
        except ApiException as e:
            if e.status != 404:
                raise
            self.core.create_namespaced_secret(self.namespace, body)

    def cleanup(self) -> None:
        for call in (lambda: self.core.delete_namespace(self.namespace), lambda: self.core.delete_persistent_volume(self.pv)):
            try:
                call()
            except ApiException as e:
                if e.status != 404:
                    raise


@pytest.fixture
def release(api: client.ApiClient, hub: Path) -> Iterator[Release]:
    r = Release(api, GOOD_TOKEN)
    yield r
    r.cleanup()


def run_module(playbook: PlaybookRunner, args: dict[str, Any], *extra: str) -> tuple[str, dict[str, Any]]:
    proc = playbook([{"name": "Release", "kubeinfer.llm.vllm_release": args, "register": "r", "ignore_errors": True}],
                    name="vllm_release", save="r", extra_args=extra, env={"HELM_BINARY": helm_binary()})
    assert proc.saved is not None, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert GOOD_TOKEN not in proc.stdout + proc.stderr, "the token may appear in no output"
    return proc.stdout + proc.stderr, proc.saved


def module_args(r: Release, pool: str, revision: str = "main", **over: Any) -> dict[str, Any]:
    return dict(name="pf", namespace=r.namespace, model=REPO_ID, revision=revision, engine="sim", params_billion=0.5,
                hf_token_secret={"name": "hf-token"}, model_cache={"type": "pvc", "existing_claim": CACHE_CLAIM, "prefetch": True},
                timeout=120, **pool_args(pool), **over)


def cache_files(r: Release) -> dict[str, tuple[int, int]]:
    """Every file under the directory that stands for the claim: {relative path: (size, mtime_ns)}."""
    out = {}
    for path in sorted(r.volume.rglob("*")):
        if path.is_file() and not path.is_symlink():
            st = path.stat()
            out[str(path.relative_to(r.volume))] = (st.st_size, st.st_mtime_ns)
    return out


def hub_requests(hub: Path) -> list[str]:
    log = hub / "hub-access.log"
    return log.read_text().splitlines() if log.is_file() else []


def parse_time(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def assert_snapshot(r: Release, ref: str) -> str:
    """The Hub cache layout under HF_HOME holds ref -> commit and every file of that commit, byte for byte."""
    commit = prefetch_sim.REFS[ref]
    model_dir = r.volume / "hub" / f"models--{REPO_ID.replace('/', '--')}"
    assert (model_dir / "refs" / ref).read_text() == commit
    snapshot = model_dir / "snapshots" / commit
    expected = prefetch_sim.COMMITS[commit]
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(expected)
    for name, content in expected.items():
        assert (snapshot / name).read_bytes() == content, name
    return commit


def test_prefetch_fills_the_claim_before_the_deployment_rolls_and_a_rerun_does_nothing(
        playbook: PlaybookRunner, api: client.ApiClient, module_pool: str, release: Release, hub: Path, audit: Audit) -> None:
    args = module_args(release, module_pool)
    batch, apps = client.BatchV1Api(api), client.AppsV1Api(api)

    # Check mode: only reads and dry runs, no Job, no download.
    mark, before = audit.mark(), hub_requests(hub)
    out, checked = run_module(playbook, args, "--check")
    assert not checked.get("failed"), out[-4000:]
    assert checked["changed"] and checked["prefetch"] == {"exists": False}
    assert audit.writes(mark, "kubeinfer.llm") == [] and audit.writes(mark, "Helm") == []
    assert hub_requests(hub) == before and cache_files(release) == {}

    mark = audit.mark()
    out, result = run_module(playbook, args)
    assert not result.get("failed"), out[-4000:]
    assert result["changed"] and result["rollout"]["rolled_out"]

    # The files, in the layout the offline server reads (HF_HOME=<mount>, hub/models--org--name/...).
    commit = assert_snapshot(release, "main")
    assert any(f" /api/models/{REPO_ID}/revision/main 200" in line for line in hub_requests(hub)[len(before):])

    # The Job's completion, through the API.
    job = batch.read_namespaced_job("pf-prefetch", release.namespace)
    complete = [c for c in job.status.conditions or [] if c.type == "Complete" and c.status == "True"]
    assert complete and job.status.succeeded == 1 and job.status.completion_time is not None
    assert result["prefetch"]["complete"] and result["prefetch"]["revision"] == "main"

    # The Deployment came after the Job's completion: its ReplicaSet is not older than completionTime, and every status
    # write of the Job controller to the Job (the Complete condition among them) precedes helm's create of the Deployment.
    dep = apps.read_namespaced_deployment("pf", release.namespace)
    (rs,) = apps.list_namespaced_replica_set(release.namespace, label_selector="app.kubernetes.io/instance=pf").items
    assert rs.metadata.creation_timestamp >= job.status.completion_time
    assert dep.metadata.creation_timestamp >= job.status.completion_time
    events = audit.events(mark, "")
    order = [(e["stageTimestamp"], e["verb"], (e.get("objectRef") or {}).get("resource"), (e.get("objectRef") or {}).get("subresource"),
              (e.get("objectRef") or {}).get("name")) for e in events if (e.get("objectRef") or {}).get("namespace") == release.namespace]
    created = [t for t, verb, res, _sub, name in order if verb == "create" and res == "deployments" and name == "pf"]
    job_status = [t for t, verb, res, sub, name in order if res == "jobs" and sub == "status" and name == "pf-prefetch"
                  and verb in ("update", "patch")]
    assert len(created) == 1 and job_status, order
    assert max(job_status) < created[0], "the Job controller wrote the Job's status after the Deployment was created"

    # The pods start offline, with a startup budget for a local load.
    c = dep.spec.template.spec.containers[0]
    env = {e.name: e.value for e in c.env}
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"] == "/root/.cache/huggingface"
    budget = result["startup_budget"]
    assert budget["source"] == "model size / load throughput (prefetched cache)" and budget["load_throughput_gib_s"] == 1.5
    assert budget["seconds"] == math.ceil((60 + budget["weights_gib"] / 1.5) * 1.5) == 91
    assert dep.spec.template.metadata.annotations["kubeinfer.io/startup-budget-seconds"] == "91"
    assert dep.spec.template.metadata.annotations["kubeinfer.io/model-revision"] == "main"

    # A converged re-run: no write by the collection or helm, no Job created by anyone, no download, the cache untouched.
    mark, files, requests = audit.mark(), cache_files(release), hub_requests(hub)
    out, again = run_module(playbook, args)
    assert not again.get("failed") and not again["changed"], out[-4000:]
    assert audit.writes(mark, "kubeinfer.llm") == [] and audit.writes(mark, "Helm") == []
    assert not [w for w in audit.writes(mark, "") if w.startswith("create jobs ")]
    assert batch.read_namespaced_job("pf-prefetch", release.namespace).metadata.uid == job.metadata.uid
    assert hub_requests(hub) == requests and cache_files(release) == files
    assert again["prefetch"]["complete"] and commit == prefetch_sim.REFS["main"]


def test_a_wrong_token_fails_the_job_and_the_run_names_it_without_rolling_the_deployment(
        playbook: PlaybookRunner, api: client.ApiClient, module_pool: str, release: Release, hub: Path) -> None:
    apps = client.AppsV1Api(api)
    out, first = run_module(playbook, module_args(release, module_pool))
    assert not first.get("failed"), out[-4000:]
    before = apps.read_namespaced_deployment("pf", release.namespace)
    replica_sets = {rs.metadata.name for rs in apps.list_namespaced_replica_set(release.namespace).items}

    # The Secret now holds a token the Hub refuses; the next revision cannot be fetched.
    release.set_token("hf_" + "w" * 34)
    upgrade = module_args(release, module_pool, revision="v2", values={"modelCache": {"prefetch": {"backoffLimit": 0}}})
    out, failed = run_module(playbook, upgrade)
    assert failed.get("failed"), out[-4000:]
    msg = failed["msg"]
    assert msg.startswith(f"model_cache.prefetch: the prefetch Job {release.namespace}/pf-prefetch failed: BackoffLimitExceeded"), msg
    assert "exited 1: " in msg and "401" in msg, msg
    assert "the Deployment was not changed" in msg
    assert failed["prefetch"]["failed"] and failed["prefetch"]["revision"] == "v2"
    assert "w" * 34 not in json.dumps(failed) + out

    job = client.BatchV1Api(api).read_namespaced_job("pf-prefetch", release.namespace)
    assert [c.reason for c in job.status.conditions if c.type == "Failed" and c.status == "True"] == ["BackoffLimitExceeded"]
    after = apps.read_namespaced_deployment("pf", release.namespace)
    assert after.metadata.generation == before.metadata.generation
    assert after.spec.template.metadata.annotations["kubeinfer.io/model-revision"] == "main"
    assert {rs.metadata.name for rs in apps.list_namespaced_replica_set(release.namespace).items} == replica_sets
    assert not (release.volume / "hub" / f"models--{REPO_ID.replace('/', '--')}" / "refs" / "v2").exists()
    assert_snapshot(release, "main")
