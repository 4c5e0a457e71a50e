"""The helm CLI runner and the one Helm-release lifecycle (_helm_release), with a recorded run_command."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ansible_collections.kubeinfer.llm.plugins.module_utils import _helm_release
from ansible_collections.kubeinfer.llm.plugins.module_utils._errors import KubeInferError
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm import Helm
from ansible_collections.kubeinfer.llm.plugins.module_utils._helm_release import Chart, Current, deep_merge, value_changes

from .helm_records import release_record, stored_secret


class Recorder:
    def __init__(self, rc: int = 0, out: str = "", err: str = "") -> None:
        self.rc, self.out, self.err = rc, out, err
        self.argv: list[str] = []
        self.env: dict[str, str] = {}
        self.values: dict | None = None

    def __call__(self, argv: list[str], environ_update: dict[str, str] | None = None) -> tuple[int, str, str]:
        self.argv, self.env = argv, environ_update or {}
        if "--values" in argv:
            with open(argv[argv.index("--values") + 1]) as f:
                self.values = json.load(f)
        return self.rc, self.out, self.err


def test_upgrade_argv_values_file_and_token_in_env_only() -> None:
    rec = Recorder()
    helm = Helm(rec, "/bin/helm", {"kubeconfig": "/k", "context": "c", "api_key": "s3cr3t"})
    helm.upgrade_install("r", "./chart", "ns", {"a": 1}, version="1.2.3", create_namespace=True, wait=True, timeout=60)
    argv = rec.argv
    assert argv[:7] == ["/bin/helm", "upgrade", "--install", "r", "./chart", "--namespace", "ns"]
    assert ["--version", "1.2.3"] == argv[argv.index("--version"):argv.index("--version") + 2]
    assert argv[argv.index("--wait"):argv.index("--wait") + 3] == ["--wait", "--timeout", "60s"] and "--create-namespace" in argv
    assert argv[argv.index("--kubeconfig") + 1] == "/k" and argv[argv.index("--kube-context") + 1] == "c"
    assert "s3cr3t" not in " ".join(argv)
    assert rec.env == {"HELM_KUBETOKEN": "s3cr3t"}
    assert rec.values == {"a": 1}
    assert not os.path.exists(argv[argv.index("--values") + 1]), "the values file is removed"
    (line,) = helm.command_lines()
    assert line.startswith("/bin/helm upgrade --install r ./chart") and "--values <values-file>" in line and "s3cr3t" not in line


def test_failure_reports_masked_stderr_and_command() -> None:
    rec = Recorder(rc=1, err="Error: unauthorized token s3cr3t")
    helm = Helm(rec, "helm", {"api_key": "s3cr3t"})
    with pytest.raises(KubeInferError) as err:
        helm.upgrade_install("r", "c", "ns", {})
    assert "s3cr3t" not in err.value.msg and "s3cr3t" not in str(err.value.result)
    assert err.value.result["rc"] == 1 and "unauthorized" in err.value.result["stderr"]
    assert "<values-file>" in err.value.result["command"]


def test_release_lookup_parses_list_output() -> None:
    rec = Recorder(out='[{"name":"gpu-operator","chart":"gpu-operator-v25.3.0","status":"deployed","revision":"2"}]')
    assert Helm(rec, "helm", {}).release("gpu-operator", "gpu-operator")["chart"] == "gpu-operator-v25.3.0"
    assert rec.argv[rec.argv.index("--filter") + 1] == "^gpu-operator$"


# -- the lifecycle ---------------------------------------------------------------------------
def test_values_compare_as_helm_stores_them() -> None:
    assert value_changes({"a": [1, 2], "b": {"c": 1.0}}, {"b": {"c": 1}, "a": (1, 2)}) == []
    assert value_changes({"a": {"b": 1, "c": 2}, "x": True}, {"a": {"b": 1, "d": 3}, "x": False}) == [
        ("a.c", 2, _helm_release._UNSET), ("a.d", _helm_release._UNSET, 3), ("x", True, False)]


def test_deep_merge() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert deep_merge(base, {"a": {"c": [3]}, "e": None}) == {"a": {"b": 1, "c": [3]}, "d": 1, "e": None}
    assert deep_merge(base, {"a": 5}) == {"a": 5, "d": 1}
    assert deep_merge({"a": 5}, {"a": {"x": 1}}) == {"a": {"x": 1}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}


CHART = Chart(ref="./vllm", name="vllm", version="0.2.0")


def current(row: dict[str, Any] | None, values: dict[str, Any] | None = None) -> Current:
    return Current("r", "ns", row, values or {})


def test_plan_says_why_an_upgrade_is_needed() -> None:
    deployed = {"replicaCount": 1, "model": {"name": "m"}, "vllm": {"gpuMemoryUtilization": 0.9}}
    desired = {"replicaCount": 2, "model": {"name": "m"}, "vllm": {"gpuMemoryUtilization": 0.9}, "podLabels": {"a": "b"}}
    row = {"chart": "vllm-0.2.0", "status": "deployed", "revision": "3"}
    same = _helm_release.plan(current(row, deployed), CHART, deployed)
    assert same.reasons == [] and same.changed_values == []
    assert _helm_release.plan(current(dict(row, chart="vllm-v0.2.0"), deployed), CHART, deployed).reasons == [], "a leading v does not count"
    fresh = _helm_release.plan(current(None), CHART, desired)
    assert fresh.reasons == ["release: (none) -> vllm-0.2.0"] and fresh.changed_values == ["model", "podLabels", "replicaCount", "vllm"]
    stale = _helm_release.plan(current(dict(row, status="failed", chart="vllm-0.1.9"), deployed), CHART, desired)
    assert stale.reasons == ["release status: failed -> deployed", "chart: vllm-0.1.9 -> vllm-0.2.0",
                             "values.podLabels: (unset) -> {'a': 'b'}", "values.replicaCount: 1 -> 2"]
    assert stale.changed_values == ["podLabels", "replicaCount"]
    assert not CHART.matches("other-0.2.0") and not CHART.matches("vllm-0.2.1") and not CHART.matches(None)
    with pytest.raises(KubeInferError, match="^release ns/r is in status pending-install: another helm operation runs or was interrupted "
                       "outside this collection") as err:
        _helm_release.plan(current(dict(row, status="pending-install")), CHART, desired)
    assert err.value.result["release"]["status"] == "pending-install"


@pytest.mark.parametrize(("row", "view"), [
    (None, {"installed": False, "chart": None, "chart_name": None, "chart_version": None, "revision": 0, "status": None}),
    ({"chart": "gpu-operator-v26.7.0", "revision": "2", "status": "deployed", "app_version": "v26.7.0", "updated": "now"},
     {"installed": True, "chart": "gpu-operator-v26.7.0", "chart_name": "gpu-operator", "chart_version": "v26.7.0", "revision": 2,
      "status": "deployed", "app_version": "v26.7.0", "updated": "now"}),
    ({"chart": "my-chart-1.0.0-rc.1", "revision": "7", "status": "failed"},
     {"chart_name": "my-chart", "chart_version": "1.0.0-rc.1", "revision": 7}),
])
def test_release_view_has_one_shape(row: dict[str, Any] | None, view: dict[str, Any]) -> None:
    shown = _helm_release.release_view(row, "r", "ns")
    assert set(shown) == {"name", "namespace", "installed", "chart", "chart_name", "chart_version", "app_version", "revision",
                          "status", "updated"}
    assert {k: shown[k] for k in view} == view and shown["name"] == "r" and shown["namespace"] == "ns"


class LeaseKube:
    """The few Kube calls the operation lease makes, on an in-memory store: {(kind, name): object}; and the reads of the
    Secret helm keeps ``release``'s last revision in."""

    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]] | None = None, release: Release | None = None) -> None:
        self.objects = dict(objects or {})
        self.calls: list[tuple[str, str]] = []
        self.release = release

    def stored(self) -> dict[str, dict[str, Any]]:
        if self.release is None or self.release.row is None:
            return {}
        secret = stored_secret(release_record(dict({"name": "r"}, **self.release.row), None, namespace="ns"))
        return {secret["metadata"]["name"]: secret}

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None,
             metadata_only: bool = False) -> list[dict[str, Any]]:
        assert (kind, namespace, label_selector, metadata_only) == ("Secret", "ns", "owner=helm,name=r", True)
        return [{"metadata": s["metadata"]} for s in self.stored().values()]

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        if kind == "Secret":
            return self.stored().get(name)
        return self.objects.get((kind, name))

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", body["kind"]))
        self.objects[(body["kind"], body["metadata"]["name"])] = body
        return body

    def apply(self, body: dict[str, Any], force: bool = False) -> dict[str, Any]:
        self.calls.append(("apply", body["kind"]))
        self.objects[(body["kind"], body["metadata"]["name"])] = body
        return body

    def patch(self, api_version: str, kind: str, name: str, patch: Any, namespace: str | None = None) -> dict[str, Any]:
        self.calls.append(("patch", kind))
        self.objects[(kind, name)]["spec"].update(patch["spec"])
        return self.objects[(kind, name)]

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        self.calls.append(("delete", kind))
        return self.objects.pop((kind, name), None) is not None


def lease(revision: int, renewed: str, holder: str = "kubeinfer.llm/ops/1") -> dict[tuple[str, str], dict[str, Any]]:
    return {("Lease", "kubeinfer-helm-r"): {"metadata": {"name": "kubeinfer-helm-r", "annotations": {"kubeinfer.io/helm-revision": str(revision)}},
                                            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 30, "renewTime": renewed}}}


class Release:
    """run_command for helm that keeps one release (read from its Secret: LeaseKube); ``fail`` makes the upgrade fail."""

    def __init__(self, row: dict[str, Any] | None, fail: bool = False, chart: str = "vllm-0.2.0") -> None:
        self.row, self.fail, self.chart = row, fail, chart
        self.verbs: list[list[str]] = []

    def __call__(self, argv: list[str], environ_update: dict[str, str] | None = None) -> tuple[int, str, str]:
        self.verbs.append(argv[1:])
        if argv[1] == "upgrade":
            self.row = {"chart": self.chart, "status": "failed" if self.fail else "deployed",
                        "revision": str(int((self.row or {}).get("revision", 0)) + 1)}
            return (1, "", "Error: UPGRADE FAILED") if self.fail else (0, "", "")
        if argv[1] == "rollback" and self.row:
            self.row = dict(self.row, status="deployed", revision=str(int(self.row["revision"]) + 1))
        if argv[1] == "uninstall":
            self.row = None
        return 0, "", ""


def test_apply_upgrades_then_waits() -> None:
    cli = Release({"chart": "vllm-0.1.0", "status": "deployed", "revision": "1"})
    helm = Helm(cli, "helm", {})
    planned = _helm_release.plan(current(cli.row), CHART, {"a": 1})
    waited: list[bool] = []
    after = _helm_release.apply(LeaseKube(release=cli), helm, planned, create_namespace=True, atomic=False, wait=lambda: waited.append(True))
    assert after["revision"] == 2 and after["status"] == "deployed" and waited == [True]
    assert cli.verbs[0][:4] == ["upgrade", "--install", "r", "./vllm"] and "--create-namespace" in cli.verbs[0]
    assert "--wait" not in cli.verbs[0], "the caller's wait, not helm's"


@pytest.mark.parametrize(("row", "undo", "said"), [
    (None, ["uninstall", "r", "--namespace", "ns"], "uninstalled the release this run created"),
    ({"chart": "vllm-0.1.0", "status": "deployed", "revision": "4"}, ["rollback", "r", "4", "--namespace", "ns", "--wait"],
     "rolled back to revision 4"),
])
def test_atomic_undoes_a_failed_upgrade_or_wait(row: dict[str, Any] | None, undo: list[str], said: str) -> None:
    cli = Release(row, fail=True)
    helm = Helm(cli, "helm", {})
    with pytest.raises(KubeInferError) as err:
        _helm_release.apply(LeaseKube(release=cli), helm, _helm_release.plan(current(row), CHART, {"a": 1}), False, atomic=True)
    assert err.value.msg == f"helm upgrade failed (rc=1): Error: UPGRADE FAILED; {said}" and err.value.result["rolled_back"] == said
    assert cli.verbs[-1] == undo

    def stuck() -> None:
        raise KubeInferError("timed out", waited=30)

    cli = Release(row)
    with pytest.raises(KubeInferError) as err:
        _helm_release.apply(LeaseKube(release=cli), Helm(cli, "helm", {}), _helm_release.plan(current(row), CHART, {"a": 1}), False, atomic=True, wait=stuck)
    assert err.value.msg == f"timed out; {said}" and err.value.result["waited"] == 30 and cli.verbs[-1] == undo
    cli = Release(row, fail=True)
    with pytest.raises(KubeInferError):
        _helm_release.apply(LeaseKube(release=cli), Helm(cli, "helm", {}), _helm_release.plan(current(row), CHART, {"a": 1}), False, atomic=False)
    assert [v[0] for v in cli.verbs] == ["upgrade"], "without atomic nothing is undone"


def test_apply_refuses_a_chart_other_than_the_planned_one() -> None:
    cli = Release(None, chart="vllm-0.1.0")
    with pytest.raises(KubeInferError, match="^chart_ref: helm installed vllm-0.1.0, but vllm-0.2.0 was asked for"):
        _helm_release.apply(LeaseKube(release=cli), Helm(cli, "helm", {}), _helm_release.plan(current(None), CHART, {}), False, atomic=False)


def test_read_chart_reads_local_charts_and_asks_helm_for_the_rest(tmp_path: Path) -> None:
    chart_dir = tmp_path / "mychart"
    chart_dir.mkdir()
    (chart_dir / "Chart.yaml").write_text("apiVersion: v2\nname: mychart  # a comment\nversion: 1.2.3\nappVersion: '4.5'\n")
    archive = tmp_path / "mychart-1.2.3.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(chart_dir, arcname="mychart")
    cli = Release(None)
    helm = Helm(cli, "helm", {})
    for ref in (chart_dir, archive):
        chart = _helm_release.read_chart(helm, str(ref))
        assert chart == Chart(ref=str(ref), name="mychart", version="1.2.3", app_version="4.5"), "no --version for a local chart"
    assert cli.verbs == [], "a local chart is read from disk"
    with pytest.raises(KubeInferError, match="^chart_version: the local chart .* is version 1.2.3, not 2.0.0"):
        _helm_release.read_chart(helm, str(archive), "2.0.0")

    def show(argv: list[str], environ_update: dict[str, str] | None = None) -> tuple[int, str, str]:
        assert argv[1:] == ["show", "chart", "oci://example.com/charts/vllm", "--version", "0.2.0"]
        return 0, "apiVersion: v2\nname: vllm\nversion: 0.2.0\n", ""

    assert _helm_release.read_chart(Helm(show, "helm", {}), "oci://example.com/charts/vllm", "0.2.0") == Chart(
        ref="oci://example.com/charts/vllm", name="vllm", version="0.2.0", version_arg="0.2.0")


def test_apply_holds_the_operation_lease_while_helm_runs() -> None:
    seen: list[Any] = []
    cli = Release({"chart": "vllm-0.1.0", "status": "deployed", "revision": "3"})
    kube = LeaseKube(release=cli)
    helm = Helm(cli, "helm", {})
    _helm_release.apply(kube, helm, _helm_release.plan(current(cli.row), CHART, {"a": 1}), create_namespace=True, atomic=False,  # type: ignore[arg-type]
                        wait=lambda: seen.append(kube.objects.get(("Lease", "kubeinfer-helm-r"))))
    (held,) = seen
    assert held["metadata"]["annotations"] == {"kubeinfer.io/helm-revision": "4", "kubeinfer.io/helm-operation": "upgrade"}
    assert held["spec"]["holderIdentity"].startswith("kubeinfer.llm/") and held["spec"]["leaseDurationSeconds"] == 30
    assert ("Lease", "kubeinfer-helm-r") not in kube.objects, "the Lease goes when the operation ends"
    assert kube.calls[0] == ("create", "Namespace"), "the namespace is made first: the Lease lives there"


@pytest.mark.parametrize(("status", "revision", "verb"), [("pending-upgrade", 5, ["rollback", "r", "4"]),
                                                          ("pending-rollback", 5, ["rollback", "r", "4"]),
                                                          ("pending-install", 1, ["uninstall", "r"])])
def test_an_interrupted_run_is_recovered(status: str, revision: int, verb: list[str]) -> None:
    row = {"chart": "vllm-0.2.0", "status": status, "revision": str(revision)}
    # Check mode: nothing is done; the plan says what would be, and goes on.
    cli = Release(dict(row))
    kube = LeaseKube(lease(revision, "2020-01-01T00:00:00.000000Z"), release=cli)
    seen = _helm_release.read_for_upgrade(kube, Helm(cli, "helm", {}), "r", "ns", check_mode=True)  # type: ignore[arg-type]
    assert seen.interrupted and "by an interrupted run (kubeinfer.llm/ops/1" in str(seen.recovered) and "would" in str(seen.recovered)
    assert cli.verbs == [] and kube.calls == [], "the release is read from its Secret"
    assert _helm_release.plan(seen, CHART, {}).reasons[0] == seen.recovered
    # A real run rolls back (or uninstalls the first install), deletes the Lease and plans from what is left.
    done = _helm_release.read_for_upgrade(kube, Helm(cli, "helm", {}), "r", "ns", check_mode=False)  # type: ignore[arg-type]
    (write,) = cli.verbs
    assert write[:len(verb)] == verb and kube.calls == [("delete", "Lease")]
    assert not done.interrupted and (done.row is None or done.row["status"] == "deployed")
    _helm_release.check_upgradable(done)


def test_a_pending_release_without_our_lease_or_with_a_live_one_is_refused() -> None:
    row = {"chart": "vllm-0.2.0", "status": "pending-upgrade", "revision": "5"}
    for objects in ({}, lease(4, "2020-01-01T00:00:00.000000Z")):  # none, or one naming another revision
        cli = Release(dict(row))
        seen = _helm_release.read_for_upgrade(LeaseKube(objects, release=cli), Helm(cli, "helm", {}), "r", "ns", check_mode=False)  # type: ignore[arg-type]
        with pytest.raises(KubeInferError, match="outside this collection"):
            _helm_release.check_upgradable(seen)
        assert cli.verbs == []
    live = lease(5, _helm_release._now(), holder="kubeinfer.llm/awx-7/42")  # pylint: disable=protected-access
    cli = Release(dict(row))
    with pytest.raises(KubeInferError, match="kubeinfer.llm/awx-7/42 is running helm on it"):
        _helm_release.read_for_upgrade(LeaseKube(live, release=cli), Helm(cli, "helm", {}), "r", "ns",  # type: ignore[arg-type]
                                       check_mode=False, wait_seconds=0)
    assert "rollback" not in [v[0] for v in cli.verbs]
